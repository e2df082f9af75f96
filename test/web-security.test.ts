// The web API against a hostile neighbour and careless clients: cross-site forms from another local port, reads
// that must not create anyone, parallel uploads against the photo limit, uploads streamed to disk, raw error text,
// a Redis outage and a shutdown with open event streams. Real Postgres, Redis, storage and Chromium.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { count, eq } from 'drizzle-orm';
import { chromium } from 'playwright-core';
import { jobs, photos, users } from '../src/db/schema.ts';
import { createApp } from '../src/app.ts';
import { buildWebServer } from '../bots/web/server.ts';
import { PlaygroundClient, eventually, startStack, type Stack } from './helpers/stack.ts';
import { createTestEnv, testLogger } from './helpers/env.ts';
import { makePhoto, makePhotos } from './helpers/images.ts';

const chromiumPath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
let stack: Stack;
before(async () => {
  stack = await startStack({ MIN_TRAINING_PHOTOS: '3' }, false);
  await mkdir(stack.env.config.web.uploadTmpDir, { recursive: true });
});
after(async () => stack.close());

const db = () => stack.app.database.db;
const userCount = async () => (await db().select({ n: count() }).from(users))[0]!.n;
const photoCount = async (userId?: string) =>
  (await db().select({ n: count() }).from(photos).where(userId ? eq(photos.userId, userId) : undefined))[0]!.n;

/** A page on another local port, as an attacker would host it. */
async function serve(html: string): Promise<{ url: string; close: () => Promise<void> }> {
  const server: Server = createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end(html));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

test('CSRF: auto-submitting forms from another local port change nothing; the page itself still works', { skip: !existsSync(chromiumPath) && 'chromium is not installed', timeout: 120_000 }, async () => {
  const browser = await chromium.launch({ executablePath: chromiumPath, args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'] });
  try {
    const context = await browser.newContext();
    const page = await context.newPage();
    // The victim uses the playground: one photo uploaded through the page.
    const photoPath = join(stack.env.dir, 'victim.jpg');
    await writeFile(photoPath, await makePhoto(1));
    await page.goto(stack.baseUrl);
    await page.setInputFiles('#photos', [photoPath]);
    await page.click('#upload');
    // Accepted ("ok" with the face models, "warn": accepted but not face-checked without them).
    await page.locator('#upload-results li:not(.bad)').waitFor();
    const cookie = (await context.cookies(stack.baseUrl)).find((c) => c.name === 'pb_session')!;
    assert.equal(cookie.httpOnly, true);
    assert.equal(cookie.sameSite, 'Strict');
    const [victim] = await db().select({ userId: users.id }).from(users);
    assert.equal(await photoCount(victim!.userId), 1);

    // Three forms a browser submits cross-origin without a preflight: multipart to /api/forget (which deleted
    // everything before), a text/plain "JSON" to /api/imagine, and a multipart photo upload.
    const attacks = [
      { path: '/api/forget', html: `<form method="POST" enctype="multipart/form-data" action="${stack.baseUrl}/api/forget"><input name="x" value="1"></form><script>document.forms[0].submit()</script>` },
      { path: '/api/imagine', html: `<form method="POST" enctype="text/plain" action="${stack.baseUrl}/api/imagine"><input name='{"prompt":"x","y":"' value='"}'></form><script>document.forms[0].submit()</script>` },
      {
        path: '/api/photos',
        html: `<form method="POST" enctype="multipart/form-data" action="${stack.baseUrl}/api/photos"><input type="file" name="photos"></form><script>
          const dt = new DataTransfer(); dt.items.add(new File([new Uint8Array([0xff, 0xd8, 0xff, 0xe0])], 'x.jpg', { type: 'image/jpeg' }));
          document.forms[0].elements[0].files = dt.files; document.forms[0].submit();</script>`,
      },
    ];
    for (const attack of attacks) {
      const evil = await serve(attack.html);
      try {
        const answered = page.waitForResponse((r) => r.url() === `${stack.baseUrl}${attack.path}`);
        await page.goto(evil.url);
        const response = await answered;
        assert.equal(response.status(), 403, `${attack.path}: ${await response.text()}`);
        assert.equal((await response.request().allHeaders()).cookie?.includes('pb_session'), true, 'the browser did send the victim\'s cookie');
        assert.equal((await response.json()).error.code, 'cross_site');
      } finally {
        await evil.close();
      }
    }
    assert.equal(await photoCount(victim!.userId), 1, 'nothing was deleted or added');
    assert.equal((await db().select().from(jobs)).length, 0);
    assert.equal(await userCount(), 1);

    // The playground's own page still deletes (same origin).
    await page.goto(stack.baseUrl);
    const forgot = page.waitForResponse((r) => r.url() === `${stack.baseUrl}/api/forget`);
    await page.click('#forget');
    await page.click('#forget-yes');
    assert.equal((await forgot).status(), 200);
    assert.equal(await userCount(), 0);
  } finally {
    await browser.close();
  }
});

test('an Origin naming the host the request was sent to is the playground; the same host on another port is not', async () => {
  const { request } = await import('node:http');
  const port = new URL(stack.baseUrl).port;
  const post = (host: string, origin: string) => new Promise<{ status: number; code: string }>((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/api/imagine', method: 'POST', headers: { host, origin, 'content-type': 'application/json' } }, (res) => {
      let body = '';
      res.on('data', (c) => { body += c; }).on('end', () => resolve({ status: res.statusCode!, code: JSON.parse(body).error?.code }));
    });
    req.on('error', reject);
    req.end('{"prompt":7}');
  });
  // A LAN address: the browser's Origin is the address it loaded the page from.
  assert.deepEqual(await post(`192.168.1.5:${port}`, `http://192.168.1.5:${port}`), { status: 400, code: 'bad_prompt' });
  assert.deepEqual(await post(`192.168.1.5:${port}`, 'http://192.168.1.5:8080'), { status: 403, code: 'cross_site' });
  assert.deepEqual(await post(`192.168.1.5:${port}`, `http://127.0.0.1:${Number(port) + 1}`), { status: 403, code: 'cross_site' });
});

