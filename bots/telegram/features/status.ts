// /status and /cancel.
import { Composer } from 'telegraf';
import { personOf, replyTo, type TelegramDeps } from '../context.ts';

export function statusFeature(deps: TelegramDeps) {
  const feature = new Composer();
  feature.command('status', async (ctx) => replyTo(deps, ctx, await deps.conversation.status(await personOf(deps, ctx))));
  feature.command('cancel', async (ctx) => replyTo(deps, ctx, await deps.conversation.cancel(await personOf(deps, ctx))));
  return feature;
}
