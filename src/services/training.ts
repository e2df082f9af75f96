import { randomUUID } from 'node:crypto';
import { basename } from 'node:path';
import { and, desc, eq, inArray, max } from 'drizzle-orm';
import type { Db } from '../db/client.ts';
import { adapters, jobs, users, type Adapter, type Job, type Photo } from '../db/schema.ts';
import type { Config } from '../config/index.ts';
import { queueJobId, type JobQueues } from '../queue/index.ts';
import type { EventBus } from '../events/bus.ts';
import type { TrainParams } from '../engine/protocol.ts';
import type { PhotoService } from './photos.ts';
import { jobEvent, type JobService } from './jobs.ts';
import { UserFacingError } from './errors.ts';
import type { JobState } from './job-state.ts';
import type { VisionService } from '../vision/index.ts';

export interface TrainingStarted { job: Job; adapter: Adapter; created: boolean; position: number; etaSeconds?: number | null }

export function baseModelName(config: Config): string {
  return config.engine.profile === 'tiny' ? 'tiny-sd15-v1' : basename(config.engine.baseModel ?? 'sd15');
}

export class TrainingService {
  constructor(
    private readonly db: Db,
    private readonly queues: JobQueues,
    private readonly events: EventBus,
    private readonly photos: PhotoService,
    private readonly jobs: JobService,
    private readonly vision: VisionService,
    private readonly config: Config,
    private readonly state: JobState,
  ) {}

  params(): TrainParams {
    const t = this.config.training;
    return {
      rank: t.rank,
      alpha: t.alpha,
      learning_rate: t.learningRate,
      max_steps: t.maxSteps,
      batch_size: t.batchSize,
      grad_accum: t.gradAccum,
      resolution: t.resolution,
      seed: t.seed,
      instance_prompt: t.instancePrompt,
      lr_scheduler: t.lrScheduler,
      // The checkpoint interval does not change the training (it is not in the engine's job fingerprint).
      checkpoint_steps: t.checkpointSteps > 0 && t.checkpointSteps < t.maxSteps ? t.checkpointSteps : null,
    };
  }

  /** Queues a training of the user's current photos; asking again while one is open returns that one. */
  async start(userId: string): Promise<TrainingStarted> {
    const open = await this.openTraining(userId);
    if (open) return open;
    if (this.config.consentRequired) {
      const [user] = await this.db.select({ consentedAt: users.consentedAt }).from(users).where(eq(users.id, userId));
      if (!user?.consentedAt) throw new UserFacingError('consent_required', 'Please confirm that the photos are of you before the first training.', {}, 403);
    }
    const photos = await this.photos.list(userId);
    const need = this.config.photos.minForTraining;
    if (photos.length < need) {
      throw new UserFacingError(
        'not_enough_photos',
        `Training needs at least ${need} good photos of you; you have ${photos.length}. Send ${need - photos.length} more.`,
        { have: photos.length, need },
      );
    }
    const heldOut = this.vision.availability().likeness ? pickHeldOut(photos) : undefined;
    const trained = photos.filter((p) => p !== heldOut);
    const jobId = randomUUID();
    const created = await this.db.transaction(async (tx) => {
      // Serializes a user's Train requests: a double-click waits here, then finds the first one's job.
      await tx.select({ id: users.id }).from(users).where(eq(users.id, userId)).for('update');
      const [open] = await tx.select({ id: jobs.id }).from(jobs).where(openTrainingOf(userId));
      if (open) return undefined;
      const [latest] = await tx.select({ v: max(adapters.version) }).from(adapters).where(eq(adapters.userId, userId));
      const [adapter] = await tx
        .insert(adapters)
        .values({
          userId,
          version: (latest?.v ?? 0) + 1,
          baseModel: baseModelName(this.config),
          params: this.params(),
          photoIds: trained.map((p) => p.id),
          heldOutPhotoId: heldOut?.id,
        })
        .returning();
      const job = await this.state.create(tx, {
        id: jobId, userId, kind: 'train', queueJobId: queueJobId(jobId, 'train'), adapterId: adapter!.id, totalSteps: this.config.training.maxSteps,
      });
      return { job, adapter: adapter! };
    });
    if (!created) return (await this.openTraining(userId))!;
    await enqueueOrFail(this.state, created.job, () => this.queues.addTrain({ jobId, adapterId: created.adapter.id }));
    const { position, etaSeconds } = await this.jobs.place(created.job);
    await this.events.publish(userId, jobEvent(created.job, { position, etaSeconds }));
    return { ...created, created: true, position, etaSeconds };
  }

  async latestReady(userId: string): Promise<Adapter | undefined> {
    const [adapter] = await this.db
      .select()
      .from(adapters)
      .where(and(eq(adapters.userId, userId), eq(adapters.status, 'ready')))
      .orderBy(desc(adapters.version))
      .limit(1);
    return adapter;
  }

  async isTraining(userId: string): Promise<boolean> {
    const [open] = await this.db.select({ id: jobs.id }).from(jobs).where(openTrainingOf(userId));
    return open !== undefined;
  }

  list(userId: string): Promise<Adapter[]> {
    return this.db.select().from(adapters).where(eq(adapters.userId, userId)).orderBy(desc(adapters.version));
  }

  private async openTraining(userId: string): Promise<TrainingStarted | undefined> {
    const [row] = await this.db
      .select({ job: jobs, adapter: adapters })
      .from(jobs)
      .innerJoin(adapters, eq(adapters.id, jobs.adapterId))
      .where(openTrainingOf(userId));
    if (!row) return undefined;
    return { ...row, created: false, position: await this.jobs.position(row.job) };
  }
}

/**
 * The upload kept out of training for the likeness score: the most frontal face, since the validation portraits
 * face the camera too. None when only one photo would be left to train on.
 */
function pickHeldOut(photos: Photo[]): Photo | undefined {
  if (photos.length < 2) return undefined;
  const frontalness = (p: Photo) => -Math.abs(p.faceMeasures?.yaw ?? 1);
  return photos.reduce((best, p) => (frontalness(p) > frontalness(best) ? p : best));
}

const openTrainingOf = (userId: string) => and(eq(jobs.userId, userId), eq(jobs.kind, 'train'), inArray(jobs.status, ['queued', 'active']));

/** Adds the queue entry after the rows are committed; if Redis refuses, the rows say so instead of waiting forever. */
export async function enqueueOrFail(state: JobState, job: Job, add: () => Promise<unknown>): Promise<void> {
  try {
    await add();
  } catch {
    await state.fail(job.id, { code: 'queue_unavailable', message: 'The job queue is unavailable; please try again.' });
    throw new UserFacingError('queue_unavailable', 'The job queue is unavailable right now; please try again in a minute.', {}, 503);
  }
}
