// Worker lifecycle on the real queue and tiny engine: cancel mid-training, shutdown hands the running job back,
// and an engine that dies is restarted and its job retried.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { eq } from 'drizzle-orm';
import { adapters, jobs, type Job } from '../src/db/schema.ts';
import { eventually, startStack, type Stack } from './helpers/stack.ts';
import { makePhotos } from './helpers/images.ts';

let stack: Stack;

before(async () => {
  // Long trainings, so each test can act while one is running.
  stack = await startStack({ MIN_TRAINING_PHOTOS: '2', TRAIN_MAX_STEPS: '5000' });
});
after(async () => stack.close());

async function userTraining(name: string) {
  const { users, photos, training } = stack.app.services;
  const user = await users.resolve('web', name);
  for (const photo of await makePhotos(2, name.length * 10)) assert.ok((await photos.add(user.id, photo)).ok);
  return { user, started: await training.start(user.id) };
}

const jobRow = async (id: string): Promise<Job> => (await stack.app.database.db.select().from(jobs).where(eq(jobs.id, id)))[0]!;
const runningStep = (id: string) => eventually(async () => {
  const row = await jobRow(id);
  return row.status === 'active' && (row.step ?? 0) >= 1 ? row : undefined;
}, 120_000, 'training to make progress');

test('cancel stops a running training within moments and frees the engine', { timeout: 200_000 }, async () => {
  const { user, started } = await userTraining('cancel-running');
  await runningStep(started.job.id);
  const asked = Date.now();
  await stack.app.services.jobs.cancel(user.id);
  const queueJob = await stack.app.queues.train.getJob(`${started.job.id}-train`);
  await eventually(async () => (await queueJob!.getState()) === 'completed', 30_000, 'the worker to let go of the job');
  assert.ok(Date.now() - asked < 30_000);
  assert.equal((await jobRow(started.job.id)).status, 'cancelled');
  const [adapter] = await stack.app.database.db.select().from(adapters).where(eq(adapters.id, started.adapter.id));
  assert.equal(adapter!.status, 'cancelled');
  assert.equal(adapter!.fileKey, null);
  assert.equal((await stack.worker!.engine.ping()).pong, true, 'the engine serves the next request');
});

test('shutdown hands the running job back to the queue; the next worker picks it up', { timeout: 200_000 }, async () => {
  const { user, started } = await userTraining('shutdown-running');
  await runningStep(started.job.id);
  await stack.worker!.close();
  const queueJob = await stack.app.queues.train.getJob(`${started.job.id}-train`);
  assert.equal(await queueJob!.getState(), 'waiting');
  const row = await jobRow(started.job.id);
  assert.equal(row.status, 'queued');

  await stack.startWorker();
  await runningStep(started.job.id);
  await stack.app.services.jobs.cancel(user.id);
});

test('an engine that dies is restarted and the job is retried', { timeout: 200_000 }, async () => {
  const { user, started } = await userTraining('engine-crash');
  const before = await runningStep(started.job.id);
  const pid = stack.worker!.engine.pid!;
  process.kill(pid, 'SIGKILL');
  const retried = await eventually(async () => {
    const row = await jobRow(started.job.id);
    return row.attempts === before.attempts + 1 && row.status === 'active' ? row : undefined;
  }, 150_000, 'the job to be retried');
  assert.equal(retried.attempts, 2);
  assert.notEqual(stack.worker!.engine.pid, pid, 'a new engine process');
  await stack.app.services.jobs.cancel(user.id);
});
