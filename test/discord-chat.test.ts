// The Discord adapter as a good bot: buttons only for their owner, Discord's rate limits waited out (discord.js reads
// the headers) instead of an apology, and a Discord that is unreachable at start. Real discord.js against the
// emulator over real Postgres and Redis; no worker is needed (a queued training waits in line).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { eq } from 'drizzle-orm';
import pino from 'pino';
import { accounts, chatTargets } from '../src/db/schema.ts';
import { createApp } from '../src/app.ts';
import { createDiscordBot, type DiscordBot } from '../bots/discord/bot.ts';
import { DiscordEmulator, type EmulatedDiscordUser, type InteractionRecord } from './emulators/discord.ts';
import { freePort } from './helpers/net.ts';
import { startStack, type Stack } from './helpers/stack.ts';
import { makePhotos } from './helpers/images.ts';

const discord = new DiscordEmulator();
let stack: Stack;
let bot: DiscordBot;

const dana: EmulatedDiscordUser = { id: '710000000000000001', username: 'dana', locale: 'en-US' };
const egor: EmulatedDiscordUser = { id: '710000000000000002', username: 'egor', locale: 'ru' };

before(async () => {
  await discord.start();
  stack = await startStack({ MIN_TRAINING_PHOTOS: '3', DISCORD_TOKEN: discord.token, DISCORD_APPLICATION_ID: discord.applicationId, DISCORD_API_ROOT: discord.api }, false);
  bot = createDiscordBot(stack.app, { sweepIntervalMs: 1000 });
  await bot.start();
});

after(async () => {
  await bot.stop();
  await stack.close();
  await discord.stop();
});

const replyOf = (record: InteractionRecord, pattern: RegExp, timeoutMs = 15_000) =>
  discord.waitFor(() => record.original && !record.original.deleted && pattern.test(record.original.content) && record.original, `a reply matching ${pattern}`, timeoutMs);
const userIdOf = async (id: string) => (await stack.app.database.db.select().from(accounts).where(eq(accounts.externalId, id)))[0]?.userId;

describe('Discord buttons and rate limits', () => {
  test('a button pressed by someone else does nothing and tells only them', async () => {
    const record = discord.command(dana, 'forget');
    const question = await replyOf(record, /Are you sure/);
    assert.deepEqual(question.components[0].components.map((b: any) => b.custom_id), [`forget_yes:${dana.id}`, `forget_no:${dana.id}`]);
    const owner = await userIdOf(dana.id);
    const shown = [...question.edits];
    const press = discord.press(egor, question, 'forget_yes');
    const told = await replyOf(press, /кнопка/);
    assert.equal(told.content, 'Эта кнопка — для того, кто спрашивал; для вас она ничего не делает.');
    assert.ok(discord.isEphemeral(told), 'only the presser sees it');
    assert.equal(press.callback, 4);
    assert.deepEqual(question.edits, shown, 'the owner’s question is untouched');
    assert.equal(await userIdOf(dana.id), owner, 'the owner’s data is untouched');

    discord.press(dana, question, 'forget_yes');
    await discord.waitFor(() => /Everything about you is deleted/.test(question.content), 'the owner’s answer');
    assert.equal(await userIdOf(dana.id), undefined);
  });

  test('a double tap on “Train now” makes one training with one status reply, and that reply is the one followed', async () => {
    const fedor: EmulatedDiscordUser = { id: '710000000000000003', username: 'fedor', locale: 'en-US' };
    const shots = await makePhotos(3, 140);
    const added = discord.command(fedor, 'train', Object.fromEntries(shots.map((s, i) => [`photo${i + 1}`, { file: s, filename: `f${i}.jpg`, contentType: 'image/jpeg' }])));
    const enough = await replyOf(added, /Photos: 3/);
    await stack.app.services.users.consent((await userIdOf(fedor.id))!);
    const taps = [discord.press(fedor, enough, 'train_now'), discord.press(fedor, enough, 'train_now')];
    const answers = await Promise.all(taps.map((tap) => replyOf(tap, /Training|already training/)));
    const statuses = taps.filter((_tap, n) => !/already training/.test(answers[n]!.content));
    assert.equal(statuses.length, 1, `one status reply; the bot said ${JSON.stringify(answers.map((a) => a.content))}`);
    assert.ok(answers.some((a) => /already training/.test(a.content)), 'the other tap is told the training is on');
    const targets = await stack.app.database.db.select().from(chatTargets).where(eq(chatTargets.userId, (await userIdOf(fedor.id))!));
    assert.equal(targets.length, 1, 'one job followed');
    assert.equal((targets[0]!.target as { token: string }).token, statuses[0]!.token, 'the delivery target is that reply');
  });

  test('429 with Discord’s rate-limit headers on a reply: it arrives after the wait, with no apology', async () => {
    discord.rateLimitNext('PATCH', /\/messages\/@original$/, 1);
    const sent = Date.now();
    const record = discord.command(egor, 'help');
    await replyOf(record, /Я рисую ваши портреты/);
    const took = Date.now() - sent;
    assert.ok(took >= 1000, `arrived after ${took} ms`);
    assert.equal(discord.callsTo(new RegExp(`${record.token}/messages/@original$`), 'PATCH').length, 2, 'tried, waited, tried again');
    assert.deepEqual(record.followUps, [], 'no apology');
  });
});

describe('Discord unreachable at start', () => {
  test('the adapter keeps retrying with a log line, and answers once Discord is up', async () => {
    const port = await freePort();
    const late = new DiscordEmulator();
    const lines: Array<Record<string, any>> = [];
    const config = { ...stack.env.config, queuePrefix: `${stack.env.config.queuePrefix}-late` };
    config.discord = { ...config.discord, token: late.token, applicationId: late.applicationId, apiRoot: `http://127.0.0.1:${port}/api` };
    const app = await createApp(config, pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line)) }));
    const handle = createDiscordBot(app, { connectRetryMs: 200 });
    try {
      await handle.start();
      await discord.waitFor(() => lines.filter((l) => l.msg === 'discord is unreachable; trying again').length >= 2, 'two logged retries', 10_000);
      await late.start(port);
      await handle.connected;
      const record = late.command({ id: '710000000000000009', username: 'late' }, 'help');
      await late.waitFor(() => record.original && /I paint portraits/.test(record.original.content), 'the help text', 15_000);
    } finally {
      await handle.stop();
      await app.close();
      await late.stop();
    }
  });
});
