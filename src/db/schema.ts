// Database schema: drizzle-kit generates migrations/ from this file (`npm run db:generate`); never edit the SQL.
import { sql } from 'drizzle-orm';
import {
  pgTable, uuid, text, integer, real, jsonb, timestamp, uniqueIndex, index, bigint,
} from 'drizzle-orm/pg-core';
import type { GenerateRequest } from '../engine/protocol.ts';

const id = () => uuid('id').primaryKey().defaultRandom();
const createdAt = () => timestamp('created_at', { withTimezone: true }).notNull().defaultNow();
const owner = () => uuid('user_id').notNull().references(() => users.id, { onDelete: 'cascade' });

export const users = pgTable('users', {
  id: id(),
  displayName: text('display_name'),
  locale: text('locale').notNull().default('en'),
  /** When the person confirmed their photos are of themselves; training needs it. /forget deletes the row. */
  consentedAt: timestamp('consented_at', { withTimezone: true }),
  /** Set by an admin: every command answers that the account is blocked. */
  bannedAt: timestamp('banned_at', { withTimezone: true }),
  /** Per-person limits set by an admin, over the configured ones (src/services/limits.ts). */
  limitOverrides: jsonb('limit_overrides').$type<LimitOverrides>(),
  createdAt: createdAt(),
});

export const limitNames = ['activeJobs', 'generationsPerHour', 'trainingsPerDay'] as const;
export type LimitName = (typeof limitNames)[number];
export type LimitOverrides = Partial<Record<LimitName, number>>;

export const platforms = ['web', 'telegram', 'discord'] as const;
export type Platform = (typeof platforms)[number];

/** A chat identity on one platform, mapped to one user (several accounts can share a user after /link). */
export const accounts = pgTable(
  'accounts',
  {
    id: id(),
    userId: owner(),
    platform: text('platform', { enum: platforms }).notNull(),
    externalId: text('external_id').notNull(),
    createdAt: createdAt(),
  },
  (t) => [uniqueIndex('accounts_platform_external_id').on(t.platform, t.externalId), index('accounts_user').on(t.userId)],
);

export const photoStatuses = ['accepted', 'rejected'] as const;

export const photos = pgTable(
  'photos',
  {
    id: id(),
    userId: owner(),
    /** sha256 of the normalized original: the same picture sent twice is one photo. */
    sha256: text('sha256').notNull(),
    storageKey: text('storage_key').notNull(),
    /** The square crop at training resolution that the engine trains on. */
    cropKey: text('crop_key').notNull(),
    width: integer('width').notNull(),
    height: integer('height').notNull(),
    bytes: integer('bytes').notNull(),
    sourceFormat: text('source_format').notNull(),
    originalName: text('original_name'),
    /** Perceptual hash (64-bit, hex) for near-duplicate checks. */
    phash: text('phash'),
    /** Face embedding (SFace/ArcFace), when the face models are installed. */
    embedding: jsonb('embedding').$type<number[]>(),
    /** Face measures from the photo check (sharpness, brightness, yaw, face size); null when no check ran. */
    faceMeasures: jsonb('face_measures').$type<Record<string, number>>(),
    status: text('status', { enum: photoStatuses }).notNull().default('accepted'),
    createdAt: createdAt(),
  },
  (t) => [uniqueIndex('photos_user_sha256').on(t.userId, t.sha256), index('photos_user').on(t.userId)],
);

export const adapterStatuses = ['queued', 'training', 'ready', 'failed', 'cancelled'] as const;
export type AdapterStatus = (typeof adapterStatuses)[number];

