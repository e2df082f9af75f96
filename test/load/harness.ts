// Load harness: simulated people on the Telegram emulator, the Discord emulator and the web API, against the product
// running as it is deployed (bin/start.ts in its own process: web, worker, both chat adapters) on the shared Postgres
// and Redis. The engine is the instant stand-in (test/load/instant-engine.ts): a real process speaking the engine
// protocol that answers at once, so the figures measure everything except painting.
//
// Every reply is counted where it arrives (the emulators, the HTTP answer), per request: lost = a request that got no
// answer, duplicated = a request that got more messages than that command sends.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { and, eq, inArray, sql } from 'drizzle-orm';
import { repoRoot } from '../../src/config/index.ts';
import { openDatabase, type Database } from '../../src/db/client.ts';
import { accounts, adapters, generations, jobs, photos as photoRowsTable } from '../../src/db/schema.ts';
import { LocalBlobStore } from '../../src/storage/local-store.ts';
import { TelegramEmulator, type EmulatedUser } from '../emulators/telegram.ts';
import { DiscordEmulator, type EmulatedDiscordUser, type RestCall } from '../emulators/discord.ts';
import { createTestDatabase } from '../helpers/env.ts';
import { chatEmulatorEnv, PlaygroundClient } from '../helpers/stack.ts';
import { makePhotos } from '../helpers/images.ts';

export type Platform = 'telegram' | 'discord' | 'web';
export type Command = 'start' | 'help' | 'status' | 'train' | 'photo' | 'text' | 'imagine';

/** Messages (new ones, not edits) each command sends on a chat platform, and what marks it as fully answered. */
const EXPECTED: Record<Exclude<Platform, 'web'>, Record<Command, number>> = {
  // imagine: the status message, then the portrait and its full-size file.
  telegram: { start: 1, help: 1, status: 1, train: 1, photo: 1, text: 1, imagine: 3 },
  // Each interaction has one reply (deferred, then edited); imagine adds the portrait as a follow-up.
  discord: { start: 1, help: 1, status: 1, train: 1, photo: 1, text: 1, imagine: 2 },
};

export interface Sample {
  platform: Platform;
  person: number;
  command: Command;
  sentAt: number;
  /** The first message (chat) or the HTTP answer (web). */
  firstAt?: number;
  /** Every message it calls for arrived (chat; /imagine: the portrait), or the HTTP answer (web). */
  doneAt?: number;
  /** Messages counted for this request (chat platforms). */
  messages: number;
  status?: number;
  flooder?: boolean;
}

export interface LoadOptions {
  people: number;
  /** Pause between one person's commands, uniformly drawn from this range (ms). */
  thinkMs: [number, number];
  /** One more Telegram person who sends this many /imagine at once, without waiting. */
  flooderRequests?: number;
  /** A request with no answer after this long counts as lost. */
  replyTimeoutMs?: number;
  /**
   * A closed loop (a capacity run): each of the `people` is a place that a new person takes as soon as the last one's
   * script is done, until `durationMs` from the start. The figures (commands/s, first replies, CPU) count only the
   * window from `warmupMs` to `durationMs`; lost and duplicated count every person.
   */
  closedLoop?: { durationMs: number; warmupMs: number };
  /** Commands left out of every person's script (e.g. `['photo']`). */
  skip?: Command[];
  /** Called as the closed loop's measured window starts and ends (the caller's own readings, e.g. other processes' CPU). */
  onWindow?: (edge: 'start' | 'end') => Promise<void>;
  log?: (line: string) => void;
}

