// Hostile image builders shared by test/images.test.ts and the hostile-input generator.
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
