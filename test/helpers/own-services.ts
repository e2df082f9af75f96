// Test-owned Postgres and Redis servers on their own ports, for fault tests that stop, kill and restart them.
// The shared servers (5432, 6379) are never touched.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chown, mkdtemp, rm } from 'node:fs/promises';
import { existsSync, readdirSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { freePort } from './net.ts';

const run = promisify(execFile);

function pgBin(name: string): string {
  const root = '/usr/lib/postgresql';
  const version = existsSync(root) ? readdirSync(root).sort((a, b) => Number(b) - Number(a))[0] : undefined;
  if (!version) throw new Error('no PostgreSQL server binaries under /usr/lib/postgresql');
  return join(root, version, 'bin', name);
}

export interface PgCluster {
  port: number;
  /** A connection URL for `database` on this cluster (trust auth, user postgres). */
  url(database?: string): string;
  start(): Promise<void>;
  /** Fast shutdown: open connections are terminated, new ones refused. */
  stop(): Promise<void>;
  destroy(): Promise<void>;
}

/** A fresh cluster (initdb, trust auth) on a free port; the server refuses to run as root, so it runs as postgres. */
export async function createPgCluster(): Promise<PgCluster> {
  const port = await freePort();
  const dir = await mkdtemp(join(tmpdir(), 'portrait-pg-'));
  const asRoot = userInfo().uid === 0;
  const exec = async (bin: string, args: string[]) => {
    if (asRoot) return run('runuser', ['-u', 'postgres', '--', pgBin(bin), ...args]);
    return run(pgBin(bin), args);
  };
  if (asRoot) {
    const [{ stdout: uid }, { stdout: gid }] = await Promise.all([run('id', ['-u', 'postgres']), run('id', ['-g', 'postgres'])]);
    await chown(dir, Number(uid), Number(gid));
  }
  const data = join(dir, 'data');
  await exec('initdb', ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync']);
  const cluster: PgCluster = {
    port,
    url: (database = 'postgres') => `postgres://postgres@127.0.0.1:${port}/${database}`,
    async start() {
      await exec('pg_ctl', ['-D', data, '-w', '-l', join(data, 'server.log'), '-o', `-p ${port} -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off`, 'start']);
    },
    async stop() {
      await exec('pg_ctl', ['-D', data, '-w', '-m', 'fast', 'stop']);
    },
    async destroy() {
      await exec('pg_ctl', ['-D', data, '-w', '-m', 'immediate', 'stop']).catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    },
  };
  await cluster.start();
  return cluster;
}

export interface OwnRedis {
  port: number;
  url: string;
  dir: string;
  start(): Promise<void>;
  /** SIGKILL: no shutdown save, so only what the append-only file already holds survives. */
  kill(): Promise<void>;
  destroy(): Promise<void>;
}

/** A redis-server with AOF on (fsync every write) in its own folder, on a free port; `extraArgs` override settings. */
export async function createOwnRedis(extraArgs: string[] = []): Promise<OwnRedis> {
  const port = await freePort();
  const dir = await mkdtemp(join(tmpdir(), 'portrait-redis-'));
  let child: ChildProcess | undefined;
  const own: OwnRedis = {
    port,
    url: `redis://127.0.0.1:${port}`,
    dir,
    async start() {
      child = spawn('redis-server', [
        '--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--appendonly', 'yes', '--appendfsync', 'always',
        '--save', '', '--maxmemory-policy', 'noeviction', ...extraArgs,
      ], { stdio: 'ignore' });
      const probe = new Redis(port, '127.0.0.1', { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
      probe.on('error', () => {}); // refused until the server listens: the loop retries
      const deadline = Date.now() + 10_000;
      for (;;) {
        try {
          await probe.connect();
          // Loading the AOF answers LOADING until it is done.
          if ((await probe.ping()) === 'PONG') break;
        } catch {
          if (Date.now() > deadline) throw new Error(`redis-server on ${port} did not start`);
          await new Promise((r) => setTimeout(r, 50));
        }
      }
      probe.disconnect();
    },
    async kill() {
      const dying = child;
      if (!dying || dying.exitCode !== null) return;
      const exited = new Promise((r) => dying.once('exit', r));
      dying.kill('SIGKILL');
      await exited;
    },
    async destroy() {
      await own.kill();
      await rm(dir, { recursive: true, force: true });
    },
  };
  await own.start();
  return own;
}
