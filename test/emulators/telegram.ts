// A local Telegram Bot API: the subset of methods our bot calls, over real HTTP, so the real telegraf client runs
// against it (`apiRoot`). It keeps chats and messages like Telegram does (message ids, edits, "message is not
// modified"), serves uploaded files under /file/bot<token>/, supports long polling and webhook delivery, and records
// every call for assertions.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';

export interface ApiCall { method: string; params: Record<string, any>; files: Record<string, Buffer>; at: number }
export interface EmulatedUser { id: number; first_name: string; language_code?: string; username?: string }
export interface EmulatedChat { id: number; type: 'private' | 'group' | 'supergroup'; title?: string }
/** A failure the emulator answers instead of a call: a Bot API error, or a dropped connection (a network failure). */
export interface Fault { code?: number; description?: string; retryAfter?: number; drop?: boolean }
/** Runs before a call is handled; may wait, or answer with a fault instead. */
export type CallHook = (call: ApiCall) => Promise<Fault | void> | Fault | void;
export interface StoredMessage {
  message_id: number;
  chat: EmulatedChat;
  from: Record<string, unknown>;
  date: number;
  text?: string;
  caption?: string;
  photo?: Array<Record<string, unknown>>;
  document?: Record<string, unknown>;
  reply_markup?: any;
  media_group_id?: string;
  entities?: any[];
  caption_entities?: any[];
  reply_to_message?: StoredMessage;
  edits: string[];
}

const MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024;

class ApiError extends Error {
  constructor(readonly code: number, description: string, readonly parameters?: Record<string, unknown>) {
    super(description);
  }
}

export class TelegramEmulator {
  readonly token = `${100000 + Math.floor(Math.random() * 899999)}:TEST${randomBytes(12).toString('hex')}`;
  readonly bot = { id: Number(this.token.split(':')[0]), is_bot: true, first_name: 'Portrait', username: 'portrait_test_bot' };
  readonly calls: ApiCall[] = [];
  private server?: Server;
  private nextUpdateId = 1000;
  private nextMessageId = 1;
  private nextFileId = 1;
  private readonly pending: any[] = [];
  private readonly waiters = new Set<() => void>();
  private readonly files = new Map<string, { data: Buffer; path: string; uniqueId: string }>();
  readonly messages = new Map<number, StoredMessage>();
  webhook?: { url: string; secret?: string };
  /** Faults to answer, per method, in order (each used once). */
  private readonly faults = new Map<string, Fault[]>();
  private readonly hooks = new Map<string, CallHook>();
  /** setMyCommands calls by language code ('' for the default). */
  readonly commandMenus = new Map<string, Array<{ command: string; description: string }>>();
  /** Deliveries to the webhook that did not get 200 (Telegram would retry them). */
  readonly webhookFailures: number[] = [];
  url = '';

  async start(port = 0): Promise<string> {
    this.server = createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((resolve) => this.server!.listen(port, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this.url;
  }

  async stop(): Promise<void> {
    for (const wake of this.waiters) wake();
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()) ?? resolve());
  }

  // ---- what a person does -------------------------------------------------------------------------------------

  sendText(user: EmulatedUser, text: string, extra: Partial<StoredMessage> = {}) {
    const entities: any[] = /^\/\w+/.test(text) ? [{ type: 'bot_command', offset: 0, length: /^\/[\w@]+/.exec(text)![0].length }] : [];
    // @mentions, as Telegram marks them.
    for (const m of text.matchAll(/(?<![\w/])@\w+/g)) entities.push({ type: 'mention', offset: m.index, length: m[0].length });
    return this.userMessage(user, { text, entities: entities.length ? entities : undefined, ...extra });
  }

  /** A message with no text or picture: a sticker or a voice note. */
  sendOther(user: EmulatedUser, kind: 'sticker' | 'voice', extra: Partial<StoredMessage> = {}) {
    const file = this.storeFile(Buffer.from('x'), kind, kind === 'voice' ? 'ogg' : 'webp');
    const content = kind === 'sticker'
      ? { sticker: { file_id: file.id, file_unique_id: file.uniqueId, type: 'regular', width: 512, height: 512, is_animated: false, is_video: false, emoji: '🙂' } }
      : { voice: { file_id: file.id, file_unique_id: file.uniqueId, duration: 2, mime_type: 'audio/ogg' } };
    return this.userMessage(user, { ...(content as object), ...extra });
  }

  /** The next `times` calls of `method` answer `fault` instead of being handled. */
  failNext(method: string, fault: Fault, times = 1) {
    this.faults.set(method, [...(this.faults.get(method) ?? []), ...Array.from({ length: times }, () => fault)]);
  }

  /** Runs `hook` before every call of `method` (undefined removes it). */
  onCall(method: string, hook: CallHook | undefined) {
    if (hook) this.hooks.set(method, hook);
    else this.hooks.delete(method);
  }

