// The Telegram adapter: one Composer per feature, installed here, over the shared chat features (bots/shared).
// Long polling by default; webhook mode (TELEGRAM_MODE=webhook) serves Telegram's POSTs on its own port.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Telegraf, type Context, type MiddlewareFn } from 'telegraf';
import type { App } from '../../src/app.ts';
import { Conversation, type Person } from '../shared/conversation.ts';
import { JobNotifier } from '../shared/notifier.ts';
import { knownKey, locales, pickLocale, translator } from '../shared/i18n/index.ts';
import { apologyFor } from '../shared/error-text.ts';
import type { Message } from 'telegraf/types';
import { personOf, replyTo, type TelegramDeps, type TelegramTarget } from './context.ts';
import { TelegramSurface } from './surface.ts';
import { TelegramSendQueue } from './send-queue.ts';
import { UpdateRunner } from './update-runner.ts';
import { keepConnecting } from '../shared/reconnect.ts';
import { startFeature } from './features/start.ts';
import { trainFeature } from './features/train.ts';
import { imagineFeature } from './features/imagine.ts';
import { stylesFeature } from './features/styles.ts';
import { poseFeature } from './features/pose.ts';
import { statusFeature } from './features/status.ts';
import { forgetFeature } from './features/forget.ts';
import { accountFeature } from './features/account.ts';
import { adminFeature, bannedGuard } from './features/admin.ts';
import { AdminCommands } from '../shared/admin.ts';

export interface TelegramBotOptions {
  albumWindowMs?: number;
  sweepIntervalMs?: number;
  /** First wait before trying an unreachable Telegram again (doubled each time, at most a minute). */
  connectRetryMs?: number;
  /** Replaces parts of config.telegram (tests run polling and webhook mode over one app). */
  telegram?: Partial<App['config']['telegram']>;
}

export interface TelegramBot {
  bot: Telegraf;
  notifier: JobNotifier<TelegramTarget>;
  /** The webhook server's address in webhook mode. */
  webhookAddress?: AddressInfo;
  /** Resolves once Telegram answered and updates flow (start() returns earlier when Telegram is unreachable). */
  connected: Promise<void>;
  /** Tries Telegram once; when it is unreachable, keeps trying in the background (logged) instead of failing. */
  start(): Promise<void>;
  stop(): Promise<void>;
}

export const commandList = ['start', 'help', 'train', 'imagine', 'styles', 'pose', 'status', 'cancel', 'forget', 'link', 'lang'];

/**
 * Telegram delivers at least once (a webhook that answered late, a poller that restarted): the first process to see
 * an update_id claims it in Redis, and repeats are dropped. update_ids count per bot, so the claim names the bot:
 * another token on the same Redis (a new bot, a second one) starts again from low ids that are not repeats.
 */
function dedupeUpdates(app: App): MiddlewareFn<Context> {
  const redis = app.queues.connection;
  return async (ctx, next) => {
    const key = `${app.config.queuePrefix}:telegram:update:${ctx.botInfo.id}:${ctx.update.update_id}`;
    if ((await redis.set(key, '1', 'EX', 24 * 3600, 'NX')) !== 'OK') return;
    await next();
  };
}

/**
 * In a group the bot answers only what is meant for it: a command addressed to it (/help@bot), a reply to one of its
 * messages, or a message that mentions it. Button presses carry their owner and are checked where they are handled.
 */
function addressedInGroups(): MiddlewareFn<Context> {
  return async (ctx, next) => {
    const message = ctx.message as (Message.TextMessage & Message.CaptionableMessage) | undefined;
    if (!message || ctx.chat?.type === 'private') return next();
    if (message.reply_to_message?.from?.id === ctx.botInfo.id) return next();
    const me = `@${ctx.botInfo.username}`.toLowerCase();
    const text = message.text ?? message.caption ?? '';
    const addressed = (message.entities ?? message.caption_entities ?? []).some((e) => {
      const part = text.slice(e.offset, e.offset + e.length).toLowerCase();
      return (e.type === 'bot_command' && part.endsWith(me)) || (e.type === 'mention' && part === me);
    });
    if (addressed) return next();
  };
}

/** Anything no feature took (plain text, stickers, voice, unknown commands, /START): a pointer to /help. */
function fallback(deps: TelegramDeps): MiddlewareFn<Context> {
  return async (ctx, next) => {
    if (!ctx.message || !ctx.from) return next();
    const p = await personOf(deps, ctx);
    await replyTo(deps, ctx, { text: p.t('chat.fallback') });
  };
}

