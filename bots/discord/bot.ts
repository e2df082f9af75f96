// The Discord adapter: a gateway client whose only event is interactionCreate, over the shared chat features (bots/shared).
import { Client, Events, GatewayIntentBits, REST, RESTEvents, Routes } from 'discord.js';
import type { App } from '../../src/app.ts';
import { Conversation } from '../shared/conversation.ts';
import { JobNotifier } from '../shared/notifier.ts';
import type { DiscordDeps, DiscordTarget } from './context.ts';
import { DiscordSurface } from './surface.ts';
import { interactionDispatcher } from './dispatcher.ts';
import { keepConnecting } from '../shared/reconnect.ts';
import { metrics } from '../../src/metrics.ts';

export interface DiscordBot {
  /** Its REST manager (`client.rest`) carries the interaction endpoints only (replies, edits, follow-ups). */
  client: Client;
  /** Every other Discord call (DMs, the connection check), under Discord's global limit of 50 requests/s. */
  botRest: REST;
  surface: DiscordSurface;
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
  const api = config.apiRoot ? { api: config.apiRoot } : {};
  // Slash commands and buttons need no privileged intents; Guilds keeps channel objects for replies. Discord does not
  // bind interaction endpoints to the bot's global limit, but discord.js's client-side limiter (50/s) counts all but
  // the first callback (edits, follow-ups), so under load it held replies back (bench/load-capacity.ts: 45-48/s).
  // The client's REST manager carries the interaction calls with that limiter off (per-route buckets and a 429's
  // retry_after still apply); everything else goes through botRest with the limit.
  const client = new Client({ intents: [GatewayIntentBits.Guilds], rest: { ...api, globalRequestsPerSecond: Number.POSITIVE_INFINITY } });
  const botRest = new REST(api).setToken(config.token);
  const surface = new DiscordSurface(client, botRest);
  const notifier = new JobNotifier<DiscordTarget>(app, surface, {
    editIntervalMs: app.config.chat.editIntervalMs,
    sweepIntervalMs: options.sweepIntervalMs,
  });
  const deps: DiscordDeps = { app, conversation: new Conversation(app), notifier, logger };
  const dispatch = interactionDispatcher(deps);
  client.on(Events.InteractionCreate, (interaction) => void dispatch(interaction));
  client.on(Events.Error, (error) => logger.error({ err: error }, 'discord client error'));
  // Every REST answer passes here, 429s included (discord.js waits them out itself).
  for (const rest of [client.rest, botRest]) {
    rest.on(RESTEvents.Response, (_request, response) => { if (response.status >= 400) metrics.chatApiError('discord', response.status); });
  }

  // discord.js cannot destroy a client whose login failed (its gateway manager stays marked destroyed while a new
  // connection runs), so we log in only once Discord's REST answers; until then only that request is retried.
  const connect = async () => {
    await botRest.get(Routes.gatewayBot());
    const ready = new Promise<void>((resolve) => client.once(Events.ClientReady, () => resolve()));
    await client.login(config.token);
    await ready;
    logger.info({ user: client.user?.tag }, 'discord bot connected');
  };
  const connection = keepConnecting(connect, logger, 'discord', options.connectRetryMs);

  return {
    client,
    botRest,
    surface,
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
