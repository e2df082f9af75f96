// Per-photo checks for /train uploads and the face-centred training crop. Every verdict has a stable `code` (bots
// translate it), an English `message` and the numbers it was built from in `details`.
import sharp from 'sharp';
import { cropRect, resizeArea, resizeBilinear, toGray, type RgbImage } from './raster.ts';
import type { Face } from './yunet.ts';

export interface PhotoCheckOptions {
  /** Training resolution: the square crop is resized down to this, never up. */
  cropSize: number;
  /** Crop side as a multiple of the face box's longer side (head, hair and a little shoulder). */
  cropFactor: number;
  /** Smallest accepted face box side in source pixels. */
  minFaceSide: number;
  /**
   * Variance of the Laplacian over the variance of the face itself (both on the face resampled to 128 px) below which
   * the photo is too blurry. Divided by the contrast so that a low-contrast face is not called blurry.
   */
  minSharpness: number;
  /** Mean face luma (0..255) bounds. */
  minBrightness: number;
  maxBrightness: number;
}

export const DEFAULT_PHOTO_CHECKS: PhotoCheckOptions = {
  cropSize: 512,
  cropFactor: 2.2,
  // Thresholds re-checked on the real YuNet and real photos (test/vision-real.test.ts records the measurements):
  // sharpness 0.06 passes every portrait blurred by up to 1 px (Gaussian σ at training scale) and refuses every one
  // blurred by 2 px; brightness 60..210 passes ±1 stop and refuses ±3 stops on all three portraits.
  minFaceSide: 160,
  minSharpness: 0.06,
  minBrightness: 60,
  maxBrightness: 210,
};

export type PhotoVerdictCode =
  | 'ok'
  | 'no_face'
  | 'several_faces'
  | 'face_cut_off'
  | 'face_too_small'
  | 'too_blurry'
  | 'too_dark'
  | 'too_bright';

export interface CropBox { left: number; top: number; side: number }

export interface FaceMeasures {
  sharpness: number;
  brightness: number;
  /** Head turn from the landmarks: nose offset from the eyes' midpoint over the eye distance (− = to their right). */
  yaw: number;
  faceSide: number;
}

export interface PhotoVerdict {
  ok: boolean;
  code: PhotoVerdictCode;
  message: string;
  details: Record<string, number>;
  face?: Face;
  measures?: FaceMeasures;
  crop?: CropBox;
}

const verdict = (code: PhotoVerdictCode, message: string, details: Record<string, number> = {}, extra: Partial<PhotoVerdict> = {}): PhotoVerdict => ({
  ok: code === 'ok', code, message, details, ...extra,
});

/** Variance of the 4-neighbour Laplacian over a grey image (OpenCV's cv2.Laplacian(ksize=1).var()). */
export function laplacianVariance(gray: Float32Array, width: number, height: number): number {
  let sum = 0, sumSq = 0, n = 0;
  for (let y = 1; y < height - 1; y++) {
    for (let x = 1; x < width - 1; x++) {
      const i = y * width + x;
      const v = gray[i - 1]! + gray[i + 1]! + gray[i - width]! + gray[i + width]! - 4 * gray[i]!;
      sum += v;
      sumSq += v * v;
      n++;
    }
  }
  return n === 0 ? 0 : sumSq / n - (sum / n) ** 2;
}

function faceRegion(image: RgbImage, face: Face): RgbImage {
  const left = Math.max(0, Math.floor(face.x)), top = Math.max(0, Math.floor(face.y));
  const right = Math.min(image.width, Math.ceil(face.x + face.width)), bottom = Math.min(image.height, Math.ceil(face.y + face.height));
  return cropRect(image, left, top, Math.max(1, right - left), Math.max(1, bottom - top));
}

export function measureFace(image: RgbImage, face: Face): FaceMeasures {
  // Resampled to a fixed size so the threshold means the same for a 300 px and a 3000 px face.
  const region = resizeBilinear(faceRegion(image, face), 128, 128);
  const gray = toGray(region);
  const brightness = gray.reduce((a, b) => a + b, 0) / gray.length;
  const contrast = gray.reduce((a, v) => a + (v - brightness) ** 2, 0) / gray.length;
  const [re, le, nose] = face.landmarks;
  const eyeDistance = Math.hypot(le![0] - re![0], le![1] - re![1]) || 1;
  return {
    // Real faces have a grey variance of 1,100..3,800; the floor (a standard deviation of 10 levels) keeps a nearly
    // featureless face, whose only detail is noise, from reading as sharp.
    sharpness: laplacianVariance(gray, 128, 128) / Math.max(contrast, 100),
    brightness,
    yaw: (nose![0] - (re![0] + le![0]) / 2) / eyeDistance,
    faceSide: Math.max(face.width, face.height),
  };
}

