// The Telegram adapter: one Composer per feature, installed here, over the shared conversation layer.
// Long polling by default; webhook mode (TELEGRAM_MODE=webhook) serves Telegram's POSTs on its own port.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Telegraf, type Context, type MiddlewareFn } from 'telegraf';
import type { App } from '../../src/app.ts';
import { Conversation, type Person } from '../shared/conversation.ts';
import { JobNotifier } from '../shared/notifier.ts';
import { translator } from '../shared/i18n/index.ts';
import type { TelegramDeps, TelegramTarget } from './context.ts';
import { TelegramSurface } from './surface.ts';
import { queueTelegramCalls } from './send-queue.ts';
import { startFeature } from './features/start.ts';
import { trainFeature } from './features/train.ts';
import { imagineFeature } from './features/imagine.ts';
import { poseFeature } from './features/pose.ts';
import { statusFeature } from './features/status.ts';
import { forgetFeature } from './features/forget.ts';
import { accountFeature } from './features/account.ts';

export interface TelegramBotOptions {
  albumWindowMs?: number;
  sweepIntervalMs?: number;
  /** Replaces parts of config.telegram (tests run polling and webhook mode over one app). */
  telegram?: Partial<App['config']['telegram']>;
}

export interface TelegramBot {
  bot: Telegraf;
  notifier: JobNotifier<TelegramTarget>;
  /** The webhook server's address in webhook mode. */
  webhookAddress?: AddressInfo;
  start(): Promise<void>;
  stop(): Promise<void>;
}

export const commandList = ['start', 'help', 'train', 'imagine', 'pose', 'status', 'cancel', 'forget', 'link', 'lang'];

/**
 * Telegram delivers at least once (a webhook that answered late, a poller that restarted): the first process to see
 * an update_id claims it in Redis, and repeats are dropped.
 */
function dedupeUpdates(app: App): MiddlewareFn<Context> {
  const redis = app.queues.connection;
  return async (ctx, next) => {
    const key = `${app.config.queuePrefix}:telegram:update:${ctx.update.update_id}`;
    if ((await redis.set(key, '1', 'EX', 24 * 3600, 'NX')) !== 'OK') return;
    await next();
  };
}

export function createTelegramBot(app: App, options: TelegramBotOptions = {}): TelegramBot {
  const config = { ...app.config.telegram, ...options.telegram };
  if (!config.token) throw new Error('TELEGRAM_BOT_TOKEN is not set');
  const logger = app.logger.child({ part: 'telegram' });
  const bot = new Telegraf(config.token, { telegram: { apiRoot: config.apiRoot, webhookReply: false } });
  queueTelegramCalls(bot.telegram, logger);
  const notifier = new JobNotifier<TelegramTarget>(app, new TelegramSurface(bot.telegram), {
    editIntervalMs: app.config.chat.editIntervalMs,
    sweepIntervalMs: options.sweepIntervalMs,
  });
  const deps: TelegramDeps = { app, conversation: new Conversation(app), notifier, logger, albumWindowMs: options.albumWindowMs ?? 1200 };

  bot.use(dedupeUpdates(app));
  // Order matters: a photo captioned /pose is a pose request, any other photo a training photo.
  bot.use(startFeature(deps), poseFeature(deps), trainFeature(deps), imagineFeature(deps), statusFeature(deps), forgetFeature(deps), accountFeature(deps));
  bot.catch(async (error, ctx) => {
    logger.error({ err: error, updateId: ctx.update.update_id }, 'update failed');
    const person = ctx.state.person as Person | undefined;
    // Never the error itself: the person gets a plain apology in their language.
    if (ctx.chat) await ctx.telegram.sendMessage(ctx.chat.id, (person?.t ?? translator('en'))('error.internal')).catch(() => {});
  });

  let webhookServer: Server | undefined;
  let polling: Promise<void> | undefined;
  const handle: TelegramBot = {
    bot,
    notifier,
    async start() {
      await notifier.start();
      bot.botInfo = await bot.telegram.getMe();
      if (config.mode === 'webhook') {
        const url = new URL(config.webhook.url!);
        webhookServer = createServer(bot.webhookCallback(url.pathname, { secretToken: config.webhook.secret }));
        await new Promise<void>((resolve) => webhookServer!.listen(config.webhook.port, config.webhook.host, resolve));
        handle.webhookAddress = webhookServer.address() as AddressInfo;
        await bot.telegram.setWebhook(url.toString(), { secret_token: config.webhook.secret, drop_pending_updates: false });
        logger.info({ url: url.toString() }, 'telegram bot receiving updates by webhook');
      } else {
        // launch() resolves only when polling ends.
        polling = bot.launch().catch((error: unknown) => logger.error({ err: error }, 'telegram polling stopped'));
        logger.info('telegram bot polling for updates');
      }
    },
    async stop() {
      if (polling) bot.stop('shutdown');
      await polling;
      await new Promise<void>((resolve) => (webhookServer ? webhookServer.close(() => resolve()) : resolve()));
      await notifier.stop();
    },
  };
  return handle;
}

