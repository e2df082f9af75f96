// Roles as separate processes, started as docker-compose.yml starts them (test/helpers/role-processes.ts): the `bot`
// service's web role and two `worker` services, each a child process with its own tiny engine (ENGINE_COUNT=1), on
// one queue prefix, one Postgres database and one SeaweedFS bucket. Jobs flow through; the two workers share the load;
// no job runs to completion twice; a training whose worker is SIGKILLed after a checkpoint was shipped resumes from
// that checkpoint on the other worker once BullMQ's stalled-job check hands it over.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { eq, inArray } from 'drizzle-orm';
import { openDatabase, type Database } from '../src/db/client.ts';
import { adapters, generations, jobs } from '../src/db/schema.ts';
import { PlaygroundClient, eventually } from './helpers/stack.ts';
import { makePhotos } from './helpers/images.ts';
import { startComposeCluster, type ComposeCluster, type RoleProcess } from './helpers/role-processes.ts';
import { readRedisPolicy } from '../src/redis-policy.ts';
import { Redis } from 'ioredis';

// Knobs for a fast CI run, on top of the compose environment (the compose file has none of them).
const testKnobs = {
  LOG_LEVEL: 'info',
  MIN_TRAINING_PHOTOS: '4',
  CONSENT_REQUIRED: 'false',
  TRAIN_MAX_STEPS: '10',
  TRAIN_CHECKPOINT_STEPS: '2',
  GENERATE_STEPS: '2',
  LIKENESS_SAMPLES: '0',
  LIMIT_ACTIVE_JOBS: '50',
  LIMIT_GENERATIONS_PER_HOUR: '1000',
  // Two generations at a time per worker, so a burst of jobs is spread over both.
  WORKER_GENERATE_CONCURRENCY: '2',
  // A killed worker's job is handed to the other after ~2 s instead of BullMQ's 30 s.
  WORKER_LOCK_DURATION_MS: '2000',
  WORKER_STALLED_INTERVAL_MS: '1000',
};

let cluster: ComposeCluster;
let dbHandle: Database;
const db = () => dbHandle.db;
let web: RoleProcess;
let workers: RoleProcess[];
let baseUrl: string;
let trained: PlaygroundClient;

before(async () => {
  cluster = await startComposeCluster(testKnobs, ['worker-a', 'worker-b']);
  ({ web, workers, baseUrl } = cluster);
  dbHandle = openDatabase(cluster.databaseUrl, { max: 2 });
});

after(async () => {
  await dbHandle?.close();
  await cluster?.close();
});

async function trainPerson(): Promise<{ client: PlaygroundClient; jobId: string }> {
  const client = new PlaygroundClient(baseUrl);
  const upload = await client.upload('/api/photos', (await makePhotos(4, Math.floor(Math.random() * 1000))).map((data, i): [string, Buffer] => [`p-${i}.jpg`, data]));
  assert.equal(upload.status, 200, JSON.stringify(upload.body));
  const train = await client.post('/api/train');
  assert.equal(train.status, 202, JSON.stringify(train.body));
  return { client, jobId: train.body.jobId };
}

/** Which worker processes logged `msg` for a job. */
const whoLogged = (msg: string, jobId: string) => workers.filter((w) => w.lines(msg).some((l) => l.jobId === jobId)).map((w) => w.name);

test('the compose services, mirrored without Docker: a web process and two workers come up and a job flows through', { timeout: 120_000 }, async () => {
  // Only the compose network's names, the containers' folders and the GPU were replaced; the roles, STORAGE=s3, the
  // bucket and every other setting are compose's own.
  assert.deepEqual(cluster.replaced.worker!.sort(), [
    'DATABASE_URL', 'ENGINE_CACHE_DIR', 'ENGINE_COUNT', 'ENGINE_DEVICE', 'ENGINE_GPUS', 'ENGINE_PROFILE', 'ENGINE_PYTHON', 'QUEUE_PREFIX',
    'REDIS_URL', 'S3_ACCESS_KEY_ID', 'S3_ENDPOINT', 'S3_SECRET_ACCESS_KEY', 'STORAGE_CACHE_DIR', 'UPLOAD_TMP_DIR', 'VISION_MODELS_DIR', 'WORK_DIR',
  ]);
  assert.ok(!cluster.replaced.bot!.includes('ROLES'));
  // The bot service's chat roles have no token here, so its process runs the web role only, and no engine.
  assert.deepEqual(web.lines('roles started')[0]?.roles, ['web']);
  assert.deepEqual(web.lines('roles started')[0]?.skipped, ['telegram', 'discord']);
  assert.equal(web.lines('engine ready').length, 0);
  for (const w of workers) assert.deepEqual(w.lines('roles started')[0]?.roles, ['worker']);
  // Redis's policy is checked once per process that runs jobs or delivers them (a warning per problem found), never
  // by a web-only one.
  const redis = new Redis('redis://127.0.0.1:6379'); // the shared server the cluster's processes use
  const problems = await readRedisPolicy(redis).then((policy) => policy.problems).finally(() => redis.quit());
  const warnings = (p: RoleProcess) => p.logs.filter((l) => String(l.msg).startsWith('Redis is unsafe for a job queue')).length;
  for (const w of workers) assert.equal(warnings(w), problems.length);
  assert.equal(warnings(web), 0);

  const person = await trainPerson();
  const done = await person.client.waitForJob(person.jobId, 90_000);
  assert.equal(done.job.status, 'completed', done.job.error);
  trained = person.client;
  const imagine = await trained.post('/api/imagine', { prompt: 'a portrait of me', options: { width: 256, height: 256, seed: 1 } });
  assert.equal(imagine.status, 202, JSON.stringify(imagine.body));
  const imagined = await trained.waitForJob(imagine.body.jobId, 60_000);
  assert.equal(imagined.job.status, 'completed', imagined.job.error);
  assert.equal((await trained.request(imagined.images[0])).headers.get('content-type'), 'image/png');
});