export interface LoadFigures {
  people: number;
  /** Closed loop: the people who took the places over the run, and every command they sent (in the window or not). */
  closedLoop?: { durationMs: number; warmupMs: number; persons: number; commandsSent: number; servedByPlatform: Record<Platform, number>; window: { start: number; end: number } };
  byPlatform: Record<Platform, number>;
  commands: number;
  seconds: number;
  commandsPerSecond: number;
  firstReplyMs: { p50: number; p90: number; p99: number; max: number };
  firstReplyMsByPlatform: Record<Platform, { p50: number; p99: number }>;
  firstReplyMsByCommand: Record<string, { p50: number; p99: number }>;
  /** Closed loop: from sending to the last answer it calls for (a chat /imagine: the portrait), by command. */
  completedMsByCommand?: Record<string, { p50: number; p99: number; mean: number }>;
  /** Messages (chat) or answers (web) that never came, even after the run settled. */
  lost: number;
  duplicated: number;
  /** Requests whose first answer came after the timeout (or never). */
  late: number;
  serverErrors: number;
  imagine: { requested: number; completedJobs: number; generationsWithImages: number };
  flooder?: {
    requests: number; answered: number; jobs: number; results: number; unexpectedMessages: number;
    /** How long the flooder's 50 answers took to arrive, and the others' first replies in that window vs the rest of the run. */
    floodAnsweredMs: number;
    othersDuringFlood: { requests: number; p50: number; p99: number };
    othersOutsideFlood: { requests: number; p50: number; p99: number };
  };
  /** CPU seconds used during the run by the product process (and its engine) and by this driver (emulators, clients). */
  cpuSeconds: { product: number; driver: number };
  /** The product's CPU per command: what the machine's load does not change. */
  productCpuMsPerCommand: number;
  loadAverage: number[];
  problems: string[];
}

