// /train: the photo collection session. Photos and image files are checked as they come; the photos of one album
// arrive as separate updates, so they are gathered for a moment and answered in one message.
import { Composer, type Context, type Telegram } from 'telegraf';
import { message } from 'telegraf/filters';
import type { IncomingFile, Person } from '../../shared/conversation.ts';
import { addPhotos, consent, openTraining, trainNow } from '../../shared/training.ts';
import { acknowledge, buttonData, hasFile, incomingFile, personOf, pressedByOwner, replyTo, sendReply, type TelegramDeps } from '../context.ts';

const messageId = (message: unknown) => (message as { message_id: number }).message_id;

interface Album { person: Person; telegram: Telegram; chatId: number; from?: number; items: Array<{ message: unknown }>; timer?: NodeJS.Timeout }

export function trainFeature(deps: TelegramDeps) {
  const feature = new Composer();
  const albums = new Map<string, Album>();

  const answerPhotos = async (telegram: Telegram, chatId: number, person: Person, files: IncomingFile[], from?: number) => {
    await telegram.sendChatAction(chatId, 'typing');
    await sendReply(deps, telegram, chatId, person, await addPhotos(deps.conversation, person, files), from);
  };

  const flush = (key: string) => {
    const album = albums.get(key);
    if (!album) return;
    albums.delete(key);
    // Numbered in the order the person sent them (updates may be handled out of order).
    album.items.sort((a, b) => messageId(a.message) - messageId(b.message));
    const files = album.items.flatMap(({ message }, n) =>
      hasFile(message) ? [incomingFile(album.telegram, message, album.person.t('photos.photo_n', { n: n + 1 }))] : []);
    // Runs outside any update handler (the album's updates were all answered already), so errors are ours to log.
    answerPhotos(album.telegram, album.chatId, album.person, files, album.from).catch((error: unknown) => deps.logger.error({ err: error }, 'album failed'));
  };

  feature.command('train', async (ctx) => replyTo(deps, ctx, await openTraining(deps.conversation, await personOf(deps, ctx))));

  feature.on([message('photo'), message('document')], async (ctx: Context) => {
    const msg = ctx.message!;
    const person = await personOf(deps, ctx);
    const groupId = 'media_group_id' in msg ? msg.media_group_id : undefined;
    if (!groupId) {
      await answerPhotos(ctx.telegram, ctx.chat!.id, person, [incomingFile(ctx.telegram, msg as never, person.t('photos.photo'))], ctx.from?.id);
      return;
    }
    const key = `${ctx.chat!.id}:${groupId}`;
    const album = albums.get(key) ?? { person, telegram: ctx.telegram, chatId: ctx.chat!.id, from: ctx.from?.id, items: [] };
    albums.set(key, album);
    album.items.push({ message: msg });
    clearTimeout(album.timer);
    album.timer = setTimeout(() => flush(key), deps.albumWindowMs);
  });

  feature.action(buttonData('train_now', 'consent_yes'), async (ctx) => {
    if (!(await pressedByOwner(deps, ctx))) return;
    await acknowledge(deps, ctx);
    const person = await personOf(deps, ctx);
    await replyTo(deps, ctx, ctx.match[1] === 'consent_yes' ? await consent(deps.conversation, person) : await trainNow(deps.conversation, person));
  });

  return feature;
}
