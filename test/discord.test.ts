// The Discord adapter end to end: the real discord.js client logs in to a local emulator of Discord's REST API and
// gateway, over the real Postgres, Redis, worker and tiny engine. /link is tested across the real Telegram adapter too.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { eq } from 'drizzle-orm';
import sharp from 'sharp';
import { RESTEvents, type RateLimitData } from 'discord.js';
import { accounts, adapters, jobs, photos } from '../src/db/schema.ts';
import { createDiscordBot, type DiscordBot } from '../bots/discord/bot.ts';
import { deployCommands } from '../bots/discord/deploy-commands.ts';
import { createTelegramBot, type TelegramBot } from '../bots/telegram/bot.ts';
import { DiscordEmulator, type EmulatedDiscordUser, type InteractionRecord } from './emulators/discord.ts';
import { TelegramEmulator, type EmulatedUser } from './emulators/telegram.ts';
import { startStack, type Stack } from './helpers/stack.ts';
import { badUploads, makePhotos, makeSkeleton } from './helpers/images.ts';

const discord = new DiscordEmulator();
const telegram = new TelegramEmulator();
let stack: Stack;
let discordBot: DiscordBot;
let telegramBot: TelegramBot;

const dana: EmulatedDiscordUser = { id: '700000000000000001', username: 'dana', locale: 'en-US' };
const egor: EmulatedDiscordUser = { id: '700000000000000002', username: 'egor', locale: 'ru' };
const tanya: EmulatedUser = { id: 6001, first_name: 'Tanya', language_code: 'en' };

before(async () => {
  await Promise.all([discord.start(), telegram.start()]);
  stack = await startStack({
    MIN_TRAINING_PHOTOS: '3',
    TRAIN_MAX_STEPS: '4',
    DISCORD_TOKEN: discord.token,
    DISCORD_APPLICATION_ID: discord.applicationId,
    DISCORD_API_ROOT: discord.api,
    TELEGRAM_BOT_TOKEN: telegram.token,
    TELEGRAM_API_ROOT: telegram.url,
    CHAT_EDIT_INTERVAL_MS: '100',
  });
  discordBot = createDiscordBot(stack.app, { sweepIntervalMs: 1000 });
  telegramBot = createTelegramBot(stack.app, { sweepIntervalMs: 1000 });
  await Promise.all([discordBot.start(), telegramBot.start()]);
});

after(async () => {
  await Promise.all([discordBot.stop(), telegramBot.stop()]);
  await stack.close();
  await Promise.all([discord.stop(), telegram.stop()]);
});

/** The interaction's reply once it has been edited to match `pattern` (and was acknowledged at all). */
const replyOf = (record: InteractionRecord, pattern: RegExp, timeoutMs = 60_000) =>
  discord.waitFor(() => record.original && !record.original.deleted && pattern.test(record.original.content) && record.original, `a reply matching ${pattern}`, timeoutMs);

const userIdOf = async (platform: 'discord' | 'telegram', externalId: string) => {
  const [row] = await stack.app.database.db.select().from(accounts).where(eq(accounts.externalId, externalId));
  assert.equal(row?.platform, platform);
  return row.userId;
};

const file = (data: Buffer, filename: string, contentType = 'image/jpeg') => ({ file: data, filename, contentType });

