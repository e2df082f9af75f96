// The Telegram adapter as a good bot: group chats (answer only when addressed, buttons only for their owner, /link and
// /forget in private), chat API errors (429 retry_after, failing "typing", "message is not modified"), the fallback
// for what is not a command, command menus, and a Telegram that is unreachable at start. Real telegraf against the
// Bot API emulator over real Postgres and Redis; no worker is needed for any of it.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { eq, sql } from 'drizzle-orm';
import pino from 'pino';
import { accounts, chatTargets, linkCodes, photos } from '../src/db/schema.ts';
import { createApp } from '../src/app.ts';
import { createLogger } from '../src/logging.ts';
import { commandList, createTelegramBot, type TelegramBot } from '../bots/telegram/bot.ts';
import { TelegramEmulator, type EmulatedChat, type EmulatedUser } from './emulators/telegram.ts';
import { freePort } from './helpers/net.ts';
import { startStack, type Stack } from './helpers/stack.ts';
import { makePhotos } from './helpers/images.ts';

const emulator = new TelegramEmulator();
let stack: Stack;
let telegram: TelegramBot;

const anna: EmulatedUser = { id: 6001, first_name: 'Anna', language_code: 'en' };
const boris: EmulatedUser = { id: 6002, first_name: 'Борис', language_code: 'ru' };
const group: EmulatedChat = { id: -100500, type: 'supergroup', title: 'Friends' };
const bot = '@portrait_test_bot';

before(async () => {
  await emulator.start();
  stack = await startStack({ MIN_TRAINING_PHOTOS: '3', TELEGRAM_BOT_TOKEN: emulator.token, TELEGRAM_API_ROOT: emulator.url, CHAT_EDIT_INTERVAL_MS: '100' }, false);
  telegram = createTelegramBot(stack.app, { albumWindowMs: 300, sweepIntervalMs: 1000 });
  await telegram.start();
});

after(async () => {
  await telegram.stop();
  await stack.close();
  await emulator.stop();
});

const lastMessageId = () => Math.max(0, ...emulator.messages.keys());
const botSays = (chatId: number, pattern: RegExp, since: number, what = String(pattern)) =>
  emulator.waitFor(() => emulator.botMessages(chatId).find((m) => m.message_id > since && pattern.test(m.text ?? m.caption ?? '')), what, 15_000);
/** Lets the bot answer anything still in flight, then returns what it said in `chatId` after `since`. */
const settledSince = async (chatId: number, since: number) => {
  await new Promise((r) => setTimeout(r, 700));
  return emulator.botMessages(chatId).filter((m) => m.message_id > since);
};
const apologies = () => emulator.callsOf('sendMessage').filter((c) => /Something went wrong|что-то пошло не так/.test(c.params.text));
const userId = async (user: EmulatedUser) =>
  (await stack.app.database.db.select().from(accounts).where(eq(accounts.externalId, String(user.id))))[0]?.userId;

describe('Telegram in groups', () => {
  test('answers only when addressed: /cmd@bot, a mention, a reply to the bot', async () => {
    let mark = lastMessageId();
    emulator.sendText(anna, '/help', { chat: group });
    emulator.sendText(anna, 'hello everyone', { chat: group });
    emulator.sendText(anna, '/help@some_other_bot', { chat: group });
    assert.deepEqual(await settledSince(group.id, mark), [], 'nothing addressed to us: silence');

    mark = lastMessageId();
    emulator.sendText(anna, `/help${bot}`, { chat: group });
    const help = await botSays(group.id, /send me 3–20 photos/, mark);

    mark = lastMessageId();
    emulator.sendText(anna, `${bot} what can you do?`, { chat: group });
    await botSays(group.id, /Send \/help/, mark, 'the fallback for a mention');

    mark = lastMessageId();
    emulator.sendText(boris, 'а что ты умеешь?', { chat: group, reply_to_message: help });
    await botSays(group.id, /Отправьте \/help/, mark, 'the fallback for a reply to the bot, in the replier’s language');
  });

  test('/link and /forget answer in private only: a pointer in the group, no code, no buttons', async () => {
    const mark = lastMessageId();
    emulator.sendText(anna, `/link${bot}`, { chat: group });
    const pointer = await botSays(group.id, /in private/, mark);
    assert.equal(pointer.text, 'Let’s do /link in private, so nobody else sees it: write to me at @portrait_test_bot.');
    emulator.sendText(anna, `/forget${bot}`, { chat: group });
    const forget = await botSays(group.id, /\/forget in private/, pointer.message_id);
    assert.equal(forget.reply_markup, undefined, 'no Delete button in a group');
    const id = await userId(anna);
    assert.equal((await stack.app.database.db.select().from(linkCodes).where(eq(linkCodes.userId, id!))).length, 0, 'no link code was issued');
  });

  test('a button pressed by someone else does nothing and tells only them; a double tap is no error', async () => {
    let mark = lastMessageId();
    emulator.sendText(anna, '/forget');
    const question = await botSays(anna.id, /Are you sure\?/, mark);
    assert.equal(question.reply_markup.inline_keyboard[0][0].callback_data, `forget_yes:${anna.id}`);
    const annaUser = await userId(anna);

    const answered = emulator.callsOf('answerCallbackQuery').length;
    emulator.pressButton(boris, question.message_id, 'forget_yes');
    const alert = await emulator.waitFor(() => emulator.callsOf('answerCallbackQuery')[answered], 'the alert to the tapper');
    assert.equal(alert.params.text, 'Эта кнопка — для того, кто спрашивал; для вас она ничего не делает.');
    assert.equal(String(alert.params.show_alert), 'true', 'an alert only the tapper sees');
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(await userId(anna), annaUser, 'the owner’s data is untouched');
    assert.deepEqual(question.edits, [], 'the owner’s message is untouched');

    mark = lastMessageId();
    emulator.pressButton(anna, question.message_id, 'forget_yes');
    await emulator.waitFor(() => /Everything about you is deleted/.test(question.text!), 'the owner’s answer');
    assert.equal(await userId(anna), undefined);
    // A second tap on the same button: the same answer again, which Telegram refuses as "message is not modified".
    emulator.pressButton(anna, question.message_id, 'forget_yes');
    await emulator.waitFor(() => emulator.callsOf('editMessageText').filter((c) => c.params.message_id == question.message_id).length === 2, 'the second edit');
    await settledSince(anna.id, mark);
    assert.deepEqual(apologies(), [], 'no “Something went wrong”');
  });
});

