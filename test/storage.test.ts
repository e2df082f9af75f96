// One BlobStore suite, run against the local folder store and the S3 store on a real SeaweedFS server; then the parts
// only one of them has (temp files and sweeping for the local store, the read cache for S3).
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { LocalBlobStore, TEMP_PREFIX } from '../src/storage/local-store.ts';
import { S3BlobStore } from '../src/storage/s3-store.ts';
import { BlobNotFoundError, InvalidBlobKeyError, blobKey, parseKey, type BlobStore } from '../src/storage/storage.ts';
import { startSeaweed, type Seaweed } from './helpers/seaweed.ts';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Every file under dir, as paths relative to it with forward slashes (like keys). */
async function listFiles(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { recursive: true, withFileTypes: true }).catch(() => []);
  return entries
    .filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath, e.name)).split(path.sep).join('/'))
    .sort();
}

/** What the shared suite needs to know about a backend beyond the BlobStore interface. */
interface Backend<S extends BlobStore> {
  fresh(): Promise<S>;
  /** Every object the backend holds, temp files included. */
  list(store: S): Promise<string[]>;
  /** Writes bytes under a key behind the store's back (as something other than the store would). */
  plant(store: S, key: string, bytes: Buffer): Promise<void>;
}

function blobStoreSuite<S extends BlobStore>(name: string, backend: () => Backend<S>, tmpRoot: () => string) {
  describe(`${name}: the BlobStore contract`, () => {
    test('put stores bytes under <2 hex>/<sha256>.<ext> and is idempotent', async () => {
      const store = await backend().fresh();
      const bytes = Buffer.from('hello portrait');
      const digest = sha(bytes);

      const first = await store.put(bytes, 'jpg');
      assert.deepEqual(first, { key: `${digest.slice(0, 2)}/${digest}.jpg`, bytes: bytes.length, sha256: digest, created: true });
      const second = await store.put(Buffer.from(bytes), 'jpg');
      assert.deepEqual(second, { ...first, created: false });

      assert.deepEqual(await backend().list(store), [`${digest.slice(0, 2)}/${digest}.jpg`]);
      assert.deepEqual(await store.get(first.key), bytes);
      assert.equal(first.key, blobKey(digest, 'jpg'));
    });

    test('the extension is part of the key; a leading dot and upper case are normalized', async () => {
      const store = await backend().fresh();
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

    test('concurrent puts of the same bytes: exactly one reports created, one object, no temp files', async () => {
      const store = await backend().fresh();
      const bytes = Buffer.alloc(256 * 1024, 7);
      const results = await Promise.all(Array.from({ length: 8 }, () => store.put(bytes, 'bin')));
      assert.equal(results.filter((r) => r.created).length, 1);
      assert.equal(new Set(results.map((r) => r.key)).size, 1);
      assert.deepEqual(await backend().list(store), [results[0]!.key]);
      assert.deepEqual(await store.get(results[0]!.key), bytes);
    });

    test('a wrong-sized object under a key (not written by the store) is replaced, never trusted', async () => {
      const store = await backend().fresh();
      const bytes = Buffer.from('the real content');
      const key = blobKey(sha(bytes), 'jpg');
      await backend().plant(store, key, Buffer.from('the re')); // e.g. a half copy made by hand
      const result = await store.put(bytes, 'jpg');
      assert.equal(result.created, true);
      assert.deepEqual(await store.get(key), bytes);
      assert.equal(await fs.readFile(await store.localPath(key), 'utf8'), 'the real content');
    });

    test('get / has / delete / localPath', async () => {
      const store = await backend().fresh();
      const { key } = await store.put(Buffer.from('portrait'), 'png');
      assert.equal(await store.has(key), true);

      const local = await store.localPath(key);
      assert.ok(path.isAbsolute(local));
      assert.equal(await fs.readFile(local, 'utf8'), 'portrait');

      await store.delete(key);
      assert.equal(await store.has(key), false);
      await store.delete(key); // missing: no error
      await assert.rejects(store.get(key), (err: unknown) => err instanceof BlobNotFoundError && err.key === key);
      await assert.rejects(store.localPath(key), BlobNotFoundError);
      assert.deepEqual(await backend().list(store), []);
    });

    test('bad keys throw a clear InvalidBlobKeyError on every method', async () => {
      const store = await backend().fresh();
      const digest = sha(Buffer.from('x'));
      const bad: Array<[string, RegExp]> = [
        ['', /empty/],
        [`../${digest}.jpg`, /'\.\.'/],
        [`${digest.slice(0, 2)}/../../etc/passwd`, /'\.\.'/],
        ['/etc/passwd', /absolute/],
        [path.join(tmpRoot(), digest.slice(0, 2), `${digest}.jpg`), /absolute/],
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
      const store = await backend().fresh();
      const outDir = await fs.mkdtemp(path.join(tmpRoot(), 'engine-out-'));
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

      assert.deepEqual(await backend().list(store), [result.key, moved.key].sort());
      // A missing source is the caller's error, reported as such.
      await assert.rejects(store.putFile(path.join(outDir, 'nope.png'), 'png'), { code: 'ENOENT' });
      await assert.rejects(store.putFile(path.join(outDir, 'nope.png'), 'png', { move: true }), { code: 'ENOENT' });
      assert.deepEqual(await backend().list(store), [result.key, moved.key].sort());
    });
  });
}

let tmpRoot: string;
let n = 0;
before(async () => {
  tmpRoot = await fs.mkdtemp(path.join(os.tmpdir(), 'blobstore-test-'));
});
after(async () => {
  await fs.rm(tmpRoot, { recursive: true, force: true });
});

const local: Backend<LocalBlobStore> = {
  fresh: async () => new LocalBlobStore(await fs.mkdtemp(path.join(tmpRoot, `store-${n++}-`))),
  list: (store) => listFiles(store.root),
  async plant(store, key, bytes) {
    await fs.mkdir(path.dirname(store.pathFor(key)), { recursive: true });
    await fs.writeFile(store.pathFor(key), bytes);
  },
};

let seaweed: Seaweed;
const s3Stores: S3BlobStore[] = [];
/** An S3 store on its own new bucket (created by ensureBucket, as createApp does) and its own cache folder. */
async function freshS3(bucket = `test-${n++}-${randomBytes(3).toString('hex')}`, cacheDir?: string): Promise<S3BlobStore> {
  const store = new S3BlobStore({
    endpoint: seaweed.endpoint, bucket, region: 'us-east-1', accessKeyId: seaweed.accessKeyId, secretAccessKey: seaweed.secretAccessKey,
    forcePathStyle: true, cacheDir: cacheDir ?? (await fs.mkdtemp(path.join(tmpRoot, 'cache-'))),
  });
  await store.ensureBucket();
  s3Stores.push(store);
  return store;
}
async function listBucket(store: S3BlobStore): Promise<string[]> {
  const listed = await store.client.send(new ListObjectsV2Command({ Bucket: store.bucket }));
  return (listed.Contents ?? []).map((o) => o.Key!).sort();
}
const s3: Backend<S3BlobStore> = {
  fresh: () => freshS3(),
  list: listBucket,
  async plant(store, key, bytes) {
    await store.client.send(new PutObjectCommand({ Bucket: store.bucket, Key: key, Body: bytes }));
  },
};

blobStoreSuite('LocalBlobStore', () => local, () => tmpRoot);

describe('S3BlobStore on SeaweedFS', () => {
  before(async () => {
    seaweed = await startSeaweed();
  });
  after(async () => {
    for (const store of s3Stores) store.client.destroy();
    await seaweed?.stop();
  });

  blobStoreSuite('S3BlobStore', () => s3, () => tmpRoot);

  /** Counts the GET requests a store sends (a cache hit sends none). */
  function countGets(store: S3BlobStore): { gets: number } {
    const counter = { gets: 0 };
    store.client.middlewareStack.add((next, context) => async (args) => {
      if (context.commandName === 'GetObjectCommand') counter.gets++;
      return next(args);
    }, { step: 'initialize' });
    return counter;
  }

  test('localPath downloads once into the cache folder; later calls read the cached file', async () => {
    const writer = await freshS3();
    const bytes = randomBytes(300_000);
    const { key } = await writer.put(bytes, 'safetensors');
    // Another machine: same bucket, its own (empty) cache.
    const reader = await freshS3(writer.bucket);
    const counter = countGets(reader);
    const first = await reader.localPath(key);
    assert.equal(first, path.join(reader.cacheDir, ...key.split('/')));
    assert.deepEqual(await fs.readFile(first), bytes);
    assert.equal(counter.gets, 1);
    assert.equal(await reader.localPath(key), first);
    assert.equal(counter.gets, 1, 'a warm hit downloads nothing');
    assert.deepEqual((await listFiles(reader.cacheDir)).filter((f) => path.basename(f).startsWith('.tmp-')), []);
    // Eight cold readers at once on a third machine all get the whole file.
    const third = await freshS3(writer.bucket);
    const paths = await Promise.all(Array.from({ length: 8 }, () => third.localPath(key)));
    for (const p of paths) assert.deepEqual(await fs.readFile(p), bytes);
    assert.deepEqual(await listFiles(third.cacheDir), [key]);
  });

  test('putFile leaves the stored file in the cache: localPath on the writing machine downloads nothing', async () => {
    const store = await freshS3();
    const counter = countGets(store);
    const source = path.join(tmpRoot, `adapter-${n++}.safetensors`);
    await fs.writeFile(source, randomBytes(50_000));
    const { key } = await store.putFile(source, 'safetensors');
    assert.deepEqual(await fs.readFile(await store.localPath(key)), await fs.readFile(source));
    assert.equal(counter.gets, 0);
    assert.deepEqual(await listFiles(store.cacheDir), [key]);
  });

  test('putFile and a cold localPath stream a large file: never the whole file in memory at once', async () => {
    const store = await freshS3();
    const size = 64 * 1024 * 1024;
    const source = path.join(tmpRoot, `checkpoint-${n++}.pt`);
    const handle = await fs.open(source, 'w');
    for (let i = 0; i < size / (1024 * 1024); i++) await handle.write(randomBytes(1024 * 1024));
    await handle.close();
    /** The largest growth of Buffer memory while `run` runs (sampled), in bytes; a whole-file read adds 64 MiB at once. */
    const peakGrowth = async (run: () => Promise<unknown>) => {
      const base = process.memoryUsage().arrayBuffers;
      let peak = 0;
      const timer = setInterval(() => { peak = Math.max(peak, process.memoryUsage().arrayBuffers - base); }, 2);
      try {
        await run();
      } finally {
        clearInterval(timer);
      }
      return Math.max(peak, process.memoryUsage().arrayBuffers - base);
    };
    // A whole-file read grows Buffer memory by the full 64 MiB at once; a stream's chunks are garbage the collector
    // frees on its own schedule, which under load has reached 33 MiB: three quarters of the size tells the two apart.
    const bound = size * 0.75;
    let key = '';
    const saving = await peakGrowth(async () => { key = (await store.putFile(source, 'pt')).key; });
    assert.ok(saving < bound, `putFile held ${(saving / 2 ** 20).toFixed(1)} MiB of a 64 MiB file`);
    const reader = await freshS3(store.bucket);
    let cached = '';
    const loading = await peakGrowth(async () => { cached = await reader.localPath(key); });
    assert.ok(loading < bound, `localPath held ${(loading / 2 ** 20).toFixed(1)} MiB of a 64 MiB file`);
    assert.equal((await fs.stat(cached)).size, size);
    await fs.rm(source);
  });

  test('a blob deleted elsewhere (/forget on the bot machine) is not served from a cache, and its cached copy goes', async () => {
    const bot = await freshS3();
    const worker = await freshS3(bot.bucket);
    const { key } = await bot.put(Buffer.from('a crop of someone'), 'png');
    const cached = await worker.localPath(key);
    await bot.delete(key);
    await assert.rejects(worker.localPath(key), BlobNotFoundError);
    await assert.rejects(fs.access(cached), { code: 'ENOENT' });
  });

  test('sweepCache drops copies of blobs deleted on another machine and old temp files, and keeps the rest', async () => {
    const bot = await freshS3();
    const worker = await freshS3(bot.bucket);
    const kept = await bot.put(Buffer.from('still referenced'), 'png');
    const forgotten = await bot.put(Buffer.from('a forgotten crop'), 'png');
    await worker.localPath(kept.key);
    const stale = await worker.localPath(forgotten.key);
    await bot.delete(forgotten.key); // the worker is never asked for it again
    const strayOld = path.join(worker.cacheDir, '.tmp-1-dead');
    const strayNew = path.join(worker.cacheDir, '.tmp-1-live');
    await fs.writeFile(strayOld, 'half');
    await fs.writeFile(strayNew, 'being written');
    const old = new Date(Date.now() - 2 * 60 * 60 * 1000);
    await fs.utimes(strayOld, old, old);

    assert.equal(await worker.sweepCache(), 2);
    await assert.rejects(fs.access(stale), { code: 'ENOENT' });
    assert.deepEqual(await listFiles(worker.cacheDir), ['.tmp-1-live', kept.key].sort());
    assert.equal(await (await freshS3(worker.bucket, path.join(tmpRoot, 'no-cache-yet'))).sweepCache(), 0);
  });

  test('an object whose bytes do not match its key is refused on download, and nothing is cached', async () => {
    const store = await freshS3();
    const key = blobKey(sha(Buffer.from('what the key says')), 'png');
    await s3.plant(store, key, Buffer.from('something else!!!')); // same length as the real content
    await assert.rejects(store.localPath(key), /corrupt/);
    assert.deepEqual(await listFiles(store.cacheDir), []);
  });

  test('ensureBucket creates a missing bucket and is safe to call concurrently and again', async () => {
    const bucket = `test-new-${randomBytes(3).toString('hex')}`;
    const stores = await Promise.all(Array.from({ length: 3 }, () => freshS3(bucket)));
    await stores[0]!.ensureBucket();
    const { key } = await stores[1]!.put(Buffer.from('x'), 'txt');
    assert.equal(await stores[2]!.has(key), true);
  });
});

describe('LocalBlobStore only', () => {
  test('writes leave no temp files behind, also when the write fails', async () => {
    const store = await local.fresh();
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

  test('localPath is the stored file itself', async () => {
    const store = await local.fresh();
    const { key } = await store.put(Buffer.from('portrait'), 'png');
    assert.equal(await store.localPath(key), path.join(store.root, key));
  });

  test('sweepTemp removes only old temp files left by a crashed writer', async () => {
    const store = await local.fresh();
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
