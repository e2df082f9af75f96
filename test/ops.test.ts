// Operations on a real stack (Postgres, Redis, worker with the tiny engine, web server): /healthz and /readyz on the
// web server and on the HEALTH_PORT listener, 503 naming the part that is down (a test-owned Redis that is killed, a
// Postgres and an S3 store on closed ports, a killed engine), Prometheus counters after real jobs, and the worker's
// log lines (job id on every line of a job, start/end/cancel lines, engine stderr at info or above, no duplicate keys).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import { eq } from 'drizzle-orm';
import { adapters, generations } from '../src/db/schema.ts';
import pino from 'pino';
import { createLogger, withUniqueKeys } from '../src/logging.ts';
import { dependencyChecks, startHealthServer } from '../src/health.ts';
import { openDatabase } from '../src/db/client.ts';
import { S3BlobStore } from '../src/storage/s3-store.ts';
import { startWorker } from '../worker/index.ts';
import { PlaygroundClient, eventually, startStack, type Stack } from './helpers/stack.ts';
import { createOwnRedis, type OwnRedis } from './helpers/own-services.ts';
import { freePort } from './helpers/net.ts';
import { makePhotos } from './helpers/images.ts';

let stack: Stack;
let client: PlaygroundClient;
let ownRedis: OwnRedis;
/** Every raw line the worker logged. */
const lines: string[] = [];

before(async () => {
  stack = await startStack({ MIN_TRAINING_PHOTOS: '3', METRICS_PUBLIC: 'true', LOG_LEVEL: 'debug' }, false);
  // The worker logs through the process logger (scrubbing, one value per key) into `lines`.
  const logger = createLogger(stack.app.config, { write: (line: string) => void lines.push(line) });
  const { app } = stack;
  stack.worker = await startWorker({ db: app.database.db, store: app.store, events: app.events, vision: app.vision, config: app.config, logger: logger.child({ part: 'worker' }), health: app.health });
  client = new PlaygroundClient(stack.baseUrl);
  ownRedis = await createOwnRedis();
});
after(async () => {
  await stack.close();
  await ownRedis.destroy();
});

const db = () => stack.app.database.db;
const parsed = () => lines.map((line) => JSON.parse(line) as Record<string, any>);

/** The keys of a JSON object line as written (JSON.parse would fold duplicates). */
function topLevelKeys(line: string): string[] {
  const keys: string[] = [];
  let depth = 0;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (c === '"') {
      let j = i + 1;
      while (line[j] !== '"') j += line[j] === '\\' ? 2 : 1;
      if (depth === 1 && /^\s*:/.test(line.slice(j + 1))) keys.push(JSON.parse(line.slice(i, j + 1)) as string);
      i = j;
    } else if (c === '{' || c === '[') depth++;
    else if (c === '}' || c === ']') depth--;
  }
  return keys;
}

