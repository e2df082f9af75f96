// Privacy sweep. Anna has everything a person can have (photos, a trained model, a portrait, jobs, chat targets, a
// Telegram and a linked Discord account); Boris, a person of his own, tries every way in to her things: every web API
// route (enumerated from the server, so a new route fails this test until it is listed here) with her ids, guessed
// ids and blob keys, and her chat buttons. Nothing of hers may reach him or change. Then Anna /forgets, and no table,
// file, work folder or Redis key or value names her. Secrets never appear in the run's logs, captured at debug level.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { Writable } from 'node:stream';
import { join, relative } from 'node:path';
import { eq, inArray, sql } from 'drizzle-orm';
import { accounts, adapters, chatTargets, generations, jobs, photos, trainingPreviews, users } from '../src/db/schema.ts';
import { createLogger } from '../src/logging.ts';
import { startChatStack, type ChatStack } from './helpers/chat-stack.ts';
import { createTestDatabase } from './helpers/env.ts';
import { PlaygroundClient, eventually } from './helpers/stack.ts';
import { makePhotos, makeSkeleton } from './helpers/images.ts';
import type { EmulatedUser } from './emulators/telegram.ts';
import type { EmulatedDiscordUser } from './emulators/discord.ts';

const S3_SECRET = 'privacy-s3-secret-Zq8v2Kp';
const DB_PASSWORD = 'privacy-db-pw-Xr71Lm';
const logLines: string[] = [];
let database: Awaited<ReturnType<typeof createTestDatabase>>;
let chat: ChatStack;

const anna: EmulatedUser = { id: 731_904_226, first_name: 'Anna', language_code: 'en' };
const annaDiscord: EmulatedDiscordUser = { id: '731904226000000001', username: 'anna', locale: 'en-US' };
const boris: EmulatedUser = { id: 842_615_337, first_name: 'Boris', language_code: 'en' };
const borisDiscord: EmulatedDiscordUser = { id: '842615337000000002', username: 'boris', locale: 'en-US' };

before(async () => {
  database = await createTestDatabase();
  const url = new URL(database.url);
  // Trust authentication ignores the password, so it can be configured (and must then never be logged).
  url.password = DB_PASSWORD;
  const capture = new Writable({ write(chunk, _encoding, done) { logLines.push(String(chunk)); done(); } });
  chat = await startChatStack({
    DATABASE_URL: url.toString(), S3_SECRET_ACCESS_KEY: S3_SECRET, LOG_LEVEL: 'debug',
    MIN_TRAINING_PHOTOS: '2', TRAIN_MAX_STEPS: '2', LIKENESS_SAMPLES: '1', TRAIN_CHECKPOINT_STEPS: '0', TRAIN_PREVIEWS: '1',
  }, { worker: true, logger: (config) => createLogger(config, capture) });
});
after(async () => {
  await chat?.close();
  await database?.drop();
});

const CHAT_IDLE = /./;

