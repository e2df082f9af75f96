// Starts the stack: migrations, the worker with its engine, the web playground (the roles in ROLES), and the
// Telegram / Discord adapters when their tokens are set.
import { createLogger } from './logging.ts';
import { ConfigError, loadConfig, type Config } from './config/index.ts';
import { createApp } from './app.ts';
import { buildWebServer } from '../bots/web/server.ts';
import { startWorker, type WorkerHandle } from '../worker/index.ts';
import { startHealthServer } from './health.ts';

let config: Config;
try {
  config = loadConfig();
} catch (error) {
  if (error instanceof ConfigError) {
    console.error(error.message);
    process.exit(2);
  }
  throw error;
}

const logger = createLogger(config);
const app = await createApp(config, logger);
const stoppers: Array<() => Promise<unknown>> = [];

let worker: WorkerHandle | undefined;
if (config.roles.has('worker')) {
  worker = await startWorker({ db: app.database.db, store: app.store, events: app.events, vision: app.vision, config, logger: logger.child({ part: 'worker' }), health: app.health });
  stoppers.push(() => worker!.close());
}
if (config.roles.has('web')) {
  const web = await buildWebServer(app);
  const address = await web.listen({ host: config.web.host, port: config.web.port });
  stoppers.unshift(() => web.close());
  console.log(`\n  Portrait bot playground: ${address}/\n  Engine profile: ${config.engine.profile}${config.engine.profile === 'tiny' ? ' (random weights: images are noise)' : ''}\n`);
}
// A chat adapter runs where its role is on (the default) and its token is set. Repeated updates are claimed in Redis and
// final deliveries go through the outbox in Postgres (README: what is guaranteed); Telegram allows one long-polling
// process. An unreachable chat API at start is retried in the background: start() does not fail for it.
if (config.roles.has('telegram') && config.telegram.token) {
  const { createTelegramBot } = await import('../bots/telegram/bot.ts');
  const telegram = createTelegramBot(app);
  await telegram.start();
  stoppers.unshift(() => telegram.stop());
}
if (config.roles.has('discord') && config.discord.token) {
  const { createDiscordBot } = await import('../bots/discord/bot.ts');
  const discord = createDiscordBot(app);
  await discord.start();
  stoppers.unshift(() => discord.stop());
}

// Retention runs beside the worker (one place per deployment that runs jobs), hourly.
if (config.retentionDays && config.roles.has('worker')) {
  const sweep = () => app.services.retention.sweep()
    .then((n) => { if (n > 0) logger.info({ forgotten: n, days: config.retentionDays }, 'retention: deleted inactive people'); })
    .catch((error: Error) => logger.warn({ err: error }, 'retention sweep failed'));
  void sweep();
  const timer = setInterval(() => void sweep(), 3600_000);
  timer.unref();
  stoppers.push(async () => clearInterval(timer));
}

// Processes without the web server (a GPU worker) answer /healthz, /readyz and /metrics here.
if (config.health.port !== undefined) {
  const health = await startHealthServer(app.health, config.health.port, config.health.host);
  logger.info({ port: health.address.port }, 'health and metrics listening');
  stoppers.push(() => health.close());
}

let stopping = false;
async function shutdown(signal: string) {
  if (stopping) return;
  stopping = true;
  logger.info({ signal }, 'shutting down: running jobs go back to the queue');
  for (const stop of stoppers) await stop().catch((error: Error) => logger.error({ err: error }, 'stop failed'));
  await app.close();
  process.exit(0);
}
process.on('SIGTERM', () => void shutdown('SIGTERM'));
process.on('SIGINT', () => void shutdown('SIGINT'));
