// `/help` (and Telegram's `/start`): what the bot does, in the person's language and for their platform.
import type { Conversation, Person, Reply } from './conversation.ts';

export function help(chat: Conversation, p: Person): Reply {
  const { config } = chat;
  const { minForTraining: min, maxPerUser: max } = config.photos;
  const poseLine = p.t(p.platform === 'discord' ? 'help.pose_discord' : 'help.pose_telegram');
  const notice = config.engine.profile === 'tiny' ? `\n\n${p.t('help.tiny_engine')}` : '';
  // Discord attachments are files already; Telegram recompresses photos.
  const files = p.platform === 'telegram' ? `\n\n${p.t('help.files')}` : '';
  return { text: p.t('help.body', { min, max, poseLine }) + files + notice };
}
