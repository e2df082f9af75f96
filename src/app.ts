// Composition root: builds every outside connection once and hands it to the services that need it.
import type { Logger } from 'pino';
import { createLogger } from './logging.ts';
import type { Config } from './config/index.ts';
import { openDatabase, ensureDatabaseExists, migrateDatabase, type Database } from './db/client.ts';
import { JobQueues, redisConnection } from './queue/index.ts';
import { EventBus } from './events/bus.ts';
import { LocalBlobStore } from './storage/local-store.ts';
import { S3BlobStore } from './storage/s3-store.ts';
import type { BlobStore } from './storage/storage.ts';
import { UserService } from './services/users.ts';
import { PhotoService } from './services/photos.ts';
import { JobService } from './services/jobs.ts';
import { JobState } from './services/job-state.ts';
import { TrainingService } from './services/training.ts';
import { GenerationService } from './services/generation.ts';
import { ForgetService } from './services/forget.ts';
import { RetentionService } from './services/retention.ts';
import { LinkService } from './services/link.ts';
import { LimitService } from './services/limits.ts';
import { ChatTargetService } from './services/chat-targets.ts';
import { AdminService } from './services/admin.ts';
import { VisionService } from './vision/index.ts';
import { decodeSlots } from './images/decode-slots.ts';
import { dependencyChecks, type HealthChecks } from './health.ts';
import { metrics } from './metrics.ts';

export interface Services {
  users: UserService;
  jobState: JobState;
  photos: PhotoService;
  jobs: JobService;
  training: TrainingService;
  generation: GenerationService;
  forget: ForgetService;
  retention: RetentionService;
  link: LinkService;
  limits: LimitService;
  chatTargets: ChatTargetService;
  admin: AdminService;
}

export interface App {
  config: Config;
  logger: Logger;
  database: Database;
  store: BlobStore;
  queues: JobQueues;
  events: EventBus;
  vision: VisionService;
  services: Services;
  /** What /readyz asks; the worker adds its engine. */
  health: HealthChecks;
  close(): Promise<void>;
}

/** The BlobStore the config names; an S3 bucket is created if it is missing. */
export async function createStore(config: Config): Promise<BlobStore> {
  if (config.storage.kind === 'local') return new LocalBlobStore(config.storageDir);
  const store = new S3BlobStore({ ...config.storage.s3, cacheDir: config.storage.cacheDir });
  await store.ensureBucket();
  return store;
}

export async function createApp(config: Config, logger: Logger = createLogger(config)): Promise<App> {
  // The store first: an unreachable bucket fails the start before any connection is left open.
  const store = await createStore(config);
  await ensureDatabaseExists(config.databaseUrl);
  const database = openDatabase(config.databaseUrl, {
    max: config.database.poolSize, connectTimeoutMs: config.database.connectTimeoutMs, queryTimeoutMs: config.database.queryTimeoutMs,
  });
  await migrateDatabase(database.db);
  const db = database.db;
  decodeSlots.resize(config.photos.decodeConcurrency);
  const redis = redisConnection(config.redisUrl, false, logger);
  const subscriber = redisConnection(config.redisUrl, true, logger);
  const queues = new JobQueues(config, redis);
  const events = new EventBus(config.queuePrefix, redis, subscriber);
  const users = new UserService(db);
  const vision = new VisionService(config.vision);
  const photos = new PhotoService(db, store, config, vision);
  const jobState = new JobState(db);
  const jobs = new JobService(db, queues, events, jobState, { train: config.worker.trainConcurrency, generate: config.worker.generateConcurrency });
  const training = new TrainingService(db, queues, events, photos, jobs, vision, config, jobState);
  const generation = new GenerationService(db, queues, events, store, training, jobs, vision, config, jobState);
  const link = new LinkService(db);
  const limits = new LimitService(db, redis, config.queuePrefix, config.limits);
  const forget = new ForgetService(db, store, queues, jobState, limits, config);
  const retention = new RetentionService(db, forget, config.retentionDays);
  const chatTargets = new ChatTargetService(db);
  const admin = new AdminService(db, queues);
  const health = dependencyChecks(db, redis, store);
  const unwatchQueues = metrics.watchQueues([queues.train, queues.generate]);
  return {
    config,
    logger,
    database,
    store,
    queues,
    events,
    vision,
    health,
    services: { users, jobState, photos, jobs, training, generation, forget, retention, link, limits, chatTargets, admin },
    async close() {
      unwatchQueues();
      await vision.close();
      await queues.close();
      subscriber.disconnect();
      await redis.quit();
      await database.close();
      if (store instanceof S3BlobStore) store.client.destroy();
    },
  };
}