test('cookieless reads create no one: 50 GETs (and failing first writes) leave 0 users', async () => {
  const before = await userCount();
  const id = '00000000-0000-4000-8000-000000000000';
  const paths = ['/', '/api/info', '/api/status', '/api/photos', `/api/jobs/${id}`, `/api/generations/${id}/images/0`, `/api/adapters/${id}/lora`, '/api/events', '/api/nope', `/api/generations/${id}/control`];
  const answers = await Promise.all(Array.from({ length: 50 }, (_, i) => fetch(`${stack.baseUrl}${paths[i % paths.length]}`)));
  for (const response of answers) {
    assert.ok(response.status < 500, `${response.url}: ${response.status}`);
    assert.equal(response.headers.get('set-cookie'), null, `${response.url} set no cookie`);
    await response.arrayBuffer();
  }
  // First writes that fail: refused before or after the user would be created, they leave no row either.
  const client = () => new PlaygroundClient(stack.baseUrl);
  assert.equal((await client().post('/api/train')).body.error.code, 'not_enough_photos');
  assert.equal((await client().post('/api/imagine', { prompt: 'me' })).body.error.code, 'no_model');
  assert.equal((await client().post('/api/imagine', { prompt: 7 })).body.error.code, 'bad_prompt');
  assert.equal((await client().upload('/api/photos', [['notes.jpg', Buffer.from('not a photo')]])).status, 422);
  assert.equal((await client().post('/api/cancel')).body.error.code, 'nothing_to_cancel');
  assert.equal((await client().post('/api/forget')).status, 200);
  assert.equal(await userCount(), before);
});

test('30 truly parallel uploads of one person store exactly the 20-photo limit', { timeout: 120_000 }, async () => {
  const client = new PlaygroundClient(stack.baseUrl);
  const pictures = await makePhotos(31, 400);
  assert.equal((await client.upload('/api/photos', [['first.jpg', pictures[0]!]])).status, 200);
  const [{ userId }] = (await db().select({ userId: photos.userId }).from(photos).where(eq(photos.originalName, 'first.jpg'))) as [{ userId: string }];
  // All 30 are in flight at once; those that pass the early count check while others are being checked are held
  // to the limit only by the lock taken with the insert (before it, this stored 30).
  const answers = await Promise.all(pictures.slice(1).map((data, i) => client.upload('/api/photos', [[`p${i}.jpg`, data]])));
  assert.equal(await photoCount(userId), 20);
  const stored = answers.filter((a) => a.status === 200).length;
  const refused = answers.filter((a) => a.status === 422);
  assert.equal(stored, 19, JSON.stringify(answers.map((a) => a.status)));
  assert.equal(refused.length, 11);
  for (const r of refused) assert.equal(r.body.error.code, 'too_many_photos');
  // The refused ones left no files: every stored file belongs to a row.
  const files = (await readdir(stack.env.config.storageDir, { recursive: true, withFileTypes: true })).filter((d) => d.isFile());
  const rows = await db().select({ a: photos.storageKey, b: photos.cropKey }).from(photos);
  assert.equal(files.length, new Set(rows.flatMap((r) => [r.a, r.b])).size);
  await client.post('/api/forget');
});

