// Storage latency and throughput, local folder vs S3 (a SeaweedFS the script starts, as the tests do): photo upload
// (put of ~300 KB), adapter save (putFile of ~3 MB), adapter load (localPath cold: a machine with an empty cache;
// warm: cached), photo read (get of ~300 KB). CPU only.  Run: node --import tsx bench/storage.ts [ops]
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { LocalBlobStore } from '../src/storage/local-store.ts';
import { S3BlobStore } from '../src/storage/s3-store.ts';
import type { BlobStore } from '../src/storage/storage.ts';
import { startSeaweed } from '../test/helpers/seaweed.ts';

const OPS = Number(process.argv[2] ?? 40);
const PHOTO = 300 * 1024;
const ADAPTER = 3 * 1024 * 1024;

function quantile(sorted: number[], q: number): number {
  const i = (sorted.length - 1) * q;
  const lo = Math.floor(i);
  return sorted[lo]! + (sorted[Math.ceil(i)]! - sorted[lo]!) * (i - lo);
}

interface Row { backend: string; op: string; bytes: number; median: number; p95: number; mbps: number }
const rows: Row[] = [];

async function measure(backend: string, op: string, bytes: number, run: (i: number) => Promise<unknown>): Promise<void> {
  const times: number[] = [];
  for (let i = 0; i < OPS; i++) {
    const start = process.hrtime.bigint();
    await run(i);
    times.push(Number(process.hrtime.bigint() - start) / 1e6);
  }
  times.sort((a, b) => a - b);
  const median = quantile(times, 0.5);
  rows.push({ backend, op, bytes, median, p95: quantile(times, 0.95), mbps: bytes / 1024 / 1024 / (median / 1000) });
  if (backend === 'local' && op.includes('localPath')) rows.at(-1)!.mbps = NaN; // a stat: no bytes move
}

async function bench(backend: string, writer: BlobStore, coldReader: () => Promise<BlobStore>, dir: string): Promise<void> {
  const photoKeys: string[] = [];
  await measure(backend, 'photo upload: put 300 KB', PHOTO, async () => photoKeys.push((await writer.put(randomBytes(PHOTO), 'jpg')).key));
  const adapterKeys: string[] = [];
  const sources = await Promise.all(Array.from({ length: OPS }, async (_, i) => {
    const file = path.join(dir, `adapter-${i}.safetensors`);
    await fs.writeFile(file, randomBytes(ADAPTER));
    return file;
  }));
  await measure(backend, 'adapter save: putFile 3 MB', ADAPTER, async (i) => adapterKeys.push((await writer.putFile(sources[i]!, 'safetensors')).key));
  const reader = await coldReader();
  await measure(backend, 'adapter load: localPath cold', ADAPTER, (i) => reader.localPath(adapterKeys[i]!));
  await measure(backend, 'adapter load: localPath warm', ADAPTER, (i) => reader.localPath(adapterKeys[i]!));
  await measure(backend, 'photo read: get 300 KB', PHOTO, (i) => reader.get(photoKeys[i]!));
}

const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bench-storage-'));
const seaweed = await startSeaweed();
try {
  const localRoot = path.join(dir, 'local');
  // Local: every "machine" reads the same folder, so cold and warm are the same call (a stat).
  await bench('local', new LocalBlobStore(localRoot), async () => new LocalBlobStore(localRoot), dir);
  const s3Store = async (cache: string) => {
    const store = new S3BlobStore({
      endpoint: seaweed.endpoint, bucket: 'bench', region: 'us-east-1', accessKeyId: seaweed.accessKeyId, secretAccessKey: seaweed.secretAccessKey,
      forcePathStyle: true, cacheDir: path.join(dir, cache),
    });
    await store.ensureBucket();
    return store;
  };
  // S3: the reader is another machine with an empty cache.
  await bench('s3 (SeaweedFS)', await s3Store('cache-writer'), () => s3Store('cache-reader'), dir);
} finally {
  await seaweed.stop();
  await fs.rm(dir, { recursive: true, force: true });
}

console.log(`${OPS} sequential ops each, ${os.cpus().length} cores, load ${os.loadavg()[0]!.toFixed(1)}, node ${process.version}, ${new Date().toISOString().slice(0, 10)}\n`);
console.log('| backend | operation | median ms | p95 ms | MB/s at median |');
console.log('|---|---|---|---|---|');
for (const r of rows) console.log(`| ${r.backend} | ${r.op} | ${r.median.toFixed(2)} | ${r.p95.toFixed(2)} | ${Number.isNaN(r.mbps) ? '— (a stat)' : r.mbps.toFixed(0)} |`);
