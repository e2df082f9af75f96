// Connecting a chat adapter: one try at start, then, while the chat API is unreachable, tries again in the background
// with a doubling wait (logged each time), so the rest of the process (web, worker) keeps running meanwhile.
import type { Logger } from 'pino';

export interface Connection {
  /** Resolves once `connect` succeeded. */
  connected: Promise<void>;
  /** Tries once; on failure keeps trying in the background and returns. */
  start(): Promise<void>;
  /** Stops trying (a wait in progress ends at once). */
  stop(): void;
}

export function keepConnecting(connect: () => Promise<void>, logger: Logger, what: string, firstDelayMs = 1000): Connection {
  let stopped = false;
  let wake: (() => void) | undefined;
  let markConnected!: () => void;
  const connected = new Promise<void>((resolve) => { markConnected = resolve; });
  const once = async () => { await connect(); markConnected(); };

  const retry = async (first: unknown) => {
    let delay = firstDelayMs;
    let error = first;
    for (let attempt = 1; !stopped; attempt++) {
      logger.warn({ err: error, attempt, retryInMs: delay }, `${what} is unreachable; trying again`);
      await new Promise<void>((resolve) => { const timer = setTimeout(resolve, delay); wake = () => { clearTimeout(timer); resolve(); }; });
      if (stopped) return;
      try {
        await once();
        logger.info({ attempt }, `${what} reachable again`);
        return;
      } catch (next) {
        error = next;
        delay = Math.min(delay * 2, 60_000);
      }
    }
  };

  return {
    connected,
    start: () => once().catch((error: unknown) => { void retry(error); }),
    stop() { stopped = true; wake?.(); },
  };
}
