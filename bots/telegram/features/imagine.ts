// /imagine <prompt>.
import { Composer } from 'telegraf';
import { imagine } from '../../shared/imagine.ts';
import { personOf, replyTo, type TelegramDeps } from '../context.ts';

export function imagineFeature(deps: TelegramDeps) {
  const feature = new Composer();
  feature.command('imagine', async (ctx) => {
    await ctx.sendChatAction('typing');
    await replyTo(deps, ctx, await imagine(deps.conversation, await personOf(deps, ctx), ctx.payload));
  });
  return feature;
}
