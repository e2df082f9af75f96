import pg from 'pg';
import { drizzle, type NodePgDatabase } from 'drizzle-orm/node-postgres';
import { migrate } from 'drizzle-orm/node-postgres/migrator';
import { resolve } from 'node:path';
import { repoRoot } from '../config/index.ts';
import * as schema from './schema.ts';

export type Db = NodePgDatabase<typeof schema>;
export interface Database {
  db: Db;
  pool: pg.Pool;
  close(): Promise<void>;
}

export interface PoolOptions {
  max?: number;
  /** Opening a connection gives up after this long (a server that accepts and stays silent). */
  connectTimeoutMs?: number;
  /** The server cancels a statement after this long; the client stops waiting a second later if the server is silent. */
  queryTimeoutMs?: number;
}

export function openDatabase(url: string, { max = 10, connectTimeoutMs, queryTimeoutMs }: PoolOptions = {}): Database {
  const readTimeoutMs = queryTimeoutMs === undefined ? undefined : queryTimeoutMs + 1000;
  // pg-pool uses one setting for two waits: opening a connection, and waiting for a free one. Under load the second is
  // a queue, not an outage, so it may last as long as a connect plus a statement; only the first is the short bound.
  class BoundedClient extends pg.Client {
    constructor(config?: pg.ClientConfig) {
      super({ ...config, connectionTimeoutMillis: connectTimeoutMs });
    }
  }
  const pool = new pg.Pool({
    connectionString: url,
    max,
    Client: BoundedClient,
    connectionTimeoutMillis: connectTimeoutMs === undefined || readTimeoutMs === undefined ? undefined : connectTimeoutMs + readTimeoutMs,
    statement_timeout: queryTimeoutMs,
    query_timeout: readTimeoutMs,
  });
  // An idle client losing its server must not crash the process; the next query reconnects.
  pool.on('error', () => {});
  const db = drizzle(pool, { schema });
  return { db, pool, close: () => pool.end() };
}

/**
 * Whether an error means the database can't be reached (refused, dropped, shutting down, timed out), as opposed to a
 * bad query. drizzle wraps the driver's error in `cause`.
 */
export function isDatabaseUnavailable(error: unknown): boolean {
  for (let e = error as { code?: unknown; message?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 5; e = e.cause as typeof e, depth++) {
    const code = typeof e.code === 'string' ? e.code : '';
    // SQLSTATE class 08 (connection exception), 57P01-57P03 (admin/crash shutdown, cannot connect now).
    if (/^08/.test(code) || /^57P0[123]$/.test(code) || code === '57014') return true;
    if (['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENOTFOUND', 'EPIPE'].includes(code) && e !== error) return true;
    const message = typeof e.message === 'string' ? e.message : '';
    if (/^Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|^Query read timeout|^timeout expired$/.test(message)) return true;
  }
  return false;
}

export const migrationsFolder = resolve(repoRoot, 'migrations');

/** Applies drizzle-kit's generated SQL; drizzle records what ran, so this is safe at every start. */
export async function migrateDatabase(db: Db): Promise<void> {
  await migrate(db, { migrationsFolder });
}

/** Creates the database named in `url` if it does not exist (first start on a fresh machine). */
export async function ensureDatabaseExists(url: string): Promise<void> {
  const target = new URL(url);
  const name = decodeURIComponent(target.pathname.slice(1));
  const admin = new URL(url);
  admin.pathname = '/postgres';
  const client = new pg.Client({ connectionString: admin.toString() });
  await client.connect();
  try {
    const found = await client.query('select 1 from pg_database where datname = $1', [name]);
    if (found.rowCount === 0) await client.query(`create database "${name.replaceAll('"', '""')}"`);
  } catch (error) {
    // Two processes starting at once: the loser sees duplicate_database, which is fine.
    if ((error as { code?: string }).code !== '42P04') throw error;
  } finally {
    await client.end();
  }
}
