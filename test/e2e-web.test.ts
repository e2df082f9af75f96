// End to end through the playground's HTTP API: upload → train → imagine → pose, on the real Postgres, Redis,
// worker and tiny engine.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { eq } from 'drizzle-orm';
import sharp from 'sharp';
import { adapters, generations, jobs } from '../src/db/schema.ts';
import { PlaygroundClient, startStack, type Stack } from './helpers/stack.ts';
import { badUploads, makePhotos, makeSkeleton } from './helpers/images.ts';

let stack: Stack;
let client: PlaygroundClient;
const events: any[] = [];
const sse = new AbortController();

before(async () => {
  stack = await startStack({ MIN_TRAINING_PHOTOS: '10' });
  client = new PlaygroundClient(stack.baseUrl);
});
after(async () => {
  sse.abort();
  await stack.close();
});

async function collectEvents() {
  const response = await client.request('/api/events', { signal: sse.signal });
  const decoder = new TextDecoder();
  let buffer = '';
  try {
    for await (const chunk of response.body!) {
      buffer += decoder.decode(chunk as Uint8Array, { stream: true });
      for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (frame.startsWith('data: ')) events.push(JSON.parse(frame.slice(6)));
      }
    }
  } catch (error) {
    if ((error as Error).name !== 'AbortError') throw error;
  }
}

/** safetensors: 8-byte little-endian header length, then a JSON header naming every tensor. */
function safetensorsHeader(file: Buffer): Record<string, unknown> {
  const length = Number(file.readBigUInt64LE(0));
  return JSON.parse(file.subarray(8, 8 + length).toString('utf8')) as Record<string, unknown>;
}

async function pngSize(response: Response) {
  assert.equal(response.status, 200);
  assert.equal(response.headers.get('content-type'), 'image/png');
  const meta = await sharp(Buffer.from(await response.arrayBuffer())).metadata();
  assert.equal(meta.format, 'png');
  return [meta.width, meta.height];
}

