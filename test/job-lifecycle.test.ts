// The job lifecycle's races, each forced open: a cancel or a /forget that lands after the engine finished but before
// the results are recorded; a blob deleted while another request is about to refer to it; job rows that the queue
// lost or gave up on; a training retried after its engine died resumes from the checkpoint in storage.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { UnrecoverableError, Worker as BullWorker } from 'bullmq';
import { eq } from 'drizzle-orm';
import { adapters, blobLeases, jobs, trainingPreviews } from '../src/db/schema.ts';
import { putLeased, releaseLeases } from '../src/services/blobs.ts';
import { normalizeUpload } from '../src/images/normalize.ts';
import { redisConnection } from '../src/queue/index.ts';
import { startWorker, engineLaunch, type WorkerHandle } from '../worker/index.ts';
import { EngineSupervisor } from '../worker/engine-client/supervisor.ts';
import type { GenerateRequest, GenerateResult } from '../src/engine/protocol.ts';
import { eventually, jobRow as jobRowOf, startStack, startTrainingAs, type Stack } from './helpers/stack.ts';
import { makeSkeleton } from './helpers/images.ts';
import { testLogger } from './helpers/env.ts';

/**
 * The real engine, with a gate after each generation's result: the validation sample is the last engine call of a
 * training, so holding it open holds the window between "the engine finished" and "the worker records the result".
 */
class GatedEngine extends EngineSupervisor {
  gate?: { reached: () => void; release: Promise<void> };
  override async generate(request: Omit<GenerateRequest, 'op'>, onProgress?: Parameters<EngineSupervisor['generate']>[1]): Promise<GenerateResult> {
    const result = await super.generate(request, onProgress);
    if (this.gate) {
      this.gate.reached();
      await this.gate.release;
    }
    return result;
  }

  /** Arms the gate; resolves `reached` when a generation is held, and `release()` lets it go. */
  arm() {
    let reached!: () => void;
    let release!: () => void;
    const reachedP = new Promise<void>((r) => { reached = r; });
    const releaseP = new Promise<void>((r) => { release = r; });
    this.gate = { reached, release: releaseP };
    return { reached: reachedP, release: () => { this.gate = undefined; release(); } };
  }
}

let stack: Stack;
let engine: GatedEngine;
let worker: WorkerHandle;

before(async () => {
  // With intermediate previews: they are among what a late cancel and a /forget must leave nothing of.
  stack = await startStack({ MIN_TRAINING_PHOTOS: '2', TRAIN_MAX_STEPS: '4', LIKENESS_SAMPLES: '1', TRAIN_CHECKPOINT_STEPS: '0', TRAIN_PREVIEWS: '2' }, false);
  engine = new GatedEngine({ launch: engineLaunch(stack.env.config), logger: testLogger });
  worker = await startWorker({ db: stack.app.database.db, store: stack.app.store, events: stack.app.events, vision: stack.app.vision, config: stack.env.config, logger: testLogger }, engine);
  stack.worker = worker;
});
after(async () => stack.close());

const db = () => stack.app.database.db;
const jobRow = (id: string) => jobRowOf(stack, id);

async function storedFiles(): Promise<string[]> {
  const root = stack.env.config.storageDir;
  if (!existsSync(root)) return [];
  const files: string[] = [];
  for (const dir of await readdir(root)) {
    if (dir.startsWith('.')) continue;
    for (const name of await readdir(join(root, dir)).catch(() => [])) files.push(`${dir}/${name}`);
  }
  return files;
}

const trainingUser = (name: string, photoSeed: number) => startTrainingAs(stack, name, photoSeed);

const queueState = async (jobId: string) => (await stack.app.queues.train.getJob(`${jobId}-train`))?.getState();

test('a cancel that lands after the engine finished wins: the job stays cancelled and nothing it made is kept', { timeout: 240_000 }, async () => {
  const filesBefore = await storedFiles();
  const held = engine.arm();
  const { user, started } = await trainingUser('cancel-late', 10);
  const photoFiles = (await storedFiles()).filter((f) => !filesBefore.includes(f));
  await held.reached; // the engine has trained and sampled; the LoRA files are already in storage
  const lorasBefore = (await storedFiles()).filter((f) => f.endsWith('.safetensors'));
  assert.ok(lorasBefore.length >= 1, 'the window is open: the adapter is stored but not yet recorded');
  assert.equal((await db().select().from(trainingPreviews).where(eq(trainingPreviews.jobId, started.job.id))).length, 2, 'its previews are stored');
  await stack.app.services.jobs.cancel(user.id);
  held.release();
  await eventually(async () => (await queueState(started.job.id)) === 'completed', 60_000, 'the worker to finish the job');
  const row = await jobRow(started.job.id);
  assert.equal(row!.status, 'cancelled');
  assert.equal(row!.errorCode, 'cancelled');
  const [adapter] = await db().select().from(adapters).where(eq(adapters.id, started.adapter.id));
  assert.equal(adapter!.status, 'cancelled');
  assert.equal(adapter!.fileKey, null);
  assert.deepEqual((await storedFiles()).sort(), [...filesBefore, ...photoFiles].sort(), 'the late LoRA files, samples and previews were deleted; the photos stay');
  assert.equal((await db().select().from(trainingPreviews).where(eq(trainingPreviews.jobId, started.job.id))).length, 0);
  assert.deepEqual(await db().select().from(blobLeases), [], 'no lease is left behind');
});

