// Photos and training: `/train` opens a photo session, each photo is checked and answered, "Train now" queues the
// training (asking for consent before the first), and "These photos are of me" records the consent.
import { UserFacingError } from '../../src/services/errors.ts';
import { knownKey, type MessageKey, type Params } from './i18n/index.ts';
import type { Button, Conversation, IncomingFile, Person, Reply } from './conversation.ts';
import type { CoverageSummary } from '../../src/vision/index.ts';

const SESSION_TTL_S = 3600;
/** The photo session, and what it says only once per session. */
const SESSION = 'collecting';
const TIP = 'tip';
const COVERAGE_NOTE = 'coverage-note';

const trainButton = (p: Person): Button => ({ action: 'train_now', label: p.t('button.train_now') });

/** Ends the person's photo session (a training was queued, or everything was forgotten). */
export async function endPhotoSession(chat: Conversation, userId: string): Promise<void> {
  await chat.redis.del(chat.key(SESSION, userId), chat.key(TIP, userId), chat.key(COVERAGE_NOTE, userId));
}

/**
 * Renews the person's photo session, and says whether there is one: EXPIRE answers 0 for a missing key and creates
 * nothing, so the check and the renewal are one round trip.
 */
async function renewSession(chat: Conversation, userId: string): Promise<boolean> {
  return (await chat.redis.expire(chat.key(SESSION, userId), SESSION_TTL_S)) === 1;
}

/** `/train`: opens (or renews) the photo collection session. */
export function openTraining(chat: Conversation, p: Person): Promise<Reply> {
  return chat.guard(p, async () => {
    const { services, config } = chat;
    if (await services.training.isTraining(p.userId)) return { text: p.t('train.already') };
    await chat.redis.set(chat.key(SESSION, p.userId), '1', 'EX', SESSION_TTL_S);
    const have = await services.photos.count(p.userId);
    const { minForTraining: min, maxPerUser: max } = config.photos;
    const text = p.t(p.platform === 'discord' ? 'train.open_discord' : 'train.open', { min, max, have });
    return { text, buttons: have >= min ? [trainButton(p)] : undefined };
  });
}

/**
 * Checks and stores photos, answering for each what was wrong with it, then where the set stands. Outside a
 * /train session the photos are not taken (they might have been meant for something else).
 */
export function addPhotos(chat: Conversation, p: Person, files: IncomingFile[], requireSession = true): Promise<Reply> {
  return chat.guard(p, async () => {
    const { redis, services, config } = chat;
    if (!(await renewSession(chat, p.userId)) && requireSession) return { text: p.t('train.no_session') };
    const lines: string[] = [];
    // Names of this batch's photos by stored id, so a repeat can say which photo it repeats.
    const named = new Map<string, string>();
    for (const file of files) lines.push(await addOne(chat, p, file, named));
    if (files.some((f) => f.compressed) && (await redis.set(chat.key(TIP, p.userId), '1', 'EX', SESSION_TTL_S, 'NX')) === 'OK') {
      lines.push('', p.t('train.tip_files'));
    }
    // One read for the count and the coverage.
    const accepted = await services.photos.list(p.userId);
    const total = accepted.length;
    const { minForTraining: min, maxPerUser: max } = config.photos;
    lines.push('', p.t('photos.total', { total, min, max }));
    if (total >= max) lines.push(p.t('photos.full', { max }));
    else if (total >= min) lines.push(p.t('photos.enough', { max }));
    else lines.push(p.t('photos.need_more', { more: min - total }));
    lines.push(...(await coverageLines(chat, p, services.photos.coverageOf(accepted))));
    return { text: lines.join('\n').trim(), buttons: total >= min ? [trainButton(p)] : undefined };
  });
}

