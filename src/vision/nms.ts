// Non-maximum suppression in the two flavours the upstream decoders use, so results match them box for box.

/** x1, y1, x2, y2 */
export type Xyxy = [number, number, number, number];

export interface NmsOptions {
  /** Suppress a box whose IoU with a kept one is above this. */
  iouThreshold: number;
  /** Ignore boxes scoring below this before suppression (OpenCV's NMSBoxes drops score < threshold). */
  scoreThreshold?: number;
  /** Pixel-inclusive areas (w + 1)(h + 1), as YOLOX's numpy nms computes them. */
  plusOne?: boolean;
  topK?: number;
}

/** Returns the indices kept, best first. Ties keep input order (stable sort). */
export function nms(boxes: readonly Xyxy[], scores: readonly number[], options: NmsOptions): number[] {
  const { iouThreshold, scoreThreshold = -Infinity, plusOne = false, topK = Infinity } = options;
  const one = plusOne ? 1 : 0;
  const order = scores
    .map((score, index) => ({ score, index }))
    .filter((s) => s.score >= scoreThreshold)
    .sort((a, b) => b.score - a.score)
    .map((s) => s.index);
  const area = (b: Xyxy) => Math.max(0, b[2] - b[0] + one) * Math.max(0, b[3] - b[1] + one);
  const keep: number[] = [];
  for (const i of order) {
    const a = boxes[i]!;
    const suppressed = keep.some((k) => {
      const b = boxes[k]!;
      const w = Math.max(0, Math.min(a[2], b[2]) - Math.max(a[0], b[0]) + one);
      const h = Math.max(0, Math.min(a[3], b[3]) - Math.max(a[1], b[1]) + one);
      const inter = w * h;
      const union = area(a) + area(b) - inter;
      return union > 0 && inter / union > iouThreshold;
    });
    if (!suppressed) keep.push(i);
    if (keep.length >= topK) break;
  }
  return keep;
}
