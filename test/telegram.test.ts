// The Telegram adapter end to end: the real telegraf client talks HTTP to a local Bot API emulator, over the real
// Postgres, Redis, worker and tiny engine.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { eq } from 'drizzle-orm';
import sharp from 'sharp';
import { accounts, adapters, generations, jobs, photos } from '../src/db/schema.ts';
import { createTelegramBot, type TelegramBot } from '../bots/telegram/bot.ts';
import { Conversation } from '../bots/shared/conversation.ts';
import { link } from '../bots/shared/account.ts';
import { status as statusReply } from '../bots/shared/status.ts';
import { TelegramEmulator, type EmulatedUser } from './emulators/telegram.ts';
import { freePort } from './helpers/net.ts';
import { startStack, type Stack } from './helpers/stack.ts';
import { badUploads, makePhotos, makeSkeleton } from './helpers/images.ts';

const emulator = new TelegramEmulator();
let stack: Stack;
let telegram: TelegramBot;

const anna: EmulatedUser = { id: 5001, first_name: 'Anna', language_code: 'en' };
const boris: EmulatedUser = { id: 5002, first_name: 'Борис', language_code: 'ru' };

before(async () => {
  await emulator.start();
  stack = await startStack({
    MIN_TRAINING_PHOTOS: '3',
    TRAIN_MAX_STEPS: '4',
    TELEGRAM_BOT_TOKEN: emulator.token,
    TELEGRAM_API_ROOT: emulator.url,
    CHAT_EDIT_INTERVAL_MS: '100',
    LIMIT_GENERATIONS_PER_HOUR: '2',
    LIMIT_ACTIVE_JOBS: '2',
  });
  telegram = createTelegramBot(stack.app, { albumWindowMs: 300, sweepIntervalMs: 1000 });
  await telegram.start();
});

after(async () => {
  await telegram.stop();
  await stack.close();
  await emulator.stop();
});

/** The bot's next message to `user` after `since` (a message id), matching `pattern`. */
const botSays = (user: EmulatedUser, pattern: RegExp, since = 0, what = String(pattern)) =>
  emulator.waitFor(() => emulator.botMessages(user.id).find((m) => m.message_id > since && pattern.test(m.text ?? m.caption ?? '')), what);

const lastMessageId = () => Math.max(0, ...emulator.messages.keys());
const userId = async (user: EmulatedUser) => {
  const [row] = await stack.app.database.db.select().from(accounts).where(eq(accounts.externalId, String(user.id)));
  return row?.userId;
};

