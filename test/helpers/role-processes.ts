// The compose services without Docker: reads docker-compose.yml through `docker-compose config` and starts the same
// role processes (bin/<role>.ts) with the environment compose gives each service, pointed at this machine's Postgres,
// Redis and a test SeaweedFS instead of the compose hosts. Each process is a real child (its own engine for a worker).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { createInterface } from 'node:readline';
import { join, resolve } from 'node:path';
import { repoRoot } from '../../src/config/index.ts';
import { createTestDatabase } from './env.ts';
import { startSeaweed } from './seaweed.ts';

export interface ComposeService {
  image?: string;
  command?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
  ports?: string[];
  deploy?: { resources?: { reservations?: { devices?: Array<{ driver?: string; count?: string | number; capabilities?: string[] }> } } };
}
export interface ComposeConfig {
  services: Record<string, ComposeService>;
  volumes?: Record<string, unknown>;
}

/** The values a deployment must give (the compose file refuses to start without them). */
export const composeSecrets = { POSTGRES_PASSWORD: 'compose-test-pw', S3_SECRET_ACCESS_KEY: 'compose-test-secret' };

/** `docker-compose config`: the file validated and resolved (anchors, ${VAR} defaults) as compose itself reads it. */
export function composeConfig(env: Record<string, string> = composeSecrets): ComposeConfig {
  const result = spawnSync('docker-compose', ['-f', 'docker-compose.yml', 'config'], {
    cwd: repoRoot,
    // Only PATH and the given values: nothing of this machine's environment leaks into the resolved file.
    env: { PATH: process.env.PATH, ...env },
    encoding: 'utf8',
  });
  if (result.error) throw new Error(`docker-compose not found (scripts/test.sh installs Debian's docker-compose): ${result.error.message}`);
  if (result.status !== 0) throw new Error(`docker-compose config failed: ${result.stderr}`);
  return yamlToJson(result.stdout) as ComposeConfig;
}

