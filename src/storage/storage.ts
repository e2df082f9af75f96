// Content-addressed blob storage: photos, training crops, LoRA files and generated images are stored under the
// sha256 of their bytes. A key is `${sha256.slice(0, 2)}/${sha256}.${ext}`, so the same bytes always get the same key,
// a stored blob never changes, and keys are safe to use as relative paths on any backend.

export interface PutResult {
  key: string;
  /** Size in bytes. */
  bytes: number;
  /** Hex sha256 of the bytes. */
  sha256: string;
  /** false when the blob was already stored (same bytes, same key). */
  created: boolean;
}

export interface PutFileOptions {
  /**
   * Move the file into the store instead of copying it (the source path is gone afterwards). Falls back to
   * copy-then-delete across filesystems. Default false: the source is left as it was.
   */
  move?: boolean;
}

export interface BlobStore {
  /** Store bytes; idempotent. `ext` is the extension without the dot (e.g. 'jpg', 'png', 'safetensors'). */
  put(bytes: Buffer, ext: string): Promise<PutResult>;
  /**
   * Ingest a file another process wrote (e.g. an engine output): hashed and copied (or moved) into place with the
   * same guarantees as put(), without the caller reading it into memory. The hash is of the bytes as stored.
   */
  putFile(path: string, ext: string, options?: PutFileOptions): Promise<PutResult>;
  /** The blob's bytes; throws BlobNotFoundError if there is none. */
  get(key: string): Promise<Buffer>;
  has(key: string): Promise<boolean>;
  /** Remove the blob; no error if it is missing. */
  delete(key: string): Promise<void>;
  /**
   * An absolute path a local process (the Python engine) can read the blob from; throws BlobNotFoundError if there is
   * none. For the local store this is the stored file itself: treat it as read-only. A remote store (S3-compatible)
   * downloads the blob into a local cache folder and returns the cached file's path; since content never changes
   * under a key, a cached copy never goes stale.
   */
  localPath(key: string): Promise<string>;
  /**
   * Remote stores only: drop cached copies of blobs deleted elsewhere and stray temp files; returns how many files
   * went. The worker runs it now and then.
   */
  sweepCache?(): Promise<number>;
}

export const KEY_PATTERN = /^([0-9a-f]{2})\/([0-9a-f]{64})\.([a-z0-9]{1,16})$/;
const EXT_PATTERN = /^[a-z0-9]{1,16}$/;

export class InvalidBlobKeyError extends Error {
  override readonly name = 'InvalidBlobKeyError';
  constructor(readonly key: string, reason: string) {
    super(`Invalid blob key ${JSON.stringify(key)}: ${reason}`);
  }
}

export class BlobNotFoundError extends Error {
  override readonly name = 'BlobNotFoundError';
  readonly code = 'ENOENT';
  constructor(readonly key: string) {
    super(`No blob stored under key ${JSON.stringify(key)}`);
  }
}

/** Lower-case the extension and drop one leading dot; throws on anything but 1–16 letters/digits. */
export function normalizeExt(ext: string): string {
  const e = (ext.startsWith('.') ? ext.slice(1) : ext).toLowerCase();
  if (!EXT_PATTERN.test(e)) {
    throw new RangeError(`Invalid blob extension ${JSON.stringify(ext)}: use 1–16 letters or digits, e.g. 'jpg'`);
  }
  return e;
}

export function blobKey(sha256: string, ext: string): string {
  if (!/^[0-9a-f]{64}$/.test(sha256)) throw new RangeError(`Invalid sha256 ${JSON.stringify(sha256)}: expected 64 lower-case hex digits`);
  return `${sha256.slice(0, 2)}/${sha256}.${normalizeExt(ext)}`;
}

/** Throws InvalidBlobKeyError, with the reason, unless `key` is a well-formed content key. Returns its parts. */
export function parseKey(key: string): { sha256: string; ext: string } {
  if (typeof key !== 'string' || key.length === 0) throw new InvalidBlobKeyError(String(key), 'it is empty');
  if (key.includes('\0')) throw new InvalidBlobKeyError(key, 'it contains a NUL byte');
  if (key.startsWith('/') || key.includes('\\') || /^[a-zA-Z]:/.test(key)) {
    throw new InvalidBlobKeyError(key, 'it must be a relative path with forward slashes, not an absolute path');
  }
  if (key.split('/').some((part) => part === '..' || part === '.')) {
    throw new InvalidBlobKeyError(key, "it must not contain '..' or '.' segments");
  }
  const m = KEY_PATTERN.exec(key);
  if (!m) throw new InvalidBlobKeyError(key, "expected '<first 2 hex of sha256>/<64 hex sha256>.<ext>'");
  const [, prefix, sha256, ext] = m;
  if (!sha256 || !ext || prefix !== sha256.slice(0, 2)) {
    throw new InvalidBlobKeyError(key, 'the folder must be the first two hex digits of the sha256');
  }
  return { sha256, ext };
}

/** Whether an error is the storage filesystem (or quota) being full: the person is told so, not "something went wrong". */
export function isStorageFull(error: unknown): boolean {
  for (let e = error as { code?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 5; e = e.cause as typeof e, depth++) {
    if (e.code === 'ENOSPC' || e.code === 'EDQUOT') return true;
  }
  return false;
}
