// The one place that reads the environment: parsed once, validated, typed.
import { z } from 'zod';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { resolve } from 'node:path';
import { tmpdir } from 'node:os';
import { lrSchedulers, schedulers } from '../engine/protocol.ts';

/** The processes a deployment runs; each starts on its own (bin/<role>.ts) or together (bin/start.ts, ROLES). */
export const roleNames = ['web', 'worker', 'telegram', 'discord'] as const;
export type Role = (typeof roleNames)[number];

export const repoRoot = resolve(fileURLToPath(new URL('../..', import.meta.url)));

const defaults = z
  .object({
    photos: z.object({
      minForTraining: z.number().int().min(1),
      maxPerUser: z.number().int().min(1),
      maxUploadBytes: z.number().int().positive(),
      minShortSide: z.number().int().positive(),
      // Largest width × height decoded (refused from the header first); bounds a decode's memory.
      maxPixels: z.number().int().positive(),
      // Image decodes running at once in this process; the rest wait (each can take ~10 bytes per pixel).
      decodeConcurrency: z.number().int().min(1),
    }),
    training: z.object({
      instancePrompt: z.string().min(1),
      resolution: z.number().int().min(512),
      rank: z.number().int().positive(),
      alpha: z.number().positive(),
      learningRate: z.number().positive(),
      batchSize: z.number().int().positive(),
      gradAccum: z.number().int().positive(),
      lrScheduler: z.enum(lrSchedulers),
      seed: z.number().int(),
      maxSteps: z.object({ real: z.number().int().positive(), tiny: z.number().int().positive() }),
      checkpointSteps: z.object({ real: z.number().int().min(0), tiny: z.number().int().min(0) }),
      // Intermediate previews painted during a training (0: none), each in previewSteps denoising steps.
      previews: z.number().int().min(0).max(10),
      previewSteps: z.object({ real: z.number().int().min(1).max(50), tiny: z.number().int().min(1).max(50) }),
    }),
    generation: z.object({
      steps: z.object({ real: z.number().int().positive(), tiny: z.number().int().positive() }),
      guidanceScale: z.number(),
      width: z.number().int(),
      height: z.number().int(),
      scheduler: z.enum(schedulers),
      loraScale: z.number(),
      controlnetScale: z.number(),
      negativePrompt: z.string(),
      maxPromptChars: z.number().int().positive(),
    }),
    // After training: sample portraits from these prompts × seeds, scored against a held-out upload.
    likeness: z.object({
      prompts: z.array(z.string().min(1)).min(1),
      seeds: z.array(z.number().int().min(0)).min(1),
      threshold: z.number().min(-1).max(1),
    }),
    // Refused prompt subjects (src/services/prompt-policy.ts) and the negative prompt every generation gets.
    policy: z.object({
      rules: z.array(z.object({
        id: z.string().regex(/^[a-z_]+$/),
        names: z.object({ en: z.string().min(1), ru: z.string().min(1) }),
        terms: z.array(z.string().trim().min(1)),
        minAge: z.number().int().positive().optional(),
      })),
      negativePrompt: z.string(),
    }),
    queue: z.object({
      trainAttempts: z.number().int().min(1),
      generateAttempts: z.number().int().min(1),
      backoffMs: z.number().int().min(0),
    }),
  })
  .strict();

export type Defaults = z.infer<typeof defaults>;

const optionalText = z.string().trim().min(1).optional().catch(undefined);
const emptyAsUndefined = (value: unknown) => (value === '' ? undefined : value);
const idList = z.preprocess(emptyAsUndefined, z.string().regex(/^\s*\d{1,25}(\s*,\s*\d{1,25})*\s*$/, 'comma-separated numeric ids').optional())
  .transform((s) => new Set((s ?? '').split(',').map((id) => id.trim()).filter(Boolean)));

