// The Discord adapter: a gateway client whose only event is interactionCreate, over the shared conversation layer.
import { Client, Events, GatewayIntentBits, Routes } from 'discord.js';
import type { App } from '../../src/app.ts';
import { Conversation } from '../shared/conversation.ts';
import { JobNotifier } from '../shared/notifier.ts';
import type { DiscordDeps, DiscordTarget } from './context.ts';
import { DiscordSurface } from './surface.ts';
import { interactionDispatcher } from './dispatcher.ts';

export interface DiscordBot {
  client: Client;
  notifier: JobNotifier<DiscordTarget>;
  /** Resolves once logged in (start() returns earlier when Discord is unreachable). */
  connected: Promise<void>;
  /** Tries to log in once; when Discord is unreachable, keeps trying in the background (logged) instead of failing. */
  start(): Promise<void>;
  stop(): Promise<void>;
}

export interface DiscordBotOptions {
  sweepIntervalMs?: number;
  /** First wait before trying an unreachable Discord again (doubled each time, at most a minute). */
  connectRetryMs?: number;
}

export function createDiscordBot(app: App, options: DiscordBotOptions = {}): DiscordBot {
  const config = app.config.discord;
  if (!config.token) throw new Error('DISCORD_TOKEN is not set');
  const logger = app.logger.child({ part: 'discord' });
  // Slash commands and buttons need no privileged intents; Guilds keeps channel objects for replies.
  const client = new Client({ intents: [GatewayIntentBits.Guilds], rest: config.apiRoot ? { api: config.apiRoot } : {} });
  const notifier = new JobNotifier<DiscordTarget>(app, new DiscordSurface(client), {
    editIntervalMs: app.config.chat.editIntervalMs,
    sweepIntervalMs: options.sweepIntervalMs,
  });
  const deps: DiscordDeps = { app, conversation: new Conversation(app), notifier, logger };
  const dispatch = interactionDispatcher(deps);
  client.on(Events.InteractionCreate, (interaction) => void dispatch(interaction));
  client.on(Events.Error, (error) => logger.error({ err: error }, 'discord client error'));

  let stopped = false;
  let wakeRetry: (() => void) | undefined;
  let markConnected!: () => void;
  const connected = new Promise<void>((resolve) => { markConnected = resolve; });
  // discord.js cannot destroy a client whose login failed (its gateway manager stays marked destroyed while a new
  // connection runs), so we log in only once Discord's REST answers; until then only that request is retried.
  const connect = async () => {
    client.rest.setToken(config.token!);
    await client.rest.get(Routes.gatewayBot());
    const ready = new Promise<void>((resolve) => client.once(Events.ClientReady, () => resolve()));
    await client.login(config.token);
    await ready;
    logger.info({ user: client.user?.tag }, 'discord bot connected');
    markConnected();
  };
  /** Discord down or unreachable at start: the rest of the process (web, worker) keeps running while we retry. */
  const retry = async (first: unknown) => {
    let delay = options.connectRetryMs ?? 1000;
    let error = first;
    for (let attempt = 1; !stopped; attempt++) {
      logger.warn({ err: error, attempt, retryInMs: delay }, 'discord is unreachable; trying again');
      await new Promise<void>((resolve) => { const timer = setTimeout(resolve, delay); wakeRetry = () => { clearTimeout(timer); resolve(); }; });
      if (stopped) return;
      try {
        await connect();
        return;
      } catch (next) {
        error = next;
        delay = Math.min(delay * 2, 60_000);
      }
    }
  };

  return {
    client,
    notifier,
    connected,
    async start() {
      await notifier.start();
      await connect().catch((error: unknown) => { void retry(error); });
    },
    async stop() {
      stopped = true;
      wakeRetry?.();
      await client.destroy();
      await notifier.stop();
    },
  };
}
