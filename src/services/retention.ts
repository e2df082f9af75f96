// Retention: the data of people who have not used the bot for RETENTION_DAYS is deleted, exactly as /forget would
// delete it. A person's last activity is their newest account, photo or job; anyone with an open job is active.
import { sql } from 'drizzle-orm';
import type { Db } from '../db/client.ts';
import type { ForgetService } from './forget.ts';

export class RetentionService {
  constructor(
    private readonly db: Db,
    private readonly forget: ForgetService,
    private readonly days: number | undefined,
  ) {}

  /** The ids of people whose last activity is older than the retention period (none when retention is off). */
  async inactive(now = new Date()): Promise<string[]> {
    if (!this.days) return [];
    const cutoff = new Date(now.getTime() - this.days * 24 * 3600 * 1000);
    const rows = await this.db.execute<{ id: string }>(sql`
      select u.id from users u
      where greatest(
          u.created_at,
          (select max(a.created_at) from accounts a where a.user_id = u.id),
          (select max(p.created_at) from photos p where p.user_id = u.id),
          (select max(j.created_at) from jobs j where j.user_id = u.id)
        ) < ${cutoff.toISOString()}::timestamptz
        and not exists (select 1 from jobs j where j.user_id = u.id and j.status in ('queued', 'active'))`);
    return rows.rows.map((r) => r.id);
  }

  /** Forgets every inactive person; returns how many. */
  async sweep(now = new Date()): Promise<number> {
    const ids = await this.inactive(now);
    for (const id of ids) await this.forget.forget(id);
    return ids.length;
  }
}
