// The process logger never writes a configured secret, wherever it appears in a line (an error's URL, a message,
// a nested field), while the rest of the line stays as it was.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadConfig } from '../src/config/index.ts';
import { createLogger, secretsOf } from '../src/logging.ts';

test('chat tokens, the webhook secret and service passwords are scrubbed from every log line', () => {
  const config = loadConfig({
    TELEGRAM_BOT_TOKEN: '7012345678:AAH-very-secret_token',
    DISCORD_TOKEN: 'MTIzNDU2Nzg5.discord.secret',
    TELEGRAM_WEBHOOK_SECRET: 'hook-secret-123',
    DATABASE_URL: 'postgres://bot:pa%24%24word@db.internal:5432/portrait',
    REDIS_URL: 'redis://:redis-pass-9@cache:6379',
    S3_SECRET_ACCESS_KEY: 's3-secret/Key+42',
    LOG_LEVEL: 'info',
  });
  assert.deepEqual(secretsOf(config).sort(), ['7012345678:AAH-very-secret_token', 'MTIzNDU2Nzg5.discord.secret', 'hook-secret-123', 'pa$$word', 'redis-pass-9', 's3-secret/Key+42'].sort());
  const lines: string[] = [];
  const logger = createLogger(config, { write: (line: string) => void lines.push(line) });
  logger.error({ err: new Error('request to https://api.telegram.org/bot7012345678:AAH-very-secret_token/getMe failed') }, 'telegram call failed');
  logger.warn({ headers: { authorization: 'Bot MTIzNDU2Nzg5.discord.secret' } }, 'discord said no');
  logger.info({ url: config.databaseUrl, redis: config.redisUrl, note: 'secret "hook-secret-123" in quotes', s3: 's3-secret/Key+42' }, 'connecting');
  const text = lines.join('');
  for (const secret of secretsOf(config)) assert.ok(!text.includes(secret), `${secret} reached the log`);
  assert.ok(!text.includes('pa%24%24word'), 'the URL-encoded password too');
  assert.equal(lines.length, 3);
  assert.match(lines[0]!, /bot\[secret\]\/getMe failed/);
  assert.match(lines[2]!, /db\.internal:5432/, 'the rest of the line is kept');
  for (const line of lines) JSON.parse(line); // still JSON
});

test('LOG_PRETTY=true writes pino-pretty lines (still scrubbed); unset on a pipe, JSON lines', async () => {
  const { spawnSync } = await import('node:child_process');
  const script = `
    import { loadConfig } from './src/config/index.ts';
    import { createLogger } from './src/logging.ts';
    const logger = createLogger(loadConfig()).child({ part: 'worker' });
    logger.info({ jobId: 'job-1', url: 'https://api.telegram.org/bot' + process.env.TELEGRAM_BOT_TOKEN + '/getMe' }, 'job started');`;
  const run = (extra: Record<string, string>) => spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    env: { ...process.env, TELEGRAM_BOT_TOKEN: '7012345678:AAH-pretty-secret', LOG_LEVEL: 'info', ...extra },
    encoding: 'utf8',
  });
  const pretty = run({ LOG_PRETTY: 'true' });
  assert.equal(pretty.status, 0, pretty.stderr);
  assert.match(pretty.stdout, /INFO.*: job started/);
  assert.match(pretty.stdout, /jobId: "job-1"/);
  assert.match(pretty.stdout, /bot\[secret\]\/getMe/);
  assert.ok(!pretty.stdout.includes('AAH-pretty-secret'));
  assert.ok(!pretty.stdout.trimStart().startsWith('{'), 'not JSON');

  const json = run({});
  assert.equal(json.status, 0, json.stderr);
  const line = JSON.parse(json.stdout) as Record<string, unknown>;
  assert.equal(line.msg, 'job started');
  assert.equal(line.part, 'worker');
  assert.ok(!json.stdout.includes('AAH-pretty-secret'));
});