  /** A compressed photo, as Telegram delivers it: several sizes of one picture (we store the one we were given). */
  sendPhoto(user: EmulatedUser, data: Buffer, options: { caption?: string; mediaGroupId?: string; replyTo?: number } = {}) {
    const file = this.storeFile(data, 'photos', 'jpg');
    const photo = [
      { file_id: `${file.id}-thumb`, file_unique_id: `${file.uniqueId}t`, width: 90, height: 90, file_size: 1000 },
      { file_id: file.id, file_unique_id: file.uniqueId, width: 1280, height: 1280, file_size: data.length },
    ];
    const caption = options.caption;
    const caption_entities = caption && caption.startsWith('/') ? [{ type: 'bot_command', offset: 0, length: /^\/[\w@]+/.exec(caption)![0].length }] : undefined;
    return this.userMessage(user, {
      photo,
      caption,
      caption_entities,
      media_group_id: options.mediaGroupId,
      reply_to_message: options.replyTo ? this.messages.get(options.replyTo) : undefined,
    });
  }

  sendDocument(user: EmulatedUser, data: Buffer, fileName: string, mimeType: string, options: { mediaGroupId?: string; size?: number } = {}) {
    const file = this.storeFile(data, 'documents', fileName.split('.').pop() ?? 'dat');
    const document = { file_id: file.id, file_unique_id: file.uniqueId, file_name: fileName, mime_type: mimeType, file_size: options.size ?? data.length };
    return this.userMessage(user, { document, media_group_id: options.mediaGroupId });
  }

  /**
   * Sends `photos` as one album: one update per item, sharing a media_group_id, as Telegram does. `deliverInReverse`
   * hands the updates over last first (message ids still count up in the order sent), as concurrent webhook deliveries may.
   */
  sendAlbum(user: EmulatedUser, photos: Buffer[], options: { deliverInReverse?: boolean } = {}) {
    const mediaGroupId = String(Date.now()) + randomBytes(3).toString('hex');
    if (!options.deliverInReverse) return photos.map((data) => this.sendPhoto(user, data, { mediaGroupId }));
    this.holding = [];
    const updates = photos.map((data) => this.sendPhoto(user, data, { mediaGroupId }));
    const held = this.holding.reverse();
    this.holding = undefined;
    for (const update of held) this.redeliver(update);
    return updates;
  }

  /** While set, new updates are kept here instead of being delivered. */
  private holding?: Array<{ update_id: number }>;

  pressButton(user: EmulatedUser, messageId: number, data: string) {
    // A button's callback_data as the bot set it (it may carry more than the action).
    data = (this.messages.get(messageId)?.reply_markup?.inline_keyboard?.flat() ?? []).find((b: any) => b.callback_data?.split(':')[0] === data)?.callback_data ?? data;
    const message = this.messages.get(messageId);
    if (!message) throw new Error(`no message ${messageId}`);
    return this.pushUpdate({
      callback_query: { id: randomBytes(8).toString('hex'), from: user, message: this.publicMessage(message), chat_instance: '1', data },
    });
  }

  /** Queues one update for getUpdates, or posts it to the webhook when one is set. */
  pushUpdate(body: Record<string, unknown>): any {
    const update = { update_id: this.nextUpdateId++, ...body };
    if (this.holding) this.holding.push(update);
    else this.redeliver(update);
    return update;
  }

  /** Delivers an update that was already delivered, unchanged (same update_id), as Telegram may after a timeout. */
  redeliver(update: { update_id: number }) {
    if (this.webhook) void this.postToWebhook(update);
    else this.pending.push(update);
    for (const wake of this.waiters) wake();
  }

  // ---- what tests look at -------------------------------------------------------------------------------------

  callsOf(method: string) { return this.calls.filter((c) => c.method === method); }

  /** Messages the bot sent to a chat, oldest first (text as it is now, after edits). */
  botMessages(chatId: number) {
    return [...this.messages.values()].filter((m) => m.chat.id === chatId && m.from.id === this.bot.id);
  }

