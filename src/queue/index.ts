// Queue names, typed payloads, job ids and retry policy: the only place producers import bullmq from.
import type { Logger } from 'pino';
import { Queue, type JobsOptions } from 'bullmq';
import { Redis } from 'ioredis';
import type { Config } from '../config/index.ts';

export const queueNames = { train: 'train', generate: 'generate' } as const;
export type QueueName = (typeof queueNames)[keyof typeof queueNames];

/**
 * Payloads carry ids of rows only: the database holds the request, so a retried job always sees its current state,
 * and a queue record left after /forget names nobody (its rows are gone, and no user id is in it).
 */
export interface TrainJobData { jobId: string; adapterId: string }
export interface GenerateJobData { jobId: string; generationId: string }
export interface JobDataByQueue { train: TrainJobData; generate: GenerateJobData }

export const queueJobId = (jobId: string, queue: QueueName) => `${jobId}-${queue}`;

export function jobOptions(config: Config, queue: QueueName): JobsOptions {
  return {
    attempts: queue === 'train' ? config.queue.trainAttempts : config.queue.generateAttempts,
    backoff: { type: 'exponential', delay: config.queue.backoffMs },
    removeOnComplete: { age: 24 * 3600, count: 1000 },
    removeOnFail: { age: 7 * 24 * 3600, count: 5000 },
  };
}

/** Redis pub/sub channels beside the queues: user-facing events and cancel requests. */
export const channels = {
  userEvents: (prefix: string, userId: string) => `${prefix}:events:${userId}`,
  cancel: (prefix: string) => `${prefix}:cancel`,
};

export function redisConnection(url: string, forWorker = false, logger?: Pick<Logger, 'warn' | 'info'>): Redis {
  // Workers block on Redis: BullMQ requires maxRetriesPerRequest null there.
  const redis = new Redis(url, { maxRetriesPerRequest: forWorker ? null : 20, lazyConnect: false });
  // Without a listener ioredis prints a stack trace to stderr for every failed reconnect. It reconnects by itself and
  // each failing command reports to its caller, so one line per outage is enough.
  let down = false;
  redis.on('error', (error: Error) => {
    if (down) return;
    down = true;
    logger?.warn({ err: error }, 'Redis connection lost; reconnecting');
  });
  redis.on('ready', () => {
    if (!down) return;
    down = false;
    logger?.info('Redis connection back');
  });
  return redis;
}

export class JobQueues {
  readonly train: Queue<TrainJobData>;
  readonly generate: Queue<GenerateJobData>;

  constructor(private readonly config: Config, readonly connection: Redis) {
    const opts = { connection, prefix: config.queuePrefix };
    this.train = new Queue<TrainJobData>(queueNames.train, opts);
    this.generate = new Queue<GenerateJobData>(queueNames.generate, opts);
  }

  async addTrain(data: TrainJobData) {
    const queue = queueNames.train;
    return this.train.add(queue, data, { ...jobOptions(this.config, queue), jobId: queueJobId(data.jobId, queue) });
  }

  async addGenerate(data: GenerateJobData) {
    const queue = queueNames.generate;
    return this.generate.add(queue, data, { ...jobOptions(this.config, queue), jobId: queueJobId(data.jobId, queue) });
  }

  /** Removes a job that has not started; returns false when a worker already holds it. */
  async removeWaiting(queue: QueueName, jobId: string): Promise<boolean> {
    const job = await this[queue].getJob(queueJobId(jobId, queue));
    if (!job) return true;
    const state = await job.getState();
    if (state === 'active') return false;
    await job.remove();
    return true;
  }

  /** Removes the queue records of finished or waiting jobs (a running one is withdrawn by its worker instead). */
  async removeRecords(queue: QueueName, jobIds: string[]): Promise<void> {
    for (const jobId of jobIds) {
      const job = await this[queue].getJob(queueJobId(jobId, queue));
      if (job && (await job.getState()) !== 'active') await job.remove();
    }
    await this.removeEvents(queue, jobIds);
  }

  /**
   * Deletes the queue's event-stream entries about these jobs: BullMQ keeps its recent events (up to its stream
   * length), and a completed event carries the job's return value (row ids, blob keys).
   */
  private async removeEvents(queue: QueueName, jobIds: string[]): Promise<void> {
    const wanted = new Set(jobIds.map((id) => queueJobId(id, queue)));
    if (wanted.size === 0) return;
    const key = this[queue].keys.events!;
    const page = 1000;
    for (let start = '-'; ;) {
      const entries = await this.connection.xrange(key, start, '+', 'COUNT', page);
      const doomed = entries.filter(([, fields]) => {
        const at = fields.findIndex((field: string, i: number) => i % 2 === 0 && field === 'jobId');
        return at >= 0 && wanted.has(fields[at + 1]!);
      }).map(([id]) => id);
      if (doomed.length > 0) await this.connection.xdel(key, ...doomed);
      if (entries.length < page) return;
      start = `(${entries.at(-1)![0]}`;
    }
  }

  /** Tells every worker to stop this job if it holds it (it checks the job's row too, so a missed message is harmless). */
  async requestCancel(jobId: string): Promise<void> {
    await this.connection.publish(channels.cancel(this.config.queuePrefix), jobId);
  }

  async close() {
    await Promise.all([this.train.close(), this.generate.close()]);
  }
}