test('photos → train → imagine → pose through the web API', { timeout: 300_000 }, async () => {
  const info = await client.json('/api/info');
  assert.equal(info.body.engineProfile, 'tiny');
  assert.match(info.body.notice, /noise/);

  // 1. Ten good photos and four bad ones in one upload; each bad one gets its own message.
  const bad = await badUploads();
  const upload = await client.upload('/api/photos', [
    ...(await makePhotos(10)).map((data, i): [string, Buffer] => [`me-${i}.jpg`, data]),
    ['notes.jpg', bad.textAsJpeg], ['cut.jpg', bad.truncatedJpeg], ['dot.png', bad.onePixelPng], ['wave.gif', bad.animatedGif],
  ]);
  assert.equal(upload.status, 200);
  const results = upload.body.results as Array<{ filename: string; ok: boolean; code?: string; message?: string }>;
  assert.equal(results.filter((r) => r.ok).length, 10);
  assert.deepEqual(
    results.filter((r) => !r.ok).map((r) => [r.filename, r.code]),
    [['notes.jpg', 'not_an_image'], ['cut.jpg', 'truncated'], ['dot.png', 'too_small'], ['wave.gif', 'animated']],
  );
  assert.equal(upload.body.total, 10);
  // The person exists from the first upload on (reads create no one): follow their events from here.
  void collectEvents();

  // 2. Train, clicked twice: one job.
  const first = await client.post('/api/train');
  const second = await client.post('/api/train');
  assert.equal(first.status, 202);
  assert.equal(second.status, 200);
  assert.equal(second.body.jobId, first.body.jobId);
  const trained = await client.waitForJob(first.body.jobId);
  assert.equal(trained.job.status, 'completed', trained.job.error);
  assert.equal(trained.job.progress, 1);

  const db = stack.app.database.db;
  const [adapter] = await db.select().from(adapters).where(eq(adapters.id, first.body.adapterId));
  assert.equal(adapter!.status, 'ready');
  assert.equal(adapter!.photoIds.length, 10);
  const metrics = adapter!.metrics as { steps: number; finalLoss: number; losses: number[] };
  assert.equal(metrics.steps, 4);
  assert.equal(metrics.losses.length, 4);
  assert.ok(Number.isFinite(metrics.finalLoss));
  const lora = await stack.app.store.get(adapter!.fileKey!);
  const tensors = Object.keys(safetensorsHeader(lora)).filter((k) => k !== '__metadata__');
  assert.ok(tensors.length > 0 && tensors.every((k) => k.startsWith('unet.') && k.includes('lora')), tensors.join());

  // The person can take their LoRA elsewhere: the same file, and kohya's format for A1111 / ComfyUI.
  const status = await client.json('/api/status');
  const downloads = status.body.adapters[0].downloads;
  const diffusersFile = await client.request(downloads.diffusers);
  assert.match(diffusersFile.headers.get('content-disposition')!, /portrait-lora-v1\.safetensors/);
  assert.deepEqual(Buffer.from(await diffusersFile.arrayBuffer()), lora);
  const kohyaFile = Buffer.from(await (await client.request(downloads.kohya)).arrayBuffer());
  const kohyaTensors = Object.keys(safetensorsHeader(kohyaFile)).filter((k) => k !== '__metadata__');
  assert.ok(kohyaTensors.length > 0 && kohyaTensors.every((k) => k.startsWith('lora_unet_')), kohyaTensors.slice(0, 3).join());
  assert.equal((await new PlaygroundClient(stack.baseUrl).request(downloads.kohya)).status, 404, 'nobody else can download it');

  // 3. /imagine at a requested size.
  const imagine = await client.post('/api/imagine', { prompt: 'a portrait of me as an astronaut', options: { width: 256, height: 320, seed: 7 } });
  assert.equal(imagine.status, 202, JSON.stringify(imagine.body));
  const imagined = await client.waitForJob(imagine.body.jobId);
  assert.equal(imagined.job.status, 'completed', imagined.job.error);
  assert.equal(imagined.images.length, 1);
  assert.deepEqual(await pngSize(await client.request(imagined.images[0])), [256, 320]);
  const [generation] = await db.select().from(generations).where(eq(generations.jobId, imagine.body.jobId));
  assert.equal(generation!.prompt, 'a portrait of me as an astronaut');
  assert.equal(generation!.seed, 7);
  assert.equal(generation!.adapterId, adapter!.id);

  // 4. /pose with a skeleton image.
  const pose = await client.upload('/api/pose', [['skeleton.png', await makeSkeleton()]], { prompt: 'me dancing', options: JSON.stringify({ width: 384, height: 384 }) }, 'image');
  assert.equal(pose.status, 202, JSON.stringify(pose.body));
  assert.equal(pose.body.extractedSkeleton, false, 'no pose models in the tiny profile: the reference is the skeleton');
  assert.equal((await client.request(pose.body.controlUrl)).status, 200);
  const posed = await client.waitForJob(pose.body.jobId);
  assert.equal(posed.job.status, 'completed', posed.job.error);
  assert.deepEqual(await pngSize(await client.request(posed.images[0])), [384, 384]);
  const [poseRow] = await db.select().from(generations).where(eq(generations.jobId, pose.body.jobId));
  assert.ok(poseRow!.controlKey && (await stack.app.store.has(poseRow!.controlKey)));

  // 5. The person saw it happen live.
  const trainEvents = events.filter((e) => e.jobId === first.body.jobId);
  assert.ok(trainEvents.some((e) => e.status === 'active' && e.step >= 1 && typeof e.loss === 'number'), 'training progress was pushed');
  assert.equal(trainEvents.at(-1).status, 'completed');
  assert.ok(events.some((e) => e.jobId === pose.body.jobId && e.status === 'completed'));

  // 6. Another browser cannot see these images.
  const stranger = new PlaygroundClient(stack.baseUrl);
  assert.equal((await stranger.request(posed.images[0])).status, 404);

  const statuses = await db.select({ status: jobs.status }).from(jobs);
  assert.deepEqual(statuses.map((s) => s.status).sort(), ['completed', 'completed', 'completed']);

  // 7. /forget leaves no file behind: photos, both LoRA files, samples, the pose reference and the outputs.
  const [trainedAdapter] = await db.select().from(adapters).where(eq(adapters.id, first.body.adapterId));
  const files = [trainedAdapter!.fileKey!, trainedAdapter!.kohyaFileKey!, ...trainedAdapter!.sampleKeys, poseRow!.controlKey!, ...poseRow!.outputKeys, ...generation!.outputKeys];
  assert.equal((await client.post('/api/forget')).status, 200);
  for (const key of files) assert.ok(!(await stack.app.store.has(key)), `${key} was deleted`);
  assert.equal((await db.select().from(adapters)).length, 0);
});

test('bad requests get clear answers', async () => {
  const fresh = new PlaygroundClient(stack.baseUrl);
  const train = await fresh.post('/api/train');
  assert.equal(train.status, 400);
  assert.equal(train.body.error.code, 'not_enough_photos');
  assert.match(train.body.error.message, /at least 10/);
  const imagine = await fresh.post('/api/imagine', { prompt: 'me' });
  assert.equal(imagine.body.error.code, 'no_model');
  const pose = await fresh.upload('/api/pose', [], { prompt: 'x' }, 'image');
  assert.equal(pose.body.error.code, 'no_pose_image');
  const missing = await fresh.json('/api/jobs/00000000-0000-0000-0000-000000000000');
  assert.equal(missing.status, 404);
});
