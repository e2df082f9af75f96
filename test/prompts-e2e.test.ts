// The trained subject reaches the engine: web API → worker → tiny engine, on the real Postgres and Redis.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { eq } from 'drizzle-orm';
import sharp from 'sharp';
import { adapters, generations } from '../src/db/schema.ts';
import type { GenerateRequest } from '../src/engine/protocol.ts';
import { PlaygroundClient, recordGenerateRequests, startStack, type Stack } from './helpers/stack.ts';
import { makePhotos, makeSkeleton } from './helpers/images.ts';

let stack: Stack;
let client: PlaygroundClient;
/** Every generate request the worker sent down the engine's pipe. */
let sent: Array<Omit<GenerateRequest, 'op'>> = [];

before(async () => {
  stack = await startStack({ MIN_TRAINING_PHOTOS: '10' });
  client = new PlaygroundClient(stack.baseUrl);
  sent = recordGenerateRequests(stack);
});
after(() => stack.close());

const pixels = async (path: string) => (await sharp(await readFile(path)).raw().toBuffer());

test('/imagine "a portrait of me as an astronaut" paints the trained subject', { timeout: 300_000 }, async () => {
  const upload = await client.upload('/api/photos', (await makePhotos(10)).map((data, i): [string, Buffer] => [`me-${i}.jpg`, data]));
  assert.equal(upload.body.total, 10);
  const train = await client.post('/api/train');
  assert.equal((await client.waitForJob(train.body.jobId)).job.status, 'completed');
  const db = stack.app.database.db;
  const [adapter] = await db.select().from(adapters).where(eq(adapters.id, train.body.adapterId));
  assert.equal((adapter!.params as { instance_prompt: string }).instance_prompt, 'a photo of sks person');

  const imagine = await client.post('/api/imagine', { prompt: 'a portrait of me as an astronaut', options: { seed: 5, width: 256, height: 256 } });
  assert.equal(imagine.status, 202, JSON.stringify(imagine.body));
  assert.equal(imagine.body.prompt, 'a portrait of me as an astronaut');
  assert.equal(imagine.body.enginePrompt, 'a portrait of sks person as an astronaut');
  assert.equal(imagine.body.promptUsed, 'a portrait of you as an astronaut');
  const done = await client.waitForJob(imagine.body.jobId);
  assert.equal(done.job.status, 'completed', done.job.error);
  assert.equal(done.promptUsed, 'a portrait of you as an astronaut');

  // Stored: the words as typed, and the prompt the engine got.
  const [row] = await db.select().from(generations).where(eq(generations.jobId, imagine.body.jobId));
  assert.equal(row!.prompt, 'a portrait of me as an astronaut');
  assert.equal(row!.enginePrompt, 'a portrait of sks person as an astronaut');
  // Sent: the rewritten prompt went down the pipe (after the two validation samples of the training).
  const request = sent.find((r) => r.seed === 5)!;
  assert.equal(request.prompt, 'a portrait of sks person as an astronaut');

  // And the engine used it: the same request run again gives the same pixels, the raw words other pixels.
  const dir = await mkdtemp(join(tmpdir(), 'prompt-e2e-'));
  try {
    const engine = stack.worker!.engine;
    const again = await engine.generate({ ...request, id: 'again', output_dir: join(dir, 'a') });
    const raw = await engine.generate({ ...request, id: 'raw', prompt: 'a portrait of me as an astronaut', output_dir: join(dir, 'b') });
    const stored = await sharp(await stack.app.store.get(row!.outputKeys[0]!)).raw().toBuffer();
    assert.ok(stored.equals(await pixels(again.images[0]!)), 'the stored portrait is the rewritten prompt’s');
    assert.ok(!stored.equals(await pixels(raw.images[0]!)), 'the raw words paint something else');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }

  // A prompt that names nobody gets the subject; one that names the token stays as typed.
  const bare = await client.post('/api/imagine', { prompt: 'an astronaut on the moon', options: { width: 256, height: 256 } });
  assert.equal(bare.body.enginePrompt, 'a photo of sks person, an astronaut on the moon');
  assert.equal(bare.body.promptUsed, 'a photo of you, an astronaut on the moon');
  assert.equal((await client.waitForJob(bare.body.jobId)).job.status, 'completed');
  const named = await client.post('/api/imagine', { prompt: 'sks person, oil painting', options: { width: 256, height: 256 } });
  assert.equal(named.body.enginePrompt, 'sks person, oil painting');
  assert.equal((await client.waitForJob(named.body.jobId)).job.status, 'completed');
  assert.deepEqual(sent.slice(-2).map((r) => r.prompt), ['a photo of sks person, an astronaut on the moon', 'sks person, oil painting']);
});

test('/pose without words paints the subject in the pose', { timeout: 120_000 }, async () => {
  const pose = await client.upload('/api/pose', [['skeleton.png', await makeSkeleton(256)]], { options: JSON.stringify({ width: 256, height: 256 }) }, 'image');
  assert.equal(pose.status, 202, JSON.stringify(pose.body));
  assert.equal(pose.body.prompt, '');
  assert.equal(pose.body.enginePrompt, 'a photo of sks person');
  assert.equal((await client.waitForJob(pose.body.jobId)).job.status, 'completed');
  assert.equal(sent.at(-1)!.prompt, 'a photo of sks person');
});

test('a style through the web API: its English prompt and settings reach the engine; an unknown one is a 400', { timeout: 120_000 }, async () => {
  const queued = await client.post('/api/imagine', { style: 'noir', prompt: 'with my cat', options: { width: 256, height: 256 } });
  assert.equal(queued.status, 202, JSON.stringify(queued.body));
  assert.equal(queued.body.style, 'noir');
  assert.equal(queued.body.enginePrompt, "a black and white film noir portrait of sks person, 1940s detective, fedora, venetian blind shadows, dramatic contrast, film grain, with sks person's cat");
  assert.equal((await client.waitForJob(queued.body.jobId)).job.status, 'completed');
  const request = sent.at(-1)!;
  assert.deepEqual([request.prompt, request.steps, request.guidance_scale, request.scheduler], [queued.body.enginePrompt, 28, 7, 'ddim']);
  // Explicit settings still win over the style's.
  const explicit = await client.post('/api/imagine', { style: 'noir', options: { steps: 3, width: 256, height: 256 } });
  assert.equal((await client.waitForJob(explicit.body.jobId)).job.status, 'completed');
  assert.equal(sent.at(-1)!.steps, 3);

  const unknown = await client.post('/api/imagine', { style: 'pirate' });
  assert.equal(unknown.status, 400);
  assert.equal(unknown.body.error.code, 'unknown_style');
  assert.match(unknown.body.error.message, /I don’t know the style “pirate”\. The styles are: astronaut, oil, /);
  const notAName = await client.post('/api/imagine', { style: 42 });
  assert.deepEqual([notAName.status, notAName.body.error.code], [400, 'bad_options']);
});
