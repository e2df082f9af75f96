// The playground's train/imagine/pose go through the same per-person limits as the chat bots. No worker runs: the
// training is finished by hand, as the worker would leave it.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { eq } from 'drizzle-orm';
import { adapters, jobs } from '../src/db/schema.ts';
import { PlaygroundClient, startStack, type Stack } from './helpers/stack.ts';
import { makePhotos, makeSkeleton } from './helpers/images.ts';

let stack: Stack;
before(async () => {
  stack = await startStack({ MIN_TRAINING_PHOTOS: '3', LIMIT_GENERATIONS_PER_HOUR: '1', LIMIT_TRAININGS_PER_DAY: '1', LIMIT_ACTIVE_JOBS: '5' }, false);
});
after(async () => stack.close());

test('web API: a double-clicked Train is one training; the hourly and daily limits refuse with 429 and the limit message', { timeout: 60_000 }, async () => {
  const client = new PlaygroundClient(stack.baseUrl);
  const upload = await client.upload('/api/photos', (await makePhotos(3, 500)).map((data, i): [string, Buffer] => [`p${i}.jpg`, data]));
  assert.equal(upload.body.total, 3);
  assert.equal(upload.body.coverage, undefined, 'no coverage without the face models');

  // Double click: both answer with the same training, counted once against the daily limit of 1.
  const [first, second] = await Promise.all([client.post('/api/train'), client.post('/api/train')]);
  assert.deepEqual([first.status, second.status].sort(), [200, 202], JSON.stringify([first.body, second.body]));
  assert.equal(first.body.jobId, second.body.jobId);
  const again = await client.post('/api/train');
  assert.equal(again.status, 200, 'an open training is handed back, not refused by the daily limit');
  assert.equal(again.body.jobId, first.body.jobId);

  // The worker's part: the training finished.
  const db = stack.app.database.db;
  await db.update(jobs).set({ status: 'completed', finishedAt: new Date() }).where(eq(jobs.id, first.body.jobId));
  await db.update(adapters).set({ status: 'ready' }).where(eq(adapters.id, first.body.adapterId));

  const train = await client.post('/api/train');
  assert.equal(train.status, 429, JSON.stringify(train.body));
  assert.equal(train.body.error.code, 'limit_trainings');
  assert.match(train.body.error.message, /You have started 1 training today, the daily limit\. Try again in \d+ h\./);

  const imagine = await client.post('/api/imagine', { prompt: 'me as an astronaut' });
  assert.equal(imagine.status, 202, JSON.stringify(imagine.body));
  const refused = await client.request('/api/imagine', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'me again' }) });
  assert.equal(refused.status, 429);
  assert.ok(Number(refused.headers.get('retry-after')) > 0, 'Retry-After says when');
  const body = (await refused.json()) as { error: { code: string; message: string; details: { max: number; minutes: number } } };
  assert.equal(body.error.code, 'limit_generations');
  assert.match(body.error.message, /^You have made 1 picture in the last hour, the hourly limit\. Try again in \d+ min\.$/);
  assert.equal(body.error.details.max, 1);

  const pose = await client.upload('/api/pose', [['pose.png', await makeSkeleton()]], { prompt: 'dancing' }, 'image');
  assert.equal(pose.status, 429);
  assert.equal(pose.body.error.code, 'limit_generations', 'pose pictures count in the same hourly window');
  const generations = await db.select().from(jobs).where(eq(jobs.kind, 'imagine'));
  assert.equal(generations.length, 1, 'refusals queue nothing');
});
