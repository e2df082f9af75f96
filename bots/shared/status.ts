// `/status` (photos, model, jobs with their place in line) and `/cancel`.
import type { Conversation, Person, Reply } from './conversation.ts';
import { shownVersion, whatKey } from './job-text.ts';
import { etaText } from './i18n/index.ts';

export function status(chat: Conversation, p: Person): Promise<Reply> {
  return chat.guard(p, async () => {
    const { services, config } = chat;
    const { minForTraining: min, maxPerUser: max } = config.photos;
    const [count, open, all] = await Promise.all([
      services.photos.count(p.userId),
      services.jobs.open(p.userId),
      services.training.list(p.userId),
    ]);
    // From the rows read anyway (as latestReady() and isTraining() would find them): the model versions come newest
    // first, the open jobs are the queued and running ones.
    const ready = all.find((a) => a.status === 'ready');
    const training = open.some((job) => job.kind === 'train');
    const lines = [p.t('status.photos', { count, min, max })];
    lines.push(training ? p.t('status.model_training') : ready ? p.t('status.model_ready', { version: shownVersion(all, ready) }) : p.t('status.model_none'));
    if (open.length === 0) lines.push(p.t('status.no_jobs'));
    for (const job of open) {
      // When it should be done (running: its pace so far) or start (waiting: its place × the recent mean).
      const { position, etaSeconds: eta } = await services.jobs.place(job);
      const state = job.status === 'queued' ? p.t('state.queued', { position }) : p.t('state.active', { percent: Math.round(job.progress * 100) });
      lines.push(p.t('status.job', { what: p.t(whatKey(job.kind)), state }) + (eta !== null ? ` · ${etaText(p.t, eta)}` : ''));
    }
    return { text: lines.join('\n') };
  });
}

export function cancel(chat: Conversation, p: Person): Promise<Reply> {
  return chat.guard(p, async () => {
    const job = await chat.services.jobs.cancel(p.userId);
    return { text: p.t('cancel.done', { what: p.t(whatKey(job.kind)) }) };
  });
}
