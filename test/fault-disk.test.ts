// Fault: the storage disk is full. Storage lives on a 2 MiB tmpfs mounted for this test; the photos fit, then the
// rest is filled, so the trained LoRA can't be saved (ENOSPC).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { eq } from 'drizzle-orm';
import { adapters, blobLeases, jobs } from '../src/db/schema.ts';
import { PlaygroundClient, startStack, type Stack } from './helpers/stack.ts';
import { makePhotos } from './helpers/images.ts';

const run = promisify(execFile);
let mountPoint: string | undefined;
let skipReason: string | undefined;
let stack: Stack;

before(async () => {
  const dir = await mkdtemp(join(tmpdir(), 'portrait-fulldisk-'));
  try {
    await run('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', dir]);
    mountPoint = dir;
  } catch (error) {
    // Mounting needs root (or CAP_SYS_ADMIN); without it there is no honest way to make a real ENOSPC here.
    skipReason = `cannot mount a 2 MiB tmpfs (${(error as Error).message.split('\n')[0]}): run as root to force a full disk`;
    await rm(dir, { recursive: true, force: true });
    return;
  }
  stack = await startStack({
    STORAGE_DIR: join(mountPoint, 'storage'),
    MIN_TRAINING_PHOTOS: '2', TRAIN_MAX_STEPS: '2', LIKENESS_SAMPLES: '1', TRAIN_CHECKPOINT_STEPS: '0', TRAIN_ATTEMPTS: '1',
  });
});
after(async () => {
  await stack?.close();
  if (mountPoint) {
    await run('umount', [mountPoint]).catch(() => undefined);
    await rm(mountPoint, { recursive: true, force: true });
  }
});

/** Fills the filesystem: writes 64 KiB chunks into a filler file until the kernel says ENOSPC. */
async function fill(dir: string) {
  await mkdir(dir, { recursive: true });
  let i = 0;
  for (;;) {
    try {
      await writeFile(join(dir, `filler-${i++}`), Buffer.alloc(64 * 1024, 1));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOSPC') return;
      throw error;
    }
  }
}

async function storedFiles(root: string): Promise<string[]> {
  const files: string[] = [];
  for (const entry of await readdir(root, { recursive: true, withFileTypes: true })) {
    if (entry.isFile() && !entry.parentPath.includes('.filler')) files.push(join(entry.parentPath, entry.name).slice(root.length));
  }
  return files.sort();
}

test('a full storage disk: the person is told, no adapter is ready, no partial blob is left, the job fails cleanly', { timeout: 180_000 }, async (t) => {
  if (skipReason) return t.skip(skipReason);
  const root = stack.env.config.storageDir;
  const web = new PlaygroundClient(stack.baseUrl);
  const photos = await makePhotos(3, 700);
  const uploaded = await web.upload('/api/photos', photos.slice(0, 2).map((p, i) => [`p${i}.jpg`, p] as [string, Buffer]));
  assert.equal(uploaded.status, 200, JSON.stringify(uploaded.body));
  await fill(join(root, '.filler'));
  const filesBefore = await storedFiles(root);

  // A photo upload on the full disk: a clear answer, not a 500.
  const refused = await web.upload('/api/photos', [['p2.jpg', photos[2]!]]);
  assert.equal(refused.status, 507, JSON.stringify(refused.body));
  assert.equal(refused.body.error.code, 'storage_full');
  assert.match(refused.body.error.message, /storage is full/i);

  const started = Date.now();
  const train = await web.post('/api/train');
  assert.equal(train.status, 202, JSON.stringify(train.body));
  const done = await web.waitForJob(train.body.jobId, 150_000);
  const ms = Date.now() - started;
  assert.equal(done.job.status, 'failed');
  const [row] = await stack.app.database.db.select().from(jobs).where(eq(jobs.id, train.body.jobId));
  assert.equal(row!.errorCode, 'storage_full');
  assert.match(done.job.error, /storage is full/i, 'the person is told why, in words');
  const [adapter] = await stack.app.database.db.select().from(adapters).where(eq(adapters.id, train.body.adapterId));
  assert.equal(adapter!.status, 'failed');
  assert.equal(adapter!.fileKey, null);
  assert.deepEqual(await storedFiles(root), filesBefore, 'no partial LoRA, sample or temp file was left in storage');
  assert.deepEqual(await stack.app.database.db.select().from(blobLeases), [], 'no lease is left behind');

  // Space freed: the next training succeeds without a restart.
  await rm(join(root, '.filler'), { recursive: true, force: true });
  const again = await web.post('/api/train');
  assert.equal(again.status, 202, JSON.stringify(again.body));
  assert.equal((await web.waitForJob(again.body.jobId, 150_000)).job.status, 'completed');
  console.log(`# full disk: training failed as storage_full ${ms} ms after it was queued; after freeing space the next one completed`);
});
