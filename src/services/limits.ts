// Per-user limits (open jobs, pictures per hour, trainings per day) and a global cap on waiting jobs.
// Usage windows live in Redis sorted sets (member = job id, score = when it was queued); the database stays the truth
// for what is open and what failed, so a failed job is refunded without anyone having to remember to do it.
import { randomBytes } from 'node:crypto';
import { and, count, eq, inArray, sql } from 'drizzle-orm';
import type { ChainableCommander, Redis } from 'ioredis';
import type { Db } from '../db/client.ts';
import { jobs, users, type Job, type JobKind } from '../db/schema.ts';
import type { Config } from '../config/index.ts';
import { UserFacingError } from './errors.ts';

const HOUR = 3600_000;
const DAY = 24 * HOUR;
const LOCK_TTL_MS = 15_000;
const LOCK_WAIT_MS = 5_000;

type Window = { name: 'generations' | 'trainings'; ms: number; max: number };

const RELEASE_LOCK = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end`;

export class LimitService {
  constructor(
    private readonly db: Db,
    private readonly redis: Redis,
    private readonly prefix: string,
    private readonly limits: Config['limits'],
  ) {}

  /**
   * Runs `create` (which queues one job) only if the user is within every limit, and counts the job. Requests of
   * one user are serialized by a short Redis lock, so two clicks cannot both squeeze under a limit.
   */
  async run<T extends { job: Job }>(userId: string, kind: JobKind, create: () => Promise<T>): Promise<T> {
    const release = await this.lock(userId);
    try {
      await this.check(userId, kind);
      const result = await create();
      const window = this.windowOf(kind);
      const key = this.key(window, userId);
      await this.redis.multi().zadd(key, Date.now(), result.job.id).pexpire(key, window.ms).exec();
      return result;
    } finally {
      await release();
    }
  }

  /** Throws the UserFacingError that explains which limit a new `kind` job would break. */
  async check(userId: string, kind: JobKind): Promise<void> {
    // One round trip: the person's overrides, their open jobs and the queue's waiting jobs.
    const { overrides, open, waiting } = await this.standing(userId);
    const limits = this.withOverrides(overrides);
    const max = limits.activeJobs;
    if (open >= max) throw new UserFacingError('limit_active_jobs', `You already have ${max} jobs running or waiting. Wait for one to finish, or cancel it.`, { max }, 429);

    const cap = this.limits.queueMaxWaiting;
    if (waiting >= cap) throw new UserFacingError('queue_full', 'The queue is full right now.', { max: cap }, 503);

    const window = this.windowOf(kind, limits);
    const oldest = await this.usage(window, userId);
    if (oldest === undefined) return;
    const waitMs = Math.max(0, oldest + window.ms - Date.now());
    if (window.name === 'trainings') {
      throw new UserFacingError('limit_trainings', `You have started ${window.max} trainings today, the daily limit. Try again in ${Math.ceil(waitMs / HOUR)} h.`, { max: window.max, hours: Math.ceil(waitMs / HOUR) }, 429);
    }
    throw new UserFacingError('limit_generations', `You have made ${window.max} pictures in the last hour, the hourly limit. Try again in ${Math.ceil(waitMs / 60_000)} min.`, { max: window.max, minutes: Math.ceil(waitMs / 60_000) }, 429);
  }

  /**
   * Counts the user's jobs in the window, refunding (dropping) those that failed, were cancelled before they
   * started, or were deleted. Returns the time of the oldest counted job when the window is full, else undefined.
   */
  private async usage(window: Window, userId: string): Promise<number | undefined> {
    const key = this.key(window, userId);
    let members = await this.changeThenRead(key, (m) => m.zremrangebyscore(key, 0, Date.now() - window.ms));
    if (members.length / 2 < window.max) return undefined;
    const ids = members.filter((_, i) => i % 2 === 0);
    const rows = await this.db.select({ id: jobs.id, status: jobs.status, startedAt: jobs.startedAt }).from(jobs).where(inArray(jobs.id, ids));
    const counted = new Set(rows.filter((r) => r.status !== 'failed' && !(r.status === 'cancelled' && !r.startedAt)).map((r) => r.id));
    const refunded = ids.filter((id) => !counted.has(id));
    if (refunded.length > 0) {
      members = await this.changeThenRead(key, (m) => m.zrem(key, ...refunded));
    }
    if (members.length / 2 < window.max) return undefined;
    // The window frees up when the job that is `max`-th from the newest ages out.
    return Number(members[(members.length / 2 - window.max) * 2 + 1]);
  }

  /** Runs `change` on a window's set, then reads it (members and scores) in the same MULTI: one round trip. */
  private async changeThenRead(key: string, change: (multi: ChainableCommander) => ChainableCommander): Promise<string[]> {
    const results = await change(this.redis.multi()).zrange(key, 0, -1, 'WITHSCORES').exec();
    if (!results) throw new Error(`the Redis transaction on ${key} was discarded`);
    const failed = results.find(([error]) => error);
    if (failed) throw failed[0];
    return results.at(-1)![1] as string[];
  }

  private async standing(userId: string): Promise<{ overrides: Partial<Config['limits']> | undefined; open: number; waiting: number }> {
    const overrides = this.overridesOf(userId);
    const open = this.db.select({ n: count() }).from(jobs).where(and(eq(jobs.userId, userId), inArray(jobs.status, ['queued', 'active'])));
    const waiting = this.db.select({ n: count() }).from(jobs).where(eq(jobs.status, 'queued'));
    const [row] = await this.db.select({
      overrides: sql<Partial<Config['limits']> | null>`(${overrides})`,
      open: sql`(${open})`.mapWith(Number),
      waiting: sql`(${waiting})`.mapWith(Number),
    }).from(sql`(select 1) as one`);
    return { overrides: row?.overrides ?? undefined, open: row?.open ?? 0, waiting: row?.waiting ?? 0 };
  }

  /** The configured limits with the person's own overrides (set by an admin) over them. */
  async limitsOf(userId: string): Promise<Config['limits']> {
    const [row] = await this.overridesOf(userId);
    return this.withOverrides(row?.overrides);
  }

  /** The person's limit overrides row (awaited alone, or a subquery of standing()). */
  private overridesOf(userId: string) {
    return this.db.select({ overrides: users.limitOverrides }).from(users).where(eq(users.id, userId));
  }

  private withOverrides(overrides: Partial<Config['limits']> | null | undefined): Config['limits'] {
    return { ...this.limits, ...overrides };
  }

  /** Deletes every Redis key that names the user (for /forget). */
  async forget(userId: string): Promise<void> {
    await this.redis.del(
      this.key(this.windowOf('train'), userId),
      this.key(this.windowOf('imagine'), userId),
      `${this.prefix}:limits:lock:${userId}`,
    );
  }

  private windowOf(kind: JobKind, limits: Config['limits'] = this.limits): Window {
    return kind === 'train'
      ? { name: 'trainings', ms: DAY, max: limits.trainingsPerDay }
      : { name: 'generations', ms: HOUR, max: limits.generationsPerHour };
  }

  private key(window: Window, userId: string) {
    return `${this.prefix}:limits:${window.name}:${userId}`;
  }

  private async lock(userId: string): Promise<() => Promise<void>> {
    const key = `${this.prefix}:limits:lock:${userId}`;
    const token = randomBytes(8).toString('hex');
    const deadline = Date.now() + LOCK_WAIT_MS;
    while ((await this.redis.set(key, token, 'PX', LOCK_TTL_MS, 'NX')) !== 'OK') {
      if (Date.now() > deadline) throw new UserFacingError('busy', 'Still handling your previous request.', {}, 429);
      await new Promise((r) => setTimeout(r, 50));
    }
    return async () => { await this.redis.eval(RELEASE_LOCK, 1, key, token); };
  }
}
