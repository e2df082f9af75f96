// Upload normalization: every photo a person sends passes through normalizeUpload() before it is stored or used.
// It refuses what cannot be used, with a reason a person understands (ImageRejectedError), and turns everything else
// into one canonical form: upright (EXIF orientation applied), no metadata at all (EXIF/GPS, XMP, IPTC, ICC),
// sRGB, 8-bit, 3 channels (alpha flattened onto white), full resolution, high-quality baseline JPEG.
import { createHash } from 'node:crypto';
import sharp, { type Metadata, type OutputInfo, type SharpOptions } from 'sharp';
import { HEIF_SEQUENCE_BRANDS, sniffFormat, type AcceptedFormat, type Sniffed } from './sniff.ts';
import { decodeSlots } from './decode-slots.ts';
import { sharpFromRgb, type RgbImage } from '../vision/raster.ts';

/** The resolution the engine trains at. Never trained lower: a seed experiment at 64 px destroyed likeness. */
export const TRAINING_SIZE = 512;

export interface ImageLimits {
  /** Largest upload accepted, in bytes. */
  maxBytes: number;
  /** Largest width × height accepted (checked from the header, before any pixel is decoded). */
  maxPixels: number;
  /** Smallest accepted short side in pixels, after orientation. */
  minShortSide: number;
}

export const DEFAULT_IMAGE_LIMITS: Readonly<ImageLimits> = Object.freeze({
  maxBytes: 20 * 1024 * 1024,
  // A 24 MP camera photo fits; a 40 MP one would cost ~460 MB to decode (lossless WebP), so it is refused unread.
  maxPixels: 25_000_000,
  minShortSide: 256,
});

export type ImageRejectionCode =
  | 'empty'
  | 'too_large_bytes'
  | 'not_an_image'
  | 'unsupported_format'
  | 'truncated'
  | 'too_many_pixels'
  | 'animated'
  | 'too_small';

/**
 * A photo that cannot be used. `code` is for programs, `message` is plain English for the person who sent it,
 * `details` holds the numbers the message was built from (so a bot can translate it), and `detected` names what the
 * file turned out to be where that matters (e.g. 'text', 'pdf', 'heic', 'bmp', 'jpeg').
 */
export class ImageRejectedError extends Error {
  override readonly name = 'ImageRejectedError';
  constructor(
    readonly code: ImageRejectionCode,
    message: string,
    readonly details: Readonly<Record<string, number>> = {},
    readonly detected?: string,
  ) {
    super(message);
  }
}

export interface NormalizedImage {
  data: Buffer;
  format: 'jpeg';
  width: number;
  height: number;
  /** What the upload really was, from its bytes. */
  sourceFormat: AcceptedFormat;
  /** Size of `data`. */
  bytes: number;
  /** Hex sha256 of `data` (the normalized bytes, not the upload). */
  sha256: string;
  /**
   * The pixels `data` was encoded from (upright sRGB, 3 channels): the upload checks read them instead of decoding
   * `data` again. They differ from a decode of `data` only by its JPEG rounding (quality 95, no chroma subsampling).
   */
  pixels: RgbImage;
}

/** JPEG cannot store a side longer than 65535 pixels; we store everything as JPEG. */
const MAX_JPEG_SIDE = 65_535;

const SEND_INSTEAD = 'Please send a JPEG, PNG or WebP photo.';

const FORMAT_NAMES: Record<string, string> = {
  jpeg: 'JPEG', png: 'PNG', webp: 'WebP', gif: 'GIF', tiff: 'TIFF', heic: 'HEIC', avif: 'AVIF', heif: 'HEIF',
  bmp: 'BMP', psd: 'Photoshop (PSD)', svg: 'SVG', jxl: 'JPEG XL', jp2: 'JPEG 2000', ico: 'icon (ICO)', exr: 'OpenEXR',
};

const NOT_AN_IMAGE_LOOKS_LIKE: Record<string, string> = {
  text: 'it looks like text',
  html: 'it looks like a web page',
  pdf: 'it looks like a PDF document',
  archive: 'it looks like an archive (ZIP or similar)',
  video: 'it looks like a video',
  audio: 'it looks like an audio file',
};

function formatName(f: string): string {
  return FORMAT_NAMES[f] ?? f.toUpperCase();
}

function megabytes(n: number, digits = 1): string {
  return `${Number((n / (1024 * 1024)).toFixed(digits))} MB`;
}

/** "20.01 MB" rather than "20 MB" when a size just over the limit would otherwise read as equal to it. */
function overLimit(n: number, limit: number): [string, string] {
  let digits = 1;
  while (digits < 6 && megabytes(n, digits) === megabytes(limit, digits)) digits++;
  return [megabytes(n, digits), megabytes(limit)];
}

