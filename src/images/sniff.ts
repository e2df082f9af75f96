// Identify what an uploaded file really is from its first bytes. The file name and the MIME type a chat platform
// reports are never trusted: people rename files, and platforms guess.

/** Still-image formats we decode (the HEIC entry only works where libvips was built with an HEVC decoder). */
export type AcceptedFormat = 'jpeg' | 'png' | 'webp' | 'gif' | 'tiff' | 'heic' | 'avif' | 'heif';

/** Image formats we recognise but do not accept. */
export type UnsupportedImageFormat = 'bmp' | 'psd' | 'svg' | 'jxl' | 'jp2' | 'ico' | 'exr';

/** Things that are clearly not images, named so the person can be told what they sent. */
export type NonImageKind = 'text' | 'html' | 'pdf' | 'archive' | 'video' | 'audio' | 'unknown';

export type Sniffed =
  | { kind: 'image'; format: AcceptedFormat; /** ISO-BMFF brands (HEIF family only), major brand first. */ brands?: string[] }
  | { kind: 'unsupported'; format: UnsupportedImageFormat }
  | { kind: 'other'; what: NonImageKind };

const HEIC_BRANDS = new Set(['heic', 'heix', 'heim', 'heis', 'hevc', 'hevx', 'hevm', 'hevs']);
const AVIF_BRANDS = new Set(['avif', 'avis']);
const HEIF_GENERIC_BRANDS = new Set(['mif1', 'mif2', 'msf1', 'miaf']);
/** Major brands that declare an image *sequence* (animation / burst) rather than a still image. */
export const HEIF_SEQUENCE_BRANDS: ReadonlySet<string> = new Set(['avis', 'msf1', 'hevc', 'hevx', 'hevm', 'hevs']);

function startsWith(buf: Buffer, bytes: readonly number[], offset = 0): boolean {
  if (buf.length < offset + bytes.length) return false;
  return bytes.every((b, i) => buf[offset + i] === b);
}

function ascii(buf: Buffer, start: number, end: number): string {
  return buf.toString('latin1', start, Math.min(end, buf.length));
}

