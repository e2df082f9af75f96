import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { eq } from 'drizzle-orm';
import type { Db } from '../db/client.ts';
import { adapters, chatTargets, generations, jobs, photos, trainingPreviews, users } from '../db/schema.ts';
import type { BlobStore } from '../storage/storage.ts';
import type { JobQueues } from '../queue/index.ts';
import type { Config } from '../config/index.ts';
import { queueOf } from './jobs.ts';
import type { JobState } from './job-state.ts';
import type { LimitService } from './limits.ts';
import { deleteUnreferencedBlobs } from './blobs.ts';

export interface Forgotten { photos: number; adapters: number; generations: number; files: number }

/**
 * `/forget`: stops the user's jobs and deletes every row, file and Redis key about them. Open jobs are cancelled
 * through JobState first, so a worker finishing one of them at this moment cannot complete it: it discards what it
 * made (see worker/processors.ts), and nothing it stores outlives the user.
 */
export class ForgetService {
  constructor(
    private readonly db: Db,
    private readonly store: BlobStore,
    private readonly queues: JobQueues,
    private readonly state: JobState,
    private readonly limits: LimitService,
    private readonly config: Config,
  ) {}

  async forget(userId: string): Promise<Forgotten> {
    const userJobs = await this.db.select({ id: jobs.id, kind: jobs.kind, status: jobs.status, checkpoint: jobs.checkpointKey }).from(jobs).where(eq(jobs.userId, userId));
    // The chats' deliveries go before the cancels: a cancel the notifier saw while the rows still stood was
    // delivered as a plain "cancelled"; with no delivery left it ends the status message with the forget line.
    await this.db.delete(chatTargets).where(eq(chatTargets.userId, userId));
    for (const job of userJobs.filter((j) => j.status === 'queued' || j.status === 'active')) {
      await this.state.cancel(job.id, 'Deleted with all your data.');
      const removed = await this.queues.removeWaiting(queueOf(job.kind), job.id);
      if (!removed) await this.queues.requestCancel(job.id);
    }
    const photoRows = await this.db.select({ a: photos.storageKey, b: photos.cropKey }).from(photos).where(eq(photos.userId, userId));
    const adapterRows = await this.db
      .select({ key: adapters.fileKey, kohya: adapters.kohyaFileKey, samples: adapters.sampleKeys })
      .from(adapters)
      .where(eq(adapters.userId, userId));
    const generationRows = await this.db
      .select({ control: generations.controlKey, outputs: generations.outputKeys })
      .from(generations)
      .where(eq(generations.userId, userId));
    const previewRows = await this.db.select({ key: trainingPreviews.key }).from(trainingPreviews).where(eq(trainingPreviews.userId, userId));
    const keys = [
      ...photoRows.flatMap((r) => [r.a, r.b]),
      ...adapterRows.flatMap((r) => [r.key, r.kohya, ...r.samples].filter((key): key is string => key !== null)),
      ...generationRows.flatMap((r) => [...(r.control ? [r.control] : []), ...r.outputs]),
      ...userJobs.flatMap((j) => (j.checkpoint ? [j.checkpoint] : [])),
      ...previewRows.map((r) => r.key),
    ];
    // Rows first (one cascade), files after: a crash in between leaves orphan files, never rows without files.
    await this.db.delete(users).where(eq(users.id, userId));
    const files = await deleteUnreferencedBlobs(this.db, this.store, keys);
    // What names the person outside Postgres and storage: limit keys, queue records, engine scratch folders.
    await this.limits.forget(userId);
    for (const queue of ['train', 'generate'] as const) {
      await this.queues.removeRecords(queue, userJobs.filter((j) => queueOf(j.kind) === queue).map((j) => j.id));
    }
    await Promise.all(userJobs.map((j) => rm(join(this.config.workDir, queueOf(j.kind), j.id), { recursive: true, force: true })));
    return { photos: photoRows.length, adapters: adapterRows.length, generations: generationRows.length, files };
  }
}
