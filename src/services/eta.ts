// Estimates of when a job is done, shown beside its progress or its place in line.

/**
 * Seconds left for a running job at its pace so far (steps per second since it started); null before its first
 * step, once done, or when it has no start time.
 */
export function runningEtaSeconds(progress: number, startedAt: Date | null, now = Date.now()): number | null {
  if (!startedAt || !(progress > 0 && progress < 1)) return null;
  const elapsed = Math.max(0, (now - startedAt.getTime()) / 1000);
  return Math.round((elapsed * (1 - progress)) / progress);
}

/**
 * Seconds until a waiting job is done: the jobs ahead of it go `concurrency` at a time, each taking the recent mean
 * duration of its kind, and then its own run; null when no job of the kind has finished yet (nothing to go on).
 */
export function waitingEtaSeconds(position: number, meanSeconds: number | null, concurrency = 1): number | null {
  if (meanSeconds === null || !(meanSeconds > 0) || position < 1) return null;
  return Math.round(meanSeconds * (position / Math.max(1, concurrency) + 1));
}