const envSchema = z.object({
  DATABASE_URL: z.url({ protocol: /^postgres(ql)?$/ }).default('postgres://postgres@127.0.0.1:5432/portrait_bot'),
  // A database that accepts connections but never answers must not hang requests: connecting gives up after
  // DATABASE_CONNECT_TIMEOUT_MS, a statement after DATABASE_QUERY_TIMEOUT_MS (the server cancels it; the client stops
  // waiting a second later when the server itself is silent).
  DATABASE_CONNECT_TIMEOUT_MS: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(100).default(5000)),
  DATABASE_QUERY_TIMEOUT_MS: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(100).default(30_000)),
  DATABASE_POOL_SIZE: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(1).max(200).default(10)),
  REDIS_URL: z.url({ protocol: /^rediss?$/ }).default('redis://127.0.0.1:6379'),
  QUEUE_PREFIX: z.string().regex(/^[a-z0-9_-]+$/i).default('portrait'),
  STORAGE_DIR: z.string().min(1).default(resolve(repoRoot, 'var/storage')),
  // local: files under STORAGE_DIR; s3: an S3-compatible bucket (shared by workers on many machines).
  STORAGE: z.preprocess(emptyAsUndefined, z.enum(['local', 's3']).default('local')),
  S3_ENDPOINT: z.preprocess(emptyAsUndefined, z.url({ protocol: /^https?$/ }).optional()),
  S3_BUCKET: z.preprocess(emptyAsUndefined, z.string().regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/).optional()),
  S3_REGION: z.preprocess(emptyAsUndefined, z.string().default('us-east-1')),
  S3_ACCESS_KEY_ID: optionalText,
  S3_SECRET_ACCESS_KEY: optionalText,
  // Path-style URLs (endpoint/bucket/key): default on with a custom S3_ENDPOINT, as self-hosted servers need them.
  S3_FORCE_PATH_STYLE: z.preprocess(emptyAsUndefined, z.stringbool().optional()),
  // S3 only: local copies of blobs an engine reads (content never changes under a key, so they never go stale).
  STORAGE_CACHE_DIR: z.string().min(1).default(resolve(repoRoot, 'var/storage-cache')),
  WORK_DIR: z.string().min(1).default(resolve(repoRoot, 'var/work')),
  ROLES: z
    .string()
    // Chat roles start only where their token is set, so the default runs whatever is configured.
    .default('web,worker,telegram,discord')
    .transform((s) => s.split(',').map((r) => r.trim()).filter(Boolean))
    .pipe(z.array(z.enum(roleNames)).min(1)),
  WEB_HOST: z.string().default('127.0.0.1'),
  WEB_PORT: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(0).max(65535).default(3000)),
  // Origins allowed to change state through the web API (comma-separated, e.g. https://portraits.example.org);
  // unset: the playground's own origin (its loopback names on the port it listens on, or the Host it was reached at).
  WEB_ORIGINS: z.preprocess(emptyAsUndefined, z.string().optional())
    .transform((s) => (s ?? '').split(',').map((o) => o.trim()).filter(Boolean))
    .pipe(z.array(z.url({ protocol: /^https?$/ }).transform((u) => new URL(u).origin))),
  // Uploads are streamed to files here (with a byte limit) instead of being held in memory.
  UPLOAD_TMP_DIR: z.string().min(1).default(resolve(tmpdir(), 'portrait-uploads')),
  IMAGE_DECODE_CONCURRENCY: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(1).max(64).optional()),
  ENGINE_PROFILE: z.enum(['tiny', 'real']).default('tiny'),
  ENGINE_DEVICE: z.enum(['auto', 'cpu', 'cuda']).default('auto'),
  ENGINE_PYTHON: z.string().default(resolve(repoRoot, '.venv/bin/python')),
  ENGINE_CACHE_DIR: z.string().default(resolve(repoRoot, 'var/engine-cache')),
  ENGINE_BASE_MODEL: z.string().optional(),
  ENGINE_CONTROLNET: z.string().optional(),
  // The output check (diffusers' StableDiffusionSafetyChecker on every generated image; flagged ones are withheld):
  // auto: on when its folder is installed (`npm run models -- safety-checker`); on: required; off: never loaded.
  SAFETY_CHECKER: z.preprocess(emptyAsUndefined, z.enum(['auto', 'on', 'off']).default('auto')),
  // Its folder (default: <VISION_MODELS_DIR>/safety-checker, where the models command puts it).
  ENGINE_SAFETY_CHECKER: z.preprocess(emptyAsUndefined, z.string().optional()),
  TRAIN_MAX_STEPS: z.preprocess(emptyAsUndefined, z.coerce.number().int().positive().optional()),
  GENERATE_STEPS: z.preprocess(emptyAsUndefined, z.coerce.number().int().positive().max(100).optional()),
  // How many validation portraits to sample after training (default: every prompt × seed in config; 0: none).
  LIKENESS_SAMPLES: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(0).optional()),
  MIN_TRAINING_PHOTOS: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(1).optional()),
  // A resumable checkpoint every N optimizer steps goes to storage, so a retry on any worker resumes from it (0: off).
  TRAIN_CHECKPOINT_STEPS: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(0).optional()),
  // Sample portraits painted with the LoRA as it stands during a training (0: none), and their denoising steps.
  TRAIN_PREVIEWS: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(0).max(10).optional()),
  TRAIN_PREVIEW_STEPS: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(1).max(50).optional()),
  // An engine request that sends nothing (no progress, no result) for this long is taken as hung: the engine is
  // killed and restarted and the job retried.
  ENGINE_WATCHDOG_MS: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(100).default(300_000)),
  ENGINE_READY_TIMEOUT_MS: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(100).default(600_000)),
  // How many times a training is tried (engine crashes, hangs) before it fails for good.
  TRAIN_ATTEMPTS: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(1).max(20).optional()),
  // Jobs one worker process runs at once per queue; its engine batches them together (denoising steps of several
  // generations in one UNet call, several people's training steps in one batch).
  WORKER_TRAIN_CONCURRENCY: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(1).max(64).default(4)),
  WORKER_GENERATE_CONCURRENCY: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(1).max(64).default(8)),
  // How long a worker's hold on a job lasts without renewal, and how often workers look for jobs whose holder stopped
  // renewing (a killed process or machine): such a job goes back to the queue for another worker. BullMQ's defaults.
  WORKER_LOCK_DURATION_MS: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(500).default(30_000)),
  WORKER_STALLED_INTERVAL_MS: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(200).default(30_000)),
  // The data of people inactive (no new account, photo or job) for this many days is deleted as /forget would.
  RETENTION_DAYS: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(1).optional()),
  // Engines under one worker: ENGINE_GPUS lists GPUs (one engine each, CUDA_VISIBLE_DEVICES=<gpu>); otherwise
  // ENGINE_COUNT engines share whatever device they pick (several CPU engines in tests).
  ENGINE_GPUS: z.preprocess(emptyAsUndefined, z.string().regex(/^\d+(,\d+)*$/).optional()),
  ENGINE_COUNT: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(1).max(16).default(1)),
  // How often the worker compares open job rows with the queue (and at start).
  // Training needs the person's confirmation that the photos are of themselves (off only for tests of other things).
  CONSENT_REQUIRED: z.preprocess(emptyAsUndefined, z.enum(['true', 'false']).default('true')),
  RECONCILE_INTERVAL_MS: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(100).default(60_000)),
  TELEGRAM_BOT_TOKEN: optionalText,
  TELEGRAM_API_ROOT: z.preprocess(emptyAsUndefined, z.url().default('https://api.telegram.org')),
  // polling (default) needs nothing public; webhook needs a public https URL Telegram can reach.
  TELEGRAM_MODE: z.preprocess(emptyAsUndefined, z.enum(['polling', 'webhook']).default('polling')),
  TELEGRAM_WEBHOOK_URL: z.preprocess(emptyAsUndefined, z.url({ protocol: /^https?$/ }).optional()),
  TELEGRAM_WEBHOOK_SECRET: z.preprocess(emptyAsUndefined, z.string().regex(/^[A-Za-z0-9_-]{1,256}$/).optional()),
  TELEGRAM_WEBHOOK_HOST: z.string().default('0.0.0.0'),
  TELEGRAM_WEBHOOK_PORT: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(0).max(65535).default(8443)),
  DISCORD_TOKEN: optionalText,
  DISCORD_APPLICATION_ID: z.preprocess(emptyAsUndefined, z.string().regex(/^\d{5,25}$/).optional()),
  DISCORD_GUILD_ID: z.preprocess(emptyAsUndefined, z.string().regex(/^\d{5,25}$/).optional()),
  DISCORD_API_ROOT: z.preprocess(emptyAsUndefined, z.url().optional()),
  // Minimum time between two edits of one progress message (Telegram allows about one edit a second per chat).
  CHAT_EDIT_INTERVAL_MS: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(0).default(3000)),
  LIMIT_ACTIVE_JOBS: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(1).default(2)),
  LIMIT_GENERATIONS_PER_HOUR: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(1).default(30)),
  LIMIT_TRAININGS_PER_DAY: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(1).default(3)),
  QUEUE_MAX_WAITING: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(1).default(500)),
  // CPU vision models (YuNet, SFace, DWPose ONNX); `npx tsx scripts/models.ts` downloads them here.
  VISION_MODELS_DIR: z.string().min(1).default(resolve(repoRoot, 'var/models')),
  // sface (Apache-2.0, default) | arcface (InsightFace weights: non-commercial use only)
  FACE_EMBEDDER: z.preprocess(emptyAsUndefined, z.enum(['sface', 'arcface']).default('sface')),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  // Human-readable log lines (pino-pretty); default: on when stdout is a terminal, JSON lines otherwise.
  LOG_PRETTY: z.preprocess(emptyAsUndefined, z.stringbool().optional()),
  // A small HTTP listener with /healthz, /readyz and /metrics, for processes without the web server (a GPU worker).
  HEALTH_PORT: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(0).max(65535).optional()),
  HEALTH_HOST: z.string().default('0.0.0.0'),
  // /metrics on the web server without the admin token (off: Prometheus scrapes HEALTH_PORT or sends the token).
  METRICS_PUBLIC: z.preprocess(emptyAsUndefined, z.stringbool().default(false)),
  // Bull Board at /admin/queues and admin API calls need `Authorization: Bearer <token>` (or Basic, any user); unset: off.
  ADMIN_TOKEN: z.preprocess(emptyAsUndefined, z.string().min(16, 'at least 16 characters').optional()),
  // Chat accounts allowed to use the /admin command (comma-separated platform ids).
  ADMIN_TELEGRAM_IDS: idList,
  ADMIN_DISCORD_IDS: idList,
});

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`Invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

function loadDefaults(): Defaults {
  const raw: unknown = JSON.parse(readFileSync(resolve(repoRoot, 'config/defaults.json'), 'utf8'));
  const parsed = defaults.safeParse(raw);
  if (!parsed.success) throw new ConfigError(parsed.error.issues.map((i) => `config/defaults.json ${i.path.join('.')}: ${i.message}`));
  return parsed.data;
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env) {
  const parsed = envSchema.safeParse(env);
  const problems = parsed.success ? [] : parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
  if (parsed.success && parsed.data.ENGINE_PROFILE === 'real') {
    if (!parsed.data.ENGINE_BASE_MODEL) problems.push('ENGINE_BASE_MODEL: required when ENGINE_PROFILE=real (an SD1.5 diffusers folder)');
    if (!parsed.data.ENGINE_CONTROLNET) problems.push('ENGINE_CONTROLNET: required when ENGINE_PROFILE=real (a ControlNet openpose folder)');
  }
  if (parsed.success && parsed.data.TELEGRAM_MODE === 'webhook' && parsed.data.TELEGRAM_BOT_TOKEN && !parsed.data.TELEGRAM_WEBHOOK_URL) {
    problems.push('TELEGRAM_WEBHOOK_URL: required when TELEGRAM_MODE=webhook (the public https URL Telegram posts updates to)');
  }
  if (parsed.success && parsed.data.STORAGE === 's3' && !parsed.data.S3_BUCKET) {
    problems.push('S3_BUCKET: required when STORAGE=s3 (3–63 lower-case letters, digits, dots or hyphens)');
  }
  if (problems.length > 0 || !parsed.success) throw new ConfigError(problems);
  const e = parsed.data;
  const d = loadDefaults();
  const profile = e.ENGINE_PROFILE;
  return {
    databaseUrl: e.DATABASE_URL,
    database: { connectTimeoutMs: e.DATABASE_CONNECT_TIMEOUT_MS, queryTimeoutMs: e.DATABASE_QUERY_TIMEOUT_MS, poolSize: e.DATABASE_POOL_SIZE },
    redisUrl: e.REDIS_URL,
    queuePrefix: e.QUEUE_PREFIX,
    storageDir: resolve(e.STORAGE_DIR),
    storage: {
      kind: e.STORAGE,
      cacheDir: resolve(e.STORAGE_CACHE_DIR),
      s3: {
        endpoint: e.S3_ENDPOINT,
        bucket: e.S3_BUCKET ?? '',
        region: e.S3_REGION,
        accessKeyId: e.S3_ACCESS_KEY_ID,
        secretAccessKey: e.S3_SECRET_ACCESS_KEY,
        forcePathStyle: e.S3_FORCE_PATH_STYLE ?? e.S3_ENDPOINT !== undefined,
      },
    },
    workDir: resolve(e.WORK_DIR),
    roles: new Set(e.ROLES),
    web: { host: e.WEB_HOST, port: e.WEB_PORT, origins: e.WEB_ORIGINS, uploadTmpDir: resolve(e.UPLOAD_TMP_DIR) },
    engine: {
      profile,
      device: e.ENGINE_DEVICE,
      python: e.ENGINE_PYTHON,
      cacheDir: resolve(e.ENGINE_CACHE_DIR),
      baseModel: e.ENGINE_BASE_MODEL,
      controlnet: e.ENGINE_CONTROLNET,
      safety: e.SAFETY_CHECKER,
      safetyChecker: resolve(e.ENGINE_SAFETY_CHECKER ?? resolve(e.VISION_MODELS_DIR, 'safety-checker')),
      watchdogMs: e.ENGINE_WATCHDOG_MS,
      gpus: e.ENGINE_GPUS?.split(','),
      count: e.ENGINE_GPUS ? e.ENGINE_GPUS.split(',').length : e.ENGINE_COUNT,
      readyTimeoutMs: e.ENGINE_READY_TIMEOUT_MS,
    },
    reconcileIntervalMs: e.RECONCILE_INTERVAL_MS,
    retentionDays: e.RETENTION_DAYS,
    consentRequired: e.CONSENT_REQUIRED === 'true',
    worker: {
      trainConcurrency: e.WORKER_TRAIN_CONCURRENCY,
      generateConcurrency: e.WORKER_GENERATE_CONCURRENCY,
      lockDurationMs: e.WORKER_LOCK_DURATION_MS,
      stalledIntervalMs: e.WORKER_STALLED_INTERVAL_MS,
    },
    photos: { ...d.photos, minForTraining: e.MIN_TRAINING_PHOTOS ?? d.photos.minForTraining, decodeConcurrency: e.IMAGE_DECODE_CONCURRENCY ?? d.photos.decodeConcurrency },
    training: {
      ...d.training,
      maxSteps: e.TRAIN_MAX_STEPS ?? d.training.maxSteps[profile],
      checkpointSteps: e.TRAIN_CHECKPOINT_STEPS ?? d.training.checkpointSteps[profile],
      previews: e.TRAIN_PREVIEWS ?? d.training.previews,
      previewSteps: e.TRAIN_PREVIEW_STEPS ?? d.training.previewSteps[profile],
    },
    generation: { ...d.generation, steps: e.GENERATE_STEPS ?? d.generation.steps[profile] },
    queue: { ...d.queue, trainAttempts: e.TRAIN_ATTEMPTS ?? d.queue.trainAttempts },
    policy: d.policy,
    likeness: { ...d.likeness, samples: e.LIKENESS_SAMPLES ?? d.likeness.prompts.length * d.likeness.seeds.length },
    vision: { modelsDir: resolve(e.VISION_MODELS_DIR), embedder: e.FACE_EMBEDDER },
    telegram: {
      token: e.TELEGRAM_BOT_TOKEN,
      apiRoot: e.TELEGRAM_API_ROOT,
      mode: e.TELEGRAM_MODE,
      webhook: { url: e.TELEGRAM_WEBHOOK_URL, secret: e.TELEGRAM_WEBHOOK_SECRET, host: e.TELEGRAM_WEBHOOK_HOST, port: e.TELEGRAM_WEBHOOK_PORT },
    },
    discord: { token: e.DISCORD_TOKEN, applicationId: e.DISCORD_APPLICATION_ID, guildId: e.DISCORD_GUILD_ID, apiRoot: e.DISCORD_API_ROOT },
    chat: { editIntervalMs: e.CHAT_EDIT_INTERVAL_MS },
    limits: {
      activeJobs: e.LIMIT_ACTIVE_JOBS,
      generationsPerHour: e.LIMIT_GENERATIONS_PER_HOUR,
      trainingsPerDay: e.LIMIT_TRAININGS_PER_DAY,
      queueMaxWaiting: e.QUEUE_MAX_WAITING,
    },
    logLevel: e.LOG_LEVEL,
    logPretty: e.LOG_PRETTY,
    health: { port: e.HEALTH_PORT, host: e.HEALTH_HOST },
    metricsPublic: e.METRICS_PUBLIC,
    admin: { token: e.ADMIN_TOKEN, telegramIds: e.ADMIN_TELEGRAM_IDS, discordIds: e.ADMIN_DISCORD_IDS },
  };
}

export type Config = ReturnType<typeof loadConfig>;