  async waitFor<T>(find: () => T | undefined | false, what: string, timeoutMs = 60_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = find();
      if (found) return found;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last calls: ${JSON.stringify(this.calls.slice(-5).map((c) => [c.method, c.params.text ?? c.params.caption]))}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  fileBytes(fileId: string) { return this.files.get(fileId)?.data; }

  // ---- internals ----------------------------------------------------------------------------------------------

  private storeFile(data: Buffer, folder: string, ext: string) {
    const id = `F${this.nextFileId++}${randomBytes(6).toString('hex')}`;
    const uniqueId = randomBytes(5).toString('hex');
    this.files.set(id, { data, path: `${folder}/file_${this.nextFileId}.${ext}`, uniqueId });
    return { id, uniqueId };
  }

  private userMessage(user: EmulatedUser, content: Partial<StoredMessage>) {
    const message: StoredMessage = {
      message_id: this.nextMessageId++,
      chat: content.chat ?? { id: user.id, type: 'private' },
      from: { ...user, is_bot: false },
      date: Math.floor(Date.now() / 1000),
      edits: [],
      ...Object.fromEntries(Object.entries(content).filter(([, v]) => v !== undefined)),
    };
    this.messages.set(message.message_id, message);
    return this.pushUpdate({ message: this.publicMessage(message) });
  }

  private publicMessage(message: StoredMessage): Record<string, unknown> {
    const { edits: _edits, ...rest } = message;
    return rest.reply_to_message ? { ...rest, reply_to_message: this.publicMessage(rest.reply_to_message) } : rest;
  }

  private readonly chats = new Map<number, EmulatedChat>();

  private botMessage(chatId: number, content: Partial<StoredMessage>): StoredMessage {
    const message: StoredMessage = {
      message_id: this.nextMessageId++,
      chat: this.chats.get(chatId) ?? { id: chatId, type: chatId < 0 ? 'group' : 'private' },
      from: this.bot,
      date: Math.floor(Date.now() / 1000),
      edits: [],
      ...content,
    };
    this.messages.set(message.message_id, message);
    return message;
  }

  private async postToWebhook(update: any) {
    const response = await fetch(this.webhook!.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(this.webhook!.secret ? { 'x-telegram-bot-api-secret-token': this.webhook!.secret } : {}) },
      body: JSON.stringify(update),
    }).catch(() => undefined);
    if (response?.status !== 200) this.webhookFailures.push(update.update_id);
    await response?.arrayBuffer().catch(() => undefined);
  }

  private async handle(req: IncomingMessage, res: ServerResponse) {
    const url = new URL(req.url ?? '/', this.url);
    const send = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    const fileMatch = /^\/file\/bot([^/]+)\/(.+)$/.exec(url.pathname);
    if (fileMatch) {
      const file = fileMatch[1] === this.token ? [...this.files.values()].find((f) => f.path === fileMatch[2]) : undefined;
      if (!file) return send(404, { ok: false, error_code: 404, description: 'Not Found' });
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': file.data.length });
      return res.end(file.data);
    }
    const match = /^\/bot([^/]+)\/(\w+)$/.exec(url.pathname);
    if (!match || match[1] !== this.token) return send(401, { ok: false, error_code: 401, description: 'Unauthorized' });
    const method = match[2]!;
    let params: Record<string, any> = Object.fromEntries(url.searchParams);
    const files: Record<string, Buffer> = {};
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);
    const type = req.headers['content-type'] ?? '';
    if (type.startsWith('application/json') && body.length) params = { ...params, ...JSON.parse(body.toString('utf8')) };
    if (type.startsWith('multipart/form-data')) {
      const form = await new Response(body, { headers: { 'content-type': type } }).formData();
      for (const [name, value] of form.entries()) {
        if (typeof value === 'string') params[name] = /^[[{]/.test(value) ? JSON.parse(value) : value;
        else files[name] = Buffer.from(await value.arrayBuffer());
      }
    }
    const call = { method, params, files, at: Date.now() };
    this.calls.push(call);
    const fault = (await this.hooks.get(method)?.(call)) ?? this.faults.get(method)?.shift();
    if (fault?.drop) {
      req.socket.destroy();
      return;
    }
    if (fault) {
      const parameters = fault.retryAfter !== undefined ? { retry_after: fault.retryAfter } : undefined;
      const description = fault.description ?? (fault.code === 429 ? `Too Many Requests: retry after ${fault.retryAfter}` : 'Internal Server Error');
      return send(fault.code ?? 500, { ok: false, error_code: fault.code ?? 500, description, parameters });
    }
    try {
      const result = await this.call(method, params, files, req);
      send(200, { ok: true, result });
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      send(error.code, { ok: false, error_code: error.code, description: error.message, parameters: error.parameters });
    }
  }

  private async call(method: string, p: Record<string, any>, files: Record<string, Buffer>, req: IncomingMessage): Promise<unknown> {
    const chatId = Number(p.chat_id);
    const markup = (value: unknown) => (typeof value === 'string' ? JSON.parse(value) : value);
    // A photo is an uploaded part (named by its field, or by attach://name inside an album) or a known file_id.
    const photoOf = (value: unknown, attached: Record<string, Buffer>, field?: string) => {
      const name = typeof value === 'string' && value.startsWith('attach://') ? value.slice(9) : undefined;
      const data = (field ? attached[field] : undefined) ?? (name ? attached[name] : typeof value === 'string' ? this.files.get(value)?.data : undefined);
      if (!data) throw new ApiError(400, 'Bad Request: there is no photo in the request');
      const file = this.storeFile(data, 'photos', 'jpg');
      return [{ file_id: file.id, file_unique_id: file.uniqueId, width: 512, height: 512, file_size: data.length }];
    };
    const documentOf = (value: unknown, attached: Record<string, Buffer>, field?: string) => {
      const name = typeof value === 'string' && value.startsWith('attach://') ? value.slice(9) : undefined;
      const data = (field ? attached[field] : undefined) ?? (name ? attached[name] : undefined);
      if (!data) throw new ApiError(400, 'Bad Request: there is no document in the request');
      const file = this.storeFile(data, 'documents', 'png');
      return { file_id: file.id, file_unique_id: file.uniqueId, file_name: name ?? 'file', file_size: data.length };
    };
    switch (method) {
      case 'getMe':
        return this.bot;
      case 'deleteWebhook':
        this.webhook = undefined;
        return true;
      case 'setWebhook':
        this.webhook = { url: p.url, secret: p.secret_token };
        return true;
      case 'setMyCommands': {
        const commands = typeof p.commands === 'string' ? JSON.parse(p.commands) : p.commands;
        this.commandMenus.set(p.language_code ?? '', commands);
        return true;
      }
      case 'getUpdates': {
        if (this.webhook) throw new ApiError(409, "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first");
        const offset = Number(p.offset ?? 0);
        // Confirmed updates (id < offset) are gone for good.
        while (this.pending.length && this.pending[0].update_id < offset) this.pending.shift();
        if (this.pending.length === 0 && Number(p.timeout ?? 0) > 0) {
          await new Promise<void>((resolve) => {
            const wake = () => { this.waiters.delete(wake); clearTimeout(timer); resolve(); };
            const timer = setTimeout(wake, Math.min(Number(p.timeout), 50) * 1000);
            this.waiters.add(wake);
            req.on('close', wake);
          });
        }
        return this.pending.filter((u) => u.update_id >= offset).slice(0, Number(p.limit ?? 100));
      }
      case 'sendMessage': {
        if (!p.text) throw new ApiError(400, 'Bad Request: message text is empty');
        if (String(p.text).length > 4096) throw new ApiError(400, 'Bad Request: message is too long');
        return this.publicMessage(this.botMessage(chatId, { text: p.text, reply_markup: markup(p.reply_markup) }));
      }
      case 'editMessageText': {
        const message = this.messages.get(Number(p.message_id));
        if (!message || message.chat.id !== chatId) throw new ApiError(400, 'Bad Request: message to edit not found');
        const replyMarkup = markup(p.reply_markup);
        if (message.text === p.text && JSON.stringify(message.reply_markup) === JSON.stringify(replyMarkup)) {
          throw new ApiError(400, 'Bad Request: message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message');
        }
        message.edits.push(p.text);
        message.text = p.text;
        message.reply_markup = replyMarkup;
        return this.publicMessage(message);
      }
      case 'sendPhoto':
        return this.publicMessage(this.botMessage(chatId, { photo: photoOf(p.photo, files, 'photo'), caption: p.caption, reply_to_message: this.messages.get(Number(p.reply_parameters?.message_id)) }));
      case 'sendMediaGroup': {
        const media = (typeof p.media === 'string' ? JSON.parse(p.media) : p.media) as Array<{ type: string; media: string; caption?: string }>;
        if (media.length < 2 || media.length > 10) throw new ApiError(400, 'Bad Request: wrong number of media in the album (2–10)');
        const groupId = randomBytes(6).toString('hex');
        const replyTo = this.messages.get(Number(p.reply_parameters?.message_id));
        return media.map((item) => this.publicMessage(this.botMessage(chatId, {
          ...(item.type === 'document' ? { document: documentOf(item.media, files) } : { photo: photoOf(item.media, files) }),
          caption: item.caption, media_group_id: groupId, reply_to_message: replyTo,
        })));
      }
      case 'sendDocument':
        return this.publicMessage(this.botMessage(chatId, { document: documentOf(p.document, files, 'document'), caption: p.caption, reply_to_message: this.messages.get(Number(p.reply_parameters?.message_id)) }));
      case 'sendChatAction':
        return true;
      case 'answerCallbackQuery':
        return true;
      case 'deleteMessage': {
        if (!this.messages.delete(Number(p.message_id))) throw new ApiError(400, 'Bad Request: message to delete not found');
        return true;
      }
      case 'getFile': {
        const file = this.files.get(String(p.file_id));
        if (!file) throw new ApiError(400, 'Bad Request: invalid file_id');
        if (file.data.length > MAX_DOWNLOAD_BYTES) throw new ApiError(400, 'Bad Request: file is too big');
        return { file_id: p.file_id, file_unique_id: file.uniqueId, file_size: file.data.length, file_path: file.path };
      }
      default:
        throw new ApiError(404, 'Not Found: method not found');
    }
  }
}
