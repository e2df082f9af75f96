// A local Discord: the REST routes and gateway events our bot uses, so the real discord.js client logs in and runs
// against it (rest option `api` → this server; GET /gateway/bot points the gateway at this server's WebSocket).
// It keeps each interaction's reply and follow-ups the way Discord does (15-minute tokens, ephemeral flags,
// multipart attachments), serves uploaded attachments from a local CDN path, and records every call.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import { WebSocketServer, type WebSocket } from 'ws';

export interface RestCall { method: string; path: string; body: any; files: Array<{ name: string; data: Buffer; contentType: string }>; at: number }
export interface EmulatedDiscordUser { id: string; username: string; locale?: string }

export interface SentMessage {
  id: string;
  channel_id: string;
  content: string;
  flags: number;
  components: any[];
  attachments: Array<{ filename: string; data: Buffer }>;
  edits: string[];
  deleted?: boolean;
}

export interface InteractionRecord {
  id: string;
  token: string;
  user: EmulatedDiscordUser;
  createdAt: number;
  /** The type of the callback the bot answered with (5 deferred reply, 6 deferred update, 4 reply, 7 update). */
  callback?: number;
  original?: SentMessage;
  followUps: SentMessage[];
}

const EPHEMERAL = 1 << 6;
let snowflakeCounter = 0n;
/** Discord ids are snowflakes: milliseconds since 2015 shifted left 22 bits, plus a counter. */
export const snowflake = () => String(((BigInt(Date.now()) - 1420070400000n) << 22n) | (snowflakeCounter++ & 0xfffn));

export class DiscordEmulator {
  readonly token = `${Buffer.from(snowflake()).toString('base64')}.emulator.${randomBytes(12).toString('hex')}`;
  readonly applicationId = snowflake();
  readonly botUser = { id: this.applicationId, username: 'portrait', discriminator: '0', avatar: null, bot: true, global_name: null };
  readonly calls: RestCall[] = [];
  /** Told of every REST call as it arrives (load tests time replies without scanning `calls`). */
  readonly callListeners = new Set<(call: RestCall) => void>();
  readonly interactions = new Map<string, InteractionRecord>();
  readonly messages = new Map<string, SentMessage>();
  readonly commands = new Map<string, any[]>();
  readonly dmChannels = new Map<string, string>();
  private readonly attachments = new Map<string, Buffer>();
  private readonly buttonSources = new Map<string, string>();
  private readonly sentPayloads = new Map<string, unknown>();
  /** Rate limits to answer (429 with Discord's headers), per "METHOD /path" pattern, each used once. */
  private readonly limits: Array<{ method: string; path: RegExp; retryAfterS: number }> = [];
  private server?: Server;
  private gateway?: WebSocketServer;
  private sockets = new Set<WebSocket>();
  private sequence = 0;
  url = '';

  get api() { return `${this.url}/api`; }

  async start(port = 0): Promise<void> {
    this.server = createServer((req, res) => void this.handle(req, res));
    this.gateway = new WebSocketServer({ server: this.server, path: '/gateway' });
    this.gateway.on('connection', (socket) => this.onGatewayConnection(socket));
    await new Promise<void>((resolve) => this.server!.listen(port, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.terminate();
    this.gateway?.close();
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()) ?? resolve());
  }

  get connected() { return this.sockets.size > 0; }

  // ---- what a person does -------------------------------------------------------------------------------------

  /** Uploads a file the way the Discord client does before a command runs; returns the resolved attachment. */
  attach(data: Buffer, filename: string, contentType: string) {
    const id = snowflake();
    this.attachments.set(id, data);
    return { id, filename, size: data.length, content_type: contentType, url: `${this.url}/attachments/${id}/${filename}`, proxy_url: `${this.url}/attachments/${id}/${filename}` };
  }

  /** Runs a slash command: an INTERACTION_CREATE dispatch on the gateway, as Discord sends it. */
  command(user: EmulatedDiscordUser, name: string, options: Record<string, string | { file: Buffer; filename: string; contentType: string }> = {}) {
    const resolvedAttachments: Record<string, unknown> = {};
    const opts = Object.entries(options).map(([optionName, value]) => {
      if (typeof value === 'string') return { name: optionName, type: 3, value };
      const attachment = this.attach(value.file, value.filename, value.contentType);
      resolvedAttachments[attachment.id] = attachment;
      return { name: optionName, type: 11, value: attachment.id };
    });
    return this.interact(user, {
      type: 2,
      data: { id: snowflake(), name, type: 1, options: opts, ...(opts.some((o) => o.type === 11) ? { resolved: { attachments: resolvedAttachments } } : {}) },
    });
  }

