// Retention: people inactive for RETENTION_DAYS lose all their data, as /forget would; active people keep theirs.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { eq, sql } from 'drizzle-orm';
import { createApp, type App } from '../src/app.ts';
import { photos, users } from '../src/db/schema.ts';
import { createTestEnv, testLogger, type TestEnv } from './helpers/env.ts';
import { makePhotos } from './helpers/images.ts';

const DAY = 24 * 3600 * 1000;
let env: TestEnv;
let app: App;

before(async () => {
  env = await createTestEnv({ RETENTION_DAYS: '30', MIN_TRAINING_PHOTOS: '2' });
  app = await createApp(env.config, testLogger);
});
after(async () => {
  await app.close();
  await env.cleanup();
});

test('people inactive past the retention period are forgotten, files included; recent activity keeps a person', async () => {
  const { users: userService, photos: photoService, retention, training } = app.services;
  const idle = await userService.resolve('web', 'idle-person');
  const [photo] = await makePhotos(1, 70);
  const stored = await photoService.add(idle.id, photo!);
  assert.ok(stored.ok);
  const active = await userService.resolve('web', 'active-person');
  const busy = await userService.resolve('web', 'training-person');
  for (const p of await makePhotos(2, 80)) assert.ok((await photoService.add(busy.id, p)).ok);
  await training.start(busy.id); // an open job: active whatever the dates say

  // 31 days on: the idle person's last activity is a month old. The active one did something 2 days ago.
  const later = new Date(Date.now() + 31 * DAY);
  await app.database.db.update(users).set({ createdAt: new Date(later.getTime() - 2 * DAY) }).where(eq(users.id, active.id));
  assert.deepEqual((await retention.inactive(later)).sort(), [idle.id]);
  assert.equal(await retention.sweep(later), 1);

  assert.equal((await app.database.db.select().from(users).where(eq(users.id, idle.id))).length, 0);
  assert.equal((await app.database.db.select().from(photos).where(eq(photos.userId, idle.id))).length, 0);
  assert.equal(await app.store.has(stored.ok ? stored.photo.storageKey : ''), false, 'their files are gone');
  const left = await app.database.db.execute<{ n: number }>(sql`select count(*)::int as n from users`);
  assert.equal(left.rows[0]!.n, 2, 'the active and the training person remain');
  // Nothing is deleted while retention is off or the period has not passed.
  assert.equal(await retention.sweep(new Date()), 0);
});
