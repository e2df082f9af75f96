// How a job is shown in a chat, needed both by the commands that queue it and by the notifier that follows it:
// its name, its progress bar, the version number a person sees, and the pictures sent with it.
import type { Adapter, JobKind } from '../../src/db/schema.ts';
import type { MessageKey } from './i18n/index.ts';

export interface OutgoingImage { data: Buffer; name: string }

/** Pictures shown with a job's status message before it runs. */
export interface Preview { images: OutgoingImage[]; caption: string }

const BAR_WIDTH = 10;

export const progressBar = (fraction: number) => {
  const filled = Math.max(0, Math.min(BAR_WIDTH, Math.round(fraction * BAR_WIDTH)));
  return '▰'.repeat(filled) + '▱'.repeat(BAR_WIDTH - filled);
};

export const whatKey = (kind: JobKind): MessageKey => `what.${kind}`;

/** The version a person sees: finished models counted in order, so a cancelled or failed training takes no number. */
export const shownVersion = (all: readonly Adapter[], adapter: Adapter) =>
  all.filter((a) => a.status === 'ready' && a.version <= adapter.version).length || 1;