describe('Telegram API errors', () => {
  test('429 with retry_after=1 on a reply: it arrives after about a second, with no apology', async () => {
    const mark = lastMessageId();
    emulator.failNext('sendMessage', { code: 429, retryAfter: 1 });
    const sent = Date.now();
    emulator.sendText(anna, '/help');
    await botSays(anna.id, /send me 3–20 photos/, mark);
    const took = Date.now() - sent;
    assert.ok(took >= 1000 && took < 5000, `arrived after ${took} ms`);
    assert.equal(emulator.callsOf('sendMessage').filter((c) => Number(c.params.chat_id) === anna.id && /send me 3–20/.test(c.params.text)).length, 2, 'tried, waited, tried again');
    assert.deepEqual(apologies(), []);
  });

  test('a failing “typing” indicator does not abort /imagine or a photo upload', async () => {
    let mark = lastMessageId();
    emulator.failNext('sendChatAction', { code: 500 });
    emulator.sendText(anna, '/imagine me as an astronaut');
    assert.match((await botSays(anna.id, /model/, mark)).text!, /no model yet|train/i, '/imagine answered on its merits');

    emulator.sendText(anna, '/train');
    await botSays(anna.id, /You have 0 so far/, mark);
    mark = lastMessageId();
    emulator.failNext('sendChatAction', { code: 429, retryAfter: 30 });
    const [photo] = await makePhotos(1, 90);
    emulator.sendDocument(anna, photo!, 'me.jpg', 'image/jpeg');
    await botSays(anna.id, /me\.jpg: accepted/, mark);
    assert.equal((await stack.app.database.db.select().from(photos).where(eq(photos.userId, (await userId(anna))!))).length, 1);
    assert.deepEqual(apologies(), []);
  });
});

describe('Telegram fallback and menus', () => {
  test('plain text, a sticker, a voice note, an unknown command and /START get a pointer to /help', async () => {
    for (const [send, what] of [
      [() => emulator.sendText(boris, 'привет'), 'text'],
      [() => emulator.sendOther(boris, 'sticker'), 'a sticker'],
      [() => emulator.sendOther(boris, 'voice'), 'a voice note'],
      [() => emulator.sendText(boris, '/paint'), 'an unknown command'],
      [() => emulator.sendText(boris, '/START'), '/START'],
    ] as const) {
      const mark = lastMessageId();
      send();
      const reply = await botSays(boris.id, /\/help/, mark, `an answer to ${what}`);
      assert.equal(reply.text, 'Я не понял. Отправьте /help — там всё, что я умею.', what);
    }
  });

  test('the command menu is registered in English and Russian', () => {
    const en = emulator.commandMenus.get('')!;
    const ru = emulator.commandMenus.get('ru')!;
    assert.deepEqual(en.map((c) => c.command), commandList);
    assert.deepEqual(en.map((c) => c.command), ru.map((c) => c.command));
    assert.equal(en.find((c) => c.command === 'forget')!.description, 'Delete everything about you');
    assert.equal(ru.find((c) => c.command === 'forget')!.description, 'Удалить всё о вас');
    assert.equal(ru.find((c) => c.command === 'styles')!.description, 'Готовые стили — на любом языке');
    assert.equal(new Set(en.map((c) => c.description)).size, en.length, 'each command says what it does, none borrows /help\'s line');
  });
});

