// The OpenPose conditioning image must be pixel-identical to controlnet_aux's drawing of the same keypoints
// (references computed once with controlnet_aux + OpenCV 4.10 by scripts/vision/make-references.py).
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import sharp from 'sharp';
import { blank, resizeArea, resizeBilinear, type RgbImage } from '../src/vision/raster.ts';
import { controlNetAuxSize, cvRound, drawBodyPose, drawFacePose, drawPose, ellipse2Poly, type BodyPose } from '../src/vision/draw-openpose.ts';
import { poseForDrawing, type PoseResult } from '../src/vision/dwpose.ts';
import { references, visionFixtures } from './helpers/vision.ts';

const sha = (img: RgbImage) => createHash('sha256').update(img.data).digest('hex');

async function loadPng(name: string): Promise<RgbImage> {
  const { data, info } = await sharp(resolve(visionFixtures, 'reference', name)).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return { width: info.width, height: info.height, data: new Uint8Array(data) };
}

function diffCount(a: RgbImage, b: RgbImage): number {
  let n = 0;
  for (let i = 0; i < a.data.length; i += 3) {
    if (a.data[i] !== b.data[i] || a.data[i + 1] !== b.data[i + 1] || a.data[i + 2] !== b.data[i + 2]) n++;
  }
  return n;
}

describe('OpenPose drawing (controlnet_aux draw_bodypose)', () => {
  test('cvRound rounds halves to even like OpenCV', () => {
    assert.deepEqual([0.5, 1.5, 2.5, -0.5, -1.5, 2.4999, 2.5001].map(cvRound), [0, 2, 2, 0, -2, 2, 3]);
  });

  test('ellipse2Poly gives OpenCV\'s polygon for a limb', () => {
    const pts = ellipse2Poly([100, 80], [30, 4], 30, 0, 360, 1);
    // closed polygon: first and last point coincide; axis end points land where cos/sin of 30° put them
    assert.deepEqual(pts[0], pts.at(-1));
    assert.deepEqual(pts[0], [126, 95]);
    assert.ok(pts.length > 60 && pts.length < 361);
  });

  test('the first reference skeletons match controlnet_aux pixel for pixel (PNG)', async () => {
    for (const c of references.drawing.bodies.filter((b) => b.png)) {
      const mine = drawBodyPose(blank(c.width, c.height), toBodies(c.keypoints, c.scores));
      const theirs = await loadPng(c.png!);
      assert.equal(diffCount(mine, theirs), 0, `${c.png}: pixels differ`);
    }
  });

  test('40 random skeletons (missing and off-canvas joints, 1-2 people, 4 canvas sizes) hash identically', () => {
    const mismatched = references.drawing.bodies
      .map((c, i) => ({ i, ok: sha(drawBodyPose(blank(c.width, c.height), toBodies(c.keypoints, c.scores))) === c.sha256 }))
      .filter((r) => !r.ok)
      .map((r) => r.i);
    assert.deepEqual(mismatched, []);
  });

  test('face points draw as controlnet_aux draw_facepose', () => {
    const f = references.drawing.faces;
    const canvas = drawFacePose(blank(f.width, f.height), f.points.map((face) => face.map(([x, y]) => [x!, y!] as [number, number])));
    assert.equal(sha(canvas), f.sha256);
  });
});