describe('Discord', () => {
  test('deploy-commands registers every slash command (globally, or in one guild)', async () => {
    const names = await deployCommands(stack.app.config.discord);
    assert.deepEqual(names.sort(), ['admin', 'cancel', 'forget', 'help', 'imagine', 'lang', 'link', 'pose', 'status', 'styles', 'train']);
    // Server members without Administrator do not see /admin in the list.
    assert.equal(discord.commands.get('global')!.find((c) => c.name === 'admin').default_member_permissions, '0');
    const train = discord.commands.get('global')!.find((c) => c.name === 'train');
    assert.equal(train.options.length, 10);
    assert.ok(train.options.every((o: any) => o.type === 11), 'train takes attachments');
    await deployCommands({ ...stack.app.config.discord, guildId: '123456789012345678' });
    assert.equal(discord.commands.get('123456789012345678')!.length, 11);
  });

  test('the bot logs in over the gateway; /help is acknowledged at once and answered in the person’s language', async () => {
    assert.ok(discord.connected);
    const record = discord.command(egor, 'help');
    const reply = await replyOf(record, /Я рисую ваши портреты/);
    assert.equal(record.callback, 5, 'a deferred reply');
    assert.ok(discord.isEphemeral(reply));
    const callback = discord.callsTo(/\/callback$/).find((c) => c.path.includes(record.id))!;
    assert.ok(callback.at - record.createdAt < 3000, 'acknowledged within Discord’s 3 seconds');
    assert.match(reply.content, /\/pose картинка: промпт:/, 'the options by the labels a Russian Discord shows');
  });

  test('/train: several attachments (one bad), more in a second call, “Train now” → progress → ready', { timeout: 120_000 }, async () => {
    const [a, b, c] = await makePhotos(3, 70);
    const first = discord.command(dana, 'train', {
      photo1: file(a!, 'a.jpg'), photo2: file(b!, 'b.jpg'), photo3: file((await badUploads()).onePixelPng, 'dot.png', 'image/png'),
    });
    const listed = await replyOf(first, /Photos: 2/);
    assert.match(listed.content, /a\.jpg: accepted[\s\S]*b\.jpg: accepted[\s\S]*❌ dot\.png: the picture is only 1×1 pixels/);
    assert.match(listed.content, /Send 1 more/);
    assert.deepEqual(listed.components, []);

    const second = discord.command(dana, 'train', { photo1: file(c!, 'c.jpg') });
    const enough = await replyOf(second, /Photos: 3/);
    assert.equal(enough.components[0].components[0].custom_id, `train_now:${dana.id}`, 'the button names the person it is for');

    const press = discord.press(dana, enough, 'train_now');
    const status = await replyOf(press, /Training/);
    assert.ok(discord.isEphemeral(status));
    await replyOf(press, /version 1\) is ready/, 120_000);
    assert.ok(status.edits.length >= 2, 'the reply is edited as the job advances');
    const [adapter] = await stack.app.database.db.select().from(adapters).where(eq(adapters.userId, await userIdOf('discord', dana.id)));
    assert.equal(adapter!.status, 'ready');
  });

  test('/imagine: a public deferred reply, edited with progress, the portrait as a file; errors only for the person', { timeout: 180_000 }, async () => {
    const tooLong = discord.command(dana, 'imagine', { prompt: 'x'.repeat(501) });
    const refusal = await discord.waitFor(() => tooLong.followUps[0], 'an ephemeral refusal');
    assert.match(refusal.content, /501 characters; the limit is 500/);
    assert.ok(discord.isEphemeral(refusal));
    assert.equal(tooLong.original!.deleted, true, 'the public “thinking…” reply is removed');

    const record = discord.command(dana, 'imagine', { prompt: 'me as an astronaut' });
    const status = await replyOf(record, /Portrait/);
    assert.ok(!discord.isEphemeral(status));
    const result = await discord.waitFor(() => record.followUps.find((m) => m.attachments.length > 0), 'the portrait', 150_000);
    assert.match(result.content, /^“me as an astronaut” · seed \d+\nPainted from: you as an astronaut$/);
    assert.equal((await sharp(result.attachments[0]!.data).metadata()).format, 'png');
    await replyOf(record, /Portrait done/);
    assert.ok(status.edits.some((e) => /step \d of \d/.test(e)), 'progress was shown');
  });

  test('/pose image: prompt: → the person in that pose', { timeout: 180_000 }, async () => {
    const record = discord.command(dana, 'pose', { image: file(await makeSkeleton(), 'pose.png', 'image/png'), prompt: 'dancing' });
    await replyOf(record, /Pose portrait/);
    const result = await discord.waitFor(() => record.followUps.find((m) => m.attachments.length > 0), 'the pose portrait', 150_000);
    assert.match(result.content, /^“dancing” · seed \d+\nPainted from: a photo of you, dancing$/);
    await replyOf(record, /Pose portrait done/);
    assert.equal(record.followUps.length, 1, 'no skeleton preview without the pose models');
  });

  test('a replayed interaction is answered once', async () => {
    const record = discord.command(dana, 'status');
    await replyOf(record, /Model: version 1, ready/);
    discord.redispatch(record);
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(discord.callsTo(new RegExp(`/interactions/${record.id}/`)).length, 1);
    assert.equal(record.followUps.length, 0, 'no error follow-up either');
  });

  test('/cancel during training stops it; the status reply says so', { timeout: 120_000 }, async () => {
    // Long enough to still be running when /cancel arrives; the config object is the one the worker reads.
    stack.app.config.training.maxSteps = 5000;
    try {
      const shots = await makePhotos(3, 90);
      const added = discord.command(egor, 'train', Object.fromEntries(shots.map((s, i) => [`photo${i + 1}`, file(s, `e${i}.jpg`)])));
      const enough = await replyOf(added, /Фото: 3/);
      const press = discord.press(egor, enough, 'train_now');
      await replyOf(press, /шаг \d+ из 5000/, 90_000);
      const cancel = discord.command(egor, 'cancel');
      await replyOf(cancel, /Отменено: Обучение/);
      await replyOf(press, /Обучение: отменено/, 30_000);
      const [job] = await stack.app.database.db.select().from(jobs).where(eq(jobs.userId, await userIdOf('discord', egor.id)));
      assert.equal(job!.status, 'cancelled');
    } finally {
      stack.app.config.training.maxSteps = 4;
    }
  });

  test('/link: a code from Telegram, entered on Discord, gives both the same photos and model', async () => {
    const mark = Math.max(0, ...telegram.messages.keys());
    telegram.sendText(tanya, '/link');
    const issued = await telegram.waitFor(() => telegram.botMessages(tanya.id).find((m) => m.message_id > mark && /link code/.test(m.text ?? '')), 'a link code');
    const code = /code: (\S+)/.exec(issued.text!)![1]!;

    const wrong = discord.command(dana, 'link', { code: 'AAAA-BBBB' });
    assert.match((await replyOf(wrong, /wrong or has expired/)).content, /Send \/link on the other platform/);
    const record = discord.command(dana, 'link', { code });
    await replyOf(record, /Linked/);
    // Dana (Discord) had the photos and the model, so her user stays and Tanya's Telegram account joins it.
    assert.equal(await userIdOf('telegram', String(tanya.id)), await userIdOf('discord', dana.id));

    const before = Math.max(0, ...telegram.messages.keys());
    telegram.sendText(tanya, '/status');
    const status = await telegram.waitFor(() => telegram.botMessages(tanya.id).find((m) => m.message_id > before && /Photos/.test(m.text ?? '')), 'status on Telegram');
    assert.match(status.text!, /Photos: 3[\s\S]*Model: version 1, ready/);
  });

  test('/forget asks, then deletes everything (on both linked platforms)', async () => {
    const id = await userIdOf('discord', dana.id);
    const record = discord.command(dana, 'forget');
    const question = await replyOf(record, /Are you sure/);
    assert.deepEqual(question.components[0].components.map((b: any) => b.custom_id), [`forget_yes:${dana.id}`, `forget_no:${dana.id}`]);
    discord.press(dana, question, 'forget_yes');
    const answered = await discord.waitFor(() => /Everything about you is deleted/.test(question.content) && question, 'the question to become the answer');
    assert.match(answered.content, /3 photos, 1 model, 2 pictures/);
    assert.deepEqual(answered.components, [], 'no buttons left to press twice');
    const db = stack.app.database.db;
    assert.equal((await db.select().from(photos).where(eq(photos.userId, id))).length, 0);
    assert.equal((await db.select().from(accounts).where(eq(accounts.userId, id))).length, 0);
  });
});