export function sniffFormat(buf: Buffer): Sniffed {
  // Strong binary signatures first.
  if (startsWith(buf, [0xff, 0xd8, 0xff])) return { kind: 'image', format: 'jpeg' };
  if (startsWith(buf, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return { kind: 'image', format: 'png' };
  const head6 = ascii(buf, 0, 6);
  if (head6 === 'GIF87a' || head6 === 'GIF89a') return { kind: 'image', format: 'gif' };
  if (ascii(buf, 0, 4) === 'RIFF') {
    const sub = ascii(buf, 8, 12);
    if (sub === 'WEBP') return { kind: 'image', format: 'webp' };
    if (sub === 'AVI ') return { kind: 'other', what: 'video' };
    if (sub === 'WAVE') return { kind: 'other', what: 'audio' };
  }
  // TIFF, little- and big-endian, classic and BigTIFF.
  if (
    startsWith(buf, [0x49, 0x49, 0x2a, 0x00]) || startsWith(buf, [0x4d, 0x4d, 0x00, 0x2a]) ||
    startsWith(buf, [0x49, 0x49, 0x2b, 0x00]) || startsWith(buf, [0x4d, 0x4d, 0x00, 0x2b])
  ) {
    return { kind: 'image', format: 'tiff' };
  }
  if (ascii(buf, 4, 8) === 'ftyp') return sniffIsoBmff(buf);

  if (startsWith(buf, [0x00, 0x00, 0x00, 0x0c, 0x4a, 0x58, 0x4c, 0x20]) || startsWith(buf, [0xff, 0x0a])) {
    return { kind: 'unsupported', format: 'jxl' };
  }
  if (startsWith(buf, [0x00, 0x00, 0x00, 0x0c, 0x6a, 0x50, 0x20, 0x20]) || startsWith(buf, [0xff, 0x4f, 0xff, 0x51])) {
    return { kind: 'unsupported', format: 'jp2' };
  }
  if (ascii(buf, 0, 4) === '8BPS') return { kind: 'unsupported', format: 'psd' };
  if (startsWith(buf, [0x76, 0x2f, 0x31, 0x01])) return { kind: 'unsupported', format: 'exr' };
  if (ascii(buf, 0, 5) === '%PDF-') return { kind: 'other', what: 'pdf' };
  if (startsWith(buf, [0x50, 0x4b, 0x03, 0x04]) || startsWith(buf, [0x1f, 0x8b]) || ascii(buf, 0, 6) === '7z\xbc\xaf\x27\x1c' || ascii(buf, 0, 4) === 'Rar!') {
    return { kind: 'other', what: 'archive' };
  }
  if (startsWith(buf, [0x1a, 0x45, 0xdf, 0xa3])) return { kind: 'other', what: 'video' }; // Matroska / WebM
  if (ascii(buf, 0, 3) === 'ID3' || ascii(buf, 0, 4) === 'OggS' || ascii(buf, 0, 4) === 'fLaC') return { kind: 'other', what: 'audio' };

  // Text (checked before the weak two-byte signatures below, so a text file starting "BM" stays text).
  const text = asText(buf);
  if (text !== null) {
    const head = text.slice(0, 4096).toLowerCase();
    if (/<svg[\s>]/.test(head)) return { kind: 'unsupported', format: 'svg' };
    if (/<!doctype html|<html[\s>]/.test(head)) return { kind: 'other', what: 'html' };
    return { kind: 'other', what: 'text' };
  }

  // Weak signatures: confirm with a second field where the format has one.
  if (ascii(buf, 0, 2) === 'BM' && buf.length >= 26 && buf.readUInt32LE(2) === buf.length) return { kind: 'unsupported', format: 'bmp' };
  if (ascii(buf, 0, 2) === 'BM' && buf.length >= 18 && [12, 40, 52, 56, 64, 108, 124].includes(buf.readUInt32LE(14))) {
    return { kind: 'unsupported', format: 'bmp' };
  }
  if (startsWith(buf, [0x00, 0x00, 0x01, 0x00]) && buf.length >= 6 && buf.readUInt16LE(4) > 0) return { kind: 'unsupported', format: 'ico' };
  return { kind: 'other', what: 'unknown' };
}

function sniffIsoBmff(buf: Buffer): Sniffed {
  const boxSize = buf.readUInt32BE(0);
  const end = Math.min(buf.length, boxSize >= 16 ? boxSize : 16, 4096);
  const brands = [ascii(buf, 8, 12)];
  for (let off = 16; off + 4 <= end; off += 4) brands.push(ascii(buf, off, off + 4));
  if (brands.some((b) => AVIF_BRANDS.has(b))) return { kind: 'image', format: 'avif', brands };
  if (brands.some((b) => HEIC_BRANDS.has(b))) return { kind: 'image', format: 'heic', brands };
  if (brands.some((b) => HEIF_GENERIC_BRANDS.has(b))) return { kind: 'image', format: 'heif', brands };
  return { kind: 'other', what: 'video' }; // mp4, mov, 3gp, m4a… all share the ftyp box
}

/**
 * The buffer's start decoded as text, or null when it holds binary bytes. Accepts UTF-8 (with or without BOM) with
 * no control characters other than tab, newline, carriage return and form feed.
 */
export function asText(buf: Buffer, sample = 4096): string | null {
  let prefix = buf.subarray(0, sample);
  if (prefix.length === 0) return null;
  // Do not fail on a multi-byte character cut by the sample boundary: drop up to 3 trailing continuation bytes.
  if (buf.length > sample) {
    let cut = prefix.length;
    for (let i = 0; i < 3 && cut > 0 && ((prefix[cut - 1] ?? 0) & 0xc0) === 0x80; i++) cut--;
    if (cut > 0 && ((prefix[cut - 1] ?? 0) & 0xc0) === 0xc0) cut--; // the lead byte of the cut character
    prefix = prefix.subarray(0, cut);
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(prefix);
  } catch {
    return null;
  }
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u0008\u000b\u000e-\u001f\u007f]/.test(text)) return null;
  return text;
}
