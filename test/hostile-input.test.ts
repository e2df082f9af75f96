// Every case of test/hostile/generate.ts against the real web API (Postgres, Redis, storage; no worker): a clear
// 4xx in the sender's language (English person, Russian person, cookieless Russian browser), the server still up,
// and nothing left behind — every table, the storage folder, the upload folder and the Redis keys are compared
// before and after each case. RUN_SLOW=1 adds byte-mutated photos. Figures go to RELIABILITY.md.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { startStack, type Stack } from './helpers/stack.ts';
import { makePhotos } from './helpers/images.ts';
import { generateCases, type HostileCase, type HostileRequest } from './hostile/generate.ts';

const slow = process.env.RUN_SLOW === '1';
let stack: Stack;
before(async () => {
  stack = await startStack({}, false);
});
after(async () => stack.close());

interface Sender { label: string; lang: 'en' | 'ru'; cookie?: string }

/** Sends one request as a browser of the playground would (its Origin), with the sender's cookie and language. */
async function send(sender: Sender, request: HostileRequest): Promise<{ status: number; body: any; setCookie: string | null }> {
  const headers: Record<string, string> = { origin: stack.baseUrl, 'accept-language': sender.lang === 'ru' ? 'ru-RU,ru;q=0.9' : 'en-GB,en;q=0.8' };
  if (sender.cookie) headers.cookie = sender.cookie;
  for (const [name, value] of Object.entries(request.headers ?? {})) {
    if (value === null) delete headers[name];
    else headers[name] = value;
  }
  const response = await fetch(`${stack.baseUrl}${request.path}`, { method: request.method, headers, body: request.body === undefined ? undefined : new Uint8Array(Buffer.from(request.body)) });
  const text = await response.text();
  let body: any = text;
  try { body = JSON.parse(text); } catch { /* not JSON: asserted below */ }
  return { status: response.status, body, setCookie: response.headers.get('set-cookie') };
}

async function newPerson(label: string, lang: 'en' | 'ru', photos: number, from: number): Promise<Sender> {
  const sender: Sender = { label, lang };
  const pictures = await makePhotos(photos, from);
  const { multipart } = await import('./hostile/generate.ts');
  const body = multipart(pictures.map((data, i) => ({ name: 'photos', filename: `${i}.jpg`, data })));
  const answer = await send(sender, { method: 'POST', path: '/api/photos', headers: { 'content-type': 'multipart/form-data; boundary=hostile-boundary-7d3f' }, body });
  assert.equal(answer.status, 200, JSON.stringify(answer.body));
  assert.equal(answer.body.total, photos);
  sender.cookie = answer.setCookie!.split(';')[0];
  return sender;
}

/** Every table's row count and content hash, every stored file, every temporary upload file and Redis key. */
async function snapshot(): Promise<Record<string, string>> {
  const db = stack.app.database.db;
  const tables = (await db.execute<{ name: string }>(sql`select tablename as name from pg_tables where schemaname = 'public' order by 1`)).rows;
  const state: Record<string, string> = {};
  for (const { name } of tables) {
    const [row] = (await db.execute<{ n: number; h: string }>(sql`select count(*)::int as n, coalesce(md5(string_agg(t::text, '|' order by t::text)), '') as h from ${sql.identifier(name)} t`)).rows;
    state[`table ${name}`] = `${row!.n} rows ${row!.h}`;
  }
  const list = async (dir: string, label: string) => {
    const entries = await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => []);
    for (const e of entries) if (e.isFile()) state[`${label} ${join(e.parentPath, e.name)}`] = String((await stat(join(e.parentPath, e.name))).size);
  };
  await list(stack.env.config.storageDir, 'file');
  await list(stack.env.config.web.uploadTmpDir, 'upload');
  for (const key of await stack.app.queues.connection.keys(`${stack.env.config.queuePrefix}:*`)) state[`redis ${key}`] = 'present';
  return state;
}

function diff(a: Record<string, string>, b: Record<string, string>): string[] {
  return [...new Set([...Object.keys(a), ...Object.keys(b)])].filter((k) => a[k] !== b[k]).map((k) => `${k}: ${a[k] ?? '∅'} → ${b[k] ?? '∅'}`);
}

