// The platform-neutral conversation: what the bot answers to each command, written once for Telegram and Discord.
// Adapters turn platform input into these calls and render the Reply they get back; they hold no logic of their own.
import type { Logger } from 'pino';
import type { Redis } from 'ioredis';
import type { App } from '../../src/app.ts';
import type { Adapter, Job, JobKind, Platform } from '../../src/db/schema.ts';
import { UserFacingError } from '../../src/services/errors.ts';
import { errorMessage, apologyFor } from './error-text.ts';
import type { GenerationNote } from '../../src/services/generation.ts';
import { parseStyleCommand, stylePresets } from '../../src/services/styles.ts';
import { knownKey, pickLocale, translator, type Locale, type MessageKey, type Params, type Translate } from './i18n/index.ts';
import type { OutgoingImage } from './notifier.ts';

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

/** Pictures shown with a job's status message before it runs. */
export interface Preview { images: OutgoingImage[]; caption: string }

export interface Person {
  userId: string;
  platform: Platform;
  locale: Locale;
  t: Translate;
}

/** A file the person sent; `download` is only called once the cheap checks (size) passed. */
export interface IncomingFile {
  name: string;
  size?: number;
  /** The platform recompressed it (a Telegram "photo" rather than a file). */
  compressed?: boolean;
  download(): Promise<Buffer>;
}

const SESSION_TTL_S = 3600;
/** Wrong /link codes allowed per person in a window, so codes can't be guessed. */
export const LINK_ATTEMPTS = 5;
export const LINK_ATTEMPTS_WINDOW_MS = 10 * 60 * 1000;
const BAR_WIDTH = 10;

export const progressBar = (fraction: number) => {
  const filled = Math.max(0, Math.min(BAR_WIDTH, Math.round(fraction * BAR_WIDTH)));
  return '▰'.repeat(filled) + '▱'.repeat(BAR_WIDTH - filled);
};

export const whatKey = (kind: JobKind): MessageKey => `what.${kind}`;

/** The version a person sees: finished models counted in order, so a cancelled or failed training takes no number. */
export const shownVersion = (all: readonly Adapter[], adapter: Adapter) =>
  all.filter((a) => a.status === 'ready' && a.version <= adapter.version).length || 1;

export class Conversation {
  private readonly redis: Redis;
  readonly logger: Logger;

  constructor(readonly app: App) {
    this.redis = app.queues.connection;
    this.logger = app.logger.child({ part: 'conversation' });
  }

  private get services() { return this.app.services; }
  private get config() { return this.app.config; }

  async person(platform: Platform, externalId: string, profile: { displayName?: string; locale?: string } = {}): Promise<Person> {
    const user = await this.services.users.resolve(platform, externalId, { displayName: profile.displayName, locale: pickLocale(profile.locale) });
    const locale = pickLocale(user.locale);
    return { userId: user.id, platform, locale, t: translator(locale) };
  }

  help(p: Person): Reply {
    const { minForTraining: min, maxPerUser: max } = this.config.photos;
    const poseLine = p.t(p.platform === 'discord' ? 'help.pose_discord' : 'help.pose_telegram');
    const notice = this.config.engine.profile === 'tiny' ? `\n\n${p.t('help.tiny_engine')}` : '';
    // Discord attachments are files already; Telegram recompresses photos.
    const files = p.platform === 'telegram' ? `\n\n${p.t('help.files')}` : '';
    return { text: p.t('help.body', { min, max, poseLine }) + files + notice };
  }

  /** `/train`: opens (or renews) the photo collection session. */
  async openTraining(p: Person): Promise<Reply> {
    return this.guard(p, async () => {
      if (await this.services.training.isTraining(p.userId)) return { text: p.t('train.already') };
      await this.redis.set(this.sessionKey(p.userId), '1', 'EX', SESSION_TTL_S);
      const have = await this.services.photos.count(p.userId);
      const { minForTraining: min, maxPerUser: max } = this.config.photos;
      const text = p.t(p.platform === 'discord' ? 'train.open_discord' : 'train.open', { min, max, have });
      return { text, buttons: have >= min ? [this.trainButton(p)] : undefined };
    });
  }

  async collecting(userId: string): Promise<boolean> {
    return (await this.redis.exists(this.sessionKey(userId))) === 1;
  }

