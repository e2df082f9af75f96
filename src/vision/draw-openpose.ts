// The OpenPose conditioning image, drawn pixel for pixel as controlnet_aux's dwpose `draw_bodypose` /
// `draw_facepose` draw it (and so as ControlNet openpose was trained on): each limb is an OpenCV `ellipse2Poly`
// (stick width 4, whole degrees) filled with `fillConvexPoly`, the canvas is then dimmed to 60 %, and joints are
// OpenCV filled circles of radius 4. The rasterisers below follow OpenCV's drawing.cpp integer algorithms
// (Bresenham edges, fixed-point scanline fill, midpoint circle) so the output is identical, not merely close.
import { blank, type RgbImage } from './raster.ts';

/** One person: 18 OpenPose body points in normalised [0, 1] coordinates, null where not visible. */
export type BodyPose = ([number, number] | null)[];

type Color = readonly [number, number, number];
type Point = [number, number];

export const OPENPOSE_LIMBS: readonly [number, number][] = [
  [2, 3], [2, 6], [3, 4], [4, 5], [6, 7], [7, 8], [2, 9], [9, 10], [10, 11], [2, 12], [12, 13], [13, 14], [2, 1], [1, 15],
  [15, 17], [1, 16], [16, 18],
];

export const OPENPOSE_COLORS: readonly Color[] = [
  [255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0], [0, 255, 0], [0, 255, 85],
  [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255], [0, 0, 255], [85, 0, 255], [170, 0, 255], [255, 0, 255],
  [255, 0, 170], [255, 0, 85],
];

const STICK_WIDTH = 4;
const XY_SHIFT = 16;
const XY_ONE = 2 ** XY_SHIFT;
const RAD_TO_DEG = 180 / Math.PI;

/** Round half to even, as cvRound does on x86-64 (SSE2 cvtsd2si in the default rounding mode). */
export function cvRound(v: number): number {
  const r = Math.round(v);
  return (r - v === 0.5 && r % 2 !== 0 ? r - 1 : r) + 0; // + 0 turns -0 into 0
}

// OpenCV's SinTable: sin of whole degrees 0..450 to seven decimals, stored as float.
const SIN_TABLE = Float32Array.from({ length: 451 }, (_, d) => Number(Math.sin((d * Math.PI) / 180).toFixed(7)));

/** cv::ellipse2Poly for integer centre/axes/angle, arc 0..360. */
export function ellipse2Poly(center: Point, axes: Point, angleDeg: number, arcStart: number, arcEnd: number, delta: number): Point[] {
  let angle = angleDeg;
  while (angle < 0) angle += 360;
  while (angle > 360) angle -= 360;
  if (arcStart > arcEnd) [arcStart, arcEnd] = [arcEnd, arcStart];
  while (arcStart < 0) { arcStart += 360; arcEnd += 360; }
  while (arcEnd > 360) { arcEnd -= 360; arcStart -= 360; }
  if (arcEnd - arcStart > 360) { arcStart = 0; arcEnd = 360; }
  const a = angle < 0 ? angle + 360 : angle;
  const beta = SIN_TABLE[a]!; // sin
  const alpha = SIN_TABLE[450 - a]!; // cos
  const pts: Point[] = [];
  let prev: Point | null = null;
  for (let i = arcStart; i < arcEnd + delta; i += delta) {
    let t = i > arcEnd ? arcEnd : i;
    if (t < 0) t += 360;
    const x = axes[0] * SIN_TABLE[450 - t]!;
    const y = axes[1] * SIN_TABLE[t]!;
    const pt: Point = [cvRound(center[0] + x * alpha - y * beta), cvRound(center[1] + x * beta + y * alpha)];
    if (!prev || pt[0] !== prev[0] || pt[1] !== prev[1]) {
      pts.push(pt);
      prev = pt;
    }
  }
  if (pts.length === 1) return [[center[0], center[1]], [center[0], center[1]]];
  return pts;
}

function hline(img: RgbImage, y: number, x1: number, x2: number, color: Color): void {
  for (let x = x1; x <= x2; x++) {
    const o = (y * img.width + x) * 3;
    img.data[o] = color[0];
    img.data[o + 1] = color[1];
    img.data[o + 2] = color[2];
  }
}

