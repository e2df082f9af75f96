// Model downloads: resumable (HTTP Range onto a .part file), checked against the pinned sha256 before the file
// takes its final name, so a half-downloaded or tampered file is never used. Nothing here runs at request time.
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, statSync } from 'node:fs';
import { mkdir, open, rename, rm } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import type { ModelEntry, ModelFile } from './manifest.ts';

export class ChecksumError extends Error {
  constructor(readonly path: string, readonly expected: string, readonly actual: string) {
    super(`${path}: sha256 ${actual} does not match the pinned ${expected}; the download was deleted`);
    this.name = 'ChecksumError';
  }
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

export type FileOutcome = { path: string; status: 'present' | 'downloaded' | 'resumed'; sha256: string; verified: boolean };

export interface DownloadOptions {
  fetch?: typeof fetch;
  onProgress?: (path: string, received: number, total: number | undefined) => void;
}

/** Downloads one file into `dir` unless it is already there with the right digest. */
export async function downloadFile(file: ModelFile, dir: string, options: DownloadOptions = {}): Promise<FileOutcome> {
  const doFetch = options.fetch ?? fetch;
  const target = resolve(dir, file.path);
  const part = `${target}.part`;
  if (existsSync(target)) {
    const sha256 = await sha256File(target);
    if (!file.sha256 || sha256 === file.sha256) return { path: target, status: 'present', sha256, verified: Boolean(file.sha256) };
    await rm(target); // wrong content under the final name: fetch it again
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
    await rm(part, { force: true });
    throw new ChecksumError(file.path, file.sha256, sha256);
  }
  await rename(part, target);
  return { path: target, status: resumed ? 'resumed' : 'downloaded', sha256, verified: Boolean(file.sha256) };
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
  const lines = missing.map((m) => `  - ${m.path}\n      from ${m.url}${m.sha256 ? `\n      sha256 ${m.sha256}` : ''}`);
  return `These model files are missing. Download each from the address shown and put it at the path shown:\n${lines.join('\n')}`;
}