  /**
   * Checks and stores photos, answering for each what was wrong with it, then where the set stands. Outside a
   * /train session the photos are not taken (they might have been meant for something else).
   */
  async addPhotos(p: Person, files: IncomingFile[], requireSession = true): Promise<Reply> {
    return this.guard(p, async () => {
      if (requireSession && !(await this.collecting(p.userId))) return { text: p.t('train.no_session') };
      await this.redis.expire(this.sessionKey(p.userId), SESSION_TTL_S);
      const lines: string[] = [];
      // Names of this batch's photos by stored id, so a repeat can say which photo it repeats.
      const named = new Map<string, string>();
      for (const file of files) lines.push(await this.addOne(p, file, named));
      if (files.some((f) => f.compressed) && (await this.redis.set(this.tipKey(p.userId), '1', 'EX', SESSION_TTL_S, 'NX')) === 'OK') {
        lines.push('', p.t('train.tip_files'));
      }
      const total = await this.services.photos.count(p.userId);
      const { minForTraining: min, maxPerUser: max } = this.config.photos;
      lines.push('', p.t('photos.total', { total, min, max }));
      if (total >= max) lines.push(p.t('photos.full', { max }));
      else if (total >= min) lines.push(p.t('photos.enough', { max }));
      else lines.push(p.t('photos.need_more', { more: min - total }));
      lines.push(...(await this.coverageLines(p)));
      return { text: lines.join('\n').trim(), buttons: total >= min ? [this.trainButton(p)] : undefined };
    });
  }

  private async addOne(p: Person, file: IncomingFile, named: Map<string, string>): Promise<string> {
    const maxBytes = this.config.photos.maxUploadBytes;
    const rejected = (key: MessageKey, params: Params = {}) => p.t('photos.rejected', { name: file.name, reason: p.t(key, params) });
    if (file.size !== undefined && file.size > maxBytes) return rejected('error.too_large_bytes', { maxMb: Math.floor(maxBytes / 1048576) });
    let bytes: Buffer;
    try {
      bytes = await file.download();
    } catch (error) {
      this.logger.warn({ err: error, file: file.name }, 'download failed');
      return rejected('error.download_failed');
    }
    const result = await this.services.photos.add(p.userId, bytes, file.name);
    if (!result.ok) {
      // A near-duplicate names the earlier photo by its place in the stored set; say its name when it came in this batch.
      const sameAs = result.code === 'duplicate' ? (await this.services.photos.list(p.userId))[Number(result.details?.sameAs) - 1] : undefined;
      const other = sameAs && named.get(sameAs.id);
      if (other) return p.t('photos.rejected', { name: file.name, reason: p.t('error.duplicate_of', { other }) });
      return p.t('photos.rejected', { name: file.name, reason: this.errorText(p, result.code, result.details) });
    }
    const other = named.get(result.photo.id);
    if (result.duplicate && other) return p.t('photos.duplicate_of', { name: file.name, other });
    if (!result.duplicate) named.set(result.photo.id, file.name);
    return p.t(result.duplicate ? 'photos.duplicate' : 'photos.accepted', { name: file.name });
  }

  /** Where the set stands (angles, framing, light) and what to add, when the face models measured the photos. */
  private async coverageLines(p: Person): Promise<string[]> {
    const summary = await this.services.photos.coverage(p.userId);
    if (!summary) return [];
    const { angles, framing } = summary;
    const lines = ['', p.t('coverage.summary', { ...angles, ...framing })];
    const params: Params = {
      min: this.config.photos.minForTraining,
      more: Math.max(0, this.config.photos.minForTraining - summary.photos),
      side: p.t(angles.left === 0 ? 'coverage.side_left' : 'coverage.side_right'),
    };
    // "Send N more" is said by the photo count already.
    const tips = summary.suggestions
      .filter((s) => s.code !== 'more_photos')
      .flatMap((s) => { const key = knownKey(`coverage.${s.code}`); return key ? [`• ${p.t(key, params)}`] : []; });
    if (tips.length > 0) lines.push(p.t('coverage.title'), ...tips);
    else if (summary.suggestions.length === 0) lines.push(p.t('coverage.good'));
    // Said once per /train session.
    if (summary.notMeasured.includes('expressions') && (await this.redis.set(this.noteKey(p.userId), '1', 'EX', SESSION_TTL_S, 'NX')) === 'OK') {
      lines.push(p.t('coverage.expressions'));
    }
    return lines;
  }

  /** "Train now": queues the training within the person's limits; before the first one, asks for consent. */
  async trainNow(p: Person): Promise<Reply> {
    return this.guard(p, async () => {
      if (await this.services.training.isTraining(p.userId)) return { text: p.t('train.already') };
      const started = await this.services.limits.run(p.userId, 'train', () => this.services.training.start(p.userId)).catch((error: unknown) => {
        if (error instanceof UserFacingError && error.code === 'consent_required') return undefined;
        throw error;
      });
      if (!started) return { text: p.t('consent.ask'), buttons: [{ action: 'consent_yes', label: p.t('button.consent_yes') }] };
      // A double tap found the first tap's job: that one has the status message already.
      if (!started.created) return { text: p.t('train.already') };
      await this.redis.del(this.sessionKey(p.userId), this.tipKey(p.userId), this.noteKey(p.userId));
      return this.queued(p, started.job, started.position);
    });
  }