describe('Discord after the interaction token expired', () => {
  test('progress and results go to a DM instead of the 15-minute-old reply', async () => {
    const surface = discordBot.surface;
    const target = { applicationId: discord.applicationId, token: 'itok_expired', channelId: '1', userId: egor.id, expiresAt: Date.now() - 1 };
    await surface.edit(target, 'still training');
    await surface.sendImages(target, [{ data: await makeSkeleton(64), name: 'portrait-1.png' }], 'caption');
    const dm = discord.shownTo(egor).slice(-2);
    assert.deepEqual(dm.map((m) => m.content), ['still training', 'caption']);
    assert.equal(dm[1]!.attachments[0]!.filename, 'portrait-1.png');
    assert.equal(discord.callsTo(/itok_expired/).length, 0, 'the dead token is not used');
  });
});

describe('Discord under load', () => {
  test('interaction replies are not held back by the 50 requests/s global limit; DMs still are', async () => {
    // Discord binds interaction endpoints to no global limit (its rate-limit docs); discord.js's client-side limiter
    // counted the edits and follow-ups and held replies back under load (RELIABILITY.md, Capacity).
    const held = { interactions: 0, bot: 0 };
    const count = (key: keyof typeof held) => (info: RateLimitData) => { if (info.global) held[key]++; };
    const onInteractions = count('interactions'), onBot = count('bot');
    discordBot.client.rest.on(RESTEvents.RateLimited, onInteractions);
    discordBot.botRest.on(RESTEvents.RateLimited, onBot);
    try {
      const people = Array.from({ length: 60 }, (_, i): EmulatedDiscordUser => ({ id: String(710000000000000000n + BigInt(i)), username: `busy${i}`, locale: 'en-US' }));
      const records = people.map((user) => discord.command(user, 'help'));
      await Promise.all(records.map((record) => replyOf(record, /\/imagine/)));
      const target = (i: number, live: boolean) => ({
        applicationId: discord.applicationId, token: records[i]!.token, channelId: '1', userId: people[i]!.id,
        expiresAt: live ? Date.now() + 60_000 : Date.now() - 1,
      });
      // 60 edits of live replies at once: more than 50 in a second, none held.
      await Promise.all(people.map((_, i) => discordBot.surface.edit(target(i, true), `burst ${i}`)));
      assert.ok(records.every((record, i) => record.original?.content === `burst ${i}`));
      assert.equal(held.interactions, 0, 'no interaction call waited for the global limit');
      // 60 DMs at once (each a channel and a message): the limit holds the ones past 50 in the second.
      await Promise.all(people.map((_, i) => discordBot.surface.edit(target(i, false), `dm ${i}`)));
      assert.ok(people.every((user, i) => discord.shownTo(user).some((m) => m.content === `dm ${i}`)));
      assert.ok(held.bot > 0, 'the DMs were held to 50 requests/s');
    } finally {
      discordBot.client.rest.off(RESTEvents.RateLimited, onInteractions);
      discordBot.botRest.off(RESTEvents.RateLimited, onBot);
    }
  });
});
