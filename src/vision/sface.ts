// Face embeddings for likeness. Default SFace (face_recognition_sface_2021dec.onnx, Apache-2.0): input `data`
// [1,3,112,112] RGB 0..255 of an aligned crop (the graph normalises), output `fc1` [1,128]. ArcFace (InsightFace
// w600k_r50, non-commercial weights) is the opt-in alternative: [1,3,112,112] RGB (v - 127.5) / 127.5.
import type { InferenceSession } from 'onnxruntime-node';
import { alignFace, ALIGNED_SIZE } from './align.ts';
import { imageTensor, run } from './onnx.ts';
import { toPlanar, type RgbImage } from './raster.ts';
import type { Face } from './yunet.ts';

export type EmbedderKind = 'sface' | 'arcface';

const NORMALISATION: Record<EmbedderKind, { mean: number[]; std: number[] }> = {
  sface: { mean: [0, 0, 0], std: [1, 1, 1] },
  arcface: { mean: [127.5, 127.5, 127.5], std: [127.5, 127.5, 127.5] },
};

/** Embedding of an already aligned 112×112 crop. */
export async function embedAligned(session: InferenceSession, aligned: RgbImage, kind: EmbedderKind = 'sface'): Promise<Float32Array> {
  if (aligned.width !== ALIGNED_SIZE || aligned.height !== ALIGNED_SIZE) throw new RangeError('embedder input must be an aligned 112×112 crop');
  const { mean, std } = NORMALISATION[kind];
  const input = session.inputNames[0] ?? 'data';
  const output = session.outputNames[0] ?? 'fc1';
  const result = await run(session, { [input]: imageTensor(toPlanar(aligned, 'rgb', mean, std), ALIGNED_SIZE, ALIGNED_SIZE) }, [output]);
  return Float32Array.from(result[output]!);
}

export async function embedFace(session: InferenceSession, image: RgbImage, face: Face, kind: EmbedderKind = 'sface'): Promise<Float32Array> {
  return embedAligned(session, alignFace(image, face.landmarks), kind);
}

/** Cosine similarity in [-1, 1]; OpenCV's SFace match threshold for "same person" is 0.363. */
export function cosineSimilarity(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length || a.length === 0) throw new RangeError('embeddings differ in length');
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i]! * b[i]!;
    na += a[i]! * a[i]!;
    nb += b[i]! * b[i]!;
  }
  return na === 0 || nb === 0 ? 0 : dot / Math.sqrt(na * nb);
}
