// A picture of training: intermediate previews (stored as leased blobs, shown on the web and sent once to the chat),
// the loss curve on the job row, and ETAs for running and waiting jobs. Real Postgres, Redis, worker and tiny engine;
// telegraf against the Bot API emulator.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { eq } from 'drizzle-orm';
import sharp from 'sharp';
import { jobs, trainingPreviews } from '../src/db/schema.ts';
import { runningEtaSeconds, waitingEtaSeconds } from '../src/services/eta.ts';
import { etaText, translator } from '../bots/shared/i18n/index.ts';
import { Conversation } from '../bots/shared/conversation.ts';
import { status } from '../bots/shared/status.ts';
import type { TelegramEmulator, EmulatedUser } from './emulators/telegram.ts';
import { startChatStack, type ChatStack } from './helpers/chat-stack.ts';
import { PlaygroundClient, type Stack } from './helpers/stack.ts';
import { makePhotos } from './helpers/images.ts';

describe('estimates', () => {
  test('a running job: the time left at its pace so far', () => {
    const started = new Date(1_000_000);
    assert.equal(runningEtaSeconds(0.25, started, 1_000_000 + 30_000), 90, 'a quarter in 30 s: 90 s to go');
    assert.equal(runningEtaSeconds(0, started, 1_030_000), null, 'no step yet: no pace');
    assert.equal(runningEtaSeconds(1, started, 1_030_000), null, 'done');
    assert.equal(runningEtaSeconds(0.5, null), null, 'not started');
  });

  test('a waiting job: its place in line × the recent mean duration, over the jobs run at once, plus its own run', () => {
    assert.equal(waitingEtaSeconds(1, 60), 120);
    assert.equal(waitingEtaSeconds(3, 60), 240);
    assert.equal(waitingEtaSeconds(4, 60, 4), 120, 'four at a time');
    assert.equal(waitingEtaSeconds(2, null), null, 'nothing finished yet: no estimate');
    assert.equal(waitingEtaSeconds(0, 60), null);
  });

  test('in words, in both languages, with plural forms', () => {
    const en = translator('en');
    const ru = translator('ru');
    assert.equal(etaText(en, 1), 'about 1 second left');
    assert.equal(etaText(en, 45), 'about 45 seconds left');
    assert.equal(etaText(en, 180), 'about 3 minutes left');
    assert.equal(etaText(ru, 21), 'осталось около 21 секунды');
    assert.equal(etaText(ru, 25), 'осталось около 25 секунд');
    assert.equal(etaText(ru, 120), 'осталось около 2 минут');
  });
});