test('uploads stream to temporary files: ten 19 MiB files never sit in memory together', { timeout: 120_000 }, async () => {
  const big = join(stack.env.dir, 'big.bin');
  // Not an image (refused after it is read), so the test measures the upload path, not the decoder.
  await writeFile(big, Buffer.alloc(19 * 1024 * 1024, 0x5a));
  const client = new PlaygroundClient(stack.baseUrl);
  const baseline = process.memoryUsage().arrayBuffers;
  let peak = baseline;
  let sawTempFile = false;
  const sampler = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage().arrayBuffers);
    void readdir(stack.env.config.web.uploadTmpDir).then((d) => { if (d.length > 0) sawTempFile = true; });
  }, 5);
  // curl streams the files from disk, so the bytes in this process's memory are the server's.
  const args = ['-s', '-H', `origin: ${stack.baseUrl}`, ...Array.from({ length: 10 }, (_, i) => ['-F', `photos=@${big};filename=f${i}.jpg`]).flat(), `${stack.baseUrl}/api/photos`];
  const { stdout } = await promisify(execFile)('curl', args, { maxBuffer: 1 << 20 });
  clearInterval(sampler);
  const body = JSON.parse(stdout) as { results: Array<{ code: string }> };
  assert.equal(body.results.length, 10);
  assert.ok(body.results.every((r) => r.code === 'not_an_image'));
  const grownMb = (peak - baseline) / 1048576;
  console.log(`upload of 10 × 19 MiB: peak array-buffer growth ${grownMb.toFixed(0)} MiB`);
  assert.ok(grownMb < 80, `${grownMb.toFixed(0)} MiB in memory at once`);
  assert.ok(sawTempFile, 'the upload went through a temporary file');
  assert.deepEqual(await readdir(stack.env.config.web.uploadTmpDir), [], 'temporary files are removed');
  assert.equal(await userCount(), 0, 'every file was refused: no user is left');
});

