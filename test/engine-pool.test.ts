// Two tiny engines under one worker (as one per GPU would be): both get work, a person's generations stay on the engine
// that holds their LoRA, and killing one engine mid-training moves the job to the other with exactly one result.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { eq } from 'drizzle-orm';
import { adapters, type Job } from '../src/db/schema.ts';
import type { EnginePool } from '../worker/engine-client/pool.ts';
import { eventually, jobRow as jobRowOf, startStack, startTrainingAs, type Stack } from './helpers/stack.ts';

let stack: Stack;
let pool: EnginePool;

before(async () => {
  stack = await startStack({ ENGINE_COUNT: '2', MIN_TRAINING_PHOTOS: '2', TRAIN_MAX_STEPS: '12', LIKENESS_SAMPLES: '1', TRAIN_ATTEMPTS: '3' });
  pool = stack.worker!.engine as EnginePool;
});
after(async () => stack.close());

const db = () => stack.app.database.db;
const jobRow = async (id: string): Promise<Job> => (await jobRowOf(stack, id))!;
const finished = (id: string) => eventually(async () => {
  const row = await jobRow(id);
  return ['completed', 'failed', 'cancelled'].includes(row.status) ? row : undefined;
}, 240_000, `job ${id} to finish`);

const trained = (name: string, seed: number) => startTrainingAs(stack, name, seed);

test('two trainings at once run on both engines; each person\'s generations stay on the engine that has their LoRA', { timeout: 300_000 }, async () => {
  const a = await trained('pool-a', 90);
  const b = await trained('pool-b', 100);
  assert.equal((await finished(a.started.job.id)).status, 'completed');
  assert.equal((await finished(b.started.job.id)).status, 'completed');
  const trainedOn = (jobId: string) => pool.history.find((r) => r.key === `job:${jobId}`)!.engine;
  assert.notEqual(trainedOn(a.started.job.id), trainedOn(b.started.job.id), 'both engines got a training');

  for (const person of [a, b]) {
    const key = `adapter:${person.started.adapter.id}`;
    const first = await stack.app.services.generation.imagine(person.user.id, 'a portrait of me');
    assert.equal((await finished(first.job.id)).status, 'completed');
    const second = await stack.app.services.generation.imagine(person.user.id, 'me on a mountain');
    assert.equal((await finished(second.job.id)).status, 'completed');
    const engines = new Set(pool.history.filter((r) => r.key === key).map((r) => r.engine));
    assert.equal(engines.size, 1, `${person.user.id}'s samples and portraits all ran on one engine`);
  }
});

test('killing the engine running a training moves the job to the other engine, with exactly one result', { timeout: 300_000 }, async () => {
  const { started } = await trained('pool-kill', 110);
  const key = `job:${started.job.id}`;
  await eventually(async () => ((await jobRow(started.job.id)).step ?? 0) >= 1 || undefined, 120_000, 'training to run');
  const victim = pool.history.filter((r) => r.key === key).at(-1)!.engine;
  process.kill(pool.engines[victim]!.pid!, 'SIGKILL');
  const done = await finished(started.job.id);
  assert.equal(done.status, 'completed', done.error ?? '');
  assert.equal(done.attempts, 2);
  const attempts = pool.history.filter((r) => r.key === key).map((r) => r.engine);
  assert.deepEqual(attempts, [victim, 1 - victim], 'the retry ran on the other engine');
  const rows = await db().select().from(adapters).where(eq(adapters.id, started.adapter.id));
  assert.equal(rows.length, 1);
  assert.equal(rows[0]!.status, 'ready');
  // The row completes inside the processor; BullMQ marks its record completed a moment after the processor returns.
  const queueJob = await stack.app.queues.train.getJob(`${started.job.id}-train`);
  await eventually(async () => (await queueJob!.getState()) === 'completed' || undefined, 30_000, 'the queue record to complete');
  await eventually(async () => pool.engines[victim]!.running || undefined, 120_000, 'the killed engine to be restarted');
});
