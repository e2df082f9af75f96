// Five-point face alignment to the 112×112 template SFace (and ArcFace) were trained on: the least-squares
// similarity transform (rotation + uniform scale + translation, Umeyama 1991, in its closed 2-D form), then a
// bilinear warp. Same template and point order as OpenCV's FaceRecognizerSF.alignCrop.
import { warpAffine, type Affine, type RgbImage } from './raster.ts';

export const ALIGNED_SIZE = 112;

/** Right eye, left eye, nose tip, right mouth corner, left mouth corner in the 112×112 crop. */
export const FACE_TEMPLATE: readonly [number, number][] = [
  [38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041],
];

export function similarityTransform(src: readonly [number, number][], dst: readonly [number, number][] = FACE_TEMPLATE): Affine {
  if (src.length !== dst.length || src.length < 2) throw new RangeError('need matching point lists of at least two points');
  const n = src.length;
  const mean = (pts: readonly [number, number][]) => pts.reduce(([sx, sy], [x, y]) => [sx + x / n, sy + y / n], [0, 0]);
  const [msx, msy] = mean(src), [mdx, mdy] = mean(dst);
  let dot = 0, cross = 0, variance = 0;
  for (let i = 0; i < n; i++) {
    const sx = src[i]![0] - msx, sy = src[i]![1] - msy;
    const dx = dst[i]![0] - mdx, dy = dst[i]![1] - mdy;
    dot += sx * dx + sy * dy;
    cross += sx * dy - sy * dx;
    variance += sx * sx + sy * sy;
  }
  if (variance < 1e-12) throw new RangeError('landmarks coincide');
  const c = dot / variance, s = cross / variance;
  return [c, -s, mdx - (c * msx - s * msy), s, c, mdy - (s * msx + c * msy)];
}

export function alignFace(image: RgbImage, landmarks: readonly [number, number][]): RgbImage {
  return warpAffine(image, similarityTransform(landmarks), ALIGNED_SIZE, ALIGNED_SIZE);
}