/** One trained LoRA version of a user. */
export const adapters = pgTable(
  'adapters',
  {
    id: id(),
    userId: owner(),
    version: integer('version').notNull(),
    status: text('status', { enum: adapterStatuses }).notNull().default('queued'),
    baseModel: text('base_model').notNull(),
    params: jsonb('params').$type<Record<string, unknown>>().notNull(),
    metrics: jsonb('metrics').$type<Record<string, unknown>>(),
    photoIds: jsonb('photo_ids').$type<string[]>().notNull(),
    /** The upload kept out of training, so the likeness score compares against a photo the model never saw. */
    heldOutPhotoId: uuid('held_out_photo_id').references(() => photos.id, { onDelete: 'set null' }),
    fileKey: text('file_key'),
    /** The same LoRA in kohya's format, which A1111 and ComfyUI load. */
    kohyaFileKey: text('kohya_file_key'),
    /** Sample portraits generated right after training (the likeness validation set). */
    sampleKeys: jsonb('sample_keys').$type<string[]>().notNull().default([]),
    createdAt: createdAt(),
    updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [uniqueIndex('adapters_user_version').on(t.userId, t.version)],
);

export const jobKinds = ['train', 'imagine', 'pose'] as const;
export type JobKind = (typeof jobKinds)[number];
export const jobStatuses = ['queued', 'active', 'completed', 'failed', 'cancelled'] as const;
export type JobStatus = (typeof jobStatuses)[number];

export const jobs = pgTable(
  'jobs',
  {
    id: id(),
    userId: owner(),
    kind: text('kind', { enum: jobKinds }).notNull(),
    status: text('status', { enum: jobStatuses }).notNull().default('queued'),
    /** BullMQ job id: `${id}-${queue}`, so adding the same job twice is a no-op. */
    queueJobId: text('queue_job_id').notNull(),
    progress: real('progress').notNull().default(0),
    step: integer('step'),
    totalSteps: integer('total_steps'),
    attempts: integer('attempts').notNull().default(0),
    error: text('error'),
    errorCode: text('error_code'),
    adapterId: uuid('adapter_id').references(() => adapters.id, { onDelete: 'set null' }),
    /** The newest training checkpoint in storage, so a retry on any worker resumes from it. */
    checkpointKey: text('checkpoint_key'),
    checkpointStep: integer('checkpoint_step'),
    /** A running or finished training's loss curve so far: [step, loss] pairs as the engine reported them. */
    lossCurve: jsonb('loss_curve').$type<[number, number][]>().notNull().default([]),
    createdAt: createdAt(),
    startedAt: timestamp('started_at', { withTimezone: true }),
    finishedAt: timestamp('finished_at', { withTimezone: true }),
  },
  (t) => [
    uniqueIndex('jobs_queue_job_id').on(t.queueJobId),
    index('jobs_user_status').on(t.userId, t.status),
    // A double-clicked Train makes one job: at most one unfinished training per user.
    uniqueIndex('jobs_one_open_training_per_user')
      .on(t.userId)
      .where(sql`${t.kind} = 'train' and ${t.status} in ('queued', 'active')`),
  ],
);

/** An intermediate preview of a training: a sample portrait painted with its LoRA after `step` of `total`. */
export const trainingPreviews = pgTable(
  'training_previews',
  {
    id: id(),
    userId: owner(),
    jobId: uuid('job_id').notNull().references(() => jobs.id, { onDelete: 'cascade' }),
    step: integer('step').notNull(),
    total: integer('total').notNull(),
    key: text('key').notNull(),
    createdAt: createdAt(),
  },
  (t) => [uniqueIndex('training_previews_job_step').on(t.jobId, t.step), index('training_previews_key').on(t.key)],
);

/** What a generation row's `params` holds: the request's options resolved against the defaults. */
export interface GenerationParams {
  steps: number;
  guidanceScale: number;
  width: number;
  height: number;
  scheduler: NonNullable<GenerateRequest['scheduler']>;
  loraScale: number;
  controlnetScale?: number;
}

export const generations = pgTable(
  'generations',
  {
    id: id(),
    userId: owner(),
    jobId: uuid('job_id').notNull().references(() => jobs.id, { onDelete: 'cascade' }),
    adapterId: uuid('adapter_id').references(() => adapters.id, { onDelete: 'set null' }),
    kind: text('kind', { enum: ['imagine', 'pose'] }).notNull(),
    /** As the person typed it (empty for a /pose without words). */
    prompt: text('prompt').notNull(),
    /** What the engine is given: the prompt with the trained subject named (null on rows from before it existed). */
    enginePrompt: text('engine_prompt'),
    /** The style preset it was painted in (src/services/styles.ts), if any. */
    style: text('style'),
    negativePrompt: text('negative_prompt').notNull().default(''),
    seed: bigint('seed', { mode: 'number' }).notNull(),
    params: jsonb('params').$type<GenerationParams>().notNull(),
    controlKey: text('control_key'),
    outputKeys: jsonb('output_keys').$type<string[]>().notNull().default([]),
    /** How many of its pictures the engine's safety check withheld (never stored, never sent). */
    withheld: integer('withheld').notNull().default(0),
    /** Face similarity of the output to the user's held-out photo (null: no face found or no face models). */
    likeness: real('likeness'),
    createdAt: createdAt(),
  },
  (t) => [uniqueIndex('generations_job').on(t.jobId), index('generations_user').on(t.userId)],
);

/** One-time codes from `/link`: entered on another platform, they join that account to this user. */
export const linkCodes = pgTable(
  'link_codes',
  {
    code: text('code').primaryKey(),
    userId: owner(),
    platform: text('platform', { enum: platforms }).notNull(),
    expiresAt: timestamp('expires_at', { withTimezone: true }).notNull(),
    createdAt: createdAt(),
  },
  (t) => [index('link_codes_user').on(t.userId)],
);

/**
 * Where a job's progress is shown: the chat message a bot edits as the job advances. `target` is the platform's
 * address of that message (Telegram chat + message id; Discord interaction token + channel). `deliveredAt` is set
 * once every part of the final state was sent (see the outbox columns and the README for what is guaranteed).
 */
export const chatTargets = pgTable(
  'chat_targets',
  {
    jobId: uuid('job_id').primaryKey().references(() => jobs.id, { onDelete: 'cascade' }),
    userId: owner(),
    platform: text('platform', { enum: platforms }).notNull(),
    target: jsonb('target').$type<Record<string, string | number>>().notNull(),
    locale: text('locale').notNull(),
    deliveredAt: timestamp('delivered_at', { withTimezone: true }),
    createdAt: createdAt(),
    // The outbox: the final delivery is sent under a lease (who, until when, on the database clock) and recorded part by
    // part, so a retry or another process resumes after the last part that was sent.
    leaseOwner: text('lease_owner'),
    leaseUntil: timestamp('lease_until', { withTimezone: true }),
    attempts: integer('attempts').notNull().default(0),
    nextAttemptAt: timestamp('next_attempt_at', { withTimezone: true }),
    /** Parts already sent (status edit, album n, documents n) → when. */
    parts: jsonb('parts').$type<Record<string, string>>().notNull().default({}),
    /** Set when the delivery was given up (bot blocked, chat gone, too many attempts). */
    failedAt: timestamp('failed_at', { withTimezone: true }),
    lastError: text('last_error'),
  },
  (t) => [index('chat_targets_pending').on(t.platform).where(sql`${t.deliveredAt} is null`)],
);

/**
 * A claim on a blob between storing it and committing the row that refers to it. Blobs are content-addressed and
 * shared, so without it a delete of "unreferenced" bytes could remove what another request has just stored.
 */
export const blobLeases = pgTable(
  'blob_leases',
  {
    id: uuid('id').primaryKey().defaultRandom(),
    key: text('key').notNull(),
    expiresAt: timestamp('expires_at', { withTimezone: true }).notNull(),
  },
  (t) => [index('blob_leases_key').on(t.key), index('blob_leases_expires').on(t.expiresAt)],
);

export type User = typeof users.$inferSelect;
export type Photo = typeof photos.$inferSelect;
export type Adapter = typeof adapters.$inferSelect;
export type Job = typeof jobs.$inferSelect;
export type Generation = typeof generations.$inferSelect;
export type TrainingPreview = typeof trainingPreviews.$inferSelect;
export type LinkCode = typeof linkCodes.$inferSelect;
export type ChatTarget = typeof chatTargets.$inferSelect;
