// The BullMQ processors: each loads its request from the database, runs it on the engine, stores the results,
// and keeps the job row and the person informed. Every state change goes through `JobRun`.
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { UnrecoverableError, WaitingError, type Job as QueueJob } from 'bullmq';
import { and, eq, inArray } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { Db } from '../src/db/client.ts';
import { adapters, generations, jobs, photos, type Job } from '../src/db/schema.ts';
import type { BlobStore } from '../src/storage/storage.ts';
import type { EventBus } from '../src/events/bus.ts';
import type { GenerateJobData, TrainJobData } from '../src/queue/index.ts';
import { jobEvent } from '../src/services/jobs.ts';
import type { Config } from '../src/config/index.ts';
import { EngineError, type EngineSupervisor } from './engine-client/supervisor.ts';
import type { ProgressEvent, TrainParams } from './engine-client/protocol.ts';

export interface ProcessorDeps {
  db: Db;
  store: BlobStore;
  events: EventBus;
  engine: EngineSupervisor;
  config: Config;
  logger: Logger;
}

/** Jobs running in this process, by job id, so cancel requests and shutdown can reach their engine request. */
export class RunningJobs {
  private readonly byJob = new Map<string, string>();
  shuttingDown = false;

  constructor(private readonly engine: EngineSupervisor) {}

  add(jobId: string, requestId: string) { this.byJob.set(jobId, requestId); }
  delete(jobId: string) { this.byJob.delete(jobId); }

  async cancel(jobId: string): Promise<boolean> {
    const requestId = this.byJob.get(jobId);
    return requestId ? this.engine.cancel(requestId) : false;
  }

  async cancelAll(): Promise<void> {
    await Promise.all([...this.byJob.keys()].map((jobId) => this.cancel(jobId)));
  }
}

const PROGRESS_WRITE_INTERVAL_MS = 1000;

class JobRun {
  private lastWrite = 0;
  readonly requestId: string;

  constructor(
    private readonly deps: ProcessorDeps,
    private readonly running: RunningJobs,
    readonly row: Job,
    private readonly queueJob: QueueJob,
  ) {
    // One engine request per attempt: a retry never collides with a late event of the attempt before.
    this.requestId = `${row.id}-${queueJob.attemptsMade}-${Date.now()}`;
  }

  async begin(): Promise<boolean> {
    const [row] = await this.deps.db
      .update(jobs)
      .set({ status: 'active', startedAt: new Date(), attempts: this.queueJob.attemptsMade + 1, error: null, errorCode: null })
      .where(and(eq(jobs.id, this.row.id), inArray(jobs.status, ['queued', 'active'])))
      .returning();
    if (!row) return false; // cancelled (or finished) before a worker picked it up
    this.running.add(row.id, this.requestId);
    await this.publish(row);
    return true;
  }

  /** Throttled: the row and the chat get at most one update a second, plus the last step. */
  onProgress = (event: ProgressEvent) => {
    const now = Date.now();
    if (now - this.lastWrite < PROGRESS_WRITE_INTERVAL_MS && event.step < event.total) return;
    this.lastWrite = now;
    const progress = event.total > 0 ? event.step / event.total : 0;
    void this.writeProgress(event, progress).catch((error: Error) => this.deps.logger.warn({ err: error }, 'progress write failed'));
  };

  private async writeProgress(event: ProgressEvent, progress: number) {
    await this.queueJob.updateProgress({ step: event.step, total: event.total, loss: event.loss });
    const [row] = await this.deps.db
      .update(jobs)
      .set({ progress, step: event.step, totalSteps: event.total })
      .where(and(eq(jobs.id, this.row.id), eq(jobs.status, 'active')))
      .returning();
    // The row left 'active' under us: the person cancelled and the pub/sub message may have been missed.
    if (!row) await this.running.cancel(this.row.id);
    else await this.publish(row, { loss: event.loss });
  }

  async complete(extra: Parameters<typeof jobEvent>[1] = {}) {
    const [row] = await this.deps.db
      .update(jobs)
      .set({ status: 'completed', progress: 1, finishedAt: new Date() })
      .where(eq(jobs.id, this.row.id))
      .returning();
    await this.publish(row!, extra);
  }

  /** Maps an engine failure onto the job: cancel, retry, give up, or hand back to the queue on shutdown. */
  async fail(error: unknown, token: string | undefined, onFinalFailure: () => Promise<void>): Promise<never | void> {
    const { db } = this.deps;
    if (error instanceof EngineError && (error.code === 'cancelled' || error.code === 'engine_stopped') && this.running.shuttingDown) {
      await db.update(jobs).set({ status: 'queued', progress: 0, step: null }).where(eq(jobs.id, this.row.id));
      await this.queueJob.moveToWait(token);
      throw new WaitingError();
    }
    if (error instanceof EngineError && error.code === 'cancelled') return; // JobService already marked it
    const retryable = error instanceof EngineError ? error.retryable : true;
    const lastAttempt = this.queueJob.attemptsMade + 1 >= (this.queueJob.opts.attempts ?? 1);
    const message = error instanceof Error ? error.message : String(error);
    const code = error instanceof EngineError ? error.code : 'internal';
    if (retryable && !lastAttempt) {
      await db.update(jobs).set({ status: 'queued', errorCode: code, error: message }).where(eq(jobs.id, this.row.id));
      throw error;
    }
    const [row] = await db
      .update(jobs)
      .set({ status: 'failed', errorCode: code, error: message, finishedAt: new Date() })
      .where(eq(jobs.id, this.row.id))
      .returning();
    await onFinalFailure();
    if (row) await this.publish(row);
    throw retryable ? error : new UnrecoverableError(message);
  }

