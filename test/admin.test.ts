// Admin: /admin in Telegram and Discord for the configured ids only (stats, pause/resume, ban/unban, quota); for
// anyone else the command does not exist (the usual fallback). Bull Board and /metrics on the web server behind
// ADMIN_TOKEN. Real telegraf and discord.js against their emulators, real Postgres and Redis.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { eq } from 'drizzle-orm';
import { accounts, jobs, users } from '../src/db/schema.ts';
import { startChatStack, type ChatStack } from './helpers/chat-stack.ts';
import { PlaygroundClient, eventually, jobRow, startTrainingAs } from './helpers/stack.ts';
import type { EmulatedUser } from './emulators/telegram.ts';
import type { EmulatedDiscordUser, InteractionRecord } from './emulators/discord.ts';

const ADMIN_TOKEN = 'test-admin-token-0123456789';
const boss: EmulatedUser = { id: 7101, first_name: 'Boss', language_code: 'en' };
const anna: EmulatedUser = { id: 7102, first_name: 'Anna', language_code: 'en' };
const boris: EmulatedUser = { id: 7103, first_name: 'Борис', language_code: 'ru' };
const dboss: EmulatedDiscordUser = { id: '720000000000000001', username: 'dboss', locale: 'en-US' };
const dana: EmulatedDiscordUser = { id: '720000000000000002', username: 'dana', locale: 'en-US' };

let chat: ChatStack;

before(async () => {
  chat = await startChatStack({ ADMIN_TELEGRAM_IDS: String(boss.id), ADMIN_DISCORD_IDS: dboss.id, ADMIN_TOKEN, MIN_TRAINING_PHOTOS: '2' });
});
after(async () => { await chat.close(); });

const lastMessageId = () => Math.max(0, ...chat.telegram.messages.keys());
const botSays = (user: EmulatedUser, pattern: RegExp, since: number) =>
  chat.telegram.waitFor(() => chat.telegram.botMessages(user.id).find((m) => m.message_id > since && pattern.test(m.text ?? '')), String(pattern), 15_000);
/** What the bot said to `user` after `since`, once it has had time to answer everything. */
const settled = async (user: EmulatedUser, since: number) => {
  await new Promise((r) => setTimeout(r, 800));
  return chat.telegram.botMessages(user.id).filter((m) => m.message_id > since).map((m) => m.text ?? '');
};
const discordReply = (record: InteractionRecord, pattern: RegExp) =>
  chat.discord.waitFor(() => {
    const shown = [record.original, ...record.followUps].find((m) => m && !m.deleted && pattern.test(m.content));
    return shown;
  }, String(pattern), 15_000);
const isPaused = (queue: 'train' | 'generate') => chat.stack.app.queues[queue].isPaused();
const userOf = async (platform: 'telegram' | 'discord', id: string | number) =>
  (await chat.stack.app.database.db.select({ user: users }).from(accounts).innerJoin(users, eq(users.id, accounts.userId)).where(eq(accounts.externalId, String(id))))[0]?.user;

