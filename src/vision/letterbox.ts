// Fitting a picture into a model's fixed square input without distorting it: scale so the whole picture fits,
// paste it at the top-left corner, fill the rest. YOLOX (DWPose) fills with grey 114, YuNet with black; both
// truncate the scaled size like `int(w * r)` upstream. Boxes map back by dividing by the scale.
import { blank, resizeBilinear, type RgbImage } from './raster.ts';

export interface Letterbox {
  /** Model pixels per source pixel. */
  scale: number;
  /** Size of the resized picture inside the square. */
  width: number;
  height: number;
  size: number;
}

export function letterboxGeometry(srcWidth: number, srcHeight: number, size: number): Letterbox {
  if (srcWidth < 1 || srcHeight < 1) throw new RangeError('image has no pixels');
  const scale = Math.min(size / srcHeight, size / srcWidth);
  return { scale, width: Math.max(1, Math.floor(srcWidth * scale)), height: Math.max(1, Math.floor(srcHeight * scale)), size };
}

export function letterbox(src: RgbImage, size: number, fill: number): { image: RgbImage; box: Letterbox } {
  const box = letterboxGeometry(src.width, src.height, size);
  const resized = box.width === src.width && box.height === src.height ? src : resizeBilinear(src, box.width, box.height);
  const image = blank(size, size, fill);
  for (let y = 0; y < box.height; y++) {
    image.data.set(resized.data.subarray(y * box.width * 3, (y + 1) * box.width * 3), y * size * 3);
  }
  return { image, box };
}

/** Model coordinates back to source-picture coordinates. */
export const unletterbox = (box: Letterbox, v: number) => v / box.scale;
