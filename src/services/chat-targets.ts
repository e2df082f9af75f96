// Where each job's progress is shown in a chat (see the chat_targets table), and the outbox that delivers its final
// state. Platform-neutral: the target is an opaque address the platform adapter wrote and reads back.
//
// A final delivery is sent under a lease: one process at a time holds it, until a time on the database clock (so
// processes on other machines agree), and renews it before each part. Each part is recorded as sent right after the
// chat API accepted it, so a retry, or another process after a crash, resumes with the first part not recorded.
import { and, eq, inArray, isNull, lt, or, sql } from 'drizzle-orm';
import type { Db } from '../db/client.ts';
import { chatTargets, jobs, type ChatTarget, type Platform } from '../db/schema.ts';

export type TargetAddress = Record<string, string | number>;

const finalStatuses = ['completed', 'failed', 'cancelled'] as const;
const after = (ms: number) => sql`now() + ${Math.max(0, Math.round(ms))} * interval '1 millisecond'`;
/** Neither delivered nor given up, and no live lease held by anyone. */
const free = and(
  isNull(chatTargets.deliveredAt),
  isNull(chatTargets.failedAt),
  or(isNull(chatTargets.leaseUntil), lt(chatTargets.leaseUntil, sql`now()`)),
);

/** A delivery whose every part was sent: done, its lease given back. */
const done = () => ({ deliveredAt: sql`now()`, leaseOwner: null, leaseUntil: null, lastError: null });

export class ChatTargetService {
  constructor(private readonly db: Db) {}

  async register(jobId: string, userId: string, platform: Platform, target: TargetAddress, locale: string): Promise<ChatTarget> {
    // A new status message for the job (rare: the row is normally made once) restarts its delivery from scratch.
    const fresh = { target, locale, deliveredAt: null, failedAt: null, parts: {}, attempts: 0, nextAttemptAt: null, leaseOwner: null, leaseUntil: null, lastError: null };
    const [row] = await this.db
      .insert(chatTargets)
      .values({ jobId, userId, platform, target, locale })
      .onConflictDoUpdate({ target: chatTargets.jobId, set: fresh })
      .returning();
    return row!;
  }

  get(jobId: string): Promise<ChatTarget | undefined> {
    return this.db.select().from(chatTargets).where(eq(chatTargets.jobId, jobId)).then((rows) => rows[0]);
  }

  /** Targets of one platform whose job's final state has not been shown yet (picked up again after a restart). */
  pending(platform: Platform): Promise<ChatTarget[]> {
    return this.db.select().from(chatTargets)
      .where(and(eq(chatTargets.platform, platform), isNull(chatTargets.deliveredAt), isNull(chatTargets.failedAt)));
  }

  /** Finished jobs of one platform whose delivery nobody holds and whose retry time has come (a crashed sender's too). */
  async due(platform: Platform): Promise<ChatTarget[]> {
    const rows = await this.db
      .select({ target: chatTargets })
      .from(chatTargets)
      .innerJoin(jobs, eq(jobs.id, chatTargets.jobId))
      .where(and(
        eq(chatTargets.platform, platform),
        free,
        or(isNull(chatTargets.nextAttemptAt), lt(chatTargets.nextAttemptAt, sql`now()`)),
        inArray(jobs.status, [...finalStatuses]),
      ));
    return rows.map((r) => r.target);
  }

  /**
   * Takes the lease on a job's delivery for `leaseMs`; exactly one caller gets the row while the lease lives, everyone
   * else undefined. A retry that is not due yet is not leased either.
   */
  async lease(jobId: string, owner: string, leaseMs: number): Promise<ChatTarget | undefined> {
    const [row] = await this.db
      .update(chatTargets)
      .set({ leaseOwner: owner, leaseUntil: after(leaseMs), attempts: sql`${chatTargets.attempts} + 1` })
      .where(and(
        eq(chatTargets.jobId, jobId),
        free,
        or(isNull(chatTargets.nextAttemptAt), lt(chatTargets.nextAttemptAt, sql`now()`)),
      ))
      .returning();
    return row;
  }

  /**
   * Takes the lease for a part sent while the job still runs (an intermediate preview), without counting a delivery
   * attempt; undefined when someone holds it or the delivery is over. Give it back with `release`.
   */
  async claim(jobId: string, owner: string, leaseMs: number): Promise<ChatTarget | undefined> {
    const [row] = await this.db
      .update(chatTargets)
      .set({ leaseOwner: owner, leaseUntil: after(leaseMs) })
      .where(and(eq(chatTargets.jobId, jobId), free))
      .returning();
    return row;
  }

  /** Gives a lease back with nothing else changed (after a part sent while the job runs). */
  async release(jobId: string, owner: string): Promise<boolean> {
    return this.held(jobId, owner, { leaseOwner: null, leaseUntil: null });
  }

  /** Extends a lease still held by `owner`; false when it was lost (it expired and another process took it). */
  async renew(jobId: string, owner: string, leaseMs: number): Promise<boolean> {
    return this.held(jobId, owner, { leaseUntil: after(leaseMs) });
  }

  /**
   * Records that `part` was accepted by the chat API, and extends the lease; false when the lease was lost. With
   * `last`, the part was the delivery's last one: it is recorded and the delivery marked done in one statement
   * (what `delivered` does), one round trip fewer per delivery.
   */
  async recordPart(jobId: string, owner: string, part: string, leaseMs: number, last = false): Promise<boolean> {
    const recorded = sql`${chatTargets.parts} || jsonb_build_object(${part}::text, now()::text)`;
    return this.held(jobId, owner, last ? { parts: recorded, ...done() } : { parts: recorded, leaseUntil: after(leaseMs) });
  }

  /** Every part was sent. */
  async delivered(jobId: string, owner: string): Promise<boolean> {
    return this.held(jobId, owner, done());
  }

  /** Gives the lease back after a failure that may pass; the delivery is due again after `delayMs`. */
  async retryLater(jobId: string, owner: string, delayMs: number, error: string): Promise<boolean> {
    return this.held(jobId, owner, { leaseOwner: null, leaseUntil: null, nextAttemptAt: after(delayMs), lastError: error });
  }

  /** Stops trying: the chat is gone or refuses us, or it failed too often. */
  async giveUp(jobId: string, owner: string, error: string): Promise<boolean> {
    return this.held(jobId, owner, { failedAt: sql`now()`, leaseOwner: null, leaseUntil: null, lastError: error });
  }

  private async held(jobId: string, owner: string, set: Partial<Record<keyof ChatTarget, unknown>>): Promise<boolean> {
    const rows = await this.db
      .update(chatTargets)
      .set(set as never)
      .where(and(eq(chatTargets.jobId, jobId), eq(chatTargets.leaseOwner, owner), isNull(chatTargets.deliveredAt), isNull(chatTargets.failedAt)))
      .returning({ jobId: chatTargets.jobId });
    return rows.length === 1;
  }
}
