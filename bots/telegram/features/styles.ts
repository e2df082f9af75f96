// /styles: the style presets.
import { Composer } from 'telegraf';
import { imagine, styles } from '../../shared/imagine.ts';
import { personOf, replyTo, type TelegramDeps } from '../context.ts';

export function stylesFeature(deps: TelegramDeps) {
  const feature = new Composer();
  feature.command('styles', async (ctx) => replyTo(deps, ctx, styles(await personOf(deps, ctx))));
  // A tap on a style paints whoever tapped, from their own model.
  feature.action(/^style:([a-z]+)$/, async (ctx) => {
    await ctx.answerCbQuery();
    await replyTo(deps, ctx, await imagine(deps.conversation, await personOf(deps, ctx), '', ctx.match[1]!));
  });
  return feature;
}