async function addOne(chat: Conversation, p: Person, file: IncomingFile, named: Map<string, string>): Promise<string> {
  const { services } = chat;
  const maxBytes = chat.config.photos.maxUploadBytes;
  const rejected = (key: MessageKey, params: Params = {}) => p.t('photos.rejected', { name: file.name, reason: p.t(key, params) });
  if (file.size !== undefined && file.size > maxBytes) return rejected('error.too_large_bytes', { maxMb: Math.floor(maxBytes / 1048576) });
  let bytes: Buffer;
  try {
    bytes = await file.download();
  } catch (error) {
    chat.logger.warn({ err: error, file: file.name }, 'download failed');
    return rejected('error.download_failed');
  }
  const result = await services.photos.add(p.userId, bytes, file.name);
  if (!result.ok) {
    // A near-duplicate names the earlier photo by its place in the stored set; say its name when it came in this batch.
    const sameAs = result.code === 'duplicate' ? (await services.photos.list(p.userId))[Number(result.details?.sameAs) - 1] : undefined;
    const other = sameAs && named.get(sameAs.id);
    if (other) return p.t('photos.rejected', { name: file.name, reason: p.t('error.duplicate_of', { other }) });
    return p.t('photos.rejected', { name: file.name, reason: chat.errorText(p, result.code, result.details) });
  }
  const other = named.get(result.photo.id);
  if (result.duplicate && other) return p.t('photos.duplicate_of', { name: file.name, other });
  if (!result.duplicate) named.set(result.photo.id, file.name);
  // Like the page: without the face models a photo is accepted unchecked, and the person is told so.
  if (result.duplicate) return p.t('photos.duplicate', { name: file.name });
  return p.t(result.faceChecked ? 'photos.accepted' : 'photos.accepted_unchecked', { name: file.name });
}

/** Where the set stands (angles, framing, light) and what to add, when the face models measured the photos. */
async function coverageLines(chat: Conversation, p: Person, summary: CoverageSummary | undefined): Promise<string[]> {
  if (!summary) return [];
  const { minForTraining } = chat.config.photos;
  const { angles, framing } = summary;
  const lines = ['', p.t('coverage.summary', { ...angles, ...framing })];
  const params: Params = {
    min: minForTraining,
    more: Math.max(0, minForTraining - summary.photos),
    side: p.t(angles.left === 0 ? 'coverage.side_left' : 'coverage.side_right'),
  };
  // "Send N more" is said by the photo count already.
  const tips = summary.suggestions
    .filter((s) => s.code !== 'more_photos')
    .flatMap((s) => { const key = knownKey(`coverage.${s.code}`); return key ? [`• ${p.t(key, params)}`] : []; });
  if (tips.length > 0) lines.push(p.t('coverage.title'), ...tips);
  else if (summary.suggestions.length === 0) lines.push(p.t('coverage.good'));
  // Said once per /train session.
  if (summary.notMeasured.includes('expressions') && (await chat.redis.set(chat.key(COVERAGE_NOTE, p.userId), '1', 'EX', SESSION_TTL_S, 'NX')) === 'OK') {
    lines.push(p.t('coverage.expressions'));
  }
  return lines;
}

/** "Train now": queues the training within the person's limits; before the first one, asks for consent. */
export function trainNow(chat: Conversation, p: Person): Promise<Reply> {
  return chat.guard(p, async () => {
    const { services } = chat;
    if (await services.training.isTraining(p.userId)) return { text: p.t('train.already') };
    const started = await services.limits.run(p.userId, 'train', () => services.training.start(p.userId)).catch((error: unknown) => {
      if (error instanceof UserFacingError && error.code === 'consent_required') return undefined;
      throw error;
    });
    if (!started) return { text: p.t('consent.ask'), buttons: [{ action: 'consent_yes', label: p.t('button.consent_yes') }] };
    // A double tap found the first tap's job: that one has the status message already.
    if (!started.created) return { text: p.t('train.already') };
    await endPhotoSession(chat, p.userId);
    return chat.queued(p, started.job, started.position, [], started.etaSeconds);
  });
}

/** "These photos are of me": stores the consent with its time, then trains. */
export function consent(chat: Conversation, p: Person): Promise<Reply> {
  return chat.guard(p, async () => {
    await chat.services.users.consent(p.userId);
    return trainNow(chat, p);
  });
}
