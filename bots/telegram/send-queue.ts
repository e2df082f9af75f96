// Every Bot API call that names a chat goes through that chat's queue: one call at a time per chat, and a 429 waits
// the `retry_after` Telegram asked for and tries again, instead of failing the command. Calls that only decorate
// (the "typing…" indicator, reactions) never fail a command: their errors are logged and dropped.
import { TelegramError, type Telegram } from 'telegraf';
import type { Logger } from 'pino';
import { metrics } from '../../src/metrics.ts';

export interface SendQueueOptions {
  /** A longer wait than this fails the call (the caller, e.g. the outbox, schedules its own retry). */
  maxWaitS?: number;
  /** 429s in a row waited out for one call. */
  maxRetries?: number;
}

/** Best-effort methods: nothing depends on them having worked. */
const decorative = new Set(['sendChatAction', 'setMessageReaction']);

export const retryAfterS = (error: unknown): number | undefined => {
  const seconds = error instanceof TelegramError && error.code === 429 ? error.parameters?.retry_after : undefined;
  return typeof seconds === 'number' ? seconds : undefined;
};

/**
 * One per bot: telegraf makes a new Telegram client for every update (ctx.telegram), so each client is wrapped as it
 * appears, and they all share these per-chat queues.
 */
export class TelegramSendQueue {
  private readonly tails = new Map<string, Promise<unknown>>();
  private readonly maxWaitS: number;
  private readonly maxRetries: number;

  constructor(private readonly logger: Logger, options: SendQueueOptions = {}) {
    this.maxWaitS = options.maxWaitS ?? 30;
    this.maxRetries = options.maxRetries ?? 3;
  }

  /** Routes this client's calls through the queues (once per client). */
  wrap(telegram: Telegram): Telegram {
    if (wrapped.has(telegram)) return telegram;
    wrapped.add(telegram);
    const callApi = telegram.callApi.bind(telegram) as (method: string, payload: any, extra?: any) => Promise<unknown>;
    telegram.callApi = ((method: string, payload: any, extra: any) => this.call(callApi, method, payload, extra)) as Telegram['callApi'];
    return telegram;
  }

  private async withRetries(callApi: CallApi, method: string, payload: any, extra: any) {
    for (let attempt = 0; ; attempt++) {
      try {
        return await callApi(method, payload, extra);
      } catch (error) {
        metrics.chatApiError('telegram', error instanceof TelegramError ? error.code : 'network');
        const wait = retryAfterS(error);
        if (wait === undefined || attempt >= this.maxRetries || wait > this.maxWaitS || decorative.has(method)) throw error;
        this.logger.info({ method, chatId: payload?.chat_id, retryAfterS: wait, attempt: attempt + 1 }, 'telegram rate limit: waiting as asked');
        await new Promise((resolve) => setTimeout(resolve, wait * 1000));
      }
    }
  }

  private call(callApi: CallApi, method: string, payload: any, extra: any): Promise<unknown> {
    const chat = payload?.chat_id;
    if (chat === undefined || method === 'getUpdates') return this.withRetries(callApi, method, payload, extra);
    const key = String(chat);
    const run = () => this.withRetries(callApi, method, payload, extra);
    const result = (this.tails.get(key) ?? Promise.resolve()).then(run, run);
    const tail = result.catch(() => undefined);
    this.tails.set(key, tail);
    void tail.then(() => { if (this.tails.get(key) === tail) this.tails.delete(key); });
    if (!decorative.has(method)) return result;
    return result.catch((error: unknown) => {
      this.logger.warn({ err: error, method, chatId: chat }, 'a best-effort call failed; carrying on');
      return true;
    });
  }
}

type CallApi = (method: string, payload: any, extra?: any) => Promise<unknown>;
const wrapped = new WeakSet<Telegram>();
