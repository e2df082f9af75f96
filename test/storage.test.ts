import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { LocalBlobStore, TEMP_PREFIX } from '../src/storage/local-store.ts';
import { BlobNotFoundError, InvalidBlobKeyError, blobKey, parseKey } from '../src/storage/storage.ts';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Every file under dir, as paths relative to it. */
async function listFiles(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath, e.name)))
    .sort();
}

describe('LocalBlobStore', () => {
  let tmpRoot: string;
  let n = 0;
  /** A fresh store in its own folder. */
  const freshStore = async () => new LocalBlobStore(await fs.mkdtemp(path.join(tmpRoot, `store-${n++}-`)));

  before(async () => {
    tmpRoot = await fs.mkdtemp(path.join(os.tmpdir(), 'blobstore-test-'));
  });
  after(async () => {
    await fs.rm(tmpRoot, { recursive: true, force: true });
  });

  test('put stores bytes under <2 hex>/<sha256>.<ext> and is idempotent', async () => {
    const store = await freshStore();
    const bytes = Buffer.from('hello portrait');
    const digest = sha(bytes);

    const first = await store.put(bytes, 'jpg');
    assert.deepEqual(first, { key: `${digest.slice(0, 2)}/${digest}.jpg`, bytes: bytes.length, sha256: digest, created: true });
    const second = await store.put(Buffer.from(bytes), 'jpg');
    assert.deepEqual(second, { ...first, created: false });

    assert.deepEqual(await listFiles(store.root), [path.join(digest.slice(0, 2), `${digest}.jpg`)]);
    assert.deepEqual(await store.get(first.key), bytes);
    assert.equal(first.key, blobKey(digest, 'jpg'));
  });

  test('the extension is part of the key; a leading dot and upper case are normalized', async () => {
    const store = await freshStore();
    const bytes = Buffer.from('same bytes');
    const a = await store.put(bytes, 'png');
    const b = await store.put(bytes, '.PNG');
    const c = await store.put(bytes, 'webp');
    assert.equal(a.key, b.key);
    assert.equal(b.created, false);
    assert.notEqual(a.key, c.key);
    assert.equal(c.created, true);
    await assert.rejects(store.put(bytes, '../jpg'), /Invalid blob extension/);
    await assert.rejects(store.put(bytes, ''), /Invalid blob extension/);
  });

  test('concurrent puts of the same bytes: exactly one reports created, one file, no temp files', async () => {
    const store = await freshStore();
    const bytes = Buffer.alloc(256 * 1024, 7);
    const results = await Promise.all(Array.from({ length: 8 }, () => store.put(bytes, 'bin')));
    assert.equal(results.filter((r) => r.created).length, 1);
    assert.equal(new Set(results.map((r) => r.key)).size, 1);
    assert.deepEqual(await listFiles(store.root), [results[0]!.key.split('/').join(path.sep)]);
  });

  test('writes leave no temp files behind, also when the write fails', async () => {
    const store = await freshStore();
    for (let i = 0; i < 5; i++) await store.put(Buffer.from(`blob ${i}`), 'txt');
    const files = await listFiles(store.root);
    assert.equal(files.length, 5);
    assert.ok(files.every((f) => !path.basename(f).startsWith(TEMP_PREFIX)), files.join(', '));

    // Make the final name impossible to create (a folder sits there): the put fails and cleans up after itself.
    const bytes = Buffer.from('blocked');
    const key = blobKey(sha(bytes), 'txt');
    await fs.mkdir(store.pathFor(key), { recursive: true });
    await assert.rejects(store.put(bytes, 'txt'));
    const shard = path.dirname(store.pathFor(key));
    assert.deepEqual((await fs.readdir(shard)).filter((f) => f.startsWith(TEMP_PREFIX)), []);
  });

  test('a wrong-sized file under a key (not written by the store) is replaced, never trusted', async () => {
    const store = await freshStore();
    const bytes = Buffer.from('the real content');
    const key = blobKey(sha(bytes), 'jpg');
    await fs.mkdir(path.dirname(store.pathFor(key)), { recursive: true });
    await fs.writeFile(store.pathFor(key), 'the re'); // e.g. a half copy made by hand
    const result = await store.put(bytes, 'jpg');
    assert.equal(result.created, true);
    assert.deepEqual(await store.get(key), bytes);
  });

  test('get / has / delete / localPath', async () => {
    const store = await freshStore();
    const { key } = await store.put(Buffer.from('portrait'), 'png');
    assert.equal(await store.has(key), true);

    const local = await store.localPath(key);
    assert.ok(path.isAbsolute(local));
    assert.equal(local, path.join(store.root, key));
    assert.equal(await fs.readFile(local, 'utf8'), 'portrait');

    await store.delete(key);
    assert.equal(await store.has(key), false);
    await store.delete(key); // missing: no error
    await assert.rejects(store.get(key), (err: unknown) => err instanceof BlobNotFoundError && err.key === key);
    await assert.rejects(store.localPath(key), BlobNotFoundError);
  });

  test('bad keys throw a clear InvalidBlobKeyError on every method', async () => {
    const store = await freshStore();
    const digest = sha(Buffer.from('x'));
    const bad: Array<[string, RegExp]> = [
      ['', /empty/],
      [`../${digest}.jpg`, /'\.\.'/],
      [`${digest.slice(0, 2)}/../../etc/passwd`, /'\.\.'/],
      ['/etc/passwd', /absolute/],
      [path.join(store.root, digest.slice(0, 2), `${digest}.jpg`), /absolute/],
      [`${digest.slice(0, 2)}\\${digest}.jpg`, /absolute|forward slashes/],
      ['C:/x/y.jpg', /absolute/],
      [`${digest}.jpg`, /expected/],
      [`ff/${digest}.jpg`, /first two hex/],
      [`${digest.slice(0, 2)}/${digest.toUpperCase()}.jpg`, /expected/],
      [`${digest.slice(0, 2)}/${digest}`, /expected/],
      [`${digest.slice(0, 2)}/${digest}.jpg\0`, /NUL/],
    ];
    for (const [key, reason] of bad) {
      for (const call of [() => store.get(key), () => store.has(key), () => store.delete(key), () => store.localPath(key)]) {
        await assert.rejects(call(), (err: unknown) => {
          assert.ok(err instanceof InvalidBlobKeyError, `${JSON.stringify(key)}: ${String(err)}`);
          assert.match(err.message, /^Invalid blob key /);
          assert.match(err.message, reason);
          return true;
        });
      }
    }
    assert.deepEqual(parseKey(`${digest.slice(0, 2)}/${digest}.safetensors`), { sha256: digest, ext: 'safetensors' });
  });

  test('putFile copies a file written by another process into place, leaving the source', async () => {
    const store = await freshStore();
    const outDir = await fs.mkdtemp(path.join(tmpRoot, 'engine-out-'));
    const source = path.join(outDir, 'lora.safetensors');
    const bytes = Buffer.from(Array.from({ length: 100_000 }, (_, i) => i % 251));
    await fs.writeFile(source, bytes);

    const result = await store.putFile(source, 'safetensors');
    assert.deepEqual(result, { key: blobKey(sha(bytes), 'safetensors'), bytes: bytes.length, sha256: sha(bytes), created: true });
    assert.deepEqual(await store.get(result.key), bytes);
    assert.deepEqual(await fs.readFile(source), bytes);

    // Same bytes again (here moved): not created again, and the source is consumed.
    const again = await store.putFile(source, 'safetensors', { move: true });
    assert.deepEqual(again, { ...result, created: false });
    await assert.rejects(fs.access(source), { code: 'ENOENT' });

    // A new file, moved.
    const other = path.join(outDir, 'sample.png');
    await fs.writeFile(other, 'sample image bytes');
    const moved = await store.putFile(other, 'png', { move: true });
    assert.equal(moved.created, true);
    assert.equal(await fs.readFile(await store.localPath(moved.key), 'utf8'), 'sample image bytes');
    await assert.rejects(fs.access(other), { code: 'ENOENT' });

    assert.ok((await listFiles(store.root)).every((f) => !path.basename(f).startsWith(TEMP_PREFIX)));
    // A missing source is the caller's error, reported as such.
    await assert.rejects(store.putFile(path.join(outDir, 'nope.png'), 'png'), { code: 'ENOENT' });
    await assert.rejects(store.putFile(path.join(outDir, 'nope.png'), 'png', { move: true }), { code: 'ENOENT' });
    assert.ok((await listFiles(store.root)).every((f) => !path.basename(f).startsWith(TEMP_PREFIX)));
  });

  test('sweepTemp removes only old temp files left by a crashed writer', async () => {
    const store = await freshStore();
    const { key } = await store.put(Buffer.from('keep me'), 'txt');
    const shard = path.dirname(store.pathFor(key));
    const stale = path.join(shard, `${TEMP_PREFIX}12345-dead`);
    const fresh = path.join(store.root, `${TEMP_PREFIX}12345-live`);
    await fs.writeFile(stale, 'half a blo');
    await fs.writeFile(fresh, 'being written');
    const old = new Date(Date.now() - 2 * 60 * 60 * 1000);
    await fs.utimes(stale, old, old);

    assert.equal(await store.sweepTemp(), 1);
    await assert.rejects(fs.access(stale));
    await fs.access(fresh);
    assert.equal(await store.has(key), true);
    assert.equal(await new LocalBlobStore(path.join(tmpRoot, 'does-not-exist')).sweepTemp(), 0);
  });
});
