// Spawns the Python engine, speaks its JSON-lines protocol, and restarts it with backoff when it dies.
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import type { Logger } from 'pino';
import { metrics } from '../../src/metrics.ts';
import {
  cancelResult, errorEvent, eventEnvelope, generateResult, pingResult, previewEvent, progressEvent, readyEvent, trainResult,
  type EngineErrorCode, type GenerateRequest, type GenerateResult, type JobUpdate, type TrainRequest, type TrainResult,
} from '../../src/engine/protocol.ts';

export class EngineError extends Error {
  constructor(
    readonly code: EngineErrorCode | 'engine_crashed' | 'engine_stopped' | 'engine_hung',
    message: string,
  ) {
    super(message);
    this.name = 'EngineError';
  }

  /** Bad input will fail the same way again; a crash or an internal error may not. */
  get retryable(): boolean {
    return this.code === 'internal' || this.code === 'engine_crashed' || this.code === 'engine_hung' || this.code === 'busy';
  }
}

export interface EngineLaunch {
  python: string;
  args: string[];
  cwd: string;
  env?: NodeJS.ProcessEnv;
}

export interface SupervisorOptions {
  launch: EngineLaunch;
  logger: Logger;
  readyTimeoutMs?: number;
  /** A pending request with no event (progress or result) for this long means the engine hangs: it is killed. */
  watchdogMs?: number;
  restartDelayMs?: { min: number; max: number };
}

/**
 * What the engine process may see of our environment: where Python, CUDA and the caches are, and its own ENGINE_*
 * settings. Never the chat tokens, DATABASE_URL or REDIS_URL: the engine needs none of them.
 */
const ENGINE_ENV = /^(PATH|HOME|USER|LANG|LC_[A-Z]+|TZ|TMPDIR|LD_LIBRARY_PATH|VIRTUAL_ENV|XDG_CACHE_HOME|PYTHON[A-Z_]*|ENGINE_[A-Z_]+|CUDA_[A-Z_]+|NVIDIA_[A-Z_]+|NCCL_[A-Z_]+|HF_[A-Z_]+|TORCH[A-Z_]*|TORCHINDUCTOR_[A-Z_]+|OMP_NUM_THREADS|MKL_NUM_THREADS|OPENBLAS_[A-Z_]+)$/;

export function engineEnvironment(env: NodeJS.ProcessEnv, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const kept = Object.fromEntries(Object.entries(env).filter(([name]) => ENGINE_ENV.test(name)));
  return { ...kept, PYTHONUNBUFFERED: '1', ...extra };
}

/** Progress and (trainings) preview events of a running request, in the order the engine wrote them. */
export type ProgressHandler = (event: JobUpdate) => void;
interface Pending {
  resolve: (value: Record<string, unknown>) => void;
  reject: (error: Error) => void;
  onProgress?: ProgressHandler;
  /** When the engine last said anything about this request (sent, progress). */
  lastHeard: number;
}

export class EngineSupervisor {
  private child?: ChildProcess;
  private ready?: Promise<void>;
  private readonly pending = new Map<string, Pending>();
  private stopping = false;
  private restarts = 0;
  private restartTimer?: NodeJS.Timeout;
  private stderrTail: string[] = [];
  private watchdog?: NodeJS.Timeout;
  /** Why the current engine process is being killed by us (watchdog, ready timeout), for its pending requests. */
  private killedFor?: { code: 'engine_hung' | 'engine_crashed'; why: string };
  restartCount = 0;
  /** Whether an engine process is up and has said it is ready. */
  running = false;
  info: Record<string, unknown> = {};

  constructor(private readonly options: SupervisorOptions) {}

  /** Starts the engine and resolves once it has loaded its models. */
  start(): Promise<void> {
    this.stopping = false;
    this.ready ??= this.spawnEngine();
    return this.ready;
  }

