// The OpenPose conditioning image must be pixel-identical to controlnet_aux's drawing of the same keypoints
// (references computed once with controlnet_aux + OpenCV 4.10 by scripts/vision/make-references.py).
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { resolve } from 'node:path';
import sharp from 'sharp';
import { blank, type RgbImage } from '../src/vision/raster.ts';
import { cvRound, drawBodyPose, drawFacePose, ellipse2Poly, type BodyPose } from '../src/vision/draw-openpose.ts';
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

function toBodies(keypoints: number[][][], scores: number[][]): BodyPose[] {
  return keypoints.map((person, p) => person.map(([x, y], j) => (scores[p]![j]! > 0.3 ? ([x!, y!] as [number, number]) : null)));
}
