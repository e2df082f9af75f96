// The product's CPU time and Postgres queries per command, by platform and command kind: the load test's stack
// (test/load/harness.ts: bin/start.ts in its own process, emulators, instant engine) with bench/load-probe.mjs preloaded,
// then, for each kind, every person sends it REPEAT times (one after another, the people at once) and the product's
// CPU and query counts are read before and after. Idle CPU (timers, polling) over the same time is subtracted.
//
//   nice npx tsx bench/load-kinds.ts [--people-per-platform 20] [--repeat 5] [--only telegram:photo,web:help] [--top 8]
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { and, eq, inArray, sql } from 'drizzle-orm';
import { repoRoot } from '../src/config/index.ts';
import { accounts, adapters, jobs } from '../src/db/schema.ts';
import { LocalBlobStore } from '../src/storage/local-store.ts';
import type { EmulatedUser } from '../test/emulators/telegram.ts';
import type { DiscordEmulator, EmulatedDiscordUser } from '../test/emulators/discord.ts';
import { PlaygroundClient } from '../test/helpers/stack.ts';
import { makePhotos } from '../test/helpers/images.ts';
import { startLoadStack, type Command, type Platform } from '../test/load/harness.ts';

const { values: args } = parseArgs({
  options: {
    'people-per-platform': { type: 'string', default: '20' },
    repeat: { type: 'string', default: '5' },
    only: { type: 'string' },
    top: { type: 'string', default: '0' },
  },
});
const peoplePerPlatform = Number(args['people-per-platform']);
const repeat = Number(args.repeat);
const topStatements = Number(args.top);
const platforms: Platform[] = ['telegram', 'discord', 'web'];
const kinds: Command[] = ['start', 'help', 'status', 'train', 'photo', 'text', 'imagine'];
const only = args.only?.split(',');

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const probeDir = await mkdtemp(join(tmpdir(), 'load-kinds-'));
const probeFile = join(probeDir, 'probe.json');
process.env.LOAD_PRODUCT_NODE_ARGS = `${process.env.LOAD_PRODUCT_NODE_ARGS ?? ''} --import ${resolve(repoRoot, 'bench/load-probe.mjs')}`;
const stack = await startLoadStack({ LOAD_PROBE_FILE: probeFile });
const { telegram, discord, database } = stack;
// A failed run leaves no product process behind.
process.on('exit', () => stack.product.child.kill('SIGKILL'));

interface Reading { cpuMs: number; systemMs: number; queries: Record<string, number> }
async function readProbe(): Promise<Reading> {
  await rm(probeFile, { force: true });
  stack.product.child.kill('SIGUSR2');
  for (let i = 0; i < 200; i++) {
    const text = await readFile(probeFile, 'utf8').catch(() => '');
    if (text) return JSON.parse(text) as Reading;
    await sleep(10);
  }
  throw new Error('the probe did not answer');
}

// ---- replies, where they arrive -------------------------------------------------------------------------------
const telegramMessages = new Map<number, number>();
for (const method of ['sendMessage', 'sendPhoto', 'sendMediaGroup', 'sendDocument']) {
  telegram.onCall(method, (call) => {
    const chat = Number(call.params.chat_id);
    telegramMessages.set(chat, (telegramMessages.get(chat) ?? 0) + 1);
  });
}
const discordReplies = new Map<string, { replies: number; files: number }>();
discord.callListeners.add((call) => {
  const match = /^\/webhooks\/\d+\/(itok_[0-9a-f]+)(\/messages\/@original)?$/.exec(call.path);
  if (!match || call.method === 'DELETE') return;
  const entry = discordReplies.get(match[1]!) ?? { replies: 0, files: 0 };
  if (call.body?.content !== undefined || call.files.length > 0) entry.replies++;
  entry.files += call.files.length;
  discordReplies.set(match[1]!, entry);
});
const waitFor = async (done: () => boolean, what: string) => {
  for (const deadline = Date.now() + 30_000; !done(); await sleep(5)) if (Date.now() > deadline) throw new Error(`no answer: ${what}`);
};

// ---- the people -------------------------------------------------------------------------------------------------
interface Person { n: number; platform: Platform; userId?: string; telegram?: EmulatedUser; discord?: EmulatedDiscordUser; web?: PlaygroundClient }
const people: Person[] = platforms.flatMap((platform, p) => Array.from({ length: peoplePerPlatform }, (_, i): Person => {
  const n = p * peoplePerPlatform + i;
  const locale = n % 2 === 0 ? 'en' : 'ru';
  if (platform === 'telegram') return { n, platform, telegram: { id: 6_000_000 + n, first_name: `P${n}`, language_code: locale } };
  if (platform === 'discord') return { n, platform, discord: { id: String(900_000_000_000_000_000n + BigInt(n)), username: `p${n}`, locale: locale === 'ru' ? 'ru' : 'en-US' } };
  const web = new PlaygroundClient(stack.product.baseUrl);
  const request = web.request.bind(web);
  web.request = (path, init = {}) => request(path, { ...init, headers: { 'accept-language': locale, ...(init.headers as Record<string, string>) } });
  return { n, platform, web };
}));
// Distinct photos, so that a person's repeats are not refused as the same file or a near-duplicate.
const photos = await makePhotos(repeat + 1, 100);

const telegramText: Record<Command, string> = { start: '/start', help: '/help', status: '/status', train: '/train', photo: '', text: 'hello, what can you do?', imagine: '/imagine a portrait in a garden' };
const discordCommand: Record<Command, string> = { start: 'help', help: 'help', status: 'status', train: 'train', photo: 'train', text: 'styles', imagine: 'imagine' };
// Messages a command sends (as the load test counts them): imagine adds the portrait (and on Telegram its file).
const telegramExpected = (command: Command) => (command === 'imagine' ? 3 : 1);

