// The one place that reads the environment: parsed once, validated, typed.
import { z } from 'zod';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { resolve } from 'node:path';

export const repoRoot = resolve(fileURLToPath(new URL('../..', import.meta.url)));

const defaults = z
  .object({
    photos: z.object({
      minForTraining: z.number().int().min(1),
      maxPerUser: z.number().int().min(1),
      maxUploadBytes: z.number().int().positive(),
      minShortSide: z.number().int().positive(),
    }),
    training: z.object({
      instancePrompt: z.string().min(1),
      resolution: z.number().int().min(512),
      rank: z.number().int().positive(),
      alpha: z.number().positive(),
      learningRate: z.number().positive(),
      batchSize: z.number().int().positive(),
      gradAccum: z.number().int().positive(),
      lrScheduler: z.string(),
      seed: z.number().int(),
      maxSteps: z.object({ real: z.number().int().positive(), tiny: z.number().int().positive() }),
    }),
    generation: z.object({
      steps: z.object({ real: z.number().int().positive(), tiny: z.number().int().positive() }),
      guidanceScale: z.number(),
      width: z.number().int(),
      height: z.number().int(),
      scheduler: z.enum(['unipc', 'dpmpp_2m_karras', 'euler_a', 'ddim']),
      loraScale: z.number(),
      controlnetScale: z.number(),
      negativePrompt: z.string(),
      maxPromptChars: z.number().int().positive(),
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

const envSchema = z.object({
  DATABASE_URL: z.url({ protocol: /^postgres(ql)?$/ }).default('postgres://postgres@127.0.0.1:5432/portrait_bot'),
  REDIS_URL: z.url({ protocol: /^rediss?$/ }).default('redis://127.0.0.1:6379'),
  QUEUE_PREFIX: z.string().regex(/^[a-z0-9_-]+$/i).default('portrait'),
  STORAGE_DIR: z.string().min(1).default(resolve(repoRoot, 'var/storage')),
  WORK_DIR: z.string().min(1).default(resolve(repoRoot, 'var/work')),
  ROLES: z
    .string()
    .default('web,worker')
    .transform((s) => s.split(',').map((r) => r.trim()).filter(Boolean))
    .pipe(z.array(z.enum(['web', 'worker', 'telegram', 'discord'])).min(1)),
  WEB_HOST: z.string().default('127.0.0.1'),
  WEB_PORT: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(0).max(65535).default(3000)),
  ENGINE_PROFILE: z.enum(['tiny', 'real']).default('tiny'),
  ENGINE_DEVICE: z.enum(['auto', 'cpu', 'cuda']).default('auto'),
  ENGINE_PYTHON: z.string().default(resolve(repoRoot, '.venv/bin/python')),
  ENGINE_CACHE_DIR: z.string().default(resolve(repoRoot, 'var/engine-cache')),
  ENGINE_BASE_MODEL: z.string().optional(),
  ENGINE_CONTROLNET: z.string().optional(),
  TRAIN_MAX_STEPS: z.preprocess(emptyAsUndefined, z.coerce.number().int().positive().optional()),
  GENERATE_STEPS: z.preprocess(emptyAsUndefined, z.coerce.number().int().positive().max(100).optional()),
  MIN_TRAINING_PHOTOS: z.preprocess(emptyAsUndefined, z.coerce.number().int().min(1).optional()),
  TELEGRAM_BOT_TOKEN: optionalText,
  DISCORD_TOKEN: optionalText,
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
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
  if (problems.length > 0 || !parsed.success) throw new ConfigError(problems);
  const e = parsed.data;
  const d = loadDefaults();
  const profile = e.ENGINE_PROFILE;
  return {
    databaseUrl: e.DATABASE_URL,
    redisUrl: e.REDIS_URL,
    queuePrefix: e.QUEUE_PREFIX,
    storageDir: resolve(e.STORAGE_DIR),
    workDir: resolve(e.WORK_DIR),
    roles: new Set(e.ROLES),
    web: { host: e.WEB_HOST, port: e.WEB_PORT },
    engine: {
      profile,
      device: e.ENGINE_DEVICE,
      python: e.ENGINE_PYTHON,
      cacheDir: resolve(e.ENGINE_CACHE_DIR),
      baseModel: e.ENGINE_BASE_MODEL,
      controlnet: e.ENGINE_CONTROLNET,
    },
    photos: { ...d.photos, minForTraining: e.MIN_TRAINING_PHOTOS ?? d.photos.minForTraining },
    training: { ...d.training, maxSteps: e.TRAIN_MAX_STEPS ?? d.training.maxSteps[profile] },
    generation: { ...d.generation, steps: e.GENERATE_STEPS ?? d.generation.steps[profile] },
    queue: d.queue,
    telegramToken: e.TELEGRAM_BOT_TOKEN,
    discordToken: e.DISCORD_TOKEN,
    logLevel: e.LOG_LEVEL,
  };
}

export type Config = ReturnType<typeof loadConfig>;
