// User-facing events (job queued/progress/done) over Redis pub/sub, so any bot process can tell the person.
// Best-effort by design: the database row is the truth; events only make the chat feel live.
import type { Redis } from 'ioredis';
import { channels } from '../queue/index.ts';
import type { JobKind, JobStatus } from '../db/schema.ts';

export interface JobEvent {
  type: 'job';
  jobId: string;
  kind: JobKind;
  status: JobStatus;
  progress: number;
  step?: number;
  total?: number;
  loss?: number;
  position?: number;
  /** Seconds until it is done: at its pace while it runs, from its place in line while it waits. */
  etaSeconds?: number | null;
  errorCode?: string;
  error?: string;
  adapterId?: string;
  generationId?: string;
  /** Mean face similarity to the held-out photo; null when no face was found or no face models are installed. */
  likeness?: number | null;
  lowLikeness?: boolean;
  /** A training's new intermediate preview (GET /api/previews/:id on the web). */
  preview?: { id: string; step: number; total: number };
}
export type UserEvent = JobEvent;
type Listener = (event: UserEvent) => void;

export class EventBus {
  private readonly listeners = new Map<string, Set<Listener>>();
  private subscribed?: Promise<unknown>;

  constructor(
    private readonly prefix: string,
    private readonly publisher: Redis,
    private readonly subscriber: Redis,
  ) {}

  async publish(userId: string, event: UserEvent): Promise<void> {
    await this.publisher.publish(channels.userEvents(this.prefix, userId), JSON.stringify(event));
  }

  /** Calls `listener` with every event of one user until the returned function is called. */
  async subscribe(userId: string, listener: Listener): Promise<() => void> {
    this.subscribed ??= this.listen();
    await this.subscribed;
    const set = this.listeners.get(userId) ?? new Set();
    set.add(listener);
    this.listeners.set(userId, set);
    return () => {
      set.delete(listener);
      if (set.size === 0) this.listeners.delete(userId);
    };
  }

  private listen() {
    const pattern = channels.userEvents(this.prefix, '*');
    const channelStart = pattern.length - 1;
    this.subscriber.on('pmessage', (_pattern: string, channel: string, message: string) => {
      const listeners = this.listeners.get(channel.slice(channelStart));
      if (!listeners) return;
      const event = JSON.parse(message) as UserEvent;
      for (const listener of listeners) listener(event);
    });
    return this.subscriber.psubscribe(pattern);
  }
}