/** The command menu in each language (Telegram shows the one matching the person's app language). */
async function registerCommands(telegram: Telegraf['telegram']) {
  for (const locale of locales) {
    const t = translator(locale);
    const commands = commandList.map((command) => ({ command, description: t(knownKey(`command.${command}`) ?? 'command.help') }));
    await telegram.setMyCommands(commands, locale === 'en' ? {} : { language_code: locale });
  }
}

export function createTelegramBot(app: App, options: TelegramBotOptions = {}): TelegramBot {
  const config = { ...app.config.telegram, ...options.telegram };
  if (!config.token) throw new Error('TELEGRAM_BOT_TOKEN is not set');
  const logger = app.logger.child({ part: 'telegram' });
  const bot = new Telegraf(config.token, { telegram: { apiRoot: config.apiRoot, webhookReply: false } });
  const sendQueue = new TelegramSendQueue(logger);
  sendQueue.wrap(bot.telegram);
  const notifier = new JobNotifier<TelegramTarget>(app, new TelegramSurface(bot.telegram), {
    editIntervalMs: app.config.chat.editIntervalMs,
    sweepIntervalMs: options.sweepIntervalMs,
  });
  const deps: TelegramDeps = { app, conversation: new Conversation(app), notifier, logger, albumWindowMs: options.albumWindowMs ?? 1200 };

  // telegraf gives each update its own client (ctx.telegram): it joins the shared per-chat queues too.
  bot.use((ctx, next) => { sendQueue.wrap(ctx.telegram); return next(); });
  bot.use(dedupeUpdates(app));
  // Order matters: a photo captioned /pose is a pose request, any other photo a training photo.
  bot.use(addressedInGroups());
  const admin = new AdminCommands(app);
  bot.use(bannedGuard(deps, admin));
  bot.use(adminFeature(deps, admin), startFeature(deps), poseFeature(deps), trainFeature(deps), imagineFeature(deps), stylesFeature(deps), statusFeature(deps), forgetFeature(deps), accountFeature(deps));
  bot.use(fallback(deps));
  bot.catch(async (error, ctx) => {
    logger.error({ err: error, updateId: ctx.update.update_id }, 'update failed');
    const person = ctx.state.person as Person | undefined;
    // Never the error itself: the person gets a plain apology in their language.
    // The person may not be known (their row could not be read): their Telegram language then.
    if (ctx.chat) await ctx.telegram.sendMessage(ctx.chat.id, (person?.t ?? translator(pickLocale(ctx.from?.language_code)))(apologyFor(error))).catch(() => {});
  });

  // Polled updates (no webhook response to write) run through the runner instead of telegraf's batch-at-a-time loop.
  const runner = new UpdateRunner(logger);
  const handleUpdate = bot.handleUpdate.bind(bot);
  bot.handleUpdate = (update, webhookResponse) =>
    (webhookResponse ? handleUpdate(update, webhookResponse) : runner.dispatch(update, () => handleUpdate(update)));

  let webhookServer: Server | undefined;
  let polling: Promise<void> | undefined;
  const connect = async () => {
    bot.botInfo = await bot.telegram.getMe();
    await registerCommands(bot.telegram).catch((error: unknown) => logger.warn({ err: error }, 'could not register the command menus'));
    if (config.mode === 'webhook') {
      const url = new URL(config.webhook.url!);
      await bot.telegram.setWebhook(url.toString(), { secret_token: config.webhook.secret, drop_pending_updates: false });
      logger.info({ url: url.toString() }, 'telegram bot receiving updates by webhook');
    } else {
      // launch() resolves only when polling ends.
      polling = bot.launch().catch((error: unknown) => logger.error({ err: error }, 'telegram polling stopped'));
      logger.info('telegram bot polling for updates');
    }
  };

  const connection = keepConnecting(connect, logger, 'telegram', options.connectRetryMs);

  const handle: TelegramBot = {
    bot,
    notifier,
    connected: connection.connected,
    async start() {
      await notifier.start();
      if (config.mode === 'webhook') {
        const url = new URL(config.webhook.url!);
        webhookServer = createServer(bot.webhookCallback(url.pathname, { secretToken: config.webhook.secret }));
        await new Promise<void>((resolve) => webhookServer!.listen(config.webhook.port, config.webhook.host, resolve));
        handle.webhookAddress = webhookServer.address() as AddressInfo;
      }
      await connection.start();
    },
    async stop() {
      connection.stop();
      if (polling) bot.stop('shutdown');
      await polling;
      await runner.idle();
      await new Promise<void>((resolve) => (webhookServer ? webhookServer.close(() => resolve()) : resolve()));
      await notifier.stop();
    },
  };
  return handle;
}