describe('previews and the loss curve', () => {
  let chats: ChatStack;
  let stack: Stack;
  let emulator: TelegramEmulator;
  const vera: EmulatedUser = { id: 7001, first_name: 'Vera', language_code: 'en' };

  before(async () => {
    // One training at a time, so a second person's training waits in line.
    chats = await startChatStack({ MIN_TRAINING_PHOTOS: '3', TRAIN_MAX_STEPS: '4', TRAIN_PREVIEWS: '2', TRAIN_CHECKPOINT_STEPS: '0', WORKER_TRAIN_CONCURRENCY: '1' }, { worker: true });
    ({ stack, telegram: emulator } = chats);
  });
  after(async () => chats.close());

  async function png(response: Response) {
    assert.equal(response.status, 200);
    assert.equal(response.headers.get('content-type'), 'image/png');
    return (await sharp(Buffer.from(await response.arrayBuffer())).metadata()).format;
  }

  test('web: the previews and the loss curve come live and after a reload; /forget deletes them', { timeout: 240_000 }, async () => {
    const client = new PlaygroundClient(stack.baseUrl);
    const upload = await client.upload('/api/photos', (await makePhotos(3, 20)).map((data, i): [string, Buffer] => [`me-${i}.jpg`, data]));
    assert.equal(upload.status, 200);
    const events: any[] = [];
    const sse = new AbortController();
    void (async () => {
      const response = await client.request('/api/events', { signal: sse.signal });
      let buffer = '';
      try {
        for await (const chunk of response.body!) {
          buffer += Buffer.from(chunk as Uint8Array).toString('utf8');
          for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
            if (buffer.startsWith('data: ')) events.push(JSON.parse(buffer.slice(6, end)));
            buffer = buffer.slice(end + 2);
          }
        }
      } catch { /* aborted */ }
    })();
    await new Promise((r) => setTimeout(r, 300));
    const train = await client.post('/api/train');
    assert.equal(train.status, 202, JSON.stringify(train.body));
    assert.equal((await client.waitForJob(train.body.jobId)).job.status, 'completed');
    await new Promise((r) => setTimeout(r, 300));
    sse.abort();

    // Live: one event per preview, at 1/3 and 2/3 of the 4 steps, before the completion.
    const live = events.filter((e) => e.jobId === train.body.jobId);
    const previewEvents = live.filter((e) => e.preview);
    assert.deepEqual(previewEvents.map((e) => [e.preview.step, e.preview.total]), [[1, 4], [3, 4]]);
    assert.ok(live.findIndex((e) => e.preview) < live.findIndex((e) => e.status === 'completed'));

    // After a reload: the same previews, with their steps, and the loss curve up to the last step.
    const { body: state } = await client.json('/api/state');
    const job = state.jobs.find((j: any) => j.id === train.body.jobId);
    assert.deepEqual(job.previews.map((p: any) => [p.step, p.total]), [[1, 4], [3, 4]]);
    assert.deepEqual(job.previews.map((p: any) => p.id), previewEvents.map((e) => e.preview.id));
    for (const preview of job.previews) assert.equal(await png(await client.request(preview.url)), 'png');
    assert.equal((await new PlaygroundClient(stack.baseUrl).request(job.previews[0].url)).status, 404, 'nobody else sees them');
    assert.ok(job.lossCurve.length >= 1 && job.lossCurve.at(-1)[0] === 4, JSON.stringify(job.lossCurve));
    assert.ok(job.lossCurve.every(([step, loss]: [number, number]) => Number.isInteger(step) && Number.isFinite(loss)));

    // /forget: no preview row and no preview file is left.
    const db = stack.app.database.db;
    const keys = (await db.select().from(trainingPreviews).where(eq(trainingPreviews.jobId, train.body.jobId))).map((p) => p.key);
    assert.equal(keys.length, 2);
    assert.equal((await client.post('/api/forget')).status, 200);
    assert.equal((await db.select().from(trainingPreviews).where(eq(trainingPreviews.jobId, train.body.jobId))).length, 0);
    for (const key of keys) assert.ok(!(await stack.app.store.has(key)), `${key} was deleted`);
  });

  test('Telegram: two previews, each sent once with its step, then the result and its samples', { timeout: 240_000 }, async () => {
    let mark = Math.max(0, ...emulator.messages.keys());
    emulator.sendText(vera, '/train');
    await emulator.waitFor(() => emulator.botMessages(vera.id).find((m) => m.message_id > mark), 'the /train answer');
    mark = Math.max(0, ...emulator.messages.keys());
    const [a, b, c] = await makePhotos(3, 30);
    emulator.sendAlbum(vera, [a!, b!, c!]);
    const enough = await emulator.waitFor(() => emulator.botMessages(vera.id).find((m) => m.message_id > mark && m.reply_markup), 'the Train button');
    mark = Math.max(0, ...emulator.messages.keys());
    emulator.pressButton(vera, enough.message_id, 'train_now');
    const status = await emulator.waitFor(() => emulator.botMessages(vera.id).find((m) => m.message_id > mark && /Training/.test(m.text ?? '')), 'the status message');
    await emulator.waitFor(() => /version 1\) is ready/.test(status.text!), 'the ready message', 180_000);
    const photos = await emulator.waitFor(() => {
      const sent = emulator.botMessages(vera.id).filter((m) => m.message_id > mark && m.photo);
      return sent.length === 2 + stack.env.config.likeness.samples && sent;
    }, 'the previews and the samples');
    assert.deepEqual(photos.slice(0, 2).map((m) => m.caption), [
      '👀 Preview at step 1 of 4: your likeness so far.',
      '👀 Preview at step 3 of 4: your likeness so far.',
    ]);
    assert.match(photos[2]!.caption!, /Sample portraits/);
    // Settled: the final delivery found both previews recorded as sent and sent neither again.
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(emulator.botMessages(vera.id).filter((m) => /Preview at step/.test(m.caption ?? '')).length, 2);
    // While it ran, the status message said how long was left (at its pace so far).
    assert.ok(status.edits.some((text) => /Training your model: step [123] of 4[\s\S]*about \d+ seconds? left/.test(text)), status.edits.join(' | '));
  });

  test('Telegram: a preview the chat refused while training is sent by the final delivery, before the result', { timeout: 240_000 }, async () => {
    const yuri: EmulatedUser = { id: 7002, first_name: 'Yuri', language_code: 'ru' };
    let mark = Math.max(0, ...emulator.messages.keys());
    emulator.sendText(yuri, '/train');
    await emulator.waitFor(() => emulator.botMessages(yuri.id).find((m) => m.message_id > mark), 'the /train answer');
    mark = Math.max(0, ...emulator.messages.keys());
    emulator.sendAlbum(yuri, await makePhotos(3, 40));
    const enough = await emulator.waitFor(() => emulator.botMessages(yuri.id).find((m) => m.message_id > mark && m.reply_markup), 'the Train button');
    emulator.failNext('sendPhoto', { code: 500 }); // the first preview
    mark = Math.max(0, ...emulator.messages.keys());
    emulator.pressButton(yuri, enough.message_id, 'train_now');
    const photos = await emulator.waitFor(() => {
      const sent = emulator.botMessages(yuri.id).filter((m) => m.message_id > mark && m.photo);
      return sent.length === 2 + stack.env.config.likeness.samples && sent;
    }, 'the previews and the samples', 180_000);
    assert.deepEqual(photos.slice(0, 2).map((m) => m.caption), [
      '👀 Промежуточный портрет на шаге 3 из 4: так сходство выглядит сейчас.',
      '👀 Промежуточный портрет на шаге 1 из 4: так сходство выглядит сейчас.',
    ], 'step 3 live; step 1, refused live, with the final delivery');
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(emulator.botMessages(yuri.id).filter((m) => /Промежуточный портрет/.test(m.caption ?? '')).length, 2, 'each once');
  });

  test('a waiting training is estimated from the recent trainings’ mean duration', async () => {
    const finished = await stack.app.database.db.select().from(jobs).where(eq(jobs.status, 'completed'));
    const mean = finished.reduce((sum, j) => sum + (j.finishedAt!.getTime() - j.startedAt!.getTime()) / 1000, 0) / finished.length;
    const service = stack.app.services.jobs;
    assert.ok(Math.abs((await service.meanSeconds('train'))! - mean) < 0.01);
    assert.equal(await service.meanSeconds('generate'), null, 'no generation finished: no estimate');
    const waiting = { ...finished[0]!, status: 'queued' as const, startedAt: null, finishedAt: null, progress: 0 };
    const concurrency = stack.env.config.worker.trainConcurrency;
    assert.equal(await service.etaSeconds(waiting, 3), waitingEtaSeconds(3, mean, concurrency));
    const position = await service.position(waiting);
    assert.deepEqual(await service.place(waiting), { position, etaSeconds: waitingEtaSeconds(position, mean, concurrency) }, 'place: the same two in one round trip');
    // The chats' first answer to a training in line says it too, in the person's language.
    const conversation = new Conversation(stack.app);
    for (const locale of ['en', 'ru'] as const) {
      const person = { userId: waiting.userId, platform: 'telegram' as const, locale, t: translator(locale) };
      const reply = await conversation.queued(person, waiting, 3);
      assert.equal(reply.text, `${person.t('progress.queued', { what: person.t('what.train'), position: 3 })}\n${etaText(person.t, waitingEtaSeconds(3, mean, concurrency)!)}`);
    }
  });

  test('web: a training waiting behind another shows its place in line and an ETA', { timeout: 240_000 }, async () => {
    const [first, second] = [new PlaygroundClient(stack.baseUrl), new PlaygroundClient(stack.baseUrl)];
    for (const [n, client] of [first, second].entries()) {
      await client.upload('/api/photos', (await makePhotos(3, 50 + 10 * n)).map((data, i): [string, Buffer] => [`p${i}.jpg`, data]));
    }
    const running = await first.post('/api/train');
    const waiting = await second.post('/api/train');
    const { body } = await second.json('/api/state');
    const job = body.jobs.find((j: any) => j.id === waiting.body.jobId);
    assert.equal(job.status, 'queued');
    assert.equal(job.position, 1);
    assert.ok(typeof job.etaSeconds === 'number' && job.etaSeconds > 0, `an estimate from the finished trainings: ${job.etaSeconds}`);
    // The chats' /status says it too.
    const shown = await status(new Conversation(stack.app), { userId: job.userId, platform: 'telegram', locale: 'en', t: translator('en') });
    assert.match(shown.text!, /• Training: waiting, position 1 · about \d+ (seconds|minutes?) left/);
    for (const [client, started] of [[first, running], [second, waiting]] as const) {
      assert.equal((await client.waitForJob(started.body.jobId)).job.status, 'completed');
    }
  });

  test('a preview is recorded only while its training runs, and a finished model keeps its previews', async () => {
    const [done] = await stack.app.database.db.select().from(jobs).where(eq(jobs.status, 'completed'));
    const state = stack.app.services.jobState;
    // A late preview (the job finished, was cancelled or forgotten meanwhile) is refused; the worker drops its blob.
    assert.equal(await state.preview(done!.id, 2, 4, 'late.png'), undefined);
    assert.deepEqual(await state.dropPreviews(done!.id), [], 'only a training without a model loses its previews');
    assert.equal((await stack.app.database.db.select().from(trainingPreviews).where(eq(trainingPreviews.jobId, done!.id))).length, 2);
  });
});
