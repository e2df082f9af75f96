// Model downloads: resumable (HTTP Range onto a .part file), checked against the pinned sha256 before the file
// takes its final name, so a half-downloaded or tampered file is never used. Nothing here runs at request time.
// Nothing is deleted without being asked: a wrong file (found at the final name, or just downloaded) is renamed
// aside to `<name>.mismatch-<first 8 of its sha256>` and reported; `replace` deletes a wrong file found instead.
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs';
import { mkdir, open, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import type { ModelEntry, ModelFile } from './manifest.ts';

/** A file whose content is not the expected one: what it is, and where it is now. */
export interface WrongFile {
  sha256: string;
  bytes: number;
  /** Where the file was moved; null when it was deleted on request (`replace`). */
  keptAt: string | null;
}

const expectation = (sha256: string, bytes: number | undefined) => `sha256 ${sha256}${bytes === undefined ? '' : `, ${bytes.toLocaleString('en')} B`}`;

export function describeWrongFile(path: string, found: WrongFile, expected: { sha256: string; bytes?: number }, what = 'found'): string {
  return `${path}: ${what} ${found.bytes.toLocaleString('en')} B with sha256 ${found.sha256}; expected ${expectation(expected.sha256, expected.bytes)}. ` +
    (found.keptAt ? `Kept it as ${found.keptAt}.` : 'Deleted it (--replace).');
}

export class ChecksumError extends Error {
  constructor(readonly path: string, readonly expected: string, readonly actual: string, readonly download: WrongFile, expectedBytes?: number) {
    super(describeWrongFile(path, download, { sha256: expected, bytes: expectedBytes }, 'the download is'));
    this.name = 'ChecksumError';
  }
}

/** Renames a wrong file aside (never over a different file) and says where it went. */
async function setAside(path: string, target: string, sha256: string): Promise<WrongFile> {
  const bytes = statSync(path).size;
  const base = `${target}.mismatch-${sha256.slice(0, 8)}`;
  for (let n = 1; ; n++) {
    const keptAt = n === 1 ? base : `${base}-${n}`;
    if (!existsSync(keptAt)) {
      await rename(path, keptAt);
      return { sha256, bytes, keptAt };
    }
    // The same wrong file was set aside before: that copy stays, this one is its duplicate.
    if (await sha256File(keptAt) === sha256) {
      await rm(path);
      return { sha256, bytes, keptAt };
    }
  }
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

export type FileOutcome = {
  path: string;
  status: 'present' | 'downloaded' | 'resumed';
  sha256: string;
  verified: boolean;
  /** The wrong file that was at `path` before this download, and where it went. */
  replaced?: WrongFile;
};

export interface DownloadOptions {
  fetch?: typeof fetch;
  onProgress?: (path: string, received: number, total: number | undefined) => void;
  /** Delete a wrong file found at the final name instead of keeping it aside. */
  replace?: boolean;
  /** Told at once when a wrong file is found at the final name (before the download, which may still fail). */
  onWrongFile?: (message: string, found: WrongFile) => void;
}

/** Downloads one file into `dir` unless it is already there with the right digest. */
export async function downloadFile(file: ModelFile, dir: string, options: DownloadOptions = {}): Promise<FileOutcome> {
  const doFetch = options.fetch ?? fetch;
  const target = resolve(dir, file.path);
  const part = `${target}.part`;
  let replaced: WrongFile | undefined;
  if (existsSync(target)) {
    const sha256 = await sha256File(target);
    if (!file.sha256 || sha256 === file.sha256) return { path: target, status: 'present', sha256, verified: Boolean(file.sha256) };
    // Wrong content under the final name (placed by hand, an older release): keep it unless told to delete it.
    if (options.replace) {
      replaced = { sha256, bytes: statSync(target).size, keptAt: null };
      await rm(target);
    } else {
      replaced = await setAside(target, target, sha256);
    }
    options.onWrongFile?.(describeWrongFile(target, replaced, { sha256: file.sha256, bytes: file.bytes }), replaced);
  }
  await mkdir(dirname(target), { recursive: true });
  const have = existsSync(part) ? statSync(part).size : 0;
  const response = await doFetch(file.url, { headers: have > 0 ? { Range: `bytes=${have}-` } : {}, redirect: 'follow' });
  if (response.status === 416 && have > 0) {
    // The .part already holds the whole file.
  } else if (!response.ok || !response.body) {
    throw new Error(`${file.url}: HTTP ${response.status}`);
  }
  const resumed = response.status === 206;
  const handle = await open(part, resumed || response.status === 416 ? 'a' : 'w');
  let received = resumed ? have : 0;
  const length = Number(response.headers.get('content-length') ?? NaN);
  const total = Number.isFinite(length) ? received + length : file.bytes;
  try {
    if (response.status !== 416) {
      for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
        await handle.write(chunk);
        received += chunk.length;
        options.onProgress?.(file.path, received, total);
      }
    }
  } finally {
    await handle.close();
  }
  const sha256 = await sha256File(part);
  if (file.sha256 && sha256 !== file.sha256) {
    // Kept for inspection, but not as .part: a later run must not resume onto bad bytes.
    throw new ChecksumError(file.path, file.sha256, sha256, await setAside(part, target, sha256), file.bytes);
  }
  await rename(part, target);
  return { path: target, status: resumed ? 'resumed' : 'downloaded', sha256, verified: Boolean(file.sha256), ...(replaced ? { replaced } : {}) };
}

// ---- digests recorded on first download (files with no published digest) ----------------------------------------

export const RECORDED_DIGESTS_FILE = 'models-digests.json';

export interface RecordedDigest { sha256: string; bytes: number; url: string; recordedAt: string }

export function readRecordedDigests(dir: string): Record<string, RecordedDigest> {
  const path = resolve(dir, RECORDED_DIGESTS_FILE);
  return existsSync(path) ? JSON.parse(readFileSync(path, 'utf8')) as Record<string, RecordedDigest> : {};
}

/** The digest to check a file against: the pinned one, else the one recorded when it was first downloaded from
 * the same address (a record of another revision's file says nothing about this one). */
export function expectedDigest(file: ModelFile, recorded: Record<string, RecordedDigest>): { sha256?: string; source: 'pinned' | 'recorded' | 'none' } {
  if (file.sha256) return { sha256: file.sha256, source: 'pinned' };
  const r = recorded[file.path];
  return r && r.url === file.url ? { sha256: r.sha256, source: 'recorded' } : { source: 'none' };
}

export async function recordDigest(dir: string, file: ModelFile, sha256: string): Promise<void> {
  const all = readRecordedDigests(dir);
  all[file.path] = { sha256, bytes: statSync(resolve(dir, file.path)).size, url: file.url, recordedAt: new Date().toISOString() };
  await writeFile(resolve(dir, RECORDED_DIGESTS_FILE), `${JSON.stringify(all, null, 2)}\n`);
}

export interface MissingFile { entry: string; path: string; url: string; sha256?: string }

/** Files not (completely) in place, with where each must go. */
export function missingFiles(entries: readonly ModelEntry[], dir: string): MissingFile[] {
  return entries.flatMap((entry) => entry.files
    .filter((f) => !existsSync(resolve(dir, f.path)))
    .map((f) => ({ entry: entry.id, path: resolve(dir, f.path), url: f.url, sha256: f.sha256 })));
}

export function offlineMessage(missing: readonly MissingFile[]): string {
  if (missing.length === 0) return 'All models are in place.';
  const lines = missing.map((m) => `  - ${m.path}\n      from ${m.url}\n      ${m.sha256 ? `sha256 ${m.sha256}` : 'sha256: none published; recorded on its first download'}`);
  return `These model files are missing. Download each from the address shown and put it at the path shown:\n${lines.join('\n')}`;
}