  /** Presses a button under a message the bot sent. */
  press(user: EmulatedDiscordUser, message: SentMessage, customId: string) {
    // The button's custom_id as the bot set it (it may carry more than the action).
    customId = message.components.flatMap((row: any) => row.components ?? []).find((c: any) => c.custom_id?.split(':')[0] === customId)?.custom_id ?? customId;
    const record = this.interact(user, {
      type: 3,
      data: { custom_id: customId, component_type: 2 },
      message: this.publicMessage(message),
    });
    // The reply to the bot's deferUpdate edits this message (the bot's answer arrives later, over HTTP).
    this.buttonSources.set(record.token, message.id);
    return record;
  }

  /** Sends an interaction's gateway event again (a resumed session may replay it); it keeps its id and token. */
  redispatch(record: InteractionRecord) {
    const payload = this.sentPayloads.get(record.token);
    if (!payload) throw new Error('unknown interaction');
    this.dispatch('INTERACTION_CREATE', payload);
  }

  private interact(user: EmulatedDiscordUser, body: Record<string, unknown>): InteractionRecord {
    const id = snowflake();
    const token = `itok_${randomBytes(16).toString('hex')}`;
    const record: InteractionRecord = { id, token, user, createdAt: Date.now(), followUps: [] };
    this.interactions.set(token, record);
    const channelId = this.dmChannelOf(user.id);
    const payload = {
      id,
      application_id: this.applicationId,
      token,
      version: 1,
      locale: user.locale ?? 'en-US',
      channel_id: channelId,
      channel: { id: channelId, type: 1 },
      user: { id: user.id, username: user.username, discriminator: '0', avatar: null, global_name: user.username },
      app_permissions: '0',
      entitlements: [],
      authorizing_integration_owners: { 1: user.id },
      context: 1,
      ...body,
    };
    this.sentPayloads.set(token, payload);
    this.dispatch('INTERACTION_CREATE', payload);
    return record;
  }

  // ---- what tests look at -------------------------------------------------------------------------------------

  callsTo(pattern: RegExp, method?: string) { return this.calls.filter((c) => pattern.test(c.path) && (!method || c.method === method)); }

