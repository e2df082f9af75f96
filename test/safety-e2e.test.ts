// The output check end to end: Telegram emulator → real telegraf → worker → tiny engine with its safety checker on
// (SAFETY_CHECKER=on) and forced by the tiny profile's test knob ENGINE_TINY_SAFETY_FLAG=all to flag every picture.
// Withheld pictures are never stored or sent; the person is told why, and the jobs complete (not fail).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { eq } from 'drizzle-orm';
import { accounts, adapters, generations, jobs } from '../src/db/schema.ts';
import { jobWorkDir } from '../worker/processors.ts';
import type { TelegramEmulator, EmulatedUser } from './emulators/telegram.ts';
import { startChatStack, type ChatStack } from './helpers/chat-stack.ts';
import { PlaygroundClient, type Stack } from './helpers/stack.ts';
import { makePhotos } from './helpers/images.ts';

let chats: ChatStack;
let stack: Stack;
let emulator: TelegramEmulator;
const vera: EmulatedUser = { id: 6101, first_name: 'Vera', language_code: 'en' };
const knob = process.env.ENGINE_TINY_SAFETY_FLAG;

before(async () => {
  // The engine sees our ENGINE_* variables: this one makes the tiny checker flag everything.
  process.env.ENGINE_TINY_SAFETY_FLAG = 'all';
  chats = await startChatStack({ SAFETY_CHECKER: 'on', MIN_TRAINING_PHOTOS: '3', TRAIN_MAX_STEPS: '2', LIKENESS_SAMPLES: '2' }, { worker: true });
  ({ stack, telegram: emulator } = chats);
});

after(async () => {
  await chats.close();
  if (knob === undefined) delete process.env.ENGINE_TINY_SAFETY_FLAG;
  else process.env.ENGINE_TINY_SAFETY_FLAG = knob;
});

const lastMessageId = () => Math.max(0, ...emulator.messages.keys());
const botSays = (pattern: RegExp, since: number) =>
  emulator.waitFor(() => emulator.botMessages(vera.id).find((m) => m.message_id > since && pattern.test(m.text ?? m.caption ?? '')), String(pattern));
const photosSince = (since: number) => emulator.botMessages(vera.id).filter((m) => m.message_id > since && m.photo);

describe('safety check on, every picture flagged', () => {
  test('training: the model is ready, its samples are withheld and the person is told so', { timeout: 240_000 }, async () => {
    let mark = lastMessageId();
    emulator.sendText(vera, '/train');
    await botSays(/You have 0 so far/, mark);
    mark = lastMessageId();
    emulator.sendAlbum(vera, await makePhotos(3, 20));
    const enough = await botSays(/Photos: 3/, mark);
    mark = lastMessageId();
    emulator.pressButton(vera, enough.message_id, 'train_now');
    const status = await botSays(/Training/, mark);
    await emulator.waitFor(() => /withheld/.test(status.text ?? '') && status, 'the status to say ready and withheld', 200_000);
    assert.equal(status.text, '✅ Your model (version 1) is ready! Try /imagine me as an astronaut.\n🚫 The safety check withheld 2 of 2 sample portraits. Your model is ready all the same.');
    assert.deepEqual(photosSince(mark), [], 'no sample album, and no black picture');
    const [account] = await stack.app.database.db.select().from(accounts).where(eq(accounts.externalId, String(vera.id)));
    const [adapter] = await stack.app.database.db.select().from(adapters).where(eq(adapters.userId, account!.userId));
    assert.equal(adapter!.status, 'ready');
    assert.deepEqual(adapter!.sampleKeys, []);
    assert.equal((adapter!.metrics as { withheldSamples: number }).withheldSamples, 2);
  });

  test('/imagine: the job completes with a clear message, nothing stored, nothing sent', { timeout: 180_000 }, async () => {
    const mark = lastMessageId();
    const sentPhotos = emulator.callsOf('sendPhoto').length + emulator.callsOf('sendMediaGroup').length;
    emulator.sendText(vera, '/imagine me as an astronaut');
    const status = await botSays(/Portrait/, mark);
    await emulator.waitFor(() => /withheld/.test(status.text ?? '') && status, 'the status to say withheld', 150_000);
    assert.equal(status.text, '🚫 Portrait: the safety check withheld the picture, so nothing was sent or kept. Try different words.');
    assert.equal(emulator.callsOf('sendPhoto').length + emulator.callsOf('sendMediaGroup').length, sentPhotos, 'no picture sent');
    const db = stack.app.database.db;
    const [generation] = await db.select().from(generations).where(eq(generations.kind, 'imagine'));
    assert.deepEqual([generation!.outputKeys, generation!.withheld], [[], 1]);
    const [job] = await db.select().from(jobs).where(eq(jobs.id, generation!.jobId));
    assert.deepEqual([job!.status, job!.errorCode], ['completed', null], 'withheld is not a failure');
    assert.ok(!existsSync(jobWorkDir(stack.env.config, 'generate', job!.id)), 'the engine wrote nothing that stays behind');
  });

  test('web API, in Russian: the job view names what was withheld, in the person\'s language', { timeout: 240_000 }, async () => {
    const client = new PlaygroundClient(stack.baseUrl);
    assert.equal((await client.post('/api/locale', { locale: 'ru' })).status, 200);
    const upload = await client.upload('/api/photos', (await makePhotos(3, 30)).map((data, i): [string, Buffer] => [`me-${i}.jpg`, data]));
    assert.equal(upload.body.total, 3);
    const train = await client.post('/api/train');
    assert.equal((await client.waitForJob(train.body.jobId)).job.status, 'completed');
    const imagine = await client.post('/api/imagine', { prompt: 'me as an astronaut', options: { width: 256, height: 256 } });
    const done = await client.waitForJob(imagine.body.jobId);
    assert.deepEqual([done.job.status, done.images, done.withheld], ['completed', [], 1]);
    const notice = '🚫 Портрет: проверка безопасности задержала картинку, поэтому ничего не отправлено и не сохранено. Попробуйте другие слова.';
    assert.equal(done.notice, notice);
    // The page rebuilds from /api/state: the same words beside the gallery entry, and the model's withheld samples.
    const state = (await client.json('/api/state')).body;
    const entry = state.gallery.find((g: { jobId: string }) => g.jobId === imagine.body.jobId);
    assert.deepEqual([entry.images, entry.withheld, entry.notice], [[], 1, notice]);
    assert.equal(state.adapters[0].samplesNotice, '🚫 Проверка безопасности задержала 2 из 2 пробных портретов. Модель при этом готова.');
    assert.deepEqual(state.adapters[0].sampleUrls, []);
  });
});
