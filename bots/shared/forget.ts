// `/forget`: asks first; "Delete everything" deletes the person and every file of theirs, "Keep" changes nothing.
import type { Conversation, Person, Reply } from './conversation.ts';
import { endPhotoSession } from './training.ts';

export function forgetAsk(p: Person): Reply {
  return {
    text: p.t('forget.confirm'),
    buttons: [
      { action: 'forget_yes', label: p.t('button.forget_yes'), danger: true },
      { action: 'forget_no', label: p.t('button.forget_no') },
    ],
  };
}

export function forget(chat: Conversation, p: Person): Promise<Reply> {
  return chat.guard(p, async () => {
    const gone = await chat.services.forget.forget(p.userId);
    await endPhotoSession(chat, p.userId);
    return { text: p.t('forget.done', { photos: gone.photos, adapters: gone.adapters, generations: gone.generations }) };
  });
}

export function forgetKept(p: Person): Reply {
  return { text: p.t('forget.kept') };
}
