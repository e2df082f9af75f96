// Two worker processes as docker-compose.yml starts them (test/helpers/role-processes.ts), tiny engine on the CPU:
//  1. handover: time from POST /api/train to the job starting on worker B, while worker A is busy (both take one
//     training at a time) and after worker A is SIGKILLed mid-training (BullMQ's stalled-job check hands it over);
//  2. the split of 40 mixed jobs (trainings and /imagine) between the two workers.
// Run: node --import tsx bench/two-workers.ts [repeats] → prints a table, writes bench/results/two-workers-<date>.json
import { writeFile } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { repoRoot } from '../src/config/index.ts';
import { PlaygroundClient, eventually } from '../test/helpers/stack.ts';
import { makePhotos } from '../test/helpers/images.ts';
import { startComposeCluster, type RoleProcess } from '../test/helpers/role-processes.ts';

const repeats = Number(process.argv[2] ?? 3);
const LOCK_MS = 2000;
const STALLED_MS = 1000;
const knobs = {
  LOG_LEVEL: 'info',
  MIN_TRAINING_PHOTOS: '4',
  CONSENT_REQUIRED: 'false',
  TRAIN_MAX_STEPS: '12',
  TRAIN_CHECKPOINT_STEPS: '2',
  GENERATE_STEPS: '2',
  LIKENESS_SAMPLES: '0',
  LIMIT_ACTIVE_JOBS: '100',
  LIMIT_GENERATIONS_PER_HOUR: '1000',
  LIMIT_TRAININGS_PER_DAY: '100',
  // One training at a time per worker: a second /train while A trains can only go to B.
  WORKER_TRAIN_CONCURRENCY: '1',
  WORKER_GENERATE_CONCURRENCY: '4',
  WORKER_LOCK_DURATION_MS: String(LOCK_MS),
  WORKER_STALLED_INTERVAL_MS: String(STALLED_MS),
};

let photoSeed = 0;
async function person(baseUrl: string): Promise<PlaygroundClient> {
  const client = new PlaygroundClient(baseUrl);
  const upload = await client.upload('/api/photos', (await makePhotos(4, (photoSeed += 4))).map((data, i): [string, Buffer] => [`p-${i}.jpg`, data]));
  if (upload.status !== 200) throw new Error(`upload: ${JSON.stringify(upload.body)}`);
  return client;
}
async function train(client: PlaygroundClient): Promise<{ jobId: string; postedAt: number }> {
  const postedAt = Date.now();
  const res = await client.post('/api/train');
  if (res.status !== 202) throw new Error(`train: ${JSON.stringify(res.body)}`);
  return { jobId: res.body.jobId, postedAt };
}
/** The pino `time` (ms) of a worker's first line `msg` about a job. */
const loggedAt = (worker: RoleProcess, msg: string, jobId: string) =>
  worker.waitForLog((l) => l.msg === msg && l.jobId === jobId, 180_000, `${msg} of ${jobId}`).then((l) => Number(l.time));
const whoStarted = (workers: RoleProcess[], jobId: string) => workers.find((w) => w.lines('job started').some((l) => l.jobId === jobId))!;
const median = (xs: number[]) => {
  const sorted = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
};
const finished = (client: PlaygroundClient, jobId: string) => client.waitForJob(jobId, 300_000);

async function handover() {
  const busy: number[] = [];
  const gone: number[] = [];
  const cluster = await startComposeCluster(knobs, ['worker-a', 'worker-b']);
  try {
    const people = await Promise.all(Array.from({ length: repeats * 2 }, () => person(cluster.baseUrl)));
    for (let n = 0; n < repeats; n++) {
      // A busy: the first training occupies one worker, the second must start on the other.
      const first = await train(people[2 * n]!);
      const holder = await eventually(async () => whoStarted(cluster.workers, first.jobId), 60_000, 'first start');
      const second = await train(people[2 * n + 1]!);
      const other = cluster.workers.find((w) => w !== holder)!;
      busy.push((await loggedAt(other, 'job started', second.jobId)) - second.postedAt);
      await Promise.all([finished(people[2 * n]!, first.jobId), finished(people[2 * n + 1]!, second.jobId)]);
    }
    // A gone: kill the worker running a training after its first checkpoint; time until the other starts it.
    for (let n = 0; n < repeats; n++) {
      const client = await person(cluster.baseUrl);
      const job = await train(client);
      const holder = await eventually(async () => whoStarted(cluster.workers, job.jobId), 60_000, 'start');
      await holder.waitForLog((l) => l.jobId === job.jobId && l.msg === 'job started', 60_000);
      await eventually(async () => {
        const { body } = await client.json(`/api/jobs/${job.jobId}`);
        return (body.job.checkpointStep ?? 0) >= 2;
      }, 60_000, "a shipped checkpoint");
      const other = cluster.workers.find((w) => w !== holder)!;
      const killedAt = Date.now();
      await holder.kill('SIGKILL');
      const resumedAt = await loggedAt(other, 'job started', job.jobId);
      gone.push(resumedAt - killedAt);
      await finished(client, job.jobId);
      cluster.workers[cluster.workers.indexOf(holder)] = await cluster.startWorker(`${holder.name}-${n + 2}`);
    }
  } finally {
    await cluster.close();
  }
  return { busy, gone };
}

