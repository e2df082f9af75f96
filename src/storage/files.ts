// File helpers the BlobStores share: staging a file another process wrote (copied or moved) into a temp name, quiet
// removal, streamed hashing and temp names.
import { createHash, randomBytes } from 'node:crypto';
import { constants, createReadStream } from 'node:fs';
import * as fs from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { InvalidBlobKeyError, parseKey, type PutFileOptions, type PutResult } from './storage.ts';

export const TEMP_PREFIX = '.tmp-';

export function errCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err ? String((err as { code: unknown }).code) : undefined;
}

export async function removeQuietly(file: string): Promise<void> {
  try {
    await fs.unlink(file);
  } catch (err) {
    if (errCode(err) !== 'ENOENT') throw err;
  }
}

export async function sha256OfFile(file: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(file), hash);
  return hash.digest('hex');
}

export function tempPath(dir: string): string {
  return path.join(dir, `${TEMP_PREFIX}${process.pid}-${randomBytes(8).toString('hex')}`);
}

/**
 * putFile's common part: the source is moved (or, across filesystems or when not moving, copied) to `tmp`, and
 * `store(tmp)` stores it from there, so the hash is of the bytes as stored even if the writer touches its source
 * afterwards. With `move`, the source is gone after success and given back after a failure; `tmp` never stays.
 */
export async function ingestFile(source: string, tmp: string, options: PutFileOptions, store: (tmp: string) => Promise<PutResult>): Promise<PutResult> {
  let moved = false;
  try {
    if (options.move) {
      try {
        await fs.rename(source, tmp);
        moved = true;
      } catch (err) {
        if (errCode(err) !== 'EXDEV') throw err;
      }
    }
    if (!moved) await fs.copyFile(source, tmp, constants.COPYFILE_EXCL);
    const result = await store(tmp);
    if (options.move && !moved) await removeQuietly(source);
    moved = false; // stored: nothing to give back
    return result;
  } catch (err) {
    if (moved) await fs.rename(tmp, source).catch(() => undefined);
    throw err;
  } finally {
    await removeQuietly(tmp);
  }
}

/** The file for a (validated) key under a folder laid out like the bucket: `<root>/<2 hex>/<sha256>.<ext>`. */
export function keyPath(root: string, key: string): string {
  parseKey(key);
  const file = path.join(root, ...key.split('/'));
  if (!file.startsWith(root + path.sep)) throw new InvalidBlobKeyError(key, 'it resolves outside the store');
  return file;
}
