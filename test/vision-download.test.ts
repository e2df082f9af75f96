// The `models` downloader against a local HTTP server: Range resume, sha256 refusal, offline report.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ChecksumError, downloadFile, expectedDigest, missingFiles, offlineMessage, readRecordedDigests, RECORDED_DIGESTS_FILE,
} from '../src/models/download.ts';
import { MODEL_MANIFEST, type ModelEntry } from '../src/models/manifest.ts';
import { main as modelsCommand } from '../scripts/models.ts';
import { loadConfig } from '../src/config/index.ts';

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

/** Runs the `models` command with its console output captured. */
async function capture(run: () => Promise<number>): Promise<{ code: number; logs: string[]; errors: string[] }> {
  const logs: string[] = [], errors: string[] = [];
  const original = { log: console.log, error: console.error };
  console.log = (...args: unknown[]) => { logs.push(args.join(' ')); };
  console.error = (...args: unknown[]) => { errors.push(args.join(' ')); };
  try {
    return { code: await run(), logs, errors };
  } finally {
    Object.assign(console, original);
  }
}

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

  test('a digest mismatch never installs the download: it is kept aside (not as .part, so never resumed onto) and named in the error', async () => {
    const dir = tmp();
    const wrong = '0'.repeat(64);
    const aside = join(dir, `model.onnx.mismatch-${digest.slice(0, 8)}`);
    await assert.rejects(downloadFile({ path: 'model.onnx', url: `${base}/model.onnx`, sha256: wrong, bytes: 299_999 }, dir), (e: unknown) => {
      assert.ok(e instanceof ChecksumError);
      assert.deepEqual([e.expected, e.actual, e.download], [wrong, digest, { sha256: digest, bytes: body.length, keptAt: aside }]);
      assert.equal(e.message, `model.onnx: the download is 300,000 B with sha256 ${digest}; expected sha256 ${wrong}, 299,999 B. Kept it as ${aside}.`);
      return true;
    });
    assert.equal(existsSync(join(dir, 'model.onnx')), false);
    assert.equal(existsSync(join(dir, 'model.onnx.part')), false);
    assert.ok(readFileSync(aside).equals(body), 'the bad download is kept, byte for byte');
    ranges.length = 0;
    await assert.rejects(downloadFile({ path: 'model.onnx', url: `${base}/model.onnx`, sha256: wrong }, dir), ChecksumError);
    assert.deepEqual(ranges, [undefined], 'the second try starts from scratch, not from the bad bytes');
  });

  test('a wrong file at the final name is renamed aside, never deleted, and the command says what it found, expected and where it went', async () => {
    const dir = tmp();
    const handPlaced = Buffer.from('an older release, copied in by hand');
    const handSha = createHash('sha256').update(handPlaced).digest('hex');
    writeFileSync(join(dir, 'model.onnx'), handPlaced);
    const entries: ModelEntry[] = [{ id: 'm', usedFor: 'test', license: 'MIT', files: [{ path: 'model.onnx', url: `${base}/model.onnx`, sha256: digest, bytes: body.length }] }];
    const { code, errors } = await capture(() => modelsCommand(['m'], { VISION_MODELS_DIR: dir }, entries));
    assert.equal(code, 0);
    const aside = join(dir, `model.onnx.mismatch-${handSha.slice(0, 8)}`);
    assert.ok(readFileSync(aside).equals(handPlaced), 'the hand-placed file is kept, byte for byte');
    assert.ok(readFileSync(join(dir, 'model.onnx')).equals(body), 'and the pinned file installed in its place');
    assert.equal(errors.join('\n'), `wrong file ${join(dir, 'model.onnx')}: found 35 B with sha256 ${handSha}; expected sha256 ${digest}, 300,000 B. ` +
      `Kept it as ${aside}. (--replace deletes a wrong file instead.)`);
  });

  test('a file set aside never replaces another one: the same wrong file again reuses its copy, a different one gets a new name', async () => {
    const dir = tmp();
    const file = { path: 'model.onnx', url: `${base}/model.onnx`, sha256: digest };
    const wrong = Buffer.from('wrong, again');
    const aside = join(dir, `model.onnx.mismatch-${createHash('sha256').update(wrong).digest('hex').slice(0, 8)}`);
    writeFileSync(join(dir, 'model.onnx'), wrong);
    await downloadFile(file, dir);
    writeFileSync(join(dir, 'model.onnx'), wrong);
    assert.equal((await downloadFile(file, dir)).replaced?.keptAt, aside);
    // A different file under that aside name (a prefix collision, or edited by hand) is left alone.
    writeFileSync(aside, 'something else');
    writeFileSync(join(dir, 'model.onnx'), wrong);
    assert.equal((await downloadFile(file, dir)).replaced?.keptAt, `${aside}-2`);
    assert.equal(readFileSync(aside, 'utf8'), 'something else');
    assert.ok(readFileSync(`${aside}-2`).equals(wrong));
  });

  test('--replace deletes a wrong file at the final name, and says so', async () => {
    const dir = tmp();
    writeFileSync(join(dir, 'model.onnx'), 'wrong');
    const entries: ModelEntry[] = [{ id: 'm', usedFor: 'test', license: 'MIT', files: [{ path: 'model.onnx', url: `${base}/model.onnx`, sha256: digest }] }];
    const { code, errors } = await capture(() => modelsCommand(['m', '--replace'], { VISION_MODELS_DIR: dir }, entries));
    assert.equal(code, 0);
    assert.deepEqual(readdirSync(dir), ['model.onnx']);
    assert.ok(readFileSync(join(dir, 'model.onnx')).equals(body));
    assert.match(errors.join('\n'), /found 5 B with sha256 [0-9a-f]{64}; expected sha256 [0-9a-f]{64}\. Deleted it \(--replace\)\.$/);
  });

  test('the wrong file is already aside when the download then fails: the command reports both', async () => {
    const dir = tmp();
    writeFileSync(join(dir, 'x.onnx'), 'wrong');
    const entries: ModelEntry[] = [{ id: 'x', usedFor: 'test', license: 'MIT', files: [{ path: 'x.onnx', url: 'http://127.0.0.1:9/x.onnx', sha256: digest }] }];
    const { code, errors } = await capture(() => modelsCommand([], { VISION_MODELS_DIR: dir }, entries));
    assert.equal(code, 1);
    assert.match(errors[0]!, /^wrong file .*x\.onnx: found 5 B .*Kept it as .*x\.onnx\.mismatch-[0-9a-f]{8}\./);
    assert.match(errors[1]!, /^failed +x\.onnx: /);
    assert.equal(readdirSync(dir).filter((f) => f.startsWith('x.onnx.mismatch-')).length, 1);
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
    assert.deepEqual(MODEL_MANIFEST.map((e) => e.id), ['yunet', 'sface', 'dwpose', 'sd15', 'controlnet-openpose', 'safety-checker']);
    for (const e of MODEL_MANIFEST) for (const f of e.files) assert.match(f.url, /^https:\/\//);
    const { code, logs } = await capture(() => modelsCommand(['status'], { VISION_MODELS_DIR: tmp() }));
    assert.equal(code, 1);
    assert.match(logs.join('\n'), /face_detection_yunet_2023mar\.onnx/);
    assert.match(logs.join('\n'), /dw-ll_ucoco_384\.onnx/);
  });
});

