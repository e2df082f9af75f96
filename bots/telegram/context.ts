// What every Telegram feature composer shares: the conversation, the notifier, and how a Reply becomes a message.
import { Markup, TelegramError, type Context, type Telegram } from 'telegraf';
import type { Message } from 'telegraf/types';
import type { Logger } from 'pino';
import type { App } from '../../src/app.ts';
import type { Conversation, IncomingFile, Person, Reply } from '../shared/conversation.ts';
import type { JobNotifier } from '../shared/notifier.ts';

export type TelegramTarget = { chatId: number; messageId: number };

export interface TelegramDeps {
  app: App;
  conversation: Conversation;
  notifier: JobNotifier<TelegramTarget>;
  logger: Logger;
  /** How long to wait for the rest of an album after its last photo arrived. */
  albumWindowMs: number;
}

/** The person behind an update (created on first contact, language from their Telegram client). */
export async function personOf(deps: TelegramDeps, ctx: Context): Promise<Person> {
  const cached = ctx.state.person as Person | undefined;
  if (cached) return cached;
  const from = ctx.from!;
  const person = await deps.conversation.person('telegram', String(from.id), {
    displayName: [from.first_name, from.last_name].filter(Boolean).join(' '),
    locale: from.language_code,
  });
  ctx.state.person = person;
  return person;
}

/** Sends a Reply; a reply that queued a job becomes that job's status message, edited as the job advances. */
export async function sendReply(deps: TelegramDeps, telegram: Telegram, chatId: number, person: Person, reply: Reply): Promise<Message.TextMessage> {
  // Up to three buttons a row, so a list of styles stays readable on a phone.
  const keyboard = reply.buttons?.length
    ? Markup.inlineKeyboard(reply.buttons.map((b) => Markup.button.callback(b.label, b.action)), { columns: 3 })
    : undefined;
  // A note ahead of the status message, which progress edits would overwrite. Best-effort: the job runs anyway.
  if (reply.notice) await telegram.sendMessage(chatId, reply.notice).catch((error: unknown) => deps.logger.warn({ err: error }, 'sending a notice failed'));
  const sent = await telegram.sendMessage(chatId, reply.text, keyboard);
  if (reply.job) await deps.notifier.track(reply.job.id, person.userId, person.locale, { chatId, messageId: sent.message_id }, reply.job.preview);
  return sent;
}

export const replyTo = async (deps: TelegramDeps, ctx: Context, reply: Reply) =>
  sendReply(deps, ctx.telegram, ctx.chat!.id, await personOf(deps, ctx), reply);

type FileMessage = Message.PhotoMessage | Message.DocumentMessage;

export const hasFile = (message: unknown): message is FileMessage =>
  typeof message === 'object' && message !== null && ('photo' in message || 'document' in message);

/** The picture in a photo or document message, downloaded only when asked. */
export function incomingFile(telegram: Telegram, message: FileMessage, name: string): IncomingFile {
  const photo = 'photo' in message ? message.photo.at(-1) : undefined;
  const document = 'document' in message ? message.document : undefined;
  const fileId = photo?.file_id ?? document!.file_id;
  return {
    name: document?.file_name ?? name,
    size: photo?.file_size ?? document?.file_size,
    compressed: photo !== undefined,
    async download() {
      const link = await telegram.getFileLink(fileId);
      const response = await fetch(link);
      if (!response.ok) throw new Error(`file download answered ${response.status}`);
      return Buffer.from(await response.arrayBuffer());
    },
  };
}

/** Rate limits and server trouble pass; a deleted message or a blocked bot does not. */
export const retryableTelegramError = (error: unknown) =>
  !(error instanceof TelegramError) || error.code === 429 || error.code >= 500;
