// What the person is told when the engine's safety check withheld pictures of a finished job (they were never
// stored, so nothing else of them exists to send).
import type { Translate } from './i18n/index.ts';

/** For a picture job: `sent` pictures stored and sent, `withheld` withheld; undefined when none were withheld. */
export function withheldPicturesNotice(t: Translate, what: string, sent: number, withheld: number): string | undefined {
  if (withheld <= 0) return undefined;
  return sent === 0 ? t('safety.withheld_all', { what }) : t('safety.withheld_some', { withheld, total: sent + withheld });
}

/** For a training's sample portraits, from the adapter's metrics; undefined when none were withheld. */
export function withheldSamplesNotice(t: Translate, rawMetrics: unknown, sent: number): string | undefined {
  const withheld = Number((rawMetrics as { withheldSamples?: unknown } | null)?.withheldSamples ?? 0);
  return withheld > 0 ? t('safety.withheld_samples', { withheld, total: sent + withheld }) : undefined;
}
