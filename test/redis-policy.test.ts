// The start-up check of Redis's eviction policy and persistence, against test-owned redis-servers: unsafe settings
// are named in a warning, safe ones pass silently, and a Redis that refuses CONFIG (managed services) is no failure.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import { checkRedisPolicy } from '../src/redis-policy.ts';
import { createOwnRedis, type OwnRedis } from './helpers/own-services.ts';

const servers: OwnRedis[] = [];
const clients: Redis[] = [];
after(async () => {
  for (const client of clients) client.disconnect();
  for (const server of servers) await server.destroy();
});

async function redisWith(args: string[]) {
  const server = await createOwnRedis(args);
  servers.push(server);
  const client = new Redis(server.url);
  clients.push(client);
  return client;
}

/** A logger that keeps what it was told. */
function recorder() {
  const said: Array<{ level: 'warn' | 'info'; msg: string; fields: Record<string, unknown> }> = [];
  const at = (level: 'warn' | 'info') => (fields: Record<string, unknown>, msg: string) => void said.push({ level, msg, fields });
  return { said, logger: { warn: at('warn'), info: at('info') } as never };
}

test('an evicting Redis without persistence: two warnings naming the settings to change', async () => {
  const redis = await redisWith(['--maxmemory-policy', 'allkeys-lru', '--appendonly', 'no', '--save', '']);
  const { said, logger } = recorder();
  const policy = await checkRedisPolicy(redis, logger, 'worker');
  assert.equal(policy.readable, true);
  assert.equal(policy.maxmemoryPolicy, 'allkeys-lru');
  assert.equal(policy.appendonly, false);
  assert.equal(said.length, 2);
  assert.ok(said.every((s) => s.level === 'warn' && s.fields.who === 'worker'));
  assert.match(said[0]!.msg, /^Redis is unsafe for a job queue: maxmemory-policy is allkeys-lru.*set maxmemory-policy noeviction/);
  assert.match(said[1]!.msg, /persistence is off.*set appendonly yes/);
});

test('noeviction with AOF, or with RDB snapshots: no warning', async () => {
  for (const args of [[], ['--appendonly', 'no', '--save', '900 1']]) {
    const { said, logger } = recorder();
    const policy = await checkRedisPolicy(await redisWith(args), logger, 'telegram');
    assert.deepEqual(policy.problems, [], JSON.stringify(args));
    assert.deepEqual(said, []);
  }
});

test('CONFIG disabled (a managed Redis): one info line, no failure', async () => {
  const redis = await redisWith(['--rename-command', 'CONFIG', '']);
  const { said, logger } = recorder();
  const policy = await checkRedisPolicy(redis, logger, 'discord');
  assert.equal(policy.readable, false);
  assert.equal(said.length, 1);
  assert.equal(said[0]!.level, 'info');
  assert.match(said[0]!.msg, /does not allow CONFIG GET.*noeviction/);
});

test('a Redis that does not answer holds nothing up: a warning after the timeout', async () => {
  const server = await createOwnRedis();
  servers.push(server);
  const redis = new Redis(server.url, { maxRetriesPerRequest: null });
  redis.on('error', () => {});
  clients.push(redis);
  await redis.ping();
  await server.kill();
  const { said, logger } = recorder();
  const started = Date.now();
  const policy = await checkRedisPolicy(redis, logger, 'worker', 300);
  assert.ok(Date.now() - started < 2000);
  assert.equal(policy.readable, false);
  assert.equal(said[0]?.level, 'warn');
});
