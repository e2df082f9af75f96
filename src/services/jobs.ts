import { and, count, desc, eq, inArray, lt } from 'drizzle-orm';
import type { Db } from '../db/client.ts';
import { generations, jobs, type Job, type JobKind } from '../db/schema.ts';
import type { JobQueues, QueueName } from '../queue/index.ts';
import type { EventBus, JobEvent } from '../events/bus.ts';
import { UserFacingError, notFound } from './errors.ts';
import { OPEN_STATUSES, type JobState } from './job-state.ts';

export const queueOf = (kind: JobKind): QueueName => (kind === 'train' ? 'train' : 'generate');
const kindsOf = (queue: QueueName): JobKind[] => (queue === 'train' ? ['train'] : ['imagine', 'pose']);

export interface JobView {
  job: Job;
  /** 1-based place among waiting jobs of its queue; 0 once it runs or has finished. */
  position: number;
  generationId?: string;
  outputKeys: string[];
}

export function jobEvent(job: Job, extra: Partial<JobEvent> = {}): JobEvent {
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
    ...extra,
  };
}

export class JobService {
  constructor(
    private readonly db: Db,
    private readonly queues: JobQueues,
    private readonly events: EventBus,
    private readonly state: JobState,
  ) {}

  async position(job: Job): Promise<number> {
    if (job.status !== 'queued') return 0;
    const [row] = await this.db
      .select({ n: count() })
      .from(jobs)
      .where(and(inArray(jobs.kind, kindsOf(queueOf(job.kind))), eq(jobs.status, 'queued'), lt(jobs.createdAt, job.createdAt)));
    return (row?.n ?? 0) + 1;
  }

  async view(userId: string, jobId: string): Promise<JobView> {
    const [job] = await this.db.select().from(jobs).where(and(eq(jobs.id, jobId), eq(jobs.userId, userId)));
    if (!job) throw notFound('Job');
    const [generation] = await this.db
      .select({ id: generations.id, keys: generations.outputKeys })
      .from(generations)
      .where(eq(generations.jobId, job.id));
    return { job, position: await this.position(job), generationId: generation?.id, outputKeys: generation?.keys ?? [] };
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
