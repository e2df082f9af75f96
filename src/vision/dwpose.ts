// DWPose whole-body pose, as the ONNX annotator (IDEA-Research/DWPose, used by ControlNet and controlnet_aux)
// runs it: YOLOX-L finds people (640×640 letterbox, grey 114, raw 0..255), then for each box RTMPose
// dw-ll_ucoco_384 reads a 288×384 affine crop (box × 1.25, aspect fixed, ImageNet mean/std) and two SimCC
// vectors per keypoint give x and y (argmax / 2). The 133 COCO-WholeBody points become OpenPose-18 body points
// (neck = mid-shoulders) + feet + 68 face + 2×21 hand points. Both models get RGB, as the annotators feed them.
import type { InferenceSession } from 'onnxruntime-node';
import { imageTensor, run } from './onnx.ts';
import { letterbox } from './letterbox.ts';
import { nms, type Xyxy } from './nms.ts';
import { toPlanar, warpAffine, type Affine, type RgbImage } from './raster.ts';
import type { BodyPose, PoseDrawing } from './draw-openpose.ts';

export const YOLOX_SIZE = 640;
export const POSE_INPUT = { width: 288, height: 384 } as const;
const SIMCC_SPLIT = 2;
const POSE_MEAN = [123.675, 116.28, 103.53];
const POSE_STD = [58.395, 57.12, 57.375];
/** A keypoint is drawn when its score is above this (the annotators' threshold). */
export const VISIBLE = 0.3;

export interface PersonBox { box: Xyxy; score: number }

/** YOLOX raw output [N, 85] → person boxes in source pixels: score = obj·cls0 > 0.1, NMS 0.45 (+1 areas), > 0.3. */
export function decodeYolox(output: Float32Array, ratio: number, size = YOLOX_SIZE): PersonBox[] {
  const boxes: Xyxy[] = [];
  const scores: number[] = [];
  let i = 0;
  for (const stride of [8, 16, 32]) {
    const n = Math.floor(size / stride);
    for (let row = 0; row < n; row++) {
      for (let col = 0; col < n; col++, i++) {
        const o = i * 85;
        const score = output[o + 4]! * output[o + 5]!;
        if (!(score > 0.1)) continue;
        const cx = (output[o]! + col) * stride, cy = (output[o + 1]! + row) * stride;
        const w = Math.exp(output[o + 2]!) * stride, h = Math.exp(output[o + 3]!) * stride;
        boxes.push([(cx - w / 2) / ratio, (cy - h / 2) / ratio, (cx + w / 2) / ratio, (cy + h / 2) / ratio]);
        scores.push(score);
      }
    }
  }
  return nms(boxes, scores, { iouThreshold: 0.45, plusOne: true })
    .filter((k) => scores[k]! > 0.3)
    .map((k) => ({ box: boxes[k]!, score: scores[k]! }));
}

export async function detectPersons(session: InferenceSession, image: RgbImage): Promise<PersonBox[]> {
  const { image: input, box } = letterbox(image, YOLOX_SIZE, 114);
  const inputName = session.inputNames[0] ?? 'images';
  const outputName = session.outputNames[0] ?? 'output';
  const out = await run(session, { [inputName]: imageTensor(toPlanar(input, 'rgb'), YOLOX_SIZE, YOLOX_SIZE) }, [outputName]);
  return decodeYolox(out[outputName]!, box.scale);
}

/** Centre and (aspect-fixed, 1.25-padded) size of the crop a person box becomes. */
export function poseCrop(box: Xyxy): { center: [number, number]; scale: [number, number] } {
  const center: [number, number] = [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2];
  let w = (box[2] - box[0]) * 1.25, h = (box[3] - box[1]) * 1.25;
  const aspect = POSE_INPUT.width / POSE_INPUT.height;
  if (w > h * aspect) h = w / aspect;
  else w = h * aspect;
  return { center, scale: [w, h] };
}

/** Source → crop: the crop's width spans scale[0] source pixels, centred on `center` (no rotation). */
export function cropAffine(center: [number, number], scale: [number, number]): Affine {
  const k = POSE_INPUT.width / scale[0];
  return [k, 0, POSE_INPUT.width / 2 - k * center[0], 0, k, POSE_INPUT.height / 2 - k * center[1]];
}

export interface SimccResult { x: number; y: number; score: number }

