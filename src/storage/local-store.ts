// BlobStore on a local folder: <root>/<2 hex>/<sha256>.<ext>.
//
// Writes are atomic: bytes go to a temp file (".tmp-…") in the destination folder, are fsynced, and are then
// hard-linked to the real name (which fails if the name exists, so concurrent writers of the same bytes agree on who
// created it), with a rename as fallback on filesystems without hard links. The folder is fsynced so the new name
// survives a crash. A crash therefore leaves at worst a stray ".tmp-…" file, never a half-written blob under a real
// key; sweepTemp() removes old strays.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs/promises';
import path from 'node:path';
import { TEMP_PREFIX, errCode, ingestFile, keyPath, removeQuietly, sha256OfFile, tempPath } from './files.ts';
import {
  BlobNotFoundError,
  blobKey,
  normalizeExt,
  type BlobStore,
  type PutFileOptions,
  type PutResult,
} from './storage.ts';

export { TEMP_PREFIX };

/** Make a directory entry change (create/rename/link) durable. Not every platform can fsync a folder: best effort. */
async function fsyncDir(dir: string): Promise<void> {
  let fh: fs.FileHandle | undefined;
  try {
    fh = await fs.open(dir, 'r');
    await fh.sync();
  } catch (err) {
    if (!['EISDIR', 'EPERM', 'EINVAL', 'EBADF', 'EACCES'].includes(errCode(err) ?? '')) throw err;
  } finally {
    await fh?.close();
  }
}

async function fsyncFile(file: string): Promise<void> {
  const fh = await fs.open(file, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export class LocalBlobStore implements BlobStore {
  /** Absolute path of the store's folder. */
  readonly root: string;

  constructor(rootDir: string) {
    this.root = path.resolve(rootDir);
  }

  /** Absolute path for a key (validated); the file may not exist. */
  pathFor(key: string): string {
    return keyPath(this.root, key);
  }

  async put(bytes: Buffer, ext: string): Promise<PutResult> {
    const sha256 = createHash('sha256').update(bytes).digest('hex');
    const key = blobKey(sha256, ext);
    const final = this.pathFor(key);
    const result = { key, bytes: bytes.length, sha256 };
    if (await this.isStored(final, bytes.length)) return { ...result, created: false };

    const dir = await this.ensureDir(path.dirname(final));
    const tmp = tempPath(dir);
    try {
      const fh = await fs.open(tmp, 'wx', 0o644);
      try {
        await fh.writeFile(bytes);
        await fh.sync();
      } finally {
        await fh.close();
      }
      return { ...result, created: await this.commit(tmp, final, bytes.length) };
    } finally {
      await removeQuietly(tmp);
    }
  }

  async putFile(source: string, ext: string, options: PutFileOptions = {}): Promise<PutResult> {
    const normalizedExt = normalizeExt(ext);
    await this.ensureDir(this.root);
    // Staged inside the store (same filesystem as its final place).
    return ingestFile(source, tempPath(this.root), options, async (tmp) => {
      await fs.chmod(tmp, 0o644);
      await fsyncFile(tmp);
      const [sha256, stat] = await Promise.all([sha256OfFile(tmp), fs.stat(tmp)]);
      const key = blobKey(sha256, normalizedExt);
      const final = this.pathFor(key);
      let created = false;
      if (!(await this.isStored(final, stat.size))) {
        await this.ensureDir(path.dirname(final));
        created = await this.commit(tmp, final, stat.size);
      }
      return { key, bytes: stat.size, sha256, created };
    });
  }

  async get(key: string): Promise<Buffer> {
    const file = this.pathFor(key);
    try {
      return await fs.readFile(file);
    } catch (err) {
      if (errCode(err) === 'ENOENT' || errCode(err) === 'EISDIR') throw new BlobNotFoundError(key);
      throw err;
    }
  }

  async has(key: string): Promise<boolean> {
    const file = this.pathFor(key);
    try {
      return (await fs.stat(file)).isFile();
    } catch (err) {
      if (errCode(err) === 'ENOENT') return false;
      throw err;
    }
  }

  async delete(key: string): Promise<void> {
    await removeQuietly(this.pathFor(key));
  }

  async localPath(key: string): Promise<string> {
    if (!(await this.has(key))) throw new BlobNotFoundError(key);
    return this.pathFor(key);
  }

  /**
   * Remove temp files left by crashed writers, older than `olderThanMs` (default one hour, so writes in progress are
   * never touched). Returns how many were removed.
   */
  async sweepTemp(olderThanMs = 60 * 60 * 1000): Promise<number> {
    const cutoff = Date.now() - olderThanMs;
    let removed = 0;
    const dirs = [this.root];
    try {
      for (const entry of await fs.readdir(this.root, { withFileTypes: true })) {
        if (entry.isDirectory() && /^[0-9a-f]{2}$/.test(entry.name)) dirs.push(path.join(this.root, entry.name));
      }
    } catch (err) {
      if (errCode(err) === 'ENOENT') return 0;
      throw err;
    }
    for (const dir of dirs) {
      for (const name of await fs.readdir(dir)) {
        if (!name.startsWith(TEMP_PREFIX)) continue;
        const file = path.join(dir, name);
        try {
          if ((await fs.stat(file)).mtimeMs < cutoff) {
            await fs.unlink(file);
            removed++;
          }
        } catch (err) {
          if (errCode(err) !== 'ENOENT') throw err;
        }
      }
    }
    return removed;
  }

  private async isStored(file: string, size: number): Promise<boolean> {
    try {
      const st = await fs.stat(file);
      return st.isFile() && st.size === size;
    } catch (err) {
      if (errCode(err) === 'ENOENT') return false;
      throw err;
    }
  }

  /** mkdir -p, fsyncing the parent of the first folder created so the new folder itself is durable. */
  private async ensureDir(dir: string): Promise<string> {
    const first = await fs.mkdir(dir, { recursive: true });
    if (first !== undefined) await fsyncDir(path.dirname(first));
    return dir;
  }

  /** Give the complete, fsynced temp file its real name. Returns whether this call created the blob. */
  private async commit(tmp: string, final: string, size: number): Promise<boolean> {
    try {
      await fs.link(tmp, final); // atomic, and never replaces an existing blob
    } catch (err) {
      const code = errCode(err);
      if (code === 'EEXIST') {
        if (await this.isStored(final, size)) return false; // someone stored the same bytes first
        // A file of the wrong size under a content key was not written by this store: replace it.
        await fs.rename(tmp, final);
      } else if (code === 'EPERM' || code === 'ENOTSUP' || code === 'ENOSYS' || code === 'EMLINK' || code === 'EOPNOTSUPP') {
        // No hard links here (some network/FUSE filesystems): rename is atomic too, but may replace an equal blob.
        const existed = await this.isStored(final, size);
        await fs.rename(tmp, final);
        await fsyncDir(path.dirname(final));
        return !existed;
      } else {
        throw err;
      }
    }
    await fsyncDir(path.dirname(final));
    return true;
  }
}
