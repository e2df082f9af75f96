// `/link`: one account across platforms. A code issued on one platform, entered on another, moves the second
// platform's account onto the first one's user, so photos, models and quotas are shared from then on.
import { randomInt } from 'node:crypto';
import { and, eq, gt, inArray, lt, or, sql } from 'drizzle-orm';
import type { Db } from '../db/client.ts';
import { accounts, adapters, jobs, linkCodes, photos, users, type Platform } from '../db/schema.ts';
import { UserFacingError } from './errors.ts';

// No 0/O/1/I/L: the code is read off one screen and typed into another.
const ALPHABET = 'ABCDEFGHJKMNPQRSTUVWXYZ23456789';
const CODE_LENGTH = 8;
export const LINK_CODE_TTL_MS = 10 * 60 * 1000;

export interface LinkCodeIssued { code: string; expiresAt: Date; minutes: number }
export interface Linked { userId: string; movedAccounts: number }

/** 'abcd-efgh', 'ABCD EFGH' and 'ABCDEFGH' are the same code. */
export const normalizeCode = (input: string) => input.toUpperCase().replace(/[^A-Z0-9]/g, '');
const formatCode = (code: string) => `${code.slice(0, 4)}-${code.slice(4)}`;

export class LinkService {
  constructor(private readonly db: Db, private readonly ttlMs = LINK_CODE_TTL_MS) {}

  /** A fresh code for this user; earlier codes of theirs stop working. */
  async issue(userId: string, platform: Platform): Promise<LinkCodeIssued> {
    const code = Array.from({ length: CODE_LENGTH }, () => ALPHABET[randomInt(ALPHABET.length)]).join('');
    const expiresAt = new Date(Date.now() + this.ttlMs);
    await this.db.transaction(async (tx) => {
      await tx.delete(linkCodes).where(or(eq(linkCodes.userId, userId), lt(linkCodes.expiresAt, new Date())));
      await tx.insert(linkCodes).values({ code, userId, platform, expiresAt });
    });
    return { code: formatCode(code), expiresAt, minutes: Math.round(this.ttlMs / 60_000) };
  }

  /**
   * Joins the account `userId` (on `platform`) with the user who issued `code`. Whichever side has data (photos,
   * models, jobs) survives; if both do, nothing is merged and the person is told how to proceed. A refused attempt
   * leaves the code usable, so the person can fix the cause and enter it again.
   */
  async redeem(userId: string, platform: Platform, input: string): Promise<Linked> {
    const code = normalizeCode(input);
    return this.db.transaction(async (tx) => {
      const [issued] = await tx
        .delete(linkCodes)
        .where(and(eq(linkCodes.code, code), gt(linkCodes.expiresAt, new Date())))
        .returning();
      if (!issued) throw new UserFacingError('link_code_invalid', 'This link code is wrong or has expired.');
      if (issued.userId === userId) throw new UserFacingError('link_already', 'These accounts are already linked.');
      if (issued.platform === platform) throw new UserFacingError('link_same_platform', 'Enter the code on the other platform.');
      // Locks both users like TrainingService.start does, so no training can start halfway through the move.
      await tx.select({ id: users.id }).from(users).where(inArray(users.id, [userId, issued.userId])).orderBy(users.id).for('update');
      const [open] = await tx.select({ id: jobs.id }).from(jobs).where(and(inArray(jobs.userId, [userId, issued.userId]), inArray(jobs.status, ['queued', 'active']))).limit(1);
      if (open) throw new UserFacingError('link_jobs_open', 'Wait until your running jobs finish, then link again.');
      const hasData = async (id: string) => {
        const [row] = await tx.execute<{ found: boolean }>(sql`select (
          exists(select 1 from ${photos} where ${photos.userId} = ${id}) or
          exists(select 1 from ${adapters} where ${adapters.userId} = ${id}) or
          exists(select 1 from ${jobs} where ${jobs.userId} = ${id})) as found`).then((r) => r.rows);
        return row?.found === true;
      };
      const [issuerHasData, enteringHasData] = [await hasData(issued.userId), await hasData(userId)];
      if (issuerHasData && enteringHasData) {
        throw new UserFacingError('link_both_have_data', 'Both accounts have photos or models; forget one of them first.');
      }
      const [survivor, dropped] = enteringHasData ? [userId, issued.userId] : [issued.userId, userId];
      const moved = await tx.update(accounts).set({ userId: survivor }).where(eq(accounts.userId, dropped)).returning({ id: accounts.id });
      // The dropped user has no photos, models or jobs left to lose: only its now account-less row.
      await tx.delete(users).where(eq(users.id, dropped));
      return { userId: survivor, movedAccounts: moved.length };
    });
  }
}