/** Per keypoint: first argmax of each SimCC vector / split ratio; score = the smaller maximum; ≤ 0 → (-1,-1)/split. */
export function decodeSimcc(simccX: Float32Array, simccY: Float32Array, keypoints: number, split = SIMCC_SPLIT): SimccResult[] {
  const bx = simccX.length / keypoints, by = simccY.length / keypoints;
  const argmax = (v: Float32Array, from: number, n: number): [number, number] => {
    let best = 0, max = v[from]!;
    for (let i = 1; i < n; i++) if (v[from + i]! > max) { max = v[from + i]!; best = i; }
    return [best, max];
  };
  const out: SimccResult[] = [];
  for (let k = 0; k < keypoints; k++) {
    const [ix, mx] = argmax(simccX, k * bx, bx);
    const [iy, my] = argmax(simccY, k * by, by);
    const score = Math.min(mx, my);
    out.push(score > 0 ? { x: ix / split, y: iy / split, score } : { x: -1 / split, y: -1 / split, score });
  }
  return out;
}

/** 133 whole-body keypoints of one person, in source pixels. */
export interface WholeBody { points: [number, number][]; scores: number[] }

export async function estimatePose(session: InferenceSession, image: RgbImage, person: PersonBox): Promise<WholeBody> {
  const { center, scale } = poseCrop(person.box);
  const crop = warpAffine(image, cropAffine(center, scale), POSE_INPUT.width, POSE_INPUT.height, 0);
  const input = session.inputNames[0] ?? 'input';
  const out = await run(session, { [input]: imageTensor(toPlanar(crop, 'rgb', POSE_MEAN, POSE_STD), POSE_INPUT.height, POSE_INPUT.width) }, ['simcc_x', 'simcc_y']);
  const decoded = decodeSimcc(out.simcc_x!, out.simcc_y!, 133);
  return {
    points: decoded.map((p) => [
      (p.x / POSE_INPUT.width) * scale[0] + center[0] - scale[0] / 2,
      (p.y / POSE_INPUT.height) * scale[1] + center[1] - scale[1] / 2,
    ]),
    scores: decoded.map((p) => p.score),
  };
}

/** COCO-WholeBody (133) → OpenPose order (134): neck inserted at 17, body points reordered. */
export function toOpenPose(body: WholeBody): WholeBody {
  const [l, r] = [5, 6];
  const neck: [number, number] = [(body.points[l]![0] + body.points[r]![0]) / 2, (body.points[l]![1] + body.points[r]![1]) / 2];
  const neckScore = body.scores[l]! > VISIBLE && body.scores[r]! > VISIBLE ? 1 : 0;
  const points = [...body.points.slice(0, 17), neck, ...body.points.slice(17)];
  const scores = [...body.scores.slice(0, 17), neckScore, ...body.scores.slice(17)];
  const from = [17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3];
  const to = [1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17];
  const srcPoints = points.slice(), srcScores = scores.slice();
  to.forEach((t, i) => {
    points[t] = srcPoints[from[i]!]!;
    scores[t] = srcScores[from[i]!]!;
  });
  return { points, scores };
}

/** Slices of the 134-point OpenPose-ordered list. */
export const OPENPOSE_PARTS = { body: [0, 18], feet: [18, 24], face: [24, 92], leftHand: [92, 113], rightHand: [113, 134] } as const;

export interface PoseResult {
  width: number;
  height: number;
  people: WholeBody[];
  boxes: PersonBox[];
}

export async function extractPose(detector: InferenceSession, estimator: InferenceSession, image: RgbImage): Promise<PoseResult> {
  const boxes = await detectPersons(detector, image);
  const people: WholeBody[] = [];
  for (const box of boxes) people.push(toOpenPose(await estimatePose(estimator, image, box)));
  return { width: image.width, height: image.height, people, boxes };
}

/** Normalised, visibility-filtered keypoints for drawing (what controlnet_aux's DWposeDetector passes to draw_pose). */
export function poseForDrawing(result: PoseResult): PoseDrawing {
  const norm = (p: WholeBody, i: number): [number, number] | null =>
    p.scores[i]! > VISIBLE ? [p.points[i]![0] / result.width, p.points[i]![1] / result.height] : null;
  const range = ([a, b]: readonly [number, number], p: WholeBody) => Array.from({ length: b - a }, (_, k) => norm(p, a + k));
  return {
    bodies: result.people.map((p) => range(OPENPOSE_PARTS.body, p) as BodyPose),
    faces: result.people.map((p) => range(OPENPOSE_PARTS.face, p)),
  };
}
