// The person's account: `/link` (one account across platforms, guarded against guessed codes) and `/lang`.
import { UserFacingError } from '../../src/services/errors.ts';
import { pickLocale, translator } from './i18n/index.ts';
import type { Conversation, Person, Reply } from './conversation.ts';

/** Wrong /link codes allowed per person in a window, so codes can't be guessed. */
export const LINK_ATTEMPTS = 5;
export const LINK_ATTEMPTS_WINDOW_MS = 10 * 60 * 1000;

/** `/link` alone issues a code; `/link CODE` redeems one issued on the other platform. */
export function link(chat: Conversation, p: Person, code: string): Promise<Reply> {
  return chat.guard(p, async () => {
    const { redis, services } = chat;
    if (!code.trim()) {
      const issued = await services.link.issue(p.userId, p.platform);
      return { text: p.t('link.code', { code: issued.code, minutes: issued.minutes }) };
    }
    const attempts = chat.key('link-attempts', p.userId);
    if (Number(await redis.get(attempts)) >= LINK_ATTEMPTS) {
      const ms = await redis.pttl(attempts);
      throw new UserFacingError('link_attempts', 'Too many wrong link codes.', { minutes: Math.max(1, Math.ceil(ms / 60_000)) }, 429);
    }
    try {
      await services.link.redeem(p.userId, p.platform, code);
    } catch (error) {
      if (error instanceof UserFacingError && error.code === 'link_code_invalid') {
        // The window starts at the first wrong code (and is set again if it somehow got lost).
        const counted = await redis.multi().incr(attempts).pttl(attempts).exec();
        if (Number(counted?.[1]?.[1]) < 0) await redis.pexpire(attempts, LINK_ATTEMPTS_WINDOW_MS);
      }
      throw error;
    }
    await redis.del(attempts);
    return { text: p.t('link.done') };
  });
}

/** `/lang ru`: the language of the answers, on every platform. */
export function lang(chat: Conversation, p: Person, choice: string): Promise<Reply> {
  return chat.guard(p, async () => {
    const wanted = choice.trim().toLowerCase();
    if (!wanted || pickLocale(wanted) !== wanted.split(/[-_]/)[0]) return { text: p.t('lang.usage') };
    const locale = pickLocale(wanted);
    await chat.services.users.setLocale(p.userId, locale);
    return { text: translator(locale)('lang.set') };
  });
}