async function metricValue(series: string): Promise<number> {
  const text = await (await fetch(`${stack.baseUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line ? Number(line.slice(series.length + 1)) : 0;
}

describe('health', () => {
  test('/healthz and /readyz on the web server: every part answers, the engine included', async () => {
    assert.deepEqual(await (await fetch(`${stack.baseUrl}/healthz`)).json(), { ok: true });
    const ready = await fetch(`${stack.baseUrl}/readyz`);
    const body = await ready.json() as any;
    assert.equal(ready.status, 200, JSON.stringify(body));
    assert.deepEqual(Object.keys(body.parts).sort(), ['engine', 'postgres', 'redis', 'storage']);
    assert.deepEqual(body.failed, []);
  });

  test('the HEALTH_PORT listener serves /healthz, /readyz and /metrics, and nothing else', async () => {
    const listener = await startHealthServer(stack.app.health, 0, '127.0.0.1');
    try {
      const base = `http://127.0.0.1:${listener.address.port}`;
      assert.equal((await fetch(`${base}/healthz`)).status, 200);
      assert.equal((await fetch(`${base}/readyz`)).status, 200);
      const metrics = await fetch(`${base}/metrics`);
      assert.equal(metrics.status, 200);
      assert.match(metrics.headers.get('content-type') ?? '', /text\/plain/);
      assert.match(await metrics.text(), /# TYPE portrait_job_duration_seconds histogram/);
      assert.equal((await fetch(`${base}/api/state`)).status, 404);
      assert.equal((await fetch(`${base}/readyz`, { method: 'POST' })).status, 404);
    } finally {
      await listener.close();
    }
  });

  test('a Redis that goes down: /readyz answers 503 naming redis, and 200 once it is back', async () => {
    const redis = new Redis(ownRedis.url, { maxRetriesPerRequest: 1 });
    redis.on('error', () => {});
    const checks = dependencyChecks(stack.app.database.db, redis, stack.app.store);
    const listener = await startHealthServer(checks, 0, '127.0.0.1');
    const base = `http://127.0.0.1:${listener.address.port}`;
    try {
      assert.equal((await fetch(`${base}/readyz`)).status, 200);
      await ownRedis.kill();
      const asked = Date.now();
      const down = await fetch(`${base}/readyz`);
      assert.ok(Date.now() - asked < 3500, 'within the 3 s check timeout');
      const body = await down.json() as any;
      assert.equal(down.status, 503);
      assert.deepEqual(body.failed, ['redis']);
      assert.equal(body.parts.postgres.ok, true);
      assert.ok(body.parts.redis.error, 'says why');
      await ownRedis.start();
      await eventually(async () => (await fetch(`${base}/readyz`)).status === 200, 20_000, 'redis back');
    } finally {
      await listener.close();
      redis.disconnect();
    }
  });

  test('Postgres and an S3 store on closed ports: 503 naming both, without their URLs', async () => {
    const [pgPort, s3Port] = [await freePort(), await freePort()];
    const database = openDatabase(`postgres://postgres:hunter22@127.0.0.1:${pgPort}/nothing`, { max: 1 });
    const store = new S3BlobStore({ endpoint: `http://127.0.0.1:${s3Port}`, bucket: 'nothing', region: 'us-east-1', accessKeyId: 'k', secretAccessKey: 's', forcePathStyle: true, cacheDir: stack.env.dir });
    const checks = dependencyChecks(database.db, stack.app.queues.connection, store);
    const listener = await startHealthServer(checks, 0, '127.0.0.1');
    try {
      const answer = await fetch(`http://127.0.0.1:${listener.address.port}/readyz`);
      const text = await answer.text();
      assert.equal(answer.status, 503);
      assert.deepEqual(JSON.parse(text).failed, ['postgres', 'storage']);
      assert.ok(!text.includes('hunter22'), 'no password in the answer');
    } finally {
      await listener.close();
      store.client.destroy();
      await database.close();
    }
  });

  test('a killed engine: /readyz names the engine until it is restarted; restarts are counted', async () => {
    const restarts = await metricValue('portrait_engine_restarts_total');
    process.kill(stack.worker!.engine.pid!, 'SIGKILL');
    const down = await eventually(async () => {
      const answer = await fetch(`${stack.baseUrl}/readyz`);
      return answer.status === 503 && (await answer.json() as any);
    }, 10_000, '503 for the dead engine');
    assert.deepEqual(down.failed, ['engine']);
    assert.equal(down.parts.engine.error, undefined, 'the public web port names the part, not why (HEALTH_PORT does)');
    await eventually(async () => (await fetch(`${stack.baseUrl}/readyz`)).status === 200, 120_000, 'the engine back');
    assert.equal(await metricValue('portrait_engine_restarts_total'), restarts + 1);
  });
});

