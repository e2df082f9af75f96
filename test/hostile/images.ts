// Hostile image builders shared by test/images.test.ts and the hostile-input generator.
import { crc32 } from 'node:zlib';
import sharp from 'sharp';

/** A JPEG whose frame header (SOF) claims width×height while the scan data is that of the original picture. */
export function jpegClaiming(jpeg: Buffer, width: number, height: number): Buffer {
  const out = Buffer.from(jpeg);
  for (let at = 2; at + 4 <= out.length;) {
    const marker = out[at + 1]!;
    // SOF0–SOF15 except DHT (c4), JPG (c8) and DAC (cc); the frame header holds height then width after precision.
    if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) {
      out.writeUInt16BE(height, at + 5);
      out.writeUInt16BE(width, at + 7);
      return out;
    }
    at += 2 + out.readUInt16BE(at + 2);
  }
  throw new Error('no SOF marker');
}

/** A lossless WebP of one flat colour: a few KB on the wire, width×height pixels to decode. */
export function flatLosslessWebp(width: number, height: number): Promise<Buffer> {
  return sharp({ create: { width, height, channels: 3, background: '#886644' } }).webp({ lossless: true }).toBuffer();
}

export function pngChunk(type: string, data: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const typeAndData = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(typeAndData));
  return Buffer.concat([len, typeAndData, crc]);
}

/** A PNG whose IHDR claims width×height while holding the data of a tiny image: a decompression-bomb header. */
export async function pngClaiming(width: number, height: number): Promise<Buffer> {
  const png = Buffer.from(await sharp({ create: { width: 16, height: 16, channels: 3, background: '#4080c0' } }).png().toBuffer());
  const ihdr = Buffer.from(png.subarray(16, 29));
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  return Buffer.concat([png.subarray(0, 8), pngChunk('IHDR', ihdr), png.subarray(33)]);
}

/** A minimal, structurally valid HEIC (ISO-BMFF, one 'hvc1' item). The HEVC payload is junk. */
export function fakeHeic(width: number, height: number): Buffer {
  const u32 = (n: number) => { const b = Buffer.alloc(4); b.writeUInt32BE(n); return b; };
  const u16 = (n: number) => { const b = Buffer.alloc(2); b.writeUInt16BE(n); return b; };
  const box = (type: string, ...parts: Buffer[]) => { const body = Buffer.concat(parts); return Buffer.concat([u32(body.length + 8), Buffer.from(type, 'latin1'), body]); };
  const full = (type: string, version: number, ...parts: Buffer[]) => box(type, Buffer.from([version, 0, 0, 0]), ...parts);
  const payload = Buffer.alloc(64, 0x55);
  const ftyp = box('ftyp', Buffer.from('heic', 'latin1'), u32(0), Buffer.from('mif1heic', 'latin1'));
  const meta = (dataOffset: number) => full('meta', 0,
    full('hdlr', 0, u32(0), Buffer.from('pict', 'latin1'), Buffer.alloc(12), Buffer.from([0])),
    full('pitm', 0, u16(1)),
    full('iloc', 0, Buffer.from([0x44, 0x40]), u16(1), u16(1), u16(0), u32(0), u16(1), u32(dataOffset), u32(payload.length)),
    full('iinf', 0, u16(1), full('infe', 2, u16(1), u16(0), Buffer.from('hvc1', 'latin1'), Buffer.from([0]))),
    box('iprp',
      box('ipco',
        box('hvcC', Buffer.from([1, 1, 0x60, 0, 0, 0, 0x90, 0, 0, 0, 0, 0, 90, 0xf0, 0, 0xfc, 0xfd, 0xf8, 0xf8, 0, 0, 0x0f, 0])),
        full('ispe', 0, u32(width), u32(height))),
      full('ipma', 0, u32(1), u16(1), Buffer.from([2, 0x81, 0x02]))));
  const dataOffset = ftyp.length + meta(0).length + 8;
  return Buffer.concat([ftyp, meta(dataOffset), box('mdat', payload)]);
}

/** A 24-bit BMP (sharp cannot write BMP). */
export function bmp(width: number, height: number): Buffer {
  const rowSize = Math.ceil((width * 3) / 4) * 4;
  const buf = Buffer.alloc(54 + rowSize * height, 0x80);
  buf.write('BM', 0, 'latin1');
  buf.writeUInt32LE(buf.length, 2);
  buf.writeUInt32LE(0, 6);
  buf.writeUInt32LE(54, 10);
  buf.writeUInt32LE(40, 14);
  buf.writeInt32LE(width, 18);
  buf.writeInt32LE(height, 22);
  buf.writeUInt16LE(1, 26);
  buf.writeUInt16LE(24, 28);
  return buf;
}
