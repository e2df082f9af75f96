// Liveness and readiness. /healthz answers while the process runs; /readyz asks each dependency this process uses
// (Postgres, Redis, storage, and the engine where the process has one) and answers 503 naming the parts that failed.
// The web server mounts these routes; a process without it (a GPU worker) serves them on HEALTH_PORT with /metrics.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { sql } from 'drizzle-orm';
import type { Redis } from 'ioredis';
import type { Db } from './db/client.ts';
import type { BlobStore } from './storage/storage.ts';
import { metricsContentType, renderMetrics } from './metrics.ts';

export type Check = () => Promise<unknown>;

export interface PartReport { ok: boolean; ms: number; error?: string }
export interface Readiness { ok: boolean; parts: Record<string, PartReport>; failed: string[] }

/** A key no blob can have (sha256 of nothing is never stored with this extension): a read that must answer "absent". */
const PROBE_KEY = `e3/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855.healthprobe`;

export class HealthChecks {
  private readonly checks = new Map<string, Check>();

  constructor(private readonly timeoutMs = 3000) {}

  add(name: string, check: Check): this {
    this.checks.set(name, check);
    return this;
  }

  remove(name: string) {
    this.checks.delete(name);
  }

  /** Runs every check at once, each bounded by the timeout. */
  async readiness(): Promise<Readiness> {
    const entries = await Promise.all([...this.checks].map(async ([name, check]): Promise<[string, PartReport]> => {
      const started = Date.now();
      let timer: NodeJS.Timeout | undefined;
      try {
        const timeout = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`no answer in ${this.timeoutMs} ms`)), this.timeoutMs); });
        await Promise.race([check(), timeout]);
        return [name, { ok: true, ms: Date.now() - started }];
      } catch (error) {
        return [name, { ok: false, ms: Date.now() - started, error: describe(error) }];
      } finally {
        clearTimeout(timer);
      }
    }));
    const parts = Object.fromEntries(entries);
    const failed = entries.filter(([, r]) => !r.ok).map(([name]) => name);
    return { ok: failed.length === 0, parts, failed };
  }
}

/** A short reason without secrets or stacks: the error's code and message (connection URLs never appear in them). */
function describe(error: unknown): string {
  const e = error as { code?: string; message?: string; errors?: Array<{ message?: string }> };
  // AggregateError (e.g. ECONNREFUSED on both IPv4 and IPv6) has an empty message of its own.
  const message = e.message || e.errors?.map((x) => x.message).join('; ') || String(error);
  return (e.code && !message.includes(e.code) ? `${e.code}: ${message}` : message).slice(0, 300);
}

/** The checks every process with an App has. */
export function dependencyChecks(db: Db, redis: Redis, store: BlobStore): HealthChecks {
  return new HealthChecks()
    .add('postgres', () => db.execute(sql`select 1`))
    // A command, not the connection state: a Redis that stopped answering fails here within the timeout.
    .add('redis', () => redis.ping())
    .add('storage', () => store.has(PROBE_KEY));
}

/** What the engine check needs: the engine reported ready and answers a ping now. */
export interface PingableEngine { readonly running: boolean; ping(): Promise<unknown> }

export const engineCheck = (engine: PingableEngine): Check => async () => {
  // A ping would start an engine that is between restarts; a stopped engine is simply not ready.
  if (!engine.running) throw new Error('the engine is not running (starting or restarting)');
  await engine.ping();
};

export type Responder = (path: string) => Promise<{ status: number; type: string; body: string } | undefined>;

/** A report without the failures' texts (they can name internal hosts): for a public port. */
const withoutReasons = (report: Readiness): Readiness => ({
  ...report,
  parts: Object.fromEntries(Object.entries(report.parts).map(([name, { ok, ms }]) => [name, { ok, ms }])),
});

/**
 * The answers for /healthz, /readyz and (when allowed) /metrics; undefined for any other path. `reasons`: whether
 * /readyz says why a part failed.
 */
export function healthResponder(health: HealthChecks, withMetrics: boolean, reasons = true): Responder {
  return async (path) => {
    if (path === '/healthz') return { status: 200, type: 'application/json', body: JSON.stringify({ ok: true }) };
    if (path === '/readyz') {
      const report = await health.readiness();
      return { status: report.ok ? 200 : 503, type: 'application/json', body: JSON.stringify(reasons ? report : withoutReasons(report)) };
    }
    if (path === '/metrics' && withMetrics) return { status: 200, type: metricsContentType, body: await renderMetrics() };
    return undefined;
  };
}

/** The small listener on HEALTH_PORT: GET /healthz, /readyz, /metrics, nothing else. */
export async function startHealthServer(health: HealthChecks, port: number, host: string): Promise<{ server: Server; address: AddressInfo; close(): Promise<void> }> {
  const respond = healthResponder(health, true);
  const server = createServer((request, response) => {
    const path = (request.url ?? '/').split('?')[0]!;
    const answer = request.method === 'GET' ? respond(path) : Promise.resolve(undefined);
    answer
      .then((a) => {
        const { status, type, body } = a ?? { status: 404, type: 'application/json', body: JSON.stringify({ error: 'not_found' }) };
        response.writeHead(status, { 'content-type': type }).end(body);
      })
      .catch((error: Error) => response.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ error: describe(error) })));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return {
    server,
    address: server.address() as AddressInfo,
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}
