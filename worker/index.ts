// The worker: one BullMQ worker per queue over one engine process, with cancel and graceful shutdown.
import { Worker } from 'bullmq';
import { resolve } from 'node:path';
import type { Redis } from 'ioredis';
import { channels, queueNames, redisConnection } from '../src/queue/index.ts';
import { repoRoot, type Config } from '../src/config/index.ts';
import { EngineSupervisor } from './engine-client/supervisor.ts';
import { RunningJobs, generateProcessor, trainProcessor, type ProcessorDeps } from './processors.ts';

export function engineLaunch(config: Config) {
  const e = config.engine;
  const args = ['-m', 'portrait_engine', '--profile', e.profile, '--cache-dir', e.cacheDir];
  // 'auto' leaves the choice to the engine: CUDA when torch sees a GPU, else the CPU.
  if (e.device !== 'auto') args.push('--device', e.device);
  if (e.profile === 'real') args.push('--base-model', e.baseModel!, '--controlnet', e.controlnet!);
  // ENGINE_DEVICE in our own environment would override the engine's choice, so it is passed only as the flag.
  return { python: e.python, args, cwd: resolve(repoRoot, 'worker/engine'), env: { ENGINE_DEVICE: undefined } };
}

export interface WorkerHandle {
  engine: EngineSupervisor;
  /** Hands running jobs back to the queue, then stops the workers and the engine. */
  close(): Promise<void>;
}

export async function startWorker(deps: Omit<ProcessorDeps, 'engine'>, engine?: EngineSupervisor): Promise<WorkerHandle> {
  const { config, logger } = deps;
  const supervisor = engine ?? new EngineSupervisor({ launch: engineLaunch(config), logger: logger.child({ part: 'engine' }) });
  await supervisor.start();
  const running = new RunningJobs(supervisor);
  const full: ProcessorDeps = { ...deps, engine: supervisor };
  const connection = redisConnection(config.redisUrl, true);
  const options = { connection, prefix: config.queuePrefix, concurrency: 1 };
  // Each queue has exactly one job name and one handler; anything else is a bug, not a retry.
  const workers = [
    new Worker(queueNames.train, trainProcessor(full, running), options),
    new Worker(queueNames.generate, generateProcessor(full, running), options),
  ];
  for (const worker of workers) {
    worker.on('error', (error) => logger.error({ err: error, queue: worker.name }, 'worker error'));
    worker.on('failed', (job, error) => logger.warn({ queue: worker.name, jobId: job?.id, err: error }, 'job failed'));
  }
  const cancelSubscriber: Redis = redisConnection(config.redisUrl, true);
  cancelSubscriber.on('message', (_channel: string, jobId: string) => {
    void running.cancel(jobId).catch((error: Error) => logger.warn({ err: error, jobId }, 'cancel failed'));
  });
  await cancelSubscriber.subscribe(channels.cancel(config.queuePrefix));
  logger.info({ engine: supervisor.info }, 'worker started');

  return {
    engine: supervisor,
    async close() {
      running.shuttingDown = true;
      await Promise.all(workers.map((w) => w.pause(true)));
      await running.cancelAll();
      await Promise.all(workers.map((w) => w.close()));
      await supervisor.stop();
      cancelSubscriber.disconnect();
      await connection.quit();
    },
  };
}
