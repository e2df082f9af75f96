import { inArray, or, sql } from 'drizzle-orm';
import type { Db } from '../db/client.ts';
import { adapters, generations, photos } from '../db/schema.ts';
import type { BlobStore } from '../storage/storage.ts';
import type { AnyPgColumn } from 'drizzle-orm/pg-core';

/** A jsonb array column that holds any of `keys`. */
const hasAnyKey = (column: AnyPgColumn, keys: string[]) => sql`${column} ?| array[${sql.join(keys.map((key) => sql`${key}`), sql`, `)}]::text[]`;

/**
 * Deletes the blobs that no row refers to any more. Blobs are content-addressed, so two users' identical
 * photos share one file: a blob goes only when its last reference does.
 */
export async function deleteUnreferencedBlobs(db: Db, store: BlobStore, keys: Iterable<string>): Promise<number> {
  const candidates = [...new Set(keys)];
  if (candidates.length === 0) return 0;
  const stillUsed = new Set<string>();
  const photoRows = await db
    .select({ a: photos.storageKey, b: photos.cropKey })
    .from(photos)
    .where(or(inArray(photos.storageKey, candidates), inArray(photos.cropKey, candidates)));
  for (const row of photoRows) stillUsed.add(row.a).add(row.b);
  const adapterRows = await db
    .select({ key: adapters.fileKey, kohya: adapters.kohyaFileKey, samples: adapters.sampleKeys })
    .from(adapters)
    .where(or(inArray(adapters.fileKey, candidates), inArray(adapters.kohyaFileKey, candidates), hasAnyKey(adapters.sampleKeys, candidates)));
  for (const row of adapterRows) {
    if (row.key) stillUsed.add(row.key);
    if (row.kohya) stillUsed.add(row.kohya);
    for (const key of row.samples) stillUsed.add(key);
  }
  const generationRows = await db
    .select({ control: generations.controlKey, outputs: generations.outputKeys })
    .from(generations)
    .where(or(inArray(generations.controlKey, candidates), hasAnyKey(generations.outputKeys, candidates)));
  for (const row of generationRows) {
    if (row.control) stillUsed.add(row.control);
    for (const key of row.outputs) stillUsed.add(key);
  }
  const orphans = candidates.filter((key) => !stillUsed.has(key));
  await Promise.all(orphans.map((key) => store.delete(key)));
  return orphans.length;
}