  private spawnEngine(): Promise<void> {
    const { launch, logger } = this.options;
    const child = spawn(launch.python, launch.args, {
      cwd: launch.cwd,
      env: engineEnvironment(process.env, launch.env),
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.child = child;
    this.stderrTail = [];
    this.killedFor = undefined;
    let markReady!: () => void;
    let failStart!: (error: Error) => void;
    const ready = new Promise<void>((resolve, reject) => { markReady = resolve; failStart = reject; });
    const readyTimeoutMs = this.options.readyTimeoutMs ?? 300_000;
    // An engine that never becomes ready is killed; its exit schedules the restart like any crash.
    const timer = setTimeout(() => this.kill(child, 'engine_crashed', `engine did not become ready in ${readyTimeoutMs} ms`), readyTimeoutMs);
    // A write to an engine that just died fails with EPIPE; the exit handler deals with its requests.
    child.stdin!.on('error', (error) => logger.warn({ err: error }, 'engine stdin closed'));

    let inTraceback = false;
    createInterface({ input: child.stderr! }).on('line', (line) => {
      this.stderrTail = [...this.stderrTail.slice(-19), line];
      // Tracebacks and warnings must be seen at the default level; the rest is the engine's own info log.
      if (line.startsWith('Traceback')) inTraceback = true;
      const serious = inTraceback || /\b(ERROR|CRITICAL|WARNING)\b|Error:|Exception/.test(line);
      if (inTraceback && /^\S/.test(line) && !line.startsWith('Traceback')) inTraceback = false;
      if (serious) logger.warn({ engine: line }, 'engine stderr');
      else logger.info({ engine: line }, 'engine stderr');
    });
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const envelope = eventEnvelope.safeParse(safeJson(line));
      if (!envelope.success) {
        logger.warn({ line }, 'engine wrote a line outside the protocol');
        return;
      }
      const event = envelope.data;
      if (event.event === 'ready') {
        clearTimeout(timer);
        this.info = readyEvent.parse(event);
        this.restarts = 0;
        this.running = true;
        logger.info(this.info, 'engine ready');
        markReady();
        return;
      }
      const pending = event.id === null ? undefined : this.pending.get(event.id);
      if (pending) pending.lastHeard = Date.now();
      if (!pending) {
        if (event.event === 'error') logger.warn({ event }, 'engine error for no pending request');
        return;
      }
      if (event.event === 'progress' || event.event === 'preview') {
        const update = (event.event === 'progress' ? progressEvent : previewEvent).safeParse(event);
        if (update.success) pending.onProgress?.(update.data);
        return;
      }
      this.pending.delete(event.id!);
      if (event.event === 'result') pending.resolve(event);
      else {
        const error = errorEvent.safeParse(event);
        pending.reject(error.success ? new EngineError(error.data.code, error.data.message) : new EngineError('internal', JSON.stringify(event)));
      }
    });

    child.on('error', (error) => failStart(new EngineError('engine_crashed', `could not start the engine: ${error.message}`)));
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      this.running = false;
      const killed = this.killedFor;
      const why = killed?.why ?? `engine exited (code ${code}, signal ${signal})${this.stderrTail.length ? `: ${this.stderrTail.slice(-5).join(' | ')}` : ''}`;
      failStart(new EngineError('engine_crashed', why));
      for (const [id, pending] of this.pending) {
        this.pending.delete(id);
        pending.reject(new EngineError(this.stopping ? 'engine_stopped' : killed?.code ?? 'engine_crashed', why));
      }
      this.child = undefined;
      this.ready = undefined;
      if (!this.stopping) this.scheduleRestart(why);
    });
    return ready;
  }

  /** Kills an engine process that misbehaves; its exit rejects its requests with `code` and restarts it. */
  private kill(child: ChildProcess, code: 'engine_hung' | 'engine_crashed', why: string) {
    if (child !== this.child || child.exitCode !== null) return;
    this.killedFor = { code, why };
    this.options.logger.error({ why, pid: child.pid }, 'killing the engine');
    child.kill('SIGKILL');
  }

  /** Kills the engine when any pending request has been silent for longer than the watchdog allows. */
  private checkWatchdog = () => {
    const limit = this.options.watchdogMs;
    const child = this.child;
    if (!limit || !child) return;
    const now = Date.now();
    for (const [id, pending] of this.pending) {
      if (now - pending.lastHeard > limit) {
        this.kill(child, 'engine_hung', `the engine sent nothing about request ${id} for ${Math.round((now - pending.lastHeard) / 1000)} s; it was restarted`);
        return;
      }
    }
  };

  private scheduleRestart(why: string) {
    const { min, max } = this.options.restartDelayMs ?? { min: 1000, max: 30_000 };
    const delay = Math.min(max, min * 2 ** this.restarts);
    this.restarts += 1;
    this.restartCount += 1;
    metrics.engineRestarted();
    this.options.logger.error({ why, delay }, 'engine died; restarting');
    this.restartTimer = setTimeout(() => {
      this.start().catch((error: Error) => this.options.logger.error({ err: error }, 'engine restart failed'));
    }, delay);
  }

  private async request(message: Record<string, unknown>, onProgress?: ProgressHandler): Promise<Record<string, unknown>> {
    await this.start();
    const id = typeof message.id === 'string' ? message.id : randomUUID();
    const child = this.child;
    if (!child?.stdin?.writable) throw new EngineError('engine_crashed', 'engine is not running');
    const result = new Promise<Record<string, unknown>>((resolve, reject) => this.pending.set(id, { resolve, reject, onProgress, lastHeard: Date.now() }));
    if (this.options.watchdogMs && !this.watchdog) {
      this.watchdog = setInterval(this.checkWatchdog, Math.max(50, Math.min(5000, this.options.watchdogMs / 4)));
      this.watchdog.unref();
    }
    child.stdin.write(`${JSON.stringify({ ...message, id })}\n`);
    return result;
  }

  ping() {
    return this.request({ op: 'ping' }).then((r) => pingResult.parse(r));
  }

  train(request: Omit<TrainRequest, 'op'>, onProgress?: ProgressHandler): Promise<TrainResult> {
    return this.request({ ...request, op: 'train' }, onProgress).then((r) => trainResult.parse(r));
  }

  generate(request: Omit<GenerateRequest, 'op'>, onProgress?: ProgressHandler): Promise<GenerateResult> {
    return this.request({ ...request, op: 'generate' }, onProgress).then((r) => generateResult.parse(r));
  }

  /** Asks the engine to stop a request; it then fails with code 'cancelled'. */
  async cancel(target: string): Promise<boolean> {
    if (!this.pending.has(target)) return false;
    return cancelResult.parse(await this.request({ op: 'cancel', target })).cancelled;
  }

  /** Closes stdin (the engine finishes and exits); kills it if it takes too long. */
  async stop(timeoutMs = 20_000): Promise<void> {
    this.stopping = true;
    clearTimeout(this.restartTimer);
    clearInterval(this.watchdog);
    this.watchdog = undefined;
    const child = this.child;
    if (!child || child.exitCode !== null) return;
    const exited = once(child, 'exit');
    child.stdin?.end();
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    await exited;
    clearTimeout(timer);
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }
}

function safeJson(line: string): unknown {
  try {
    return JSON.parse(line);
  } catch {
    return undefined;
  }
}
