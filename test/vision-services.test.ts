// The vision tier wired into the services, with the generated fixture ONNX models standing in for the real ones.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import sharp from 'sharp';
import { createApp, type App } from '../src/app.ts';
import { UserFacingError } from '../src/services/errors.ts';
import { createTestEnv, testLogger, type TestEnv } from './helpers/env.ts';
import { fixtureModelsDir, sceneJpeg, type Scene } from './helpers/vision.ts';

let env: TestEnv;
let app: App;
const portrait = (blue?: number): Scene => ({ width: 900, height: 1200, faces: [{ x: 290, y: 300, w: 320, h: 380, blue }] });
const storedFiles = async () =>
  (await readdir(app.config.storageDir, { recursive: true, withFileTypes: true }).catch(() => [])).filter((e) => e.isFile()).length;

before(async () => {
  env = await createTestEnv({ VISION_MODELS_DIR: fixtureModelsDir });
  app = await createApp(env.config, testLogger);
});
after(async () => {
  await app.close();
  await env.cleanup();
});

test('uploads are face-checked: verdicts, face-centred crops and near-duplicates', async () => {
  const user = await app.services.users.resolve('web', 'vision-photos');
  const good = await app.services.photos.add(user.id, await sceneJpeg(portrait()));
  assert.ok(good.ok && good.faceChecked);
  assert.match(good.photo.phash!, /^[0-9a-f]{16}$/);
  assert.ok(good.photo.embedding && good.photo.embedding.length === 128);
  assert.ok((good.photo.faceMeasures?.faceSide ?? 0) > 300);
  const crop = await sharp(await app.store.get(good.photo.cropKey)).metadata();
  assert.deepEqual([crop.width, crop.height], [512, 512]);

  const files = await storedFiles();
  const noFace = await app.services.photos.add(user.id, await sceneJpeg({ width: 900, height: 900 }));
  assert.ok(!noFace.ok && noFace.code === 'no_face', JSON.stringify(noFace));
  const resent = await sharp(await sceneJpeg(portrait())).resize(700).jpeg({ quality: 70 }).toBuffer();
  const duplicate = await app.services.photos.add(user.id, resent);
  assert.ok(!duplicate.ok && duplicate.code === 'duplicate', JSON.stringify(duplicate));
  assert.match(duplicate.message, /photo 1/);
  assert.equal(await storedFiles(), files, 'refused photos leave no files');
  assert.equal(await app.services.photos.count(user.id), 1);
});

test('/pose refuses a reference with nobody in it before anything is queued or stored', async () => {
  const user = await app.services.users.resolve('web', 'vision-pose');
  const files = await storedFiles();
  await assert.rejects(
    app.services.generation.pose(user.id, await sceneJpeg({ width: 640, height: 480 }), 'dancing'),
    (error) => error instanceof UserFacingError && error.code === 'no_person',
  );
  await assert.rejects(
    app.services.generation.pose(user.id, await sceneJpeg({ width: 960, height: 720, persons: [{ x: 80, y: 100, w: 200, h: 560 }, { x: 620, y: 140, w: 180, h: 520 }] }), 'x'),
    (error) => error instanceof UserFacingError && error.code === 'several_people',
  );
  // One person, but no trained model yet: the request is refused for that reason, and the skeleton is not kept.
  await assert.rejects(
    app.services.generation.pose(user.id, await sceneJpeg({ width: 800, height: 600, persons: [{ x: 300, y: 60, w: 180, h: 500 }] }), 'x'),
    (error) => error instanceof UserFacingError && error.code === 'no_model',
  );
  assert.equal(await storedFiles(), files);
});
