// /forget: asks first, deletes on "Delete everything".
import { Composer } from 'telegraf';
import { personOf, replyTo, type TelegramDeps } from '../context.ts';

export function forgetFeature(deps: TelegramDeps) {
  const feature = new Composer();
  feature.command('forget', async (ctx) => replyTo(deps, ctx, deps.conversation.forgetAsk(await personOf(deps, ctx))));
  feature.action(['forget_yes', 'forget_no'], async (ctx) => {
    await ctx.answerCbQuery();
    const p = await personOf(deps, ctx);
    const reply = ctx.match[0] === 'forget_yes' ? await deps.conversation.forget(p) : deps.conversation.forgetKept(p);
    // The question turns into the answer, so its buttons cannot be pressed twice.
    await ctx.editMessageText(reply.text);
  });
  return feature;
}