test('/forget during a running job leaves no row, file, Redis key or work folder that names the person', { timeout: 240_000 }, async () => {
  const filesBefore = await storedFiles();
  const held = engine.arm();
  const { user, started } = await trainingUser('forget-late', 20);
  await held.reached;
  assert.equal((await db().select().from(trainingPreviews).where(eq(trainingPreviews.jobId, started.job.id))).length, 2, 'its previews are stored');
  const forgotten = await stack.app.services.forget.forget(user.id);
  assert.equal(forgotten.photos, 2);
  held.release();
  await eventually(async () => (await queueState(started.job.id)) === undefined || (await queueState(started.job.id)) === 'completed', 60_000, 'the worker to let go');
  assert.equal(await jobRow(started.job.id), undefined);
  assert.deepEqual(await storedFiles(), filesBefore, 'every photo, crop, LoRA, sample and preview of the person is gone');
  assert.deepEqual(await db().select().from(blobLeases), []);
  // Redis: no key, and no queue record, mentions the person's id.
  const redis = stack.app.queues.connection;
  const keys = await redis.keys(`${stack.env.config.queuePrefix}:*`);
  for (const key of keys) {
    assert.ok(!key.includes(user.id), `key ${key} names the person`);
    if ((await redis.type(key)) === 'hash') {
      const values = Object.values(await redis.hgetall(key)).join(' ');
      assert.ok(!values.includes(user.id), `queue record ${key} names the person`);
    }
  }
  assert.equal(existsSync(join(stack.env.config.workDir, 'train', started.job.id)), false, 'the engine scratch folder is gone');
});

test('a blob another request has just stored is not deleted by a failing request with the same bytes', { timeout: 60_000 }, async () => {
  const { users, generation } = stack.app.services;
  const skeleton = await makeSkeleton();
  // Person B's /pose has stored the reference (content-addressed: the same key as A's) but not yet written its row.
  // (Without the pose models, /pose stores the normalized upload itself.)
  const normalized = await normalizeUpload(skeleton, { maxBytes: stack.env.config.photos.maxUploadBytes, minShortSide: 64 });
  const inFlight = await putLeased(db(), stack.app.store, normalized.data, 'jpg');
  // Person A's identical /pose fails (no model) and cleans up what it stored: under the old rule this deleted B's file.
  const a = await users.resolve('web', 'pose-fails');
  const filesBefore = await storedFiles();
  await assert.rejects(generation.pose(a.id, skeleton, 'a person'), { code: 'no_model' });
  assert.deepEqual(await storedFiles(), filesBefore, 'A stored the same key as B');
  assert.ok(await stack.app.store.has(inFlight.key), 'B still finds the reference it is about to refer to');
  // Once B is done with it (here: gives up too), the blob goes.
  await releaseLeases(db(), [inFlight.leaseId]);
  await assert.rejects(generation.pose(a.id, skeleton, 'a person'), { code: 'no_model' });
  assert.equal(await stack.app.store.has(inFlight.key), false);
});

test('reconciliation re-queues a job the queue lost and fails one the queue gave up on, freeing the person', { timeout: 240_000 }, async () => {
  await worker.close();
  try {
    // Lost: the queue entry vanished (a Redis without persistence restarted).
    const lost = await trainingUser('lost-job', 30);
    await (await stack.app.queues.train.getJob(`${lost.started.job.id}-train`))!.remove();
    // Given up: a worker took the job and died; BullMQ moved it to failed as stalled, never calling our processor.
    const stalled = await trainingUser('stalled-job', 40);
    const thiefConnection = redisConnection(stack.env.config.redisUrl, true);
    const thief = new BullWorker('train', null, { connection: thiefConnection, prefix: stack.env.config.queuePrefix });
    const token = 'dead-worker';
    let taken = await thief.getNextJob(token);
    while (taken && taken.data.jobId !== stalled.started.job.id) taken = await thief.getNextJob(token);
    assert.ok(taken, 'the stalled job was taken');
    await db().update(jobs).set({ status: 'active' }).where(eq(jobs.id, stalled.started.job.id)); // our processor had begun it
    // As BullMQ does past maxStalledCount: failed for good, with its reason.
    await taken.moveToFailed(new UnrecoverableError('job stalled more than allowable limit'), token);
    await thief.close();
    await thiefConnection.quit();

    worker = await startWorker({ db: db(), store: stack.app.store, events: stack.app.events, vision: stack.app.vision, config: stack.env.config, logger: testLogger }, engine);
    stack.worker = worker;
    const report = await worker.reconcile(0);
    assert.ok(report.requeued >= 1 && report.failed >= 1, JSON.stringify(report));
    const failed = await jobRow(stalled.started.job.id);
    assert.equal(failed!.status, 'failed');
    assert.equal(failed!.errorCode, 'worker_lost');
    const [adapter] = await db().select().from(adapters).where(eq(adapters.id, stalled.started.adapter.id));
    assert.equal(adapter!.status, 'failed');
    assert.equal((await stack.app.services.training.start(stalled.user.id)).created, true, 'the person can train again');
    await eventually(async () => (await jobRow(lost.started.job.id))?.status === 'completed', 180_000, 'the re-queued job to complete');
  } finally {
    for (const open of await db().select().from(jobs).where(eq(jobs.status, 'queued'))) await stack.app.services.jobs.cancel(open.userId, open.id).catch(() => undefined);
  }
});
