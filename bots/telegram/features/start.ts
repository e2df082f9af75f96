// /start and /help.
import { Composer } from 'telegraf';
import { help } from '../../shared/help.ts';
import { personOf, replyTo, type TelegramDeps } from '../context.ts';

export function startFeature(deps: TelegramDeps) {
  const feature = new Composer();
  feature.command(['start', 'help'], async (ctx) => {
    await replyTo(deps, ctx, help(deps.conversation, await personOf(deps, ctx)));
  });
  return feature;
}
