// /styles: the style presets.
import { Composer } from 'telegraf';
import { personOf, replyTo, type TelegramDeps } from '../context.ts';

export function stylesFeature(deps: TelegramDeps) {
  const feature = new Composer();
  feature.command('styles', async (ctx) => replyTo(deps, ctx, deps.conversation.styles(await personOf(deps, ctx))));
  return feature;
}
