// Reconciles open job rows with BullMQ. The row is the request and the person's view of it; BullMQ is the delivery
// to a worker. They can disagree when a worker dies past BullMQ's stall limit (BullMQ fails the job without running
// our processor), when Redis loses a job, or when a process dies between two writes. An open row that nothing will
// ever finish blocks the person's next training and counts against their limits, so it is put right: re-queued when
// the queue lost it, failed with a reason when the queue gave up on it.
import { and, eq, inArray, lt } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { Db } from '../src/db/client.ts';
import { generations, jobs, type Job } from '../src/db/schema.ts';
import type { EventBus } from '../src/events/bus.ts';
import type { JobQueues } from '../src/queue/index.ts';
import { jobEvent, queueOf } from '../src/services/jobs.ts';
import { OPEN_STATUSES, type JobState } from '../src/services/job-state.ts';

export interface ReconcileDeps {
  db: Db;
  state: JobState;
  queues: JobQueues;
  events: EventBus;
  logger: Logger;
}

export interface ReconcileReport { checked: number; requeued: number; failed: number }

/** Rows younger than this are left alone: their producer may still be adding the queue entry. */
const GRACE_MS = 30_000;

export async function reconcileJobs(deps: ReconcileDeps, graceMs = GRACE_MS): Promise<ReconcileReport> {
  const open = await deps.db
    .select()
    .from(jobs)
    .where(and(inArray(jobs.status, [...OPEN_STATUSES]), lt(jobs.createdAt, new Date(Date.now() - graceMs))));
  const report: ReconcileReport = { checked: open.length, requeued: 0, failed: 0 };
  for (const row of open) {
    const outcome = await reconcileJob(deps, row);
    if (outcome === 'requeued') report.requeued += 1;
    if (outcome === 'failed') report.failed += 1;
  }
  if (report.requeued + report.failed > 0) deps.logger.warn(report, 'reconciled job rows with the queue');
  return report;
}

/** Puts one open row right against its queue entry; returns what was done. */
export async function reconcileJob(deps: ReconcileDeps, row: Job): Promise<'ok' | 'requeued' | 'failed'> {
  const queueName = queueOf(row.kind);
  const queueJob = await deps.queues[queueName].getJob(row.queueJobId);
  const state = queueJob ? await queueJob.getState() : 'missing';
  if (state === 'waiting' || state === 'delayed' || state === 'prioritized' || state === 'waiting-children' || state === 'active') return 'ok';
  if (state === 'missing' || state === 'unknown') {
    // The queue lost it (or it was never added): add it again under the same id; the row is the request.
    const requeued = row.status === 'active' ? await deps.state.handBack(row.id) : row;
    if (!requeued) return 'ok'; // it moved on meanwhile
    await addAgain(deps, requeued);
    deps.logger.warn({ jobId: row.id }, 'the queue had lost this job; it was queued again');
    return 'requeued';
  }
  // 'failed' (BullMQ gave up, e.g. stalled too often) or 'completed' without the row finishing.
  const reason = state === 'failed' ? queueJob!.failedReason : 'the worker finished without recording a result';
  const stalled = /stalled/i.test(reason ?? '');
  const failed = await deps.state.fail(row.id, {
    code: stalled ? 'worker_lost' : 'internal',
    message: stalled ? 'The worker running this job stopped responding too many times; please try again.' : `The job was lost: ${reason}`,
  });
  if (!failed) return 'ok';
  await deps.events.publish(failed.userId, jobEvent(failed)).catch(() => undefined);
  deps.logger.warn({ jobId: row.id, queueState: state, reason }, 'job row failed to match its queue entry');
  return 'failed';
}

async function addAgain(deps: ReconcileDeps, row: Job) {
  if (row.kind === 'train') {
    await deps.queues.addTrain({ jobId: row.id, adapterId: row.adapterId! });
    return;
  }
  const [generation] = await deps.db.select({ id: generations.id }).from(generations).where(eq(generations.jobId, row.id));
  if (generation) await deps.queues.addGenerate({ jobId: row.id, generationId: generation.id });
}
