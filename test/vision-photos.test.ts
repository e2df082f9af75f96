// Photo coaching, face-centred crops, /pose outcomes and likeness through VisionService on the fixture models
// (red patch = face, green patch = person; see scripts/vision/make-onnx-fixtures.py).
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { VisionService } from '../src/vision/index.ts';
import { coverageSummary, DEFAULT_PHOTO_CHECKS, faceCrop, hammingDistance, perceptualHash, type FaceMeasures } from '../src/vision/photo-checks.ts';
import { fixtureModelsDir, renderScene, sceneJpeg, type Scene } from './helpers/vision.ts';

const vision = new VisionService({ modelsDir: fixtureModelsDir, embedder: 'sface' });
after(() => vision.close());

const portrait = (face: { blue?: number } = {}): Scene => ({
  width: 900, height: 1200, faces: [{ x: 290, y: 300, w: 320, h: 380, ...face }],
});

describe('photo checks', () => {
  test('a good photo passes and yields a 512 px face-centred crop', async () => {
    const result = await vision.checkUpload(await sceneJpeg(portrait()));
    assert.equal(result.faceCheckRun, true);
    assert.equal(result.verdict.code, 'ok', result.verdict.message);
    assert.ok(result.measures!.sharpness > DEFAULT_PHOTO_CHECKS.minSharpness, `sharpness ${result.measures!.sharpness}`);
    const meta = await sharp(result.crop!).metadata();
    assert.deepEqual([meta.width, meta.height, meta.format], [512, 512, 'png']);
    // the crop is centred on the face: its middle pixel is face-red
    const { data, info } = await sharp(result.crop!).raw().toBuffer({ resolveWithObject: true });
    const mid = (Math.floor(info.height * 0.45) * info.width + info.width / 2) * 3;
    assert.ok(data[mid]! > 200 && data[mid + 1]! < 100, 'crop centre is on the face');
    assert.equal(result.embedding?.length, 128);
  });

  test('each bad photo gets its own reason', async () => {
    const cases: [string, Buffer, string][] = [
      ['two faces', await sceneJpeg({ width: 2000, height: 800, faces: [{ x: 150, y: 200, w: 300, h: 360 }, { x: 1550, y: 200, w: 300, h: 360 }] }), 'several_faces'],
      ['no face', await sceneJpeg({ width: 900, height: 900 }), 'no_face'],
      ['cut off', await sceneJpeg({ width: 900, height: 1200, faces: [{ x: 0, y: 300, w: 300, h: 380 }] }), 'face_cut_off'],
      ['far away', await sceneJpeg({ width: 1600, height: 1200, faces: [{ x: 700, y: 500, w: 90, h: 110 }] }), 'face_too_small'],
      ['tiny picture', await sceneJpeg({ width: 480, height: 600, faces: [{ x: 140, y: 150, w: 200, h: 240 }] }), 'face_too_small'],
      ['blurry', await sceneJpeg(portrait(), 4), 'too_blurry'],
      ['backlit', await backlitJpeg(), 'too_dark'],
    ];
    for (const [what, bytes, code] of cases) {
      const r = await vision.checkUpload(bytes);
      assert.equal(r.verdict.code, code, `${what}: ${r.verdict.message}`);
      assert.equal(r.verdict.ok, false);
      assert.equal(r.crop, undefined, `${what}: no crop for a rejected photo`);
      assert.ok(r.verdict.message.length > 10);
    }
    const two = await vision.checkUpload(cases[0]![1]);
    assert.equal(two.verdict.message, '2 faces in this photo — crop it to just you.');
  });

  test('a re-sent photo is "same as photo N" (perceptual hash), a different one is not', async () => {
    const first = await vision.checkUpload(await sceneJpeg(portrait()));
    const known = [{ index: 3, phash: first.phash, embedding: first.embedding }];
    const resent = await sharp(await sceneJpeg(portrait())).resize(700).jpeg({ quality: 70 }).toBuffer();
    const again = await vision.checkUpload(resent, known);
    assert.deepEqual([again.verdict.code, again.verdict.message], ['duplicate', 'Same as photo 3 — send a different one.']);
    const other = await vision.checkUpload(await sceneJpeg({ width: 1200, height: 900, faces: [{ x: 600, y: 150, w: 330, h: 400, blue: 150 }] }), known);
    assert.equal(other.verdict.code, 'ok', other.verdict.message);
  });

  test('pHash: stable under re-encoding and resizing, far for different pictures', () => {
    const a = perceptualHash(renderScene(portrait()));
    const b = perceptualHash(renderScene({ width: 1200, height: 900, persons: [{ x: 100, y: 100, w: 300, h: 700 }] }));
    assert.match(a, /^[0-9a-f]{16}$/);
    assert.ok(hammingDistance(a, b) > 12, `distance ${hammingDistance(a, b)}`);
  });

  test('the crop never upscales and stays inside the picture', () => {
    const face = { x: 800, y: 100, width: 150, height: 180, landmarks: [], score: 1 };
    const crop = faceCrop(1000, 1400, face, { cropSize: 512, cropFactor: 2.2 })!;
    assert.equal(crop.side, 512);
    assert.ok(crop.left + crop.side <= 1000 && crop.left >= 0 && crop.top >= 0);
    const big = faceCrop(3000, 4000, { ...face, x: 1000, y: 1000, width: 600, height: 700 }, { cropSize: 512, cropFactor: 2.2 })!;
    assert.equal(big.side, 1540);
    assert.equal(faceCrop(500, 700, face, { cropSize: 512, cropFactor: 2.2 }), null);
  });

  test('without the face model, uploads are still hashed and the result says the face check was not run', async () => {
    const bare = new VisionService({ modelsDir: mkdtempSync(join(tmpdir(), 'no-models-')), embedder: 'sface' });
    const r = await bare.checkUpload(await sceneJpeg(portrait()));
    assert.equal(r.faceCheckRun, false);
    assert.equal(r.verdict.code, 'not_checked');
    assert.equal(r.verdict.ok, true);
    assert.equal(bare.availability().missing.length, 4);
    assert.deepEqual((await bare.pose(await sceneJpeg(portrait()))).ok, false);
  });
});

