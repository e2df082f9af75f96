// /link (one account across platforms) and /lang.
import { Composer } from 'telegraf';
import { personOf, replyTo, type TelegramDeps } from '../context.ts';

export function accountFeature(deps: TelegramDeps) {
  const feature = new Composer();
  feature.command('link', async (ctx) => replyTo(deps, ctx, await deps.conversation.link(await personOf(deps, ctx), ctx.payload)));
  feature.command('lang', async (ctx) => replyTo(deps, ctx, await deps.conversation.lang(await personOf(deps, ctx), ctx.payload)));
  return feature;
}
