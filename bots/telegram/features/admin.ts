// /admin for the configured operators (ADMIN_TELEGRAM_IDS), and the guard that answers a banned person's every update.
// For anyone else /admin is an unknown command: it falls through to the usual pointer to /help.
import { Composer, type Context, type MiddlewareFn } from 'telegraf';
import { AdminCommands } from '../../shared/admin.ts';
import { personOf, replyTo, type TelegramDeps } from '../context.ts';

export function adminFeature(deps: TelegramDeps, admin = new AdminCommands(deps.app)) {
  const feature = new Composer();
  feature.command('admin', async (ctx, next) => {
    if (!admin.isAdmin('telegram', String(ctx.from.id))) return next();
    await replyTo(deps, ctx, await admin.run(await personOf(deps, ctx), ctx.payload));
  });
  return feature;
}

/** Stops every message and button press of a banned person with one clear answer. */
export function bannedGuard(deps: TelegramDeps, admin = new AdminCommands(deps.app)): MiddlewareFn<Context> {
  return async (ctx, next) => {
    if (!ctx.from || (!ctx.message && !ctx.callbackQuery)) return next();
    // The user row read here is the one the handler uses (personOf), so the ban costs no query of its own.
    const person = await deps.conversation.existingPerson('telegram', String(ctx.from.id));
    if (person) ctx.state.person = person;
    const refusal = admin.bannedReply('telegram', String(ctx.from.id), person);
    if (!refusal) return next();
    if (ctx.callbackQuery) await ctx.answerCbQuery(refusal.text, { show_alert: true });
    else await replyTo(deps, ctx, refusal);
  };
}
