// Fault: Postgres goes away under a running stack. The stack (web, services, worker with the real tiny engine) is
// pointed at a test-owned cluster on its own port, which the test stops and starts again; the shared 5432 server is
// never touched.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { PlaygroundClient, eventually, startStack, type Stack } from './helpers/stack.ts';
import { createPgCluster, type PgCluster } from './helpers/own-services.ts';
import { makePhotos } from './helpers/images.ts';
import { createTelegramBot, type TelegramBot } from '../bots/telegram/bot.ts';
import { TelegramEmulator, type EmulatedUser } from './emulators/telegram.ts';
import { createDiscordBot, type DiscordBot } from '../bots/discord/bot.ts';
import { DiscordEmulator, type EmulatedDiscordUser } from './emulators/discord.ts';

let cluster: PgCluster;
let stack: Stack;
const emulator = new TelegramEmulator();
let telegram: TelegramBot;
const vera: EmulatedUser = { id: 8101, first_name: 'Вера', language_code: 'ru' };
const discordEmulator = new DiscordEmulator();
let discord: DiscordBot;
const dima: EmulatedDiscordUser = { id: '710000000000000001', username: 'dima', locale: 'ru' };

before(async () => {
  cluster = await createPgCluster();
  await Promise.all([emulator.start(), discordEmulator.start()]);
  stack = await startStack({
    DATABASE_URL: cluster.url('portrait'),
    TELEGRAM_BOT_TOKEN: emulator.token, TELEGRAM_API_ROOT: emulator.url,
    DISCORD_TOKEN: discordEmulator.token, DISCORD_APPLICATION_ID: discordEmulator.applicationId, DISCORD_API_ROOT: discordEmulator.api,
    MIN_TRAINING_PHOTOS: '2', TRAIN_MAX_STEPS: '2', LIKENESS_SAMPLES: '1', TRAIN_CHECKPOINT_STEPS: '0',
  });
  telegram = createTelegramBot(stack.app, { sweepIntervalMs: 1000 });
  await telegram.start();
  discord = createDiscordBot(stack.app, { sweepIntervalMs: 1000 });
  await discord.start();
});
after(async () => {
  await telegram?.stop();
  await discord?.stop();
  await stack?.close();
  await emulator.stop();
  await discordEmulator.stop();
  await cluster?.destroy();
});

const CYRILLIC = /[А-Яа-яЁё]/;

/** A playground client that asks for a language, as a browser does. */
function browser(locale: 'en' | 'ru') {
  const client = new PlaygroundClient(stack.baseUrl);
  const request = client.request.bind(client);
  client.request = (path, init = {}) => request(path, { ...init, headers: { 'accept-language': locale, ...(init.headers as Record<string, string>) } });
  return client;
}

