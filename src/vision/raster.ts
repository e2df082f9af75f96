// Plain RGB pixel buffers and the two resamplers the vision models need. Written here (not sharp) so that the
// geometry matches OpenCV's INTER_LINEAR conventions the upstream pre-processing uses: pixel centres at +0.5,
// no antialiasing, borders filled with a constant.
import sharp, { type Sharp } from 'sharp';

/** 8-bit RGB, row-major, 3 bytes per pixel. */
export interface RgbImage {
  width: number;
  height: number;
  data: Uint8Array;
}

/** Decodes any image sharp reads into upright 8-bit sRGB (EXIF orientation applied, alpha dropped). */
export async function decodeRgb(bytes: Buffer): Promise<RgbImage> {
  const { data, info } = await sharp(bytes).rotate().toColorspace('srgb').removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return { width: info.width, height: info.height, data: new Uint8Array(data.buffer, data.byteOffset, data.length) };
}

/** A sharp pipeline that reads these pixels (no copy). */
export function sharpFromRgb(image: RgbImage): Sharp {
  return sharp(Buffer.from(image.data.buffer, image.data.byteOffset, image.data.length), {
    raw: { width: image.width, height: image.height, channels: 3 },
  });
}

export async function encodePng(image: RgbImage): Promise<Buffer> {
  return sharpFromRgb(image).png().toBuffer();
}

export function blank(width: number, height: number, fill = 0): RgbImage {
  return { width, height, data: new Uint8Array(width * height * 3).fill(fill) };
}

/** Resize with bilinear sampling at pixel centres (cv2.resize INTER_LINEAR geometry, float arithmetic). */
export function resizeBilinear(src: RgbImage, width: number, height: number): RgbImage {
  const out = blank(width, height);
  const sx = src.width / width;
  const sy = src.height / height;
  for (let y = 0; y < height; y++) {
    const fy = Math.max(0, (y + 0.5) * sy - 0.5);
    const y0 = Math.min(Math.floor(fy), src.height - 1);
    const y1 = Math.min(y0 + 1, src.height - 1);
    const wy = fy - y0;
    for (let x = 0; x < width; x++) {
      const fx = Math.max(0, (x + 0.5) * sx - 0.5);
      const x0 = Math.min(Math.floor(fx), src.width - 1);
      const x1 = Math.min(x0 + 1, src.width - 1);
      const wx = fx - x0;
      const o = (y * width + x) * 3;
      const a = (y0 * src.width + x0) * 3, b = (y0 * src.width + x1) * 3;
      const c = (y1 * src.width + x0) * 3, d = (y1 * src.width + x1) * 3;
      for (let k = 0; k < 3; k++) {
        const top = src.data[a + k]! + (src.data[b + k]! - src.data[a + k]!) * wx;
        const bottom = src.data[c + k]! + (src.data[d + k]! - src.data[c + k]!) * wx;
        out.data[o + k] = Math.round(top + (bottom - top) * wy);
      }
    }
  }
  return out;
}

/** A 2×3 affine matrix [a, b, tx, c, d, ty] mapping source (x, y) to destination. */
export type Affine = [number, number, number, number, number, number];

export function invertAffine(m: Affine): Affine {
  const [a, b, tx, c, d, ty] = m;
  const det = a * d - b * c;
  if (Math.abs(det) < 1e-12) throw new RangeError('affine matrix is singular');
  const ia = d / det, ib = -b / det, ic = -c / det, id = a / det;
  return [ia, ib, -(ia * tx + ib * ty), ic, id, -(ic * tx + id * ty)];
}

export function applyAffine(m: Affine, x: number, y: number): [number, number] {
  return [m[0] * x + m[1] * y + m[2], m[3] * x + m[4] * y + m[5]];
}

/** cv2.warpAffine(src, m, (width, height), INTER_LINEAR, BORDER_CONSTANT=border): samples src at m⁻¹(dst). */
export function warpAffine(src: RgbImage, m: Affine, width: number, height: number, border = 0): RgbImage {
  const inv = invertAffine(m);
  const out = blank(width, height, border);
  const sample = (x: number, y: number, k: number) =>
    x >= 0 && y >= 0 && x < src.width && y < src.height ? src.data[(y * src.width + x) * 3 + k]! : border;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const [fx, fy] = applyAffine(inv, x, y);
      const x0 = Math.floor(fx), y0 = Math.floor(fy);
      if (x0 < -1 || y0 < -1 || x0 >= src.width || y0 >= src.height) continue;
      const wx = fx - x0, wy = fy - y0;
      const o = (y * width + x) * 3;
      for (let k = 0; k < 3; k++) {
        const top = sample(x0, y0, k) * (1 - wx) + sample(x0 + 1, y0, k) * wx;
        const bottom = sample(x0, y0 + 1, k) * (1 - wx) + sample(x0 + 1, y0 + 1, k) * wx;
        out.data[o + k] = Math.round(top * (1 - wy) + bottom * wy);
      }
    }
  }
  return out;
}

