// The `models` downloader against a local HTTP server: Range resume, sha256 refusal, offline report.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { existsSync, mkdtempSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ChecksumError, downloadFile, missingFiles, offlineMessage } from '../src/models/download.ts';
import { MODEL_MANIFEST, type ModelEntry } from '../src/models/manifest.ts';
import { main as modelsCommand } from '../scripts/models.ts';

const body = randomBytes(300_000);
const digest = createHash('sha256').update(body).digest('hex');
const ranges: (string | undefined)[] = [];
let server: Server;
let base: string;

before(async () => {
  server = createServer((req, res) => {
    if (req.url !== '/model.onnx') { res.writeHead(404).end(); return; }
    ranges.push(req.headers.range);
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    if (m) {
      const start = Number(m[1]);
      res.writeHead(206, { 'content-length': body.length - start, 'content-range': `bytes ${start}-${body.length - 1}/${body.length}` });
      res.end(body.subarray(start));
    } else {
      res.writeHead(200, { 'content-length': body.length }).end(body);
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(() => new Promise<void>((r) => server.close(() => r())));

const tmp = () => mkdtempSync(join(tmpdir(), 'models-'));

describe('models download', () => {
  test('downloads, verifies and then leaves a present file alone', async () => {
    const dir = tmp();
    const file = { path: 'a/model.onnx', url: `${base}/model.onnx`, sha256: digest };
    const first = await downloadFile(file, dir);
    assert.deepEqual([first.status, first.verified, first.sha256], ['downloaded', true, digest]);
    assert.ok(readFileSync(join(dir, 'a/model.onnx')).equals(body));
    assert.equal((await downloadFile(file, dir)).status, 'present');
  });

  test('resumes an interrupted download with a Range request', async () => {
    const dir = tmp();
    mkdirSync(join(dir, 'b'));
    writeFileSync(join(dir, 'b/model.onnx.part'), body.subarray(0, 123_456));
    ranges.length = 0;
    const r = await downloadFile({ path: 'b/model.onnx', url: `${base}/model.onnx`, sha256: digest }, dir);
    assert.equal(r.status, 'resumed');
    assert.deepEqual(ranges, ['bytes=123456-']);
    assert.ok(readFileSync(join(dir, 'b/model.onnx')).equals(body));
    assert.equal(existsSync(join(dir, 'b/model.onnx.part')), false);
  });

  test('a digest mismatch deletes the download and never installs it', async () => {
    const dir = tmp();
    const wrong = '0'.repeat(64);
    await assert.rejects(downloadFile({ path: 'model.onnx', url: `${base}/model.onnx`, sha256: wrong }, dir), (e: unknown) =>
      e instanceof ChecksumError && e.expected === wrong && e.actual === digest);
    assert.equal(existsSync(join(dir, 'model.onnx')), false);
    assert.equal(existsSync(join(dir, 'model.onnx.part')), false);
  });

  test('offline: says exactly which files are missing, where to put them and where they come from', async () => {
    const dir = tmp();
    const entries: ModelEntry[] = [{ id: 'x', usedFor: 'test', license: 'MIT', files: [{ path: 'x.onnx', url: 'http://127.0.0.1:9/x.onnx', sha256: digest }] }];
    await assert.rejects(downloadFile(entries[0]!.files[0]!, dir)); // nothing listens on port 9
    const missing = missingFiles(entries, dir);
    assert.deepEqual(missing.map((m) => m.path), [join(dir, 'x.onnx')]);
    const message = offlineMessage(missing);
    assert.match(message, new RegExp(`${join(dir, 'x.onnx').replace(/[/.]/g, '\\$&')}`));
    assert.match(message, /from http:\/\/127\.0\.0\.1:9\/x\.onnx/);
    assert.match(message, new RegExp(`sha256 ${digest}`));
  });

  test('the manifest covers every model the project uses, and `models status` reports them all missing in an empty folder', async () => {
    assert.deepEqual(MODEL_MANIFEST.map((e) => e.id), ['yunet', 'sface', 'dwpose', 'sd15', 'controlnet-openpose']);
    for (const e of MODEL_MANIFEST) for (const f of e.files) assert.match(f.url, /^https:\/\//);
    const logged: string[] = [];
    const original = console.log;
    console.log = (...args: unknown[]) => { logged.push(args.join(' ')); };
    try {
      assert.equal(await modelsCommand(['status'], { VISION_MODELS_DIR: tmp() }), 1);
    } finally {
      console.log = original;
    }
    assert.match(logged.join('\n'), /face_detection_yunet_2023mar\.onnx/);
    assert.match(logged.join('\n'), /dw-ll_ucoco_384\.onnx/);
  });
});

describe('model manifest pins', () => {
  const opencv = (id: string) => MODEL_MANIFEST.find((e) => e.id === id)!.files[0]!;
  const revision = (url: string) => /opencv_zoo\/raw\/([0-9a-f]{40})\//.exec(url)?.[1];

  test('YuNet is pinned to the released file: the real model in ../shared has exactly the pinned digest and size', () => {
    const real = readFileSync(join('..', 'shared', 'models', 'face_detection_yunet_2023mar.onnx'));
    const yunet = opencv('yunet');
    assert.equal(createHash('sha256').update(real).digest('hex'), yunet.sha256);
    assert.equal(real.length, yunet.bytes);
  });

  test('SFace is the released float32 model (38,696,353 B), at the same opencv_zoo main commit as YuNet', () => {
    const sface = opencv('sface');
    assert.equal(sface.sha256, '0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79');
    assert.equal(sface.bytes, 38_696_353);
    assert.ok(revision(sface.url), `SFace url is pinned to a commit: ${sface.url}`);
    assert.equal(revision(sface.url), revision(opencv('yunet').url));
  });
});