/** The portrait with the face in shadow (still red enough for the fixture detector), background as bright as before. */
async function backlitJpeg(): Promise<Buffer> {
  const s = portrait();
  const img = renderScene(s);
  const f = s.faces![0]!;
  for (let y = f.y; y < f.y + f.h; y++) {
    for (let x = f.x; x < f.x + f.w; x++) {
      const o = (y * img.width + x) * 3;
      img.data[o] = Math.round(img.data[o]! * 0.65);
      img.data[o + 1] = Math.round(img.data[o + 1]! * 0.1);
      img.data[o + 2] = Math.round(img.data[o + 2]! * 0.1);
    }
  }
  return sharp(Buffer.from(img.data), { raw: { width: img.width, height: img.height, channels: 3 } }).jpeg({ quality: 95 }).toBuffer();
}

describe('coverage summary', () => {
  const m = (yaw: number, faceSide: number, brightness: number): { measures: FaceMeasures; imageLongSide: number } => ({
    measures: { yaw, faceSide, brightness, sharpness: 100 }, imageLongSide: 1000,
  });

  test('a uniform set is told what to add', () => {
    const s = coverageSummary(Array.from({ length: 6 }, () => m(0, 500, 120)), 10);
    assert.deepEqual(s.suggestions.map((x) => x.code), ['more_photos', 'more_angles', 'wider_shots', 'more_lighting']);
    assert.deepEqual(s.angles, { left: 0, frontal: 6, right: 0 });
  });

  test('a varied set needs nothing more', () => {
    const s = coverageSummary([m(0, 500, 90), m(0.3, 200, 150), m(-0.3, 500, 120), m(0, 200, 100), m(0.2, 450, 140), m(-0.2, 250, 110)], 6);
    assert.deepEqual(s.suggestions, []);
    assert.equal(s.lighting.varied, true);
  });

  test('a turned head is measured from the landmarks', async () => {
    const frontal = await vision.checkUpload(await sceneJpeg(portrait()));
    const turned = await vision.checkUpload(await sceneJpeg(portrait({ blue: 190 })));
    assert.ok(Math.abs(frontal.measures!.yaw) < 0.12, `frontal yaw ${frontal.measures!.yaw}`);
    assert.ok(turned.measures!.yaw > 0.12, `turned yaw ${turned.measures!.yaw}`);
  });
});

