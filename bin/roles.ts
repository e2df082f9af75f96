// Starts a set of roles in this process: migrations, then the worker with its engines, the web playground, and the
// Telegram / Discord adapters. Each role also runs on its own (bin/web.ts, bin/worker.ts, bin/telegram.ts,
// bin/discord.ts), on one machine or many, all sharing Postgres, Redis and the store (README: Deploy).
import { createLogger } from '../src/logging.ts';
import { ConfigError, loadConfig, type Config, type Role } from '../src/config/index.ts';
import { createApp } from '../src/app.ts';
import { startHealthServer } from '../src/health.ts';
import { checkRedisPolicy } from '../src/redis-policy.ts';

function configOrExit(): Config {
  try {
    return loadConfig();
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(error.message);
      process.exit(2);
    }
    throw error;
  }
}

/**
 * `only` names the roles of a single-role entry point: a chat role named there without its token is a configuration
 * error. Without it the roles come from ROLES, and a chat role whose token is unset is skipped (the quick start).
 */
export async function startRoles(only?: Role[]): Promise<void> {
  const config = configOrExit();
  const roles = new Set<Role>(only ?? config.roles);
  if (only) {
    const missing = [
      roles.has('telegram') && !config.telegram.token ? 'TELEGRAM_BOT_TOKEN: required by the telegram role' : undefined,
      roles.has('discord') && !config.discord.token ? 'DISCORD_TOKEN: required by the discord role' : undefined,
    ].filter((p): p is string => p !== undefined);
    if (missing.length > 0) {
      console.error(new ConfigError(missing).message);
      process.exit(2);
    }
  }
  const logger = createLogger(config);
  const app = await createApp(config, logger);
  const stoppers: Array<() => Promise<unknown>> = [];

  // Once per process that runs jobs or delivers their results (not per role): a Redis that may evict keys or keeps
  // nothing across a restart loses queued jobs and outbox claims silently, so say so at start.
  const checked = [...roles].filter((role) => role === 'worker' || (role === 'telegram' && config.telegram.token) || (role === 'discord' && config.discord.token));
  if (checked.length > 0) await checkRedisPolicy(app.queues.connection, logger, checked.join('+'));

  // Only the worker role starts an engine; web and chat processes queue jobs and read their rows and events.
  if (roles.has('worker')) {
    const { startWorker } = await import('../worker/index.ts');
    const worker = await startWorker({ db: app.database.db, store: app.store, events: app.events, vision: app.vision, config, logger: logger.child({ part: 'worker' }), health: app.health });
    stoppers.push(() => worker.close());
  }
  if (roles.has('web')) {
    const { buildWebServer } = await import('../bots/web/server.ts');
    const web = await buildWebServer(app);
    const address = await web.listen({ host: config.web.host, port: config.web.port });
    stoppers.unshift(() => web.close());
    logger.info({ address }, 'web playground listening');
    console.log(`\n  Portrait bot playground: ${address}/\n  Engine profile: ${config.engine.profile}${config.engine.profile === 'tiny' ? ' (random weights: images are noise)' : ''}\n`);
  }
  // A chat adapter runs where its role is on and its token is set. Repeated updates are claimed in Redis and final
  // deliveries go through the outbox in Postgres (README: what is guaranteed); Telegram allows one long-polling
  // process. An unreachable chat API at start is retried in the background: start() does not fail for it.
  if (roles.has('telegram') && config.telegram.token) {
    const { createTelegramBot } = await import('../bots/telegram/bot.ts');
    const telegram = createTelegramBot(app);
    await telegram.start();
    stoppers.unshift(() => telegram.stop());
  }
  if (roles.has('discord') && config.discord.token) {
    const { createDiscordBot } = await import('../bots/discord/bot.ts');
    const discord = createDiscordBot(app);
    await discord.start();
    stoppers.unshift(() => discord.stop());
  }

  // Retention runs beside the worker (one place per deployment that runs jobs), hourly.
  if (config.retentionDays && roles.has('worker')) {
    const sweep = () => app.services.retention.sweep()
      .then((n) => { if (n > 0) logger.info({ forgotten: n, days: config.retentionDays }, 'retention: deleted inactive people'); })
      .catch((error: Error) => logger.warn({ err: error }, 'retention sweep failed'));
    void sweep();
    const timer = setInterval(() => void sweep(), 3600_000);
    timer.unref();
    stoppers.push(async () => clearInterval(timer));
  }
  // Processes without the web server (a GPU worker, a chat adapter) answer /healthz, /readyz and /metrics here.
  if (config.health.port !== undefined) {
    const health = await startHealthServer(app.health, config.health.port, config.health.host);
    logger.info({ port: health.address.port }, 'health and metrics listening');
    stoppers.push(() => health.close());
  }
  // A chat role without its token was skipped above (the quick start): the line names what really runs.
  const started = [...roles].filter((role) => (role === 'telegram' ? config.telegram.token : role === 'discord' ? config.discord.token : true));
  logger.info({ roles: started, ...(started.length < roles.size ? { skipped: [...roles].filter((r) => !started.includes(r)), why: 'no token set' } : {}) }, 'roles started');

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
}
