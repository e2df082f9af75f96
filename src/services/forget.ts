import { eq } from 'drizzle-orm';
import type { Db } from '../db/client.ts';
import { adapters, generations, photos, users } from '../db/schema.ts';
import type { BlobStore } from '../storage/storage.ts';
import type { JobQueues } from '../queue/index.ts';
import { queueOf, type JobService } from './jobs.ts';
import { deleteUnreferencedBlobs } from './blobs.ts';

export interface Forgotten { photos: number; adapters: number; generations: number; files: number }

/** `/forget`: stops the user's jobs and deletes every row and file about them. */
export class ForgetService {
  constructor(
    private readonly db: Db,
    private readonly store: BlobStore,
    private readonly queues: JobQueues,
    private readonly jobs: JobService,
  ) {}

  async forget(userId: string): Promise<Forgotten> {
    for (const job of await this.jobs.open(userId)) {
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
    const keys = [
      ...photoRows.flatMap((r) => [r.a, r.b]),
      ...adapterRows.flatMap((r) => [r.key, r.kohya, ...r.samples].filter((key): key is string => key !== null)),
      ...generationRows.flatMap((r) => [...(r.control ? [r.control] : []), ...r.outputs]),
    ];
    // Rows first (one cascade), files after: a crash in between leaves orphan files, never rows without files.
    await this.db.delete(users).where(eq(users.id, userId));
    const files = await deleteUnreferencedBlobs(this.db, this.store, keys);
    return { photos: photoRows.length, adapters: adapterRows.length, generations: generationRows.length, files };
  }
}
