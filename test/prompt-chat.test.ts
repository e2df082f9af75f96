// Prompts in chat, end to end: the real telegraf and discord.js clients against the local emulators, over the real
// Postgres, Redis, worker and tiny engine. What the person is told about their prompt, and what the engine gets.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { eq } from 'drizzle-orm';
import { generations, jobs } from '../src/db/schema.ts';
import { createTelegramBot, type TelegramBot } from '../bots/telegram/bot.ts';
import { TelegramEmulator, type EmulatedUser } from './emulators/telegram.ts';
import { startStack, eventually, type Stack } from './helpers/stack.ts';
import { makePhotos } from './helpers/images.ts';

const telegram = new TelegramEmulator();
let stack: Stack;
let telegramBot: TelegramBot;

const kate: EmulatedUser = { id: 7101, first_name: 'Kate', language_code: 'en' };
const ivan: EmulatedUser = { id: 7102, first_name: 'Иван', language_code: 'ru' };

before(async () => {
  await telegram.start();
  stack = await startStack({
    MIN_TRAINING_PHOTOS: '3',
    TRAIN_MAX_STEPS: '2',
    LIKENESS_SAMPLES: '1',
    TELEGRAM_BOT_TOKEN: telegram.token,
    TELEGRAM_API_ROOT: telegram.url,
    CHAT_EDIT_INTERVAL_MS: '100',
  });
  telegramBot = createTelegramBot(stack.app, { sweepIntervalMs: 1000 });
  await telegramBot.start();
  // Both people have a trained model (trained through the services: the chat flow of /train is tested elsewhere).
  for (const [n, user] of [kate, ivan].entries()) {
    const person = await stack.app.services.users.resolve('telegram', String(user.id), { locale: user.language_code });
    for (const [i, photo] of (await makePhotos(3, 60 + n * 3)).entries()) await stack.app.services.photos.add(person.id, photo, `p${i}.jpg`);
    const started = await stack.app.services.training.start(person.id);
    await eventually(async () => (await stack.app.services.jobs.view(person.id, started.job.id)).job.status === 'completed', 120_000, 'training');
  }
});

after(async () => {
  await telegramBot.stop();
  await stack.close();
  await telegram.stop();
});

const lastMessageId = () => Math.max(0, ...telegram.messages.keys());
const botSays = (user: EmulatedUser, pattern: RegExp, since: number) =>
  telegram.waitFor(() => telegram.botMessages(user.id).find((m) => m.message_id > since && pattern.test(m.text ?? m.caption ?? '')), String(pattern), 120_000);
const userIdOf = async (user: EmulatedUser) => (await stack.app.services.users.resolve('telegram', String(user.id))).id;
const jobCount = async (user: EmulatedUser) => (await stack.app.database.db.select().from(jobs).where(eq(jobs.userId, await userIdOf(user)))).length;

describe('prompt language', () => {
  test('a Russian prompt is refused in Russian, with a pointer to /styles, and queues nothing', { timeout: 60_000 }, async () => {
    const before = await jobCount(ivan);
    const mark = lastMessageId();
    telegram.sendText(ivan, '/imagine портрет меня в образе космонавта');
    const refusal = await botSays(ivan, /английск/, mark);
    assert.match(refusal.text!, /понимает только английский: «портрет, в, образе, космонавта»/);
    assert.match(refusal.text!, /\/imagine me as an astronaut/);
    assert.match(refusal.text!, /\/styles/);
    assert.equal(await jobCount(ivan), before, 'no job row');
  });

  test('a few foreign words in an English prompt: painted, with a note that they are ignored', { timeout: 120_000 }, async () => {
    const mark = lastMessageId();
    telegram.sendText(kate, '/imagine me as an astronaut over Москва');
    const note = await botSays(kate, /English only/, mark);
    assert.equal(note.text, '⚠️ The image model understands English only and will ignore: Москва. Ready-made styles work in any language: /styles.');
    const photo = await botSays(kate, /“me as an astronaut over Москва”/, mark);
    assert.ok(photo.photo, 'the portrait came');
    assert.ok(note.message_id < photo.message_id);
    const [row] = await stack.app.database.db.select().from(generations).where(eq(generations.userId, await userIdOf(kate)));
    assert.equal(row!.enginePrompt, 'sks person as an astronaut over Москва');
  });
});
