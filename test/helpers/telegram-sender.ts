// A second bot process for the outbox tests: it delivers the finished jobs that are due on Telegram, then idles until
// the test kills it (kill -9, mid-delivery). Arguments: one JSON array, [environment, notifier options].
import pino from 'pino';
import { Telegraf } from 'telegraf';
import { loadConfig } from '../../src/config/index.ts';
import { createApp } from '../../src/app.ts';
import { JobNotifier, type NotifierOptions } from '../../bots/shared/notifier.ts';
import { TelegramSurface } from '../../bots/telegram/surface.ts';
import { TelegramSendQueue } from '../../bots/telegram/send-queue.ts';

const [env, options] = JSON.parse(process.argv[2]!) as [Record<string, string>, Partial<NotifierOptions>];
const config = loadConfig(env);
const app = await createApp(config, pino({ level: 'silent' }));
const telegraf = new Telegraf(config.telegram.token!, { telegram: { apiRoot: config.telegram.apiRoot } });
new TelegramSendQueue(app.logger).wrap(telegraf.telegram);
const notifier = new JobNotifier(app, new TelegramSurface(telegraf.telegram), { editIntervalMs: 100, sweepIntervalMs: 3_600_000, ...options });
process.stdout.write(`owner ${notifier.owner}\n`);
await notifier.sweep();
process.stdout.write('swept\n');
setInterval(() => {}, 60_000);
