// `/pose`: the person painted in the pose of a reference picture; the extracted skeleton is shown first.
import { UserFacingError } from '../../src/services/errors.ts';
import type { Conversation, IncomingFile, Person, Reply } from './conversation.ts';

export function pose(chat: Conversation, p: Person, image: IncomingFile | undefined, prompt: string): Promise<Reply> {
  return chat.guard(p, async () => {
    if (!image) return { text: p.t('pose.usage'), error: true };
    const { services, config } = chat;
    const maxBytes = config.photos.maxUploadBytes;
    if (image.size !== undefined && image.size > maxBytes) {
      return { text: p.t('error.too_large_bytes', { maxMb: Math.floor(maxBytes / 1048576) }), error: true };
    }
    // Checked before the download: no point fetching a picture for someone who has no model yet.
    await services.limits.check(p.userId, 'pose');
    if (!(await services.training.latestReady(p.userId))) throw new UserFacingError('no_model', 'No model yet.');
    let bytes: Buffer;
    try {
      bytes = await image.download();
    } catch (error) {
      chat.logger.warn({ err: error }, 'pose download failed');
      return { text: p.t('error.download_failed'), error: true };
    }
    // No words is fine: the service paints the person in the pose (and the internal prompt is never shown).
    const queued = await services.limits.run(p.userId, 'pose', () => services.generation.pose(p.userId, bytes, prompt));
    const reply = await chat.queued(p, queued.job, queued.position, queued.notes, queued.etaSeconds);
    // The extracted skeleton goes back as a preview; a reference used as the skeleton as is (no pose models) does not.
    if (queued.skeleton && queued.generation.controlKey && reply.job) {
      try {
        reply.job.preview = { images: [{ data: await chat.app.store.get(queued.generation.controlKey), name: 'pose.png' }], caption: p.t('pose.preview') };
      } catch (error) {
        chat.logger.warn({ err: error, jobId: queued.job.id }, 'pose preview unavailable');
      }
    }
    return reply;
  });
}