/** Reads YAML with PyYAML, the parser docker-compose itself runs on (Debian's package depends on it). */
function yamlToJson(text: string): unknown {
  const script = 'import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)';
  const result = spawnSync('python3', ['-c', script], { input: text, encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`reading compose's YAML failed: ${result.stderr}`);
  return JSON.parse(result.stdout);
}

export interface LocalServices {
  databaseUrl: string;
  redisUrl: string;
  /** The test SeaweedFS: endpoint and credentials. */
  s3: { endpoint: string; accessKeyId: string; secretAccessKey: string };
  /** A folder standing in for this process's volumes (/cache, ...). */
  dir: string;
  queuePrefix: string;
}

/**
 * A compose service's environment on this machine. Only what names the compose network, the containers' folders and
 * the GPU is replaced (the returned `replaced` lists it); every other setting is compose's own.
 */
export function localEnvironment(service: ComposeService, local: LocalServices): { env: Record<string, string>; replaced: string[] } {
  const env = { ...service.environment };
  const replace: Record<string, string | undefined> = {
    DATABASE_URL: local.databaseUrl,
    REDIS_URL: local.redisUrl,
    QUEUE_PREFIX: local.queuePrefix,
    S3_ENDPOINT: local.s3.endpoint,
    S3_ACCESS_KEY_ID: local.s3.accessKeyId,
    S3_SECRET_ACCESS_KEY: local.s3.secretAccessKey,
    STORAGE_CACHE_DIR: join(local.dir, 'storage-cache'),
    WORK_DIR: join(local.dir, 'work'),
    UPLOAD_TMP_DIR: join(local.dir, 'uploads'),
    VISION_MODELS_DIR: resolve(repoRoot, 'var/models'),
    ENGINE_CACHE_DIR: process.env.ENGINE_CACHE_DIR ?? resolve(repoRoot, 'var/engine-cache'),
    ENGINE_PYTHON: env.ENGINE_PYTHON && resolve(repoRoot, '.venv/bin/python'),
    // No GPU here: the tiny engine on the CPU, one per worker.
    ENGINE_PROFILE: 'tiny',
    ENGINE_GPUS: undefined,
    ENGINE_DEVICE: env.ENGINE_GPUS !== undefined ? 'cpu' : undefined,
    ENGINE_COUNT: env.ENGINE_GPUS !== undefined ? '1' : undefined,
    WEB_HOST: env.WEB_HOST && '127.0.0.1',
    // Any free port: the process logs the one it got.
    WEB_PORT: env.WEB_PORT && '0',
  };
  const replaced: string[] = [];
  for (const [key, value] of Object.entries(replace)) {
    if (!(key in env) && value === undefined) continue;
    replaced.push(key);
    if (value === undefined) delete env[key];
    else env[key] = value;
  }
  return { env, replaced };
}

export interface LogLine {
  level: number;
  msg: string;
  jobId?: string;
  [key: string]: unknown;
}

export interface RoleProcess {
  name: string;
  child: ChildProcess;
  /** Every JSON log line the process wrote so far. */
  logs: LogLine[];
  /** Resolves with the first log line that matches, or rejects when the process exits first or time runs out. */
  waitForLog(match: (line: LogLine) => boolean, timeoutMs?: number, what?: string): Promise<LogLine>;
  /** Lines of one message, e.g. every 'job started'. */
  lines(msg: string): LogLine[];
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/** The entry script a compose service runs (`node --import tsx bin/<role>.ts`). */
export function entryScript(service: ComposeService): string {
  const script = service.command?.find((arg) => arg.startsWith('bin/'));
  if (!script) throw new Error(`no bin/ entry in the command ${JSON.stringify(service.command)}`);
  return script;
}

/** Starts an entry script (bin/<role>.ts) as a child with exactly `env` (plus PATH and HOME) and reads its pino JSON lines. */
export function startRole(name: string, script: string, env: Record<string, string>): RoleProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', script], {
    cwd: repoRoot,
    // ENGINE_TRAIN_ROWS=0: the TypeScript suites run the engine at natural batch sizes (test/helpers/env.ts says why).
    env: { PATH: process.env.PATH, HOME: process.env.HOME, ENGINE_TRAIN_ROWS: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: LogLine[] = [];
  const waiters = new Set<() => void>();
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => { stderr = (stderr + chunk.toString()).slice(-4000); });
  createInterface({ input: child.stdout! }).on('line', (text) => {
    if (!text.startsWith('{')) return;
    try {
      logs.push(JSON.parse(text) as LogLine);
    } catch {
      return;
    }
    for (const wake of waiters) wake();
  });
  const exited = new Promise<void>((done) => child.once('exit', () => { for (const wake of waiters) wake(); done(); }));
  const proc: RoleProcess = {
    name,
    child,
    logs,
    lines: (msg) => logs.filter((l) => l.msg === msg),
    waitForLog(match, timeoutMs = 60_000, what = 'a log line') {
      return new Promise((resolveLine, reject) => {
        const timer = setTimeout(() => { waiters.delete(check); reject(new Error(`${name}: no ${what} after ${timeoutMs} ms\n${stderr}`)); }, timeoutMs);
        const check = () => {
          const found = logs.find(match);
          if (found) {
            clearTimeout(timer);
            waiters.delete(check);
            resolveLine(found);
          } else if (child.exitCode !== null || child.signalCode !== null) {
            clearTimeout(timer);
            waiters.delete(check);
            reject(new Error(`${name} exited (${child.exitCode ?? child.signalCode}) before ${what}\n${stderr}`));
          }
        };
        waiters.add(check);
        check();
      });
    },
    async kill(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
  };
  return proc;
}

/** The web role's address, from its 'web playground listening' line. */
export async function webAddress(web: RoleProcess): Promise<string> {
  const line = await web.waitForLog((l) => l.msg === 'web playground listening', 60_000, 'web listening');
  return String(line.address);
}

export interface ComposeCluster {
  web: RoleProcess;
  workers: RoleProcess[];
  baseUrl: string;
  databaseUrl: string;
  /** Per compose service, the settings localEnvironment replaced. */
  replaced: Record<string, string[]>;
  /** Starts one more worker process like the others (e.g. after one was killed). */
  startWorker(name: string): Promise<RoleProcess>;
  close(): Promise<void>;
}

/**
 * The compose `bot` service and `workers.length` `worker` services as processes on this machine, with `knobs` (test
 * or bench settings the compose file leaves at their defaults) on top, against a fresh database, a fresh SeaweedFS and
 * one queue prefix. Resolves once every worker's role has started (its engine is ready).
 */
export async function startComposeCluster(knobs: Record<string, string>, workerNames: string[]): Promise<ComposeCluster> {
  const [seaweed, database, dir] = await Promise.all([startSeaweed(), createTestDatabase(), mkdtemp(join(tmpdir(), 'compose-cluster-'))]);
  const compose = composeConfig();
  const queuePrefix = `cluster-${randomBytes(3).toString('hex')}`;
  const replaced: Record<string, string[]> = {};
  const envOf = (service: 'bot' | 'worker', name: string) => {
    const local = localEnvironment(compose.services[service]!, {
      databaseUrl: database.url, redisUrl: 'redis://127.0.0.1:6379', s3: seaweed, dir: join(dir, name), queuePrefix,
    });
    replaced[service] = local.replaced;
    return { ...local.env, ...knobs };
  };
  const all: RoleProcess[] = [];
  const startWorker = async (name: string) => {
    const worker = startRole(name, entryScript(compose.services.worker!), envOf('worker', name));
    all.push(worker);
    await worker.waitForLog((l) => l.msg === 'roles started', 120_000, 'the worker role started');
    return worker;
  };
  const close = async () => {
    await Promise.all(all.map((p) => p.kill()));
    await database.drop();
    await seaweed.stop();
    await rm(dir, { recursive: true, force: true });
  };
  try {
    // The web process migrates the database first; the workers then find it migrated.
    const web = startRole('web', entryScript(compose.services.bot!), envOf('bot', 'bot'));
    all.push(web);
    const baseUrl = await webAddress(web);
    const workers = await Promise.all(workerNames.map(startWorker));
    return { web, workers, baseUrl, databaseUrl: database.url, replaced, startWorker, close };
  } catch (error) {
    await close();
    throw error;
  }
}