test('another person reaches none of Anna\'s things by any route, id, key or button; after /forget nothing names her; no secret is logged', { timeout: 400_000 }, async () => {
  const { stack, telegram, discord } = chat;
  const db = stack.app.database.db;
  const lastMessage = () => Math.max(0, ...telegram.messages.keys());
  const says = (user: EmulatedUser, pattern: RegExp, since: number, timeoutMs = 60_000) =>
    telegram.waitFor(() => telegram.botMessages(user.id).find((m) => m.message_id > since && pattern.test(m.text ?? m.caption ?? '')), String(pattern), timeoutMs);

  // ---- Anna: photos, a model, a portrait, on Telegram; her Discord account linked ------------------------------
  const [p1, p2, p3, p4] = await makePhotos(4, 40);
  let mark = lastMessage();
  telegram.sendText(anna, '/train');
  await says(anna, /You have 0 so far/, mark);
  mark = lastMessage();
  telegram.sendDocument(anna, p1!, 'a1.jpg', 'image/jpeg');
  await says(anna, /a1\.jpg: accepted/, mark);
  mark = lastMessage();
  telegram.sendDocument(anna, p2!, 'a2.jpg', 'image/jpeg');
  const enough = await says(anna, /a2\.jpg: accepted/, mark);
  mark = lastMessage();
  telegram.pressButton(anna, enough.message_id, 'train_now');
  const [annaAccount] = await db.select().from(accounts).where(eq(accounts.externalId, String(anna.id)));
  const annaId = annaAccount!.userId;
  await eventually(async () => (await db.select().from(adapters).where(eq(adapters.userId, annaId))).some((a) => a.status === 'ready'), 180_000, 'Anna\'s model');

  // Boris, on the web (with a photo of his own) and in both chats, listening to his event stream meanwhile.
  const web = new PlaygroundClient(stack.baseUrl);
  assert.equal((await web.upload('/api/photos', [['b.jpg', p3!]])).status, 200);
  const events = new AbortController();
  const streamed: string[] = [];
  const stream = fetch(`${stack.baseUrl}/api/events`, { headers: { cookie: web.cookie, origin: stack.baseUrl }, signal: events.signal })
    .then(async (response) => { for await (const chunk of response.body!) streamed.push(Buffer.from(chunk).toString('utf8')); })
    .catch(() => undefined);
  mark = lastMessage();
  telegram.sendText(boris, '/start');
  await says(boris, CHAT_IDLE, mark);

  mark = lastMessage();
  telegram.sendText(anna, '/imagine me in a garden');
  await telegram.waitFor(() => telegram.botMessages(anna.id).find((m) => m.message_id > mark && m.photo), 'Anna\'s portrait', 120_000);
  mark = lastMessage();
  telegram.sendText(anna, '/link');
  const code = /code: (\S+)/.exec((await says(anna, /link code/, mark)).text!)![1]!;
  const linked = discord.command(annaDiscord, 'link', { code });
  await discord.waitFor(() => /Linked/.test(linked.original?.content ?? '') && linked.original, 'Discord linked');
  const borisHello = discord.command(borisDiscord, 'status');
  await discord.waitFor(() => borisHello.original?.content, 'Boris on Discord');
  await eventually(async () => (await db.select().from(chatTargets).where(eq(chatTargets.userId, annaId))).every((t) => t.deliveredAt), 30_000, 'deliveries done');

  // Everything that names Anna: ids of her rows, her platform ids and chat ids, her blob keys.
  const annaJobs = await db.select().from(jobs).where(eq(jobs.userId, annaId));
  const annaPhotos = await db.select().from(photos).where(eq(photos.userId, annaId));
  const annaAdapters = await db.select().from(adapters).where(eq(adapters.userId, annaId));
  const annaGenerations = await db.select().from(generations).where(eq(generations.userId, annaId));
  const annaAccounts = await db.select().from(accounts).where(eq(accounts.userId, annaId));
  const annaPreviews = await db.select().from(trainingPreviews).where(eq(trainingPreviews.userId, annaId));
  assert.equal(annaPreviews.length, 1, 'her training painted a preview');
  assert.equal(annaAccounts.length, 2, 'Telegram and Discord');
  assert.ok(annaJobs.length >= 2 && annaGenerations.length >= 1 && annaPhotos.length === 2);
  const blobKeys = [
    ...annaPhotos.flatMap((p) => [p.storageKey, p.cropKey]),
    ...annaAdapters.flatMap((a) => [a.fileKey, a.kohyaFileKey, ...a.sampleKeys]),
    ...annaGenerations.flatMap((g) => [g.controlKey, ...g.outputKeys]),
    ...annaPreviews.map((p) => p.key),
  ].filter((k): k is string => !!k);
  const discordChannel = discord.dmChannels.get(annaDiscord.id)!;
  const names: Record<string, string> = {
    'user id': annaId, 'Telegram id': String(anna.id), 'Discord id': annaDiscord.id, 'Discord DM channel': discordChannel,
    ...Object.fromEntries(annaAccounts.map((a) => [`account ${a.platform}`, a.id])),
    ...Object.fromEntries(annaJobs.map((j) => [`job ${j.kind}`, j.id])),
    ...Object.fromEntries(annaPhotos.map((p, i) => [`photo ${i}`, p.id])),
    ...Object.fromEntries(annaAdapters.map((a) => [`adapter ${a.version}`, a.id])),
    ...Object.fromEntries(annaGenerations.map((g, i) => [`generation ${i}`, g.id])),
    ...Object.fromEntries(annaPreviews.map((p) => [`preview ${p.step}`, p.id])),
    ...Object.fromEntries(blobKeys.map((k) => [`blob ${k}`, k])),
  };
  const namesIn = (text: string) => Object.entries(names).filter(([, value]) => text.includes(value)).map(([what]) => what);

  /** Anna's rows (each table, as text) and her blobs: must not change while Boris tries. */
  const tables = (await db.execute<{ name: string }>(sql`select tablename as name from pg_tables where schemaname = 'public' order by 1`)).rows.map((r) => r.name);
  const rowsNaming = async (values: string[]) => {
    const found: string[] = [];
    for (const table of tables) {
      const rows = (await db.execute<{ t: string }>(sql`select t::text as t from ${sql.identifier(table)} t`)).rows;
      for (const { t } of rows) if (values.some((v) => t.includes(v))) found.push(`${table}: ${t}`);
    }
    return found.sort();
  };
  const annaValues = Object.values(names);
  const annaBefore = await rowsNaming(annaValues);
  const storedFiles = async () => (await readdir(stack.env.config.storageDir, { recursive: true, withFileTypes: true }))
    .filter((e) => e.isFile()).map((e) => relative(stack.env.config.storageDir, join(e.parentPath, e.name)));
  const annaFiles = async () => (await storedFiles()).filter((f) => blobKeys.some((k) => f.includes(k.split('/').pop()!.split('.')[0]!)));
  const filesBefore = await annaFiles();
  assert.ok(filesBefore.length >= blobKeys.length / 2, `Anna's blobs are on disk: ${filesBefore.length}`);

  // ---- Boris on the web: every route, with Anna's ids, guessed ids and keys ------------------------------------
  const [job] = annaJobs.filter((j) => j.kind === 'imagine');
  const [adapter] = annaAdapters;
  const [generation] = annaGenerations;
  const [photo] = annaPhotos;
  const guessed = [randomUUID(), '00000000-0000-0000-0000-000000000000', 'not-a-uuid', '..%2F..%2Fetc%2Fpasswd', ...blobKeys.slice(0, 3).map(encodeURIComponent)];
  const json = (body: unknown) => ({ method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const skeleton = await makeSkeleton(256);
  const pose = () => { const form = new FormData(); form.append('image', new Blob([new Uint8Array(skeleton)]), 'pose.png'); return { method: 'POST', body: form }; };
  // Per route: the requests Boris sends. Ids: Anna's first, then guesses.
  const ids = (own: string) => [own, ...guessed];
  const attempts: Record<string, Array<[string, RequestInit?]>> = {
    'GET /': [['/']],
    'GET /api/info': [['/api/info']],
    'GET /api/i18n': [['/api/i18n']],
    'GET /api/styles': [['/api/styles']],
    'GET /api/status': [['/api/status']],
    'GET /api/state': [['/api/state']],
    'GET /api/photos': [['/api/photos']],
    'GET /api/photos/:id/image': ids(photo!.id).map((id) => [`/api/photos/${id}/image`]),
    'DELETE /api/photos/:id': ids(photo!.id).map((id) => [`/api/photos/${id}`, { method: 'DELETE' }]),
    'GET /api/jobs/:id': ids(job!.id).map((id) => [`/api/jobs/${id}`]),
    'GET /api/generations/:id/images/:n': ids(generation!.id).flatMap((id) => [[`/api/generations/${id}/images/0`], [`/api/generations/${id}/images/-1`]] as Array<[string]>),
    'GET /api/generations/:id/control': ids(generation!.id).map((id) => [`/api/generations/${id}/control`]),
    'DELETE /api/generations/:id': ids(generation!.id).map((id) => [`/api/generations/${id}`, { method: 'DELETE' }]),
    'GET /api/adapters/:id/lora': ids(adapter!.id).flatMap((id) => [[`/api/adapters/${id}/lora`], [`/api/adapters/${id}/lora?format=kohya`]] as Array<[string]>),
    'GET /api/adapters/:id/samples/:n': ids(adapter!.id).map((id) => [`/api/adapters/${id}/samples/0`]),
    'POST /api/cancel': ids(job!.id).map((jobId) => ['/api/cancel', json({ jobId })]),
    'POST /api/imagine': [['/api/imagine', json({ prompt: 'a portrait' })], ['/api/imagine', json({ prompt: 'a portrait', adapterId: adapter!.id, userId: annaId })]],
    'POST /api/pose': [['/api/pose', pose()]],
    'POST /api/train': [['/api/train', json({})], ['/api/train', json({ userId: annaId })]],
    'POST /api/consent': [['/api/consent', json({ userId: annaId })]],
    'POST /api/locale': [['/api/locale', json({ locale: 'ru' })], ['/api/locale', json({ locale: 'en' })]],
    'POST /api/photos': [['/api/photos', (() => { const f = new FormData(); f.append('photos', new Blob([new Uint8Array(p4!)]), blobKeys[0]!); return { method: 'POST', body: f }; })()]],
    'GET /api/previews/:id': ids(annaPreviews[0]!.id).map((id) => [`/api/previews/${id}`]),
    'GET /api/events': [],
    // Operations: liveness and readiness name no one; metrics need the admin token (none is set: 404).
    'GET /healthz': [['/healthz']],
    'GET /readyz': [['/readyz']],
    'GET /metrics': [['/metrics'], ['/metrics', { headers: { authorization: `Bearer ${annaId}` } }]],
    // Last: Boris deletes his own data; Anna's stays.
    'POST /api/forget': [['/api/forget', json({ userId: annaId })]],
  };
  // Routes as the server has them (fastify's tree, full paths); HEAD is GET without a body.
  const listed = new Set<string>();
  const stackOfPaths: string[] = [];
  for (const line of stack.web.printRoutes({ commonPrefix: false }).split('\n')) {
    const found = /^([│ ]*)(?:[├└]── )(\S+) \(([^)]+)\)/.exec(line);
    if (!found) continue;
    const depth = found[1]!.length / 4;
    stackOfPaths.length = depth;
    const path = `${stackOfPaths.at(-1) ?? ''}${depth === 0 || found[2]!.startsWith('/') ? '' : '/'}${found[2]}`.replace(/\/+/g, '/');
    stackOfPaths.push(path);
    for (const method of found[3]!.split(', ')) if (method !== 'HEAD') listed.add(`${method} ${path}`);
  }
  assert.ok(listed.size >= 20, `routes found: ${[...listed].join(', ')}`);
  assert.deepEqual([...listed].filter((r) => !(r in attempts)).sort(), [], 'every route is tried here: list the new ones in `attempts`');

  const answers: string[] = [];
  for (const [route, requests] of Object.entries(attempts)) {
    for (const [path, init] of requests) {
      for (const method of route.startsWith('GET') ? ['GET', 'HEAD'] : [undefined]) {
        const response = await web.request(path, { ...init, ...(method ? { method } : {}) });
        const body = Buffer.from(await response.arrayBuffer()).toString('utf8');
        answers.push(`${method ?? init?.method} ${path} → ${response.status}`);
        assert.ok(response.status < 500, `${route} ${path}: ${response.status} ${body.slice(0, 200)}`);
        assert.deepEqual(namesIn(body + JSON.stringify(Object.fromEntries(response.headers))), [], `${route} ${path} answered with Anna's things (${response.status}): ${body.slice(0, 300)}`);
        if ([photo!.id, job!.id, generation!.id, adapter!.id, annaPreviews[0]!.id].some((id) => path.includes(id))) {
          assert.ok([400, 403, 404].includes(response.status), `${route} ${path} with Anna's id: ${response.status}`);
        }
      }
    }
  }
  // Guessed paths outside the API (static files, blob keys) find nothing either.
  for (const key of blobKeys.slice(0, 3)) {
    for (const path of [`/${key}`, `/storage/${key}`, `/files/${key}`, `/api/blobs/${encodeURIComponent(key)}`]) {
      const response = await web.request(path);
      assert.equal(response.status, 404, path);
    }
  }
  events.abort();
  await stream;
  assert.ok(streamed.length > 0, 'Boris\'s event stream was open');
  assert.deepEqual(namesIn(streamed.join('')), [], 'Boris\'s event stream carried nothing of Anna\'s portrait job');

  // ---- Boris in the chats: Anna's buttons, with her ids ---------------------------------------------------------
  mark = lastMessage();
  telegram.sendText(anna, '/forget');
  const question = await says(anna, /Are you sure/, mark);
  for (const data of ['forget_yes', `forget_yes:${anna.id}`, `train_now:${anna.id}`, `consent_yes:${anna.id}`, `forget_no:${anna.id}`]) {
    telegram.pressButton(boris, question.message_id, data);
  }
  const discordQuestion = discord.command(annaDiscord, 'forget');
  const asked = await discord.waitFor(() => /Are you sure/.test(discordQuestion.original?.content ?? '') && discordQuestion.original, 'the Discord question');
  const borisPress = discord.press(borisDiscord, asked, 'forget_yes');
  const refused = await discord.waitFor(() => borisPress.original ?? borisPress.followUps[0], 'Boris told it is not his');
  assert.match(refused.content, /belongs to the person who asked/);
  await eventually(async () => telegram.callsOf('answerCallbackQuery').length >= 5, 10_000, 'every press answered');
  await new Promise((r) => setTimeout(r, 500));
  assert.match(question.text!, /Are you sure/, 'Anna\'s question is unchanged');

  assert.deepEqual(await rowsNaming(annaValues), annaBefore, 'none of Anna\'s rows changed');
  assert.deepEqual(await annaFiles(), filesBefore, 'none of Anna\'s files changed');
  assert.deepEqual(namesIn(telegram.botMessages(boris.id).map((m) => `${m.text ?? ''} ${m.caption ?? ''}`).join('\n')), [], 'nothing of Anna\'s in Boris\'s Telegram chat');
  assert.deepEqual(namesIn(discord.shownTo(borisDiscord).map((m) => m.content).join('\n')), [], 'nor in his Discord DMs');

  // ---- Anna forgets: nothing names her anywhere ----------------------------------------------------------------
  telegram.pressButton(anna, question.message_id, 'forget_yes');
  await telegram.waitFor(() => /Everything about you is deleted/.test(question.text ?? ''), 'the deletion', 60_000);
  await eventually(async () => (await db.select().from(users).where(eq(users.id, annaId))).length === 0, 10_000, 'the user row gone');

  assert.deepEqual(await rowsNaming(annaValues), [], 'no row in any table names Anna');
  assert.deepEqual(await annaFiles(), [], 'no stored file of hers');
  const workLeft = await readdir(stack.env.config.workDir, { recursive: true }).catch(() => [] as string[]);
  assert.deepEqual(workLeft.filter((f) => annaJobs.some((j) => String(f).includes(j.id))), [], 'no work folder of her jobs');
  // Redis: every key of this stack, and every value in it.
  const redis = stack.app.queues.connection;
  const traces: string[] = [];
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${stack.env.config.queuePrefix}:*`, 'COUNT', 500);
    cursor = next;
    for (const key of keys) {
      const type = await redis.type(key);
      const value = type === 'string' ? await redis.get(key)
        : type === 'hash' ? JSON.stringify(await redis.hgetall(key))
        : type === 'list' ? JSON.stringify(await redis.lrange(key, 0, -1))
        : type === 'set' ? JSON.stringify(await redis.smembers(key))
        : type === 'zset' ? JSON.stringify(await redis.zrange(key, 0, -1, 'WITHSCORES'))
        : type === 'stream' ? JSON.stringify(await redis.xrange(key, '-', '+'))
        : '';
      const found = namesIn(`${key} ${value}`);
      if (found.length) traces.push(`${key} (${type}): ${found.join(', ')}`);
    }
  } while (cursor !== '0');
  assert.deepEqual(traces, [], 'no Redis key or value names Anna');
  const stillBoris = await db.select({ n: sql<number>`count(*)::int` }).from(accounts).where(inArray(accounts.externalId, [String(boris.id), borisDiscord.id]));
  assert.equal(stillBoris[0]!.n, 2, 'Boris\'s chat accounts are his own business and remain');

  // ---- secrets ---------------------------------------------------------------------------------------------------
  const logs = logLines.join('');
  assert.ok(logLines.length > 50, `the run was logged (${logLines.length} lines)`);
  for (const [what, secret] of [['Telegram token', telegram.token], ['Discord token', discord.token], ['database password', DB_PASSWORD], ['S3 secret', S3_SECRET]] as const) {
    assert.ok(!logs.includes(secret) && !logs.includes(encodeURIComponent(secret)), `${what} appears in the logs`);
  }
  console.log(`# privacy: ${listed.size} routes, ${answers.length} requests from Boris, ${Object.keys(names).length} names of Anna's checked in ${tables.length} tables, storage, the work folder and Redis; ${logLines.length} log lines without a secret`);
});
