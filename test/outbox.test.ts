// The outbox for final deliveries (bots/shared/notifier.ts + src/services/chat-targets.ts): a finished job's message
// is sent under a lease, part by part, each part recorded once the chat API accepted it. The windows are forced open
// against the Telegram emulator: a failed final edit, a sender killed (kill -9) between two parts, two processes
// racing, a chat that blocked the bot.
import { after, before, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { eq } from 'drizzle-orm';
import pino from 'pino';
import { Telegraf } from 'telegraf';
import { adapters, chatTargets, generations, jobs } from '../src/db/schema.ts';
import { Conversation } from '../bots/shared/conversation.ts';
import { status as statusReply } from '../bots/shared/status.ts';
import { createApp, type App } from '../src/app.ts';
import { JobNotifier } from '../bots/shared/notifier.ts';
import { TelegramSurface } from '../bots/telegram/surface.ts';
import { TelegramSendQueue } from '../bots/telegram/send-queue.ts';
import type { TelegramTarget } from '../bots/telegram/context.ts';
import { TelegramEmulator } from './emulators/telegram.ts';
import { eventually, startStack, type Stack } from './helpers/stack.ts';
import { makePhotos } from './helpers/images.ts';

const emulator = new TelegramEmulator();
let stack: Stack;
/** A second app (its own connections) whose log lines we keep. */
let app: App;
const logLines: Array<Record<string, any>> = [];
let telegraf: Telegraf;
let nextChat = 7000;

const notifier = (options: { deliveryLeaseMs?: number } = {}) =>
  new JobNotifier<TelegramTarget>(app, new TelegramSurface(telegraf.telegram), { editIntervalMs: 100, sweepIntervalMs: 3_600_000, deliveryBackoffMs: 200, ...options });

before(async () => {
  await emulator.start();
  stack = await startStack({ TELEGRAM_BOT_TOKEN: emulator.token, TELEGRAM_API_ROOT: emulator.url }, false);
  app = await createApp(stack.env.config, pino({ level: 'info' }, { write: (line: string) => void logLines.push(JSON.parse(line)) }));
  telegraf = new Telegraf(emulator.token, { telegram: { apiRoot: emulator.url } });
  new TelegramSendQueue(app.logger).wrap(telegraf.telegram);
});

after(async () => {
  await app.close();
  await stack.close();
  await emulator.stop();
});

beforeEach(() => {
  for (const method of ['sendMediaGroup', 'editMessageText', 'sendDocument']) emulator.onCall(method, undefined);
});

/** A finished /imagine with two pictures, shown in a fresh chat's status message, as the worker leaves it. */
async function finishedJob() {
  const chatId = nextChat++;
  const user = await stack.app.services.users.resolve('telegram', String(chatId), { locale: 'en' });
  const keys = await Promise.all((await makePhotos(2, 70)).map(async (data) => (await stack.app.store.put(data, 'png')).key));
  const db = stack.app.database.db;
  const [job] = await db.insert(jobs).values({ userId: user.id, kind: 'imagine', status: 'completed', queueJobId: randomUUID(), progress: 1 }).returning();
  await db.insert(generations).values({
    userId: user.id, jobId: job!.id, kind: 'imagine', prompt: 'me as an astronaut', seed: 42, outputKeys: keys,
    params: { steps: 2, guidanceScale: 7.5, width: 64, height: 64, scheduler: 'unipc', loraScale: 1 },
  });
  const status = await telegraf.telegram.sendMessage(chatId, '🎨 Portrait: starting…');
  await stack.app.services.chatTargets.register(job!.id, user.id, 'telegram', { chatId, messageId: status.message_id }, 'en');
  return { chatId, jobId: job!.id, statusId: status.message_id };
}

/** What the chat shows: photo messages, document messages, and the status message's edits. */
function shown(chatId: number, statusId: number) {
  const messages = emulator.botMessages(chatId);
  return {
    photos: messages.filter((m) => m.photo).length,
    documents: messages.filter((m) => m.document).length,
    edits: emulator.messages.get(statusId)!.edits,
  };
}

const row = async (jobId: string) => (await stack.app.database.db.select().from(chatTargets).where(eq(chatTargets.jobId, jobId)))[0]!;
/** The row once the sender recorded the delivery as done (just after its last call returned). */
const deliveredRow = (jobId: string) => eventually(async () => { const r = await row(jobId); return r.deliveredAt ? r : undefined; }, 5000, 'the delivery to be recorded');
const isDocuments = (params: Record<string, any>) => JSON.stringify(params.media ?? '').includes('"document"');

describe('outbox', () => {
  test('a failed final edit is retried alone: the pictures are not sent again', async () => {
    const { chatId, jobId, statusId } = await finishedJob();
    emulator.failNext('editMessageText', { code: 502, description: 'Bad Gateway' });
    const a = notifier();
    await a.sweep();
    assert.deepEqual(shown(chatId, statusId), { photos: 2, documents: 2, edits: [] }, 'pictures and files went out, the edit failed');
    // The retry comes by itself after the backoff (200 ms here).
    await emulator.waitFor(() => shown(chatId, statusId).edits.length === 1, 'the retried edit', 10_000);
    assert.deepEqual(shown(chatId, statusId), { photos: 2, documents: 2, edits: ['✅ Portrait done.'] }, 'nothing sent twice');
    const final = await deliveredRow(jobId);
    assert.equal(final.attempts, 2);
    assert.deepEqual(Object.keys(final.parts).sort(), ['documents:0', 'images:0', 'status']);
    await a.stop();
  });

  test('a dropped connection (network failure) on the album: retried, sent once', async () => {
    const { chatId, jobId, statusId } = await finishedJob();
    emulator.failNext('sendMediaGroup', { drop: true });
    const a = notifier();
    await a.sweep();
    await emulator.waitFor(() => shown(chatId, statusId).edits.length === 1, 'the retried delivery', 10_000);
    assert.deepEqual(shown(chatId, statusId), { photos: 2, documents: 2, edits: ['✅ Portrait done.'] });
    const final = await deliveredRow(jobId);
    assert.equal(final.attempts, 2);
    await a.stop();
  });

  test('a sender killed between two parts: another process resumes after its lease expires, no part repeated', { timeout: 120_000 }, async () => {
    const { chatId, jobId, statusId } = await finishedJob();
    const config = stack.env.config;
    const env = {
      DATABASE_URL: config.databaseUrl, REDIS_URL: config.redisUrl, QUEUE_PREFIX: config.queuePrefix, STORAGE_DIR: config.storageDir,
      WORK_DIR: config.workDir, ENGINE_PROFILE: 'tiny', LOG_LEVEL: 'silent', TELEGRAM_BOT_TOKEN: emulator.token, TELEGRAM_API_ROOT: emulator.url,
    };
    const leaseMs = 3000;
    let child: ChildProcess | undefined;
    const killed = new Promise<void>((resolve) => {
      // The album was accepted and recorded; the files are next. The sender dies before they reach Telegram.
      emulator.onCall('sendMediaGroup', async (call) => {
        if (!isDocuments(call.params) || !child) return;
        const exited = new Promise((r) => child!.once('exit', r));
        child.kill('SIGKILL');
        await exited;
        resolve();
        return { drop: true };
      });
    });
    child = spawn(process.execPath, ['--import', 'tsx', 'test/helpers/telegram-sender.ts', JSON.stringify([env, { deliveryLeaseMs: leaseMs }])], { stdio: ['ignore', 'pipe', 'inherit'] });
    await killed;
    emulator.onCall('sendMediaGroup', undefined);
    const crashed = await row(jobId);
    assert.deepEqual(Object.keys(crashed.parts), ['images:0'], 'the album is recorded, the files are not');
    assert.equal(crashed.deliveredAt, null);
    assert.deepEqual(shown(chatId, statusId), { photos: 2, documents: 0, edits: [] });

    const b = notifier({ deliveryLeaseMs: leaseMs });
    await b.sweep();
    assert.equal(shown(chatId, statusId).documents, 0, 'the dead sender’s lease still holds: nobody else sends yet');
    await new Promise((r) => setTimeout(r, Math.max(0, new Date(crashed.leaseUntil!).getTime() - Date.now()) + 200));
    await b.sweep();
    assert.deepEqual(shown(chatId, statusId), { photos: 2, documents: 2, edits: ['✅ Portrait done.'] }, 'the rest once, the album not again');
    const final = await deliveredRow(jobId);
    assert.equal(final.attempts, 2);
    assert.equal(final.leaseOwner, null);
    await b.stop();
  });

  test('two bot processes racing for one delivery: one sends it, the other never takes over while the lease is renewed', async () => {
    const { chatId, jobId, statusId } = await finishedJob();
    // Slow parts keep the window open: each takes longer than half the lease.
    for (const method of ['sendMediaGroup', 'editMessageText']) emulator.onCall(method, () => new Promise<void>((r) => setTimeout(r, 400)));
    const other = await createApp(stack.env.config, pino({ level: 'silent' }));
    const a = notifier({ deliveryLeaseMs: 700 });
    const b = new JobNotifier<TelegramTarget>(other, new TelegramSurface(telegraf.telegram), { editIntervalMs: 100, sweepIntervalMs: 3_600_000, deliveryLeaseMs: 700 });
    let racing = true;
    const pester = (async () => { while (racing) { await b.sweep(); await new Promise((r) => setTimeout(r, 50)); } })();
    await Promise.all([a.sweep(), b.sweep()]);
    await emulator.waitFor(() => shown(chatId, statusId).edits.length === 1, 'the delivery', 10_000);
    await new Promise((r) => setTimeout(r, 300));
    racing = false;
    await pester;
    assert.deepEqual(shown(chatId, statusId), { photos: 2, documents: 2, edits: ['✅ Portrait done.'] });
    const final = await deliveredRow(jobId);
    assert.equal(final.attempts, 1, 'leased once');
    await a.stop();
    await b.stop();
    await other.close();
  });

  test('a chat that blocked the bot: given up at once, with a log line, never retried', async () => {
    const { chatId, jobId, statusId } = await finishedJob();
    emulator.failNext('sendMediaGroup', { code: 403, description: 'Forbidden: bot was blocked by the user' });
    const a = notifier();
    await a.sweep();
    const calls = emulator.calls.length;
    await new Promise((r) => setTimeout(r, 600));
    await a.sweep();
    assert.equal(emulator.calls.length, calls, 'no retry');
    assert.deepEqual(shown(chatId, statusId), { photos: 0, documents: 0, edits: [] });
    const final = await row(jobId);
    assert.ok(final.failedAt);
    assert.equal(final.deliveredAt, null);
    assert.match(final.lastError!, /blocked/);
    const line = logLines.find((l) => l.msg === 'gave up delivering a finished job' && l.jobId === jobId);
    assert.ok(line, 'the give-up is logged');
    assert.equal(line.part, 'images:0');
    await a.stop();
  });

  test('429 with retry_after on the album: sent once, after the wait', async () => {
    const { chatId, jobId, statusId } = await finishedJob();
    emulator.failNext('sendMediaGroup', { code: 429, retryAfter: 1 });
    const a = notifier();
    const started = Date.now();
    await a.sweep();
    await emulator.waitFor(() => shown(chatId, statusId).edits.length === 1, 'the delivery', 10_000);
    assert.ok(Date.now() - started >= 1000, 'retry_after was honoured');
    assert.deepEqual(shown(chatId, statusId), { photos: 2, documents: 2, edits: ['✅ Portrait done.'] });
    assert.equal((await deliveredRow(jobId)).attempts, 1, 'waited inside the attempt, by the per-chat send queue');
    await a.stop();
  });

  test('versions are numbered by finished models: after a cancelled training the first ready one is version 1', async () => {
    const chatId = nextChat++;
    const user = await stack.app.services.users.resolve('telegram', String(chatId), { locale: 'en' });
    const db = stack.app.database.db;
    const adapter = (version: number, status: 'cancelled' | 'ready') =>
      db.insert(adapters).values({ userId: user.id, version, status, baseModel: 'tiny', params: {}, photoIds: [] }).returning().then((r) => r[0]!);
    await adapter(1, 'cancelled');
    const ready = await adapter(2, 'ready');
    const [job] = await db.insert(jobs).values({ userId: user.id, kind: 'train', status: 'completed', queueJobId: randomUUID(), progress: 1, adapterId: ready.id }).returning();
    const status = await telegraf.telegram.sendMessage(chatId, '🧠 Training…');
    await stack.app.services.chatTargets.register(job!.id, user.id, 'telegram', { chatId, messageId: status.message_id }, 'en');
    const a = notifier();
    await a.sweep();
    assert.deepEqual(shown(chatId, status.message_id).edits, ['✅ Your model (version 1) is ready! Try /imagine me as an astronaut.']);
    const conversation = new Conversation(stack.app);
    assert.match((await statusReply(conversation, await conversation.person('telegram', String(chatId)))).text, /Model: version 1, ready/);
    await a.stop();
  });
});