/** The square crop around the face: cropFactor × face, at least cropSize, moved (not shrunk) to stay inside. */
export function faceCrop(imageWidth: number, imageHeight: number, face: Face, options: Pick<PhotoCheckOptions, 'cropSize' | 'cropFactor'>): CropBox | null {
  const side = Math.round(Math.max(options.cropSize, Math.max(face.width, face.height) * options.cropFactor));
  const fits = Math.min(side, imageWidth, imageHeight);
  if (fits < options.cropSize) return null;
  const cx = face.x + face.width / 2, cy = face.y + face.height / 2;
  const clampTo = (v: number, max: number) => Math.min(Math.max(0, v), max);
  // A little more room above the face than below: hair matters more than the chest.
  return { side: fits, left: Math.round(clampTo(cx - fits / 2, imageWidth - fits)), top: Math.round(clampTo(cy - fits * 0.45, imageHeight - fits)) };
}

/** Checks one photo given the faces found in it. */
export function checkPhoto(image: RgbImage, faces: readonly Face[], options: PhotoCheckOptions = DEFAULT_PHOTO_CHECKS): PhotoVerdict {
  if (faces.length === 0) return verdict('no_face', 'No face found — send a photo where your face is clearly visible.');
  if (faces.length > 1) return verdict('several_faces', `${faces.length} faces in this photo — crop it to just you.`, { faces: faces.length });
  const face = faces[0]!;
  const margin = 0.01 * Math.max(face.width, face.height);
  // YuNet snaps the box of a truncated face to the frame edge, but when a quarter of the face is gone the box can
  // end a few pixels inside it: the eyes and mouth corners then sit much closer to the edge than on a whole face
  // (about 0.6 eye distances from the box side on a frontal face; 0.12 with a quarter cut off, in the real photos).
  const [re, le] = face.landmarks;
  const landmarkMargin = 0.25 * Math.hypot(le![0] - re![0], le![1] - re![1]);
  const outside = face.x < margin || face.y < margin || face.x + face.width > image.width - margin || face.y + face.height > image.height - margin ||
    face.landmarks.some(([x, y]) => x < landmarkMargin || y < landmarkMargin || x >= image.width - landmarkMargin || y >= image.height - landmarkMargin);
  if (outside) return verdict('face_cut_off', 'Your face is cut off at the edge of the photo — send one with your whole face in the frame.', {}, { face });
  const measures = measureFace(image, face);
  const side = Math.round(measures.faceSide);
  if (side < options.minFaceSide) {
    return verdict('face_too_small', `Your face is too small here (${side} px; at least ${options.minFaceSide} px needed) — come closer or send a higher-resolution photo.`,
      { faceSide: side, minFaceSide: options.minFaceSide }, { face, measures });
  }
  const crop = faceCrop(image.width, image.height, face, options);
  if (!crop) {
    return verdict('face_too_small', `This photo is too small for a ${options.cropSize} px portrait around your face — send the original, full-resolution photo.`,
      { cropSize: options.cropSize, width: image.width, height: image.height }, { face, measures });
  }
  const extra = { face, measures, crop };
  if (measures.brightness < options.minBrightness) {
    return verdict('too_dark', 'Your face is too dark — take it facing a window or a lamp.', { brightness: round1(measures.brightness), minBrightness: options.minBrightness }, extra);
  }
  if (measures.brightness > options.maxBrightness) {
    return verdict('too_bright', 'Your face is overexposed (washed out) — avoid direct sun or flash.', { brightness: round1(measures.brightness), maxBrightness: options.maxBrightness }, extra);
  }
  // After exposure: a dark face has little contrast and would otherwise read as blurry.
  if (measures.sharpness < options.minSharpness) {
    return verdict('too_blurry', 'Too blurry — hold the camera still, focus on your face, and try again.', { sharpness: round1(measures.sharpness), minSharpness: options.minSharpness }, extra);
  }
  return verdict('ok', 'Good photo.', { faceSide: side }, extra);
}

const round1 = (v: number) => Math.round(v * 10) / 10;

/** The training crop: the face-centred square, resized down to cropSize (the original stays untouched). */
export async function trainingCropFromBox(original: Buffer, crop: CropBox, size: number): Promise<Buffer> {
  if (crop.side < size) throw new RangeError(`refusing to upscale a ${crop.side} px crop to ${size} px`);
  return sharp(original).rotate()
    .extract({ left: crop.left, top: crop.top, width: crop.side, height: crop.side })
    .resize(size, size, { kernel: 'lanczos3' })
    .png()
    .toBuffer();
}

// ---- near-duplicates -------------------------------------------------------------------------------------------

