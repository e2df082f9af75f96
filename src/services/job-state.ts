// The one owner of job state. Every write to a job row (and to the status of the adapter a training fills) goes
// through here, and every transition is a compare-and-set on the current status, so two writers can never undo each
// other: a cancel or a /forget that lands while the engine is finishing wins over the late completion, a stale
// worker cannot revive a cancelled job, and a finished job is never reopened.
//
//   queued ──begin──► active ──complete──► completed
//     ▲  │              │ │ └──fail──────► failed
//     │  └─cancel/fail──┼─┼──────────────► cancelled / failed
//     └──requeue/handBack┘ └─cancel──────► cancelled
import { and, eq, inArray, TransactionRollbackError } from 'drizzle-orm';
import type { Db } from '../db/client.ts';
import { adapters, jobs, trainingPreviews, type AdapterStatus, type Job, type JobKind, type JobStatus, type TrainingPreview } from '../db/schema.ts';

export type Tx = Parameters<Parameters<Db['transaction']>[0]>[0];
type Writer = Db | Tx;

export const OPEN_STATUSES = ['queued', 'active'] as const satisfies readonly JobStatus[];
export const FINAL_STATUSES = ['completed', 'failed', 'cancelled'] as const satisfies readonly JobStatus[];

export interface NewJob {
  id: string;
  userId: string;
  kind: Job['kind'];
  queueJobId: string;
  adapterId: string;
  totalSteps: number;
}

export interface Failure {
  code: string;
  message: string;
}

export class JobState {
  constructor(private readonly db: Db) {}

  /** A new queued job, inside the caller's transaction (it creates the rows the job is about in the same one). */
  async create(tx: Tx, job: NewJob): Promise<Job> {
    const [row] = await tx.insert(jobs).values(job).returning();
    return row!;
  }

  async get(jobId: string): Promise<Job | undefined> {
    const [row] = await this.db.select().from(jobs).where(eq(jobs.id, jobId));
    return row;
  }

  /**
   * A worker takes the job: queued → active (or active → active when BullMQ hands a stalled job to a new worker).
   * Undefined when the job was cancelled, finished or forgotten meanwhile: the worker must not run it.
   */
  async begin(jobId: string, kind: JobKind, attempt: number): Promise<Job | undefined> {
    const set = { status: 'active', startedAt: new Date(), attempts: attempt, error: null, errorCode: null } as const;
    // Only a training moves a second row (its adapter) with it; any other job starts in one statement, no transaction.
    if (kind !== 'train') return this.transition(this.db, jobId, OPEN_STATUSES, set);
    return this.db.transaction(async (tx) => {
      const row = await this.transition(tx, jobId, OPEN_STATUSES, set);
      if (row?.adapterId) await setAdapterStatus(tx, row.adapterId, ['queued', 'training'], 'training');
      return row;
    });
  }

  /**
   * Live progress, only while the job is active; undefined tells the worker the job left 'active' under it. A
   * training also gives its loss curve so far ([step, loss] pairs), so a page opened later can draw it.
   */
  progress(jobId: string, step: number, total: number, lossCurve?: [number, number][]): Promise<Job | undefined> {
    return this.transition(this.db, jobId, ['active'], {
      progress: total > 0 ? step / total : 0, step, totalSteps: total, ...(lossCurve ? { lossCurve } : {}),
    });
  }

  /**
   * Records a training's intermediate preview (its blob stored under the caller's lease), only while the job is
   * active: undefined when it was cancelled or forgotten meanwhile, or when that step's preview is recorded already
   * (a retried attempt painting it again); the caller then abandons the blob. `write` runs in the same transaction.
   */
  async preview(
    jobId: string, step: number, total: number, key: string, write?: (tx: Tx) => Promise<void>,
  ): Promise<{ job: Job; preview: TrainingPreview } | undefined> {
    return this.db.transaction(async (tx) => {
      // Locks the row against a cancel or /forget until the preview is in (or not).
      const [job] = await tx.select().from(jobs).where(and(eq(jobs.id, jobId), eq(jobs.status, 'active'))).for('update');
      if (!job) return undefined;
      const [preview] = await tx.insert(trainingPreviews).values({ userId: job.userId, jobId, step, total, key })
        .onConflictDoNothing().returning();
      if (!preview) return undefined;
      await write?.(tx); // e.g. the blob's lease, released with the row that now refers to it
      return { job, preview };
    });
  }

  /** Records where the newest checkpoint of a running training is stored, so a retry anywhere resumes from it. */
  checkpoint(jobId: string, key: string, step: number): Promise<Job | undefined> {
    return this.transition(this.db, jobId, ['active'], { checkpointKey: key, checkpointStep: step });
  }

