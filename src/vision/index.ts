// The CPU vision tier behind the services: face checks and crops for /train uploads, pose extraction for /pose,
// face embeddings for likeness. Models load lazily, once, from the configured folder; when a model file is
// missing the checks that need it are skipped and results say so (the tiny playground has no real weights).
import { existsSync } from 'node:fs';
import { basename, resolve } from 'node:path';
import { decodeRgb, encodePng, resizeArea, resizeBilinear, type RgbImage } from './raster.ts';
import { loadSession, releaseSessions } from './onnx.ts';
import { detectFaces, type Face } from './yunet.ts';
import { cosineSimilarity, embedFace, type EmbedderKind } from './sface.ts';
import { extractPose, poseForDrawing, type PoseResult } from './dwpose.ts';
import { controlNetAuxSize, drawPose } from './draw-openpose.ts';
import {
  checkPhoto, coverageSummary, DEFAULT_PHOTO_CHECKS, duplicateVerdict, findNearDuplicate, perceptualHash, trainingCropFromBox,
  type CoverageSummary, type FaceMeasures, type KnownPhoto, type PhotoCheckOptions, type PhotoVerdict,
} from './photo-checks.ts';

export const VISION_MODEL_FILES = {
  yunet: 'face_detection_yunet_2023mar.onnx',
  sface: 'face_recognition_sface_2021dec.onnx',
  arcface: 'arcface_w600k_r50.onnx',
  yolox: 'yolox_l.onnx',
  dwpose: 'dw-ll_ucoco_384.onnx',
} as const;
export type VisionModel = keyof typeof VISION_MODEL_FILES;

/** Installs every model the vision tier uses (YuNet, SFace, DWPose; no diffusion weights). */
export const VISION_SETUP_COMMAND = 'npm run models -- --cpu';

export interface VisionConfig {
  modelsDir: string;
  embedder: EmbedderKind;
  checks?: Partial<PhotoCheckOptions>;
}

export interface PhotoCheckResult {
  /** False when the face detector is not installed: only the picture-level checks (duplicates) ran. */
  faceCheckRun: boolean;
  verdict: PhotoVerdict | { ok: false; code: 'duplicate'; message: string; details: Record<string, number> } | { ok: true; code: 'not_checked'; message: string; details: Record<string, number> };
  phash: string;
  embedding?: Float32Array;
  measures?: FaceMeasures;
  /** The face-centred training crop (PNG), when the photo passed. */
  crop?: Buffer;
}

export type PoseOutcome =
  | { ok: true; pose: PoseResult; skeleton: Buffer }
  | { ok: false; code: 'no_person' | 'several_people' | 'pose_unavailable'; message: string; details: Record<string, number>; skeleton?: Buffer };

export class VisionService {
  private readonly checks: PhotoCheckOptions;

  constructor(private readonly config: VisionConfig) {
    this.checks = { ...DEFAULT_PHOTO_CHECKS, ...config.checks };
  }

  modelPath(model: VisionModel): string {
    return resolve(this.config.modelsDir, VISION_MODEL_FILES[model]);
  }

  /** Which models are in place, and which features they enable. */
  availability() {
    const has = (m: VisionModel) => existsSync(this.modelPath(m));
    const embedder = this.config.embedder;
    const models = Object.fromEntries((Object.keys(VISION_MODEL_FILES) as VisionModel[]).map((m) => [m, has(m)])) as Record<VisionModel, boolean>;
    return {
      models,
      faceChecks: models.yunet,
      pose: models.yolox && models.dwpose,
      likeness: models.yunet && models[embedder],
      missing: (['yunet', embedder, 'yolox', 'dwpose'] as VisionModel[]).filter((m) => !models[m]).map((m) => this.modelPath(m)),
    };
  }

  /**
   * What a client (the playground page) may be told: which checks run, which model files are missing (names only,
   * no server paths) and the command that installs them.
   */
  publicAvailability() {
    const { faceChecks, pose, likeness, models } = this.availability();
    const absent = (list: VisionModel[]) => list.filter((m) => !models[m]).map((m) => basename(this.modelPath(m)));
    return {
      faceChecks, pose, likeness,
      missing: { face: absent(['yunet', this.config.embedder]), pose: absent(['yolox', 'dwpose']) },
      setupCommand: VISION_SETUP_COMMAND,
    };
  }

  async faces(image: RgbImage): Promise<Face[]> {
    return detectFaces(await loadSession(this.modelPath('yunet')), image);
  }

  async embedding(image: RgbImage, face: Face): Promise<Float32Array> {
    return embedFace(await loadSession(this.modelPath(this.config.embedder)), image, face, this.config.embedder);
  }

