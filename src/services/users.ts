import { and, eq } from 'drizzle-orm';
import type { Db } from '../db/client.ts';
import { accounts, users, type Platform, type User } from '../db/schema.ts';
import { isUniqueViolation } from './errors.ts';

export interface AccountProfile { displayName?: string; locale?: string }

export class UserService {
  constructor(private readonly db: Db) {}

  /** The user behind a platform account, created on first contact. */
  async resolve(platform: Platform, externalId: string, profile: AccountProfile = {}): Promise<User> {
    const found = await this.find(platform, externalId);
    if (found) return found;
    try {
      return await this.db.transaction(async (tx) => {
        const [user] = await tx
          .insert(users)
          .values({ displayName: profile.displayName, locale: profile.locale ?? 'en' })
          .returning();
        await tx.insert(accounts).values({ userId: user!.id, platform, externalId });
        return user!;
      });
    } catch (error) {
      // Two first messages at once: the other request created the account.
      if (!isUniqueViolation(error, 'accounts_platform_external_id')) throw error;
      return (await this.find(platform, externalId))!;
    }
  }

  /** `/lang`: the language every later message to this person uses, on every linked platform. */
  async setLocale(userId: string, locale: string): Promise<void> {
    await this.db.update(users).set({ locale }).where(eq(users.id, userId));
  }

  private async find(platform: Platform, externalId: string): Promise<User | undefined> {
    const [row] = await this.db
      .select({ user: users })
      .from(accounts)
      .innerJoin(users, eq(users.id, accounts.userId))
      .where(and(eq(accounts.platform, platform), eq(accounts.externalId, externalId)));
    return row?.user;
  }
}