  end() {
    this.running.delete(this.row.id);
  }

  private async publish(row: Job, extra: Parameters<typeof jobEvent>[1] = {}) {
    await this.deps.events.publish(row.userId, jobEvent(row, extra));
  }
}

async function loadJob(db: Db, jobId: string): Promise<Job | undefined> {
  const [row] = await db.select().from(jobs).where(eq(jobs.id, jobId));
  return row;
}

export function trainProcessor(deps: ProcessorDeps, running: RunningJobs) {
  return async (queueJob: QueueJob<TrainJobData>, token?: string) => {
    const { db, store, engine, config } = deps;
    const row = await loadJob(db, queueJob.data.jobId);
    if (!row) return { skipped: 'job row is gone (forgotten)' };
    const run = new JobRun(deps, running, row, queueJob);
    if (!(await run.begin())) return { skipped: 'cancelled before start' };
    const workDir = join(config.workDir, 'train', run.requestId);
    const adapterId = queueJob.data.adapterId;
    try {
      const [adapter] = await db.update(adapters).set({ status: 'training', updatedAt: new Date() }).where(eq(adapters.id, adapterId)).returning();
      if (!adapter) throw new UnrecoverableError('adapter row is gone');
      const crops = await db.select({ key: photos.cropKey }).from(photos).where(inArray(photos.id, adapter.photoIds));
      if (crops.length === 0) throw new EngineError('bad_request', 'All photos of this training were deleted.');
      await mkdir(workDir, { recursive: true });
      const result = await engine.train(
        {
          id: run.requestId,
          photos: await Promise.all(crops.map((c) => store.localPath(c.key))),
          output: join(workDir, 'lora.safetensors'),
          params: adapter.params as TrainParams,
        },
        run.onProgress,
      );
      const stored = await store.putFile(result.output, 'safetensors');
      await db
        .update(adapters)
        .set({
          status: 'ready',
          fileKey: stored.key,
          updatedAt: new Date(),
          metrics: { finalLoss: result.final_loss, steps: result.steps, seconds: result.seconds, losses: result.losses, photos: crops.length },
        })
        .where(eq(adapters.id, adapterId));
      await run.complete({ adapterId });
      return { adapterId, fileKey: stored.key };
    } catch (error) {
      return await run.fail(error, token, async () => {
        await db.update(adapters).set({ status: 'failed', updatedAt: new Date() }).where(eq(adapters.id, adapterId));
      });
    } finally {
      run.end();
      await rm(workDir, { recursive: true, force: true });
    }
  };
}

export function generateProcessor(deps: ProcessorDeps, running: RunningJobs) {
  return async (queueJob: QueueJob<GenerateJobData>, token?: string) => {
    const { db, store, engine, config } = deps;
    const row = await loadJob(db, queueJob.data.jobId);
    if (!row) return { skipped: 'job row is gone (forgotten)' };
    const run = new JobRun(deps, running, row, queueJob);
    if (!(await run.begin())) return { skipped: 'cancelled before start' };
    const workDir = join(config.workDir, 'generate', run.requestId);
    try {
      const [found] = await db
        .select({ generation: generations, adapterFile: adapters.fileKey })
        .from(generations)
        .leftJoin(adapters, eq(adapters.id, generations.adapterId))
        .where(eq(generations.id, queueJob.data.generationId));
      if (!found) throw new UnrecoverableError('generation row is gone');
      if (!found.adapterFile) throw new EngineError('not_found', 'The model for this request was deleted.');
      const { generation } = found;
      await mkdir(workDir, { recursive: true });
      const p = generation.params as { steps: number; guidanceScale: number; width: number; height: number; scheduler: 'unipc'; loraScale: number; controlnetScale?: number };
      const result = await engine.generate(
        {
          id: run.requestId,
          prompt: generation.prompt,
          negative_prompt: generation.negativePrompt,
          lora: await store.localPath(found.adapterFile),
          lora_scale: p.loraScale,
          control_image: generation.controlKey ? await store.localPath(generation.controlKey) : null,
          controlnet_scale: p.controlnetScale,
          steps: p.steps,
          guidance_scale: p.guidanceScale,
          seed: generation.seed,
          width: p.width,
          height: p.height,
          num_images: 1,
          scheduler: p.scheduler,
          output_dir: workDir,
        },
        run.onProgress,
      );
      const keys: string[] = [];
      for (const image of result.images) keys.push((await store.putFile(image, 'png')).key);
      await db.update(generations).set({ outputKeys: keys }).where(eq(generations.id, generation.id));
      await run.complete({ generationId: generation.id });
      return { generationId: generation.id, outputKeys: keys };
    } catch (error) {
      return await run.fail(error, token, async () => {});
    } finally {
      run.end();
      await rm(workDir, { recursive: true, force: true });
    }
  };
}
