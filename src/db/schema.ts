// Database schema: drizzle-kit generates migrations/ from this file (`npm run db:generate`); never edit the SQL.
import { sql } from 'drizzle-orm';
import {
  pgTable, uuid, text, integer, real, jsonb, timestamp, uniqueIndex, index, bigint,
} from 'drizzle-orm/pg-core';

const id = () => uuid('id').primaryKey().defaultRandom();
const createdAt = () => timestamp('created_at', { withTimezone: true }).notNull().defaultNow();
const owner = () => uuid('user_id').notNull().references(() => users.id, { onDelete: 'cascade' });

export const users = pgTable('users', {
  id: id(),
  displayName: text('display_name'),
  locale: text('locale').notNull().default('en'),
  createdAt: createdAt(),
});

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
    fileKey: text('file_key'),
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

export const generations = pgTable(
  'generations',
  {
    id: id(),
    userId: owner(),
    jobId: uuid('job_id').notNull().references(() => jobs.id, { onDelete: 'cascade' }),
    adapterId: uuid('adapter_id').references(() => adapters.id, { onDelete: 'set null' }),
    kind: text('kind', { enum: ['imagine', 'pose'] }).notNull(),
    prompt: text('prompt').notNull(),
    negativePrompt: text('negative_prompt').notNull().default(''),
    seed: bigint('seed', { mode: 'number' }).notNull(),
    params: jsonb('params').$type<Record<string, unknown>>().notNull(),
    controlKey: text('control_key'),
    outputKeys: jsonb('output_keys').$type<string[]>().notNull().default([]),
    createdAt: createdAt(),
  },
  (t) => [uniqueIndex('generations_job').on(t.jobId), index('generations_user').on(t.userId)],
);

export type User = typeof users.$inferSelect;
export type Photo = typeof photos.$inferSelect;
export type Adapter = typeof adapters.$inferSelect;
export type Job = typeof jobs.$inferSelect;
export type Generation = typeof generations.$inferSelect;
