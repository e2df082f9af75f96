import { and, asc, count, desc, eq, inArray, isNotNull, lt, sql } from 'drizzle-orm';
import type { Db } from '../db/client.ts';
import { generations, jobs, trainingPreviews, type Generation, type Job, type JobKind, type TrainingPreview } from '../db/schema.ts';
import type { JobQueues, QueueName } from '../queue/index.ts';
import type { EventBus, JobEvent } from '../events/bus.ts';
import { UserFacingError, notFound } from './errors.ts';
import { OPEN_STATUSES, type JobState } from './job-state.ts';
import { runningEtaSeconds, waitingEtaSeconds } from './eta.ts';

/** How many finished jobs of a kind the waiting estimate averages over. */
const RECENT_JOBS = 20;

export const queueOf = (kind: JobKind): QueueName => (kind === 'train' ? 'train' : 'generate');
const kindsOf = (queue: QueueName): JobKind[] => (queue === 'train' ? ['train'] : ['imagine', 'pose']);

export interface JobView {
  job: Job;
  /** 1-based place among waiting jobs of its queue; 0 once it runs or has finished. */
  position: number;
  /** The picture job's generation row (prompt, seed, withheld count), read with the job. */
  generation?: Generation;
  outputKeys: string[];
}

/** Postgres's avg() as a number (it comes back as a numeric string); null when there was nothing to average. */
const toMean = (mean: string | null | undefined): number | null => (mean == null ? null : Number(mean));

export function jobEvent(job: Job, extra: Partial<JobEvent> = {}): JobEvent {
  const etaSeconds = job.status === 'active' ? runningEtaSeconds(job.progress, job.startedAt) : null;
  return {
    type: 'job',
    jobId: job.id,
    kind: job.kind,
    status: job.status,
    progress: job.progress,
    step: job.step ?? undefined,
    total: job.totalSteps ?? undefined,
    errorCode: job.errorCode ?? undefined,
    error: job.error ?? undefined,
    adapterId: job.adapterId ?? undefined,
    ...(etaSeconds !== null ? { etaSeconds } : {}),
    ...extra,
  };
}

export class JobService {
  constructor(
    private readonly db: Db,
    private readonly queues: JobQueues,
    private readonly events: EventBus,
    private readonly state: JobState,
    /** Jobs the workers run at once per queue (the waiting estimate divides the line by it). */
    private readonly concurrency: Record<QueueName, number> = { train: 1, generate: 1 },
  ) {}

  /** Mean seconds from start to finish of the recent completed jobs of a queue; null when none has finished yet. */
  async meanSeconds(queue: QueueName): Promise<number | null> {
    const [row] = await this.recentMean(queue);
    return toMean(row?.mean);
  }

  private recentMean(queue: QueueName) {
    const recent = this.db
      .select({ seconds: sql<number>`extract(epoch from ${jobs.finishedAt} - ${jobs.startedAt})`.as('seconds') })
      .from(jobs)
      .where(and(inArray(jobs.kind, kindsOf(queue)), eq(jobs.status, 'completed'), isNotNull(jobs.startedAt), isNotNull(jobs.finishedAt)))
      .orderBy(desc(jobs.finishedAt))
      .limit(RECENT_JOBS)
      .as('recent');
    return this.db.select({ mean: sql<string | null>`avg(${recent.seconds})` }).from(recent);
  }

  /** The waiting jobs of the job's queue queued before it. */
  private ahead(job: Job) {
    return this.db
      .select({ n: count() })
      .from(jobs)
      .where(and(inArray(jobs.kind, kindsOf(queueOf(job.kind))), eq(jobs.status, 'queued'), lt(jobs.createdAt, job.createdAt)));
  }

