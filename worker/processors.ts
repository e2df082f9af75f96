// The BullMQ processors: each loads its request from the database, runs it on the engine, stores the results,
// and keeps the job row and the person informed. Every state change goes through `JobRun`.
import { mkdir, readFile, rm } from 'node:fs/promises';
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
import { withPolicyNegative } from '../src/services/prompt-policy.ts';
import type { Config } from '../src/config/index.ts';
import { EngineError, type EngineSupervisor } from './engine-client/supervisor.ts';
import type { ProgressEvent, TrainParams } from './engine-client/protocol.ts';
import type { VisionService } from '../src/vision/index.ts';

export interface ProcessorDeps {
  db: Db;
  store: BlobStore;
  events: EventBus;
  engine: EngineSupervisor;
  config: Config;
  logger: Logger;
  vision: VisionService;
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
  requestId: string;

  constructor(
    private readonly deps: ProcessorDeps,
    private readonly running: RunningJobs,
    readonly row: Job,
    private readonly queueJob: QueueJob,
  ) {
    // One engine request per attempt: a retry never collides with a late event of the attempt before.
    this.requestId = `${row.id}-${queueJob.attemptsMade}-${Date.now()}`;
  }

  /** A fresh engine request id for the next step of this job (e.g. each sample portrait), reachable by cancel. */
  nextRequest(step: string): string {
    this.requestId = `${this.row.id}-${this.queueJob.attemptsMade}-${step}-${Date.now()}`;
    this.running.add(this.row.id, this.requestId);
    return this.requestId;
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

interface JobBody<Data> {
  /** Runs the job on the engine inside `workDir`; its return value becomes the BullMQ job's result. */
  run(run: JobRun, data: Data, workDir: string): Promise<Record<string, unknown>>;
  /** Undoes what the job started when it fails for good (e.g. the adapter row it was filling). */
  onFinalFailure?(data: Data): Promise<void>;
}

/** The lifecycle every job shares: load its row, skip it if cancelled, run it, map failures, clean up. */
function processor<Data extends { jobId: string }>(deps: ProcessorDeps, running: RunningJobs, queue: string, body: JobBody<Data>) {
  return async (queueJob: QueueJob<Data>, token?: string) => {
    const [row] = await deps.db.select().from(jobs).where(eq(jobs.id, queueJob.data.jobId));
    if (!row) return { skipped: 'job row is gone (forgotten)' };
    const run = new JobRun(deps, running, row, queueJob);
    if (!(await run.begin())) return { skipped: 'cancelled before start' };
    const workDir = join(deps.config.workDir, queue, run.requestId);
    try {
      await mkdir(workDir, { recursive: true });
      return await body.run(run, queueJob.data, workDir);
    } catch (error) {
      return await run.fail(error, token, async () => body.onFinalFailure?.(queueJob.data));
    } finally {
      run.end();
      await rm(workDir, { recursive: true, force: true });
    }
  };
}

export function trainProcessor(deps: ProcessorDeps, running: RunningJobs) {
  const { db, store, engine } = deps;
  const setAdapter = (adapterId: string, values: Partial<typeof adapters.$inferInsert>) =>
    db.update(adapters).set({ ...values, updatedAt: new Date() }).where(eq(adapters.id, adapterId)).returning();
  return processor<TrainJobData>(deps, running, 'train', {
    async run(run, { adapterId }, workDir) {
      const [adapter] = await setAdapter(adapterId, { status: 'training' });
      if (!adapter) throw new UnrecoverableError('adapter row is gone');
      const crops = await db.select({ key: photos.cropKey }).from(photos).where(inArray(photos.id, adapter.photoIds));
      if (crops.length === 0) throw new EngineError('bad_request', 'All photos of this training were deleted.');
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
      const kohya = result.kohya_output ? await store.putFile(result.kohya_output, 'safetensors') : undefined;
      const samples = await sampleValidationSet(deps, run, result.output, workDir);
      const likeness = await likenessToHeldOut(deps, adapter.heldOutPhotoId, samples.images);
      const lowLikeness = likeness?.mean != null && likeness.mean < deps.config.likeness.threshold;
      await setAdapter(adapterId, {
        status: 'ready',
        fileKey: stored.key,
        kohyaFileKey: kohya?.key ?? null,
        sampleKeys: samples.keys,
        metrics: {
          finalLoss: result.final_loss,
          steps: result.steps,
          seconds: result.seconds,
          losses: result.losses,
          photos: crops.length,
          likeness: likeness ?? { skipped: deps.vision.availability().likeness ? 'no held-out photo or no face in it' : 'face models not installed' },
          lowLikeness,
        },
      });
      await run.complete({ adapterId, likeness: likeness?.mean ?? null, lowLikeness });
      return { adapterId, fileKey: stored.key, sampleKeys: samples.keys };
    },
    async onFinalFailure({ adapterId }) {
      await setAdapter(adapterId, { status: 'failed' });
    },
  });
}

export function generateProcessor(deps: ProcessorDeps, running: RunningJobs) {
  const { db, store, engine } = deps;
  return processor<GenerateJobData>(deps, running, 'generate', {
    async run(run, { generationId }, workDir) {
      const [found] = await db
        .select({ generation: generations, adapterFile: adapters.fileKey, heldOutPhotoId: adapters.heldOutPhotoId })
        .from(generations)
        .leftJoin(adapters, eq(adapters.id, generations.adapterId))
        .where(eq(generations.id, generationId));
      if (!found) throw new UnrecoverableError('generation row is gone');
      if (!found.adapterFile) throw new EngineError('not_found', 'The model for this request was deleted.');
      const { generation } = found;
      const p = generation.params;
      const result = await engine.generate(
        {
          id: run.requestId,
          prompt: generation.enginePrompt ?? generation.prompt,
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
      // Posing can cost identity: each output is scored against the same held-out photo as the training.
      const likeness = await likenessToHeldOut(deps, found.heldOutPhotoId, await Promise.all(result.images.map((i) => readFile(i))));
      await db.update(generations).set({ outputKeys: keys, likeness: likeness?.mean ?? null }).where(eq(generations.id, generation.id));
      await run.complete({ generationId: generation.id, likeness: likeness?.mean ?? null });
      return { generationId: generation.id, outputKeys: keys };
    },
  });
}

/** Sample portraits from the new LoRA: the config's validation prompts × seeds (the first `samples` pairs). */
async function sampleValidationSet(deps: ProcessorDeps, run: JobRun, lora: string, workDir: string) {
  const { config, engine, store } = deps;
  const g = config.generation;
  const { prompts, seeds, samples } = config.likeness;
  const pairs = prompts.flatMap((prompt) => seeds.map((seed) => ({ prompt, seed }))).slice(0, samples);
  const images: Buffer[] = [];
  const keys: string[] = [];
  for (const [n, { prompt, seed }] of pairs.entries()) {
    const result = await engine.generate({
      id: run.nextRequest(`sample${n}`),
      prompt,
      negative_prompt: withPolicyNegative(g.negativePrompt, config.policy.negativePrompt),
      lora,
      steps: g.steps,
      guidance_scale: g.guidanceScale,
      seed,
      width: g.width,
      height: g.height,
      scheduler: g.scheduler,
      output_dir: join(workDir, `sample${n}`),
    });
    for (const path of result.images) {
      images.push(await readFile(path));
      keys.push((await store.putFile(path, 'png')).key);
    }
  }
  return { images, keys };
}

/**
 * Face likeness of `images` to the held-out upload; null when there is nothing to compare against (no held-out
 * photo, or the face models are not installed).
 */
async function likenessToHeldOut(deps: ProcessorDeps, heldOutPhotoId: string | null, images: Buffer[]) {
  if (!heldOutPhotoId || !deps.vision.availability().likeness) return null;
  const [photo] = await deps.db.select({ key: photos.storageKey }).from(photos).where(eq(photos.id, heldOutPhotoId));
  if (!photo) return null;
  try {
    return await deps.vision.likeness(await deps.store.get(photo.key), images);
  } catch (error) {
    deps.logger.warn({ err: error }, 'likeness scoring failed');
    return null;
  }
}
