// BlobStore on an S3-compatible object store (AWS S3, SeaweedFS, MinIO, …): the object key is the blob key, so the
// bucket has the same <2 hex>/<sha256>.<ext> layout as the local store's folder.
//
// Puts are idempotent: a HEAD first, and a put of content already stored is a no-op. Files are streamed (never read
// whole into memory) and staged in the local cache folder first, so the hash is of the bytes actually uploaded and the
// staged copy becomes the cached copy. localPath() serves engines on any machine from that cache: content never
// changes under a key, so a cached file is never stale; it is still checked against the bucket (one HEAD) so a
// deleted blob is not served from a cache and its cached copy goes too.
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import * as fs from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  CreateBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { TEMP_PREFIX, errCode, ingestFile, keyPath, removeQuietly, sha256OfFile, tempPath } from './files.ts';
import { BlobNotFoundError, blobKey, normalizeExt, parseKey, type BlobStore, type PutFileOptions, type PutResult } from './storage.ts';

export interface S3StoreOptions {
  bucket: string;
  region: string;
  /** Custom endpoint (SeaweedFS, MinIO, …); unset: AWS. */
  endpoint?: string;
  /** Credentials; unset: the SDK's default chain (environment, profile, instance role). */
  accessKeyId?: string;
  secretAccessKey?: string;
  /** `endpoint/bucket/key` URLs instead of `bucket.endpoint/key` (most self-hosted servers need this). */
  forcePathStyle: boolean;
  /** Local folder for staged uploads and the read cache behind localPath(). */
  cacheDir: string;
}

/** No such object (a HEAD's 404 has no body, so it cannot tell a missing bucket apart; ensureBucket runs first). */
const isNotFound = (err: unknown) =>
  err instanceof S3ServiceException && err.name !== 'NoSuchBucket' && (err.$metadata.httpStatusCode === 404 || err.name === 'NoSuchKey');

export class S3BlobStore implements BlobStore {
  readonly client: S3Client;
  readonly bucket: string;
  readonly cacheDir: string;

