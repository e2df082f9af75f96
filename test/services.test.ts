// The platform-neutral services against the real Postgres and Redis (no worker: jobs stay queued).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { eq } from 'drizzle-orm';
import { createApp, type App } from '../src/app.ts';
import { adapters, jobs, photos, users } from '../src/db/schema.ts';
import { UserFacingError } from '../src/services/errors.ts';
import { createTestEnv, testLogger, type TestEnv } from './helpers/env.ts';
import { badUploads, makePhotos, makeSkeleton } from './helpers/images.ts';

let env: TestEnv;
let app: App;

async function storedFiles(): Promise<string[]> {
  try {
    return (await readdir(app.config.storageDir, { recursive: true, withFileTypes: true })).filter((e) => e.isFile()).map((e) => e.name);
  } catch {
    return [];
  }
}

let nextPhoto = 1000;
/** A user with `count` photos that no other test user shares (blobs are content-addressed). */
async function userWithPhotos(externalId: string, count: number) {
  const user = await app.services.users.resolve('web', externalId);
  nextPhoto += count;
  for (const photo of await makePhotos(count, nextPhoto)) {
    const result = await app.services.photos.add(user.id, photo);
    assert.ok(result.ok);
  }
  return user;
}

const rejectsWith = (code: string) => (error: unknown) => error instanceof UserFacingError && error.code === code;

before(async () => {
  env = await createTestEnv({ MIN_TRAINING_PHOTOS: '3' });
  app = await createApp(env.config, testLogger);
});
after(async () => {
  await app.queues.train.obliterate({ force: true });
  await app.queues.generate.obliterate({ force: true });
  await app.close();
  await env.cleanup();
});

describe('users', () => {
  test('one user per platform account, even when first contacts race', async () => {
    const [a, b, c] = await Promise.all([1, 2, 3].map(() => app.services.users.resolve('telegram', '777')));
    assert.equal(a!.id, b!.id);
    assert.equal(b!.id, c!.id);
    const other = await app.services.users.resolve('discord', '777');
    assert.notEqual(other.id, a!.id);
  });
});

describe('photos', () => {
  test('a good photo is stored once; the same bytes again are reported as a duplicate', async () => {
    const user = await app.services.users.resolve('web', 'photos-1');
    const [photo] = await makePhotos(1);
    const first = await app.services.photos.add(user.id, photo!, 'me.jpg');
    assert.ok(first.ok && !first.duplicate && first.total === 1);
    assert.equal(first.photo.width, 640);
    assert.equal(first.photo.height, 800);
    const again = await app.services.photos.add(user.id, photo!, 'me-again.jpg');
    assert.ok(again.ok && again.duplicate && again.photo.id === first.photo.id);
    assert.equal(await app.services.photos.count(user.id), 1);
    const crop = await app.store.get(first.photo.cropKey);
    const { default: sharp } = await import('sharp');
    const meta = await sharp(crop).metadata();
    assert.deepEqual([meta.width, meta.height], [512, 512], 'training crops are at the training resolution');
  });

  test('each bad upload gets its own clear message and leaves no row and no file', async () => {
    const user = await app.services.users.resolve('web', 'photos-bad');
    const filesBefore = await storedFiles();
    const bad = await badUploads();
    const expected: Record<keyof typeof bad, [string, RegExp]> = {
      textAsJpeg: ['not_an_image', /not an image/i],
      truncatedJpeg: ['truncated', /truncated|cut off/i],
      onePixelPng: ['too_small', /1×1|256/],
      animatedGif: ['animated', /animated/i],
    };
    const messages = new Set<string>();
    for (const [name, bytes] of Object.entries(bad) as Array<[keyof typeof bad, Buffer]>) {
      const result = await app.services.photos.add(user.id, bytes, `${name}.jpg`);
      assert.ok(!result.ok, name);
      assert.equal(result.code, expected[name][0], name);
      assert.match(result.message, expected[name][1], name);
      messages.add(result.message);
    }
    assert.equal(messages.size, 4, 'four different messages');
    assert.equal(await app.services.photos.count(user.id), 0);
    assert.deepEqual(await storedFiles(), filesBefore);
  });

  test('removing a photo deletes its files unless another photo row still uses them', async () => {
    const a = await app.services.users.resolve('web', 'share-a');
    const b = await app.services.users.resolve('web', 'share-b');
    const [photo] = await makePhotos(1, 500);
    const ra = await app.services.photos.add(a.id, photo!);
    const rb = await app.services.photos.add(b.id, photo!);
    assert.ok(ra.ok && rb.ok);
    await app.services.photos.remove(a.id, ra.photo.id);
    assert.ok(await app.store.has(rb.photo.storageKey), 'still used by b');
    await app.services.photos.remove(b.id, rb.photo.id);
    assert.ok(!(await app.store.has(rb.photo.storageKey)));
    assert.ok(!(await app.store.has(rb.photo.cropKey)));
    await assert.rejects(app.services.photos.remove(b.id, rb.photo.id), rejectsWith('not_found'));
  });
});

