// The TypeScript pipelines (pre-process → onnxruntime session → decode) on the fixture models, compared with
// references computed independently by OpenCV (FaceDetectorYN, FaceRecognizerSF, NMSBoxes) and by DWPose's own
// ONNX pipeline on the same fixture models and pictures (scripts/vision/make-references.py).
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { resolve } from 'node:path';
import sharp from 'sharp';
import { loadSession, releaseSessions } from '../src/vision/onnx.ts';
import { detectFaces, decodeYunet } from '../src/vision/yunet.ts';
import { nms } from '../src/vision/nms.ts';
import { letterboxGeometry } from '../src/vision/letterbox.ts';
import { similarityTransform, alignFace } from '../src/vision/align.ts';
import { embedAligned, cosineSimilarity } from '../src/vision/sface.ts';
import { decodeSimcc, extractPose, poseForDrawing, toOpenPose } from '../src/vision/dwpose.ts';
import { drawPose } from '../src/vision/draw-openpose.ts';
import type { RgbImage } from '../src/vision/raster.ts';
import { fixtureModelsDir, references, renderScene, scene, visionFixtures } from './helpers/vision.ts';

const model = (file: string) => loadSession(resolve(fixtureModelsDir, file));
after(releaseSessions);

const close = (actual: number, expected: number, tol: number, what: string) =>
  assert.ok(Math.abs(actual - expected) <= tol, `${what}: ${actual} vs ${expected} (±${tol})`);

