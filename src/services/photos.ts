import { and, asc, count, eq, or } from 'drizzle-orm';
import type { Db } from '../db/client.ts';
import { photos, users, type Photo } from '../db/schema.ts';
import type { BlobStore } from '../storage/storage.ts';
import { normalizeUpload, trainingCrop, ImageRejectedError } from '../images/normalize.ts';
import type { Config } from '../config/index.ts';
import type { CoverageSummary, FaceMeasures, VisionService } from '../vision/index.ts';
import { UserFacingError, notFound } from './errors.ts';
import { metrics } from '../metrics.ts';
import { abandonLeased, putLeased, releaseLeases, type LeasedBlob, deleteUnreferencedBlobs } from './blobs.ts';

export type PhotoUploadResult =
  /** faceChecked is false when the face models are not installed (the tiny playground): only format checks ran. */
  | { ok: true; photo: Photo; duplicate: boolean; total: number; faceChecked: boolean }
  | { ok: false; code: string; message: string; details: Record<string, string | number> };

export class PhotoService {
  constructor(
    private readonly db: Db,
    private readonly store: BlobStore,
    private readonly config: Config,
    private readonly vision: VisionService,
  ) {}

  /**
   * Checks and stores one uploaded photo; a rejected photo leaves nothing behind. The limit is checked twice: up
   * front (no decode for a full set), and under a lock on the user's row together with the insert, so parallel
   * uploads cannot all pass the first check and store more than the limit.
   */
  async add(userId: string, bytes: Buffer, originalName?: string): Promise<PhotoUploadResult> {
    const result = await this.checkAndStore(userId, bytes, originalName);
    metrics.photoVerdict(result.ok ? (result.duplicate ? 'duplicate' : 'accepted') : result.code);
    return result;
  }

  private async checkAndStore(userId: string, bytes: Buffer, originalName?: string): Promise<PhotoUploadResult> {
    const max = this.config.photos.maxPerUser;
    const full = () => reject(new UserFacingError('too_many_photos', `You already have ${max} photos — the most a training uses. Delete some to add others.`, { max }));
    // One read of the person's photos serves the up-front limit, the same-file check and the near-duplicate check.
    const mine = await this.db.select().from(photos).where(eq(photos.userId, userId)).orderBy(asc(photos.createdAt));
    const earlier = mine.filter((p) => p.status === 'accepted');
    const total = earlier.length;
    if (total >= max) return full();
    let normalized;
    try {
      normalized = await normalizeUpload(bytes, {
        maxBytes: this.config.photos.maxUploadBytes,
        maxPixels: this.config.photos.maxPixels,
        minShortSide: this.config.photos.minShortSide,
      });
    } catch (error) {
      if (error instanceof ImageRejectedError) return reject(error);
      throw error;
    }
    const existing = mine.find((p) => p.sha256 === normalized.sha256);
    if (existing) return { ok: true, photo: existing, duplicate: true, total, faceChecked: existing.faceMeasures !== null };

    const known = earlier.flatMap((p, i) => (p.phash ? [{ index: i + 1, phash: p.phash, embedding: p.embedding ?? undefined }] : []));
    // The pixels the stored JPEG was encoded from serve the checks (hash, faces) and the centred crop: no decode of it.
    const image = normalized.pixels;
    const check = await this.vision.checkUpload(normalized.data, known, image);
    if (!check.verdict.ok) return reject(check.verdict);
    // The face-centred crop when a face was found; a centred square when the face models are not installed.
    const crop = check.crop ?? (await trainingCrop(normalized.data, this.config.training.resolution, image));
    // Leased until the photo row has committed: content-addressed blobs may be shared with a photo being deleted.
    const stored: LeasedBlob[] = [];
    try {
      const result = await this.db.transaction(async (tx): Promise<PhotoUploadResult> => {
        // Serializes this user's uploads from here to the commit (the pattern TrainingService.start uses).
        const [owner] = await tx.select({ id: users.id }).from(users).where(eq(users.id, userId)).for('update');
        if (!owner) throw notFound('User');
        // One read for the limit and the same-file check: the accepted photos and any row of the same bytes.
        const current = await tx.select().from(photos)
          .where(and(eq(photos.userId, userId), or(eq(photos.status, 'accepted'), eq(photos.sha256, normalized.sha256))));
        const now = current.filter((p) => p.status === 'accepted').length;
        if (now >= max) return full();
        const same = current.find((p) => p.sha256 === normalized.sha256);
        if (same) return { ok: true, photo: same, duplicate: true, total: now, faceChecked: same.faceMeasures !== null };
        const original = await putLeased(tx, this.store, normalized.data, 'jpg');
        stored.push(original);
        const cropped = await putLeased(tx, this.store, crop, 'png');
        stored.push(cropped);
        const [photo] = await tx
          .insert(photos)
          .values({
            userId,
            sha256: normalized.sha256,
            storageKey: original.key,
            cropKey: cropped.key,
            width: normalized.width,
            height: normalized.height,
            bytes: normalized.bytes,
            sourceFormat: normalized.sourceFormat,
            originalName: originalName?.slice(0, 255),
            phash: check.phash,
            embedding: check.embedding ? [...check.embedding] : null,
            faceMeasures: check.measures ? { ...check.measures } : null,
          })
          .returning();
        return { ok: true, photo: photo!, duplicate: false, total: now + 1, faceChecked: check.faceCheckRun };
      });
      await releaseLeases(this.db, stored.map((b) => b.leaseId));
      return result;
    } catch (error) {
      // Nothing was committed: the files written for it go too (unless another row shares the content).
      await abandonLeased(this.db, this.store, stored);
      throw error;
    }
  }

  list(userId: string): Promise<Photo[]> {
    return this.db.select().from(photos).where(and(eq(photos.userId, userId), eq(photos.status, 'accepted'))).orderBy(asc(photos.createdAt));
  }

  /**
   * What the set covers (angles, framing, light) and what to add before training, from the faces measured at
   * upload, for the accepted photos the caller has read (list(): one read serves the count and this). Undefined
   * when no photo was measured (the face models are not installed).
   */
  coverageOf(accepted: readonly Photo[]): CoverageSummary | undefined {
    const measured = accepted.flatMap((p) =>
      p.faceMeasures ? [{ measures: p.faceMeasures as unknown as FaceMeasures, imageLongSide: Math.max(p.width, p.height) }] : []);
    if (measured.length === 0) return undefined;
    return this.vision.coverage(measured, this.config.photos.minForTraining);
  }

  async count(userId: string): Promise<number> {
    const [row] = await this.db.select({ n: count() }).from(photos).where(and(eq(photos.userId, userId), eq(photos.status, 'accepted')));
    return row?.n ?? 0;
  }

  async remove(userId: string, photoId: string): Promise<void> {
    const deleted = await this.db
      .delete(photos)
      .where(and(eq(photos.userId, userId), eq(photos.id, photoId)))
      .returning({ original: photos.storageKey, crop: photos.cropKey });
    if (deleted.length === 0) throw notFound('Photo');
    await deleteUnreferencedBlobs(this.db, this.store, deleted.flatMap((row) => [row.original, row.crop]));
  }
}

function reject(error: { code: string; message: string; details?: Record<string, string | number>; detected?: string }): PhotoUploadResult {
  // What a refused file was sniffed as (text, a web page, HEIC…) lets every language say it, not only the English message.
  const details: Record<string, string | number> = { ...error.details };
  if (error.detected) details.detected = error.detected;
  return { ok: false, code: error.code, message: error.message, details };
}