  constructor(options: S3StoreOptions) {
    this.bucket = options.bucket;
    this.cacheDir = path.resolve(options.cacheDir);
    this.client = new S3Client({
      region: options.region,
      endpoint: options.endpoint,
      forcePathStyle: options.forcePathStyle,
      credentials: options.accessKeyId && options.secretAccessKey
        ? { accessKeyId: options.accessKeyId, secretAccessKey: options.secretAccessKey }
        : undefined,
      // Checksums only where an operation requires them: self-hosted servers differ in the flexible-checksum
      // (aws-chunked trailer) support the SDK otherwise uses on every put; the content hash is checked by us.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
  }

  /** Creates the bucket unless it exists (another process creating it at the same moment is fine). */
  async ensureBucket(): Promise<void> {
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }));
      return;
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    try {
      await this.client.send(new CreateBucketCommand({ Bucket: this.bucket }));
    } catch (err) {
      if (!(err instanceof S3ServiceException && ['BucketAlreadyOwnedByYou', 'BucketAlreadyExists'].includes(err.name))) throw err;
    }
  }

  /** The read cache's file for a key (validated); it may not exist. */
  cachePathFor(key: string): string {
    return keyPath(this.cacheDir, key);
  }

  async put(bytes: Buffer, ext: string): Promise<PutResult> {
    const sha256 = createHash('sha256').update(bytes).digest('hex');
    const key = blobKey(sha256, ext);
    const result = { key, bytes: bytes.length, sha256 };
    const size = await this.storedSize(key);
    if (size === bytes.length) return { ...result, created: false };
    return { ...result, created: await this.upload(key, bytes, bytes.length, sha256, size !== undefined) };
  }

  async putFile(source: string, ext: string, options: PutFileOptions = {}): Promise<PutResult> {
    const normalizedExt = normalizeExt(ext);
    await fs.mkdir(this.cacheDir, { recursive: true });
    // Staged in the cache folder: what is uploaded is exactly what was hashed, and the staged file is then cached.
    return ingestFile(source, tempPath(this.cacheDir), options, async (tmp) => {
      const [sha256, stat] = await Promise.all([sha256OfFile(tmp), fs.stat(tmp)]);
      const key = blobKey(sha256, normalizedExt);
      const size = await this.storedSize(key);
      const created = size !== stat.size && (await this.upload(key, createReadStream(tmp), stat.size, sha256, size !== undefined));
      await this.keepInCache(tmp, key);
      return { key, bytes: stat.size, sha256, created };
    });
  }

  async get(key: string): Promise<Buffer> {
    parseKey(key);
    try {
      const response = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }));
      return Buffer.from(await response.Body!.transformToByteArray());
    } catch (err) {
      if (isNotFound(err)) throw new BlobNotFoundError(key);
      throw err;
    }
  }

  async has(key: string): Promise<boolean> {
    parseKey(key);
    return (await this.storedSize(key)) !== undefined;
  }

  async delete(key: string): Promise<void> {
    parseKey(key);
    await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key })); // S3 answers 204 when missing too
    await removeQuietly(this.cachePathFor(key));
  }

  async localPath(key: string): Promise<string> {
    const cached = this.cachePathFor(key);
    const size = await this.storedSize(key);
    if (size === undefined) {
      await removeQuietly(cached); // deleted from the bucket (e.g. /forget): no copy of it stays here either
      throw new BlobNotFoundError(key);
    }
    const stat = await fs.stat(cached).catch((err: unknown) => {
      if (errCode(err) === 'ENOENT') return undefined;
      throw err;
    });
    if (stat?.isFile() && stat.size === size) return cached;
    await this.download(key, cached);
    return cached;
  }

  /**
   * Removes cached copies of blobs no longer in the bucket (deleted on another machine, e.g. by /forget, and not
   * asked for here since) and temp files older than `tempOlderThanMs` left by a crashed download or upload. One HEAD
   * per cached file: run it now and then, not per request. Returns how many files were removed.
   */
  async sweepCache(tempOlderThanMs = 60 * 60 * 1000): Promise<number> {
    const cutoff = Date.now() - tempOlderThanMs;
    let removed = 0;
    const entries = await fs.readdir(this.cacheDir, { recursive: true, withFileTypes: true }).catch((err: unknown) => {
      if (errCode(err) === 'ENOENT') return [];
      throw err;
    });
    for (const entry of entries) {
      if (!entry.isFile()) continue;
      const file = path.join(entry.parentPath, entry.name);
      const key = path.relative(this.cacheDir, file).split(path.sep).join('/');
      let gone: boolean;
      if (entry.name.startsWith(TEMP_PREFIX)) {
        const stat = await fs.stat(file).catch(() => undefined);
        gone = stat !== undefined && stat.mtimeMs < cutoff;
      } else {
        try {
          parseKey(key);
        } catch {
          continue; // not ours: leave it
        }
        gone = (await this.storedSize(key)) === undefined;
      }
      if (gone) {
        await removeQuietly(file);
        removed++;
      }
    }
    return removed;
  }

  /** Size of the stored object, or undefined when there is none. */
  private async storedSize(key: string): Promise<number | undefined> {
    try {
      const head = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }));
      return head.ContentLength;
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  /**
   * Uploads unless an object appeared under the key meanwhile (a concurrent put of the same bytes): returns whether
   * this call created it. `replace`: an object of the wrong size is there (not written by this store): overwrite it.
   */
  private async upload(key: string, body: Buffer | Readable, length: number, sha256: string, replace: boolean): Promise<boolean> {
    try {
      await this.client.send(new PutObjectCommand({
        Bucket: this.bucket,
        Key: key,
        Body: body,
        ContentLength: length,
        ContentType: 'application/octet-stream',
        // The server checks the bytes it received against the content hash and refuses a put that does not match.
        ChecksumSHA256: Buffer.from(sha256, 'hex').toString('base64'),
        IfNoneMatch: replace ? undefined : '*',
      }));
      return true;
    } catch (err) {
      if (err instanceof S3ServiceException && err.$metadata.httpStatusCode === 412) return false;
      throw err;
    }
  }

  /** Streams the object into a temp file, checks its hash against the key, then renames it into place. */
  private async download(key: string, cached: string): Promise<void> {
    const { sha256 } = parseKey(key);
    await fs.mkdir(path.dirname(cached), { recursive: true });
    const tmp = tempPath(path.dirname(cached));
    try {
      let body: Readable;
      try {
        body = (await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }))).Body as Readable;
      } catch (err) {
        if (isNotFound(err)) throw new BlobNotFoundError(key);
        throw err;
      }
      const hash = createHash('sha256');
      const hashing = new Transform({
        transform(chunk: Buffer, _encoding, done) {
          hash.update(chunk);
          done(null, chunk);
        },
      });
      await pipeline(body, hashing, createWriteStream(tmp, { flags: 'wx', mode: 0o644 }));
      const got = hash.digest('hex');
      if (got !== sha256) throw new Error(`Blob ${key} downloaded with sha256 ${got}: the stored object is corrupt`);
      await fs.rename(tmp, cached); // atomic: readers see the whole file or none; equal bytes if two raced
    } finally {
      await removeQuietly(tmp);
    }
  }

  /** Gives a staged upload its cache name (a hard link, so the staged file can still be removed by the caller). */
  private async keepInCache(staged: string, key: string): Promise<void> {
    const cached = this.cachePathFor(key);
    await fs.mkdir(path.dirname(cached), { recursive: true });
    await fs.link(staged, cached).catch(async (err: unknown) => {
      if (errCode(err) === 'EEXIST') return;
      await fs.copyFile(staged, cached); // no hard links on this filesystem
    });
  }
}