describe('decoders against reference values', () => {
  test('NMS keeps what OpenCV NMSBoxes (integer rects) and YOLOX numpy nms (+1 areas) keep', () => {
    for (const c of references.nms.cases) {
      const rects = c.boxes.map(([x1, y1, x2, y2]) => {
        const x = Math.trunc(x1), y = Math.trunc(y1);
        return [x, y, x + Math.trunc(x2 - x1), y + Math.trunc(y2 - y1)] as [number, number, number, number];
      });
      assert.deepEqual(nms(rects, c.scores, { iouThreshold: c.iouThreshold, scoreThreshold: c.scoreThreshold }), c.keepOpenCV);
      assert.deepEqual(nms(c.boxes, c.scores, { iouThreshold: c.iouThreshold, plusOne: true }), c.keepYolox);
    }
  });

  test('letterbox geometry truncates like int(w * r) and keeps the aspect ratio', () => {
    assert.deepEqual(letterboxGeometry(1000, 800, 640), { scale: 0.64, width: 640, height: 512, size: 640 });
    assert.deepEqual(letterboxGeometry(333, 1000, 640), { scale: 0.64, width: 213, height: 640, size: 640 });
    const g = letterboxGeometry(3024, 4032, 640);
    assert.equal(g.height, 640);
    assert.equal(g.width, Math.floor(3024 * (640 / 4032)));
  });

  test('YuNet decoding of hand-made outputs: one anchor, known box and landmarks', () => {
    const outputs: Record<string, Float32Array> = {};
    for (const s of [8, 16, 32]) {
      const n = (640 / s) ** 2;
      outputs[`cls_${s}`] = new Float32Array(n);
      outputs[`obj_${s}`] = new Float32Array(n);
      outputs[`bbox_${s}`] = new Float32Array(n * 4);
      outputs[`kps_${s}`] = new Float32Array(n * 10);
    }
    const i = 3 * 20 + 5; // stride 32, row 3, col 5
    outputs.cls_32![i] = 1.2; // clamped to 1
    outputs.obj_32![i] = 0.81;
    outputs.bbox_32!.set([0.5, 0.25, Math.log(2), Math.log(3)], i * 4);
    outputs.kps_32!.set([0, 0, 1, 0, 0.5, 0.5, 0, 1, 1, 1], i * 10);
    const [face, ...rest] = decodeYunet(outputs, 640, 640);
    assert.equal(rest.length, 0);
    close(face!.score, 0.9, 1e-6, 'score = sqrt(1 × 0.81)');
    assert.deepEqual([face!.x, face!.y, face!.width, face!.height].map((v) => +v.toFixed(4)), [144, 56, 64, 96]);
    assert.deepEqual(face!.landmarks, [[160, 96], [192, 96], [176, 112], [160, 128], [192, 128]]);
  });

  test('SimCC decoding: first argmax / 2, score = smaller maximum, non-positive → -0.5', () => {
    const x = Float32Array.from([0, 0.2, 0.9, 0.9, /* k1 */ -1, -2, -3, -4]);
    const y = Float32Array.from([0.1, 0.7, 0, 0, 0, 0, /* k1 */ 0.5, 0.1, 0, 0, 0, 0]);
    assert.deepEqual(decodeSimcc(x, y, 2).map((p) => ({ ...p, score: +p.score.toFixed(4) })), [
      { x: 1, y: 0.5, score: 0.7 },
      { x: -0.5, y: -0.5, score: -1 },
    ]);
  });

  test('OpenPose conversion: neck from the shoulders, mmpose → openpose order', () => {
    const points = Array.from({ length: 133 }, (_, i) => [i, 1000 + i] as [number, number]);
    const scores = Array.from({ length: 133 }, (_, i) => (i === 6 ? 0.2 : 0.9));
    const op = toOpenPose({ points, scores });
    assert.equal(op.points.length, 134);
    assert.deepEqual(op.points[1], [5.5, 1005.5]); // neck
    assert.equal(op.scores[1], 0); // right shoulder (6) is below 0.3
    assert.deepEqual(op.points[2], [6, 1006]); // right shoulder
    assert.deepEqual(op.points[5], [5, 1005]); // left shoulder stays
    assert.deepEqual(op.points[14], [2, 1002]); // right eye
    assert.deepEqual(op.points[17], [3, 1003]); // left ear
    assert.deepEqual(op.points[18], [17, 1017]); // first foot point follows the body
  });

  test('similarity transform equals the Umeyama reference; aligned pixels match OpenCV alignCrop', () => {
    const img = renderScene(references.alignment.scene);
    for (const c of references.alignment.cases) {
      const m = similarityTransform(c.landmarks);
      const ref = c.matrix.flat();
      m.forEach((v, i) => close(v, ref[i]!, 2e-3 * Math.max(1, Math.abs(ref[i]!)), `matrix[${i}]`));
      const aligned = alignFace(img, c.landmarks);
      let worst = 0;
      for (const [x, y, r, g, b] of c.samples) {
        const o = (y! * 112 + x!) * 3;
        worst = Math.max(worst, Math.abs(aligned.data[o]! - r!), Math.abs(aligned.data[o + 1]! - g!), Math.abs(aligned.data[o + 2]! - b!));
      }
      // OpenCV interpolates in 5-bit fixed point; texture edges can move a value by a few levels
      assert.ok(worst <= 6, `aligned crop differs from OpenCV by up to ${worst}`);
    }
  });
});

