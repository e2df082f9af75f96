// Turns a person's job events (EventBus) into edits of the chat message that shows the job, then delivers the
// result. Platform-neutral: a ChatSurface does the platform calls. Events are best-effort, so the job row is read
// again after tracking starts, on every final event, and by a periodic sweep; a claim in chat_targets makes the final
// delivery happen exactly once even with several bot processes or a restart.
import type { Logger } from 'pino';
import type { App } from '../../src/app.ts';
import type { Adapter, ChatTarget, Generation, JobKind, Platform } from '../../src/db/schema.ts';
import type { JobEvent } from '../../src/events/bus.ts';
import type { TargetAddress } from '../../src/services/chat-targets.ts';
import { knownKey, pickLocale, translator, type Locale, type Translate } from './i18n/index.ts';
import { findStyle } from '../../src/services/styles.ts';
import { progressBar, whatKey, type Preview } from './conversation.ts';

export interface OutgoingImage { data: Buffer; name: string }

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
  /** Sends the finished pictures (an album when there are several). */
  sendImages(target: T, images: OutgoingImage[], caption: string): Promise<void>;
  /** Whether a failed call may work later (rate limit, network) rather than never (message deleted, bot blocked). */
  retryable(error: unknown): boolean;
}

interface Tracked<T> {
  userId: string;
  target: T;
  t: Translate;
  locale: Locale;
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
  private sweeper?: NodeJS.Timeout;
  private readonly logger: Logger;

  constructor(
    private readonly app: App,
    private readonly surface: ChatSurface<T>,
    private readonly options: { editIntervalMs: number; sweepIntervalMs?: number },
  ) {
    this.logger = app.logger.child({ part: 'notifier', platform: surface.platform });
  }

  /** Picks up the jobs this platform was showing before a restart, and starts the periodic sweep. */
  async start(): Promise<void> {
    for (const row of await this.app.services.chatTargets.pending(this.surface.platform)) await this.follow(row);
    this.sweeper = setInterval(() => void this.sweep(), this.options.sweepIntervalMs ?? 30_000);
    this.sweeper.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.sweeper);
    for (const entry of this.tracked.values()) clearTimeout(entry.timer);
    await Promise.all([...this.tracked.values()].map((e) => e.finishing));
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
    const locale = pickLocale(row.locale);
    this.tracked.set(row.jobId, { userId: row.userId, target: row.target as T, t: translator(locale), locale, lastEditAt: Date.now() });
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
    if (FINAL.has(event.status)) {
      void this.finish(event.jobId);
      return;
    }
    this.show(event.jobId, entry, this.progressText(entry.t, event));
  }

  private progressText(t: Translate, event: Pick<JobEvent, 'kind' | 'status' | 'position' | 'step' | 'total' | 'progress'>): string {
    const what = t(whatKey(event.kind));
    if (event.status === 'queued') return event.position ? t('progress.queued', { what, position: event.position }) : t('progress.starting', { what });
    if (!event.step || !event.total) return t('progress.starting', { what });
    const fraction = event.step / event.total;
    const params = { what, step: event.step, total: event.total, bar: progressBar(fraction), percent: Math.round(fraction * 100) };
    return t(event.kind === 'train' ? 'progress.train' : 'progress.generate', params);
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
    const view = await this.app.services.jobs.view(entry.userId, jobId).catch(() => undefined);
    // The job row is gone (forgotten): nothing left to show.
    if (!view) return this.untrack(jobId);
    if (FINAL.has(view.job.status)) await this.finish(jobId);
  }

  private sweep() {
    for (const jobId of this.tracked.keys()) {
      void this.reconcile(jobId).catch((error: unknown) => this.logger.warn({ err: error, jobId }, 'sweep failed'));
    }
  }

  private finish(jobId: string): Promise<void> {
    const entry = this.tracked.get(jobId);
    if (!entry) return Promise.resolve();
    entry.finishing ??= this.deliver(jobId, entry).finally(() => { entry.finishing = undefined; });
    return entry.finishing;
  }

  private async deliver(jobId: string, entry: Tracked<T>): Promise<void> {
    clearTimeout(entry.timer);
    entry.timer = undefined;
    const { services, store } = this.app;
    const claimed = await services.chatTargets.claim(jobId);
    // Another process (or an earlier call) delivered it.
    if (!claimed) return this.untrack(jobId);
    const t = entry.t;
    try {
      const view = await services.jobs.view(entry.userId, jobId);
      const { job } = view;
      const what = t(whatKey(job.kind));
      if (job.status === 'completed' && job.kind === 'train') {
        const adapter = (await services.training.list(entry.userId)).find((a) => a.id === job.adapterId);
        await this.surface.edit(entry.target, t('done.train', { version: adapter?.version ?? 1 }));
        if (adapter && adapter.sampleKeys.length > 0) await this.sendSamples(entry, adapter);
      } else if (job.status === 'completed') {
        const generation = view.generationId ? await services.generation.get(entry.userId, view.generationId) : undefined;
        const images = await Promise.all(view.outputKeys.map(async (key, n) => ({ data: await store.get(key), name: `portrait-${n + 1}.png` })));
        if (images.length > 0) {
          await this.surface.sendImages(entry.target, images, generation ? await this.caption(entry, generation) : '');
        }
        await this.surface.edit(entry.target, t('done.generate', { what }));
      } else if (job.status === 'failed') {
        const reason = t(knownKey(`reason.${job.errorCode}`) ?? 'reason.internal');
        await this.surface.edit(entry.target, t(job.kind === 'train' ? 'failed.train' : 'failed.generate', { what, reason }));
      } else if (job.status === 'cancelled') {
        await this.surface.edit(entry.target, t('cancelled', { what }));
      }
      this.untrack(jobId);
    } catch (error) {
      const retry = this.surface.retryable(error);
      this.logger.warn({ err: error, jobId, retry }, 'delivering a finished job failed');
      if (retry) await services.chatTargets.unclaim(jobId);
      else this.untrack(jobId);
    }
  }

  /**
   * The person's own words or the style's name in their language (never the internal prompt), then the prompt that
   * was painted, with the training token read as "you".
   */
  private async caption({ t, locale }: Tracked<T>, generation: Generation): Promise<string> {
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

  /** The validation portraits sampled after training, captioned with the likeness score when one was measured. */
  private async sendSamples(entry: Tracked<T>, adapter: Adapter) {
    const images = await Promise.all(adapter.sampleKeys.map(async (key, n) => ({ data: await this.app.store.get(key), name: `sample-${n + 1}.png` })));
    await this.surface.sendImages(entry.target, images, samplesCaption(entry.t, adapter.metrics));
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