async function send(person: Person, command: Command, round: number) {
  const photo = photos[round % photos.length]!;
  if (person.telegram) {
    const chat = person.telegram.id;
    const target = (telegramMessages.get(chat) ?? 0) + telegramExpected(command);
    if (command === 'photo') telegram.sendDocument(person.telegram, photo, `me${round}.jpg`, 'image/jpeg');
    else telegram.sendText(person.telegram, telegramText[command]);
    await waitFor(() => (telegramMessages.get(chat) ?? 0) >= target, `telegram ${command}`);
  } else if (person.discord) {
    const options: Parameters<DiscordEmulator['command']>[2] = command === 'photo' ? { photo1: { file: photo, filename: `me${round}.jpg`, contentType: 'image/jpeg' } } : command === 'imagine' ? { prompt: 'a portrait in a garden' } : {};
    const { token } = discord.command(person.discord, discordCommand[command], options);
    const done = command === 'imagine' ? () => (discordReplies.get(token)?.files ?? 0) > 0 : () => (discordReplies.get(token)?.replies ?? 0) > 0;
    await waitFor(done, `discord ${command}`);
  } else {
    const web = person.web!;
    const answer = await (async () => {
      switch (command) {
        case 'start': return web.post('/api/consent');
        case 'help': return web.json('/api/info');
        case 'status': return web.json('/api/status');
        case 'train': return web.json('/api/photos');
        case 'photo': return web.upload('/api/photos', [[`me${round}.jpg`, photo]]);
        case 'text': return web.json('/api/state');
        case 'imagine': return web.post('/api/imagine', { prompt: 'a portrait in a garden' });
      }
    })();
    if (answer.status >= 300) throw new Error(`web ${command} answered ${answer.status} ${JSON.stringify(answer.body).slice(0, 200)}`);
  }
  // The next /imagine waits for this one's job to close (the active-jobs limit), as a person waits for the portrait.
  if (command === 'imagine') while ((await openJobs(person.userId)) > 0) await sleep(5);
}

const openJobs = async (userId?: string) => (await database.db.select({ n: sql<number>`count(*)::int` }).from(jobs)
  .where(and(inArray(jobs.status, ['queued', 'active']), userId ? eq(jobs.userId, userId) : undefined)))[0]!.n;
/** Everything the phase started is done: no open job, and (Telegram, Discord) every message that follows it sent. */
const settle = async () => { while ((await openJobs()) > 0) await sleep(20); };

// Every person starts (their account), and gets a ready model so that /imagine paints.
await Promise.all(people.map((person) => send(person, 'start', 0)));
const store = new LocalBlobStore(stack.env.STORAGE_DIR!);
const lora = await store.put(Buffer.alloc(1024, 7), 'safetensors');
for (const person of people) {
  const externalId = person.telegram ? String(person.telegram.id) : person.discord ? person.discord.id : /pb_session=([0-9a-f]+)/.exec(person.web!.cookie)![1]!;
  const [account] = await database.db.select({ userId: accounts.userId }).from(accounts).where(and(eq(accounts.platform, person.platform), eq(accounts.externalId, externalId)));
  person.userId = account!.userId;
  await database.db.insert(adapters).values({ userId: account!.userId, version: 1, status: 'ready', baseModel: 'tiny', params: {}, photoIds: [], fileKey: lora.key });
}
// Warm-up: each kind once per person (JIT, lazily loaded modules), not measured.
for (const kind of kinds) await Promise.all(people.map((person) => send(person, kind, repeat)));
await settle();

// Idle CPU per second, subtracted from each phase.
const idleStart = await readProbe();
const idleSince = Date.now();
await sleep(3000);
const idleMsPerSecond = ((await readProbe()).cpuMs - idleStart.cpuMs) / ((Date.now() - idleSince) / 1000);

const rows: string[] = [];
const header = `| platform | command | commands | CPU ms/command | of it system | queries/command | wall s |`;
console.log(`# idle: ${idleMsPerSecond.toFixed(1)} ms CPU per second; load average ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
for (const platform of platforms) {
  for (const kind of kinds) {
    if (only && !only.includes(`${platform}:${kind}`)) continue;
    const group = people.filter((p) => p.platform === platform);
    const before = await readProbe();
    const started = Date.now();
    await Promise.all(group.map(async (person) => { for (let round = 0; round < repeat; round++) await send(person, kind, round); }));
    await settle();
    const seconds = (Date.now() - started) / 1000;
    const after = await readProbe();
    const commands = group.length * repeat;
    const cpu = (after.cpuMs - before.cpuMs - idleMsPerSecond * seconds) / commands;
    const delta = Object.entries(after.queries).map(([text, n]) => [text, n - (before.queries[text] ?? 0)] as const).filter(([, n]) => n > 0);
    const queries = delta.reduce((sum, [, n]) => sum + n, 0) / commands;
    const system = (after.systemMs - before.systemMs) / commands;
    const row = `| ${platform} | ${kind} | ${commands} | ${cpu.toFixed(2)} | ${system.toFixed(2)} | ${queries.toFixed(1)} | ${seconds.toFixed(1)} |`;
    rows.push(row);
    console.log(row);
    if (topStatements > 0) {
      for (const [text, n] of delta.sort((a, b) => b[1] - a[1]).slice(0, topStatements)) console.log(`#   ${(n / commands).toFixed(2)} × ${text.replace(/\s+/g, ' ').slice(0, 220)}`);
    }
  }
}
console.log(`\n${header}\n| --- | --- | --- | --- | --- | --- | --- |\n${rows.join('\n')}`);
console.log(`# load average after: ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
await stack.close();
await rm(probeDir, { recursive: true, force: true });