test('Postgres stopped: requests answer 503 in the person\'s language within seconds, the worker lives on, and all works again after restart', { timeout: 180_000 }, async () => {
  const en = browser('en');
  const ru = browser('ru');
  const photos = await makePhotos(4, 300);
  for (const [client, pair] of [[en, photos.slice(0, 2)], [ru, photos.slice(2)]] as const) {
    const uploaded = await client.upload('/api/photos', pair.map((p, i) => [`p${i}.jpg`, p] as [string, Buffer]));
    assert.equal(uploaded.status, 200, JSON.stringify(uploaded.body));
  }

  const lastMessage = () => Math.max(0, ...emulator.messages.keys());
  const veraHears = (pattern: RegExp, since: number) =>
    emulator.waitFor(() => emulator.botMessages(vera.id).find((m) => m.message_id > since && pattern.test(m.text ?? '')), String(pattern), 10_000);
  let mark = lastMessage();
  emulator.sendText(vera, '/status');
  await veraHears(/./, mark);

  const stoppedAt = Date.now();
  await cluster.stop();
  const stopMs = Date.now() - stoppedAt;
  const answers: Array<{ path: string; status: number; ms: number }> = [];
  for (const [client, locale] of [[en, 'en'], [ru, 'ru']] as const) {
    const calls: Array<[string, () => Promise<{ status: number; body: any }>]> = [
      ['GET /api/status', () => client.json('/api/status')],
      ['POST /api/train', () => client.post('/api/train')],
      ['POST /api/imagine', () => client.post('/api/imagine', { prompt: 'a portrait' })],
      ['POST /api/photos', () => client.upload('/api/photos', [['p.jpg', photos[0]!]])],
      ['new visitor POST /api/train', () => browser(locale).post('/api/train')],
    ];
    for (const [path, call] of calls) {
      const started = Date.now();
      const { status, body } = await call();
      const ms = Date.now() - started;
      answers.push({ path, status, ms });
      assert.equal(status, 503, `${path}: ${JSON.stringify(body)}`);
      assert.equal(body.error.code, 'database_unavailable', path);
      assert.equal(CYRILLIC.test(body.error.message), locale === 'ru', `${path} answered in ${locale}: ${body.error.message}`);
      assert.ok(!/ECONNREFUSED|terminat|pg|postgres/i.test(body.error.message), `no library text: ${body.error.message}`);
      assert.ok(ms < 3000, `${path} answered in ${ms} ms`);
    }
  }
  // A chat command: the person is told, in their language, that the database is away (not "something went wrong").
  mark = lastMessage();
  const chatAsked = Date.now();
  emulator.sendText(vera, '/status');
  const apology = await veraHears(/./, mark);
  assert.equal(apology.text, 'Наша база данных сейчас недоступна; попробуйте через минуту.');
  const chatMs = Date.now() - chatAsked;
  // The same on Discord: the interaction is acknowledged, then the apology follows, only to the person, in the
  // language of their Discord client.
  const discordAsked = Date.now();
  const interaction = discordEmulator.command(dima, 'status');
  const discordApology = await discordEmulator.waitFor(() => interaction.followUps[0], 'the Discord apology', 10_000);
  assert.equal(discordApology.content, 'Наша база данных сейчас недоступна; попробуйте через минуту.');
  assert.ok(discordEmulator.isEphemeral(discordApology), 'the apology is shown only to the person');
  const discordMs = Date.now() - discordAsked;
  // The worker's own database work fails without taking it down: a reconciliation run reports the failure.
  await assert.rejects(stack.worker!.reconcile(0));
  await new Promise((r) => setTimeout(r, 1000));

  const restartedAt = Date.now();
  await cluster.start();
  const restartMs = Date.now() - restartedAt;
  // The pool reconnects on the next request; nothing had to be restarted.
  const status = await en.json('/api/status');
  assert.equal(status.status, 200, JSON.stringify(status.body));
  assert.equal(status.body.photos, 2);
  mark = lastMessage();
  emulator.sendText(vera, '/status');
  assert.doesNotMatch((await veraHears(/./, mark)).text!, /недоступна/, 'the chat works again');
  const again = discordEmulator.command(dima, 'status');
  await discordEmulator.waitFor(() => again.original?.content, 'a Discord answer after the restart', 10_000);
  assert.doesNotMatch(again.original!.content, /недоступна/, 'Discord works again');
  const report = await stack.worker!.reconcile(0);
  assert.ok(report, 'the worker reconciles again');
  const jobStarted = Date.now();
  await Promise.all([en, ru].map(async (client) => {
    const train = await client.post('/api/train');
    assert.equal(train.status, 202, JSON.stringify(train.body));
    const done = await client.waitForJob(train.body.jobId, 150_000);
    assert.equal(done.job.status, 'completed', JSON.stringify(done.job));
  }));
  await eventually(async () => (await ru.json('/api/status')).body.adapters.some((a: any) => a.status === 'ready'), 10_000, 'the adapter to be ready');
  const slowest = Math.max(...answers.map((a) => a.ms));
  console.log(`# pg fault: stop ${stopMs} ms, ${answers.length} requests answered 503 (slowest ${slowest} ms), Telegram apology in ${chatMs} ms, Discord apology in ${discordMs} ms, restart ${restartMs} ms, two trainings after restart ${Date.now() - jobStarted} ms`);
});