test('an upload whose connection drops halfway leaves no temporary file, no row and a working server', { timeout: 60_000 }, async () => {
  const { connect } = await import('node:net');
  const port = Number(new URL(stack.baseUrl).port);
  const boundary = 'dropped-boundary';
  const head = Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="photos"; filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n`);
  const socket = connect(port, '127.0.0.1');
  await new Promise((resolve) => socket.once('connect', resolve));
  socket.write(`POST /api/photos HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nOrigin: ${stack.baseUrl}\r\nContent-Type: multipart/form-data; boundary=${boundary}\r\nContent-Length: ${head.length + 8 * 1024 * 1024}\r\n\r\n`);
  socket.write(head);
  socket.write(Buffer.alloc(4 * 1024 * 1024, 0x41));
  // The server is writing the file: then the person's connection is gone.
  await eventually(async () => (await readdir(stack.env.config.web.uploadTmpDir)).length > 0, 10_000, 'the temporary upload folder');
  socket.destroy();
  await eventually(async () => (await readdir(stack.env.config.web.uploadTmpDir)).length === 0, 10_000, 'the temporary files to go');
  assert.equal((await fetch(`${stack.baseUrl}/api/info`)).status, 200);
  assert.equal(await userCount(), 0);
});

test('failure reasons come from codes: raw worker text and storage keys never reach the person', async () => {
  const client = new PlaygroundClient(stack.baseUrl);
  await client.upload('/api/photos', (await makePhotos(3, 600)).map((d, i): [string, Buffer] => [`r${i}.jpg`, d]));
  const started = await client.post('/api/train');
  assert.equal(started.status, 202);
  const raw = 'No blob stored under key 3f/3fa9c0e1d2b4.png';
  await db().update(jobs).set({ status: 'failed', errorCode: 'not_found', error: raw, finishedAt: new Date() }).where(eq(jobs.id, started.body.jobId));
  const events: string[] = [];
  const sse = new AbortController();
  const stream = await client.request('/api/events', { signal: sse.signal });
  const reading = (async () => {
    try { for await (const chunk of stream.body!) events.push(Buffer.from(chunk as Uint8Array).toString()); } catch { /* aborted */ }
  })();
  const [job] = await db().select().from(jobs).where(eq(jobs.id, started.body.jobId));
  while (!events.join('').includes('connected')) await new Promise((r) => setTimeout(r, 20));
  await stack.app.events.publish(job!.userId, { type: 'job', jobId: job!.id, kind: 'train', status: 'failed', progress: 0, errorCode: 'not_found', error: raw });
  const view = await client.json(`/api/jobs/${started.body.jobId}`);
  assert.equal(view.body.job.error, 'your model or photos were deleted meanwhile.');
  const status = await client.json('/api/status');
  assert.equal(status.body.jobs[0].error, 'your model or photos were deleted meanwhile.');
  const ru = await client.json(`/api/jobs/${started.body.jobId}`, { headers: { 'accept-language': 'ru' } });
  assert.equal(ru.body.job.error, 'your model or photos were deleted meanwhile.', 'the person\'s stored locale wins over the header');
  while (!events.join('').includes('data:')) await new Promise((r) => setTimeout(r, 20));
  sse.abort();
  await reading;
  assert.ok(!events.join('').includes('No blob'), events.join(''));
  assert.match(events.join(''), /"error":"your model or photos were deleted meanwhile\."/);
  await client.post('/api/forget');
});

test('a Redis outage answers 503 "the queue is unavailable" in the person\'s language, at once', { timeout: 60_000 }, async () => {
  const port = 20000 + Math.floor(Math.random() * 20000);
  const redis: ChildProcess = spawn('redis-server', ['--port', String(port), '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  const env = await createTestEnv({ REDIS_URL: `redis://127.0.0.1:${port}`, MIN_TRAINING_PHOTOS: '1' });
  try {
    let app;
    for (let i = 0; ; i++) {
      try { app = await createApp(env.config, testLogger); break; } catch (error) { if (i > 50) throw error; await new Promise((r) => setTimeout(r, 100)); }
    }
    const web = await buildWebServer(app);
    await web.listen({ host: '127.0.0.1', port: 0 });
    const client = new PlaygroundClient(`http://127.0.0.1:${(web.server.address() as AddressInfo).port}`);
    assert.equal((await client.upload('/api/photos', [['a.jpg', await makePhoto(7)]])).status, 200);
    redis.kill('SIGKILL');
    await new Promise((r) => redis.once('exit', r));
    for (let i = 0; i < 100 && app.queues.connection.status === 'ready'; i++) await new Promise((r) => setTimeout(r, 10));
    const started = performance.now();
    const train = await client.post('/api/train');
    const imagine = await client.json('/api/imagine', { method: 'POST', headers: { 'content-type': 'application/json', 'accept-language': 'ru' }, body: JSON.stringify({ prompt: 'me' }) });
    const ms = performance.now() - started;
    assert.equal(train.status, 503);
    assert.equal(train.body.error.code, 'queue_unavailable');
    assert.equal(train.body.error.message, 'The job queue is unavailable right now; please try again in a minute.');
    assert.equal(imagine.status, 503);
    assert.equal(imagine.body.error.message, 'The job queue is unavailable right now; please try again in a minute.', 'the stored locale (en) wins');
    assert.ok(ms < 2000, `${ms.toFixed(0)} ms`);
    await web.close();
    // Redis is gone: don't wait out the client's reconnects.
    await Promise.race([app.close().catch(() => undefined), new Promise((r) => setTimeout(r, 1000))]);
    app.queues.connection.disconnect();
  } finally {
    redis.kill('SIGKILL');
    await env.cleanup();
  }
});

test('close() with two open /api/events streams returns in under 2 s', { timeout: 30_000 }, async () => {
  const env = await createTestEnv();
  const app = await createApp(env.config, testLogger);
  try {
    const web = await buildWebServer(app);
    await web.listen({ host: '127.0.0.1', port: 0 });
    const base = `http://127.0.0.1:${(web.server.address() as AddressInfo).port}`;
    const clients = [new PlaygroundClient(base), new PlaygroundClient(base)];
    const ends: Array<Promise<void>> = [];
    for (const [i, client] of clients.entries()) {
      await client.upload('/api/photos', [[`s${i}.jpg`, await makePhoto(50 + i)]]);
      const response = await client.request('/api/events');
      const reader = response.body!.getReader();
      assert.match(Buffer.from((await reader.read()).value!).toString(), /connected/);
      ends.push((async () => { while (!(await reader.read().catch(() => ({ done: true }))).done); })());
    }
    const started = performance.now();
    await web.close();
    const ms = performance.now() - started;
    await Promise.all(ends);
    console.log(`close() with 2 open event streams: ${ms.toFixed(0)} ms`);
    assert.ok(ms < 2000, `${ms.toFixed(0)} ms`);
  } finally {
    await app.close();
    await env.cleanup();
  }
});