describe('admin commands in the chats', () => {
  test('Telegram: an admin gets stats and can pause and resume a queue', async () => {
    let mark = lastMessageId();
    chat.telegram.sendText(boss, '/admin stats');
    const stats = await botSays(boss, /^People: \d+/, mark);
    assert.match(stats.text!, /Jobs: 0 queued, 0 running/);
    assert.match(stats.text!, /Queue train: 0 waiting/);
    assert.match(stats.text!, /Queue generate: 0 waiting/);

    mark = lastMessageId();
    chat.telegram.sendText(boss, '/admin pause train');
    await botSays(boss, /^Paused: train\./, mark);
    assert.equal(await isPaused('train'), true);
    assert.equal(await isPaused('generate'), false);
    mark = lastMessageId();
    chat.telegram.sendText(boss, '/admin');
    await botSays(boss, /Queue train is paused/, mark);

    mark = lastMessageId();
    chat.telegram.sendText(boss, '/admin resume all');
    await botSays(boss, /^Resumed: train, generate\./, mark);
    assert.equal(await isPaused('train'), false);
  });

  test('Telegram: a non-admin gets the usual fallback and nothing happens', async () => {
    const mark = lastMessageId();
    chat.telegram.sendText(anna, '/admin pause all');
    chat.telegram.sendText(anna, '/admin stats');
    const said = await settled(anna, mark);
    assert.deepEqual(said, ['I didn’t understand that. Send /help to see what I can do.', 'I didn’t understand that. Send /help to see what I can do.']);
    assert.equal(await isPaused('train'), false);
    assert.equal(await isPaused('generate'), false);
  });

  test('Discord: an admin gets stats and can pause; a non-admin gets the fallback, only to them', async () => {
    const stats = await discordReply(chat.discord.command(dboss, 'admin', { command: 'stats' }), /^People: \d+/);
    assert.match(stats.content, /Queue generate: 0 waiting/);
    await discordReply(chat.discord.command(dboss, 'admin', { command: 'pause generate' }), /^Paused: generate\./);
    assert.equal(await isPaused('generate'), true);

    const refused = chat.discord.command(dana, 'admin', { command: 'resume all' });
    const fallback = await discordReply(refused, /I didn’t understand that/);
    assert.ok(chat.discord.isEphemeral(fallback), 'shown to the non-admin only');
    assert.equal(await isPaused('generate'), true, 'the non-admin changed nothing');

    await discordReply(chat.discord.command(dboss, 'admin', { command: 'resume generate' }), /^Resumed: generate\./);
    assert.equal(await isPaused('generate'), false);
    // Hidden from members without Administrator in servers.
    const { commands } = await import('../bots/discord/commands/index.ts');
    assert.equal(commands.get('admin')!.definition.toJSON().default_member_permissions, '0');
  });

  test('ban: every command of the banned person gets one clear answer, in their language; unban restores', async () => {
    let mark = lastMessageId();
    chat.telegram.sendText(boris, '/help');
    await botSays(boris, /./, mark);

    // A question with buttons, asked before the ban.
    mark = lastMessageId();
    chat.telegram.sendText(boris, '/forget');
    const question = await botSays(boris, /Удалить\?/, mark);

    mark = lastMessageId();
    chat.telegram.sendText(boss, `/admin ban ${boris.id}`);
    await botSays(boss, new RegExp(`^Blocked ${boris.id}`), mark);
    assert.ok((await userOf('telegram', boris.id))?.bannedAt);

    mark = lastMessageId();
    chat.telegram.sendText(boris, '/help');
    chat.telegram.sendText(boris, '/train');
    chat.telegram.sendText(boris, 'hello');
    const said = await settled(boris, mark);
    assert.deepEqual(said, Array(3).fill('Этот аккаунт заблокирован операторами бота, поэтому я ничего не могу для него сделать.'));
    // Its button too: an alert only they see, and nothing is deleted.
    const alerts = chat.telegram.callsOf('answerCallbackQuery').length;
    chat.telegram.pressButton(boris, question.message_id, 'forget_yes');
    const alert = await chat.telegram.waitFor(() => chat.telegram.callsOf('answerCallbackQuery')[alerts], 'the alert', 15_000);
    assert.match(alert.params.text, /заблокирован/);
    assert.equal(alert.params.show_alert, true);
    assert.ok(await userOf('telegram', boris.id), 'the button did nothing');

    // An admin is never stopped by a ban (they can undo one on themselves).
    mark = lastMessageId();
    chat.telegram.sendText(boss, `/admin ban ${boss.id}`);
    await botSays(boss, /^Blocked/, mark);
    mark = lastMessageId();
    chat.telegram.sendText(boss, `/admin unban ${boss.id}`);
    await botSays(boss, /^Unblocked/, mark);

    // A ban names the user, so it holds on every platform and in the web API (a playground session of the same person).
    const web = new PlaygroundClient(chat.stack.baseUrl);
    await web.post('/api/consent');
    const webUser = (await chat.stack.app.database.db.select().from(accounts).where(eq(accounts.platform, 'web')))[0]!;
    mark = lastMessageId();
    chat.telegram.sendText(boss, `/admin ban ${webUser.userId}`);
    await botSays(boss, /^Blocked/, mark);
    const refused = await web.json('/api/state');
    assert.equal(refused.status, 403);
    assert.equal(refused.body.error.code, 'banned');

    mark = lastMessageId();
    chat.telegram.sendText(boss, `/admin unban telegram:${boris.id}`);
    await botSays(boss, /^Unblocked/, mark);
    mark = lastMessageId();
    chat.telegram.sendText(boris, '/help');
    await botSays(boris, /Я рисую/, mark);

    mark = lastMessageId();
    chat.telegram.sendText(boss, '/admin ban 999999');
    await botSays(boss, /^Nobody is known as “999999”/, mark);
  });

  test('a ban cancels what the person had queued: the job ends cancelled and leaves the queue', async () => {
    const { user, started } = await startTrainingAs(chat.stack, 'queued-then-banned', 730);
    assert.equal(started.job.status, 'queued');
    const mark = lastMessageId();
    chat.telegram.sendText(boss, `/admin ban ${user.id}`);
    const reply = await botSays(boss, /^Blocked/, mark);
    assert.match(reply.text!, /1 open job of theirs cancelled\./);
    assert.equal((await jobRow(chat.stack, started.job.id))!.status, 'cancelled');
    assert.equal(await chat.stack.app.queues.train.getJob(started.job.queueJobId), undefined, 'removed from the queue');
    assert.equal((await chat.stack.app.database.db.select().from(jobs).where(eq(jobs.userId, user.id))).filter((j) => j.status === 'queued').length, 0);
  });

  test('Discord: a banned person is told on every command and button, only to them', async () => {
    const question = await discordReply(chat.discord.command(dana, 'forget'), /Are you sure/);
    await discordReply(chat.discord.command(dboss, 'admin', { command: `ban ${dana.id}` }), /^Blocked/);
    const refused = await discordReply(chat.discord.command(dana, 'status'), /blocked by the bot’s operators/);
    assert.ok(chat.discord.isEphemeral(refused));
    const pressed = await discordReply(chat.discord.press(dana, question, 'forget_yes'), /blocked by the bot’s operators/);
    assert.ok(chat.discord.isEphemeral(pressed));
    assert.ok(await userOf('discord', dana.id), 'the button did nothing');
    await discordReply(chat.discord.command(dboss, 'admin', { command: `unban discord:${dana.id}` }), /^Unblocked/);
    await discordReply(chat.discord.command(dana, 'status'), /photo/i);
  });

  test('quota: one person’s limit changes, the service uses it, default restores the configured one', async () => {
    let mark = lastMessageId();
    chat.telegram.sendText(anna, '/help');
    await botSays(anna, /./, mark);
    const { limits } = chat.stack.app.services;
    const annaId = (await userOf('telegram', anna.id))!.id;
    const configured = await limits.limitsOf(annaId);

    mark = lastMessageId();
    chat.telegram.sendText(boss, `/admin quota ${anna.id} generations 77`);
    const answer = await botSays(boss, /^Limits of/, mark);
    assert.match(answer.text!, /77 pictures an hour/);
    assert.equal((await limits.limitsOf(annaId)).generationsPerHour, 77);
    assert.equal((await limits.limitsOf(annaId)).trainingsPerDay, configured.trainingsPerDay);

    chat.telegram.sendText(boss, `/admin quota ${anna.id} active 1`);
    await eventually(async () => (await limits.limitsOf(annaId)).activeJobs === 1, 15_000, 'the active-jobs override');

    mark = lastMessageId();
    chat.telegram.sendText(boss, `/admin quota ${anna.id} generations lots`);
    await botSays(boss, /^Usage: \/admin quota/, mark);

    mark = lastMessageId();
    chat.telegram.sendText(boss, `/admin quota ${anna.id} generations default`);
    await botSays(boss, /^Limits of/, mark);
    chat.telegram.sendText(boss, `/admin quota ${anna.id} active default`);
    await eventually(async () => (await limits.limitsOf(annaId)).activeJobs === configured.activeJobs, 15_000, 'the configured limit back');
    assert.deepEqual(await limits.limitsOf(annaId), configured);
    assert.equal((await userOf('telegram', anna.id))!.limitOverrides, null, 'no overrides left');
  });
});

