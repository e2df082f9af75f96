// Blob references: which content-addressed blobs rows still need, leases that protect a blob between storing it and
// committing the row that refers to it, and deletion that cannot race with either. Every writer that stores a blob
// for a row-to-be takes a lease; every delete of "unreferenced" blobs checks rows and leases under the same per-key
// advisory lock, so a blob is never deleted while another request is about to refer to it.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { and, gt, inArray, lte, or, sql } from 'drizzle-orm';
import type { AnyPgColumn } from 'drizzle-orm/pg-core';
import type { Db } from '../db/client.ts';
import { adapters, blobLeases, generations, jobs, photos, trainingPreviews } from '../db/schema.ts';
import { blobKey, type BlobStore, type PutResult } from '../storage/storage.ts';

/** How long a lease protects a blob when its holder never releases it (a crashed process); then the sweep may go. */
export const BLOB_LEASE_MS = 60 * 60 * 1000;

type Tx = Parameters<Parameters<Db['transaction']>[0]>[0];
/**
 * Where a lease is taken: the database, or the caller's open transaction. Inside a transaction the lease (and the
 * key's advisory lock) last until it commits, together with the row that refers to the blob, and the put needs no
 * second pooled connection while the caller holds one (30 parallel uploads once exhausted the pool that way).
 */
type Executor = Db | Tx;

/** A jsonb array column that holds any of `keys`. */
const hasAnyKey = (column: AnyPgColumn, keys: string[]) => sql`${column} ?| array[${sql.join(keys.map((key) => sql`${key}`), sql`, `)}]::text[]`;

/** Serializes everything that decides a blob's fate (lease, delete) per key, until the transaction ends. */
const lockSql = (key: string) => sql`select pg_advisory_xact_lock(hashtextextended(${key}, 7))`;
const lockKey = (tx: Tx, key: string) => tx.execute(lockSql(key));

export interface LeasedBlob extends PutResult {
  leaseId: string;
}

async function sha256OfFile(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/**
 * Takes the key's lock, then inserts the lease, in one statement: the insert's one row comes from the lock's select,
 * so the lock is held first. In the caller's transaction the lock lasts until it commits; outside one, the
 * statement is its own transaction, as the lock-and-insert transaction it replaces was (three round trips fewer).
 */
async function takeLease(db: Executor, key: string): Promise<string> {
  const expiresAt = new Date(Date.now() + BLOB_LEASE_MS);
  const result = await db.execute<{ id: string }>(sql`with locked as (${lockSql(key)})
    insert into ${blobLeases} (key, expires_at) select ${key}::text, ${expiresAt}::timestamptz from locked returning id`);
  return result.rows[0]!.id;
}

/**
 * Stores bytes under a lease: until `releaseLeases` (after the referring row is committed) no delete can remove
 * them. The lease is taken before the bytes are written, so a delete that won the lock first has finished and the
 * write puts the file back.
 */
export async function putLeased(db: Executor, store: BlobStore, bytes: Buffer, ext: string): Promise<LeasedBlob> {
  return underLease(db, blobKey(createHash('sha256').update(bytes).digest('hex'), ext), () => store.put(bytes, ext));
}

/** putLeased for a file another process wrote (an engine output). */
export async function putFileLeased(db: Executor, store: BlobStore, path: string, ext: string): Promise<LeasedBlob> {
  return underLease(db, blobKey(await sha256OfFile(path), ext), () => store.putFile(path, ext));
}

/** A put that fails (a full disk) gives its lease back: the caller never learns its id, so nothing else would. */
async function underLease(db: Executor, key: string, put: () => Promise<PutResult>): Promise<LeasedBlob> {
  const leaseId = await takeLease(db, key);
  try {
    return { ...(await put()), leaseId };
  } catch (error) {
    await releaseLeases(db, [leaseId]).catch(() => undefined);
    throw error;
  }
}

export async function releaseLeases(db: Executor, leaseIds: Iterable<string>): Promise<void> {
  const ids = [...leaseIds];
  if (ids.length > 0) await db.delete(blobLeases).where(inArray(blobLeases.id, ids));
}

/** The subset of `keys` that some row (photo, adapter, generation, checkpoint, preview) or a live lease still needs. */
async function keysInUse(tx: Tx, keys: string[]): Promise<Set<string>> {
  const used = new Set<string>();
  const photoRows = await tx
    .select({ a: photos.storageKey, b: photos.cropKey })
    .from(photos)
    .where(or(inArray(photos.storageKey, keys), inArray(photos.cropKey, keys)));
  for (const row of photoRows) used.add(row.a).add(row.b);
  const adapterRows = await tx
    .select({ key: adapters.fileKey, kohya: adapters.kohyaFileKey, samples: adapters.sampleKeys })
    .from(adapters)
    .where(or(inArray(adapters.fileKey, keys), inArray(adapters.kohyaFileKey, keys), hasAnyKey(adapters.sampleKeys, keys)));
  for (const row of adapterRows) {
    if (row.key) used.add(row.key);
    if (row.kohya) used.add(row.kohya);
    for (const key of row.samples) used.add(key);
  }
  const generationRows = await tx
    .select({ control: generations.controlKey, outputs: generations.outputKeys })
    .from(generations)
    .where(or(inArray(generations.controlKey, keys), hasAnyKey(generations.outputKeys, keys)));
  for (const row of generationRows) {
    if (row.control) used.add(row.control);
    for (const key of row.outputs) used.add(key);
  }
  const checkpointRows = await tx.select({ key: jobs.checkpointKey }).from(jobs).where(inArray(jobs.checkpointKey, keys));
  for (const row of checkpointRows) if (row.key) used.add(row.key);
  const previewRows = await tx.select({ key: trainingPreviews.key }).from(trainingPreviews).where(inArray(trainingPreviews.key, keys));
  for (const row of previewRows) used.add(row.key);
  const leased = await tx.select({ key: blobLeases.key }).from(blobLeases).where(and(inArray(blobLeases.key, keys), gt(blobLeases.expiresAt, new Date())));
  for (const row of leased) used.add(row.key);
  return used;
}

/**
 * Deletes the blobs that no row refers to and no live lease protects. Blobs are content-addressed, so two users'
 * identical photos share one file: a blob goes only when its last reference does. Each key is decided under its
 * lock, in the same transaction that checks the references.
 */
export async function deleteUnreferencedBlobs(db: Db, store: BlobStore, keys: Iterable<string>): Promise<number> {
  let deleted = 0;
  for (const key of new Set(keys)) {
    const gone = await db.transaction(async (tx) => {
      await lockKey(tx, key);
      if ((await keysInUse(tx, [key])).has(key)) return false;
      await store.delete(key);
      return true;
    });
    if (gone) deleted += 1;
  }
  return deleted;
}

/** Drops leases whose holder never released them (it crashed) and deletes the blobs nothing else needs. */
export async function sweepExpiredLeases(db: Db, store: BlobStore): Promise<number> {
  const expired = await db.delete(blobLeases).where(lte(blobLeases.expiresAt, new Date())).returning({ key: blobLeases.key });
  return deleteUnreferencedBlobs(db, store, expired.map((row) => row.key));
}

/** Releases a lease and deletes the blob if the row that was to refer to it was never written (a lost race). */
export async function abandonLeased(db: Db, store: BlobStore, blobs: Iterable<LeasedBlob | undefined>): Promise<void> {
  const list = [...blobs].filter((b): b is LeasedBlob => b !== undefined);
  await releaseLeases(db, list.map((b) => b.leaseId));
  await deleteUnreferencedBlobs(db, store, list.map((b) => b.key));
}