/** 64-bit DCT perceptual hash (pHash) of the whole picture, as 16 hex digits. */
export function perceptualHash(image: RgbImage): string {
  const N = 32;
  const gray = toGray(image.width > N && image.height > N ? resizeArea(image, N, N) : resizeBilinear(image, N, N));
  const cos = Array.from({ length: 8 }, (_, u) => Array.from({ length: N }, (_, x) => Math.cos(((2 * x + 1) * u * Math.PI) / (2 * N))));
  const coeffs: number[] = [];
  for (let u = 0; u < 8; u++) {
    for (let v = 0; v < 8; v++) {
      let s = 0;
      for (let y = 0; y < N; y++) for (let x = 0; x < N; x++) s += gray[y * N + x]! * cos[u]![y]! * cos[v]![x]!;
      coeffs.push(s);
    }
  }
  const ac = coeffs.slice(1); // the DC term says only how bright the picture is
  const median = [...ac].sort((a, b) => a - b)[Math.floor(ac.length / 2)]!;
  let bits = 0n;
  for (const c of coeffs) bits = (bits << 1n) | (c > median ? 1n : 0n);
  return bits.toString(16).padStart(16, '0');
}

export function hammingDistance(a: string, b: string): number {
  let x = BigInt(`0x${a}`) ^ BigInt(`0x${b}`), n = 0;
  while (x) { n += Number(x & 1n); x >>= 1n; }
  return n;
}

export interface KnownPhoto {
  /** 1-based position in the person's set, as they see it. */
  index: number;
  phash: string;
  embedding?: ArrayLike<number>;
}

export const DUPLICATE_PHASH_DISTANCE = 6;
export const DUPLICATE_EMBEDDING_SIMILARITY = 0.97;

/** The earlier photo this one nearly repeats (same shot, re-sent or re-encoded), if any. */
export function findNearDuplicate(phash: string, embedding: ArrayLike<number> | undefined, known: readonly KnownPhoto[], cosine: (a: ArrayLike<number>, b: ArrayLike<number>) => number): KnownPhoto | undefined {
  return known.find((k) => hammingDistance(phash, k.phash) <= DUPLICATE_PHASH_DISTANCE ||
    (embedding !== undefined && k.embedding !== undefined && cosine(embedding, k.embedding) >= DUPLICATE_EMBEDDING_SIMILARITY && hammingDistance(phash, k.phash) <= 16));
}

export const duplicateVerdict = (of: KnownPhoto) => ({
  code: 'duplicate' as const,
  message: `Same as photo ${of.index} — send a different one.`,
  details: { sameAs: of.index },
});

// ---- coverage of the set ---------------------------------------------------------------------------------------

export interface CoverageSummary {
  photos: number;
  angles: { left: number; frontal: number; right: number };
  framing: { closeUp: number; wider: number };
  lighting: { spread: number; varied: boolean };
  /** What to add before training, most useful first (empty when the set is varied enough). */
  suggestions: { code: string; message: string }[];
  /** What could not be measured from the photos. */
  notMeasured: string[];
}

const YAW_TURNED = 0.12;

/** A face at least this share of the picture's longer side is a close-up (the 2.2× training crop itself is 0.45). */
export const CLOSE_UP_SHARE = 0.4;

export function coverageSummary(items: readonly { measures: FaceMeasures; imageLongSide: number }[], minPhotos: number): CoverageSummary {
  const angles = { left: 0, frontal: 0, right: 0 };
  const framing = { closeUp: 0, wider: 0 };
  for (const { measures, imageLongSide } of items) {
    if (measures.yaw <= -YAW_TURNED) angles.right++;
    else if (measures.yaw >= YAW_TURNED) angles.left++;
    else angles.frontal++;
    // Against the longer side: a full-length portrait photo is narrow, and its face is large next to the width.
    if (measures.faceSide >= CLOSE_UP_SHARE * imageLongSide) framing.closeUp++;
    else framing.wider++;
  }
  const brightness = items.map((i) => i.measures.brightness);
  const spread = brightness.length ? Math.max(...brightness) - Math.min(...brightness) : 0;
  const suggestions: { code: string; message: string }[] = [];
  if (items.length < minPhotos) suggestions.push({ code: 'more_photos', message: `Add ${minPhotos - items.length} more photo(s): training needs at least ${minPhotos}.` });
  if (items.length >= 3) {
    if (angles.left + angles.right === 0) suggestions.push({ code: 'more_angles', message: 'All photos face the camera — add a few with your head turned left and right.' });
    else if (angles.left === 0 || angles.right === 0) suggestions.push({ code: 'other_side', message: `Add a photo turned to your ${angles.left === 0 ? 'left' : 'right'} too.` });
    if (framing.wider === 0) suggestions.push({ code: 'wider_shots', message: 'Add a couple of photos taken from further away (head and shoulders).' });
    if (framing.closeUp === 0) suggestions.push({ code: 'close_ups', message: 'Add a couple of close-ups of your face.' });
    if (spread < 25) suggestions.push({ code: 'more_lighting', message: 'All photos have similar light — add some indoors/outdoors or at a different time of day.' });
  }
  return {
    photos: items.length,
    angles,
    framing,
    lighting: { spread: Math.round(spread), varied: spread >= 25 },
    suggestions,
    notMeasured: ['expressions'],
  };
}
