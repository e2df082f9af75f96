// Consent: before the first training the person confirms the photos are of themselves — a checkbox on the page, a
// button in Telegram and Discord. It is stored with its time on the user, checked by TrainingService.start, and goes
// with the user row on /forget. Real Postgres and Redis, the Telegram and Discord emulators; no worker is needed.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { eq } from 'drizzle-orm';
import { accounts, jobs, users } from '../src/db/schema.ts';
import { type EmulatedUser } from './emulators/telegram.ts';
import { type EmulatedDiscordUser, type InteractionRecord } from './emulators/discord.ts';
import { PlaygroundClient, eventually, type Stack } from './helpers/stack.ts';
import { startChatStack, type ChatStack } from './helpers/chat-stack.ts';
import { makePhotos } from './helpers/images.ts';

let chats: ChatStack;
let stack: Stack;
let telegram: ChatStack['telegram'];
let discord: ChatStack['discord'];

before(async () => {
  chats = await startChatStack({ CONSENT_REQUIRED: 'true', MIN_TRAINING_PHOTOS: '2' });
  ({ stack, telegram, discord } = chats);
});
after(async () => chats?.close());

const db = () => stack.app.database.db;
const userOf = async (platform: 'web' | 'telegram' | 'discord', externalId: string) => {
  const [row] = await db().select({ user: users }).from(accounts).innerJoin(users, eq(users.id, accounts.userId)).where(eq(accounts.externalId, externalId));
  assert.ok(row, `${platform} account ${externalId}`);
  return row.user;
};
const openJobs = async (userId: string) => (await db().select().from(jobs).where(eq(jobs.userId, userId))).length;

test('TrainingService.start refuses without consent, with a clear consent_required error', async () => {
  const { users: service, photos, training } = stack.app.services;
  const user = await service.resolve('web', 'service-consent');
  for (const photo of await makePhotos(2, 800)) assert.ok((await photos.add(user.id, photo)).ok);
  await assert.rejects(training.start(user.id), { code: 'consent_required', status: 403 });
  assert.equal(await openJobs(user.id), 0, 'no job was made');
  const before = Date.now();
  const at = await service.consent(user.id);
  assert.ok(Math.abs(at.getTime() - before) < 5000, 'stored with its time');
  assert.equal((await service.consent(user.id)).getTime(), at.getTime(), 'the first confirmation’s time is kept');
  assert.equal((await training.start(user.id)).created, true);
});