describe('Telegram albums, double taps and /forget mid-training', () => {
  const vera: EmulatedUser = { id: 6003, first_name: 'Vera', language_code: 'en' };

  test('an album of 10 is numbered in the order sent, and a repeat names both photos', async () => {
    let mark = lastMessageId();
    emulator.sendText(vera, '/train');
    await botSays(vera.id, /You have 0 so far/, mark);
    const shots = await makePhotos(9, 120);
    // The third photo again in seventh place.
    const album = [...shots.slice(0, 6), shots[2]!, ...shots.slice(6)];
    mark = lastMessageId();
    emulator.sendAlbum(vera, album, { deliverInReverse: true });
    const reply = await botSays(vera.id, /Photos: 9/, mark, 'one answer for the album');
    const lines = reply.text!.split('\n').filter((l) => /^(✅|⚠️|☑️|❌) Photo/.test(l));
    // No face models in this suite: each is accepted unchecked, and says so.
    const accepted = (n: number) => `⚠️ Photo ${n}: accepted, face not checked (this server has no face models installed).`;
    assert.deepEqual(lines, [
      ...[1, 2, 3, 4, 5, 6].map(accepted), '☑️ Photo 7: the same photo as Photo 3; kept once.', ...[8, 9, 10].map(accepted),
    ]);
  });

  test('a double tap on “Train now” gives one status message, and it is the one followed', async () => {
    const withButton = emulator.botMessages(vera.id).at(-1)!;
    const mark = lastMessageId();
    emulator.pressButton(vera, withButton.message_id, 'train_now');
    emulator.pressButton(vera, withButton.message_id, 'train_now');
    await botSays(vera.id, /Training/, mark);
    const said = await settledSince(vera.id, mark);
    const statuses = said.filter((m) => /Training/.test(m.text ?? '') && !/already training/.test(m.text ?? ''));
    assert.equal(statuses.length, 1, `one status message; the bot said ${JSON.stringify(said.map((m) => m.text))}`);
    const [target] = await stack.app.database.db.select().from(chatTargets).where(eq(chatTargets.userId, (await userId(vera))!));
    assert.equal(target!.target.messageId, statuses[0]!.message_id, 'the delivery target is that message');
  });

  test('/forget during a training ends its status message with a clear line', async () => {
    const status = emulator.botMessages(vera.id).find((m) => /Training/.test(m.text ?? '') && !/already/.test(m.text ?? ''))!;
    let mark = lastMessageId();
    emulator.sendText(vera, '/forget');
    const question = await botSays(vera.id, /Are you sure/, mark);
    mark = lastMessageId();
    // The person's row held (FOR NO KEY UPDATE: their jobs' updates pass, deleting the row waits), so /forget's
    // cancels are out while its rows still stand: the window in which the status message ended as a plain cancel.
    const id = (await userId(vera))!;
    let release!: () => void;
    let held!: () => void;
    const released = new Promise<void>((resolve) => { release = resolve; });
    const holding = new Promise<void>((resolve) => { held = resolve; });
    const lock = stack.app.database.db.transaction(async (tx) => {
      await tx.execute(sql`select id from users where id = ${id} for no key update`);
      held();
      await released;
    });
    await holding;
    try {
      emulator.pressButton(vera, question.message_id, 'forget_yes');
      await emulator.waitFor(() => /stopped|cancelled/.test(status.text ?? ''), 'the status message to end', 10_000);
      assert.equal(status.text, '🗑 Training: stopped, because you asked me to forget everything about you.');
    } finally {
      release();
      await lock;
    }
    await emulator.waitFor(() => /Everything about you is deleted/.test(question.text!), 'the forget answer');
  });
});

describe('Telegram unreachable at start', () => {
  test('the adapter keeps retrying with a log line, and answers once Telegram is up', async () => {
    const port = await freePort();
    const late = new TelegramEmulator();
    const lines: Array<Record<string, any>> = [];
    const raw: string[] = [];
    // Its own Redis prefix: this emulator numbers updates from the same start, and seen update ids are kept per prefix.
    // The process logger, as main.ts builds it: the token must never reach a line, though telegraf's errors carry it.
    const config = { ...stack.env.config, queuePrefix: `${stack.env.config.queuePrefix}-late`, logLevel: 'info' as const, telegram: { ...stack.env.config.telegram, token: late.token } };
    const app = await createApp(config, createLogger(config, { write: (line: string) => { raw.push(line); lines.push(JSON.parse(line)); } }));
    const handle = createTelegramBot(app, { telegram: { token: late.token, apiRoot: `http://127.0.0.1:${port}` }, connectRetryMs: 200 });
    try {
      await handle.start();
      await emulator.waitFor(() => lines.filter((l) => l.msg === 'telegram is unreachable; trying again').length >= 2, 'two logged retries', 10_000);
      await late.start(port);
      await handle.connected;
      const user: EmulatedUser = { id: 6100, first_name: 'Late', language_code: 'en' };
      late.sendText(user, '/help');
      await late.waitFor(() => late.botMessages(user.id).find((m) => /send me 3–20 photos/.test(m.text ?? '')), 'the help text', 15_000);
      assert.ok(lines.some((l) => l.msg === 'telegram reachable again'));
      assert.ok(raw.every((line) => !line.includes(late.token)), 'the bot token never reaches the log');
    } finally {
      await handle.stop();
      await app.close();
      await late.stop();
    }
  });
});