  /** "These photos are of me": stores the consent with its time, then trains. */
  async consent(p: Person): Promise<Reply> {
    return this.guard(p, async () => {
      await this.services.users.consent(p.userId);
      return this.trainNow(p);
    });
  }

  /** `/imagine <prompt>`, `/imagine style:<name> [words]`, or (Discord's option) a style given apart. */
  async imagine(p: Person, text: string, style?: string): Promise<Reply> {
    return this.guard(p, async () => {
      const command = style === undefined ? parseStyleCommand(text) : { style, rest: text };
      // "style:" with no name: which ones are there?
      if (command && !command.style.trim()) return this.styles(p);
      const prompt = command?.rest ?? text;
      if (!prompt.trim() && !command) return { text: p.t('error.empty_prompt'), error: true };
      const queued = await this.services.limits.run(p.userId, 'imagine', () => this.services.generation.imagine(p.userId, prompt, {}, command?.style));
      return this.queued(p, queued.job, queued.position, queued.notes);
    });
  }

  async pose(p: Person, image: IncomingFile | undefined, prompt: string): Promise<Reply> {
    return this.guard(p, async () => {
      if (!image) return { text: p.t('pose.usage'), error: true };
      const maxBytes = this.config.photos.maxUploadBytes;
      if (image.size !== undefined && image.size > maxBytes) {
        return { text: p.t('error.too_large_bytes', { maxMb: Math.floor(maxBytes / 1048576) }), error: true };
      }
      // Checked before the download: no point fetching a picture for someone who has no model yet.
      await this.services.limits.check(p.userId, 'pose');
      if (!(await this.services.training.latestReady(p.userId))) throw new UserFacingError('no_model', 'No model yet.');
      let bytes: Buffer;
      try {
        bytes = await image.download();
      } catch (error) {
        this.logger.warn({ err: error }, 'pose download failed');
        return { text: p.t('error.download_failed'), error: true };
      }
      // No words is fine: the service paints the person in the pose (and the internal prompt is never shown).
      const queued = await this.services.limits.run(p.userId, 'pose', () => this.services.generation.pose(p.userId, bytes, prompt));
      const reply = this.queued(p, queued.job, queued.position, queued.notes);
      // The extracted skeleton goes back as a preview; a reference used as the skeleton as is (no pose models) does not.
      if (queued.skeleton && queued.generation.controlKey && reply.job) {
        try {
          reply.job.preview = { images: [{ data: await this.app.store.get(queued.generation.controlKey), name: 'pose.png' }], caption: p.t('pose.preview') };
        } catch (error) {
          this.logger.warn({ err: error, jobId: queued.job.id }, 'pose preview unavailable');
        }
      }
      return reply;
    });
  }

  /** `/styles`: the presets, named in the person's language; each works whatever language they write in. */
  styles(p: Person): Reply {
    const lines = [p.t('styles.title'), ...stylePresets.map((s) => p.t('styles.item', { name: s.names[p.locale], id: s.id }))];
    lines.push('', p.t(p.platform === 'discord' ? 'styles.usage_discord' : 'styles.usage', { example: stylePresets[0]!.id }));
    // One tap paints it: no English needed at all.
    const buttons = stylePresets.map((s): Button => ({ action: `style:${s.id}`, label: s.names[p.locale] }));
    return { text: lines.join('\n'), buttons };
  }

  async status(p: Person): Promise<Reply> {
    return this.guard(p, async () => {
      const { minForTraining: min, maxPerUser: max } = this.config.photos;
      const [count, ready, training, open, all] = await Promise.all([
        this.services.photos.count(p.userId),
        this.services.training.latestReady(p.userId),
        this.services.training.isTraining(p.userId),
        this.services.jobs.open(p.userId),
        this.services.training.list(p.userId),
      ]);
      const lines = [p.t('status.photos', { count, min, max })];
      lines.push(training ? p.t('status.model_training') : ready ? p.t('status.model_ready', { version: shownVersion(all, ready) }) : p.t('status.model_none'));
      if (open.length === 0) lines.push(p.t('status.no_jobs'));
      for (const job of open) {
        const position = await this.services.jobs.position(job);
        const state = job.status === 'queued' ? p.t('state.queued', { position }) : p.t('state.active', { percent: Math.round(job.progress * 100) });
        lines.push(p.t('status.job', { what: p.t(whatKey(job.kind)), state }));
      }
      return { text: lines.join('\n') };
    });
  }

