// Every Bot API call that names a chat goes through that chat's queue: one call at a time per chat, and a 429 waits
// the `retry_after` Telegram asked for and tries again, instead of failing the command. Calls that only decorate
// (the "typing…" indicator, reactions) never fail a command: their errors are logged and dropped.
import { TelegramError, type Telegram } from 'telegraf';
import type { Logger } from 'pino';

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

export function queueTelegramCalls(telegram: Telegram, logger: Logger, options: SendQueueOptions = {}): void {
  const maxWaitS = options.maxWaitS ?? 30;
  const maxRetries = options.maxRetries ?? 3;
  const callApi = telegram.callApi.bind(telegram) as (method: string, payload: any, extra?: any) => Promise<unknown>;
  const tails = new Map<string, Promise<unknown>>();

  const withRetries = async (method: string, payload: any, extra: any) => {
    for (let attempt = 0; ; attempt++) {
      try {
        return await callApi(method, payload, extra);
      } catch (error) {
        const wait = retryAfterS(error);
        if (wait === undefined || attempt >= maxRetries || wait > maxWaitS || decorative.has(method)) throw error;
        logger.info({ method, chatId: payload?.chat_id, retryAfterS: wait, attempt: attempt + 1 }, 'telegram rate limit: waiting as asked');
        await new Promise((resolve) => setTimeout(resolve, wait * 1000));
      }
    }
  };

  const queued = (method: string, payload: any, extra: any): Promise<unknown> => {
    const chat = payload?.chat_id;
    if (chat === undefined || method === 'getUpdates') return withRetries(method, payload, extra);
    const key = String(chat);
    const run = () => withRetries(method, payload, extra);
    const result = (tails.get(key) ?? Promise.resolve()).then(run, run);
    const tail = result.catch(() => undefined);
    tails.set(key, tail);
    void tail.then(() => { if (tails.get(key) === tail) tails.delete(key); });
    if (!decorative.has(method)) return result;
    return result.catch((error: unknown) => {
      logger.warn({ err: error, method, chatId: chat }, 'a best-effort call failed; carrying on');
      return true;
    });
  };
  telegram.callApi = queued as Telegram['callApi'];
}
