// A whole stack in one test process: app + worker (with the real tiny engine) + web server on a free port.
import type { AddressInfo } from 'node:net';
import { createApp, type App } from '../../src/app.ts';
import { buildWebServer } from '../../bots/web/server.ts';
import { startWorker, type WorkerHandle } from '../../worker/index.ts';
import type { Logger } from 'pino';
import { createTestEnv, testLogger, type TestEnv } from './env.ts';
import { makePhotos } from './images.ts';
import { eq } from 'drizzle-orm';
import { jobs, type Job } from '../../src/db/schema.ts';
import type { GenerateRequest } from '../../src/engine/protocol.ts';

export interface Stack {
  env: TestEnv;
  app: App;
  web: Awaited<ReturnType<typeof buildWebServer>>;
  worker?: WorkerHandle;
  baseUrl: string;
  startWorker(): Promise<WorkerHandle>;
  close(): Promise<void>;
}

/** `logger` (a function of the config, e.g. the product's own createLogger) replaces the silent test logger. */
export async function startStack(overrides: Record<string, string> = {}, withWorker = true, makeLogger?: (config: TestEnv['config']) => Logger): Promise<Stack> {
  const env = await createTestEnv(overrides);
  const logger = makeLogger?.(env.config) ?? testLogger;
  const app = await createApp(env.config, logger);
  const web = await buildWebServer(app);
  await web.listen({ host: '127.0.0.1', port: 0 });
  const stack: Stack = {
    env,
    app,
    web,
    baseUrl: `http://127.0.0.1:${(web.server.address() as AddressInfo).port}`,
    async startWorker() {
      stack.worker = await startWorker({ db: app.database.db, store: app.store, events: app.events, vision: app.vision, config: env.config, logger });
      return stack.worker;
    },
    async close() {
      await web.close();
      await stack.worker?.close();
      await app.queues.train.obliterate({ force: true });
      await app.queues.generate.obliterate({ force: true });
      await app.close();
      await env.cleanup();
    },
  };
  if (withWorker) await stack.startWorker();
  return stack;
}

/** A tiny HTTP client that keeps the playground's session cookie and sends its Origin, like a browser would. */
export class PlaygroundClient {
  cookie = '';
  constructor(readonly baseUrl: string) {}

  async request(path: string, init: RequestInit = {}): Promise<Response> {
    const headers = { origin: this.baseUrl, ...(init.headers as Record<string, string> | undefined), cookie: this.cookie };
    const response = await fetch(`${this.baseUrl}${path}`, { ...init, headers });
    // A cookie jar of one origin: the session and the language switch are separate cookies.
    const jar = new Map(this.cookie.split('; ').filter(Boolean).map((pair) => [pair.split('=')[0]!, pair] as const));
    for (const set of response.headers.getSetCookie()) {
      const pair = set.split(';')[0]!;
      if (/max-age=0/i.test(set)) jar.delete(pair.split('=')[0]!);
      else jar.set(pair.split('=')[0]!, pair);
    }
    this.cookie = [...jar.values()].join('; ');
    return response;
  }

  async json<T = any>(path: string, init: RequestInit = {}): Promise<{ status: number; body: T }> {
    const response = await this.request(path, init);
    return { status: response.status, body: (await response.json()) as T };
  }

  post<T = any>(path: string, body: unknown = {}) {
    return this.json<T>(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  }

  upload<T = any>(path: string, files: Array<[string, Buffer]>, fields: Record<string, string> = {}, field = 'photos') {
    const form = new FormData();
    for (const [name, value] of Object.entries(fields)) form.append(name, value);
    for (const [name, data] of files) form.append(field, new Blob([new Uint8Array(data)]), name);
    return this.json<T>(path, { method: 'POST', body: form });
  }

  /** Polls a job until it reaches a final state. */
  async waitForJob(jobId: string, timeoutMs = 180_000): Promise<any> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const { body } = await this.json(`/api/jobs/${jobId}`);
      if (['completed', 'failed', 'cancelled'].includes(body.job.status)) return body;
      if (Date.now() > deadline) throw new Error(`job ${jobId} still ${body.job.status} after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

/** Resolves once `predicate` returns a truthy value (polled), or rejects after the timeout. */
export async function eventually<T>(predicate: () => Promise<T | undefined | false>, timeoutMs = 60_000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The variables that point the Telegram and Discord clients at the test emulators. */
export function chatEmulatorEnv(telegram: { token: string; url: string }, discord: { token: string; applicationId: string; api: string }) {
  return {
    TELEGRAM_BOT_TOKEN: telegram.token,
    TELEGRAM_API_ROOT: telegram.url,
    DISCORD_TOKEN: discord.token,
    DISCORD_APPLICATION_ID: discord.applicationId,
    DISCORD_API_ROOT: discord.api,
    CHAT_EDIT_INTERVAL_MS: '100',
  };
}

/** Records every generate request the worker sends down the engine's pipe, passing each on unchanged. */
export function recordGenerateRequests(stack: Stack): Array<Omit<GenerateRequest, 'op'>> {
  const sent: Array<Omit<GenerateRequest, 'op'>> = [];
  const engine = stack.worker!.engine;
  const generate = engine.generate.bind(engine);
  engine.generate = (request, onProgress) => { sent.push(request); return generate(request, onProgress); };
  return sent;
}

/** A job's row as the job-state owner last wrote it (undefined once /forget removed it). */
export const jobRow = async (stack: Stack, id: string): Promise<Job | undefined> =>
  (await stack.app.database.db.select().from(jobs).where(eq(jobs.id, id)))[0];

/** A new web user with `photoCount` generated photos who presses Train (the tests set MIN_TRAINING_PHOTOS low). */
export async function startTrainingAs(stack: Stack, name: string, photoSeed: number, photoCount = 2) {
  const { users, photos, training } = stack.app.services;
  const user = await users.resolve('web', name);
  for (const photo of await makePhotos(photoCount, photoSeed)) {
    const added = await photos.add(user.id, photo);
    if (!added.ok) throw new Error(`photo of ${name} refused: ${JSON.stringify(added)}`);
  }
  return { user, started: await training.start(user.id) };
}
