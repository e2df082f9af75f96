// Prometheus metrics: the one module that wraps prom-client, with one registry per process. Modules record through
// the named helpers below; /metrics (web server or HEALTH_PORT) renders the registry.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Queue } from 'bullmq';

export const registry = new Registry();
collectDefaultMetrics({ register: registry, prefix: 'portrait_process_' });

const jobStates = ['waiting', 'active', 'delayed', 'prioritized', 'waiting-children', 'failed', 'completed'] as const;

/** The queues whose depth a scrape reads (the process's own JobQueues; tests may run several apps in turn). */
const watchedQueues = new Map<string, Queue>();

const queueDepth = new Gauge({
  name: 'portrait_queue_jobs',
  help: 'Jobs in each BullMQ queue by state, read from Redis at scrape time',
  labelNames: ['queue', 'state'],
  registers: [registry],
  async collect() {
    this.reset();
    await Promise.all([...watchedQueues.values()].map(async (queue) => {
      const counts = await queue.getJobCounts(...jobStates);
      for (const state of jobStates) this.set({ queue: queue.name, state }, counts[state] ?? 0);
    }));
  },
});
void queueDepth;

const queuePaused = new Gauge({
  name: 'portrait_queue_paused',
  help: '1 while a queue is paused (admin pause), else 0',
  labelNames: ['queue'],
  registers: [registry],
  async collect() {
    this.reset();
    await Promise.all([...watchedQueues.values()].map(async (queue) => this.set({ queue: queue.name }, (await queue.isPaused()) ? 1 : 0)));
  },
});
void queuePaused;

const queueWait = new Histogram({
  name: 'portrait_queue_wait_seconds',
  help: 'Time from a job being queued (or becoming due for a retry) to a worker starting it',
  labelNames: ['queue'],
  buckets: [0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600],
  registers: [registry],
});

const jobDuration = new Histogram({
  name: 'portrait_job_duration_seconds',
  help: 'Wall time of one job attempt on a worker, by kind and outcome (completed, failed, retried, cancelled, withdrawn, handed_back)',
  labelNames: ['kind', 'outcome'],
  buckets: [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800],
  registers: [registry],
});

const jobFailures = new Counter({
  name: 'portrait_job_failures_total',
  help: 'Failed job attempts by kind and reason code; final="true" when the job was given up',
  labelNames: ['kind', 'reason', 'final'],
  registers: [registry],
});

const engineSeconds = new Histogram({
  name: 'portrait_job_engine_seconds',
  help: 'Engine (GPU) time of one job attempt: the time its requests spent in the engine, by kind',
  labelNames: ['kind'],
  buckets: [0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 1800],
  registers: [registry],
});

const engineRestarts = new Counter({
  name: 'portrait_engine_restarts_total',
  help: 'Engine processes that died (crash, hang, failed start) and were restarted',
  registers: [registry],
});

const likeness = new Histogram({
  name: 'portrait_likeness_score',
  help: 'Mean face similarity of outputs to the held-out photo (train: validation samples; imagine/pose: each job)',
  labelNames: ['kind'],
  buckets: [-0.2, 0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1],
  registers: [registry],
});

const photoVerdicts = new Counter({
  name: 'portrait_photo_verdicts_total',
  help: 'Uploaded photos by verdict: accepted, duplicate, or the rejection code',
  labelNames: ['verdict'],
  registers: [registry],
});

const chatApiErrors = new Counter({
  name: 'portrait_chat_api_errors_total',
  help: 'Failed chat API calls by platform and HTTP status (network: no answer)',
  labelNames: ['platform', 'status'],
  registers: [registry],
});

const chatRateLimited = new Counter({
  name: 'portrait_chat_rate_limited_total',
  help: 'Chat API 429 answers (rate limits) by platform',
  labelNames: ['platform'],
  registers: [registry],
});

export type JobOutcome = 'completed' | 'failed' | 'retried' | 'cancelled' | 'withdrawn' | 'handed_back';

export const metrics = {
  /** Reads these queues' depths on every scrape; returns the undo (for the app's close). */
  watchQueues(queues: Queue[]): () => void {
    for (const queue of queues) watchedQueues.set(queue.name, queue);
    return () => { for (const queue of queues) if (watchedQueues.get(queue.name) === queue) watchedQueues.delete(queue.name); };
  },
  jobStarted(queue: string, waitedMs: number) { queueWait.observe({ queue }, Math.max(0, waitedMs) / 1000); },
  jobEnded(kind: string, outcome: JobOutcome, ms: number, engineMs: number) {
    jobDuration.observe({ kind, outcome }, ms / 1000);
    engineSeconds.observe({ kind }, engineMs / 1000);
  },
  jobFailed(kind: string, reason: string, final: boolean) { jobFailures.inc({ kind, reason, final: String(final) }); },
  engineRestarted() { engineRestarts.inc(); },
  likeness(kind: string, score: number | null | undefined) { if (typeof score === 'number' && Number.isFinite(score)) likeness.observe({ kind }, score); },
  photoVerdict(verdict: string) { photoVerdicts.inc({ verdict }); },
  chatApiError(platform: 'telegram' | 'discord', status: number | 'network') {
    chatApiErrors.inc({ platform, status: String(status) });
    if (status === 429) chatRateLimited.inc({ platform });
  },
};

export const metricsContentType = registry.contentType;
export const renderMetrics = () => registry.metrics();
