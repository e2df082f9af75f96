// The Discord adapter: a gateway client whose only event is interactionCreate, over the shared chat features (bots/shared).
import { Client, Events, GatewayIntentBits, RESTEvents, Routes } from 'discord.js';
import type { App } from '../../src/app.ts';
import { Conversation } from '../shared/conversation.ts';
import { JobNotifier } from '../shared/notifier.ts';
import type { DiscordDeps, DiscordTarget } from './context.ts';
import { DiscordSurface } from './surface.ts';
import { interactionDispatcher } from './dispatcher.ts';
import { keepConnecting } from '../shared/reconnect.ts';
import { metrics } from '../../src/metrics.ts';

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
  // Every REST answer passes here, 429s included (discord.js waits them out itself).
  client.rest.on(RESTEvents.Response, (_request, response) => { if (response.status >= 400) metrics.chatApiError('discord', response.status); });

  // discord.js cannot destroy a client whose login failed (its gateway manager stays marked destroyed while a new
  // connection runs), so we log in only once Discord's REST answers; until then only that request is retried.
  const connect = async () => {
    client.rest.setToken(config.token!);
    await client.rest.get(Routes.gatewayBot());
    const ready = new Promise<void>((resolve) => client.once(Events.ClientReady, () => resolve()));
    await client.login(config.token);
    await ready;
    logger.info({ user: client.user?.tag }, 'discord bot connected');
  };
  const connection = keepConnecting(connect, logger, 'discord', options.connectRetryMs);

  return {
    client,
    notifier,
    connected: connection.connected,
    async start() {
      await notifier.start();
      await connection.start();
    },
    async stop() {
      connection.stop();
      await client.destroy();
      await notifier.stop();
    },
  };
}