describe('Bull Board and /metrics behind ADMIN_TOKEN', () => {
  const basic = (password: string) => `Basic ${Buffer.from(`ops:${password}`).toString('base64')}`;

  test('the dashboard: 401 without the token or with a wrong one, 200 with Bearer or Basic', async () => {
    const url = `${chat.stack.baseUrl}/admin/queues`;
    const none = await fetch(url);
    assert.equal(none.status, 401);
    assert.match(none.headers.get('www-authenticate') ?? '', /^Basic/);
    assert.equal((await fetch(url, { headers: { authorization: 'Bearer wrong-token-wrong-token' } })).status, 401);
    assert.equal((await fetch(url, { headers: { authorization: basic('wrong') } })).status, 401);
    assert.equal((await fetch(`${url}/api/queues`)).status, 401, 'its API too');

    const page = await fetch(url, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    assert.equal(page.status, 200);
    assert.match(await page.text(), /<html/i);
    const api = await fetch(`${url}/api/queues`, { headers: { authorization: basic(ADMIN_TOKEN) } });
    assert.equal(api.status, 200);
    const names = ((await api.json()) as { queues: Array<{ name: string }> }).queues.map((q) => q.name).sort();
    assert.deepEqual(names, ['generate', 'train']);

    // Its actions: with the token from the board's own page, and never driven from another origin.
    const pause = (origin: string) => fetch(`${url}/api/queues/train/pause`, { method: 'PUT', headers: { authorization: basic(ADMIN_TOKEN), origin } });
    assert.equal((await pause('http://evil.example')).status, 403);
    assert.equal(await isPaused('train'), false);
    assert.equal((await pause(chat.stack.baseUrl)).status, 200);
    assert.equal(await isPaused('train'), true);
    await chat.stack.app.queues.train.resume();
  });

  test('chat API errors and 429s are counted by platform and status (Telegram, Discord)', async () => {
    const scrape = async () => (await (await fetch(`${chat.stack.baseUrl}/metrics`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).text());
    const value = (text: string, series: string) => Number(new RegExp(`^${series.replace(/[{}"]/g, (c) => `\\${c}`)} (\\d+)`, 'm').exec(text)?.[1] ?? 0);
    const before = await scrape();
    chat.telegram.failNext('sendMessage', { code: 429, description: 'Too Many Requests: retry after 0', retryAfter: 0 });
    const mark = lastMessageId();
    chat.telegram.sendText(anna, '/help');
    await botSays(anna, /I paint portraits/, mark);
    const after = await scrape();
    assert.equal(value(after, 'portrait_chat_rate_limited_total{platform="telegram"}') - value(before, 'portrait_chat_rate_limited_total{platform="telegram"}'), 1);
    assert.equal(value(after, 'portrait_chat_api_errors_total{platform="telegram",status="429"}') - value(before, 'portrait_chat_api_errors_total{platform="telegram",status="429"}'), 1);

    // Discord: discord.js waits the 429 out itself; the REST answer is counted on its way.
    chat.discord.rateLimitNext('PATCH', /\/messages\/@original$/, 1);
    await discordReply(chat.discord.command(dana, 'help'), /I paint portraits/);
    const later = await scrape();
    assert.equal(value(later, 'portrait_chat_rate_limited_total{platform="discord"}') - value(after, 'portrait_chat_rate_limited_total{platform="discord"}'), 1);
    assert.equal(value(later, 'portrait_chat_api_errors_total{platform="discord",status="429"}') - value(after, 'portrait_chat_api_errors_total{platform="discord",status="429"}'), 1);
  });

  test('/metrics needs the token unless METRICS_PUBLIC; health probes are open', async () => {
    assert.equal((await fetch(`${chat.stack.baseUrl}/metrics`)).status, 401);
    const scraped = await fetch(`${chat.stack.baseUrl}/metrics`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    assert.equal(scraped.status, 200);
    assert.match(await scraped.text(), /portrait_queue_jobs\{queue="train",state="waiting"\} 0/);
    assert.equal((await fetch(`${chat.stack.baseUrl}/healthz`)).status, 200);
  });
});
