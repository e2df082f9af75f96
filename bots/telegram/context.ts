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

/**
 * Sends a Reply; a reply that queued a job becomes that job's status message, edited as the job advances. Buttons carry
 * the Telegram id of the person they were made for (`action:id`), so in a group nobody else can press them; a style
 * button paints whoever taps it, so it carries none.
 */
export async function sendReply(deps: TelegramDeps, telegram: Telegram, chatId: number, person: Person, reply: Reply, owner?: number): Promise<Message.TextMessage> {
  const data = (action: string) => (owner && !action.startsWith('style:') ? `${action}:${owner}` : action);
  // Up to three buttons a row, so a list of styles stays readable on a phone.
  const keyboard = reply.buttons?.length
    ? Markup.inlineKeyboard(reply.buttons.map((b) => Markup.button.callback(b.label, data(b.action))), { columns: 3 })
    : undefined;
  // A note ahead of the status message, which progress edits would overwrite. Best-effort: the job runs anyway.
  if (reply.notice) await telegram.sendMessage(chatId, reply.notice).catch((error: unknown) => deps.logger.warn({ err: error }, 'sending a notice failed'));
  const sent = await telegram.sendMessage(chatId, reply.text, keyboard);
  if (reply.job) await deps.notifier.track(reply.job.id, person.userId, person.locale, { chatId, messageId: sent.message_id }, reply.job.preview);
  return sent;
}

export const replyTo = async (deps: TelegramDeps, ctx: Context, reply: Reply) =>
  sendReply(deps, ctx.telegram, ctx.chat!.id, await personOf(deps, ctx), reply, ctx.from?.id);

/** Matches a button's callback data: the action, then the id of the person it belongs to. */
export const buttonData = (...actions: string[]) => new RegExp(`^(${actions.join('|')})(?::(\\d+))?$`);

/**
 * Whether the person pressing a button is the one it was made for. Buttons from before owners were recorded count as
 * theirs in a private chat only. Anyone else is told so, privately (an alert only they see), and nothing happens.
 */
export async function pressedByOwner(deps: TelegramDeps, ctx: Context & { match: RegExpExecArray }): Promise<boolean> {
  const owner = ctx.match[2];
  const theirs = owner ? Number(owner) === ctx.from?.id : ctx.chat?.type === 'private';
  if (!theirs) {
    const p = await personOf(deps, ctx);
    await ctx.answerCbQuery(p.t('chat.not_yours'), { show_alert: true }).catch(quietly(deps, 'answerCallbackQuery'));
  }
  return theirs;
}

/** Acknowledges a button press; a late or repeated acknowledgement ("query is too old") must not fail the action. */
export const acknowledge = (deps: TelegramDeps, ctx: Context) => ctx.answerCbQuery().catch(quietly(deps, 'answerCallbackQuery'));

const quietly = (deps: TelegramDeps, method: string) => (error: unknown) => { deps.logger.warn({ err: error, method }, 'a best-effort call failed'); return true; };

/** Edits the message a button sits under; the same text again (a double tap) is no error. */
export async function editPressed(ctx: Context, text: string): Promise<void> {
  try {
    await ctx.editMessageText(text);
  } catch (error) {
    if (error instanceof TelegramError && /message is not modified/.test(error.description)) return;
    throw error;
  }
}

/** /link and /forget happen in private: in a group, a pointer to the bot's private chat instead. */
export async function inPrivate(deps: TelegramDeps, ctx: Context, command: string): Promise<boolean> {
  if (ctx.chat?.type === 'private') return true;
  const p = await personOf(deps, ctx);
  await replyTo(deps, ctx, { text: p.t('chat.private_only', { command, bot: ctx.botInfo.username }) });
  return false;
}

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