  async cancel(p: Person): Promise<Reply> {
    return this.guard(p, async () => {
      const job = await this.services.jobs.cancel(p.userId);
      return { text: p.t('cancel.done', { what: p.t(whatKey(job.kind)) }) };
    });
  }

  forgetAsk(p: Person): Reply {
    return {
      text: p.t('forget.confirm'),
      buttons: [
        { action: 'forget_yes', label: p.t('button.forget_yes'), danger: true },
        { action: 'forget_no', label: p.t('button.forget_no') },
      ],
    };
  }

  async forget(p: Person): Promise<Reply> {
    return this.guard(p, async () => {
      const gone = await this.services.forget.forget(p.userId);
      await this.redis.del(this.sessionKey(p.userId), this.tipKey(p.userId), this.noteKey(p.userId));
      return { text: p.t('forget.done', { photos: gone.photos, adapters: gone.adapters, generations: gone.generations }) };
    });
  }

  forgetKept(p: Person): Reply {
    return { text: p.t('forget.kept') };
  }

  /** `/link` alone issues a code; `/link CODE` redeems one issued on the other platform. */
  async link(p: Person, code: string): Promise<Reply> {
    return this.guard(p, async () => {
      if (!code.trim()) {
        const issued = await this.services.link.issue(p.userId, p.platform);
        return { text: p.t('link.code', { code: issued.code, minutes: issued.minutes }) };
      }
      const attempts = this.linkAttemptsKey(p.userId);
      if (Number(await this.redis.get(attempts)) >= LINK_ATTEMPTS) {
        const ms = await this.redis.pttl(attempts);
        throw new UserFacingError('link_attempts', 'Too many wrong link codes.', { minutes: Math.max(1, Math.ceil(ms / 60_000)) }, 429);
      }
      try {
        await this.services.link.redeem(p.userId, p.platform, code);
      } catch (error) {
        if (error instanceof UserFacingError && error.code === 'link_code_invalid') {
          // The window starts at the first wrong code (and is set again if it somehow got lost).
          const counted = await this.redis.multi().incr(attempts).pttl(attempts).exec();
          if (Number(counted?.[1]?.[1]) < 0) await this.redis.pexpire(attempts, LINK_ATTEMPTS_WINDOW_MS);
        }
        throw error;
      }
      await this.redis.del(attempts);
      return { text: p.t('link.done') };
    });
  }

  async lang(p: Person, choice: string): Promise<Reply> {
    return this.guard(p, async () => {
      const wanted = choice.trim().toLowerCase();
      if (!wanted || pickLocale(wanted) !== wanted.split(/[-_]/)[0]) return { text: p.t('lang.usage') };
      const locale = pickLocale(wanted);
      await this.services.users.setLocale(p.userId, locale);
      return { text: translator(locale)('lang.set') };
    });
  }

  /** The text for a service error code in the person's language (English service text only as a last resort). */
  errorText(p: Person, code: string, details: Params = {}): string {
    return errorMessage(p.t, p.locale, this.config, code, details) ?? p.t('error.internal');
  }

  private trainButton(p: Person): Button {
    return { action: 'train_now', label: p.t('button.train_now') };
  }

  private queued(p: Person, job: Job, position: number, notes: GenerationNote[] = []): Reply {
    const what = p.t(whatKey(job.kind));
    const text = job.status === 'queued' && position > 0 ? p.t('progress.queued', { what, position }) : p.t('progress.starting', { what });
    // Notes go in their own message: the status message is edited with progress.
    const noteText = notes.map((n) => p.t(knownKey(`note.${n.code}`) ?? 'error.internal', n.details)).join('\n');
    return { text, job: { id: job.id, kind: job.kind }, ...(noteText ? { notice: noteText } : {}) };
  }

  /** Service refusals become the person's message; anything else is logged and answered without details. */
  private async guard(p: Person, body: () => Promise<Reply>): Promise<Reply> {
    try {
      return await body();
    } catch (error) {
      if (error instanceof UserFacingError) return { text: this.errorText(p, error.code, error.details), error: true };
      this.logger.error({ err: error, userId: p.userId }, 'command failed');
      return { text: p.t(apologyFor(error)), error: true };
    }
  }

  private sessionKey(userId: string) { return `${this.config.queuePrefix}:chat:collecting:${userId}`; }
  private tipKey(userId: string) { return `${this.config.queuePrefix}:chat:tip:${userId}`; }
  private noteKey(userId: string) { return `${this.config.queuePrefix}:chat:coverage-note:${userId}`; }
  private linkAttemptsKey(userId: string) { return `${this.config.queuePrefix}:chat:link-attempts:${userId}`; }
}