function megapixels(n: number): string {
  return `${Number((n / 1e6).toFixed(1))} megapixels`;
}

function checkLimits(limits: ImageLimits): void {
  for (const [name, value] of Object.entries(limits)) {
    if (!Number.isInteger(value) || value < 1) throw new RangeError(`image limit ${name} must be a positive integer, got ${String(value)}`);
  }
}

/** sharp's own name for the decoder each sniffed format must go through. */
function sharpFormatOf(f: AcceptedFormat): string {
  return f === 'heic' || f === 'avif' || f === 'heif' ? 'heif' : f;
}

function rejectSniffed(s: Exclude<Sniffed, { kind: 'image' }>): never {
  if (s.kind === 'unsupported') {
    const what = s.format === 'svg'
      ? 'SVG drawings can\'t be used — send a photo.'
      : `${formatName(s.format)} images can't be used.`;
    throw new ImageRejectedError('unsupported_format', `${what} ${SEND_INSTEAD}`, {}, s.format);
  }
  const looksLike = NOT_AN_IMAGE_LOOKS_LIKE[s.what];
  const message = looksLike
    ? `This file is not an image (${looksLike}). ${SEND_INSTEAD}`
    : `This file is not an image format we recognise. ${SEND_INSTEAD}`;
  throw new ImageRejectedError('not_an_image', message, {}, s.what);
}

function heicUnsupported(): ImageRejectedError {
  return new ImageRejectedError(
    'unsupported_format',
    'HEIC photos (the iPhone\'s "High Efficiency" format) can\'t be read here. Please send it as a JPEG: send it as a ' +
      'photo rather than a file, or on the iPhone choose Settings › Camera › Formats › Most Compatible.',
    {},
    'heic',
  );
}

/** Turn a libvips failure on a file whose signature looked fine into a rejection. */
function decodeFailure(err: unknown, format: AcceptedFormat, limits: ImageLimits): ImageRejectedError {
  const text = err instanceof Error ? err.message : String(err);
  if (/exceeds pixel limit/i.test(text)) {
    return new ImageRejectedError('too_many_pixels',
      `This image is larger than ${megapixels(limits.maxPixels)}. Please send a smaller photo.`,
      { maxPixels: limits.maxPixels }, format);
  }
  // Prebuilt sharp ships libheif with an AV1 decoder only; HEVC (HEIC) needs a libvips built with libde265.
  if (/not been built in|decoder plugin|no decoding plugin|unsupported codec/i.test(text)) {
    if (format === 'heic' || format === 'heif') return heicUnsupported();
    return new ImageRejectedError('unsupported_format', `This ${formatName(format)} uses a compression this server can't decode. ${SEND_INSTEAD}`, {}, format);
  }
  const cutOff = /premature end|unexpected end|truncated|end of (file|data|stream)|read error|bad seek|corrupt header|unable to parse|unsupported image format/i.test(text);
  const name = formatName(format);
  const message = cutOff
    ? `This ${name} is cut off (truncated) — the upload probably failed; please send it again.`
    : `This ${name} is damaged and can't be decoded — the upload probably failed; please send it again.`;
  return new ImageRejectedError('truncated', message, {}, format);
}

/**
 * Check an uploaded file and convert it to the canonical stored form (see the top of this file).
 * Throws ImageRejectedError for anything unusable; any other error is a bug or an environment problem.
 */
