// Fault: the Redis behind the queue is killed (SIGKILL, no shutdown save) and restarted on the same port while
// trainings wait and one runs. The stack is pointed at a test-owned redis-server with the append-only file on; the
// shared 6379 server is never touched.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { eq, inArray } from 'drizzle-orm';
import { adapters, jobs } from '../src/db/schema.ts';
import { eventually, startStack, type Stack } from './helpers/stack.ts';
import { createOwnRedis, type OwnRedis } from './helpers/own-services.ts';
import { makePhotos } from './helpers/images.ts';

let redis: OwnRedis;
let stack: Stack;

before(async () => {
  redis = await createOwnRedis();
  stack = await startStack({
    REDIS_URL: redis.url,
    // One training at a time, so the others wait in the queue while the first runs.
    WORKER_TRAIN_CONCURRENCY: '1',
    MIN_TRAINING_PHOTOS: '2', TRAIN_MAX_STEPS: '3', LIKENESS_SAMPLES: '1', TRAIN_CHECKPOINT_STEPS: '0',
  });
});
after(async () => {
  await stack?.close();
  await redis?.destroy();
});

const db = () => stack.app.database.db;

async function startTrainings(names: string[], seed: number) {
  const { users, photos, training } = stack.app.services;
  const started = [];
  for (const [i, name] of names.entries()) {
    const user = await users.resolve('web', name);
    for (const photo of await makePhotos(2, seed + i * 2)) assert.ok((await photos.add(user.id, photo)).ok);
    started.push({ user, ...(await training.start(user.id)) });
  }
  return started;
}

async function loraFiles(): Promise<string[]> {
  const root = stack.env.config.storageDir;
  const files: string[] = [];
  for (const dir of await readdir(root)) for (const name of await readdir(`${root}/${dir}`).catch(() => [])) if (name.endsWith('.safetensors')) files.push(name);
  return files;
}

test('Redis SIGKILLed and restarted with its AOF while jobs wait and one runs: every job completes exactly once', { timeout: 300_000 }, async () => {
  const started = await startTrainings(['aof-a', 'aof-b', 'aof-c'], 500);
  const ids = started.map((s) => s.job.id);
  await eventually(async () => (await db().select().from(jobs).where(inArray(jobs.id, ids))).some((j) => j.status === 'active' && (j.step ?? 0) >= 1), 60_000, 'one training to be running');
  const before = await db().select().from(jobs).where(inArray(jobs.id, ids));
  assert.deepEqual(before.map((j) => j.status).sort(), ['active', 'queued', 'queued'], 'one runs, two wait');

  // ioredis prints to stderr for a connection that has no error listener: every one of ours must have one.
  const unhandled: string[] = [];
  const consoleError = console.error;
  console.error = (...args: unknown[]) => { if (String(args[0]).includes('Unhandled error event')) unhandled.push(String(args[0])); else consoleError(...args); };
  const killedAt = Date.now();
  await redis.kill();
  await new Promise((r) => setTimeout(r, 1500)); // an outage, not a blip: every client sees the connection drop
  await redis.start();
  const downMs = Date.now() - killedAt;

  await eventually(async () => (await db().select().from(jobs).where(inArray(jobs.id, ids))).every((j) => j.status === 'completed'), 180_000, 'every training to complete')
    .catch(async (error: Error) => {
      const rows = await db().select().from(jobs).where(inArray(jobs.id, ids));
      const states = await Promise.all(rows.map(async (j) => `${j.status}/${await (await stack.app.queues.train.getJob(j.queueJobId))?.getState()}`));
      throw new Error(`${error.message}: rows/queue ${states.join(', ')}`);
    });
  const allDoneMs = Date.now() - killedAt;
  console.error = consoleError;
  assert.deepEqual(unhandled, [], 'every Redis connection handles its errors');
  // Exactly once: each BullMQ job completed after one attempt, each row ran once, one ready adapter per person.
  for (const s of started) {
    const queueJob = await stack.app.queues.train.getJob(s.job.queueJobId);
    assert.ok(queueJob, `BullMQ still has ${s.job.queueJobId}`);
    // The row completes inside the processor; the BullMQ record follows a moment after the processor returns.
    await eventually(async () => (await queueJob.getState()) === 'completed' || undefined, 30_000, 'the queue record to complete');
    assert.equal((await stack.app.queues.train.getJob(s.job.queueJobId))!.attemptsMade, 1, 'it ran once');
    const [row] = await db().select().from(jobs).where(eq(jobs.id, s.job.id));
    assert.equal(row!.attempts, 1);
    const rows = await db().select().from(adapters).where(eq(adapters.userId, s.user.id));
    assert.deepEqual(rows.map((a) => a.status), ['ready']);
  }
  const readyKeys = (await db().select().from(adapters).where(inArray(adapters.userId, started.map((s) => s.user.id)))).map((a) => a.fileKey);
  assert.equal(new Set(readyKeys).size, 3);
  const report = await stack.worker!.reconcile(0);
  assert.deepEqual({ requeued: report.requeued, failed: report.failed }, { requeued: 0, failed: 0 }, 'the AOF kept every queue entry: nothing to put right');
  console.log(`# redis AOF fault: down ${downMs} ms; all 3 trainings completed ${allDoneMs} ms after the kill; ${(await loraFiles()).length} LoRA files`);
});