describe('/pose and likeness', () => {
  test('one person: skeleton PNG at detect resolution (512 on the short side, sides rounded to 64, as controlnet_aux)', async () => {
    const r = await vision.pose(await sceneJpeg({ width: 800, height: 600, persons: [{ x: 300, y: 60, w: 180, h: 500 }] }));
    assert.equal(r.ok, true);
    if (!r.ok) return;
    assert.equal(r.pose.people.length, 1);
    const meta = await sharp(r.skeleton).metadata();
    assert.deepEqual([meta.width, meta.height], [704, 512]);
  });

  test('a 12 MP photo gives the same skeleton as the same scene at a quarter of the size: limbs do not thin out', async () => {
    const person = (f: number): Scene => ({ width: 756 * f, height: 1008 * f, persons: [{ x: 250 * f, y: 120 * f, w: 260 * f, h: 760 * f }] });
    const skeletons = [];
    for (const f of [1, 4]) {
      const r = await vision.pose(await sceneJpeg(person(f)));
      assert.ok(r.ok, `×${f}`);
      const { data, info } = await sharp(r.skeleton).raw().toBuffer({ resolveWithObject: true });
      assert.deepEqual([info.width, info.height], [512, 704], `×${f}: 3024×4032 and 756×1008 both draw at 512×704`);
      let bright = 0;
      for (let i = 0; i < data.length; i += 3) if (Math.max(data[i]!, data[i + 1]!, data[i + 2]!) > 50) bright++;
      skeletons.push(bright);
    }
    // Before, the large one came back 3024×4032 with 4 px limbs, a fifth of them left once shrunk (vision-draw.test.ts).
    assert.ok(Math.abs(skeletons[1]! - skeletons[0]!) <= 0.05 * skeletons[0]!, `bright pixels ${skeletons.join(' vs ')}`);
  });

  test('given the upload\'s pixels, pose reads them and does not decode the bytes again', async () => {
    const jpeg = await sceneJpeg({ width: 800, height: 600, persons: [{ x: 300, y: 60, w: 180, h: 500 }] });
    const { data, info } = await sharp(jpeg).raw().toBuffer({ resolveWithObject: true });
    const pixels = { width: info.width, height: info.height, data: new Uint8Array(data.buffer, data.byteOffset, data.length) };
    const fromBytes = await vision.pose(jpeg);
    const fromPixels = await vision.pose(Buffer.from('not an image'), {}, pixels); // would throw if it decoded these
    assert.ok(fromBytes.ok && fromPixels.ok);
    assert.deepEqual(fromPixels.pose, fromBytes.pose);
    assert.ok(fromPixels.skeleton.equals(fromBytes.skeleton));
  });

  test('image_resolution resizes the drawing (INTER_LINEAR) after it was drawn at detect resolution', async () => {
    const r = await vision.pose(await sceneJpeg({ width: 800, height: 600, persons: [{ x: 300, y: 60, w: 180, h: 500 }] }), { imageResolution: 768 });
    assert.ok(r.ok);
    const meta = await sharp(r.skeleton).metadata();
    assert.deepEqual([meta.width, meta.height], [1024, 768]);
  });

  test('no person and several people are refused with a clear message (several still get a preview)', async () => {
    const none = await vision.pose(await sceneJpeg({ width: 640, height: 480 }));
    assert.deepEqual(none.ok ? null : [none.code, none.message], ['no_person', 'No person found in this picture — send a photo where one whole person is clearly visible.']);
    const two = await vision.pose(await sceneJpeg({ width: 960, height: 720, persons: [{ x: 80, y: 100, w: 200, h: 560 }, { x: 620, y: 140, w: 180, h: 520 }] }));
    assert.ok(!two.ok && two.code === 'several_people' && two.skeleton && two.details.people === 2);
  });

  test('likeness: same face scores higher than a different one; pictures without a face score null', async () => {
    const reference = await sceneJpeg(portrait());
    const same = await sceneJpeg({ width: 1000, height: 1000, faces: [{ x: 300, y: 250, w: 360, h: 420 }] });
    const different = await sceneJpeg({ width: 1000, height: 1000, faces: [{ x: 300, y: 250, w: 360, h: 420, blue: 10 }] });
    const empty = await sceneJpeg({ width: 600, height: 600 });
    const { scores, mean } = await vision.likeness(reference, [same, different, empty]);
    assert.equal(scores[2], null);
    assert.ok(scores[0]! > 0.95, `same ${scores[0]}`);
    assert.ok(scores[1]! < scores[0]! - 0.02, `different ${scores[1]} vs same ${scores[0]}`);
    assert.equal(mean, (scores[0]! + scores[1]!) / 2);
  });
});