export async function normalizeUpload(input: Buffer, limits?: Partial<ImageLimits>): Promise<NormalizedImage> {
  const lim: ImageLimits = { ...DEFAULT_IMAGE_LIMITS, ...limits };
  checkLimits(lim);

  if (input.length === 0) {
    throw new ImageRejectedError('empty', 'This file is empty (0 bytes) — the upload probably failed; please send it again.', { bytes: 0 });
  }
  if (input.length > lim.maxBytes) {
    const [size, limit] = overLimit(input.length, lim.maxBytes);
    throw new ImageRejectedError('too_large_bytes',
      `This file is ${size}; the limit is ${limit}. Please send a smaller photo.`,
      { bytes: input.length, maxBytes: lim.maxBytes });
  }

  const sniffed = sniffFormat(input);
  if (sniffed.kind !== 'image') rejectSniffed(sniffed);
  const format = sniffed.format;

  // APNG: libvips decodes only the default frame, so an animated PNG would silently pass as a still.
  if (format === 'png') {
    const frames = apngFrameCount(input);
    if (frames > 1) throw animated(frames, format);
  }
  if ((format === 'avif' || format === 'heic' || format === 'heif') && sniffed.brands && HEIF_SEQUENCE_BRANDS.has(sniffed.brands[0] ?? '')) {
    throw animated(0, format);
  }

  // Header only: nothing is decoded yet, so a decompression bomb costs nothing here.
  const inputOptions: SharpOptions = { failOn: 'truncated', limitInputPixels: lim.maxPixels };
  let meta: Metadata;
  try {
    meta = await sharp(input, { ...inputOptions, limitInputPixels: false }).metadata();
  } catch (err) {
    throw decodeFailure(err, format, lim);
  }
  if (meta.format !== sharpFormatOf(format)) {
    // The signature and libvips disagree (a polyglot or a damaged file): refuse rather than guess.
    throw new ImageRejectedError('unsupported_format', `This file could not be read as a ${formatName(format)}. ${SEND_INSTEAD}`, {}, format);
  }
  // HEIF containers list auxiliary/burst images as pages; libvips loads the primary one, which is what viewers show.
  const pages = meta.pages ?? 1;
  if (pages > 1 && sharpFormatOf(format) !== 'heif') throw animated(pages, format);

  const pixels = meta.width * meta.height;
  if (pixels > lim.maxPixels) {
    throw new ImageRejectedError('too_many_pixels',
      `This image is ${meta.width}×${meta.height} pixels (${megapixels(pixels)}); the limit is ${megapixels(lim.maxPixels)}. Please send a smaller photo.`,
      { width: meta.width, height: meta.height, pixels, maxPixels: lim.maxPixels }, format);
  }

  if (Math.max(meta.width, meta.height) > MAX_JPEG_SIDE) {
    throw new ImageRejectedError('too_many_pixels',
      `This image is ${meta.width}×${meta.height} pixels; the longest side can be at most ${MAX_JPEG_SIDE} pixels. Please send a normal photo.`,
      { width: meta.width, height: meta.height, maxSide: MAX_JPEG_SIDE }, format);
  }

  const width = meta.autoOrient.width;
  const height = meta.autoOrient.height;
  if (Math.min(width, height) < lim.minShortSide) {
    throw new ImageRejectedError('too_small',
      `This image is only ${width}×${height} pixels; photos need at least ${lim.minShortSide} pixels on the short side for training at ${TRAINING_SIZE} px.`,
      { width, height, minShortSide: lim.minShortSide, trainingSize: TRAINING_SIZE }, format);
  }

  let out: { data: Buffer; info: OutputInfo; pixels: Buffer };
  try {
    out = await decodeSlots.run(async () => {
      let pipeline = sharp(input, { ...inputOptions, autoOrient: true });
      if (meta.hasAlpha) pipeline = pipeline.flatten({ background: '#ffffff' });
      // Decoded once: the cut-off check reads these pixels, and the JPEG is encoded from them (the same bytes as
      // encoding straight from the decoder). No keepMetadata()/withMetadata()/keep*(): sharp writes no EXIF, XMP,
      // IPTC or ICC, and converts to sRGB using the embedded ICC profile when there is one (Display P3, CMYK scans).
      const decoded = await pipeline.toColourspace('srgb').raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
      if (decoded.info.width !== width || decoded.info.height !== height || decoded.info.channels !== 3) {
        throw new Error(`normalizeUpload: expected ${width}×${height}×3 pixels, got ${decoded.info.width}×${decoded.info.height}×${decoded.info.channels}`);
      }
      if (format === 'jpeg' && missingScanData(decoded.data, width, height, meta.orientation ?? 1)) {
        throw new Error('premature end of data segment: the scan data ends before the frame');
      }
      const encoded = await sharp(decoded.data, { raw: { width, height, channels: 3 } })
        .jpeg({ quality: 95, mozjpeg: false, chromaSubsampling: '4:4:4', progressive: false })
        .toBuffer({ resolveWithObject: true });
      return { ...encoded, pixels: decoded.data };
    });
  } catch (err) {
    throw decodeFailure(err, format, lim);
  }
  if (out.info.width !== width || out.info.height !== height || out.info.channels !== 3) {
    throw new Error(`normalizeUpload: expected ${width}×${height}×3 output, got ${out.info.width}×${out.info.height}×${out.info.channels}`);
  }

  return {
    data: out.data,
    format: 'jpeg',
    width,
    height,
    sourceFormat: format,
    bytes: out.data.length,
    sha256: createHash('sha256').update(out.data).digest('hex'),
    pixels: { width, height, data: new Uint8Array(out.pixels.buffer, out.pixels.byteOffset, out.pixels.length) },
  };
}

