import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, loadConfig } from '../src/config/index.ts';

test('defaults give a runnable tiny-profile configuration', () => {
  const config = loadConfig({});
  assert.equal(config.engine.profile, 'tiny');
  assert.equal(config.training.resolution, 512);
  assert.equal(config.training.maxSteps, 20);
  assert.equal(config.likeness.samples, 4, 'every validation prompt × seed');
  assert.deepEqual([...config.roles], ['web', 'worker', 'telegram', 'discord']);
});

test('one error names every bad variable', () => {
  assert.throws(
    () => loadConfig({ DATABASE_URL: 'mysql://x', WEB_PORT: 'eighty', ENGINE_PROFILE: 'huge', ROLES: 'web,fax', TRAIN_MAX_STEPS: '-3' }),
    (error) => {
      assert.ok(error instanceof ConfigError);
      for (const name of ['DATABASE_URL', 'WEB_PORT', 'ENGINE_PROFILE', 'ROLES', 'TRAIN_MAX_STEPS']) assert.match(error.message, new RegExp(name));
      assert.equal(error.problems.length, 5);
      return true;
    },
  );
});

test('the real profile needs both model folders', () => {
  assert.throws(() => loadConfig({ ENGINE_PROFILE: 'real' }), /ENGINE_BASE_MODEL[\s\S]*ENGINE_CONTROLNET/);
});

test('storage: local by default; s3 needs a bucket, and a custom endpoint defaults to path-style URLs', () => {
  const plain = loadConfig({});
  assert.equal(plain.storage.kind, 'local');
  assert.throws(() => loadConfig({ STORAGE: 's3' }), /S3_BUCKET: required when STORAGE=s3/);
  assert.throws(() => loadConfig({ STORAGE: 's3', S3_BUCKET: 'Bad_Bucket' }), /S3_BUCKET/);
  const s3 = loadConfig({ STORAGE: 's3', S3_BUCKET: 'portraits', S3_ENDPOINT: 'http://127.0.0.1:8333', STORAGE_CACHE_DIR: '/tmp/blob-cache' });
  assert.deepEqual(s3.storage, {
    kind: 's3',
    cacheDir: '/tmp/blob-cache',
    s3: { endpoint: 'http://127.0.0.1:8333', bucket: 'portraits', region: 'us-east-1', accessKeyId: undefined, secretAccessKey: undefined, forcePathStyle: true },
  });
  assert.equal(loadConfig({ STORAGE: 's3', S3_BUCKET: 'portraits' }).storage.s3.forcePathStyle, false, 'AWS: virtual-hosted URLs');
  assert.equal(loadConfig({ STORAGE: 's3', S3_BUCKET: 'portraits', S3_ENDPOINT: 'http://s3:8333', S3_FORCE_PATH_STYLE: 'false' }).storage.s3.forcePathStyle, false);
});

test('operations settings: admin ids as sets, a short admin token and a non-numeric id are refused by name', () => {
  const config = loadConfig({ ADMIN_TELEGRAM_IDS: ' 101, 202 ', ADMIN_DISCORD_IDS: '', ADMIN_TOKEN: 'a-long-enough-admin-token', HEALTH_PORT: '9464', METRICS_PUBLIC: 'true', LOG_PRETTY: 'false' });
  assert.deepEqual([...config.admin.telegramIds], ['101', '202']);
  assert.equal(config.admin.discordIds.size, 0);
  assert.equal(config.health.port, 9464);
  assert.equal(config.metricsPublic, true);
  assert.equal(config.logPretty, false);
  assert.equal(loadConfig({}).admin.token, undefined, 'no dashboard by default');
  assert.equal(loadConfig({}).metricsPublic, false);
  assert.throws(() => loadConfig({ ADMIN_TOKEN: 'short', ADMIN_DISCORD_IDS: 'dana' }), (error: unknown) => {
    const message = (error as Error).message;
    return /ADMIN_TOKEN: at least 16 characters/.test(message) && /ADMIN_DISCORD_IDS: comma-separated numeric ids/.test(message);
  });
});