const CYRILLIC = /[А-Яа-яЁё]/;
// Library phrases that must never reach a person (fastify, busboy, ioredis, pg, zod, libvips).
const LIBRARY_TEXT = /reach (files|fields|parts) limit|FST_|Unexpected end of form|Malformed part header|Boundary not found|JSON at position|Unexpected token|invalid input syntax|Connection is closed|Vips|libjpeg|prototype property|Too big: expected|Too small: expected|Invalid input/;

test(`hostile input: every case gets a clear 4xx in the sender's language and leaves nothing behind${slow ? ' (RUN_SLOW)' : ''}`, { timeout: 600_000 }, async () => {
  const started = performance.now();
  const cases = await generateCases({ slow });
  const generatedMs = performance.now() - started;
  assert.ok(cases.length >= 60, `${cases.length} cases`);
  const en = await newPerson('en person', 'en', 1, 700);
  const ru = await newPerson('ru person', 'ru', 1, 701);
  const full = await newPerson('ru person with 20 photos', 'ru', 20, 710);
  const stranger: Sender = { label: 'cookieless ru browser', lang: 'ru' };

  const outcomes = new Map<string, number>();
  const failures: string[] = [];
  let requests = 0;
  // Each case's "after" is the next one's "before": one snapshot per case.
  let state = await snapshot();
  for (const hostile of cases) {
    const senders = hostile.byFullPerson ? [full] : [en, ru, stranger];
    for (const sender of senders) {
      const where = `${hostile.group} / ${hostile.name} / ${sender.label}`;
      const answers = await Promise.all(hostile.requests.map((r) => send(sender, r)));
      requests += answers.length;
      for (const answer of answers) {
        const accepted = answer.status === 200 && (hostile.status === 200 || hostile.status === -1);
        const outcome = accepted ? '200 accepted (then deleted)' : `${answer.status} ${answer.body?.error?.code ?? '?'}`;
        outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
        if (accepted) {
          // A valid photo: remove it the way a person would, so the state must come back to what it was.
          if (sender.cookie) for (const r of answer.body.results) if (r.ok && !r.duplicate) assert.equal((await send(sender, { method: 'DELETE', path: `/api/photos/${r.photoId}` })).status, 200);
          if (!sender.cookie) await send({ ...sender, cookie: answer.setCookie!.split(';')[0] }, { method: 'POST', path: '/api/forget', headers: { 'content-type': 'application/json' }, body: '{}' });
          continue;
        }
        const expected = hostile.status === -1 ? answer.status >= 400 && answer.status < 500 : answer.status === hostile.status;
        if (!expected) failures.push(`${where}: status ${answer.status}, expected ${hostile.status}: ${JSON.stringify(answer.body).slice(0, 300)}`);
        const error = answer.body?.error;
        if (!error?.message) { failures.push(`${where}: no error message: ${JSON.stringify(answer.body).slice(0, 200)}`); continue; }
        if (hostile.code && error.code !== hostile.code) failures.push(`${where}: code ${error.code}, expected ${hostile.code} (${error.message})`);
        const messages = [error.message, ...(answer.body.results ?? []).filter((r: any) => !r.ok).map((r: any) => r.message as string)];
        for (const message of messages) {
          if (sender.lang === 'ru' && !CYRILLIC.test(message)) failures.push(`${where}: not in Russian: ${message}`);
          if (sender.lang === 'en' && CYRILLIC.test(message)) failures.push(`${where}: not in English: ${message}`);
          if (LIBRARY_TEXT.test(message)) failures.push(`${where}: library text: ${message}`);
        }
      }
      const after = await snapshot();
      const changed = diff(state, after);
      state = after;
      if (changed.length > 0) failures.push(`${where}: left behind ${changed.slice(0, 5).join('; ')}`);
      if ((await fetch(`${stack.baseUrl}/api/info`)).status !== 200) failures.push(`${where}: the server stopped answering`);
    }
  }
  const ms = performance.now() - started;
  const byStatus = [...outcomes.entries()].sort(([a], [b]) => a.localeCompare(b));
  console.log(JSON.stringify({ cases: cases.length, requests, ms: Math.round(ms), generatedMs: Math.round(generatedMs), outcomes: Object.fromEntries(byStatus) }, null, 1));
  assert.deepEqual(failures, []);
  assert.ok(!outcomes.has('500 internal'));
});
