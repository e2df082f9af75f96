// The /admin command, written once for both chats: only accounts listed in ADMIN_TELEGRAM_IDS / ADMIN_DISCORD_IDS
// may use it; for anyone else the adapters behave as if it did not exist. Text in, Reply out:
//   /admin [stats] · pause|resume train|generate|all · ban|unban <id> · quota <id> generations|trainings|active <n|default>
import type { App } from '../../src/app.ts';
import type { LimitName, Platform } from '../../src/db/schema.ts';
import { queueNames, type QueueName } from '../../src/queue/index.ts';
import { UserFacingError } from '../../src/services/errors.ts';
import type { Person, Reply, ResolvedPerson } from './conversation.ts';

type ChatPlatform = Extract<Platform, 'telegram' | 'discord'>;

const limitWords: Record<string, LimitName> = { generations: 'generationsPerHour', trainings: 'trainingsPerDay', active: 'activeJobs' };
const MAX_LIMIT = 100_000;

export class AdminCommands {
  constructor(private readonly app: App) {}

  isAdmin(platform: ChatPlatform, externalId: string): boolean {
    const { admin } = this.app.config;
    return (platform === 'telegram' ? admin.telegramIds : admin.discordIds).has(externalId);
  }

  /**
   * A banned person's commands get only this answer (admins are never stopped, so they can unban themselves). The ban
   * is read with the user row this update already loads (`p`; undefined: an account never seen, so not banned).
   */
  bannedReply(platform: ChatPlatform, externalId: string, p: ResolvedPerson | undefined): Reply | undefined {
    if (!p?.banned || this.isAdmin(platform, externalId)) return undefined;
    return { text: p.t('error.banned'), error: true };
  }

  /** Runs one admin command line (without the leading /admin); the caller has checked isAdmin. */
  async run(p: Person, line: string): Promise<Reply> {
    const [verb = 'stats', ...args] = line.trim().split(/\s+/).filter(Boolean);
    switch (verb.toLowerCase()) {
      case 'stats': return this.stats(p);
      case 'pause':
      case 'resume': return this.pause(p, verb.toLowerCase() === 'pause', args[0]);
      case 'ban':
      case 'unban': return this.ban(p, verb.toLowerCase() === 'ban', args[0]);
      case 'quota': return this.quota(p, args);
      default: return { text: p.t('admin.help') };
    }
  }

  private async stats(p: Person): Promise<Reply> {
    const stats = await this.app.services.admin.stats();
    const lines = [p.t('admin.stats', { users: stats.users, banned: stats.banned, ...stats.jobs })];
    for (const q of stats.queues) {
      lines.push(p.t(q.paused ? 'admin.queue_paused' : 'admin.queue_line', { name: q.name, waiting: q.waiting, running: q.active, delayed: q.delayed, failed: q.failed }));
    }
    return { text: lines.join('\n') };
  }

  private async pause(p: Person, paused: boolean, which: string | undefined): Promise<Reply> {
    const queue = which?.toLowerCase();
    if (queue !== 'all' && !Object.values(queueNames).includes(queue as QueueName)) return { text: p.t('admin.bad_queue'), error: true };
    const touched = await this.app.services.admin.setPaused(queue as QueueName | 'all', paused);
    this.app.logger.warn({ admin: p.userId, queues: touched, paused }, paused ? 'admin paused queues' : 'admin resumed queues');
    return { text: p.t(paused ? 'admin.paused' : 'admin.resumed', { queues: touched.join(', ') }) };
  }

  private async ban(p: Person, banned: boolean, ref: string | undefined): Promise<Reply> {
    const user = ref ? await this.app.services.admin.findUser(ref, p.platform) : undefined;
    if (!user) return { text: p.t('admin.no_user', { ref: ref ?? '' }), error: true };
    await this.app.services.admin.setBanned(user.id, banned);
    // A ban also stops what the person had queued or running: no training or picture finishes for a blocked account.
    const cancelled = banned ? await this.cancelOpenJobs(user.id) : 0;
    this.app.logger.warn({ admin: p.userId, userId: user.id, banned, cancelled }, banned ? 'admin banned a user' : 'admin unbanned a user');
    const text = p.t(banned ? 'admin.banned_user' : 'admin.unbanned_user', { ref: ref! });
    return { text: cancelled > 0 ? `${text}\n${p.t('admin.banned_jobs', { n: cancelled })}` : text };
  }

  /** Cancels each open job of the person through the job-state owner; one that finished meanwhile is skipped. */
  private async cancelOpenJobs(userId: string): Promise<number> {
    const { jobs } = this.app.services;
    let cancelled = 0;
    for (const job of await jobs.open(userId)) {
      try {
        await jobs.cancel(userId, job.id);
        cancelled++;
      } catch (error) {
        if (!(error instanceof UserFacingError && error.code === 'nothing_to_cancel')) throw error;
      }
    }
    return cancelled;
  }

  private async quota(p: Person, [ref, which, value]: string[]): Promise<Reply> {
    const name = which ? limitWords[which.toLowerCase()] : undefined;
    const number = value?.toLowerCase() === 'default' ? null : /^\d{1,6}$/.test(value ?? '') ? Number(value) : undefined;
    if (!ref || !name || number === undefined || (number !== null && (number < 1 || number > MAX_LIMIT))) return { text: p.t('admin.bad_limit'), error: true };
    const user = await this.app.services.admin.findUser(ref, p.platform);
    if (!user) return { text: p.t('admin.no_user', { ref }), error: true };
    await this.app.services.admin.setLimit(user.id, name, number);
    this.app.logger.warn({ admin: p.userId, userId: user.id, limit: name, value: number }, 'admin changed a limit');
    const now = await this.app.services.limits.limitsOf(user.id);
    return { text: p.t('admin.limits_now', { ref, generations: now.generationsPerHour, trainings: now.trainingsPerDay, active: now.activeJobs }) };
  }
}
