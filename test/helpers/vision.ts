// Synthetic scenes for the vision fixture models (see scripts/vision/make-onnx-fixtures.py): red patches are faces,
// green patches are people. Rendered with the same integer formula as scripts/vision/make-references.py, so the
// TypeScript pipeline and the Python references see identical pixels.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import sharp from 'sharp';
import { repoRoot } from '../../src/config/index.ts';
import type { RgbImage } from '../../src/vision/raster.ts';

export const visionFixtures = resolve(repoRoot, 'test/fixtures/vision');
export const fixtureModelsDir = resolve(visionFixtures, 'models');

export interface Rect { x: number; y: number; w: number; h: number }
export interface Scene {
  width: number;
  height: number;
  faces?: (Rect & { blue?: number })[];
  persons?: Rect[];
}

const texture = (x: number, y: number) => (x * 37 + y * 91 + ((x * y) % 97)) % 64;

export function renderScene(scene: Scene): RgbImage {
  const { width, height } = scene;
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const v = 110 + (texture(x, y) >> 1);
      data.fill(v, (y * width + x) * 3, (y * width + x) * 3 + 3);
    }
  }
  const paint = (r: Rect, pixel: (x: number, y: number) => [number, number, number]) => {
    for (let y = Math.max(0, r.y); y < Math.min(height, r.y + r.h); y++) {
      for (let x = Math.max(0, r.x); x < Math.min(width, r.x + r.w); x++) data.set(pixel(x, y), (y * width + x) * 3);
    }
  };
  for (const p of scene.persons ?? []) paint(p, (x, y) => [40, 200 + (texture(x, y) >> 2), 40]);
  for (const f of scene.faces ?? []) paint(f, (x, y) => [230, 60, Math.min(255, (f.blue ?? 96) + texture(x, y))]);
  return { width, height, data };
}

export async function sceneJpeg(scene: Scene, blurSigma = 0): Promise<Buffer> {
  const img = renderScene(scene);
  let pipeline = sharp(Buffer.from(img.data), { raw: { width: img.width, height: img.height, channels: 3 } });
  if (blurSigma > 0) pipeline = pipeline.blur(blurSigma);
  return pipeline.jpeg({ quality: 95 }).toBuffer();
}

export interface References {
  opencv: string;
  scenes: Record<string, Scene>;
  yunet: Record<string, number[][]>;
  alignment: { scene: Scene; cases: { landmarks: [number, number][]; matrix: number[][]; samples: number[][]; feature: number[] }[] };
  dwpose: Record<string, { boxes: number[][]; keypoints?: number[][][]; scores?: number[][] }>;
  drawing: {
    bodies: { width: number; height: number; keypoints: number[][][]; scores: number[][]; sha256: string; png?: string }[];
    faces: { width: number; height: number; points: number[][][]; sha256: string };
  };
  nms: { cases: { boxes: [number, number, number, number][]; scores: number[]; iouThreshold: number; scoreThreshold: number; keepOpenCV: number[]; keepYolox: number[] }[] };
}

export const references: References = JSON.parse(readFileSync(resolve(visionFixtures, 'reference/references.json'), 'utf8'));

export const scene = (name: string): Scene => {
  const s = references.scenes[name];
  if (!s) throw new Error(`no scene ${name}`);
  return s;
};
