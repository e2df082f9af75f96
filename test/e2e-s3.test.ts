// End to end with STORAGE=s3 on a real SeaweedFS: upload → train (with checkpoints) → imagine through the web API on
// the tiny engine, every blob in the bucket and the engine reading through the local cache; /forget then leaves no
// object of that person in the bucket or the cache, while a photo another person shares stays.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { randomBytes } from 'node:crypto';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { photos } from '../src/db/schema.ts';
import { S3BlobStore } from '../src/storage/s3-store.ts';
import { createStore } from '../src/app.ts';
import { startWorker } from '../worker/index.ts';
import { testLogger } from './helpers/env.ts';
import { PlaygroundClient, startStack, type Stack } from './helpers/stack.ts';
import { makePhotos } from './helpers/images.ts';
import { startSeaweed, type Seaweed } from './helpers/seaweed.ts';

let seaweed: Seaweed;
let stack: Stack;
let workerStore: S3BlobStore;
const cacheDir = join(tmpdir(), `portrait-s3-cache-${randomBytes(4).toString('hex')}`);

before(async () => {
  seaweed = await startSeaweed();
  // A bucket that does not exist yet: createApp creates it.
  stack = await startStack({ MIN_TRAINING_PHOTOS: '10', TRAIN_CHECKPOINT_STEPS: '2', ...seaweed.env('portraits-e2e', join(cacheDir, 'bot')) }, false);
  // The worker is another machine: its own store client and cache folder on the same bucket, nothing through the bot.
  workerStore = await createStore({ ...stack.env.config, storage: { ...stack.env.config.storage, cacheDir: join(cacheDir, 'worker') } }) as S3BlobStore;
  stack.worker = await startWorker({ db: stack.app.database.db, store: workerStore, events: stack.app.events, vision: stack.app.vision, config: stack.env.config, logger: testLogger });
});
after(async () => {
  await stack?.close();
  workerStore?.client.destroy();
  await seaweed?.stop();
  await rm(cacheDir, { recursive: true, force: true });
});

const store = () => stack.app.store as S3BlobStore;
async function bucketKeys(): Promise<string[]> {
  const listed = await store().client.send(new ListObjectsV2Command({ Bucket: store().bucket }));
  return (listed.Contents ?? []).map((o) => o.Key!).sort();
}
/** The keys cached on the worker's machine. */
async function cachedKeys(): Promise<string[]> {
  const dir = workerStore.cacheDir;
  const entries = await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => []);
  return entries.filter((e) => e.isFile()).map((e) => `${e.parentPath.slice(dir.length + 1)}/${e.name}`).sort();
}

test('upload → train → imagine with STORAGE=s3; /forget leaves no object of that person', { timeout: 300_000 }, async () => {
  assert.ok(stack.app.store instanceof S3BlobStore);
  assert.notEqual(workerStore.cacheDir, store().cacheDir);
  assert.deepEqual(await bucketKeys(), [], 'a new bucket');

  const me = new PlaygroundClient(stack.baseUrl);
  const upload = await me.upload('/api/photos', (await makePhotos(10)).map((data, i): [string, Buffer] => [`me-${i}.jpg`, data]));
  assert.equal(upload.status, 200);
  assert.equal(upload.body.total, 10);
  // Someone else sends two of the same pictures: the same content keys, shared.
  const friend = new PlaygroundClient(stack.baseUrl);
  assert.equal((await friend.upload('/api/photos', (await makePhotos(2)).map((data, i): [string, Buffer] => [`f-${i}.jpg`, data]))).body.total, 2);

  const train = await me.post('/api/train');
  assert.equal(train.status, 202);
  const trained = await me.waitForJob(train.body.jobId);
  assert.equal(trained.job.status, 'completed', trained.job.error);

  const imagine = await me.post('/api/imagine', { prompt: 'a portrait of me as an astronaut', options: { width: 256, height: 256, seed: 7 } });
  assert.equal(imagine.status, 202, JSON.stringify(imagine.body));
  const imagined = await me.waitForJob(imagine.body.jobId);
  assert.equal(imagined.job.status, 'completed', imagined.job.error);
  const image = await me.request(imagined.images[0]);
  assert.equal(image.status, 200);
  assert.equal(image.headers.get('content-type'), 'image/png');

  // Everything lives in the bucket (nothing in the local storage folder), and the engine read through the cache.
  const before = await bucketKeys();
  assert.deepEqual(await readdir(stack.env.config.storageDir).catch(() => []), []);
  assert.ok(before.some((k) => k.endsWith('.safetensors')), 'the adapter is in the bucket');
  const cached = await cachedKeys();
  assert.ok(cached.length > 0 && cached.every((k) => before.includes(k)), 'the engine read its inputs from the cache');
  const crops = (await stack.app.database.db.select().from(photos)).map((p) => p.cropKey);
  assert.ok(crops.some((k) => cached.includes(k)), 'training crops were downloaded to the worker');

  const db = stack.app.database.db;
  // Before /forget both people have rows; the friend is the one with two photos.
  const rows = await db.select().from(photos);
  const friendId = [...new Set(rows.map((p) => p.userId))].find((id) => rows.filter((p) => p.userId === id).length === 2);
  const friendRows = rows.filter((p) => p.userId === friendId);
  const friendKeys = friendRows.flatMap((p) => [p.storageKey, p.cropKey]).sort();
  assert.equal(friendKeys.length, 4);

  assert.equal((await me.post('/api/forget')).status, 200);
  assert.deepEqual(await bucketKeys(), friendKeys, 'only the friend\'s (shared) photos are left');
  // The bot deleted the objects; the worker machine's copies go at its next cache sweep (hourly in the worker).
  assert.ok((await cachedKeys()).some((k) => !friendKeys.includes(k)), 'the worker still has copies before its sweep');
  assert.ok((await workerStore.sweepCache()) > 0);
  assert.ok((await cachedKeys()).every((k) => friendKeys.includes(k)), 'no cached copy of the forgotten person is left');
});