test('two workers share a burst of jobs and no job runs twice', { timeout: 120_000 }, async () => {
  assert.ok(trained, 'needs the trained person of the first test');
  const ids: string[] = [];
  for (let n = 0; n < 8; n++) {
    const res = await trained.post('/api/imagine', { prompt: `me, portrait ${n}`, options: { width: 256, height: 256, seed: n } });
    assert.equal(res.status, 202, JSON.stringify(res.body));
    ids.push(res.body.jobId);
  }
  for (const id of ids) assert.equal((await trained.waitForJob(id, 90_000)).job.status, 'completed');
  await eventually(async () => ids.every((id) => whoLogged('job completed', id).length === 1), 10_000, 'completion logs');

  // Each job started and completed on exactly one worker, and both workers got some.
  for (const id of ids) {
    assert.deepEqual(whoLogged('job started', id), whoLogged('job completed', id), `job ${id} ran on one worker`);
  }
  const perWorker = workers.map((w) => ids.filter((id) => whoLogged('job completed', id).includes(w.name)).length);
  assert.ok(perWorker.every((n) => n > 0), `both workers ran jobs: ${perWorker.join(' + ')}`);
  // One attempt and one generation row with its images per job.
  const rows = await db().select().from(jobs).where(inArray(jobs.id, ids));
  assert.deepEqual(rows.map((r) => [r.status, r.attempts]), ids.map(() => ['completed', 1]));
  const outputs = await db().select().from(generations).where(inArray(generations.jobId, ids));
  assert.equal(outputs.length, ids.length);
  assert.ok(outputs.every((g) => g.outputKeys.length >= 1));
});

test('a training on a SIGKILLed worker resumes from its shipped checkpoint on the other worker', { timeout: 120_000 }, async () => {
  const person = await trainPerson();
  // Wait for a checkpoint in storage, then kill the worker that runs it (its engine dies with it).
  const row = await eventually(async () => {
    const [r] = await db().select().from(jobs).where(eq(jobs.id, person.jobId));
    return r && r.checkpointStep && r.checkpointStep > 0 && r.status === 'active' ? r : undefined;
  }, 60_000, 'a shipped checkpoint');
  const [runner] = whoLogged('job started', person.jobId);
  assert.ok(runner);
  const victim = workers.find((w) => w.name === runner)!;
  const survivor = workers.find((w) => w !== victim)!;
  await victim.kill('SIGKILL');
  assert.ok(row.checkpointStep! < 10, 'killed before the last step');

  const done = await person.client.waitForJob(person.jobId, 90_000);
  assert.equal(done.job.status, 'completed', done.job.error);
  // The survivor restored the checkpoint and the engine resumed after step 0.
  const resumed = survivor.lines('resuming from the stored checkpoint').find((l) => l.jobId === person.jobId);
  assert.ok(resumed, 'the survivor resumed the job');
  assert.ok(Number(resumed.step) >= row.checkpointStep!, `resumed at step ${String(resumed.step)}`);
  assert.deepEqual(whoLogged('job completed', person.jobId), [survivor.name]);
  const [finished] = await db().select().from(jobs).where(eq(jobs.id, person.jobId));
  const owned = await db().select().from(adapters).where(eq(adapters.id, finished!.adapterId!));
  assert.equal(owned.length, 1);
  assert.equal(owned[0]!.status, 'ready');
  const metrics = owned[0]!.metrics as { resumedFrom: number | null; steps: number };
  assert.ok(metrics.resumedFrom !== null && metrics.resumedFrom > 0, `resumedFrom ${String(metrics.resumedFrom)}`);
  assert.equal(metrics.steps, 10);
  // The finished training left no checkpoint behind.
  assert.equal(finished!.checkpointKey, null);
});
