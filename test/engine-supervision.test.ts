// The engine supervisor against the real tiny engine: a hung engine is killed by the watchdog and its job retried
// (and the person told); a write into a dead engine's stdin cannot crash us; the engine sees none of our secrets
// and dies with the process that started it; a training retried after its engine died resumes from the checkpoint
// that went to storage.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { eq } from 'drizzle-orm';
import { adapters, type Job } from '../src/db/schema.ts';
import { repoRoot } from '../src/config/index.ts';
import { EngineError, EngineSupervisor } from '../worker/engine-client/supervisor.ts';
import { engineLaunch } from '../worker/index.ts';
import { eventually, jobRow as jobRowOf, startStack, startTrainingAs, type Stack } from './helpers/stack.ts';
import { testLogger } from './helpers/env.ts';
import type { JobEvent } from '../src/events/bus.ts';

let stack: Stack;

before(async () => {
  stack = await startStack({
    MIN_TRAINING_PHOTOS: '2', TRAIN_MAX_STEPS: '16', TRAIN_CHECKPOINT_STEPS: '4', LIKENESS_SAMPLES: '0',
    ENGINE_WATCHDOG_MS: '30000', TRAIN_ATTEMPTS: '4', TELEGRAM_BOT_TOKEN: '123:secret-token-for-the-bot',
  });
});
after(async () => stack.close());

const db = () => stack.app.database.db;
const jobRow = async (id: string): Promise<Job> => (await jobRowOf(stack, id))!;
/** Running (a zombie, dead but not yet reaped by whoever adopted it, counts as gone). */
const alive = (pid: number) => {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
};

const startTraining = (name: string, seed: number) => startTrainingAs(stack, name, seed);

test('the engine sees no secret of ours: no chat token, no database or Redis address', { timeout: 60_000 }, async () => {
  process.env.TELEGRAM_BOT_TOKEN = '123:secret-token-for-the-bot';
  process.env.DATABASE_URL = stack.env.config.databaseUrl;
  const engine = new EngineSupervisor({ launch: engineLaunch(stack.env.config), logger: testLogger });
  try {
    await engine.start();
    const environ = readFileSync(`/proc/${engine.pid}/environ`, 'utf8').split('\0');
    const names = environ.map((entry) => entry.split('=')[0]);
    for (const secret of ['TELEGRAM_BOT_TOKEN', 'DATABASE_URL', 'REDIS_URL', 'DISCORD_TOKEN']) assert.ok(!names.includes(secret), `${secret} reached the engine`);
    assert.ok(names.includes('PATH'));
    assert.equal((await engine.ping()).pong, true);
  } finally {
    delete process.env.TELEGRAM_BOT_TOKEN;
    delete process.env.DATABASE_URL;
    await engine.stop();
  }
});

test('a hung engine is killed by the watchdog and restarted; the job is retried and the person is told why', { timeout: 240_000 }, async () => {
  const { user, started } = await startTraining('hung-engine', 50);
  const seen: JobEvent[] = [];
  const unsubscribe = await stack.app.events.subscribe(user.id, (event) => seen.push(event));
  const before = await eventually(async () => {
    const row = await jobRow(started.job.id);
    return (row.step ?? 0) >= 1 ? row : undefined;
  }, 120_000, 'training to start');
  const pid = stack.worker!.engine.pid!;
  process.kill(pid, 'SIGSTOP'); // hangs: alive, silent
  await eventually(async () => !alive(pid) || undefined, 60_000, 'the watchdog to kill the hung engine');
  await eventually(async () => seen.find((e) => e.status === 'queued' && e.errorCode === 'engine_hung'), 30_000, 'the person to be told');
  const retried = await eventually(async () => {
    const row = await jobRow(started.job.id);
    return row.attempts > before.attempts && row.status === 'active' ? row : undefined;
  }, 120_000, 'the retry');
  assert.notEqual(stack.worker!.engine.pid, pid, 'a new engine process');
  assert.equal(retried.status, 'active');
  unsubscribe();
  await stack.app.services.jobs.cancel(user.id);
});

test('a training whose engine died resumes from the checkpoint in storage, and the checkpoint goes once it is done', { timeout: 300_000 }, async () => {
  const { started } = await startTraining('resume-after-crash', 60);
  const checkpointed = await eventually(async () => {
    const row = await jobRow(started.job.id);
    return (row.checkpointStep ?? 0) >= 4 && row.checkpointKey ? row : undefined;
  }, 180_000, 'a checkpoint in storage');
  assert.ok(await stack.app.store.has(checkpointed.checkpointKey!));
  process.kill(stack.worker!.engine.pid!, 'SIGKILL');
  const done = await eventually(async () => {
    const row = await jobRow(started.job.id);
    return row.status === 'completed' || row.status === 'failed' ? row : undefined;
  }, 240_000, 'the retried training to finish');
  assert.equal(done.status, 'completed', done.error ?? '');
  assert.ok(done.attempts > checkpointed.attempts, 'it finished on a later attempt than the one that stored the checkpoint');
  const [adapter] = await db().select().from(adapters).where(eq(adapters.id, started.adapter.id));
  const metrics = adapter!.metrics as { resumedFrom: number | null; steps: number };
  assert.ok((metrics.resumedFrom ?? 0) >= checkpointed.checkpointStep!, `resumed from ${metrics.resumedFrom}, stored ${checkpointed.checkpointStep}`);
  assert.equal(done.checkpointKey, null);
  assert.equal(await stack.app.store.has(checkpointed.checkpointKey!), false, 'the stored checkpoint was deleted');
});

test('writing to an engine whose stdin is gone fails the request instead of crashing the process', { timeout: 60_000 }, async () => {
  // An engine stand-in that announces readiness and closes its stdin: the next write gets EPIPE.
  const script = 'import os,sys,time; sys.stdout.write(\'{"id":null,"event":"ready","profile":"tiny","device":"cpu"}\\n\'); sys.stdout.flush(); os.close(0); time.sleep(30)';
  const engine = new EngineSupervisor({ launch: { python: stack.env.config.engine.python, args: ['-c', script], cwd: repoRoot }, logger: testLogger, watchdogMs: 1500 });
  try {
    await engine.start();
    await new Promise((r) => setTimeout(r, 300));
    const outcome = await engine.ping().then(() => 'answered', (error: EngineError) => error.code);
    assert.equal(outcome, 'engine_hung');
  } finally {
    await engine.stop(2000);
  }
});

test('the engine exits when the process that started it is killed, instead of training for nobody', { timeout: 90_000 }, async () => {
  const host = spawn(process.execPath, ['--import', 'tsx', resolve(repoRoot, 'test/helpers/engine-host.ts')], {
    env: { ...process.env, HOST_CONFIG: JSON.stringify({ launch: engineLaunch(stack.env.config) }) },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const enginePid = await new Promise<number>((resolvePid, reject) => {
    host.stdout!.on('data', (chunk: Buffer) => {
      const m = /engine-pid (\d+)/.exec(chunk.toString());
      if (m) resolvePid(Number(m[1]));
    });
    host.on('exit', () => reject(new Error('host exited early')));
  });
  assert.ok(alive(enginePid));
  host.kill('SIGKILL');
  await eventually(async () => !alive(enginePid) || undefined, 30_000, 'the orphaned engine to exit');
});