/** Copies a rectangle (clipped to the image; outside pixels are `fill`). */
export function cropRect(src: RgbImage, left: number, top: number, width: number, height: number, fill = 0): RgbImage {
  const out = blank(width, height, fill);
  for (let y = 0; y < height; y++) {
    const sy = top + y;
    if (sy < 0 || sy >= src.height) continue;
    for (let x = 0; x < width; x++) {
      const sx = left + x;
      if (sx < 0 || sx >= src.width) continue;
      const s = (sy * src.width + sx) * 3, o = (y * width + x) * 3;
      out.data[o] = src.data[s]!;
      out.data[o + 1] = src.data[s + 1]!;
      out.data[o + 2] = src.data[s + 2]!;
    }
  }
  return out;
}

/** Rec. 601 luma as floats 0..255. */
export function toGray(src: RgbImage): Float32Array {
  const out = new Float32Array(src.width * src.height);
  for (let i = 0, p = 0; i < out.length; i++, p += 3) {
    out[i] = 0.299 * src.data[p]! + 0.587 * src.data[p + 1]! + 0.114 * src.data[p + 2]!;
  }
  return out;
}

/**
 * Planar float tensor data [3, H, W] from an RGB image: `order` picks the channel order the model wants,
 * then (v - mean[c]) / std[c] per output channel.
 */
export function toPlanar(src: RgbImage, order: 'rgb' | 'bgr', mean: readonly number[] = [0, 0, 0], std: readonly number[] = [1, 1, 1]): Float32Array {
  const plane = src.width * src.height;
  const out = new Float32Array(plane * 3);
  const from = order === 'rgb' ? [0, 1, 2] : [2, 1, 0];
  for (let c = 0; c < 3; c++) {
    const srcChannel = from[c]!, m = mean[c]!, s = std[c]!;
    for (let i = 0; i < plane; i++) out[c * plane + i] = (src.data[i * 3 + srcChannel]! - m) / s;
  }
  return out;
}

/** For each of `to` bins, the first of the `from` source lines whose centre falls in it (and one past the last). */
function binStarts(from: number, to: number): Uint32Array {
  const starts = new Uint32Array(to + 1);
  // The bin of a line is monotone in it, so each bin's lines are contiguous: count them, then sum the counts.
  for (let i = 0; i < from; i++) starts[Math.min(to - 1, Math.floor(((i + 0.5) * to) / from)) + 1]!++;
  for (let b = 0; b < to; b++) starts[b + 1]! += starts[b]!;
  return starts;
}

/**
 * Downscale by averaging every source pixel into the output pixel its centre falls in (no aliasing). Each photo's
 * perceptual hash runs this over the whole picture on the main thread (about 5 ms a photo under load before), so
 * the bins are contiguous ranges and each output pixel's run of source pixels is summed in locals, with no
 * per-pixel index lookups or stores. The sums are exact integers: the result is the same as summing pixel by pixel.
 */
export function resizeArea(src: RgbImage, width: number, height: number): RgbImage {
  const columns = binStarts(src.width, width);
  const rows = binStarts(src.height, height);
  const data = src.data;
  const sums = new Uint32Array(width * 3);
  const out = blank(width, height);
  for (let oy = 0; oy < height; oy++) {
    sums.fill(0);
    for (let y = rows[oy]!; y < rows[oy + 1]!; y++) {
      let s = y * src.width * 3;
      for (let ox = 0, o = 0; ox < width; ox++, o += 3) {
        let r = 0, g = 0, b = 0;
        for (let x = columns[ox]!; x < columns[ox + 1]!; x++, s += 3) { r += data[s]!; g += data[s + 1]!; b += data[s + 2]!; }
        sums[o]! += r; sums[o + 1]! += g; sums[o + 2]! += b;
      }
    }
    const rowCount = rows[oy + 1]! - rows[oy]!;
    for (let ox = 0, i = oy * width * 3, o = 0; ox < width; ox++, o += 3, i += 3) {
      const n = rowCount * (columns[ox + 1]! - columns[ox]!) || 1;
      out.data[i] = Math.round(sums[o]! / n);
      out.data[i + 1] = Math.round(sums[o + 1]! / n);
      out.data[i + 2] = Math.round(sums[o + 2]! / n);
    }
  }
  return out;
}
