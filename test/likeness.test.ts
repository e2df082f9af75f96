// After training: sample portraits from the validation prompts, scored against a held-out upload; /pose outputs
// are re-scored. Real tiny engine and worker; the generated fixture ONNX models stand in for YuNet/SFace/DWPose.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { eq } from 'drizzle-orm';
import { adapters, generations } from '../src/db/schema.ts';
import { PlaygroundClient, startStack, type Stack } from './helpers/stack.ts';
import { fixtureModelsDir, sceneJpeg } from './helpers/vision.ts';
import { renderMetrics } from '../src/metrics.ts';

let stack: Stack;
before(async () => {
  stack = await startStack({ MIN_TRAINING_PHOTOS: '3', VISION_MODELS_DIR: fixtureModelsDir, LIKENESS_SAMPLES: '3' });
});
after(async () => stack.close());

test('training holds one upload out, samples the validation set and scores likeness against it', { timeout: 240_000 }, async () => {
  const client = new PlaygroundClient(stack.baseUrl);
  const faces = [
    { width: 900, height: 1200, faces: [{ x: 290, y: 300, w: 320, h: 380, blue: 60 }] },
    { width: 1200, height: 900, faces: [{ x: 600, y: 150, w: 330, h: 400, blue: 150 }] },
    { width: 1000, height: 1000, faces: [{ x: 100, y: 420, w: 360, h: 420, blue: 110 }] },
  ];
  const upload = await client.upload('/api/photos', await Promise.all(faces.map(async (scene, i): Promise<[string, Buffer]> => [`face-${i}.jpg`, await sceneJpeg(scene)])));
  assert.deepEqual(upload.body.results.map((r: any) => [r.ok, r.faceChecked]), [[true, true], [true, true], [true, true]], JSON.stringify(upload.body));

  const train = await client.post('/api/train');
  const done = await client.waitForJob(train.body.jobId);
  assert.equal(done.job.status, 'completed', done.job.error);
  const db = stack.app.database.db;
  const [adapter] = await db.select().from(adapters).where(eq(adapters.id, train.body.adapterId));
  assert.ok(adapter!.heldOutPhotoId, 'one upload was held out');
  assert.equal(adapter!.photoIds.length, 2);
  assert.ok(!adapter!.photoIds.includes(adapter!.heldOutPhotoId!), 'the held-out photo is not trained on');
  assert.equal(adapter!.sampleKeys.length, stack.env.config.likeness.samples);
  for (const key of adapter!.sampleKeys) assert.ok(await stack.app.store.has(key));
  const likeness = (adapter!.metrics as { likeness: { scores: (number | null)[]; mean: number | null } }).likeness;
  assert.equal(likeness.scores.length, adapter!.sampleKeys.length);
  for (const score of likeness.scores) assert.ok(score === null || (score >= -1 && score <= 1));
  // The training's mean reaches the likeness histogram (when any sample held a face).
  const metrics = await renderMetrics();
  const counted = Number(/^portrait_likeness_score_count\{kind="train"\} (\d+)/m.exec(metrics)?.[1] ?? 0);
  assert.equal(counted, likeness.mean === null ? 0 : 1, metrics.split('\n').filter((l) => l.includes('likeness')).join('\n'));

  const pose = await client.upload('/api/pose', [['pose.jpg', await sceneJpeg({ width: 800, height: 600, persons: [{ x: 300, y: 60, w: 180, h: 500 }] })]], { prompt: 'me dancing' }, 'image');
  assert.equal(pose.status, 202, JSON.stringify(pose.body));
  assert.equal(pose.body.extractedSkeleton, true);
  const posed = await client.waitForJob(pose.body.jobId);
  assert.equal(posed.job.status, 'completed', posed.job.error);
  const [generation] = await db.select().from(generations).where(eq(generations.jobId, pose.body.jobId));
  // Noise from the tiny model rarely holds a face: the score is a similarity when it does and null when not.
  assert.ok(generation!.likeness === null || Math.abs(generation!.likeness) <= 1);
  const skeleton = await client.request(pose.body.controlUrl);
  assert.equal(skeleton.headers.get('content-type'), 'image/png');
});
