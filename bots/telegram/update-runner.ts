// Long polling without head-of-line blocking. telegraf handles each getUpdates batch with Promise.all and polls again
// only when the whole batch is done, so one slow update (a photo being checked, a busy database) holds up every
// person behind it. Here updates run as soon as they arrive: one at a time per chat (a person's messages keep their
// order), many chats at once, with a bound on how many run together (polling waits while it is reached).
//
// Delivery is unchanged: Telegram confirms a batch when the next one is asked for, and an update is claimed in Redis
// before it runs (dedupeUpdates), so an update in flight during a crash was already not going to run twice.
import type { Update } from 'telegraf/types';
import type { Logger } from 'pino';

/** The chat an update belongs to (its order matters there); updates without one are keyed by their sender. */
export function chatKeyOf(update: Update): string {
  const u = update as Record<string, any>;
  const carrier = u.message ?? u.edited_message ?? u.channel_post ?? u.edited_channel_post ?? u.callback_query?.message ?? u.my_chat_member ?? u.chat_member ?? u.chat_join_request;
  const chat = carrier?.chat?.id;
  if (chat !== undefined) return `chat:${chat}`;
  const from = (u.callback_query ?? u.inline_query ?? u.chosen_inline_result ?? u.pre_checkout_query ?? u.shipping_query)?.from?.id;
  return from !== undefined ? `user:${from}` : `update:${update.update_id}`;
}

export class UpdateRunner {
  private readonly tails = new Map<string, Promise<void>>();
  private running = 0;
  private readonly roomWaiters: Array<() => void> = [];
  private readonly idleWaiters: Array<() => void> = [];

  constructor(private readonly logger: Logger, private readonly maxInFlight = 100) {}

  /** Queues `handle` behind its chat's earlier updates; resolves once it is queued (waits while the bound is reached). */
  async dispatch(update: Update, handle: () => Promise<void>): Promise<void> {
    while (this.running >= this.maxInFlight) await new Promise<void>((r) => this.roomWaiters.push(r));
    this.running++;
    const key = chatKeyOf(update);
    const run = (this.tails.get(key) ?? Promise.resolve())
      .then(handle)
      .catch((error: unknown) => this.logger.error({ err: error, updateId: update.update_id }, 'update failed outside its handler'))
      .finally(() => {
        this.running--;
        if (this.tails.get(key) === run) this.tails.delete(key);
        this.roomWaiters.shift()?.();
        if (this.running === 0) for (const wake of this.idleWaiters.splice(0)) wake();
      });
    this.tails.set(key, run);
  }

  /** Resolves when no update is running (at shutdown, after polling stopped). */
  idle(): Promise<void> {
    return this.running === 0 ? Promise.resolve() : new Promise((r) => this.idleWaiters.push(r));
  }
}