/**
 * A JPEG whose frame header claims more pixels than its scan data holds decodes without an error: libjpeg only
 * warns ("premature end of data segment") and fills the rest with zero coefficients, so every block after the break
 * repeats the last DC value — one exact colour to the end of the coded image. libvips' failOn: 'warning' catches
 * that warning, but not reliably: its messages are process-wide, and a decode running at the same time swallowed it
 * (measured: 4 rounds of 5). So the decoded pixels are checked instead: the last quarter of the coded rows (at least 64, on
 * whichever side orientation put them) in one exact colour is refused as cut off. Pure black and pure white are
 * left alone (letterbox bars, a clipped studio background), and so is a picture of one colour throughout.
 */
function missingScanData(pixels: Buffer, width: number, height: number, orientation: number): boolean {
  const side = [1, 2].includes(orientation) ? 'bottom' : [3, 4].includes(orientation) ? 'top' : [6, 7].includes(orientation) ? 'left' : 'right';
  const vertical = side === 'bottom' || side === 'top';
  const length = vertical ? height : width;
  const band = Math.max(64, Math.round(length / 4));
  if (band >= length) return false;
  /** Whether every pixel of the band (rows or columns from `start`) is `colour`. */
  const flat = (start: number, [r, g, b]: number[]) => {
    const [x0, x1, y0, y1] = vertical ? [0, width, start, start + band] : [start, start + band, 0, height];
    for (let y = y0; y < y1; y++) {
      for (let x = x0, i = (y * width + x0) * 3; x < x1; x++, i += 3) if (pixels[i] !== r || pixels[i + 1] !== g || pixels[i + 2] !== b) return false;
    }
    return true;
  };
  const farStart = length - band;
  const [lastStart, firstStart] = side === 'bottom' || side === 'right' ? [farStart, 0] : [0, farStart];
  const at = vertical ? lastStart * width * 3 : lastStart * 3;
  const colour = [pixels[at]!, pixels[at + 1]!, pixels[at + 2]!];
  if (colour.every((v) => v === 0) || colour.every((v) => v === 255) || !flat(lastStart, colour)) return false;
  // A picture that is one colour throughout is flat, not cut off: the coded rows must start with something else.
  return !flat(firstStart, colour);
}

function animated(frames: number, format: AcceptedFormat): ImageRejectedError {
  const message = format === 'tiff'
    ? `This file holds ${frames} pages — send a single still photo.`
    : "Animated images can't be used — send a still photo.";
  return new ImageRejectedError('animated', message, frames > 0 ? { frames } : {}, format);
}

/** Number of frames an APNG declares in its acTL chunk (which must precede the image data), or 1. */
function apngFrameCount(png: Buffer): number {
  let off = 8;
  while (off + 12 <= png.length) {
    const length = png.readUInt32BE(off);
    const type = png.toString('latin1', off + 4, off + 8);
    if (type === 'acTL' && length >= 8 && off + 12 <= png.length) return png.readUInt32BE(off + 8);
    if (type === 'IDAT' || type === 'IEND') return 1;
    off += 12 + length;
  }
  return 1;
}

/**
 * The square training input for one normalized photo: the centred square of the short side, resized (Lanczos3) to
 * size×size, as PNG. The crop never extends past the image (no padding) and the output is always exactly size×size:
 * a short side below `size` is upscaled, never trained smaller.
 *
 * `decoded`, the photo's pixels when the caller has them (normalizeUpload's `pixels`), spares a decode below twice
 * the size; above it libvips shrinks the JPEG while loading it, which is cheaper than resizing the full pixels.
 *
 * This is the seam the face-centred crop (vision) replaces: same input (the normalized photo, as its JPEG or its
 * pixels), same output, so the caller does not change when the crop learns where the face is.
 */
export async function trainingCrop(normalized: Buffer, size = TRAINING_SIZE, decoded?: RgbImage): Promise<Buffer> {
  if (!Number.isInteger(size) || size < 1) throw new RangeError(`trainingCrop: size must be a positive integer, got ${size}`);
  const fromPixels = decoded && Math.min(decoded.width, decoded.height) < 2 * size;
  return decodeSlots.run(() =>
    (fromPixels
      ? sharpFromRgb(decoded)
      : sharp(normalized, { failOn: 'truncated', limitInputPixels: DEFAULT_IMAGE_LIMITS.maxPixels, autoOrient: true }).flatten({ background: '#ffffff' }))
      .resize(size, size, { fit: 'cover', position: 'centre', kernel: 'lanczos3' })
      .toColourspace('srgb')
      .png()
      .toBuffer());
}
