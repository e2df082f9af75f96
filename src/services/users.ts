import { and, eq, notExists, sql } from 'drizzle-orm';
import type { Db } from '../db/client.ts';
import { accounts, jobs, photos, users, type Platform, type User } from '../db/schema.ts';
import { isUniqueViolation, notFound } from './errors.ts';

export interface AccountProfile { displayName?: string; locale?: string }

export class UserService {
  /**
   * Every command looks its person up: built once and prepared (a named statement per connection), so neither
   * drizzle nor Postgres builds or plans it again per command.
   */
  private readonly byAccount;

  constructor(private readonly db: Db) {
    this.byAccount = db
      .select({ user: users })
      .from(accounts)
      .innerJoin(users, eq(users.id, accounts.userId))
      .where(and(eq(accounts.platform, sql.placeholder('platform')), eq(accounts.externalId, sql.placeholder('externalId'))))
      .prepare('user_by_account');
  }

  /** Records that the person confirmed their photos are of themselves (the first confirmation's time is kept). */
  async consent(userId: string): Promise<Date> {
    const [row] = await this.db
      .update(users)
      .set({ consentedAt: sql`coalesce(${users.consentedAt}, now())` })
      .where(eq(users.id, userId))
      .returning({ at: users.consentedAt });
    if (!row?.at) throw notFound('user');
    return row.at;
  }

  /** The user behind a platform account, created on first contact. */
  async resolve(platform: Platform, externalId: string, profile: AccountProfile = {}): Promise<User> {
    return (await this.resolveCreated(platform, externalId, profile)).user;
  }

  /** As resolve(), and whether this call created the user (the web API undoes that when the request fails). */
  async resolveCreated(platform: Platform, externalId: string, profile: AccountProfile = {}): Promise<{ user: User; created: boolean }> {
    const found = await this.find(platform, externalId);
    if (found) return { user: found, created: false };
    try {
      const user = await this.db.transaction(async (tx) => {
        const [user] = await tx
          .insert(users)
          .values({ displayName: profile.displayName, locale: profile.locale ?? 'en' })
          .returning();
        await tx.insert(accounts).values({ userId: user!.id, platform, externalId });
        return user!;
      });
      return { user, created: true };
    } catch (error) {
      // Two first messages at once: the other request created the account.
      if (!isUniqueViolation(error, 'accounts_platform_external_id')) throw error;
      return { user: (await this.find(platform, externalId))!, created: false };
    }
  }

  /** The user behind a platform account, or undefined: reads never create anyone. */
  async find(platform: Platform, externalId: string): Promise<User | undefined> {
    const [row] = await this.byAccount.execute({ platform, externalId });
    return row?.user;
  }

  /**
   * Deletes a user that owns nothing yet (no photo, no job: adapters and generations only exist with a job), with
   * its accounts. For a first request that failed: it leaves no row behind. Returns whether it was deleted.
   */
  async dropIfUnused(userId: string): Promise<boolean> {
    const deleted = await this.db
      .delete(users)
      .where(and(
        eq(users.id, userId),
        notExists(this.db.select({ id: photos.id }).from(photos).where(eq(photos.userId, userId))),
        notExists(this.db.select({ id: jobs.id }).from(jobs).where(eq(jobs.userId, userId))),
      ))
      .returning({ id: users.id });
    return deleted.length > 0;
  }

  /** `/lang`: the language every later message to this person uses, on every linked platform. */
  async setLocale(userId: string, locale: string): Promise<void> {
    await this.db.update(users).set({ locale }).where(eq(users.id, userId));
  }
}