describe('metrics and logs of real jobs', () => {
  let trainJobId: string;

  test('a training and a picture: counters and histograms move with the right labels', { timeout: 300_000 }, async () => {
    const accepted = await metricValue('portrait_photo_verdicts_total{verdict="accepted"}');
    const notImage = await metricValue('portrait_photo_verdicts_total{verdict="not_an_image"}');
    const upload = await client.upload('/api/photos', [...(await makePhotos(3, 500)).map((p, i) => [`p${i}.jpg`, p] as [string, Buffer]), ['notes.jpg', Buffer.from('just some text, not a picture')]]);
    assert.equal(upload.status, 200, JSON.stringify(upload.body));
    assert.equal(await metricValue('portrait_photo_verdicts_total{verdict="accepted"}'), accepted + 3);
    assert.equal(await metricValue('portrait_photo_verdicts_total{verdict="not_an_image"}'), notImage + 1);

    const trained = await client.post('/api/train');
    assert.equal(trained.status, 202, JSON.stringify(trained.body));
    trainJobId = trained.body.jobId;
    assert.equal((await client.waitForJob(trainJobId)).job.status, 'completed');
    const imagine = await client.post('/api/imagine', { prompt: 'me as an astronaut' });
    const imagined = await client.waitForJob(imagine.body.jobId);
    assert.equal(imagined.job.status, 'completed');

    await eventually(async () => (await metricValue('portrait_job_duration_seconds_count{kind="imagine",outcome="completed"}')) >= 1, 10_000, 'the imagine job counted');
    assert.equal(await metricValue('portrait_job_duration_seconds_count{kind="train",outcome="completed"}'), 1);
    assert.equal(await metricValue('portrait_job_engine_seconds_count{kind="train"}'), 1);
    assert.ok(await metricValue('portrait_job_engine_seconds_sum{kind="train"}') > 0, 'engine time recorded');
    assert.ok(await metricValue('portrait_job_engine_seconds_sum{kind="imagine"}') > 0);
    assert.equal(await metricValue('portrait_queue_wait_seconds_count{queue="train"}'), 1);
    assert.equal(await metricValue('portrait_queue_wait_seconds_count{queue="generate"}'), 1);
    assert.equal(await metricValue('portrait_queue_jobs{queue="train",state="completed"}'), 1);
    assert.equal(await metricValue('portrait_queue_jobs{queue="generate",state="waiting"}'), 0);
    assert.equal(await metricValue('portrait_queue_paused{queue="train"}'), 0);
  });

  test('a cancelled training and a failed picture: outcome and failure reason labels', { timeout: 300_000 }, async () => {
    // Long enough to be cancelled while it runs.
    const steps = stack.app.config.training.maxSteps;
    stack.app.config.training.maxSteps = 2000;
    try {
      const trained = await client.post('/api/train');
      assert.equal(trained.status, 202, JSON.stringify(trained.body));
      await eventually(async () => (await client.json(`/api/jobs/${trained.body.jobId}`)).body.job.progress > 0, 120_000, 'the training running');
      assert.equal((await client.post('/api/cancel', { jobId: trained.body.jobId })).status, 200);
      assert.equal((await client.waitForJob(trained.body.jobId)).job.status, 'cancelled');
      await eventually(async () => (await metricValue('portrait_job_duration_seconds_count{kind="train",outcome="cancelled"}')) === 1, 10_000, 'the cancel counted');
      const cancelled = parsed().find((l) => l.msg === 'job cancelled');
      assert.equal(cancelled?.jobId, trained.body.jobId, 'the cancel line names the job');
    } finally {
      stack.app.config.training.maxSteps = steps;
    }

    // A picture whose model file went missing after it was queued fails for good with reason not_found.
    const failedBefore = await metricValue('portrait_job_failures_total{kind="imagine",reason="not_found",final="true"}');
    await stack.app.queues.generate.pause();
    const imagine = await client.post('/api/imagine', { prompt: 'me as a knight' });
    assert.equal(imagine.status, 202, JSON.stringify(imagine.body));
    const [generation] = await db().select().from(generations).where(eq(generations.jobId, imagine.body.jobId));
    const [adapter] = await db().select().from(adapters).where(eq(adapters.id, generation!.adapterId!));
    await db().update(adapters).set({ fileKey: null }).where(eq(adapters.id, adapter!.id));
    try {
      await stack.app.queues.generate.resume();
      assert.equal((await client.waitForJob(imagine.body.jobId)).job.status, 'failed');
      await eventually(async () => (await metricValue('portrait_job_failures_total{kind="imagine",reason="not_found",final="true"}')) === failedBefore + 1, 10_000, 'the failure counted');
      assert.ok(await metricValue('portrait_job_duration_seconds_count{kind="imagine",outcome="failed"}') >= 1);
    } finally {
      await db().update(adapters).set({ fileKey: adapter!.fileKey }).where(eq(adapters.id, adapter!.id));
    }
  });

  test('every line of a job carries its job id; start and end lines; engine stderr at info or above; no duplicate keys', () => {
    const all = parsed();
    const started = all.findIndex((l) => l.msg === 'job started' && l.jobId === trainJobId);
    const ended = all.findIndex((l) => l.msg === 'job completed' && l.jobId === trainJobId);
    assert.ok(started >= 0 && ended > started, 'start and end lines of the training');
    assert.equal(all[started]!.queue, 'train');
    assert.equal(typeof all[ended]!.engineMs, 'number');
    // Between its start and end, one job ran: every line that is not the engine's own output is that job's.
    const during = all.slice(started, ended + 1).filter((l) => l.source !== 'engine');
    assert.ok(during.length >= 2);
    for (const line of during) assert.equal(line.jobId, trainJobId, `a line of the job without its id: ${JSON.stringify(line)}`);
    const stderr = all.filter((l) => l.msg === 'engine stderr');
    assert.ok(stderr.length > 0 && stderr.every((l) => l.level >= 30), 'engine stderr is logged at info or above');
    for (const line of lines) {
      const keys = topLevelKeys(line);
      assert.deepEqual(keys, [...new Set(keys)], `duplicate keys in ${line}`);
    }
  });

  test('a child that rebinds its parent’s key writes one value, the innermost (plain pino writes both)', () => {
    const raw: string[] = [];
    pino({}, { write: (l: string) => void raw.push(l) }).child({ part: 'worker' }).child({ part: 'engine' }).info('x');
    assert.deepEqual(topLevelKeys(raw[0]!).filter((k) => k === 'part').length, 2, 'the problem this guards against');
    const line = withUniqueKeys(raw[0]!);
    assert.deepEqual(topLevelKeys(line).filter((k) => k === 'part'), ['part']);
    assert.equal(JSON.parse(line).part, 'engine');
  });
});

test('likeness scores go to the histogram by kind; a missing score (no face in the output) is not counted', async () => {
  const { metrics } = await import('../src/metrics.ts');
  const count = async () => metricValue('portrait_likeness_score_count{kind="pose"}');
  const before = await count();
  metrics.likeness('pose', 0.42);
  metrics.likeness('pose', null);
  metrics.likeness('pose', Number.NaN);
  assert.equal(await count(), before + 1);
  assert.ok((await metricValue('portrait_likeness_score_bucket{le="0.5",kind="pose"}')) >= 1);
});
