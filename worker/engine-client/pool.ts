// Several engines under one worker: one per GPU (CUDA_VISIBLE_DEVICES per engine), or several on the CPU in tests.
// Each request goes to a running engine with the fewest requests in flight, except that a user's requests stay on the
// engine that served them last while it is up (it holds their LoRA in a slot, so the next one needs no load). An
// engine that dies fails only its own requests; the supervisor restarts it, and the retried jobs go elsewhere.
import type { Logger } from 'pino';
import { EngineSupervisor, type EngineLaunch, type ProgressHandler } from './supervisor.ts';
import type { GenerateRequest, GenerateResult, TrainRequest, TrainResult } from '../../src/engine/protocol.ts';

/** What the worker needs of its engines: one supervised engine, or a pool of them. */
export interface EngineClient {
  start(): Promise<void>;
  stop(timeoutMs?: number): Promise<void>;
  /** `key` routes related requests together (a user's adapter, a job's retries); a single engine ignores it. */
  train(request: Omit<TrainRequest, 'op'>, onProgress?: ProgressHandler, key?: string): Promise<TrainResult>;
  generate(request: Omit<GenerateRequest, 'op'>, onProgress?: ProgressHandler, key?: string): Promise<GenerateResult>;
  cancel(requestId: string): Promise<boolean>;
  ping(): Promise<{ pong: boolean }>;
  readonly pid: number | undefined;
  /** Whether an engine is up and said it is ready. */
  readonly running: boolean;
  readonly info: Record<string, unknown>;
}

export interface Routed { requestId: string; engine: number; key?: string }

export interface PoolOptions {
  launches: EngineLaunch[];
  logger: Logger;
  readyTimeoutMs?: number;
  watchdogMs?: number;
}

export class EnginePool implements EngineClient {
  readonly engines: EngineSupervisor[];
  /** The last requests routed, newest last (for logs and tests). */
  readonly history: Routed[] = [];
  /** The engine that last failed a key's request (a crash, a hang): its retry goes elsewhere when it can. */
  private readonly failedOn = new Map<string, number>();
  private readonly inFlight: number[];
  /** Which engine each pending request went to, so a cancel reaches it. */
  private readonly byRequest = new Map<string, number>();
  /** The engine that last served each affinity key (a user's adapter). */
  private readonly affinity = new Map<string, number>();

  constructor(options: PoolOptions) {
    this.engines = options.launches.map((launch, n) => new EngineSupervisor({
      launch,
      logger: options.launches.length > 1 ? options.logger.child({ engineIndex: n }) : options.logger,
      readyTimeoutMs: options.readyTimeoutMs,
      watchdogMs: options.watchdogMs,
    }));
    this.inFlight = this.engines.map(() => 0);
  }

  /** Starts every engine; resolves once all are ready (a failing one is restarted by its supervisor). */
  async start(): Promise<void> {
    await Promise.all(this.engines.map((e) => e.start()));
  }

  async stop(timeoutMs?: number): Promise<void> {
    await Promise.all(this.engines.map((e) => e.stop(timeoutMs)));
  }

  /** The engine a request for `key` goes to: its last engine while that one runs, else the least busy running one. */
  pick(key?: string): number {
    const up = this.engines.map((e, n) => ({ n, running: e.running })).filter((e) => e.running).map((e) => e.n);
    const candidates = up.length > 0 ? up : this.engines.map((_e, n) => n);
    const failed = key === undefined ? undefined : this.failedOn.get(key);
    const healthy = candidates.length > 1 && failed !== undefined ? candidates.filter((n) => n !== failed) : candidates;
    const sticky = key === undefined ? undefined : this.affinity.get(key);
    if (sticky !== undefined && healthy.includes(sticky)) return sticky;
    return healthy.reduce((best, n) => (this.inFlight[n]! < this.inFlight[best]! ? n : best));
  }

  private async route<T>(requestId: string, key: string | undefined, call: (engine: EngineSupervisor) => Promise<T>): Promise<T> {
    const n = this.pick(key);
    if (key !== undefined) this.affinity.set(key, n);
    this.inFlight[n]! += 1;
    this.byRequest.set(requestId, n);
    this.history.push({ requestId, engine: n, key });
    if (this.history.length > 200) this.history.shift();
    try {
      const result = await call(this.engines[n]!);
      if (key !== undefined) this.failedOn.delete(key);
      return result;
    } catch (error) {
      const code = (error as { code?: string }).code;
      if (key !== undefined && (code === 'engine_crashed' || code === 'engine_hung')) this.failedOn.set(key, n);
      throw error;
    } finally {
      this.inFlight[n]! -= 1;
      this.byRequest.delete(requestId);
    }
  }

  train(request: Omit<TrainRequest, 'op'>, onProgress?: ProgressHandler, key?: string): Promise<TrainResult> {
    return this.route(request.id, key, (engine) => engine.train(request, onProgress));
  }

  generate(request: Omit<GenerateRequest, 'op'>, onProgress?: ProgressHandler, key?: string): Promise<GenerateResult> {
    return this.route(request.id, key, (engine) => engine.generate(request, onProgress));
  }

  async cancel(requestId: string): Promise<boolean> {
    const n = this.byRequest.get(requestId);
    return n === undefined ? false : this.engines[n]!.cancel(requestId);
  }

  ping() {
    return this.engines[this.pick()]!.ping();
  }

  /** Which engine holds a request now (tests and logs). */
  engineOf(requestId: string): number | undefined {
    return this.byRequest.get(requestId);
  }

  get running(): boolean {
    return this.engines.some((e) => e.running);
  }

  /** The first engine's process id (the only one with a single engine). */
  get pid(): number | undefined {
    return this.engines[0]?.pid;
  }

  get info(): Record<string, unknown> {
    return this.engines.length === 1 ? this.engines[0]!.info : { engines: this.engines.map((e) => e.info) };
  }
}
