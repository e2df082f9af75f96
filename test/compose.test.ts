// docker-compose.yml as Debian's docker-compose (1.29) reads it: valid, with the services and the settings the
// deployment depends on. No Docker engine runs here; test/two-workers.test.ts starts the same processes without it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from '../src/config/index.ts';
import { composeConfig, composeSecrets, entryScript } from './helpers/role-processes.ts';

const compose = composeConfig();
const services = compose.services;
const env = (name: string) => services[name]!.environment ?? {};
const chatTokens = ['TELEGRAM_BOT_TOKEN', 'DISCORD_TOKEN'];

test('docker-compose config accepts the file: postgres, redis, seaweedfs, bot and worker', () => {
  assert.deepEqual(Object.keys(services).sort(), ['bot', 'postgres', 'redis', 'seaweedfs', 'worker']);
  assert.match(services.seaweedfs!.image!, /^chrislusf\/seaweedfs:/);
  for (const name of ['bot', 'worker']) {
    const script = entryScript(services[name]!);
    assert.ok(existsSync(join(repoRoot, script)), `${name} runs ${script}`);
    assert.ok(existsSync(join(repoRoot, 'deploy', name === 'bot' ? 'Dockerfile' : 'Dockerfile.worker')));
  }
});

test('redis keeps the queue: append-only file on, no eviction', () => {
  const command = services.redis!.command!.join(' ');
  assert.match(command, /--appendonly yes/);
  assert.match(command, /--maxmemory-policy noeviction/);
  assert.ok(services.redis!.volumes!.some((v) => v.endsWith(':/data') || v.includes(':/data:')));
});

test('every process shares Postgres, Redis and the S3 store; tokens only on the bot, GPUs only on the worker', () => {
  for (const name of ['bot', 'worker']) {
    const e = env(name);
    assert.match(e.DATABASE_URL!, /^postgres:\/\/portrait:compose-test-pw@postgres:5432\//);
    assert.equal(e.REDIS_URL, 'redis://redis:6379');
    assert.equal(e.STORAGE, 's3');
    assert.equal(e.S3_ENDPOINT, 'http://seaweedfs:8333');
    assert.equal(e.S3_SECRET_ACCESS_KEY, composeSecrets.S3_SECRET_ACCESS_KEY);
    assert.equal(e.QUEUE_PREFIX, env('bot').QUEUE_PREFIX);
  }
  assert.equal(env('seaweedfs').AWS_SECRET_ACCESS_KEY, composeSecrets.S3_SECRET_ACCESS_KEY);
  assert.equal(env('bot').ROLES, 'web,telegram,discord');
  for (const token of chatTokens) {
    assert.ok(token in env('bot'));
    assert.ok(!(token in env('worker')), `the worker gets no ${token}`);
  }
  assert.ok(!('ENGINE_GPUS' in env('bot')));
});

test('the worker reserves NVIDIA GPUs, runs one engine per ENGINE_GPUS entry and reads the models volume', () => {
  const worker = services.worker!;
  const devices = worker.deploy?.resources?.reservations?.devices ?? [];
  assert.equal(devices.length, 1);
  assert.equal(devices[0]!.driver, 'nvidia');
  assert.deepEqual(devices[0]!.capabilities, ['gpu']);
  assert.equal(env('worker').ENGINE_GPUS, '0');
  assert.equal(composeConfig({ ...composeSecrets, ENGINE_GPUS: '0,1,2,3' }).services.worker!.environment!.ENGINE_GPUS, '0,1,2,3');
  assert.ok(worker.volumes!.some((v) => v.startsWith('models:/models')));
  assert.ok('models' in (compose.volumes ?? {}));
  assert.equal(env('worker').ENGINE_BASE_MODEL, '/models/sd15');
});

test('the file refuses to start without its passwords, naming the one missing', () => {
  const result = spawnSync('docker-compose', ['-f', 'docker-compose.yml', 'config', '-q'], {
    cwd: repoRoot,
    env: { PATH: process.env.PATH, S3_SECRET_ACCESS_KEY: 'x' },
    encoding: 'utf8',
  });
  assert.notEqual(result.status, 0);
  assert.match(result.stderr, /set POSTGRES_PASSWORD/);
});
