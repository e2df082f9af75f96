// Each role's entry point starts on its own: bin/web.ts runs the web role alone (no engine, no chat), and a chat entry
// without its token refuses to start with a message naming the setting. (bin/worker.ts and bin/start.ts with ROLES
// run in test/two-workers.test.ts.)
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { repoRoot } from '../src/config/index.ts';
import { createTestDatabase } from './helpers/env.ts';
import { startRole } from './helpers/role-processes.ts';

const cleanups: Array<() => Promise<unknown>> = [];
after(async () => { for (const clean of cleanups.reverse()) await clean(); });

test('bin/web.ts runs the web role alone: it answers, starts no engine and no chat', { timeout: 60_000 }, async () => {
  const database = await createTestDatabase();
  cleanups.push(database.drop);
  const dir = await mkdtemp(join(tmpdir(), 'roles-web-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const web = startRole('web', 'bin/web.ts', {
    DATABASE_URL: database.url,
    QUEUE_PREFIX: `roles-${process.pid}`,
    STORAGE_DIR: join(dir, 'storage'),
    WEB_PORT: '0',
    LOG_LEVEL: 'info',
    // Set, yet unused: the web entry starts the web role only.
    TELEGRAM_BOT_TOKEN: '123:unused',
  });
  cleanups.push(() => web.kill());
  const started = await web.waitForLog((l) => l.msg === 'roles started', 45_000, 'roles started');
  assert.deepEqual(started.roles, ['web']);
  const address = String(web.lines('web playground listening')[0]!.address);
  assert.equal((await fetch(`${address}/api/info`)).status, 200);
  assert.equal(web.logs.filter((l) => /engine|worker started|telegram/i.test(l.msg)).length, 0);
});

for (const [role, token] of [['telegram', 'TELEGRAM_BOT_TOKEN'], ['discord', 'DISCORD_TOKEN']] as const) {
  test(`bin/${role}.ts without ${token} refuses to start and names the setting`, () => {
    const result = spawnSync(process.execPath, ['--import', 'tsx', `bin/${role}.ts`], {
      cwd: repoRoot,
      env: { PATH: process.env.PATH, HOME: process.env.HOME },
      encoding: 'utf8',
      timeout: 30_000,
    });
    assert.equal(result.status, 2, result.stderr);
    assert.match(result.stderr, new RegExp(`${token}: required by the ${role} role`));
  });
}
