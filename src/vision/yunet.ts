// YuNet face detection (face_detection_yunet_2023mar.onnx, MIT, opencv_zoo): a fixed 640×640 BGR input in 0..255,
// twelve outputs (cls/obj/bbox/kps at strides 8, 16, 32). Decoding follows OpenCV's FaceDetectorYN: score =
// sqrt(clamp(cls)·clamp(obj)), centre = (cell + offset)·stride, size = exp(·)·stride, then NMS on integer rects.
import type { InferenceSession } from 'onnxruntime-node';
import { imageTensor, run } from './onnx.ts';
import { letterbox, unletterbox } from './letterbox.ts';
import { nms, type Xyxy } from './nms.ts';
import { toPlanar, type RgbImage } from './raster.ts';

export const YUNET_SIZE = 640;
const STRIDES = [8, 16, 32] as const;
export const YUNET_OUTPUTS = (['cls', 'obj', 'bbox', 'kps'] as const).flatMap((kind) => STRIDES.map((s) => `${kind}_${s}`));

export interface Face {
  /** Top-left corner and size, in source-picture pixels. */
  x: number;
  y: number;
  width: number;
  height: number;
  /** Right eye, left eye, nose tip, right mouth corner, left mouth corner (the person's right/left). */
  landmarks: [number, number][];
  score: number;
}

export interface YunetOptions {
  scoreThreshold: number;
  nmsThreshold: number;
  topK: number;
}

export const DEFAULT_YUNET_OPTIONS: YunetOptions = { scoreThreshold: 0.6, nmsThreshold: 0.3, topK: 5000 };

const clamp01 = (v: number) => Math.min(1, Math.max(0, v));

/** Faces in model-input pixels from the raw outputs of a padW×padH input. */
export function decodeYunet(outputs: Record<string, Float32Array>, padW: number, padH: number, options: YunetOptions = DEFAULT_YUNET_OPTIONS): Face[] {
  const faces: Face[] = [];
  for (const stride of STRIDES) {
    const cols = Math.floor(padW / stride), rows = Math.floor(padH / stride);
    const cls = outputs[`cls_${stride}`]!, obj = outputs[`obj_${stride}`]!;
    const bbox = outputs[`bbox_${stride}`]!, kps = outputs[`kps_${stride}`]!;
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const i = r * cols + c;
        const score = Math.sqrt(clamp01(cls[i]!) * clamp01(obj[i]!));
        if (score < options.scoreThreshold) continue;
        const cx = (c + bbox[i * 4]!) * stride, cy = (r + bbox[i * 4 + 1]!) * stride;
        const w = Math.exp(bbox[i * 4 + 2]!) * stride, h = Math.exp(bbox[i * 4 + 3]!) * stride;
        const landmarks: [number, number][] = [];
        for (let n = 0; n < 5; n++) landmarks.push([(kps[i * 10 + 2 * n]! + c) * stride, (kps[i * 10 + 2 * n + 1]! + r) * stride]);
        faces.push({ x: cx - w / 2, y: cy - h / 2, width: w, height: h, landmarks, score });
      }
    }
  }
  if (faces.length < 2) return faces;
  // OpenCV suppresses on Rect2i(int(x), int(y), int(w), int(h)).
  const rects: Xyxy[] = faces.map((f) => {
    const x = Math.trunc(f.x), y = Math.trunc(f.y);
    return [x, y, x + Math.trunc(f.width), y + Math.trunc(f.height)];
  });
  return nms(rects, faces.map((f) => f.score), { iouThreshold: options.nmsThreshold, scoreThreshold: options.scoreThreshold, topK: options.topK })
    .map((i) => faces[i]!);
}

/** Detects faces in a picture of any size (letterboxed into the fixed 640×640 input), in its own pixels. */
export async function detectFaces(session: InferenceSession, image: RgbImage, options: YunetOptions = DEFAULT_YUNET_OPTIONS): Promise<Face[]> {
  const { image: input, box } = letterbox(image, YUNET_SIZE, 0);
  const inputName = session.inputNames[0] ?? 'input';
  const outputs = await run(session, { [inputName]: imageTensor(toPlanar(input, 'bgr'), YUNET_SIZE, YUNET_SIZE) }, YUNET_OUTPUTS);
  const back = (v: number) => unletterbox(box, v);
  return decodeYunet(outputs, YUNET_SIZE, YUNET_SIZE, options).map((f) => ({
    x: back(f.x), y: back(f.y), width: back(f.width), height: back(f.height),
    landmarks: f.landmarks.map(([x, y]) => [back(x), back(y)] as [number, number]),
    score: f.score,
  }));
}
