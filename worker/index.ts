// The worker: one BullMQ worker per queue over its engines (one per GPU), with cancel, reconciliation of job rows with the
// queue, and graceful shutdown.
import { Worker } from 'bullmq';
import { resolve } from 'node:path';
import type { Redis } from 'ioredis';
import { JobQueues, channels, queueNames, redisConnection } from '../src/queue/index.ts';
import { repoRoot, type Config } from '../src/config/index.ts';
import { JobState } from '../src/services/job-state.ts';
import { sweepExpiredLeases } from '../src/services/blobs.ts';
import { EnginePool, type EngineClient } from './engine-client/pool.ts';
import { RunningJobs, generateProcessor, trainProcessor, type ProcessorDeps } from './processors.ts';
import { reconcileJob, reconcileJobs } from './reconcile.ts';
import { engineCheck, type HealthChecks } from '../src/health.ts';

/** How often a remote store's read cache is swept of copies whose blobs are gone. */
const CACHE_SWEEP_MS = 60 * 60 * 1000;

export function engineLaunch(config: Config) {
  const e = config.engine;
  const args = ['-m', 'portrait_engine', '--profile', e.profile, '--cache-dir', e.cacheDir];
  // 'auto' leaves the choice to the engine: CUDA when torch sees a GPU, else the CPU.
  if (e.device !== 'auto') args.push('--device', e.device);
  if (e.profile === 'real') args.push('--base-model', e.baseModel!, '--controlnet', e.controlnet!);
  args.push('--safety', e.safety, '--safety-checker', e.safetyChecker);
  // ENGINE_DEVICE in our own environment would override the engine's choice, so it is passed only as the flag.
  return { python: e.python, args, cwd: resolve(repoRoot, 'worker/engine'), env: { ENGINE_DEVICE: undefined } };
}

/** One engine per configured GPU (each seeing only its own), or ENGINE_COUNT engines on the engine's own device. */
export function enginePool(config: Config, logger: ProcessorDeps['logger']) {
  const base = engineLaunch(config);
  const { gpus, count } = config.engine;
  const launches = gpus
    ? gpus.map((gpu) => ({ ...base, env: { ...base.env, CUDA_VISIBLE_DEVICES: gpu } }))
    : Array.from({ length: count }, () => base);
  return new EnginePool({
    launches,
    logger: logger.child({ source: 'engine' }),
    readyTimeoutMs: config.engine.readyTimeoutMs,
    watchdogMs: config.engine.watchdogMs,
  });
}

export interface WorkerHandle {
  engine: EngineClient;
  /** Runs one reconciliation of open job rows with the queue now (it also runs at start and periodically). */
  reconcile(graceMs?: number): ReturnType<typeof reconcileJobs>;
  /** Hands running jobs back to the queue, then stops the workers and the engine. */
  close(): Promise<void>;
}

export type WorkerDeps = Omit<ProcessorDeps, 'engine' | 'state'> & { /** The process's readiness checks: the worker adds its engine. */ health?: HealthChecks };

export async function startWorker(deps: WorkerDeps, engine?: EngineClient): Promise<WorkerHandle> {
  const { config, logger } = deps;
  const supervisor = engine ?? enginePool(config, logger);
  // An engine that fails to start is restarted with backoff; jobs wait for it instead of the worker failing.
  await supervisor.start().catch((error: Error) => logger.error({ err: error }, 'the engine did not start; retrying'));
  const running = new RunningJobs(supervisor);
  const state = new JobState(deps.db);
  const full: ProcessorDeps = { ...deps, engine: supervisor, state };
  const connection = redisConnection(config.redisUrl, true, logger);
  deps.health?.add('engine', engineCheck(supervisor));
  const queues = new JobQueues(config, redisConnection(config.redisUrl, false, logger));
  const reconcileDeps = { db: deps.db, state, queues, events: deps.events, logger };
  const options = {
    connection,
    prefix: config.queuePrefix,
    lockDuration: config.worker.lockDurationMs,
    stalledInterval: config.worker.stalledIntervalMs,
  };
  // Each queue has exactly one job name and one handler; anything else is a bug, not a retry. Several jobs run at
  // once: the engine's scheduler batches them, and JobState keeps each job's transitions safe.
  const workers = [
    new Worker(queueNames.train, trainProcessor(full, running), { ...options, concurrency: config.worker.trainConcurrency }),
    new Worker(queueNames.generate, generateProcessor(full, running), { ...options, concurrency: config.worker.generateConcurrency }),
  ];
  for (const worker of workers) {
    worker.on('error', (error) => logger.error({ err: error, queue: worker.name }, 'worker error'));
    worker.on('failed', (job, error) => {
      logger.warn({ queue: worker.name, jobId: job?.data.jobId, err: error }, 'job failed');
      // A job BullMQ failed without running our processor (stalled too often) still has an open row.
      const jobId = job?.data.jobId;
      if (jobId && !running.has(jobId)) {
        void state.get(jobId)
          .then((row) => (row && (row.status === 'queued' || row.status === 'active') ? reconcileJob(reconcileDeps, row) : undefined))
          .catch((err: Error) => logger.warn({ err, jobId }, 'reconciling a failed job'));
      }
    });
  }
  const cancelSubscriber: Redis = redisConnection(config.redisUrl, true, logger);
  cancelSubscriber.on('message', (_channel: string, jobId: string) => {
    void running.cancel(jobId).catch((error: Error) => logger.warn({ err: error, jobId }, 'cancel failed'));
  });
  await cancelSubscriber.subscribe(channels.cancel(config.queuePrefix));

  let cacheSweptAt = 0;
  const housekeeping = async () => {
    await reconcileJobs(reconcileDeps).catch((error: Error) => logger.warn({ err: error }, 'reconciliation failed'));
    await sweepExpiredLeases(deps.db, deps.store).catch((error: Error) => logger.warn({ err: error }, 'lease sweep failed'));
    // A remote store's read cache may hold copies of blobs /forget deleted on another machine: hourly (a HEAD each).
    if (deps.store.sweepCache && Date.now() - cacheSweptAt >= CACHE_SWEEP_MS) {
      cacheSweptAt = Date.now();
      await deps.store.sweepCache().catch((error: Error) => logger.warn({ err: error }, 'storage cache sweep failed'));
    }
  };
  await housekeeping();
  const timer = setInterval(() => void housekeeping(), config.reconcileIntervalMs);
  timer.unref();
  logger.info({ engine: supervisor.info }, 'worker started');

  return {
    engine: supervisor,
    reconcile: (graceMs) => reconcileJobs(reconcileDeps, graceMs),
    async close() {
      deps.health?.remove('engine');
      clearInterval(timer);
      running.shuttingDown = true;
      await Promise.all(workers.map((w) => w.pause(true)));
      await running.cancelAll();
      await Promise.all(workers.map((w) => w.close()));
      await supervisor.stop();
      cancelSubscriber.disconnect();
      await queues.close();
      await queues.connection.quit();
      await connection.quit();
    },
  };
}