/** utime + stime of a process and its waited-for children, in seconds (Linux /proc); 0 for one that is gone. */
export async function processCpuSeconds(pid: number): Promise<number> {
  return statCpuSeconds(`/proc/${pid}/stat`, true);
}
/** One thread's utime + stime, in seconds; 0 for one that is gone. */
export async function threadCpuSeconds(pid: number, tid: number): Promise<number> {
  return statCpuSeconds(`/proc/${pid}/task/${tid}/stat`, false);
}
async function statCpuSeconds(path: string, withChildren: boolean): Promise<number> {
  const stat = await readFile(path, 'utf8').catch(() => '');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // Fields 14-17 (utime, stime, cutime, cstime), counted from 1 with pid and comm before the state.
  return fields.length > 15 ? fields.slice(11, withChildren ? 15 : 13).reduce((sum, f) => sum + Number(f), 0) / 100 : 0;
}
/** The product's own CPU plus its running children's (the engine). */
export async function treeCpuSeconds(pid: number): Promise<number> {
  const children = (await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8').catch(() => '')).split(' ').filter(Boolean).map(Number);
  const own = await processCpuSeconds(pid);
  return own + (await Promise.all(children.map(processCpuSeconds))).reduce((a, b) => a + b, 0);
}

const percentile = (values: number[], p: number) => {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The product as deployed: `node bin/start.ts` with every role, pointed at the emulators and the instant engine. */
export interface Product { child: ChildProcess; baseUrl: string; output: string[]; stop(): Promise<void> }

export async function startProduct(env: Record<string, string>): Promise<Product> {
  await chmod(resolve(repoRoot, 'test/load/instant-engine.sh'), 0o755);
  // LOAD_PRODUCT_NODE_ARGS: e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof` to profile the product under load.
  const nodeArgs = (process.env.LOAD_PRODUCT_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const child = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', 'bin/start.ts'], { cwd: repoRoot, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const output: string[] = [];
  const baseUrl = await new Promise<string>((resolvePromise, reject) => {
    const onData = (chunk: Buffer) => {
      output.push(chunk.toString('utf8'));
      const found = /playground: (http:\/\/[\d.:]+)\//.exec(output.join(''));
      if (found) resolvePromise(found[1]!);
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', (chunk: Buffer) => output.push(chunk.toString('utf8')));
    child.once('exit', (code) => reject(new Error(`the product exited (${code}) before listening:\n${output.join('').slice(-3000)}`)));
  });
  return {
    child, baseUrl, output,
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Emulators, a fresh database, storage and queue prefix, and the product process over them. */
export interface LoadStack {
  telegram: TelegramEmulator;
  discord: DiscordEmulator;
  product: Product;
  database: Database;
  env: Record<string, string>;
  close(): Promise<void>;
}

export async function startLoadStack(overrides: Record<string, string> = {}): Promise<LoadStack> {
  const telegram = new TelegramEmulator();
  const discord = new DiscordEmulator();
  await Promise.all([telegram.start(), discord.start()]);
  const testDb = await createTestDatabase();
  const dir = await mkdtemp(join(tmpdir(), 'portrait-load-'));
  await mkdir(join(dir, 'no-models'));
  const env: Record<string, string> = {
    ...chatEmulatorEnv(telegram, discord),
    DATABASE_URL: testDb.url,
    QUEUE_PREFIX: `test-load-${randomBytes(4).toString('hex')}`,
    STORAGE_DIR: join(dir, 'storage'),
    WORK_DIR: join(dir, 'work'),
    UPLOAD_TMP_DIR: join(dir, 'uploads'),
    STORAGE_CACHE_DIR: join(dir, 'cache'),
    // No face models: photos are accepted as "not checked" (the CPU face models are not part of this measurement).
    VISION_MODELS_DIR: join(dir, 'no-models'),
    ENGINE_PYTHON: resolve(repoRoot, 'test/load/instant-engine.sh'),
    ENGINE_PROFILE: 'tiny',
    ENGINE_DEVICE: 'cpu',
    WEB_HOST: '127.0.0.1',
    WEB_PORT: '0',
    LOG_LEVEL: 'warn',
    GENERATE_STEPS: '1',
    CONSENT_REQUIRED: 'false',
    CHAT_EDIT_INTERVAL_MS: '100',
    // Each simulated person paints a few times; the per-hour limit is not what is measured (the flooder meets the
    // active-jobs limit instead).
    LIMIT_GENERATIONS_PER_HOUR: '1000',
    QUEUE_MAX_WAITING: '5000',
    ...overrides,
  };
  const product = await startProduct(env);
  const database = openDatabase(testDb.url, { max: 4 });
  // Both adapters are up once Discord's gateway is connected and Telegram is being polled.
  const deadline = Date.now() + 60_000;
  while (!discord.connected || telegram.callsOf('getUpdates').length === 0) {
    if (Date.now() > deadline) throw new Error(`the chat adapters did not connect:\n${product.output.join('').slice(-3000)}`);
    await sleep(50);
  }
  return {
    telegram, discord, product, database, env,
    async close() {
      await product.stop();
      await database.close();
      await Promise.all([telegram.stop(), discord.stop()]);
      await testDb.drop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

interface Person {
  n: number;
  platform: Platform;
  locale: 'en' | 'ru';
  script: Command[];
  telegram?: EmulatedUser;
  discord?: EmulatedDiscordUser;
  web?: PlaygroundClient;
}

/** A deterministic pseudo-random sequence, so two runs send the same mix. */
function random(seed: number) {
  let state = seed >>> 0;
  return () => {
    state = (state * 1664525 + 1013904223) >>> 0;
    return state / 2 ** 32;
  };
}

export async function runLoad(stack: LoadStack, options: LoadOptions): Promise<LoadFigures> {
  const { telegram, discord, database } = stack;
  const log = options.log ?? (() => {});
  const replyTimeoutMs = options.replyTimeoutMs ?? 30_000;
  const rand = random(1234);
  const photos = await makePhotos(8, 0);
  // Each person who paints gets a ready model (as a finished training leaves it); the stand-in never reads the file.
  const store = new LocalBlobStore(stack.env.STORAGE_DIR!);
  const lora = await store.put(randomBytes(1024), 'safetensors');
  const problems: string[] = [];
  const samples: Sample[] = [];

  // ---- where replies arrive -----------------------------------------------------------------------------------
  const telegramReplies = new Map<number, Array<{ at: number; method: string }>>();
  // Waiters by what they wait for (a Telegram chat, a Discord interaction token): a reply wakes only its own.
  const wakeups = new Map<string, Set<() => void>>();
  const wake = (key: string) => { for (const w of wakeups.get(key) ?? []) w(); };
  for (const method of ['sendMessage', 'sendPhoto', 'sendMediaGroup', 'sendDocument']) {
    telegram.onCall(method, (call) => {
      const chat = Number(call.params.chat_id);
      const list = telegramReplies.get(chat) ?? [];
      // An album is several messages.
      const count = method === 'sendMediaGroup' ? (typeof call.params.media === 'string' ? JSON.parse(call.params.media) : call.params.media).length : 1;
      for (let i = 0; i < count; i++) list.push({ at: call.at, method });
      telegramReplies.set(chat, list);
      wake(`t${chat}`);
    });
  }
  const discordReplies = new Map<string, Array<{ at: number; kind: 'ack' | 'reply' | 'followup'; files: number }>>();
  const onDiscord = (call: RestCall) => {
    const match = /^\/(?:interactions\/\d+|webhooks\/\d+)\/(itok_[0-9a-f]+)(\/callback|\/messages\/@original)?$/.exec(call.path);
    if (!match) return;
    const kind = match[2] === '/callback' ? 'ack' : match[2] ? 'reply' : 'followup';
    // Only PATCHes with content are the reply itself (a DELETE or an empty edit is not a message).
    if (kind === 'reply' && (call.method !== 'PATCH' || (call.body?.content === undefined && call.files.length === 0))) return;
    const list = discordReplies.get(match[1]!) ?? [];
    list.push({ at: call.at, kind, files: call.files.length });
    discordReplies.set(match[1]!, list);
    wake(match[1]!);
  };
  discord.callListeners.add(onDiscord);

  const waitUntil = async (key: string, done: () => boolean, timeoutMs: number) => {
    const deadline = Date.now() + timeoutMs;
    while (!done()) {
      if (Date.now() > deadline) return false;
      await new Promise<void>((r) => {
        const waiting = wakeups.get(key) ?? new Set();
        wakeups.set(key, waiting);
        const w = () => { waiting.delete(w); if (waiting.size === 0) wakeups.delete(key); clearTimeout(t); r(); };
        const t = setTimeout(w, 50);
        waiting.add(w);
      });
    }
    return true;
  };

  // ---- the people ---------------------------------------------------------------------------------------------
  const makePerson = (n: number): Person => {
    const platform: Platform = n % 10 < 4 ? 'telegram' : n % 10 < 7 ? 'discord' : 'web';
    const locale = n % 2 === 0 ? 'en' : 'ru';
    const rest: Command[] = ['help', 'status', 'photo', 'text'];
    if (n % 2 === 0 || n % 3 === 0) rest.push('imagine');
    for (let i = rest.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [rest[i], rest[j]] = [rest[j]!, rest[i]!];
    }
    // A photo comes after /train (the chats take photos in a training session).
    rest.splice(rest.indexOf('photo'), 0, 'train');
    const script = (['start', ...rest] as Command[]).filter((c) => !options.skip?.includes(c));
    const person: Person = { n, platform, locale, script };
    if (platform === 'telegram') person.telegram = { id: 5_000_000 + n, first_name: `Person${n}`, language_code: locale };
    if (platform === 'discord') person.discord = { id: String(800_000_000_000_000_000n + BigInt(n)), username: `person${n}`, locale: locale === 'ru' ? 'ru' : 'en-US' };
    if (platform === 'web') {
      const client = new PlaygroundClient(stack.product.baseUrl);
      const request = client.request.bind(client);
      client.request = (path, init = {}) => request(path, { ...init, headers: { 'accept-language': locale, ...(init.headers as Record<string, string>) } });
      person.web = client;
    }
    return person;
  };
  // Closed loop: people are made as they take a place; otherwise all at once.
  const people: Person[] = options.closedLoop ? [] : Array.from({ length: options.people }, (_, n) => makePerson(n));

  const giveModel = async (person: Person) => {
    const externalId = person.telegram ? String(person.telegram.id) : person.discord ? person.discord.id : /pb_session=([0-9a-f]+)/.exec(person.web!.cookie)?.[1];
    const find = () => database.db.select({ userId: accounts.userId }).from(accounts)
      .where(and(eq(accounts.platform, person.platform), eq(accounts.externalId, externalId ?? '')));
    let [account] = await find();
    // A /start answered late: its account comes when it is handled.
    for (const deadline = Date.now() + replyTimeoutMs; !account && Date.now() < deadline; [account] = await find()) await sleep(500);
    if (!account) {
      problems.push(`person ${person.n} (${person.platform}) has no account after /start`);
      return;
    }
    await database.db.insert(adapters).values({ userId: account.userId, version: 1, status: 'ready', baseModel: 'tiny', params: {}, photoIds: [], fileKey: lora.key });
  };

  const telegramText: Record<Command, string> = { start: '/start', help: '/help', status: '/status', train: '/train', photo: '', text: 'hello, what can you do?', imagine: '/imagine a portrait in a garden' };
  const discordCommand: Record<Command, string> = { start: 'help', help: 'help', status: 'status', train: 'train', photo: 'train', text: 'styles', imagine: 'imagine' };

  const runCommand = async (person: Person, command: Command): Promise<Sample> => {
    const sample: Sample = { platform: person.platform, person: person.n, command, sentAt: Date.now(), messages: 0 };
    samples.push(sample);
    const photo = photos[person.n % photos.length]!;
    if (person.telegram) {
      const chat = person.telegram.id;
      const before = telegramReplies.get(chat)?.length ?? 0;
      sample.sentAt = Date.now();
      if (command === 'photo') telegram.sendDocument(person.telegram, photo, `me${person.n}.jpg`, 'image/jpeg');
      else telegram.sendText(person.telegram, telegramText[command]);
      const list = () => telegramReplies.get(chat) ?? [];
      const answered = await waitUntil(`t${chat}`, () => list().length >= before + EXPECTED.telegram[command], replyTimeoutMs);
      sample.firstAt = list()[before]?.at;
      if (answered) sample.doneAt = Date.now();
    } else if (person.discord) {
      const opts: Parameters<DiscordEmulator['command']>[2] = command === 'photo' ? { photo1: { file: photo, filename: `me${person.n}.jpg`, contentType: 'image/jpeg' } } : command === 'imagine' ? { prompt: 'a portrait in a garden' } : {};
      sample.sentAt = Date.now();
      const record = discord.command(person.discord, discordCommand[command], opts);
      const list = () => (discordReplies.get(record.token) ?? []).filter((r) => r.kind !== 'ack');
      const done = command === 'imagine' ? () => list().some((r) => r.files > 0) : () => list().length > 0;
      if (await waitUntil(record.token, done, replyTimeoutMs)) sample.doneAt = Date.now();
      sample.firstAt = list()[0]?.at;
      (sample as Sample & { token?: string }).token = record.token;
    } else {
      const client = person.web!;
      sample.sentAt = Date.now();
      const answer = await (async () => {
        switch (command) {
          case 'start': return client.post('/api/consent');
          case 'help': return client.json('/api/info');
          case 'status': return client.json('/api/status');
          case 'train': return client.json('/api/photos');
          case 'photo': return client.upload('/api/photos', [[`me${person.n}.jpg`, photo]]);
          case 'text': return client.json('/api/state');
          case 'imagine': return client.post('/api/imagine', { prompt: 'a portrait in a garden' });
        }
      })().catch((error: Error) => ({ status: 0, body: { error: error.message } }));
      sample.firstAt = sample.doneAt = Date.now();
      sample.status = answer.status;
      const expected = command === 'imagine' ? 202 : 200;
      if (answer.status !== expected) problems.push(`web person ${person.n}: ${command} answered ${answer.status} ${JSON.stringify(answer.body).slice(0, 200)}`);
    }
    return sample;
  };

  const runPerson = async (person: Person) => {
    // Arrivals are spread over the first think interval, as people come and go.
    await sleep(rand() * options.thinkMs[1]);
    for (const command of person.script) {
      await runCommand(person, command);
      if (command === 'start' && person.script.includes('imagine')) await giveModel(person);
      await sleep(options.thinkMs[0] + rand() * (options.thinkMs[1] - options.thinkMs[0]));
    }
  };

  let flooder: { user: EmulatedUser; sentAt: number } | undefined;
  const runFlooder = async () => {
    const user: EmulatedUser = { id: 4_999_999, first_name: 'Flooder', language_code: 'en' };
    telegram.sendText(user, '/start');
    await waitUntil(`t${user.id}`, () => (telegramReplies.get(user.id)?.length ?? 0) >= 1, replyTimeoutMs);
    const person: Person = { n: -1, platform: 'telegram', locale: 'en', script: [], telegram: user };
    await giveModel(person);
    // In the middle of the others' run, all at once.
    await sleep(options.thinkMs[1] * 1.5);
    flooder = { user, sentAt: Date.now() };
    for (let i = 0; i < options.flooderRequests!; i++) telegram.sendText(user, `/imagine flood ${i}`);
  };

  const productPid = stack.product.child.pid!;
  const readCpu = async () => ({ product: await treeCpuSeconds(productPid), driver: process.cpuUsage(), at: Date.now() });
  const cpuSince = (start: Awaited<ReturnType<typeof readCpu>>, end: Awaited<ReturnType<typeof readCpu>>) => ({
    product: Math.round((end.product - start.product) * 100) / 100,
    driver: Math.round((end.driver.user + end.driver.system - start.driver.user - start.driver.system) / 1e4) / 100,
  });
  let cpuAtStart = await readCpu();
  const started = Date.now();
  log(`# load: ${options.people} ${options.closedLoop ? 'places (closed loop)' : 'people'}, think ${options.thinkMs.join('–')} ms${options.flooderRequests ? `, a flooder with ${options.flooderRequests} requests` : ''}`);
  let seconds: number;
  let cpuSeconds: { product: number; driver: number };
  let inWindow: (s: Sample) => boolean = () => true;
  let window = { start: started, end: started };
  if (options.closedLoop) {
    const { durationMs, warmupMs } = options.closedLoop;
    let next = 0;
    const runPlace = async () => {
      while (Date.now() < started + durationMs) {
        const person = makePerson(next++);
        people.push(person);
        await runPerson(person);
      }
    };
    const at = (ms: number) => sleep(started + ms - Date.now());
    const measuring = (async () => {
      await at(warmupMs);
      await options.onWindow?.('start');
      cpuAtStart = await readCpu();
      await at(durationMs);
      const end = await readCpu();
      await options.onWindow?.('end');
      return end;
    })();
    const [cpuAtEnd] = await Promise.all([measuring, ...Array.from({ length: options.people }, runPlace)]);
    seconds = (cpuAtEnd.at - cpuAtStart.at) / 1000;
    window = { start: cpuAtStart.at, end: cpuAtEnd.at };
    cpuSeconds = cpuSince(cpuAtStart, cpuAtEnd);
    // Served in the window: every answer a command calls for came within it. First replies: commands sent in it.
    inWindow = (s) => s.doneAt !== undefined && s.doneAt >= cpuAtStart.at && s.doneAt <= cpuAtEnd.at;
  } else {
    await Promise.all([...people.map(runPerson), ...(options.flooderRequests ? [runFlooder()] : [])]);
    const finished = Math.max(...samples.map((s) => s.firstAt ?? s.sentAt));
    seconds = (finished - started) / 1000;
    cpuSeconds = cpuSince(cpuAtStart, await readCpu());
  }
  const loadAverage = loadavg().map((l) => Math.round(l * 10) / 10);

  // ---- settle, then count ------------------------------------------------------------------------------------
  // Everything still due (the flooder's portraits, late duplicates) arrives, then nothing more for a while.
  const openJobs = async () => (await database.db.select({ n: sql<number>`count(*)::int` }).from(jobs).where(inArray(jobs.status, ['queued', 'active'])))[0]!.n;
  const settleDeadline = Date.now() + 120_000;
  let lastCount = -1;
  for (;;) {
    const count = telegram.calls.length + discord.calls.length;
    if (count === lastCount && (await openJobs()) === 0) break;
    if (Date.now() > settleDeadline) { problems.push('the run did not settle within 120 s'); break; }
    lastCount = count;
    await sleep(2000);
  }
  discord.callListeners.delete(onDiscord);

  // Counted after the run settled. Discord ties every message to its interaction. Telegram does not (a text answer is
  // not a reply to the person's message), so there the count is per person: the messages their commands call for,
  // against the messages their chat got; a request that waited past the timeout is "late", not lost, if its answer
  // came in the end.
  let lost = 0;
  let duplicated = 0;
  let late = 0;
  for (const person of people) {
    const mine = samples.filter((s) => s.person === person.n);
    late += mine.filter((s) => s.firstAt === undefined || s.firstAt - s.sentAt > replyTimeoutMs).length;
    if (person.telegram) {
      const expected = mine.reduce((sum, s) => sum + EXPECTED.telegram[s.command], 0);
      const got = (telegramReplies.get(person.telegram.id) ?? []).length;
      if (got > expected) { duplicated += got - expected; problems.push(`telegram person ${person.n}: ${got} messages for commands that send ${expected}`); }
      if (got < expected) { lost += expected - got; problems.push(`telegram person ${person.n}: ${got} of ${expected} messages`); }
    }
    for (const s of mine) {
      if (s.platform === 'web') {
        if (s.status === undefined || s.status === 0 || s.status >= 500) lost++;
        continue;
      }
      if (s.platform !== 'discord') continue;
      const replies = (discordReplies.get((s as Sample & { token?: string }).token!) ?? []).filter((r) => r.kind !== 'ack');
      // The deferred reply is edited as the job advances: that is one message; follow-ups are more.
      s.messages = (replies.some((r) => r.kind === 'reply') ? 1 : 0) + replies.filter((r) => r.kind === 'followup').length;
      const expected = EXPECTED.discord[s.command];
      if (s.messages > expected) { duplicated += s.messages - expected; problems.push(`discord person ${s.person}: ${s.command} got ${s.messages} messages (expected ${expected})`); }
      if (s.messages < expected) { lost += expected - s.messages; problems.push(`discord person ${s.person}: ${s.command} got ${s.messages} of ${expected} messages`); }
    }
  }

  // Web portraits: each accepted /imagine is one job that completed with one generation holding its picture.
  const imagineRequested = samples.filter((s) => s.command === 'imagine').length;
  const imagineJobs = await database.db.select({ id: jobs.id, status: jobs.status, userId: jobs.userId }).from(jobs).where(eq(jobs.kind, 'imagine'));
  const withImages = await database.db.select({ jobId: generations.jobId, keys: generations.outputKeys }).from(generations);
  const generationsWithImages = withImages.filter((g) => g.keys.length > 0).length;
  for (const job of imagineJobs) if (job.status !== 'completed') problems.push(`imagine job ${job.id} ended ${job.status}`);
  // Every person's photo was stored (accepted; not merely answered).
  const photoRows = (await database.db.select({ n: sql<number>`count(*)::int` }).from(photoRowsTable))[0]!.n;
  const photoCommands = samples.filter((s) => s.command === 'photo').length;
  if (photoRows !== photoCommands) problems.push(`${photoCommands} photos sent, ${photoRows} stored`);

  let flooderFigures: LoadFigures['flooder'];
  if (flooder) {
    const [account] = await database.db.select({ userId: accounts.userId }).from(accounts).where(and(eq(accounts.platform, 'telegram'), eq(accounts.externalId, String(flooder.user.id))));
    const flooderJobs = imagineJobs.filter((j) => j.userId === account!.userId);
    const replies = (telegramReplies.get(flooder.user.id) ?? []).filter((r) => r.at >= flooder!.sentAt);
    const texts = telegram.botMessages(flooder.user.id).filter((m) => m.text !== undefined).length - 1; // less the /start answer
    const results = replies.filter((r) => r.method !== 'sendMessage').length;
    // Each request: one message (accepted: the status, refused: why); each accepted job: its portrait and file.
    const expectedMessages = options.flooderRequests! + 2 * flooderJobs.length;
    // The flood lasts until its last request got its first answer (one text message each).
    const textReplies = replies.filter((r) => r.method === 'sendMessage');
    const floodEnd = textReplies[options.flooderRequests! - 1]?.at ?? Date.now();
    const window = (inside: boolean) => {
      const ms = samples.filter((s) => s.firstAt !== undefined && (s.sentAt >= flooder!.sentAt && s.sentAt <= floodEnd) === inside).map((s) => s.firstAt! - s.sentAt);
      return { requests: ms.length, p50: percentile(ms, 50), p99: percentile(ms, 99) };
    };
    flooderFigures = {
      requests: options.flooderRequests!, answered: texts, jobs: flooderJobs.length, results, unexpectedMessages: replies.length - expectedMessages,
      floodAnsweredMs: floodEnd - flooder.sentAt, othersDuringFlood: window(true), othersOutsideFlood: window(false),
    };
    if (texts < options.flooderRequests!) { lost += options.flooderRequests! - texts; problems.push(`the flooder got ${texts} answers to ${options.flooderRequests} requests`); }
    if (replies.length > expectedMessages) { duplicated += replies.length - expectedMessages; problems.push(`the flooder got ${replies.length} messages, expected ${expectedMessages}`); }
  }

  const counted = samples.filter(inWindow);
  const measured = (options.closedLoop ? samples.filter((s) => s.sentAt >= started + options.closedLoop!.warmupMs && s.sentAt <= started + options.closedLoop!.durationMs) : samples)
    .filter((s) => s.firstAt !== undefined);
  const latencies = measured.map((s) => s.firstAt! - s.sentAt);
  const by = <K extends string>(key: (s: Sample) => K, ms = (s: Sample) => s.firstAt! - s.sentAt, of = measured) => {
    const groups = new Map<K, number[]>();
    for (const s of of) groups.set(key(s), [...(groups.get(key(s)) ?? []), ms(s)]);
    return Object.fromEntries([...groups].map(([k, v]) => [k, { p50: percentile(v, 50), p99: percentile(v, 99), mean: Math.round(v.reduce((a, b) => a + b, 0) / v.length) }])) as Record<K, { p50: number; p99: number; mean: number }>;
  };
  const serverErrors = samples.filter((s) => (s.status ?? 0) >= 500).length;
  const byPlatform = { telegram: 0, discord: 0, web: 0 };
  for (const p of people) byPlatform[p.platform]++;
  return {
    people: options.people,
    closedLoop: options.closedLoop && {
      ...options.closedLoop, persons: people.length, commandsSent: samples.length, window,
      servedByPlatform: Object.fromEntries((['telegram', 'discord', 'web'] as const).map((p) => [p, counted.filter((s) => s.platform === p).length])) as Record<Platform, number>,
    },
    byPlatform,
    commands: counted.length,
    seconds,
    commandsPerSecond: Math.round((counted.length / seconds) * 10) / 10,
    firstReplyMs: { p50: percentile(latencies, 50), p90: percentile(latencies, 90), p99: percentile(latencies, 99), max: Math.max(0, ...latencies) },
    firstReplyMsByPlatform: by((s) => s.platform),
    firstReplyMsByCommand: by((s) => `${s.platform} ${s.command}`),
    completedMsByCommand: options.closedLoop && by((s) => `${s.platform} ${s.command}`, (s) => s.doneAt! - s.sentAt, measured.filter((s) => s.doneAt !== undefined)),
    lost,
    duplicated,
    late,
    serverErrors,
    imagine: { requested: imagineRequested, completedJobs: imagineJobs.filter((j) => j.status === 'completed').length, generationsWithImages },
    flooder: flooderFigures,
    cpuSeconds,
    productCpuMsPerCommand: Math.round((cpuSeconds.product * 1000) / counted.length * 10) / 10,
    loadAverage,
    problems,
  };
}
