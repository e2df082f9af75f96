// /styles: the style presets.
import { Composer } from 'telegraf';
import { personOf, replyTo, type TelegramDeps } from '../context.ts';

export function stylesFeature(deps: TelegramDeps) {
  const feature = new Composer();
  feature.command('styles', async (ctx) => replyTo(deps, ctx, deps.conversation.styles(await personOf(deps, ctx))));
  // A tap on a style paints whoever tapped, from their own model.
  feature.action(/^style:([a-z]+)$/, async (ctx) => {
    await ctx.answerCbQuery();
    await replyTo(deps, ctx, await deps.conversation.imagine(await personOf(deps, ctx), '', ctx.match[1]!));
  });
  return feature;
}