describe('web', () => {
  test('without the checkbox /api/train answers 403 consent_required in the person’s language; with it, training starts; /forget removes it', async () => {
    for (const [locale, pattern] of [['en', /confirm that the photos are of you/], ['ru', /подтвердите, что на фото именно вы/]] as const) {
      const web = new PlaygroundClient(stack.baseUrl);
      const request = web.request.bind(web);
      web.request = (path, init = {}) => request(path, { ...init, headers: { 'accept-language': locale, ...(init.headers as Record<string, string>) } });
      const photos = await makePhotos(2, locale === 'en' ? 810 : 820);
      assert.equal((await web.upload('/api/photos', photos.map((p, i) => [`p${i}.jpg`, p] as [string, Buffer]))).status, 200);
      const refused = await web.post('/api/train');
      assert.equal(refused.status, 403, JSON.stringify(refused.body));
      assert.equal(refused.body.error.code, 'consent_required');
      assert.match(refused.body.error.message, pattern);
      const session = web.cookie.split('=')[1]!;
      const user = await userOf('web', session);
      assert.equal(user.consentedAt, null);
      assert.equal(await openJobs(user.id), 0);
      assert.equal((await web.json('/api/state')).body.consentedAt, null, 'the page shows the box unticked');

      // The page's checkbox: /api/consent, then /api/train.
      const consent = await web.post('/api/consent');
      assert.equal(consent.status, 200);
      const stored = (await userOf('web', session)).consentedAt;
      assert.ok(stored && Math.abs(stored.getTime() - new Date(consent.body.consentedAt).getTime()) < 1, 'stored on the user with its time');
      // A reload shows the confirmation given, with its time.
      assert.equal((await web.json('/api/state')).body.consentedAt, consent.body.consentedAt);
      const train = await web.post('/api/train');
      assert.equal(train.status, 202, JSON.stringify(train.body));

      assert.equal((await web.post('/api/forget')).status, 200);
      assert.equal((await db().select().from(users).where(eq(users.id, user.id))).length, 0, 'the user row, and its consent, are gone');
    }
  });

  test('the page has the checkbox, sends /api/consent before /api/train when it is ticked, and shows a stored one ticked', async () => {
    const page = await (await fetch(stack.baseUrl)).text();
    assert.match(page, /<input type="checkbox" id="consent">\s*<span data-t="web.consent">These photos are of me/);
    assert.match(page, /if \(\$\('consent'\)\.checked && !\$\('consent'\)\.disabled\) await api\('\/api\/consent'[\s\S]*?api\('\/api\/train'/);
    assert.match(page, /\$\('consent'\)\.checked \|\|= Boolean\(state\.consentedAt\);\s*\$\('consent'\)\.disabled = Boolean\(state\.consentedAt\);/);
  });
});

const zoya: EmulatedUser = { id: 7101, first_name: 'Зоя', language_code: 'ru' };

test('Telegram: “Train now” asks for consent with a button; pressing it stores the time and starts the training; /forget deletes it', { timeout: 60_000 }, async () => {
  const mark = () => Math.max(0, ...telegram.messages.keys());
  const says = (pattern: RegExp, since: number) =>
    telegram.waitFor(() => telegram.botMessages(zoya.id).find((m) => m.message_id > since && pattern.test(m.text ?? '')), String(pattern), 15_000);
  let since = mark();
  telegram.sendText(zoya, '/train');
  await says(/0/, since);
  since = mark();
  telegram.sendAlbum(zoya, await makePhotos(2, 830));
  const enough = await says(/2/, since);
  since = mark();
  telegram.pressButton(zoya, enough.message_id, 'train_now');
  const ask = await says(/на всех этих фото именно вы/, since);
  const button = ask.reply_markup.inline_keyboard[0][0];
  assert.deepEqual([button.text, button.callback_data], ['Да, на фото я', `consent_yes:${zoya.id}`], 'the button is the person’s own');
  const user = await userOf('telegram', String(zoya.id));
  assert.equal(user.consentedAt, null);
  assert.equal(await openJobs(user.id), 0, 'no training without consent');

  since = mark();
  telegram.pressButton(zoya, ask.message_id, 'consent_yes');
  await says(/Обучение|обучени/i, since);
  assert.ok((await userOf('telegram', String(zoya.id))).consentedAt, 'stored with its time');
  assert.equal(await openJobs(user.id), 1);

  since = mark();
  telegram.sendText(zoya, '/forget');
  const question = await says(/уверены|Удалить/i, since);
  telegram.pressButton(zoya, question.message_id, 'forget_yes');
  await eventually(async () => (await db().select().from(users).where(eq(users.id, user.id))).length === 0, 15_000, 'the user row to go');
});

const yuri: EmulatedDiscordUser = { id: '710000000000000001', username: 'yuri', locale: 'en-US' };

test('Discord: “Train now” asks for consent with a button; pressing it stores the time and starts the training; /forget deletes it', { timeout: 60_000 }, async () => {
  const replyOf = (record: InteractionRecord, pattern: RegExp) =>
    discord.waitFor(() => record.original && !record.original.deleted && pattern.test(record.original.content) && record.original, String(pattern), 15_000);
  const [a, b] = await makePhotos(2, 840);
  const listed = await replyOf(discord.command(yuri, 'train', {
    photo1: { file: a!, filename: 'a.jpg', contentType: 'image/jpeg' }, photo2: { file: b!, filename: 'b.jpg', contentType: 'image/jpeg' },
  }), /Photos: 2/);
  const ask = await replyOf(discord.press(yuri, listed, 'train_now'), /are all these photos of you/);
  assert.equal(ask.components[0].components[0].custom_id, `consent_yes:${yuri.id}`);
  assert.equal(ask.components[0].components[0].label, 'Yes, these photos are of me');
  const user = await userOf('discord', yuri.id);
  assert.equal(user.consentedAt, null);
  assert.equal(await openJobs(user.id), 0);

  await replyOf(discord.press(yuri, ask, 'consent_yes'), /Training|queue/i);
  assert.ok((await userOf('discord', yuri.id)).consentedAt);
  assert.equal(await openJobs(user.id), 1);

  const question = await replyOf(discord.command(yuri, 'forget'), /Are you sure/);
  discord.press(yuri, question, 'forget_yes');
  await eventually(async () => (await db().select().from(users).where(eq(users.id, user.id))).length === 0, 15_000, 'the user row to go');
});