  /** position() and etaSeconds() together, in one round trip for a waiting job (none for any other). */
  async place(job: Job): Promise<{ position: number; etaSeconds: number | null }> {
    if (job.status !== 'queued') return { position: 0, etaSeconds: await this.etaSeconds(job, 0) };
    const queue = queueOf(job.kind);
    const [row] = await this.db
      .select({ ahead: sql`(${this.ahead(job)})`.mapWith(Number), mean: sql<string | null>`(${this.recentMean(queue)})` })
      .from(sql`(select 1) as one`);
    const position = (row?.ahead ?? 0) + 1;
    return { position, etaSeconds: waitingEtaSeconds(position, toMean(row?.mean), this.concurrency[queue]) };
  }

  /** Seconds until the job is done: at its pace so far while it runs, from its place in line while it waits. */
  async etaSeconds(job: Job, position: number): Promise<number | null> {
    if (job.status === 'active') return runningEtaSeconds(job.progress, job.startedAt);
    if (job.status !== 'queued') return null;
    const queue = queueOf(job.kind);
    return waitingEtaSeconds(position, await this.meanSeconds(queue), this.concurrency[queue]);
  }

  /** The intermediate previews of some of the person's trainings, oldest first. */
  previews(userId: string, jobIds: string[]): Promise<TrainingPreview[]> {
    if (jobIds.length === 0) return Promise.resolve([]);
    return this.db.select().from(trainingPreviews)
      .where(and(eq(trainingPreviews.userId, userId), inArray(trainingPreviews.jobId, jobIds)))
      .orderBy(asc(trainingPreviews.createdAt), asc(trainingPreviews.step));
  }

  async preview(userId: string, previewId: string): Promise<TrainingPreview> {
    const [row] = await this.db.select().from(trainingPreviews).where(and(eq(trainingPreviews.id, previewId), eq(trainingPreviews.userId, userId)));
    if (!row) throw notFound('Preview');
    return row;
  }

  async position(job: Job): Promise<number> {
    if (job.status !== 'queued') return 0;
    const [row] = await this.ahead(job);
    return (row?.n ?? 0) + 1;
  }

  /** A job's kind and status (undefined when it is gone or not the person's): what a follower re-reads. */
  async kindAndStatus(userId: string, jobId: string): Promise<Pick<Job, 'kind' | 'status'> | undefined> {
    const [row] = await this.db.select({ kind: jobs.kind, status: jobs.status }).from(jobs).where(and(eq(jobs.id, jobId), eq(jobs.userId, userId)));
    return row;
  }

  async view(userId: string, jobId: string): Promise<JobView> {
    // The job and its generation in one read (a training has none).
    const [row] = await this.db.select({ job: jobs, generation: generations }).from(jobs)
      .leftJoin(generations, eq(generations.jobId, jobs.id))
      .where(and(eq(jobs.id, jobId), eq(jobs.userId, userId)));
    if (!row) throw notFound('Job');
    const { job } = row;
    const generation = row.generation ?? undefined;
    return { job, position: await this.position(job), generation, outputKeys: generation?.outputKeys ?? [] };
  }

  list(userId: string, limit = 20): Promise<Job[]> {
    return this.db.select().from(jobs).where(eq(jobs.userId, userId)).orderBy(desc(jobs.createdAt)).limit(limit);
  }

  open(userId: string): Promise<Job[]> {
    return this.db.select().from(jobs).where(and(eq(jobs.userId, userId), inArray(jobs.status, [...OPEN_STATUSES]))).orderBy(desc(jobs.createdAt));
  }

  /**
   * Cancels one open job (the newest when none is named). A waiting job leaves the queue at once; a running one
   * is flagged, and its worker stops the engine within a step.
   */
  async cancel(userId: string, jobId?: string): Promise<Job> {
    const candidates = await this.open(userId);
    const job = jobId ? candidates.find((j) => j.id === jobId) : candidates[0];
    if (!job) throw new UserFacingError('nothing_to_cancel', 'There is nothing running to cancel.');
    const cancelled = await this.state.cancel(job.id);
    if (!cancelled) throw new UserFacingError('nothing_to_cancel', 'That job has already finished.');
    const removed = await this.queues.removeWaiting(queueOf(job.kind), job.id);
    if (!removed) await this.queues.requestCancel(job.id);
    await this.events.publish(userId, jobEvent(cancelled));
    return cancelled;
  }
}
