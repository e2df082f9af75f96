// The BullMQ processors: each loads its request from the database, runs it on the engine, stores the results,
// and keeps the job row and the person informed. Job state changes go through JobState (compare-and-set), so a
// cancel or /forget that lands while the engine finishes wins, and what the engine made is then discarded.
import { copyFile, mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { UnrecoverableError, WaitingError, type Job as QueueJob } from 'bullmq';
import { eq, inArray } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { Db } from '../src/db/client.ts';
import { adapters, generations, photos, type Job } from '../src/db/schema.ts';
import { isStorageFull, type BlobStore } from '../src/storage/storage.ts';
import type { EventBus } from '../src/events/bus.ts';
import type { GenerateJobData, TrainJobData } from '../src/queue/index.ts';
import { jobEvent } from '../src/services/jobs.ts';
import type { JobState } from '../src/services/job-state.ts';
import { abandonLeased, deleteUnreferencedBlobs, putFileLeased, releaseLeases, type LeasedBlob } from '../src/services/blobs.ts';
import { withPolicyNegative } from '../src/services/prompt-policy.ts';
import type { Config } from '../src/config/index.ts';
import { EngineError } from './engine-client/supervisor.ts';
import type { EngineClient } from './engine-client/pool.ts';
import type { JobUpdate, PreviewEvent, ProgressEvent, TrainParams } from '../src/engine/protocol.ts';
import type { VisionService } from '../src/vision/index.ts';
import { metrics, type JobOutcome } from '../src/metrics.ts';

export interface ProcessorDeps {
  db: Db;
  store: BlobStore;
  events: EventBus;
  engine: EngineClient;
  state: JobState;
  config: Config;
  logger: Logger;
  vision: VisionService;
}

/** Jobs running in this process, by job id, so cancel requests and shutdown can reach their engine request. */
export class RunningJobs {
  private readonly byJob = new Map<string, string>();
  shuttingDown = false;

  constructor(private readonly engine: EngineClient) {}

  add(jobId: string, requestId: string) { this.byJob.set(jobId, requestId); }
  delete(jobId: string) { this.byJob.delete(jobId); }
  has(jobId: string) { return this.byJob.has(jobId); }

  async cancel(jobId: string): Promise<boolean> {
    const requestId = this.byJob.get(jobId);
    return requestId ? this.engine.cancel(requestId) : false;
  }

  async cancelAll(): Promise<void> {
    await Promise.all([...this.byJob.keys()].map((jobId) => this.cancel(jobId)));
  }
}

/** The job left 'active' under the worker (cancelled, or the person's data was forgotten): drop what it made. */
class JobWithdrawn extends Error {
  constructor() {
    super('the job was cancelled or forgotten while it ran');
    this.name = 'JobWithdrawn';
  }
}

const PROGRESS_WRITE_INTERVAL_MS = 1000;
/** Points of a loss curve kept on the row; beyond it every other point is dropped (the shape stays). */
const LOSS_CURVE_POINTS = 1000;

export class JobRun {
  private lastWrite = 0;
  requestId: string;
  /** Blobs stored for this job but not yet referred to by a committed row. */
  private readonly leased: LeasedBlob[] = [];
  private readonly startedAt = Date.now();
  /** Time this attempt's requests spent in the engine (its GPU time). */
  private engineMs = 0;
  outcome: JobOutcome = 'completed';
  /** One child logger per job: every line it writes carries the job id. */
  readonly log: Logger;
  /** A training's [step, loss] pairs so far (kept on the row with each progress write). */
  lossCurve?: [number, number][];
  /** Previews being stored: the job completes only after them (its work folder goes then). */
  private readonly previewsStoring: Promise<void>[] = [];

  constructor(
    private readonly deps: ProcessorDeps,
    private readonly running: RunningJobs,
    readonly row: Job,
    private readonly queueJob: QueueJob,
  ) {
    // One engine request per attempt: a retry never collides with a late event of the attempt before.
    this.requestId = `${row.id}-${queueJob.attemptsMade}-${Date.now()}`;
    this.log = deps.logger.child({ jobId: row.id, kind: row.kind, attempt: queueJob.attemptsMade + 1 });
  }

  /** Awaits an engine request, counting its time as this job's engine time. */
  async inEngine<T>(request: Promise<T>): Promise<T> {
    const started = Date.now();
    try {
      return await request;
    } finally {
      this.engineMs += Date.now() - started;
    }
  }

  /** A fresh engine request id for the next step of this job (e.g. each sample portrait), reachable by cancel. */
  nextRequest(step: string): string {
    this.requestId = `${this.row.id}-${this.queueJob.attemptsMade}-${step}-${Date.now()}`;
    this.running.add(this.row.id, this.requestId);
    return this.requestId;
  }

  async begin(): Promise<boolean> {
    const row = await this.deps.state.begin(this.row.id, this.row.kind, this.queueJob.attemptsMade + 1);
    if (!row) return false; // cancelled (or finished, or forgotten) before a worker picked it up
    this.running.add(row.id, this.requestId);
    // A first attempt waited since it was queued; a retry's wait would mostly be its backoff, so it is not counted.
    if (this.queueJob.attemptsMade === 0) metrics.jobStarted(this.queueJob.queueName, (this.queueJob.processedOn ?? Date.now()) - this.queueJob.timestamp);
    this.log.info({ queue: this.queueJob.queueName, waitedMs: Date.now() - this.queueJob.timestamp }, 'job started');
    await this.publish(row);
    return true;
  }

  /** Stores an engine output under a lease: nothing can delete it before the row that refers to it commits. */
  async store(path: string, ext: string): Promise<LeasedBlob> {
    const blob = await putFileLeased(this.deps.db, this.deps.store, path, ext);
    this.leased.push(blob);
    return blob;
  }

  /** Throttled: the row and the chat get at most one update a second, plus the last step. Previews are never dropped. */
  onProgress = (event: JobUpdate, after?: () => Promise<void>) => {
    if (event.event === 'preview') {
      this.previewsStoring.push(this.storePreview(event).catch((error: Error) => this.log.warn({ err: error, step: event.step }, 'preview not stored')));
      return;
    }
    if (this.lossCurve && event.loss !== undefined) this.recordLoss(event.step, event.loss);
    const now = Date.now();
    if (now - this.lastWrite < PROGRESS_WRITE_INTERVAL_MS && event.step < event.total) return;
    this.lastWrite = now;
    void this.writeProgress(event).then(after).catch((error: Error) => this.log.warn({ err: error }, 'progress write failed'));
  };

  private async writeProgress(event: ProgressEvent) {
    await this.queueJob.updateProgress({ step: event.step, total: event.total, loss: event.loss });
    const row = await this.deps.state.progress(this.row.id, event.step, event.total, this.lossCurve && [...this.lossCurve]);
    // The row left 'active' under us: the person cancelled and the pub/sub message may have been missed.
    if (!row) await this.running.cancel(this.row.id);
    else await this.publish(row, { loss: event.loss });
  }

  private recordLoss(step: number, loss: number) {
    const curve = this.lossCurve!;
    curve.push([step, loss]);
    if (curve.length > LOSS_CURVE_POINTS) this.lossCurve = curve.filter((_, i) => i % 2 === 1 || i === curve.length - 1);
  }

  /**
   * Stores a preview under a lease and records it on the job in one transaction with the lease's release, then
   * tells the person. A job withdrawn meanwhile (or a step recorded by an earlier attempt) drops the blob.
   */
  private async storePreview(event: PreviewEvent) {
    const { db, store, state } = this.deps;
    const blob = await putFileLeased(db, store, event.image, 'png');
    const recorded = await state.preview(this.row.id, event.step, event.total, blob.key, (tx) => releaseLeases(tx, [blob.leaseId]));
    if (!recorded) {
      await abandonLeased(db, store, [blob]);
      return;
    }
    this.log.info({ step: event.step }, 'preview stored');
    await this.publish(recorded.job, { preview: { id: recorded.preview.id, step: event.step, total: event.total } });
  }

  /** Waits for the previews still being stored (before the job completes and its work folder goes). */
  async previewsStored() {
    await Promise.all(this.previewsStoring.splice(0));
  }

  /**
   * Commits the job's results with its completion, or throws JobWithdrawn (after deleting what it stored) when a
   * cancel or /forget got there first.
   */
  async complete(write: Parameters<JobState['complete']>[1], extra: Parameters<typeof jobEvent>[1] = {}) {
    const row = await this.deps.state.complete(this.row.id, write);
    if (!row) throw new JobWithdrawn();
    await releaseLeases(this.deps.db, this.leased.splice(0).map((b) => b.leaseId));
    this.log.info({ ms: Date.now() - this.startedAt, engineMs: this.engineMs }, 'job completed');
    await this.publish(row, extra);
  }

  /** Maps a failure onto the job: withdrawn, cancel, retry, give up, or hand back to the queue on shutdown. */
  async fail(error: unknown, token: string | undefined): Promise<Record<string, unknown>> {
    const { state } = this.deps;
    await this.discardStored();
    if (error instanceof JobWithdrawn) {
      this.outcome = 'withdrawn';
      await this.dropPreviews();
      this.log.info('job withdrawn while it ran; its results were discarded');
      return { withdrawn: true };
    }
    const stopped = error instanceof EngineError && (error.code === 'cancelled' || error.code === 'engine_stopped');
    if (stopped && this.running.shuttingDown) {
      await state.handBack(this.row.id);
      await this.queueJob.moveToWait(token);
      this.outcome = 'handed_back';
      this.log.info('job handed back to the queue for shutdown');
      throw new WaitingError();
    }
    if (error instanceof EngineError && error.code === 'cancelled') {
      this.outcome = 'cancelled';
      this.log.info({ ms: Date.now() - this.startedAt }, 'job cancelled');
      await this.dropCheckpoint();
      await this.dropPreviews();
      return { cancelled: true }; // JobState already holds the cancel
    }
    const retryable = error instanceof EngineError ? error.retryable : !(error instanceof UnrecoverableError);
    const lastAttempt = this.queueJob.attemptsMade + 1 >= (this.queueJob.opts.attempts ?? 1);
    // A full disk is retried (space may be freed) and named as such to the person.
    const code = error instanceof EngineError ? error.code : isStorageFull(error) ? 'storage_full' : 'internal';
    const failure = { code, message: error instanceof Error ? error.message : String(error) };
    if (retryable && !lastAttempt) {
      const row = await state.requeue(this.row.id, failure);
      this.outcome = 'retried';
      metrics.jobFailed(this.row.kind, code, false);
      this.log.warn({ err: error }, 'job failed; it will be retried');
      if (row) await this.publish(row);
      throw error;
    }
    const row = await state.fail(this.row.id, failure);
    this.outcome = 'failed';
    metrics.jobFailed(this.row.kind, code, true);
    await this.dropCheckpoint();
    await this.dropPreviews();
    this.log.error({ err: error }, 'job failed for good');
    if (row) await this.publish(row);
    throw retryable ? error : new UnrecoverableError(failure.message);
  }

  private async dropCheckpoint() {
    const key = await this.deps.state.dropCheckpoint(this.row.id);
    if (key) await deleteUnreferencedBlobs(this.deps.db, this.deps.store, [key]);
  }

  /** A training that ended without a model keeps no previews (they would outlive it unseen). */
  private async dropPreviews() {
    try {
      await this.previewsStored();
      const keys = await this.deps.state.dropPreviews(this.row.id);
      if (keys.length > 0) await deleteUnreferencedBlobs(this.deps.db, this.deps.store, keys);
    } catch (error) {
      // The job's own outcome matters more; /forget and retention still find the rows.
      this.log.warn({ err: error }, 'dropping the previews failed');
    }
  }

  private async discardStored() {
    await abandonLeased(this.deps.db, this.deps.store, this.leased.splice(0)).catch((error: Error) => this.log.warn({ err: error }, 'discarding stored results failed'));
  }

  end() {
    this.running.delete(this.row.id);
    metrics.jobEnded(this.row.kind, this.outcome, Date.now() - this.startedAt, this.engineMs);
  }

  private async publish(row: Job, extra: Parameters<typeof jobEvent>[1] = {}) {
    await this.deps.events.publish(row.userId, jobEvent(row, extra));
  }
}

interface JobBody<Data> {
  /** Runs the job on the engine inside `workDir`; its return value becomes the BullMQ job's result. */
  run(run: JobRun, data: Data, workDir: string): Promise<Record<string, unknown>>;
}

/** The engine's scratch folder of one job: the same for every attempt, so a retry finds its checkpoints. */
export const jobWorkDir = (config: Config, queue: string, jobId: string) => join(config.workDir, queue, jobId);

/** The lifecycle every job shares: load its row, skip it if cancelled, run it, map failures, clean up. */
function processor<Data extends { jobId: string }>(deps: ProcessorDeps, running: RunningJobs, queue: string, body: JobBody<Data>) {
  return async (queueJob: QueueJob<Data>, token?: string) => {
    const row = await deps.state.get(queueJob.data.jobId);
    if (!row) return { skipped: 'job row is gone (forgotten)' };
    const run = new JobRun(deps, running, row, queueJob);
    if (!(await run.begin())) return { skipped: 'cancelled before start' };
    const workDir = jobWorkDir(deps.config, queue, row.id);
    let handedBack = false;
    try {
      await mkdir(workDir, { recursive: true });
      return await body.run(run, queueJob.data, workDir);
    } catch (error) {
      try {
        return await run.fail(error, token);
      } catch (thrown) {
        handedBack = thrown instanceof WaitingError;
        throw thrown;
      }
    } finally {
      run.end();
      // Kept for a retry only when the job goes back to the queue; its checkpoints are in storage anyway.
      if (!handedBack) await rm(workDir, { recursive: true, force: true });
    }
  };
}

/**
 * Uploads each new engine checkpoint of a running training to storage and records it on the job row, so an
 * attempt on any worker resumes from it. The engine writes `checkpoint-<step>/state.pt` atomically after the
 * step's progress event; the newest one is picked up on the following progress events.
 */
class CheckpointShipper {
  private shippedStep: number;
  private busy = false;

  constructor(private readonly deps: ProcessorDeps, private readonly run: JobRun, private readonly folder: string) {
    this.shippedStep = run.row.checkpointStep ?? 0;
  }

  /** Puts the stored checkpoint (if any) where the engine looks for it, before the engine starts. */
  async restore(): Promise<number | undefined> {
    const { checkpointKey, checkpointStep } = this.run.row;
    if (!checkpointKey || !checkpointStep) return undefined;
    try {
      const target = join(this.folder, `checkpoint-${checkpointStep}`);
      await mkdir(target, { recursive: true });
      await copyFile(await this.deps.store.localPath(checkpointKey), join(target, 'state.pt'));
      return checkpointStep;
    } catch (error) {
      this.run.log.warn({ err: error }, 'stored checkpoint could not be restored; training starts over');
      return undefined;
    }
  }

  ship = async () => {
    if (this.busy) return;
    this.busy = true;
    try {
      const steps = (await readdir(this.folder).catch(() => []))
        .map((name) => /^checkpoint-(\d+)$/.exec(name)?.[1])
        .filter((s): s is string => s !== undefined)
        .map(Number);
      const newest = Math.max(0, ...steps);
      if (newest <= this.shippedStep) return;
      const previous = this.run.row.checkpointKey;
      const blob = await this.run.store(join(this.folder, `checkpoint-${newest}`, 'state.pt'), 'pt');
      const row = await this.deps.state.checkpoint(this.run.row.id, blob.key, newest);
      if (!row) return; // withdrawn; the lease is discarded with the job
      this.run.row.checkpointKey = blob.key;
      this.shippedStep = newest;
      if (previous && previous !== blob.key) await deleteUnreferencedBlobs(this.deps.db, this.deps.store, [previous]);
    } catch (error) {
      // The engine may have replaced the folder while it was read; the next checkpoint is shipped instead.
      this.run.log.debug({ err: error }, 'checkpoint not shipped');
    } finally {
      this.busy = false;
    }
  };
}

export function trainProcessor(deps: ProcessorDeps, running: RunningJobs) {
  const { db, store, engine } = deps;
  return processor<TrainJobData>(deps, running, 'train', {
    async run(run, { adapterId }, workDir) {
      const [adapter] = await db.select().from(adapters).where(eq(adapters.id, adapterId));
      if (!adapter) throw new UnrecoverableError('adapter row is gone');
      const crops = await db.select({ key: photos.cropKey }).from(photos).where(inArray(photos.id, adapter.photoIds));
      if (crops.length === 0) throw new EngineError('bad_request', 'All photos of this training were deleted.');
      const checkpointDir = join(workDir, 'checkpoints');
      const checkpoints = new CheckpointShipper(deps, run, checkpointDir);
      const resumeFrom = await checkpoints.restore();
      if (resumeFrom) run.log.info({ step: resumeFrom }, 'resuming from the stored checkpoint');
      run.lossCurve = run.row.lossCurve.filter(([step]) => step <= (resumeFrom ?? 0));
      const { previews, previewSteps } = deps.config.training;
      const result = await run.inEngine(engine.train(
        {
          id: run.requestId,
          photos: await Promise.all(crops.map((c) => store.localPath(c.key))),
          output: join(workDir, 'lora.safetensors'),
          checkpoint_dir: checkpointDir,
          params: adapter.params as TrainParams,
          previews,
          preview_steps: previewSteps,
          preview_dir: join(workDir, 'previews'),
        },
        (event) => run.onProgress(event, checkpoints.ship),
        // A retried training avoids the engine that failed it.
        `job:${run.row.id}`,
      ));
      await run.previewsStored();
      const stored = await run.store(result.output, 'safetensors');
      const kohya = result.kohya_output ? await run.store(result.kohya_output, 'safetensors') : undefined;
      const samples = await sampleValidationSet(deps, run, result.output, workDir);
      const likeness = await likenessToHeldOut(deps, run, adapter.heldOutPhotoId, samples.images);
      metrics.likeness(run.row.kind, likeness?.mean);
      const lowLikeness = likeness?.mean != null && likeness.mean < deps.config.likeness.threshold;
      const checkpointKey = run.row.checkpointKey;
      await run.complete(async (tx) => {
        await tx.update(adapters).set({
          fileKey: stored.key,
          kohyaFileKey: kohya?.key ?? null,
          sampleKeys: samples.keys,
          metrics: {
            finalLoss: result.final_loss,
            steps: result.steps,
            seconds: result.seconds,
            losses: result.losses,
            photos: crops.length,
            resumedFrom: result.resumed_from ?? null,
            likeness: likeness ?? { skipped: likenessSkipped(deps, samples) },
            lowLikeness,
            // Sample portraits the safety check withheld (never stored): sampleKeys plus these were asked for.
            withheldSamples: samples.withheld,
          },
        }).where(eq(adapters.id, adapterId));
      }, { adapterId, likeness: likeness?.mean ?? null, lowLikeness });
      if (checkpointKey) await deleteUnreferencedBlobs(db, store, [checkpointKey]);
      return { adapterId, fileKey: stored.key, sampleKeys: samples.keys, withheldSamples: samples.withheld, resumedFrom: result.resumed_from ?? null };
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
      const result = await run.inEngine(engine.generate(
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
        // A person's generations stay on the engine that holds their LoRA.
        `adapter:${generation.adapterId}`,
      ));
      // Pictures the safety check withheld were never written: only the others are stored and sent.
      const keys: string[] = [];
      for (const image of result.images) keys.push((await run.store(image, 'png')).key);
      const withheld = result.flagged.length;
      if (withheld > 0) run.log.info({ withheld }, 'the safety check withheld pictures');
      // Posing can cost identity: each output is scored against the same held-out photo as the training.
      const likeness = await likenessToHeldOut(deps, run, found.heldOutPhotoId, await Promise.all(result.images.map((i) => readFile(i))));
      metrics.likeness(run.row.kind, likeness?.mean);
      await run.complete(async (tx) => {
        await tx.update(generations).set({ outputKeys: keys, withheld, likeness: likeness?.mean ?? null }).where(eq(generations.id, generation.id));
      }, { generationId: generation.id, likeness: likeness?.mean ?? null });
      return { generationId: generation.id, outputKeys: keys, withheld };
    },
  });
}

/** Sample portraits from the new LoRA: the config's validation prompts × seeds (the first `samples` pairs). */
async function sampleValidationSet(deps: ProcessorDeps, run: JobRun, lora: string, workDir: string) {
  const { config, engine } = deps;
  const g = config.generation;
  const { prompts, seeds, samples } = config.likeness;
  const pairs = prompts.flatMap((prompt) => seeds.map((seed) => ({ prompt, seed }))).slice(0, samples);
  const images: Buffer[] = [];
  const keys: string[] = [];
  let withheld = 0;
  for (const [n, { prompt, seed }] of pairs.entries()) {
    const result = await run.inEngine(engine.generate({
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
    }, undefined, `adapter:${run.row.adapterId}`));
    withheld += result.flagged.length;
    for (const path of result.images) {
      images.push(await readFile(path));
      keys.push((await run.store(path, 'png')).key);
    }
  }
  return { images, keys, withheld };
}

/** Why a training has no likeness score. */
function likenessSkipped(deps: ProcessorDeps, samples: { images: Buffer[]; withheld: number }): string {
  if (!deps.vision.availability().likeness) return 'face models not installed';
  if (samples.images.length === 0 && samples.withheld > 0) return 'no samples: the safety check withheld them all';
  return 'no held-out photo or no face in it';
}

/**
 * Face likeness of `images` to the held-out upload; null when there is nothing to compare against (no held-out
 * photo, or the face models are not installed).
 */
async function likenessToHeldOut(deps: ProcessorDeps, run: JobRun, heldOutPhotoId: string | null, images: Buffer[]) {
  if (!heldOutPhotoId || images.length === 0 || !deps.vision.availability().likeness) return null;
  const [photo] = await deps.db.select({ key: photos.storageKey }).from(photos).where(eq(photos.id, heldOutPhotoId));
  if (!photo) return null;
  try {
    return await deps.vision.likeness(await deps.store.get(photo.key), images);
  } catch (error) {
    run.log.warn({ err: error }, 'likeness scoring failed');
    return null;
  }
}