// Two trainings at a time per worker in the split: eight people train while 32 /imagine jobs wait beside them.
const splitKnobs = { ...knobs, WORKER_TRAIN_CONCURRENCY: '2' };

async function split() {
  const cluster = await startComposeCluster(splitKnobs, ['worker-a', 'worker-b']);
  try {
    const imaginer = await person(cluster.baseUrl);
    const firstTraining = await train(imaginer);
    await finished(imaginer, firstTraining.jobId);
    const started = Date.now();
    const jobs: Array<{ client: PlaygroundClient; jobId: string; kind: 'train' | 'generate' }> = [];
    const trainers = await Promise.all(Array.from({ length: 8 }, () => person(cluster.baseUrl)));
    for (let n = 0; n < 40; n++) {
      if (n % 5 === 0) {
        const client = trainers[n / 5]!;
        jobs.push({ client, jobId: (await train(client)).jobId, kind: 'train' });
      } else {
        const res = await imaginer.post('/api/imagine', { prompt: `me, portrait ${n}`, options: { width: 256, height: 256, seed: n } });
        if (res.status !== 202) throw new Error(`imagine: ${JSON.stringify(res.body)}`);
        jobs.push({ client: imaginer, jobId: res.body.jobId, kind: 'generate' });
      }
    }
    const results = await Promise.all(jobs.map((j) => finished(j.client, j.jobId)));
    const wallS = (Date.now() - started) / 1000;
    const failed = results.filter((r) => r.job.status !== 'completed').length;
    const perWorker = cluster.workers.map((w) => {
      const done = (kind: string) => jobs.filter((j) => j.kind === kind && w.lines('job completed').some((l) => l.jobId === j.jobId)).length;
      return { worker: w.name, train: done('train'), generate: done('generate') };
    });
    const twice = jobs.filter((j) => cluster.workers.flatMap((w) => w.lines('job completed')).filter((l) => l.jobId === j.jobId).length !== 1).length;
    return { settings: splitKnobs, jobs: 40, trainings: 8, generations: 32, wallS, failed, completedOnOtherThanOneWorker: twice, perWorker };
  } finally {
    await cluster.close();
  }
}

const versions = {
  node: process.version,
  bullmq: JSON.parse(spawnSync('node', ['-p', 'JSON.stringify(require("bullmq/package.json").version)'], { cwd: repoRoot, encoding: 'utf8' }).stdout),
  torch: spawnSync(join(repoRoot, '.venv/bin/python'), ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8' }).stdout.trim(),
  seaweedfs: spawnSync(join(repoRoot, '.venv/bin/weed'), ['version'], { encoding: 'utf8' }).stdout.trim().split('\n')[0],
};
const load = os.loadavg()[0]!;
const h = await handover();
const s = await split();
const date = new Date().toISOString().slice(0, 10);
const result = {
  date,
  machine: `python-svc ${os.cpus().length}-core`,
  engine: 'tiny (CPU, random weights), ENGINE_COUNT=1 per worker',
  versions,
  loadAverageAtStart: load,
  settings: { ...knobs, repeats },
  command: `node --import tsx bench/two-workers.ts ${repeats}`,
  handover: {
    busyMs: h.busy,
    busyMedianMs: median(h.busy),
    goneMs: h.gone,
    goneMedianMs: median(h.gone),
  },
  split: s,
};
await writeFile(join(repoRoot, `bench/results/two-workers-${date}.json`), `${JSON.stringify(result, null, 2)}\n`);
console.log(JSON.stringify(result, null, 2));
process.exit(0);
