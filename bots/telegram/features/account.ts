// /link (one account across platforms) and /lang.
import { Composer } from 'telegraf';
import { lang, link } from '../../shared/account.ts';
import { inPrivate, personOf, replyTo, type TelegramDeps } from '../context.ts';

export function accountFeature(deps: TelegramDeps) {
  const feature = new Composer();
  // A link code in a group could be redeemed by anyone who reads it.
  feature.command('link', async (ctx) => {
    if (await inPrivate(deps, ctx, '/link')) await replyTo(deps, ctx, await link(deps.conversation, await personOf(deps, ctx), ctx.payload));
  });
  feature.command('lang', async (ctx) => replyTo(deps, ctx, await lang(deps.conversation, await personOf(deps, ctx), ctx.payload)));
  return feature;
}