describe('Telegram', () => {
  test('update_ids count per bot: another token on the same Redis is not taken for repeats', async () => {
    // Fresh emulators number their updates from the same id as the one above, whose bot has claimed those ids here.
    const first = new TelegramEmulator();
    const second = new TelegramEmulator();
    await first.start();
    await second.start();
    const bots = [first, second].map((e) => createTelegramBot(stack.app, { telegram: { token: e.token, apiRoot: e.url } }));
    try {
      for (const bot of bots) await bot.start();
      const cleo: EmulatedUser = { id: 5099, first_name: 'Cleo', language_code: 'en' };
      const updates = [first.sendText(cleo, '/start'), second.sendText(cleo, '/start')];
      assert.equal(updates[0].update_id, updates[1].update_id);
      for (const e of [first, second]) {
        await e.waitFor(() => e.botMessages(cleo.id).find((m) => /send me 3–20 photos/.test(m.text ?? '')), 'the help text');
      }
    } finally {
      for (const bot of bots) await bot.stop();
      await first.stop();
      await second.stop();
    }
  });

  test('/start answers with the help text in the person’s language', async () => {
    const mark = lastMessageId();
    emulator.sendText(anna, '/start');
    emulator.sendText(boris, '/start');
    assert.match((await botSays(anna, /train/, mark)).text!, /send me 3–20 photos of yourself/);
    assert.match((await botSays(boris, /train/, mark)).text!, /пришлите 3–20 своих фото/);
    assert.match(emulator.botMessages(anna.id).at(-1)!.text!, /noise/, 'the tiny engine is named as such');
    assert.match(emulator.botMessages(anna.id).at(-1)!.text!, /Photos can also be sent as files \(uncompressed\)/, '/help says files are taken');
  });

  test('/train: an album, a single file and a bad file, then “Train now” → progress → ready', { timeout: 120_000 }, async () => {
    let mark = lastMessageId();
    emulator.sendText(anna, '/train');
    assert.match((await botSays(anna, /You have 0 so far/, mark)).text!, /Files are better than photos/);

    mark = lastMessageId();
    const [a, b, c] = await makePhotos(3, 10);
    emulator.sendAlbum(anna, [a!, b!]);
    const albumReply = await botSays(anna, /Photos: 2/, mark, 'one answer for the whole album');
    assert.match(albumReply.text!, /Photo 1: accepted[\s\S]*Photo 2: accepted/);
    assert.match(albumReply.text!, /send photos as files/, 'compressed photos get the files tip once');
    assert.match(albumReply.text!, /Send 1 more/);
    assert.doesNotMatch(albumReply.text!, /Your set|Before training|Expressions/, 'no coverage summary without the face models');
    assert.equal(emulator.botMessages(anna.id).filter((m) => m.message_id > mark).length, 1, 'an album is answered once, not per photo');

    mark = lastMessageId();
    emulator.sendDocument(anna, (await badUploads()).textAsJpeg, 'notes.jpg', 'image/jpeg');
    const badReply = await botSays(anna, /notes\.jpg/, mark);
    assert.match(badReply.text!, /❌ notes\.jpg: this file is not a picture: it looks like text\./, 'the chat names what the file looks like');
    assert.equal(badReply.reply_markup, undefined, 'no Train button below the minimum');

    mark = lastMessageId();
    emulator.sendDocument(anna, c!, 'me.jpg', 'image/jpeg');
    const enough = await botSays(anna, /me\.jpg: accepted/, mark);
    assert.match(enough.text!, /⚠️ me\.jpg: accepted, face not checked \(this server has no face models installed\)/, 'no face models here: said, not hidden');
    assert.match(enough.text!, /Photos: 3/);
    assert.doesNotMatch(enough.text!, /as files/, 'the tip is given once per session');
    const button = enough.reply_markup.inline_keyboard[0][0];
    assert.deepEqual([button.text, button.callback_data], ['Train now', `train_now:${anna.id}`], 'the button names the person it is for');

    mark = lastMessageId();
    emulator.pressButton(anna, enough.message_id, 'train_now');
    const status = await botSays(anna, /Training/, mark, 'the training status message');
    const ready = await emulator.waitFor(() => /version 1\) is ready/.test(status.text!) && status, 'the status message to say ready', 120_000);
    assert.equal(emulator.botMessages(anna.id).filter((m) => m.message_id > mark && !m.photo).length, 1, 'progress edits one message, never posts new ones');
    assert.ok(ready.edits.length >= 1);
    // Then the validation samples arrive as one album, captioned with the likeness (not measured without face models).
    const samples = await emulator.waitFor(() => {
      const album = emulator.botMessages(anna.id).filter((m) => m.message_id > mark && m.photo);
      return album.length === stack.env.config.likeness.samples && album;
    }, 'the sample album');
    assert.match(samples[0]!.caption!, /Sample portraits from your new model \(likeness is not measured here/);
    for (const m of samples) assert.doesNotMatch(m.caption ?? '', /sks/i, 'the internal prompt is never shown');
    assert.equal(new Set(samples.map((m) => m.media_group_id)).size, 1, 'one album');
    const [adapter] = await stack.app.database.db.select().from(adapters).where(eq(adapters.userId, (await userId(anna))!));
    assert.equal(adapter!.status, 'ready');
    assert.equal(emulator.callsOf('answerCallbackQuery').length, 1);
  });

  test('/imagine: queued → done, the portrait arrives as a photo; refusals say why', { timeout: 180_000 }, async () => {
    let mark = lastMessageId();
    emulator.sendText(anna, `/imagine ${'very '.repeat(120)}long`);
    assert.match((await botSays(anna, /characters/, mark)).text!, /That prompt is 604 characters; the limit is 500/);

    mark = lastMessageId();
    emulator.sendText(anna, '/imagine me as an astronaut');
    const status = await botSays(anna, /Portrait/, mark);
    const photo = await emulator.waitFor(() => emulator.botMessages(anna.id).find((m) => m.message_id > mark && m.photo), 'the portrait', 150_000);
    const [generation] = await stack.app.database.db.select().from(generations).where(eq(generations.kind, 'imagine'));
    // The person's words, then what was painted with the training token read as "you": never "sks person".
    assert.equal(photo.caption, `“me as an astronaut” · seed ${generation!.seed}\nPainted from: you as an astronaut`);
    assert.equal(generation!.enginePrompt, 'sks person as an astronaut');
    await emulator.waitFor(() => status.text === '✅ Portrait done.', 'the status to say done');
    const sent = emulator.callsOf('sendPhoto').at(-1)!;
    const meta = await sharp(sent.files.photo!).metadata();
    assert.equal(meta.format, 'png');
    assert.equal(Number(sent.params.reply_parameters.message_id), status.message_id, 'the portrait answers its status message');
    // Telegram recompresses photos: the original PNG comes as a file too, byte for byte.
    const document = emulator.callsOf('sendDocument').at(-1)!;
    assert.equal(document.params.caption, 'The same as files: the original PNGs, uncompressed.');
    assert.deepEqual(document.files.document, await stack.app.store.get(generation!.outputKeys[0]!));
  });

  test('/pose: a captioned photo and a reply to a photo; the hourly limit refuses the third picture', { timeout: 180_000 }, async () => {
    let mark = lastMessageId();
    emulator.sendText(anna, '/pose');
    assert.match((await botSays(anna, /caption \/pose/, mark)).text!, /reply \/pose to a photo/);

    mark = lastMessageId();
    emulator.sendPhoto(anna, await makeSkeleton(), { caption: '/pose dancing' });
    const status = await botSays(anna, /Pose portrait/, mark);
    await emulator.waitFor(() => status.text === '✅ Pose portrait done.', 'the pose to finish', 150_000);
    const photo = emulator.botMessages(anna.id).find((m) => m.message_id > mark && m.photo);
    assert.match(photo!.caption!, /^“dancing” · seed \d+\nPainted from: a photo of you, dancing$/);
    assert.equal(emulator.botMessages(anna.id).filter((m) => m.message_id > mark && m.photo).length, 1, 'no skeleton preview without the pose models');

    // Two pictures this hour already (the imagine and this pose): the limit is 2.
    const reference = emulator.sendPhoto(anna, await makeSkeleton(384));
    mark = lastMessageId();
    emulator.sendText(anna, '/pose waving', { reply_to_message: emulator.messages.get(reference.message.message_id) });
    const refused = await botSays(anna, /hourly limit/, mark);
    assert.match(refused.text!, /You have made 2 pictures in the last hour, the hourly limit\. Try again in \d+ min\./);
  });

  test('a duplicated update is answered once', async () => {
    const mark = lastMessageId();
    const before = emulator.callsOf('sendMessage').length;
    emulator.redeliver(emulator.sendText(anna, '/status'));
    await botSays(anna, /Photos: 3/, mark);
    await new Promise((r) => setTimeout(r, 500));
    const replies = emulator.callsOf('sendMessage').slice(before).filter((c) => /Photos: 3/.test(c.params.text));
    assert.equal(replies.length, 1);
    assert.match(replies[0]!.params.text, /Model: version 1, ready/);
  });

  test('/cancel during training stops it and says so', { timeout: 120_000 }, async () => {
    // Long enough to still be running when /cancel arrives; the config object is the one the worker reads.
    stack.app.config.training.maxSteps = 5000;
    let mark = lastMessageId();
    emulator.sendText(boris, '/train');
    await botSays(boris, /Сейчас у вас 0/, mark);
    for (const [i, photo] of (await makePhotos(3, 40)).entries()) {
      mark = lastMessageId();
      emulator.sendDocument(boris, photo, `b${i}.png`, 'image/png');
      await botSays(boris, new RegExp(`b${i}\\.png: принято`), mark);
    }
    const withButton = emulator.botMessages(boris.id).at(-1)!;
    mark = lastMessageId();
    emulator.pressButton(boris, withButton.message_id, 'train_now');
    const status = await botSays(boris, /Обучение|Обучаю/, mark);
    await emulator.waitFor(() => /шаг \d+ из 5000/.test(status.text!), 'training progress in the status message', 90_000);

    mark = lastMessageId();
    emulator.sendText(boris, '/cancel');
    assert.match((await botSays(boris, /Отменено/, mark)).text!, /Отменено: Обучение/);
    await emulator.waitFor(() => status.text === '🚫 Обучение: отменено.', 'the status message to say cancelled', 30_000);
    const [job] = await stack.app.database.db.select().from(jobs).where(eq(jobs.userId, (await userId(boris))!));
    assert.equal(job!.status, 'cancelled');
    stack.app.config.training.maxSteps = 4;
  });

  test('/link: a code from Telegram joins a Discord account to the same user', async () => {
    let mark = lastMessageId();
    emulator.sendText(anna, '/link');
    const issued = await botSays(anna, /link code/, mark);
    const code = /code: (\S+)/.exec(issued.text!)![1]!;
    // The Discord side of the conversation (test/discord.test.ts drives the real discord.js adapter).
    const conversation = new Conversation(stack.app);
    const discordPerson = await conversation.person('discord', '900000000000000001', { locale: 'en-US' });
    assert.match((await link(conversation, discordPerson, code.toLowerCase())).text, /Linked/);
    const after = await conversation.person('discord', '900000000000000001');
    assert.equal(after.userId, await userId(anna), 'the Discord account now belongs to Anna’s user');
    assert.match((await statusReply(conversation, after)).text, /Model: version 1, ready/);
    assert.match((await link(conversation, after, code)).text, /wrong or has expired/, 'a code works once');

    mark = lastMessageId();
    emulator.sendText(anna, '/lang ru');
    assert.equal((await botSays(anna, /Язык/, mark)).text, 'Язык: русский.');
    assert.match((await statusReply(conversation, await conversation.person('discord', '900000000000000001'))).text, /Модель: версия 1/, 'the language is per person, on every platform');
  });

  test('/forget asks first, then deletes every row and file', async () => {
    const id = (await userId(anna))!;
    let mark = lastMessageId();
    emulator.sendText(anna, '/forget');
    const question = await botSays(anna, /Удалить\?/, mark);
    assert.deepEqual(question.reply_markup.inline_keyboard[0].map((b: any) => b.callback_data), [`forget_yes:${anna.id}`, `forget_no:${anna.id}`]);
    mark = lastMessageId();
    emulator.pressButton(anna, question.message_id, 'forget_yes');
    await emulator.waitFor(() => /Всё о вас удалено: 3 фотографии, 1 модель, 2 картинки\./.test(question.text!) && question, 'the question to become the answer');
    const db = stack.app.database.db;
    assert.equal((await db.select().from(photos).where(eq(photos.userId, id))).length, 0);
    assert.equal((await db.select().from(accounts).where(eq(accounts.userId, id))).length, 0, 'both linked accounts are gone');
  });

  test('webhook mode: updates arrive by POST with the secret; a re-delivered update is dropped', async () => {
    await telegram.stop();
    const port = await freePort();
    const secret = 'hook_secret_1';
    const hooked = createTelegramBot(stack.app, {
      telegram: { mode: 'webhook', webhook: { url: `http://127.0.0.1:${port}/telegram/hook`, secret, host: '127.0.0.1', port } },
    });
    await hooked.start();
    try {
      assert.deepEqual(emulator.webhook, { url: `http://127.0.0.1:${port}/telegram/hook`, secret });
      const mark = lastMessageId();
      const user: EmulatedUser = { id: 5003, first_name: 'Web', language_code: 'en' };
      const update = emulator.sendText(user, '/help');
      await botSays(user, /send me 3–20 photos/, mark);
      emulator.redeliver(update);
      const forged = await fetch(emulator.webhook!.url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...update, update_id: 1 }) });
      assert.equal(forged.status, 403, 'a POST without the secret is refused');
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(emulator.botMessages(user.id).length, 1);
      assert.deepEqual(emulator.webhookFailures, []);
    } finally {
      await hooked.stop();
    }
  });
});