/** cv::clipLine on the image rectangle; returns false when the segment is entirely outside. */
function clipLine(width: number, height: number, p1: Point, p2: Point): boolean {
  const right = width - 1, bottom = height - 1;
  if (width <= 0 || height <= 0) return false;
  let [x1, y1] = p1, [x2, y2] = p2;
  let c1 = +(x1 < 0) + +(x1 > right) * 2 + +(y1 < 0) * 4 + +(y1 > bottom) * 8;
  let c2 = +(x2 < 0) + +(x2 > right) * 2 + +(y2 < 0) * 4 + +(y2 > bottom) * 8;
  if ((c1 & c2) === 0 && (c1 | c2) !== 0) {
    if (c1 & 12) {
      const a = c1 < 8 ? 0 : bottom;
      x1 += Math.trunc(((a - y1) * (x2 - x1)) / (y2 - y1));
      y1 = a;
      c1 = +(x1 < 0) + +(x1 > right) * 2;
    }
    if (c2 & 12) {
      const a = c2 < 8 ? 0 : bottom;
      x2 += Math.trunc(((a - y2) * (x2 - x1)) / (y2 - y1));
      y2 = a;
      c2 = +(x2 < 0) + +(x2 > right) * 2;
    }
    if ((c1 & c2) === 0 && (c1 | c2) !== 0) {
      if (c1) {
        const a = c1 === 1 ? 0 : right;
        y1 += Math.trunc(((a - x1) * (y2 - y1)) / (x2 - x1));
        x1 = a;
        c1 = 0;
      }
      if (c2) {
        const a = c2 === 1 ? 0 : right;
        y2 += Math.trunc(((a - x2) * (y2 - y1)) / (x2 - x1));
        x2 = a;
        c2 = 0;
      }
    }
  }
  p1[0] = x1; p1[1] = y1; p2[0] = x2; p2[1] = y2;
  return (c1 | c2) === 0;
}

/** cv::line with thickness 1, LINE_8 (LineIterator, 8-connected, left to right). */
function line8(img: RgbImage, a: Point, b: Point, color: Color): void {
  const p1: Point = [a[0], a[1]], p2: Point = [b[0], b[1]];
  const outside = (p: Point) => p[0] < 0 || p[0] >= img.width || p[1] < 0 || p[1] >= img.height;
  if ((outside(p1) || outside(p2)) && !clipLine(img.width, img.height, p1, p2)) return;
  let [x, y] = p1;
  let dx = p2[0] - p1[0], dy = p2[1] - p1[1];
  if (dx < 0) {
    dx = -dx; dy = -dy;
    [x, y] = p2;
  }
  let sy = 1;
  if (dy < 0) { dy = -dy; sy = -1; }
  const vertical = dy > dx;
  if (vertical) [dx, dy] = [dy, dx];
  let err = dx - (dy + dy);
  const plusDelta = dx + dx, minusDelta = -(dy + dy);
  for (let i = 0; i <= dx; i++) {
    const o = (y * img.width + x) * 3;
    img.data[o] = color[0]; img.data[o + 1] = color[1]; img.data[o + 2] = color[2];
    const minorStep = err < 0;
    err += minusDelta + (minorStep ? plusDelta : 0);
    // major axis always advances; the minor one when the error went negative
    if (vertical) { y += sy; if (minorStep) x += 1; } else { x += 1; if (minorStep) y += sy; }
  }
}

/** cv::fillConvexPoly with LINE_8 and shift 0. */
export function fillConvexPoly(img: RgbImage, v: readonly Point[], color: Color): void {
  const npts = v.length;
  const delta1 = XY_ONE >> 1, delta2 = XY_ONE >> 1;
  let xmin = v[0]![0], xmax = xmin, ymin = v[0]![1], ymax = ymin, imin = 0;
  let p0 = v[npts - 1]!;
  for (let i = 0; i < npts; i++) {
    const p = v[i]!;
    if (p[1] < ymin) { ymin = p[1]; imin = i; }
    ymax = Math.max(ymax, p[1]);
    xmax = Math.max(xmax, p[0]);
    xmin = Math.min(xmin, p[0]);
    line8(img, p0, p, color);
    p0 = p;
  }
  if (npts < 3 || xmax < 0 || ymax < 0 || xmin >= img.width || ymin >= img.height) return;
  ymax = Math.min(ymax, img.height - 1);
  const edge = [
    { idx: imin, di: 1, x: -XY_ONE, dx: 0, ye: ymin },
    { idx: imin, di: npts - 1, x: -XY_ONE, dx: 0, ye: ymin },
  ];
  let edges = npts;
  let y = ymin;
  do {
    for (const e of edge) {
      if (y < e.ye) continue;
      let idx0 = e.idx;
      let idx = idx0 + e.di;
      if (idx >= npts) idx -= npts;
      for (; edges-- > 0;) {
        const ty = v[idx]![1];
        if (ty > y) {
          const xs = v[idx0]![0] * XY_ONE, xe = v[idx]![0] * XY_ONE;
          e.ye = ty;
          e.dx = Math.trunc(((xe - xs) * 2 + (ty - y)) / (2 * (ty - y)));
          e.x = xs;
          e.idx = idx;
          break;
        }
        idx0 = idx;
        idx += e.di;
        if (idx >= npts) idx -= npts;
      }
    }
    if (edges < 0) break;
    if (y >= 0) {
      const [left, right] = edge[0]!.x > edge[1]!.x ? [edge[1]!, edge[0]!] : [edge[0]!, edge[1]!];
      let x1 = Math.floor((left.x + delta1) / XY_ONE);
      let x2 = Math.floor((right.x + delta2) / XY_ONE);
      if (x2 >= 0 && x1 < img.width) {
        if (x1 < 0) x1 = 0;
        if (x2 >= img.width) x2 = img.width - 1;
        hline(img, y, x1, x2, color);
      }
    }
    edge[0]!.x += edge[0]!.dx;
    edge[1]!.x += edge[1]!.dx;
  } while (++y <= ymax);
}

