// Turns a person's job events (EventBus) into edits of the chat message that shows the job, then delivers the
// result. Platform-neutral: a ChatSurface does the platform calls. Events are best-effort, so the job row is read
// again after tracking starts, on every final event, and by a periodic sweep. The final delivery goes through the
// outbox in chat_targets (a lease per delivery, each part recorded once sent): see deliver() and the README.
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { App } from '../../src/app.ts';
import type { Adapter, ChatTarget, Generation, JobKind, Platform, TrainingPreview } from '../../src/db/schema.ts';
import type { JobEvent } from '../../src/events/bus.ts';
import type { TargetAddress } from '../../src/services/chat-targets.ts';
import { etaText, knownKey, pickLocale, translator, type Locale, type Translate } from './i18n/index.ts';
import { findStyle } from '../../src/services/styles.ts';
import { progressBar, shownVersion, whatKey, type OutgoingImage, type Preview } from './job-text.ts';
import { withheldPicturesNotice, withheldSamplesNotice } from './withheld.ts';

export type { OutgoingImage } from './job-text.ts';

/**
 * The caption of the validation samples: the likeness score, or why there is none. The worker stores
 * `likeness: { skipped: 'face models not installed' | … }` when it could not score, and a null mean when no sample
 * portrait held a face.
 */
export function samplesCaption(t: Translate, rawMetrics: unknown): string {
  const metrics = (rawMetrics ?? {}) as { likeness?: { mean?: number | null; skipped?: string }; lowLikeness?: boolean };
  const mean = metrics.likeness?.mean;
  if (typeof mean === 'number') {
    const score = mean.toFixed(2);
    return [t('done.samples', { score }), ...(metrics.lowLikeness ? [t('done.low_likeness', { score })] : [])].join('\n');
  }
  const modelsMissing = !metrics.likeness || metrics.likeness.skipped === 'face models not installed';
  return t(modelsMissing ? 'done.samples_unscored' : 'done.samples_no_face');
}

export interface ChatSurface<T extends TargetAddress> {
  readonly platform: Platform;
  /** Replaces the text of the job's status message. */
  edit(target: T, text: string): Promise<void>;
  /** Sends the finished pictures (an album when there are several, at most ten). */
  sendImages(target: T, images: OutgoingImage[], caption: string): Promise<void>;
  /** Sends the pictures again as files, uncompressed (platforms that recompress photos; at most ten). */
  sendDocuments?(target: T, files: OutgoingImage[], caption: string): Promise<void>;
  /** Whether a failed call may work later (rate limit, network) rather than never (message deleted, bot blocked). */
  retryable(error: unknown): boolean;
  /** How long the platform asked us to wait before trying again, when it said. */
  retryAfterMs?(error: unknown): number | undefined;
}

export interface NotifierOptions {
  editIntervalMs: number;
  sweepIntervalMs?: number;
  /** How long a delivery's lease lives without renewal: a crashed sender's delivery is picked up after this. */
  deliveryLeaseMs?: number;
  /** First retry delay of a failed delivery, doubled per attempt (unless the platform says how long to wait). */
  deliveryBackoffMs?: number;
  deliveryMaxAttempts?: number;
}

/** A step of a final delivery, recorded under its name once the chat API accepted it. */
interface Part { name: string; send(): Promise<void> }

/** Telegram and Discord take at most ten pictures per message. */
const ALBUM = 10;

interface Tracked<T> {
  userId: string;
  target: T;
  t: Translate;
  kind?: JobKind;
  lastEditAt: number;
  lastText?: string;
  pendingText?: string;
  timer?: NodeJS.Timeout;
  finishing?: Promise<void>;
}

const FINAL = new Set(['completed', 'failed', 'cancelled']);

export class JobNotifier<T extends TargetAddress> {
  private readonly tracked = new Map<string, Tracked<T>>();
  private readonly subscriptions = new Map<string, { jobs: number; unsubscribe: Promise<() => void> }>();
  private readonly delivering = new Map<string, Promise<void>>();
  /** Intermediate previews being sent, per job, one after another; the final delivery waits for them. */
  private readonly previewing = new Map<string, Promise<void>>();
  private readonly retries = new Set<NodeJS.Timeout>();
  private sweeper?: NodeJS.Timeout;
  private readonly logger: Logger;
  /** This process's name on the leases it holds. */
  readonly owner = `${process.pid}-${randomUUID()}`;
  private readonly leaseMs: number;
  private readonly backoffMs: number;
  private readonly maxAttempts: number;

