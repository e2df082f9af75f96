// What every chat feature shares: who the person is, what a Reply looks like, and how a command's failure becomes
// the person's message. The commands themselves live one feature per module beside this one (training.ts,
// imagine.ts, pose.ts, account.ts, forget.ts, status.ts, help.ts); README's "Where each command lives" maps them.
// Adapters turn platform input into those calls and render the Reply they get back; they hold no logic of their own.
import type { Logger } from 'pino';
import type { Redis } from 'ioredis';
import type { App } from '../../src/app.ts';
import type { Job, JobKind, Platform, User } from '../../src/db/schema.ts';
import { UserFacingError } from '../../src/services/errors.ts';
import type { GenerationNote } from '../../src/services/generation.ts';
import { errorMessage, apologyFor } from './error-text.ts';
import { etaText, knownKey, pickLocale, translator, type Locale, type Params, type Translate } from './i18n/index.ts';
import { whatKey, type Preview } from './job-text.ts';

export type { Preview } from './job-text.ts';

/** `style:<id>` paints the person in that style preset. */
export type ButtonAction = 'train_now' | 'consent_yes' | 'forget_yes' | 'forget_no' | `style:${string}`;
export interface Button { action: ButtonAction; label: string; danger?: boolean }

export interface Reply {
  text: string;
  buttons?: Button[];
  /**
   * A job was queued: the adapter sends this reply as the job's status message and hands it to the notifier, which
   * first sends the preview (the extracted /pose skeleton) when there is one.
   */
  job?: { id: string; kind: JobKind; preview?: Preview };
  /** Said before the job's status message, e.g. that some words of the prompt will be ignored. */
  notice?: string;
  /** A refusal or failure (Discord shows these only to the person). */
  error?: boolean;
}

export interface Person {
  userId: string;
  platform: Platform;
  locale: Locale;
  t: Translate;
}

/** A person as read from their user row for this update: also whether they were banned then. */
export type ResolvedPerson = Person & { banned: boolean };

/** A file the person sent; `download` is only called once the cheap checks (size) passed. */
export interface IncomingFile {
  name: string;
  size?: number;
  /** The platform recompressed it (a Telegram "photo" rather than a file). */
  compressed?: boolean;
  download(): Promise<Buffer>;
}

/** The app as the chat features use it; one per adapter. */
export class Conversation {
  readonly redis: Redis;
  readonly logger: Logger;

  constructor(readonly app: App) {
    this.redis = app.queues.connection;
    this.logger = app.logger.child({ part: 'conversation' });
  }

  get services() { return this.app.services; }
  get config() { return this.app.config; }

  async person(platform: Platform, externalId: string, profile: { displayName?: string; locale?: string } = {}): Promise<ResolvedPerson> {
    return personFrom(platform, await this.services.users.resolve(platform, externalId, { displayName: profile.displayName, locale: pickLocale(profile.locale) }));
  }

  /** The person behind an account that has written before, or undefined: a stranger gets no row from this. */
  async existingPerson(platform: Platform, externalId: string): Promise<ResolvedPerson | undefined> {
    const user = await this.services.users.find(platform, externalId);
    return user && personFrom(platform, user);
  }

  /** The Redis key of a piece of chat state (`name`) of one person. */
  key(name: string, userId: string) { return `${this.config.queuePrefix}:chat:${name}:${userId}`; }

  /** The text for a service error code in the person's language (English service text only as a last resort). */
  errorText(p: Person, code: string, details: Params = {}): string {
    return errorMessage(p.t, p.locale, this.config, code, details) ?? p.t('error.internal');
  }

  /**
   * The reply that becomes a queued job's status message; notes on the request go in a message of their own.
   * `etaSeconds` as the service that queued the job gave it (looked up when not given).
   */
  async queued(p: Person, job: Job, position: number, notes: GenerationNote[] = [], etaSeconds?: number | null): Promise<Reply> {
    const what = p.t(whatKey(job.kind));
    // A job in line says when it should start: its place × the recent mean time of its kind (none without history).
    const eta = job.status === 'queued' && position > 0 ? (etaSeconds !== undefined ? etaSeconds : await this.services.jobs.etaSeconds(job, position)) : null;
    const text = job.status === 'queued' && position > 0
      ? p.t('progress.queued', { what, position }) + (eta !== null ? `\n${etaText(p.t, eta)}` : '')
      : p.t('progress.starting', { what });
    // Notes go in their own message: the status message is edited with progress.
    const noteText = notes.map((n) => p.t(knownKey(`note.${n.code}`) ?? 'error.internal', n.details)).join('\n');
    return { text, job: { id: job.id, kind: job.kind }, ...(noteText ? { notice: noteText } : {}) };
  }

  /** Service refusals become the person's message; anything else is logged and answered without details. */
  async guard(p: Person, body: () => Promise<Reply>): Promise<Reply> {
    try {
      return await body();
    } catch (error) {
      if (error instanceof UserFacingError) return { text: this.errorText(p, error.code, error.details), error: true };
      this.logger.error({ err: error, userId: p.userId }, 'command failed');
      return { text: p.t(apologyFor(error)), error: true };
    }
  }
}

function personFrom(platform: Platform, user: User): ResolvedPerson {
  const locale = pickLocale(user.locale);
  return { userId: user.id, platform, locale, t: translator(locale), banned: user.bannedAt !== null };
}