/** cv::circle filled (thickness -1), LINE_8, shift 0: OpenCV's midpoint circle with horizontal spans. */
export function fillCircle(img: RgbImage, cx: number, cy: number, radius: number, color: Color): void {
  const { width, height } = img;
  let err = 0, dx = radius, dy = 0, plus = 1, minus = (radius << 1) - 1;
  const span = (y: number, x1: number, x2: number) => {
    if (y < 0 || y >= height || x1 >= width || x2 < 0) return;
    hline(img, y, Math.max(x1, 0), Math.min(x2, width - 1));
  };
  function hline(target: RgbImage, y: number, x1: number, x2: number) {
    for (let x = x1; x <= x2; x++) {
      const o = (y * target.width + x) * 3;
      target.data[o] = color[0]; target.data[o + 1] = color[1]; target.data[o + 2] = color[2];
    }
  }
  while (dx >= dy) {
    const y11 = cy - dy, y12 = cy + dy, y21 = cy - dx, y22 = cy + dx;
    const x11 = cx - dx, x12 = cx + dx, x21 = cx - dy, x22 = cx + dy;
    if (x11 < width && x12 >= 0 && y21 < height && y22 >= 0) {
      span(y11, x11, x12);
      span(y12, x11, x12);
      if (x21 < width && x22 >= 0) {
        span(y21, x21, x22);
        span(y22, x21, x22);
      }
    }
    dy++;
    err += plus;
    plus += 2;
    const mask = err <= 0 ? 0 : -1;
    err -= minus & mask;
    dx += mask;
    minus -= mask & 2;
  }
}

const pyInt = Math.trunc;

/** draw_bodypose: limbs, then the whole canvas × 0.6 (floored), then joints. Mutates and returns `canvas`. */
export function drawBodyPose(canvas: RgbImage, people: readonly BodyPose[]): RgbImage {
  const W = canvas.width, H = canvas.height;
  OPENPOSE_LIMBS.forEach(([a, b], i) => {
    for (const person of people) {
      const k1 = person[a - 1], k2 = person[b - 1];
      if (!k1 || !k2) continue;
      const Y0 = k1[0] * W, Y1 = k2[0] * W;
      const X0 = k1[1] * H, X1 = k2[1] * H;
      const mX = (X0 + X1) / 2, mY = (Y0 + Y1) / 2;
      const length = ((X0 - X1) ** 2 + (Y0 - Y1) ** 2) ** 0.5;
      const angle = Math.atan2(X0 - X1, Y0 - Y1) * RAD_TO_DEG;
      const polygon = ellipse2Poly([pyInt(mY), pyInt(mX)], [pyInt(length / 2), STICK_WIDTH], pyInt(angle), 0, 360, 1);
      fillConvexPoly(canvas, polygon, OPENPOSE_COLORS[i]!);
    }
  });
  for (let i = 0; i < canvas.data.length; i++) canvas.data[i] = Math.floor(canvas.data[i]! * 0.6);
  for (let j = 0; j < 18; j++) {
    for (const person of people) {
      const k = person[j];
      if (!k) continue;
      fillCircle(canvas, pyInt(k[0] * W), pyInt(k[1] * H), 4, OPENPOSE_COLORS[j]!);
    }
  }
  return canvas;
}

/** draw_facepose: white radius-3 dots, skipping points at or left/above of the 0.01-pixel margin (as upstream). */
export function drawFacePose(canvas: RgbImage, faces: readonly ([number, number] | null)[][]): RgbImage {
  const eps = 0.01;
  for (const face of faces) {
    for (const p of face) {
      if (!p) continue;
      const x = pyInt(p[0] * canvas.width), y = pyInt(p[1] * canvas.height);
      if (x > eps && y > eps) fillCircle(canvas, x, y, 3, [255, 255, 255]);
    }
  }
  return canvas;
}

export interface PoseDrawing {
  bodies: BodyPose[];
  faces?: ([number, number] | null)[][];
}

/**
 * controlnet_aux's resize_image size: the short side scaled to `resolution`, each side then rounded to a multiple
 * of 64 (numpy rounds halves to even). DWposeDetector detects and draws at this size for detect_resolution, then
 * resizes the drawing (INTER_LINEAR) to this size for image_resolution.
 */
export function controlNetAuxSize(width: number, height: number, resolution: number): { width: number; height: number } {
  const k = resolution / Math.min(width, height);
  return { width: cvRound((width * k) / 64) * 64, height: cvRound((height * k) / 64) * 64 };
}

/** The full conditioning image on black, as controlnet_aux's draw_pose (hands not drawn). */
export function drawPose(width: number, height: number, pose: PoseDrawing, options: { faces?: boolean } = {}): RgbImage {
  const canvas = drawBodyPose(blank(width, height), pose.bodies);
  if (options.faces && pose.faces) drawFacePose(canvas, pose.faces);
  return canvas;
}
