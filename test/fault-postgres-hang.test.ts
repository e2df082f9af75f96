// Fault: a Postgres that accepts connections but never answers (frozen, or a network path that swallows packets).
// The stack's pool reaches the shared server through a test-owned proxy that the test makes silent; the shared server
// itself is never touched. Every request must fail within a bound, in the person's language, instead of hanging.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { PlaygroundClient } from './helpers/stack.ts';
import { startChatStack, type ChatStack } from './helpers/chat-stack.ts';
import { createTestDatabase } from './helpers/env.ts';
import { silentProxy, type SilentProxy } from './helpers/net.ts';
import type { EmulatedUser } from './emulators/telegram.ts';
import type { EmulatedDiscordUser } from './emulators/discord.ts';

const CONNECT_TIMEOUT_MS = 1000;
const QUERY_TIMEOUT_MS = 1500;
// The slowest path: a transaction whose BEGIN and ROLLBACK each wait out the client's read timeout (query + 1 s).
const BOUND_MS = 2 * (QUERY_TIMEOUT_MS + 1000) + 2000;
// (A request waiting for a free connection gives up after a connect plus a statement: 1 + 2.5 s, within the bound.)

let database: Awaited<ReturnType<typeof createTestDatabase>>;
let proxy: SilentProxy;
let chat: ChatStack;
const CYRILLIC = /[А-Яа-яЁё]/;
const ruApology = 'Наша база данных сейчас недоступна; попробуйте через минуту.';
const enApology = 'Our database is unavailable right now; please try again in a minute.';

before(async () => {
  database = await createTestDatabase();
  const target = new URL(database.url);
  proxy = await silentProxy({ host: target.hostname, port: Number(target.port) });
  chat = await startChatStack({
    DATABASE_URL: proxy.via(database.url),
    DATABASE_CONNECT_TIMEOUT_MS: String(CONNECT_TIMEOUT_MS),
    DATABASE_QUERY_TIMEOUT_MS: String(QUERY_TIMEOUT_MS),
  });
});
after(async () => {
  await chat?.close();
  await proxy?.close();
  await database?.drop();
});

function browser(locale: 'en' | 'ru') {
  const client = new PlaygroundClient(chat.stack.baseUrl);
  const request = client.request.bind(client);
  client.request = (path, init = {}) => request(path, { ...init, headers: { 'accept-language': locale, ...(init.headers as Record<string, string>) } });
  return client;
}

test('Postgres that accepts but never answers: web, Telegram and Discord answer "database unavailable" within a bound, in the person\'s language, and work again after', { timeout: 120_000 }, async () => {
  const { telegram, discord } = chat;
  const en = browser('en');
  const ru = browser('ru');
  // Both people exist before the hang, so some answers come from pooled connections that were already open.
  assert.equal((await en.post('/api/consent')).status, 200);
  assert.equal((await ru.post('/api/consent')).status, 200);
  const vera: EmulatedUser = { id: 8201, first_name: 'Вера', language_code: 'ru' };
  const dima: EmulatedDiscordUser = { id: '720000000000000001', username: 'dima', locale: 'ru' };
  const lastMessage = () => Math.max(0, ...telegram.messages.keys());
  let mark = lastMessage();
  telegram.sendText(vera, '/status');
  await telegram.waitFor(() => telegram.botMessages(vera.id).find((m) => m.message_id > mark), 'a first answer');
  const before = discord.command(dima, 'status');
  await discord.waitFor(() => before.original?.content, 'a first Discord answer');

  proxy.hang();
  const timings: Record<string, number> = {};
  const timed = async <T>(name: string, call: () => Promise<T>): Promise<T> => {
    const started = Date.now();
    const value = await call();
    timings[name] = Date.now() - started;
    assert.ok(timings[name] < BOUND_MS, `${name} answered in ${timings[name]} ms (bound ${BOUND_MS} ms)`);
    return value;
  };
  await Promise.all(([[en, 'en'], [ru, 'ru']] as const).flatMap(([client, locale]) => ([
    ['GET /api/status', () => client.json('/api/status')],
    ['POST /api/imagine', () => client.post('/api/imagine', { prompt: 'a portrait' })],
    ['new visitor POST /api/train', () => browser(locale).post('/api/train')],
  ] as const).map(async ([path, call]) => {
    const { status, body } = await timed(`${locale} ${path}`, call);
    assert.equal(status, 503, `${path}: ${JSON.stringify(body)}`);
    assert.equal(body.error.code, 'database_unavailable', path);
    assert.equal(CYRILLIC.test(body.error.message), locale === 'ru', `${path} in ${locale}: ${body.error.message}`);
  })));

  mark = lastMessage();
  const heard = await timed('Telegram /status', async () => {
    telegram.sendText(vera, '/status');
    return telegram.waitFor(() => telegram.botMessages(vera.id).find((m) => m.message_id > mark), 'the apology', BOUND_MS);
  });
  assert.equal(heard.text, ruApology);
  const record = await timed('Discord /status', async () => {
    const interaction = discord.command(dima, 'status');
    await discord.waitFor(() => interaction.followUps[0], 'the apology', BOUND_MS);
    return interaction;
  });
  assert.equal(record.followUps[0]!.content, ruApology);
  assert.ok(discord.isEphemeral(record.followUps[0]!), 'the apology is shown only to the person');
  const sam = await timed('Discord /status from a new English speaker', async () => {
    const interaction = discord.command({ id: '720000000000000002', username: 'sam', locale: 'en-GB' }, 'status');
    await discord.waitFor(() => interaction.followUps[0], 'the apology', BOUND_MS);
    return interaction;
  });
  assert.equal(sam.followUps[0]!.content, enApology);

  proxy.resume();
  const resumed = Date.now();
  // The same pool recovers: a request answers normally, nothing was restarted.
  for (;;) {
    const status = await en.json('/api/status');
    if (status.status === 200) break;
    assert.ok(Date.now() - resumed < 10_000, `still ${status.status} 10 s after the database answered again`);
    await new Promise((r) => setTimeout(r, 200));
  }
  const recoveredMs = Date.now() - resumed;
  mark = lastMessage();
  telegram.sendText(vera, '/status');
  const after = await telegram.waitFor(() => telegram.botMessages(vera.id).find((m) => m.message_id > mark), 'an answer after the hang', 10_000);
  assert.notEqual(after.text, ruApology);
  console.log(`# pg hang: ${JSON.stringify(timings)}; bound ${BOUND_MS} ms; answering again ${recoveredMs} ms after the database did`);
});
