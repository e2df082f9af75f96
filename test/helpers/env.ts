// Test environment: a real Postgres database per test file (cloned from a migrated template), a Redis key prefix
// per test file, and temporary storage; the tiny engine's weights are generated once and shared.
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import pg from 'pg';
import pino from 'pino';
import { loadConfig, repoRoot, type Config } from '../../src/config/index.ts';
import { migrateDatabase, migrationsFolder, openDatabase } from '../../src/db/client.ts';

const adminUrl = process.env.TEST_DATABASE_ADMIN_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
export const testLogger = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });

async function migrationsHash(): Promise<string> {
  const hash = createHash('sha256');
  for (const name of (await readdir(migrationsFolder)).filter((n) => n.endsWith('.sql')).sort()) {
    hash.update(name).update(await readFile(join(migrationsFolder, name)));
  }
  return hash.digest('hex').slice(0, 12);
}

async function withAdmin<T>(fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

const dbUrl = (name: string) => {
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return url.toString();
};

/** A migrated template per migrations version; test files clone it (fast) instead of migrating each time. */
async function templateDatabase(): Promise<string> {
  const name = `portrait_tpl_${await migrationsHash()}`;
  await withAdmin(async (client) => {
    await client.query('select pg_advisory_lock(424242)');
    try {
      const found = await client.query('select 1 from pg_database where datname = $1', [name]);
      if (found.rowCount) return;
      await client.query(`create database "${name}"`);
      const database = openDatabase(dbUrl(name), { max: 1 });
      try {
        await migrateDatabase(database.db);
      } catch (error) {
        await database.close();
        await client.query(`drop database "${name}"`);
        throw error;
      }
      await database.close();
    } finally {
      await client.query('select pg_advisory_unlock(424242)');
    }
  });
  return name;
}

export async function createTestDatabase(): Promise<{ url: string; drop: () => Promise<void> }> {
  const template = await templateDatabase();
  const name = `portrait_test_${randomBytes(6).toString('hex')}`;
  await withAdmin(async (client) => {
    // Serialized: Postgres refuses to clone a template that another session is cloning at the same moment.
    await client.query('select pg_advisory_lock(424243)');
    try {
      await client.query(`create database "${name}" template "${template}"`);
    } finally {
      await client.query('select pg_advisory_unlock(424243)');
    }
  });
  return {
    url: dbUrl(name),
    drop: () => withAdmin(async (client) => { await client.query(`drop database if exists "${name}" with (force)`); }),
  };
}

export interface TestEnv {
  config: Config;
  dir: string;
  cleanup(): Promise<void>;
}

/** A full Config pointing at fresh, isolated resources; `overrides` are environment variables. */
// The engine pads each training UNet call to a fixed row count (ENGINE_TRAIN_ROWS, 8) so a job's numbers don't depend
// on its batch mates; the engine's own tests prove that. On this CPU the padding makes every training step 8× the
// work, so the TypeScript suites run the engine at natural batch sizes.
process.env.ENGINE_TRAIN_ROWS ??= '0';

export async function createTestEnv(overrides: Record<string, string> = {}): Promise<TestEnv> {
  const database = await createTestDatabase();
  const dir = await mkdtemp(join(tmpdir(), 'portrait-test-'));
  const config = loadConfig({
    DATABASE_URL: database.url,
    QUEUE_PREFIX: `test-${randomBytes(4).toString('hex')}`,
    STORAGE_DIR: join(dir, 'storage'),
    WORK_DIR: join(dir, 'work'),
    UPLOAD_TMP_DIR: join(dir, 'uploads'),
    ENGINE_PROFILE: 'tiny',
    ENGINE_DEVICE: 'cpu',
    ENGINE_CACHE_DIR: process.env.ENGINE_CACHE_DIR ?? resolve(repoRoot, 'var/engine-cache'),
    WEB_PORT: '0',
    LOG_LEVEL: 'silent',
    TRAIN_MAX_STEPS: '4',
    GENERATE_STEPS: '2',
    LIKENESS_SAMPLES: '2',
    // Intermediate previews are off unless a suite is about them (test/previews.test.ts, the browser journey).
    TRAIN_PREVIEWS: '0',
    // Suites about other things skip the consent step; test/consent.test.ts turns it on.
    CONSENT_REQUIRED: 'false',
    ...overrides,
  });
  return {
    config,
    dir,
    async cleanup() {
      await database.drop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