  /** active → queued for another attempt (a retryable failure); the error stays visible until the retry starts. */
  requeue(jobId: string, failure: Failure): Promise<Job | undefined> {
    return this.transition(this.db, jobId, ['active'], { status: 'queued', errorCode: failure.code, error: failure.message });
  }

  /** active → queued on shutdown: the job goes back to the queue as it was, for the next worker. */
  handBack(jobId: string): Promise<Job | undefined> {
    return this.transition(this.db, jobId, ['active'], { status: 'queued', progress: 0, step: null });
  }

  /**
   * active → completed, with `write` (the adapter's file keys, a generation's outputs) in the same transaction.
   * Undefined, and nothing written, when the job is no longer active: cancelled or forgotten while the engine
   * finished. The caller then discards what it produced.
   */
  async complete(jobId: string, write?: (tx: Tx, job: Job) => Promise<void>): Promise<Job | undefined> {
    return this.db.transaction(async (tx) => {
      // A finished training needs its checkpoint no more: the caller deletes the blob once this commits.
      const row = await this.transition(tx, jobId, ['active'], {
        status: 'completed', progress: 1, finishedAt: new Date(), checkpointKey: null, checkpointStep: null,
      });
      if (!row) return undefined;
      if (row.kind === 'train' && row.adapterId && !(await setAdapterStatus(tx, row.adapterId, ['training'], 'ready'))) {
        tx.rollback(); // the adapter was cancelled or deleted under us: the completion must not stand
      }
      await write?.(tx, row);
      return row;
    }).catch((error: unknown) => {
      if (error instanceof TransactionRollbackError) return undefined;
      throw error;
    });
  }

  /** Any open state → failed for good; a training's adapter is marked failed with it. */
  fail(jobId: string, failure: Failure, from: readonly JobStatus[] = OPEN_STATUSES): Promise<Job | undefined> {
    return this.db.transaction(async (tx) => {
      const row = await this.transition(tx, jobId, from, { status: 'failed', errorCode: failure.code, error: failure.message, finishedAt: new Date() });
      if (row?.kind === 'train' && row.adapterId) await setAdapterStatus(tx, row.adapterId, ['queued', 'training'], 'failed');
      return row;
    });
  }

  /** Any open state → cancelled (the person asked); wins over a completion that has not committed yet. */
  cancel(jobId: string, reason = 'Cancelled by you.'): Promise<Job | undefined> {
    return this.db.transaction(async (tx) => {
      const row = await this.transition(tx, jobId, OPEN_STATUSES, { status: 'cancelled', errorCode: 'cancelled', error: reason, finishedAt: new Date() });
      if (row?.kind === 'train' && row.adapterId) await setAdapterStatus(tx, row.adapterId, ['queued', 'training'], 'cancelled');
      return row;
    });
  }

  /** Forgets the checkpoint of a job that has ended (cancelled, failed); returns its key for deletion. */
  async dropCheckpoint(jobId: string): Promise<string | undefined> {
    return this.db.transaction(async (tx) => {
      const [before] = await tx.select({ key: jobs.checkpointKey }).from(jobs).where(eq(jobs.id, jobId)).for('update');
      if (!before?.key) return undefined;
      const row = await this.transition(tx, jobId, FINAL_STATUSES, { checkpointKey: null, checkpointStep: null });
      return row ? before.key : undefined;
    });
  }

  /**
   * Forgets the previews of a training that ended without a model (cancelled, failed); returns their keys for
   * deletion. None can be added after: a preview is recorded only while its job is active.
   */
  async dropPreviews(jobId: string): Promise<string[]> {
    return this.db.transaction(async (tx) => {
      const [job] = await tx.select({ id: jobs.id }).from(jobs)
        .where(and(eq(jobs.id, jobId), inArray(jobs.status, ['failed', 'cancelled']))).for('update');
      if (!job) return [];
      const rows = await tx.delete(trainingPreviews).where(eq(trainingPreviews.jobId, jobId)).returning({ key: trainingPreviews.key });
      return rows.map((row) => row.key);
    });
  }

  private async transition(w: Writer, jobId: string, from: readonly JobStatus[], set: Partial<typeof jobs.$inferInsert>): Promise<Job | undefined> {
    const [row] = await w.update(jobs).set(set).where(and(eq(jobs.id, jobId), inArray(jobs.status, [...from]))).returning();
    return row;
  }
}

async function setAdapterStatus(tx: Tx, adapterId: string, from: AdapterStatus[], to: AdapterStatus): Promise<boolean> {
  const rows = await tx
    .update(adapters)
    .set({ status: to, updatedAt: new Date() })
    .where(and(eq(adapters.id, adapterId), inArray(adapters.status, from)))
    .returning({ id: adapters.id });
  return rows.length > 0;
}
