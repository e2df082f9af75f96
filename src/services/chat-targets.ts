// Where each job's progress is shown in a chat (see the chat_targets table). Platform-neutral: the target is an
// opaque address the platform adapter wrote and reads back.
import { and, eq, isNull } from 'drizzle-orm';
import type { Db } from '../db/client.ts';
import { chatTargets, type ChatTarget, type Platform } from '../db/schema.ts';

export type TargetAddress = Record<string, string | number>;

export class ChatTargetService {
  constructor(private readonly db: Db) {}

  async register(jobId: string, userId: string, platform: Platform, target: TargetAddress, locale: string): Promise<ChatTarget> {
    const [row] = await this.db
      .insert(chatTargets)
      .values({ jobId, userId, platform, target, locale })
      .onConflictDoUpdate({ target: chatTargets.jobId, set: { target, locale, deliveredAt: null } })
      .returning();
    return row!;
  }

  /** Targets of one platform whose job's final state has not been shown yet (picked up again after a restart). */
  pending(platform: Platform): Promise<ChatTarget[]> {
    return this.db.select().from(chatTargets).where(and(eq(chatTargets.platform, platform), isNull(chatTargets.deliveredAt)));
  }

  /** Takes the right to show the job's final state; exactly one caller gets the row, everyone else undefined. */
  async claim(jobId: string): Promise<ChatTarget | undefined> {
    const [row] = await this.db
      .update(chatTargets)
      .set({ deliveredAt: new Date() })
      .where(and(eq(chatTargets.jobId, jobId), isNull(chatTargets.deliveredAt)))
      .returning();
    return row;
  }

  /** Gives a claim back after a delivery that may succeed later (network trouble, rate limit). */
  async unclaim(jobId: string): Promise<void> {
    await this.db.update(chatTargets).set({ deliveredAt: null }).where(eq(chatTargets.jobId, jobId));
  }
}