describe('training', () => {
  test('too few photos is refused with the numbers', async () => {
    const user = await userWithPhotos('train-few', 2);
    await assert.rejects(app.services.training.start(user.id), (error) => {
      assert.ok(error instanceof UserFacingError);
      assert.equal(error.code, 'not_enough_photos');
      assert.deepEqual(error.details, { have: 2, need: 3 });
      return true;
    });
    assert.equal((await app.database.db.select().from(jobs).where(eq(jobs.userId, user.id))).length, 0);
  });

  test('a double-clicked Train makes one job, one adapter and one queue entry', async () => {
    const user = await userWithPhotos('train-double', 3);
    const [a, b] = await Promise.all([app.services.training.start(user.id), app.services.training.start(user.id)]);
    assert.equal(a.job.id, b.job.id);
    assert.deepEqual([a.created, b.created].sort(), [false, true]);
    const rows = await app.database.db.select().from(jobs).where(eq(jobs.userId, user.id));
    assert.equal(rows.length, 1);
    assert.equal(rows[0]!.queueJobId, `${a.job.id}-train`);
    const queued = await app.queues.train.getJob(`${a.job.id}-train`);
    assert.deepEqual(queued?.data, { jobId: a.job.id, adapterId: a.adapter.id }, "the queue record carries row ids only, never the user id");
    assert.equal(queued?.opts.attempts, app.config.queue.trainAttempts);
    const [adapter] = await app.database.db.select().from(adapters).where(eq(adapters.userId, user.id));
    assert.equal(adapter!.status, 'queued');
    assert.equal(adapter!.version, 1);
    assert.equal(adapter!.photoIds.length, 3);
    assert.equal((adapter!.params as { resolution: number }).resolution, 512);
    assert.ok(a.position >= 1);
  });

  test('cancelling a waiting training removes it from the queue and marks job and adapter', async () => {
    const user = await userWithPhotos('train-cancel', 3);
    const started = await app.services.training.start(user.id);
    const cancelled = await app.services.jobs.cancel(user.id);
    assert.equal(cancelled.id, started.job.id);
    assert.equal(cancelled.status, 'cancelled');
    assert.equal(await app.queues.train.getJob(`${started.job.id}-train`), undefined);
    const [adapter] = await app.database.db.select().from(adapters).where(eq(adapters.id, started.adapter.id));
    assert.equal(adapter!.status, 'cancelled');
    await assert.rejects(app.services.jobs.cancel(user.id), rejectsWith('nothing_to_cancel'));
    const again = await app.services.training.start(user.id);
    assert.ok(again.created && again.adapter.version === 2, 'a new training may start after a cancel');
  });
});

describe('generation', () => {
  test('imagine and pose need a trained model, a prompt of sane length and valid options', async () => {
    const user = await app.services.users.resolve('web', 'gen-none');
    await assert.rejects(app.services.generation.imagine(user.id, 'me as an astronaut'), rejectsWith('no_model'));
    await assert.rejects(app.services.generation.imagine(user.id, '   '), rejectsWith('empty_prompt'));
    await assert.rejects(app.services.generation.imagine(user.id, 'x'.repeat(501)), rejectsWith('prompt_too_long'));
    await assert.rejects(app.services.generation.imagine(user.id, 'ok', { width: 333 }), rejectsWith('bad_options'));
    const filesBefore = await storedFiles();
    await assert.rejects(app.services.generation.pose(user.id, await makeSkeleton(), 'dancing'), rejectsWith('no_model'));
    assert.deepEqual(await storedFiles(), filesBefore, 'a refused /pose leaves its reference behind nowhere');
  });

  test('while training runs, imagine says so', async () => {
    const user = await userWithPhotos('gen-training', 3);
    await app.services.training.start(user.id);
    await assert.rejects(app.services.generation.imagine(user.id, 'me'), rejectsWith('training_in_progress'));
  });
});

describe('forget', () => {
  test('deletes every row and file of the user, and their queued jobs', async () => {
    const user = await userWithPhotos('forget-me', 3);
    const started = await app.services.training.start(user.id);
    const keys = (await app.services.photos.list(user.id)).flatMap((p) => [p.storageKey, p.cropKey]);
    const result = await app.services.forget.forget(user.id);
    assert.deepEqual(result, { photos: 3, adapters: 1, generations: 0, files: 6 });
    for (const key of keys) assert.ok(!(await app.store.has(key)), key);
    assert.equal((await app.database.db.select().from(users).where(eq(users.id, user.id))).length, 0);
    assert.equal((await app.database.db.select().from(photos).where(eq(photos.userId, user.id))).length, 0);
    assert.equal(await app.queues.train.getJob(`${started.job.id}-train`), undefined);
  });
});
