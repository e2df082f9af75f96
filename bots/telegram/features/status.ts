// /status and /cancel.
import { Composer } from 'telegraf';
import { cancel, status } from '../../shared/status.ts';
import { personOf, replyTo, type TelegramDeps } from '../context.ts';

export function statusFeature(deps: TelegramDeps) {
  const feature = new Composer();
  feature.command('status', async (ctx) => replyTo(deps, ctx, await status(deps.conversation, await personOf(deps, ctx))));
  feature.command('cancel', async (ctx) => replyTo(deps, ctx, await cancel(deps.conversation, await personOf(deps, ctx))));
  return feature;
}