  constructor(
    private readonly app: App,
    private readonly surface: ChatSurface<T>,
    private readonly options: NotifierOptions,
  ) {
    this.logger = app.logger.child({ part: 'notifier', platform: surface.platform });
    this.leaseMs = options.deliveryLeaseMs ?? 60_000;
    this.backoffMs = options.deliveryBackoffMs ?? 2000;
    this.maxAttempts = options.deliveryMaxAttempts ?? 8;
  }

  /** Picks up the jobs this platform was showing before a restart, and starts the periodic sweep. */
  async start(): Promise<void> {
    for (const row of await this.app.services.chatTargets.pending(this.surface.platform)) await this.follow(row);
    this.sweeper = setInterval(() => void this.sweep(), this.options.sweepIntervalMs ?? 30_000);
    this.sweeper.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.sweeper);
    for (const retry of this.retries) clearTimeout(retry);
    for (const entry of this.tracked.values()) clearTimeout(entry.timer);
    await Promise.all([...this.delivering.values()]);
    for (const sub of this.subscriptions.values()) (await sub.unsubscribe)();
    this.subscriptions.clear();
    this.tracked.clear();
  }

  /** Shows job `jobId` in `target` from now on, after its preview (the /pose skeleton) when it has one. */
  async track(jobId: string, userId: string, locale: string, target: T, preview?: Preview): Promise<void> {
    // Before the job is followed, so the preview always comes ahead of the result. Best-effort: the job runs anyway.
    if (preview) {
      await this.surface.sendImages(target, preview.images, preview.caption)
        .catch((error: unknown) => this.logger.warn({ err: error, jobId }, 'sending the preview failed'));
    }
    const row = await this.app.services.chatTargets.register(jobId, userId, this.surface.platform, target, locale);
    await this.follow(row);
  }

  private async follow(row: ChatTarget): Promise<void> {
    if (this.tracked.has(row.jobId)) return;
    this.tracked.set(row.jobId, { userId: row.userId, target: row.target as T, t: translator(pickLocale(row.locale)), lastEditAt: Date.now() });
    let sub = this.subscriptions.get(row.userId);
    if (!sub) {
      sub = { jobs: 0, unsubscribe: this.app.events.subscribe(row.userId, (event) => this.onEvent(event)) };
      this.subscriptions.set(row.userId, sub);
    }
    sub.jobs += 1;
    await sub.unsubscribe;
    // The job may have moved (or finished) before we subscribed.
    await this.reconcile(row.jobId);
  }

  private onEvent(event: JobEvent) {
    const entry = this.tracked.get(event.jobId);
    if (!entry) return;
    entry.kind = event.kind;
    if (event.preview) this.sendPreview(event.jobId, entry, event.preview);
    if (FINAL.has(event.status)) {
      void this.finish(event.jobId);
      return;
    }
    this.show(event.jobId, entry, this.progressText(entry.t, event));
  }

  private progressText(t: Translate, event: Pick<JobEvent, 'kind' | 'status' | 'position' | 'step' | 'total' | 'progress' | 'etaSeconds'>): string {
    const what = t(whatKey(event.kind));
    const eta = event.etaSeconds != null ? `\n${etaText(t, event.etaSeconds)}` : '';
    if (event.status === 'queued') return event.position ? t('progress.queued', { what, position: event.position }) + eta : t('progress.starting', { what });
    if (!event.step || !event.total) return t('progress.starting', { what });
    const fraction = event.step / event.total;
    const params = { what, step: event.step, total: event.total, bar: progressBar(fraction), percent: Math.round(fraction * 100) };
    return t(event.kind === 'train' ? 'progress.train' : 'progress.generate', params) + eta;
  }

  /**
   * Sends a training's intermediate preview while it runs, once: under the delivery's lease (taken without counting
   * an attempt), recorded as part `preview:<step>`. One that cannot be sent now (the lease is held elsewhere, the
   * chat failed) is sent by the final delivery, which plans every preview not recorded yet.
   */
  private sendPreview(jobId: string, entry: Tracked<T>, preview: NonNullable<JobEvent['preview']>) {
    const chatTargets = this.app.services.chatTargets;
    const send = async () => {
      const row = await chatTargets.claim(jobId, this.owner, this.leaseMs);
      if (!row) return;
      const part = `preview:${preview.step}`;
      try {
        if (row.parts[part]) return;
        await this.sendPreviewPhoto(entry.target, entry.t, await this.app.services.jobs.preview(entry.userId, preview.id));
        await chatTargets.recordPart(jobId, this.owner, part, this.leaseMs);
      } finally {
        await chatTargets.release(jobId, this.owner);
      }
    };
    const next = (this.previewing.get(jobId) ?? Promise.resolve())
      .then(send)
      .catch((error: unknown) => this.logger.warn({ err: error, jobId, step: preview.step }, 'sending a preview failed; the final delivery sends it'));
    this.previewing.set(jobId, next);
    void next.finally(() => { if (this.previewing.get(jobId) === next) this.previewing.delete(jobId); });
  }

  /** One preview as the person sees it, live or with the final delivery: the photo, captioned with its step. */
  private async sendPreviewPhoto(target: T, t: Translate, preview: TrainingPreview) {
    const image: OutgoingImage = { data: await this.app.store.get(preview.key), name: `preview-${preview.step}.png` };
    await this.surface.sendImages(target, [image], t('preview.caption', { step: preview.step, total: preview.total }));
  }

  /** Throttled edit: at most one per editIntervalMs per message; the newest text wins, identical text is skipped. */
  private show(jobId: string, entry: Tracked<T>, text: string) {
    if (entry.finishing) return;
    entry.pendingText = text;
    if (entry.timer) return;
    const wait = Math.max(0, entry.lastEditAt + this.options.editIntervalMs - Date.now());
    entry.timer = setTimeout(() => {
      entry.timer = undefined;
      const pending = entry.pendingText;
      entry.pendingText = undefined;
      if (!pending || pending === entry.lastText || entry.finishing || !this.tracked.has(jobId)) return;
      entry.lastEditAt = Date.now();
      entry.lastText = pending;
      this.surface.edit(entry.target, pending).catch((error: unknown) => this.logger.warn({ err: error, jobId }, 'progress edit failed'));
    }, wait);
  }

  private async reconcile(jobId: string) {
    const entry = this.tracked.get(jobId);
    if (!entry) return;
    // Kind and status are all it needs (not the job's view: its outputs and place in line).
    const job = await this.app.services.jobs.kindAndStatus(entry.userId, jobId).catch(() => undefined);
    if (!job) return this.forgotten(jobId);
    entry.kind = job.kind;
    if (FINAL.has(job.status)) await this.finish(jobId);
  }

  /** Re-reads the jobs followed here, and delivers finished jobs nobody holds (a crashed process's ones included). */
  async sweep(): Promise<void> {
    const warn = (jobId: string) => (error: unknown) => this.logger.warn({ err: error, jobId }, 'sweep failed');
    const work = [...this.tracked.keys()].map((jobId) => this.reconcile(jobId).catch(warn(jobId)));
    try {
      for (const row of await this.app.services.chatTargets.due(this.surface.platform)) work.push(this.finish(row.jobId).catch(warn(row.jobId)));
    } catch (error) {
      warn('*')(error);
    }
    await Promise.all(work);
  }

  private finish(jobId: string): Promise<void> {
    let running = this.delivering.get(jobId);
    if (!running) {
      // After this process's previews of the job: they hold the delivery's lease while they are sent.
      running = (this.previewing.get(jobId) ?? Promise.resolve()).then(() => this.deliver(jobId)).finally(() => this.delivering.delete(jobId));
      this.delivering.set(jobId, running);
      const entry = this.tracked.get(jobId);
      if (entry) entry.finishing = running;
    }
    return running;
  }

  /**
   * The outbox: takes the delivery's lease, then sends each part not recorded as sent yet, recording each as soon as
   * the chat API accepted it. A failure that may pass gives the lease back with a backoff (the platform's retry_after
   * when it said one); a permanent one gives up with a log line.
   */
  private async deliver(jobId: string): Promise<void> {
    const entry = this.tracked.get(jobId);
    if (entry) {
      clearTimeout(entry.timer);
      entry.timer = undefined;
    }
    const chatTargets = this.app.services.chatTargets;
    const row = await chatTargets.lease(jobId, this.owner, this.leaseMs);
    if (!row) {
      // Held by another process, or a retry that is not due yet (its timer or the sweep comes back), or done.
      const now = await chatTargets.get(jobId);
      if (!now) return this.forgotten(jobId);
      if (now.deliveredAt || now.failedAt) this.untrack(jobId);
      return;
    }
    const target = row.target as T;
    const locale = pickLocale(row.locale);
    const t = translator(locale);
    let part = '';
    try {
      const parts = await this.plan(row.userId, jobId, target, t, locale);
      // The last part's record also marks the delivery done; when it was recorded before (a retry), this does.
      let done = false;
      for (const [index, next] of parts.entries()) {
        part = next.name;
        if (row.parts[part]) continue;
        if (!(await chatTargets.renew(jobId, this.owner, this.leaseMs))) return this.lost(jobId, part);
        await next.send();
        done = index === parts.length - 1;
        if (!(await chatTargets.recordPart(jobId, this.owner, part, this.leaseMs, done))) return this.lost(jobId, part);
      }
      if (!done) await chatTargets.delivered(jobId, this.owner);
      this.untrack(jobId);
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      if (this.surface.retryable(error) && row.attempts < this.maxAttempts) {
        const delayMs = this.surface.retryAfterMs?.(error) ?? Math.min(this.backoffMs * 2 ** (row.attempts - 1), 5 * 60_000);
        this.logger.warn({ err: error, jobId, part, attempt: row.attempts, delayMs }, 'delivering a finished job failed; will retry');
        await chatTargets.retryLater(jobId, this.owner, delayMs, message);
        const retry = setTimeout(() => { this.retries.delete(retry); void this.finish(jobId).catch((e: unknown) => this.logger.warn({ err: e, jobId }, 'retry failed')); }, delayMs + 50);
        retry.unref();
        this.retries.add(retry);
      } else {
        this.logger.error({ err: error, jobId, part, attempt: row.attempts }, 'gave up delivering a finished job');
        await chatTargets.giveUp(jobId, this.owner, message);
        this.untrack(jobId);
      }
    }
  }

  /** The job's rows are gone (/forget): the status message says why it stopped, instead of freezing mid-progress. */
  private async forgotten(jobId: string) {
    const entry = this.tracked.get(jobId);
    if (!entry) return;
    this.untrack(jobId);
    const what = entry.t(whatKey(entry.kind ?? 'train'));
    await this.surface.edit(entry.target, entry.t('progress.forgotten', { what })).catch((error: unknown) => this.logger.warn({ err: error, jobId }, 'could not end a forgotten job’s message'));
  }

  private lost(jobId: string, part: string) {
    this.logger.warn({ jobId, part }, 'delivery lease lost to another process; it carries on');
    this.untrack(jobId);
  }

  /** The parts of a job's final message, in sending order; names are stable so a retry can skip what was sent. */
  private async plan(userId: string, jobId: string, target: T, t: Translate, locale: Locale): Promise<Part[]> {
    const { services, store } = this.app;
    const { job, generation, outputKeys } = await services.jobs.view(userId, jobId);
    const what = t(whatKey(job.kind));
    const status = (text: string): Part => ({ name: 'status', send: () => this.surface.edit(target, text) });
    if (job.status === 'completed' && job.kind === 'train') {
      const all = await services.training.list(userId);
      const adapter = all.find((a) => a.id === job.adapterId);
      // Previews not sent while it ran (none was missed when every one was) come first, in step order.
      const previews = (await services.jobs.previews(userId, [jobId])).sort((a, b) => a.step - b.step);
      const parts: Part[] = previews.map((preview) => ({
        name: `preview:${preview.step}`,
        send: () => this.sendPreviewPhoto(target, t, preview),
      }));
      const withheld = adapter && withheldSamplesNotice(t, adapter.metrics, adapter.sampleKeys.length);
      parts.push(status([t('done.train', { version: adapter ? shownVersion(all, adapter) : 1 }), ...(withheld ? [withheld] : [])].join('\n')));
      if (adapter && adapter.sampleKeys.length > 0) {
        const caption = samplesCaption(t, adapter.metrics);
        const images = () => Promise.all(adapter.sampleKeys.map(async (key, n) => ({ data: await store.get(key), name: `sample-${n + 1}.png` })));
        parts.push(...this.albums('samples', adapter.sampleKeys.length, images, caption, target));
      }
      return parts;
    }
    if (job.status === 'completed') {
      const caption = generation ? await this.caption(t, locale, generation) : '';
      const images = () => Promise.all(outputKeys.map(async (key, n) => ({ data: await store.get(key), name: `portrait-${n + 1}.png` })));
      const parts = this.albums('images', outputKeys.length, images, caption, target);
      if (this.surface.sendDocuments && outputKeys.length > 0) {
        for (let start = 0; start < outputKeys.length; start += ALBUM) {
          parts.push({
            name: `documents:${start / ALBUM}`,
            send: async () => this.surface.sendDocuments!(target, (await images()).slice(start, start + ALBUM), start === 0 ? t('done.documents') : ''),
          });
        }
      }
      // A picture the safety check withheld was never stored: the person is told, and all withheld is no failure.
      const withheld = withheldPicturesNotice(t, what, outputKeys.length, generation?.withheld ?? 0);
      const done = outputKeys.length === 0 && withheld ? withheld : [t('done.generate', { what }), ...(withheld ? [withheld] : [])].join('\n');
      return [...parts, status(done)];
    }
    if (job.status === 'failed') {
      const reason = t(knownKey(`reason.${job.errorCode}`) ?? 'reason.internal');
      return [status(t(job.kind === 'train' ? 'failed.train' : 'failed.generate', { what, reason }))];
    }
    if (job.status === 'cancelled') return [status(t('cancelled', { what }))];
    return [];
  }

  /** Pictures as albums of up to ten (a platform limit), one part each; the caption goes with the first. */
  private albums(name: string, count: number, images: () => Promise<OutgoingImage[]>, caption: string, target: T): Part[] {
    const parts: Part[] = [];
    for (let start = 0; start < count; start += ALBUM) {
      parts.push({ name: `${name}:${start / ALBUM}`, send: async () => this.surface.sendImages(target, (await images()).slice(start, start + ALBUM), start === 0 ? caption : '') });
    }
    return parts;
  }

  /**
   * The person's own words or the style's name in their language (never the internal prompt), then the prompt that
   * was painted, with the training token read as "you".
   */
  private async caption(t: Translate, locale: Locale, generation: Generation): Promise<string> {
    const shown = await this.app.services.generation.shown(generation);
    const seed = generation.seed;
    const style = generation.style ? (findStyle(generation.style)?.names[locale] ?? generation.style) : undefined;
    const first = style
      ? (shown.words ? t('done.caption_style_words', { style, prompt: shown.words, seed }) : t('done.caption_style', { style, seed }))
      : (shown.words ? t('done.caption', { prompt: shown.words, seed }) : t('done.caption_pose', { seed }));
    const lines = [first];
    if (shown.used && (shown.words || style)) lines.push(t('done.prompt_used', { prompt: shown.used }));
    return lines.join('\n');
  }

  private untrack(jobId: string) {
    const entry = this.tracked.get(jobId);
    if (!entry) return;
    clearTimeout(entry.timer);
    this.tracked.delete(jobId);
    const sub = this.subscriptions.get(entry.userId);
    if (sub && --sub.jobs === 0) {
      this.subscriptions.delete(entry.userId);
      void sub.unsubscribe.then((unsubscribe) => unsubscribe());
    }
  }

  /** Jobs currently followed (for tests and health output). */
  get size() { return this.tracked.size; }
}