describe('fixture models end to end', () => {
  test('YuNet: faces, boxes and landmarks as OpenCV FaceDetectorYN finds them', async () => {
    const session = await model('face_detection_yunet_2023mar.onnx');
    for (const name of ['one-face-640', 'two-faces-640', 'turned-face-640', 'no-face-640']) {
      const faces = await detectFaces(session, renderScene(scene(name)));
      const ref = references.yunet[name]!;
      assert.equal(faces.length, ref.length, `${name}: face count`);
      faces.forEach((f, i) => {
        const r = ref[i]!;
        [f.x, f.y, f.width, f.height, ...f.landmarks.flat()].forEach((v, k) => close(v, r[k]!, 0.05, `${name} face ${i} value ${k}`));
        close(f.score, r[14]!, 1e-3, `${name} score`);
      });
    }
  });

  test('YuNet on a non-square picture maps boxes back through the letterbox', async () => {
    const session = await model('face_detection_yunet_2023mar.onnx');
    const faces = await detectFaces(session, renderScene({ width: 1000, height: 800, faces: [{ x: 600, y: 200, w: 200, h: 240 }] }));
    assert.equal(faces.length, 1);
    const [f] = faces;
    close(f!.x, 600, 2, 'x');
    close(f!.y, 200, 2, 'y');
    close(f!.width, 200, 3, 'width');
    close(f!.height, 240, 3, 'height');
  });

  test('SFace embeddings of the aligned crops agree with OpenCV FaceRecognizerSF.feature', async () => {
    const session = await model('face_recognition_sface_2021dec.onnx');
    const img = renderScene(references.alignment.scene);
    for (const c of references.alignment.cases) {
      const feature = await embedAligned(session, alignFace(img, c.landmarks));
      assert.equal(feature.length, 128);
      assert.ok(cosineSimilarity(feature, c.feature) > 0.999, 'same direction as OpenCV\'s feature');
    }
  });

  test('DWPose: person boxes, 134 OpenPose-ordered keypoints and scores as DWPose\'s own pipeline', async () => {
    const [det, pose] = await Promise.all([model('yolox_l.onnx'), model('dw-ll_ucoco_384.onnx')]);
    for (const name of ['person-800x600', 'two-persons-960x720', 'no-person-640x480']) {
      const ref = references.dwpose[name]!;
      const result = await extractPose(det, pose, renderScene(scene(name)));
      assert.equal(result.boxes.length, ref.boxes.length, `${name}: people`);
      result.boxes.forEach((b, i) => b.box.forEach((v, k) => close(v, ref.boxes[i]![k]!, 1.5, `${name} box ${i}[${k}]`)));
      result.people.forEach((p, i) => {
        assert.equal(p.points.length, 134);
        p.points.forEach(([x, y], k) => {
          close(x, ref.keypoints![i]![k]![0]!, 2, `${name} person ${i} kp ${k} x`);
          close(y, ref.keypoints![i]![k]![1]!, 2, `${name} person ${i} kp ${k} y`);
          assert.equal(p.scores[k]! > 0.3, ref.scores![i]![k]! > 0.3, `${name} person ${i} kp ${k} visibility`);
        });
      });
    }
  });

  test('DWPose skeleton drawn from the pipeline matches controlnet_aux\'s drawing of its own keypoints', async () => {
    const [det, pose] = await Promise.all([model('yolox_l.onnx'), model('dw-ll_ucoco_384.onnx')]);
    const name = 'person-800x600';
    const ref = references.dwpose[name]!;
    const s = scene(name);
    // Same keypoints → identical pixels.
    const fromRef = drawPose(s.width, s.height, poseForDrawing({
      width: s.width, height: s.height, boxes: [],
      people: ref.keypoints!.map((pts, i) => ({ points: pts as [number, number][], scores: ref.scores![i]! })),
    }), { faces: true });
    const theirs = await loadPng(`dwpose-${name}.png`);
    assert.equal(differingPixels(fromRef, theirs), 0);
    // Our own keypoints (sub-pixel different pre-processing) → nearly the same picture.
    const ours = drawPose(s.width, s.height, poseForDrawing(await extractPose(det, pose, renderScene(s))), { faces: true });
    assert.ok(differingPixels(ours, theirs) < 0.01 * s.width * s.height);
  });
});

async function loadPng(name: string): Promise<RgbImage> {
  const { data, info } = await sharp(resolve(visionFixtures, 'reference', name)).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return { width: info.width, height: info.height, data: new Uint8Array(data) };
}

function differingPixels(a: RgbImage, b: RgbImage): number {
  let n = 0;
  for (let i = 0; i < a.data.length; i += 3) if (a.data[i] !== b.data[i] || a.data[i + 1] !== b.data[i + 1] || a.data[i + 2] !== b.data[i + 2]) n++;
  return n;
}