  /**
   * Checks one upload against the person's earlier photos (`known`, with their 1-based positions). `image` is the
   * upload decoded, when the caller has it (decodeRgb(bytes)).
   */
  async checkUpload(bytes: Buffer, known: readonly KnownPhoto[] = [], image?: RgbImage): Promise<PhotoCheckResult> {
    image ??= await decodeRgb(bytes);
    const phash = perceptualHash(image);
    const available = this.availability();
    if (!available.faceChecks) {
      const dup = findNearDuplicate(phash, undefined, known, cosineSimilarity);
      if (dup) return { faceCheckRun: false, verdict: { ok: false, ...duplicateVerdict(dup) }, phash };
      return { faceCheckRun: false, phash, verdict: { ok: true, code: 'not_checked', message: 'Face check not run: the face detector model is not installed.', details: {} } };
    }
    const verdict = checkPhoto(image, await this.faces(image), this.checks);
    const embedding = verdict.ok && verdict.face && available.likeness ? await this.embedding(image, verdict.face) : undefined;
    const dup = findNearDuplicate(phash, embedding, known, cosineSimilarity);
    if (dup) return { faceCheckRun: true, verdict: { ok: false, ...duplicateVerdict(dup) }, phash, embedding, measures: verdict.measures };
    const crop = verdict.ok && verdict.crop ? await trainingCropFromBox(bytes, verdict.crop, this.checks.cropSize) : undefined;
    return { faceCheckRun: true, verdict, phash, embedding, measures: verdict.measures, crop };
  }

  coverage(items: readonly { measures: FaceMeasures; imageLongSide: number }[], minPhotos: number): CoverageSummary {
    return coverageSummary(items, minPhotos);
  }

  /**
   * /pose: exactly one person, skeleton drawn as ControlNet openpose expects (PNG). As controlnet_aux's
   * DWposeDetector: the picture resized to `detectResolution` on its short side (sides rounded to 64), the pose
   * detected and drawn there, the drawing resized to `imageResolution`. Drawn at a 12 MP photo's own size and
   * shrunk, the 4 px limbs would fall to under a pixel. `image` is the picture decoded, when the caller has it
   * (normalizeUpload's pixels): then `bytes` is not decoded again.
   */
  async pose(bytes: Buffer, { detectResolution = 512, imageResolution = detectResolution }: { detectResolution?: number; imageResolution?: number } = {}, decoded?: RgbImage): Promise<PoseOutcome> {
    if (!this.availability().pose) {
      return { ok: false, code: 'pose_unavailable', message: 'Pose extraction is not available: the DWPose models are not installed.', details: {} };
    }
    const image = decoded ?? await decodeRgb(bytes);
    const at = controlNetAuxSize(image.width, image.height, detectResolution);
    // controlnet_aux: INTER_AREA down, Lanczos up (bilinear here: the detector letterboxes the picture again anyway).
    const input = at.width === image.width && at.height === image.height ? image
      : at.width < image.width ? resizeArea(image, at.width, at.height) : resizeBilinear(image, at.width, at.height);
    const pose = await extractPose(await loadSession(this.modelPath('yolox')), await loadSession(this.modelPath('dwpose')), input);
    if (pose.people.length === 0) {
      return { ok: false, code: 'no_person', message: 'No person found in this picture — send a photo where one whole person is clearly visible.', details: {} };
    }
    let drawing = drawPose(at.width, at.height, poseForDrawing(pose), { faces: true });
    const out = controlNetAuxSize(at.width, at.height, imageResolution);
    if (out.width !== at.width || out.height !== at.height) drawing = resizeBilinear(drawing, out.width, out.height);
    const skeleton = await encodePng(drawing);
    if (pose.people.length > 1) {
      return { ok: false, code: 'several_people', message: `${pose.people.length} people in this picture — send one with just one person.`, details: { people: pose.people.length }, skeleton };
    }
    return { ok: true, pose, skeleton };
  }

  /**
   * Likeness of generated pictures to a held-out reference photo: cosine similarity of face embeddings per
   * picture (null where no face was found), and their mean over the pictures that had a face.
   */
  async likeness(reference: Buffer, generated: readonly Buffer[]): Promise<{ scores: (number | null)[]; mean: number | null }> {
    if (!this.availability().likeness) throw new Error(`likeness needs ${VISION_MODEL_FILES.yunet} and ${VISION_MODEL_FILES[this.config.embedder]} in ${this.config.modelsDir}`);
    const embed = async (bytes: Buffer) => {
      const image = await decodeRgb(bytes);
      const faces = await this.faces(image);
      const largest = faces.sort((a, b) => b.width * b.height - a.width * a.height)[0];
      return largest ? this.embedding(image, largest) : null;
    };
    const ref = await embed(reference);
    if (!ref) throw new Error('no face in the reference photo');
    const scores: (number | null)[] = [];
    for (const g of generated) {
      const e = await embed(g);
      scores.push(e ? cosineSimilarity(ref, e) : null);
    }
    const found = scores.filter((s): s is number => s !== null);
    return { scores, mean: found.length ? found.reduce((a, b) => a + b, 0) / found.length : null };
  }

  close(): Promise<void> {
    return releaseSessions();
  }
}

export { cosineSimilarity } from './sface.ts';
export type { Face } from './yunet.ts';
export type { KnownPhoto, CoverageSummary, PhotoVerdict, FaceMeasures } from './photo-checks.ts';