describe('files with no published digest: recorded on first download, checked after', () => {
  test('the first download records the digest; a later run checks against it and keeps a changed file aside', async () => {
    const dir = tmp();
    const entries: ModelEntry[] = [{ id: 'u', usedFor: 'test', license: 'MIT', files: [{ path: 'u/model.onnx', url: `${base}/model.onnx` }] }];
    const first = await capture(() => modelsCommand(['u'], { VISION_MODELS_DIR: dir }, entries));
    assert.equal(first.code, 0);
    const record = join(dir, RECORDED_DIGESTS_FILE);
    assert.equal(first.logs.at(-1), `downloaded u/model.onnx  sha256 ${digest}  (no published digest: recorded in ${record} on this first download; later runs check against it)`);
    assert.deepEqual(Object.keys(readRecordedDigests(dir)), ['u/model.onnx']);
    assert.deepEqual([readRecordedDigests(dir)['u/model.onnx']!.sha256, readRecordedDigests(dir)['u/model.onnx']!.bytes], [digest, body.length]);

    const again = await capture(() => modelsCommand(['u'], { VISION_MODELS_DIR: dir }, entries));
    assert.match(again.logs.at(-1)!, /^present +u\/model\.onnx .*\(matches the digest recorded on its first download/);

    writeFileSync(join(dir, 'u/model.onnx'), 'swapped');
    const swapped = await capture(() => modelsCommand(['u'], { VISION_MODELS_DIR: dir }, entries));
    assert.equal(swapped.code, 0);
    assert.match(swapped.errors[0]!, new RegExp(`^wrong file .*u/model\\.onnx: found 7 B with sha256 [0-9a-f]{64}; expected sha256 ${digest}\\. Kept it as .*mismatch-`));
    assert.ok(readFileSync(join(dir, 'u/model.onnx')).equals(body));
  });

  test('a record made for another address (an older revision) is not used', () => {
    const file = { path: 'm.onnx', url: 'https://example.invalid/resolve/bbbb/m.onnx' };
    const recorded = { 'm.onnx': { sha256: digest, bytes: 1, url: 'https://example.invalid/resolve/aaaa/m.onnx', recordedAt: '' } };
    assert.deepEqual(expectedDigest(file, recorded), { source: 'none' });
    assert.deepEqual(expectedDigest({ ...file, url: recorded['m.onnx'].url }, recorded), { sha256: digest, source: 'recorded' });
    assert.deepEqual(expectedDigest({ ...file, sha256: 'f'.repeat(64) }, recorded), { sha256: 'f'.repeat(64), source: 'pinned' });
  });
});

describe('model manifest pins', () => {
  const entry = (id: string) => MODEL_MANIFEST.find((e) => e.id === id)!;
  const hfRevision = (url: string) => /huggingface\.co\/[^/]+\/[^/]+\/resolve\/([^/]+)\//.exec(url)?.[1];

  test('every file is fetched from a commit, never a branch', () => {
    for (const e of MODEL_MANIFEST) {
      for (const f of e.files) assert.match(f.url, /\/(raw|resolve)\/[0-9a-f]{40}\//, `${e.id}: ${f.url}`);
    }
  });

  test('DWPose: yzd-v/DWPose at 1a71441… with both digests and sizes', () => {
    const files = entry('dwpose').files;
    assert.deepEqual(files.map((f) => [f.path, hfRevision(f.url), f.sha256, f.bytes]), [
      ['yolox_l.onnx', '1a7144101628d69ee7a3768d1ee3a094070dc388', '7860ae79de6c89a3c1eb72ae9a2756c0ccfbe04b7791bb5880afabd97855a411', 216_746_733],
      ['dw-ll_ucoco_384.onnx', '1a7144101628d69ee7a3768d1ee3a094070dc388', '724f4ff2439ed61afb86fb8a1951ec39c6220682803b4a8bd4f598cd913b1843', 134_399_116],
    ]);
  });

  test('SD1.5 at 451f4fe… with the three weight files pinned; ControlNet openpose at 9ae9f97…, its digest recorded on first download', () => {
    const sd15 = entry('sd15').files;
    assert.ok(sd15.every((f) => hfRevision(f.url) === '451f4fe16113bff5a5d2269ed5ad43b0592e9a14'));
    assert.deepEqual(sd15.filter((f) => f.sha256).map((f) => [f.path, f.bytes]), [
      ['sd15/text_encoder/model.safetensors', 492_265_874],
      ['sd15/unet/diffusion_pytorch_model.safetensors', 3_438_167_540],
      ['sd15/vae/diffusion_pytorch_model.safetensors', 334_643_276],
    ]);
    const cn = entry('controlnet-openpose').files;
    assert.ok(cn.every((f) => hfRevision(f.url) === '9ae9f970358db89e211b87c915f9535c6686d5ba' && !f.sha256));
  });

  test('safety checker: SD1.5\'s safety_checker at 451f4fe…, its weights pinned, the JSON files recorded on first download', async () => {
    const files = entry('safety-checker').files;
    assert.deepEqual(files.map((f) => [f.path, hfRevision(f.url), f.sha256 ?? null]), [
      ['safety-checker/config.json', '451f4fe16113bff5a5d2269ed5ad43b0592e9a14', null],
      ['safety-checker/pytorch_model.bin', '451f4fe16113bff5a5d2269ed5ad43b0592e9a14', '193490b58ef62739077262e833bf091c66c29488058681ac25cf7df3d8190974'],
      ['safety-checker/preprocessor_config.json', '451f4fe16113bff5a5d2269ed5ad43b0592e9a14', null],
    ]);
    assert.match(files[2]!.url, /\/feature_extractor\/preprocessor_config\.json$/);
    // The folder the engine loads by default (ENGINE_SAFETY_CHECKER unset) is where the command puts it.
    const dir = tmp();
    assert.equal(loadConfig({ VISION_MODELS_DIR: dir }).engine.safetyChecker, join(dir, 'safety-checker'));
  });

  test('--cpu is the CPU-only set (yunet, sface, dwpose): status lists those files and no diffusion weights', async () => {
    const { code, logs } = await capture(() => modelsCommand(['status', '--cpu'], { VISION_MODELS_DIR: tmp() }));
    assert.equal(code, 1);
    const listed = logs.join('\n').split('\n').filter((l) => l.startsWith('  - ')).map((l) => l.replace(/^.*\//, ''));
    assert.deepEqual(listed, ['face_detection_yunet_2023mar.onnx', 'face_recognition_sface_2021dec.onnx', 'yolox_l.onnx', 'dw-ll_ucoco_384.onnx']);
  });

  test('`models status` says which files have no published digest and that theirs is recorded on first download', async () => {
    const { logs } = await capture(() => modelsCommand(['status', 'controlnet-openpose'], { VISION_MODELS_DIR: tmp() }));
    const text = logs.join('\n');
    assert.equal(text.match(/sha256: none published; recorded on its first download/g)?.length, 2, text);
    assert.match(text, /resolve\/9ae9f970358db89e211b87c915f9535c6686d5ba\/diffusion_pytorch_model\.safetensors/);
  });

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
