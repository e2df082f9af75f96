// /forget: asks first, deletes on "Delete everything". Only in a private chat, and only for the person who asked.
import { Composer } from 'telegraf';
import { forget, forgetAsk, forgetKept } from '../../shared/forget.ts';
import { acknowledge, buttonData, editPressed, inPrivate, personOf, pressedByOwner, replyTo, type TelegramDeps } from '../context.ts';

export function forgetFeature(deps: TelegramDeps) {
  const feature = new Composer();
  feature.command('forget', async (ctx) => {
    if (await inPrivate(deps, ctx, '/forget')) await replyTo(deps, ctx, forgetAsk(await personOf(deps, ctx)));
  });
  feature.action(buttonData('forget_yes', 'forget_no'), async (ctx) => {
    if (!(await pressedByOwner(deps, ctx))) return;
    await acknowledge(deps, ctx);
    const p = await personOf(deps, ctx);
    const reply = ctx.match[1] === 'forget_yes' ? await forget(deps.conversation, p) : forgetKept(p);
    // The question turns into the answer, so its buttons cannot be pressed twice.
    await editPressed(ctx, reply.text);
  });
  return feature;
}