describe('/pose at the right scale: a 3024×4032 photo as controlnet_aux DWposeDetector draws it', () => {
  // References from scripts/vision/make-large-pose-reference.py (controlnet_aux's resize_image, draw_bodypose,
  // draw_facepose and its final cv2.resize INTER_LINEAR, OpenCV 4.10), for keypoints placed in a 3024×4032 frame.
  const large = JSON.parse(readFileSync(resolve(visionFixtures, 'reference', 'pose-3024x4032.json'), 'utf8')) as {
    frame: [number, number]; keypoints: number[][][]; scores: number[][];
    images: Record<string, { png: string; width: number; height: number; bright: number }>;
  };
  const pose: PoseResult = {
    width: large.frame[0], height: large.frame[1], boxes: [],
    people: large.keypoints.map((pts, i) => ({ points: pts as [number, number][], scores: large.scores[i]! })),
  };

  test('sizes as controlnet_aux resize_image: short side to the resolution, sides rounded to 64 (halves to even)', () => {
    assert.deepEqual(controlNetAuxSize(3024, 4032, 512), { width: 512, height: 704 });
    assert.deepEqual(controlNetAuxSize(512, 704, 768), { width: 768, height: 1024 }); // 1056 / 64 = 16.5 → 16
    assert.deepEqual(controlNetAuxSize(800, 600, 512), { width: 704, height: 512 });
    assert.deepEqual(controlNetAuxSize(300, 200, 512), { width: 768, height: 512 });
    for (const [res, ref] of Object.entries(large.images)) {
      const at = controlNetAuxSize(...large.frame, 512);
      assert.deepEqual(controlNetAuxSize(at.width, at.height, Number(res)), { width: ref.width, height: ref.height });
    }
  });

  test('drawn at detect resolution it is controlnet_aux\'s picture pixel for pixel; drawn full size and shrunk it loses most of the skeleton', async () => {
    const ref = await loadPng(large.images['512']!.png);
    const at = controlNetAuxSize(...large.frame, 512);
    const ours = drawPose(at.width, at.height, poseForDrawing(pose), { faces: true });
    assert.equal(diffCount(ours, ref), 0);
    assert.equal(bright(ours), large.images['512']!.bright); // 11,203 pixels with a channel above 50
    // What /pose did before: drawn at 3024×4032, then shrunk to the same 512×704. Measured: 2,358 bright pixels
    // (area resampling; 2,407 with Lanczos, 1,859 bilinear) against controlnet_aux's 11,203.
    const shrunk = resizeArea(drawPose(...large.frame, poseForDrawing(pose), { faces: true }), at.width, at.height);
    assert.ok(bright(shrunk) < 0.25 * bright(ref), `shrunk: ${bright(shrunk)} bright pixels against ${bright(ref)}`);
  });

  test('resized to image_resolution 768 it matches cv2.resize INTER_LINEAR: every pixel within 1 level, 99 % identical, same bright count', async () => {
    const ref = await loadPng(large.images['768']!.png);
    const at = controlNetAuxSize(...large.frame, 512);
    const out = controlNetAuxSize(at.width, at.height, 768);
    const ours = resizeBilinear(drawPose(at.width, at.height, poseForDrawing(pose), { faces: true }), out.width, out.height);
    let differing = 0, worst = 0;
    for (let i = 0; i < ours.data.length; i += 3) {
      const d = Math.max(...[0, 1, 2].map((k) => Math.abs(ours.data[i + k]! - ref.data[i + k]!)));
      worst = Math.max(worst, d);
      if (d > 0) differing++;
    }
    // OpenCV interpolates in 11-bit fixed point, resizeBilinear in floats: measured 3,216 of 786,432 pixels (0.4 %)
    // one level apart on limb edges, none further.
    assert.ok(worst <= 1, `pixels up to ${worst} levels apart`);
    assert.ok(differing <= 0.01 * out.width * out.height, `${differing} pixels differ`);
    assert.equal(bright(ours), large.images['768']!.bright); // 25,803
  });
});

/** Pixels with any channel above 50: the skeleton (dimmed limbs are 0.6 × their colour), not the black background. */
function bright(img: RgbImage): number {
  let n = 0;
  for (let i = 0; i < img.data.length; i += 3) if (Math.max(img.data[i]!, img.data[i + 1]!, img.data[i + 2]!) > 50) n++;
  return n;
}

function toBodies(keypoints: number[][][], scores: number[][]): BodyPose[] {
  return keypoints.map((person, p) => person.map(([x, y], j) => (scores[p]![j]! > 0.3 ? ([x!, y!] as [number, number]) : null)));
}

test('resizeArea: the same as summing pixel by pixel into the bin of each centre, at uneven ratios and upscales', () => {
  let state = 11;
  const next = (n: number) => (state = (state * 1103515245 + 12345) % 2147483648) % n;
  for (let trial = 0; trial < 120; trial++) {
    const src = blank(1 + next(200), 1 + next(200));
    for (let i = 0; i < src.data.length; i++) src.data[i] = next(256);
    const [width, height] = [1 + next(70), 1 + next(70)];
    const sums = new Float64Array(width * height * 3), counts = new Float64Array(width * height);
    for (let y = 0; y < src.height; y++) {
      for (let x = 0; x < src.width; x++) {
        const o = Math.min(height - 1, Math.floor(((y + 0.5) * height) / src.height)) * width + Math.min(width - 1, Math.floor(((x + 0.5) * width) / src.width));
        counts[o]!++;
        for (let k = 0; k < 3; k++) sums[o * 3 + k]! += src.data[(y * src.width + x) * 3 + k]!;
      }
    }
    const expected = Uint8Array.from(sums, (sum, i) => Math.round(sum / (counts[Math.floor(i / 3)]! || 1)));
    assert.deepEqual(resizeArea(src, width, height).data, expected, `${src.width}×${src.height} → ${width}×${height}`);
  }
});

test('resizeArea: each output pixel is the rounded mean of the source pixels whose centres fall in it', () => {
  // 5 × 3 source pixels per output pixel (15 × 9 → 3 × 3), filled from a seeded generator.
  const src = blank(15, 9);
  let state = 7;
  for (let i = 0; i < src.data.length; i++) src.data[i] = state = (state * 1103515245 + 12345) % 256;
  const out = resizeArea(src, 3, 3);
  for (let oy = 0; oy < 3; oy++) {
    for (let ox = 0; ox < 3; ox++) {
      for (let k = 0; k < 3; k++) {
        let sum = 0;
        for (let y = oy * 3; y < oy * 3 + 3; y++) for (let x = ox * 5; x < ox * 5 + 5; x++) sum += src.data[(y * 15 + x) * 3 + k]!;
        assert.equal(out.data[(oy * 3 + ox) * 3 + k], Math.round(sum / 15), `pixel ${ox},${oy} channel ${k}`);
      }
    }
  }
});