  async waitFor<T>(find: () => T | undefined | false, what: string, timeoutMs = 60_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = find();
      if (found) return found;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last calls: ${JSON.stringify(this.calls.slice(-5).map((c) => [c.method, c.path, c.body?.content]))}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  /** The next `method` call whose path matches answers 429, as Discord does (headers and body). */
  rateLimitNext(method: string, path: RegExp, retryAfterS: number) { this.limits.push({ method, path, retryAfterS }); }

  /** Makes an interaction's token older than Discord's 15 minutes, so further webhook calls with it fail. */
  expire(record: InteractionRecord) { record.createdAt -= 16 * 60 * 1000; }

  // ---- gateway ------------------------------------------------------------------------------------------------

  private onGatewayConnection(socket: WebSocket) {
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    const send = (payload: unknown) => socket.send(JSON.stringify(payload));
    send({ op: 10, d: { heartbeat_interval: 41_250 }, s: null, t: null });
    socket.on('message', (raw) => {
      const message = JSON.parse(String(raw)) as { op: number; d: any };
      if (message.op === 1) send({ op: 11, d: null, s: null, t: null });
      if (message.op === 2) {
        if (message.d.token !== this.token) {
          socket.close(4004, 'Authentication failed.');
          return;
        }
        send({
          op: 0, s: ++this.sequence, t: 'READY',
          d: {
            v: 10, user: this.botUser, guilds: [], session_id: randomBytes(8).toString('hex'),
            resume_gateway_url: `${this.url.replace('http', 'ws')}/gateway`, shard: [0, 1],
            application: { id: this.applicationId, flags: 0 },
          },
        });
      }
    });
  }

  private dispatch(event: string, data: unknown) {
    if (this.sockets.size === 0) throw new Error('no gateway connection: is the bot logged in?');
    const payload = JSON.stringify({ op: 0, s: ++this.sequence, t: event, d: data });
    for (const socket of this.sockets) socket.send(payload);
  }

  // ---- REST ---------------------------------------------------------------------------------------------------

  private dmChannelOf(userId: string) {
    let id = this.dmChannels.get(userId);
    if (!id) {
      id = snowflake();
      this.dmChannels.set(userId, id);
    }
    return id;
  }

  private publicMessage(m: SentMessage) {
    return {
      id: m.id, channel_id: m.channel_id, content: m.content, flags: m.flags, components: m.components, type: 0,
      author: this.botUser, timestamp: new Date().toISOString(), edited_timestamp: null, tts: false, mention_everyone: false,
      mentions: [], mention_roles: [], attachments: m.attachments.map((a, n) => ({ id: String(n), filename: a.filename, size: a.data.length, url: '', proxy_url: '' })),
      embeds: [], pinned: false, application_id: this.applicationId,
    };
  }

  private newMessage(channelId: string, body: any, files: RestCall['files'], flags = 0): SentMessage {
    const message: SentMessage = {
      id: snowflake(), channel_id: channelId, content: body?.content ?? '', flags: (body?.flags ?? 0) | flags,
      components: body?.components ?? [], attachments: files.map((f) => ({ filename: f.name, data: f.data })), edits: [],
    };
    this.messages.set(message.id, message);
    return message;
  }

  private async handle(req: IncomingMessage, res: ServerResponse) {
    const url = new URL(req.url ?? '/', this.url);
    const send = (status: number, body?: unknown) => {
      if (body === undefined) {
        res.writeHead(status);
        return res.end();
      }
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    const attachment = /^\/attachments\/(\d+)\//.exec(url.pathname);
    if (attachment) {
      const data = this.attachments.get(attachment[1]!);
      if (!data) return send(404, { message: 'Not Found', code: 0 });
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': data.length });
      return res.end(data);
    }
    const path = decodeURIComponent(url.pathname).replace(/^\/api\/v\d+/, '');
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const raw = Buffer.concat(chunks);
    const type = req.headers['content-type'] ?? '';
    let body: any;
    const files: RestCall['files'] = [];
    if (type.startsWith('application/json') && raw.length) body = JSON.parse(raw.toString('utf8'));
    if (type.startsWith('multipart/form-data')) {
      const form = await new Response(raw, { headers: { 'content-type': type } }).formData();
      for (const [name, value] of form.entries()) {
        if (name === 'payload_json') body = JSON.parse(String(value));
        else if (typeof value !== 'string') files.push({ name: value.name, data: Buffer.from(await value.arrayBuffer()), contentType: value.type });
      }
    }
    const call: RestCall = { method: req.method ?? 'GET', path, body, files, at: Date.now() };
    this.calls.push(call);
    for (const listener of this.callListeners) listener(call);
    const limit = this.limits.findIndex((l) => l.method === req.method && l.path.test(path));
    if (limit >= 0) {
      const { retryAfterS } = this.limits.splice(limit, 1)[0]!;
      res.writeHead(429, {
        'content-type': 'application/json', 'retry-after': String(retryAfterS), 'x-ratelimit-limit': '5', 'x-ratelimit-remaining': '0',
        'x-ratelimit-reset-after': String(retryAfterS), 'x-ratelimit-bucket': 'emulated', 'x-ratelimit-scope': 'user',
      });
      return res.end(JSON.stringify({ message: 'You are being rate limited.', retry_after: retryAfterS, global: false }));
    }
    const authorized = req.headers.authorization === `Bot ${this.token}`;
    const m = (pattern: RegExp) => pattern.exec(path);
    const interactionOf = (token: string) => {
      const record = this.interactions.get(token);
      // Interaction tokens work for 15 minutes.
      return record && Date.now() - record.createdAt < 15 * 60 * 1000 ? record : undefined;
    };
    const unknownWebhook = () => send(404, { message: 'Unknown Webhook', code: 10015 });
    let match: RegExpExecArray | null;

    if (req.method === 'GET' && path === '/gateway/bot') {
      if (!authorized) return send(401, { message: '401: Unauthorized', code: 0 });
      return send(200, { url: `${this.url.replace('http', 'ws')}/gateway`, shards: 1, session_start_limit: { total: 1000, remaining: 999, reset_after: 0, max_concurrency: 1 } });
    }
    if ((match = m(/^\/interactions\/(\d+)\/([^/]+)\/callback$/)) && req.method === 'POST') {
      const record = this.interactions.get(match[2]!);
      if (!record || record.id !== match[1]) return send(404, { message: 'Unknown interaction', code: 10062 });
      if (record.callback !== undefined) return send(400, { message: 'Interaction has already been acknowledged.', code: 40060 });
      // Discord's deadline: an interaction not acknowledged within 3 seconds is gone.
      if (Date.now() - record.createdAt > 3000) return send(404, { message: 'Unknown interaction', code: 10062 });
      record.callback = body.type;
      if (body.type === 4 || body.type === 5) record.original = this.newMessage(this.dmChannelOf(record.user.id), body.data ?? {}, files);
      if (body.type === 7 && body.data) this.editSource(record, body.data);
      return send(204);
    }
    if ((match = m(/^\/webhooks\/(\d+)\/([^/]+)\/messages\/@original$/))) {
      const record = match[1] === this.applicationId ? interactionOf(match[2]!) : undefined;
      if (!record) return unknownWebhook();
      if (req.method === 'DELETE') {
        if (record.original) record.original.deleted = true;
        return send(204);
      }
      if (req.method === 'PATCH') {
        // After deferUpdate, the "original" is the message whose button was pressed.
        record.original ??= this.sourceMessage(record);
        if (!record.original) return send(404, { message: 'Unknown Message', code: 10008 });
        if (body?.content !== undefined) {
          record.original.edits.push(body.content);
          record.original.content = body.content;
        }
        if (body?.components !== undefined) record.original.components = body.components;
        if (files.length) record.original.attachments = files.map((f) => ({ filename: f.name, data: f.data }));
        return send(200, this.publicMessage(record.original));
      }
    }
    if ((match = m(/^\/webhooks\/(\d+)\/([^/]+)$/)) && req.method === 'POST') {
      const record = match[1] === this.applicationId ? interactionOf(match[2]!) : undefined;
      if (!record) return unknownWebhook();
      const message = this.newMessage(this.dmChannelOf(record.user.id), body, files);
      record.followUps.push(message);
      return send(200, this.publicMessage(message));
    }
    if ((match = m(/^\/applications\/(\d+)(?:\/guilds\/(\d+))?\/commands$/)) && req.method === 'PUT') {
      if (!authorized) return send(401, { message: '401: Unauthorized', code: 0 });
      const registered = (body as any[]).map((c) => ({ ...c, id: snowflake(), application_id: match![1], version: snowflake() }));
      this.commands.set(match[2] ?? 'global', registered);
      return send(200, registered);
    }
    if (path === '/users/@me/channels' && req.method === 'POST') {
      if (!authorized) return send(401, { message: '401: Unauthorized', code: 0 });
      const id = this.dmChannelOf(body.recipient_id);
      return send(200, { id, type: 1, recipients: [{ id: body.recipient_id, username: 'someone', discriminator: '0', avatar: null }] });
    }
    if ((match = m(/^\/channels\/(\d+)\/messages$/)) && req.method === 'POST') {
      if (!authorized) return send(401, { message: '401: Unauthorized', code: 0 });
      return send(200, this.publicMessage(this.newMessage(match[1]!, body, files)));
    }
    send(404, { message: `emulator: no route for ${req.method} ${path}`, code: 0 });
  }


  private sourceMessage(record: InteractionRecord) {
    const id = this.buttonSources.get(record.token);
    return id ? this.messages.get(id) : undefined;
  }

  private editSource(record: InteractionRecord, data: any) {
    const source = this.sourceMessage(record);
    if (source && data.content !== undefined) {
      source.edits.push(data.content);
      source.content = data.content;
    }
  }

  /** Messages (original replies and follow-ups) the bot showed to a user, oldest first. */
  shownTo(user: EmulatedDiscordUser): SentMessage[] {
    return [...this.messages.values()].filter((m) => m.channel_id === this.dmChannels.get(user.id) && !m.deleted);
  }

  isEphemeral(message: SentMessage) { return (message.flags & EPHEMERAL) !== 0; }

}
