// What an operator may do from a chat: read stats, pause and resume a queue, ban and unban a person, change one
// person's limits. Who is an operator is the adapters' business (configured chat ids); this service trusts its caller.
import { count, eq, isNotNull, sql } from 'drizzle-orm';
import type { Db } from '../db/client.ts';
import { accounts, jobs, jobStatuses, platforms, users, type LimitName, type LimitOverrides, type Platform, type User } from '../db/schema.ts';
import { queueNames, type JobQueues, type QueueName } from '../queue/index.ts';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export interface QueueStats { name: QueueName; paused: boolean; waiting: number; active: number; delayed: number; failed: number }
export interface AdminStats {
  users: number;
  banned: number;
  jobs: Record<string, number>;
  queues: QueueStats[];
}

export class AdminService {
  constructor(private readonly db: Db, private readonly queues: JobQueues) {}

  async stats(): Promise<AdminStats> {
    const [[people], [banned], byStatus, queues] = await Promise.all([
      this.db.select({ n: count() }).from(users),
      this.db.select({ n: count() }).from(users).where(isNotNull(users.bannedAt)),
      this.db.select({ status: jobs.status, n: count() }).from(jobs).groupBy(jobs.status),
      Promise.all(Object.values(queueNames).map(async (name): Promise<QueueStats> => {
        const queue = this.queues[name];
        const counts = await queue.getJobCounts('waiting', 'active', 'delayed', 'failed', 'prioritized');
        return {
          name,
          paused: await queue.isPaused(),
          waiting: (counts.waiting ?? 0) + (counts.prioritized ?? 0),
          active: counts.active ?? 0,
          delayed: counts.delayed ?? 0,
          failed: counts.failed ?? 0,
        };
      })),
    ]);
    const jobsByStatus = Object.fromEntries(jobStatuses.map((s) => [s, 0])) as Record<string, number>;
    for (const row of byStatus) jobsByStatus[row.status] = row.n;
    return { users: people?.n ?? 0, banned: banned?.n ?? 0, jobs: jobsByStatus, queues };
  }

  /** Pauses (or resumes) queues for every worker: running jobs finish, no new one starts. Returns the queues touched. */
  async setPaused(which: QueueName | 'all', paused: boolean): Promise<QueueName[]> {
    const names = which === 'all' ? Object.values(queueNames) : [which];
    for (const name of names) await (paused ? this.queues[name].pause() : this.queues[name].resume());
    return names;
  }

  /**
   * The person a reference names: a user id, `platform:id`, or a bare id on the admin's own platform. Undefined when
   * there is nobody by that reference (nobody is created by looking).
   */
  async findUser(reference: string, defaultPlatform: Platform): Promise<User | undefined> {
    const ref = reference.trim();
    if (UUID.test(ref)) return (await this.db.select().from(users).where(eq(users.id, ref)))[0];
    const prefixed = /^([a-z]+):(.+)$/.exec(ref);
    const platform = (prefixed?.[1] ?? defaultPlatform) as Platform;
    if (!platforms.includes(platform)) return undefined;
    const [row] = await this.db
      .select({ user: users })
      .from(accounts)
      .innerJoin(users, eq(users.id, accounts.userId))
      .where(sql`${accounts.platform} = ${platform} and ${accounts.externalId} = ${prefixed?.[2] ?? ref}`);
    return row?.user;
  }

  async setBanned(userId: string, banned: boolean): Promise<void> {
    await this.db.update(users).set({ bannedAt: banned ? sql`coalesce(${users.bannedAt}, now())` : null }).where(eq(users.id, userId));
  }

  /** Sets one limit for one person, or (null) goes back to the configured one. Returns the overrides now in force. */
  async setLimit(userId: string, name: LimitName, value: number | null): Promise<LimitOverrides> {
    const [row] = await this.db.select({ overrides: users.limitOverrides }).from(users).where(eq(users.id, userId));
    const overrides: LimitOverrides = { ...row?.overrides };
    if (value === null) delete overrides[name];
    else overrides[name] = value;
    await this.db.update(users).set({ limitOverrides: Object.keys(overrides).length > 0 ? overrides : null }).where(eq(users.id, userId));
    return overrides;
  }
}
