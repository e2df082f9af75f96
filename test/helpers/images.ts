// Test pictures made on the fly with sharp: distinct "photos", an OpenPose-style skeleton, and broken files.
import sharp from 'sharp';

/**
 * A distinct JPEG "photo" per index: shapes placed by a seeded generator, so that no two indexes are near-duplicates
 * by perceptual hash (the upload check refuses those).
 */
export async function makePhoto(index: number, width = 640, height = 800): Promise<Buffer> {
  let state = (index + 1) * 2654435761 % 4294967296;
  const next = (n: number) => {
    state = (state * 1664525 + 1013904223) % 4294967296;
    return Math.floor((state / 4294967296) * n);
  };
  const shapes = Array.from({ length: 14 }, () => {
    const fill = `hsl(${next(360)},${40 + next(50)}%,${15 + next(70)}%)`;
    return next(2) === 0
      ? `<rect x="${next(width)}" y="${next(height)}" width="${60 + next(300)}" height="${60 + next(300)}" fill="${fill}"/>`
      : `<ellipse cx="${next(width)}" cy="${next(height)}" rx="${30 + next(150)}" ry="${30 + next(150)}" fill="${fill}"/>`;
  });
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}">
    <rect width="100%" height="100%" fill="hsl(${next(360)},50%,${20 + next(60)}%)"/>${shapes.join('')}</svg>`;
  return sharp(Buffer.from(svg)).jpeg({ quality: 90 }).toBuffer();
}

export const makePhotos = (count: number, from = 0) => Promise.all(Array.from({ length: count }, (_, i) => makePhoto(from + i)));

/** A stick figure on black, in the style of an OpenPose conditioning image. */
export async function makeSkeleton(size = 512): Promise<Buffer> {
  const s = size / 512;
  const limbs: Array<[number, number, number, number, string]> = [
    [256, 100, 256, 180, '#ff0000'], [256, 180, 180, 260, '#ff5500'], [256, 180, 332, 260, '#ffaa00'],
    [256, 180, 256, 320, '#00ff00'], [256, 320, 200, 460, '#00ffaa'], [256, 320, 312, 460, '#0055ff'],
  ];
  const lines = limbs.map(([x1, y1, x2, y2, c]) =>
    `<line x1="${x1 * s}" y1="${y1 * s}" x2="${x2 * s}" y2="${y2 * s}" stroke="${c}" stroke-width="${8 * s}"/>`).join('');
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${size}" height="${size}"><rect width="100%" height="100%" fill="#000"/>${lines}</svg>`;
  return sharp(Buffer.from(svg)).png().toBuffer();
}

export async function badUploads() {
  const good = await makePhoto(99);
  return {
    textAsJpeg: Buffer.from('Hello! This is definitely not a photo.\n'),
    truncatedJpeg: good.subarray(0, Math.floor(good.length * 0.6)),
    onePixelPng: await sharp({ create: { width: 1, height: 1, channels: 3, background: '#fff' } }).png().toBuffer(),
    animatedGif: await animatedGif(),
  };
}

async function animatedGif(): Promise<Buffer> {
  // Two 300×300 frames stacked vertically, written as a two-page animated GIF.
  const frames = await sharp({ create: { width: 300, height: 600, channels: 3, background: '#0a0' } })
    .composite([{ input: { create: { width: 300, height: 300, channels: 3, background: '#a00' } }, top: 300, left: 0 }])
    .raw()
    .toBuffer();
  return sharp(frames, { raw: { width: 300, height: 600, channels: 3, pageHeight: 300 } }).gif({ loop: 0, delay: [100, 100] }).toBuffer();
}
