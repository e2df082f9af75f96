// `/imagine` and `/styles`: a portrait from the person's own model, from their words or a style preset.
import { parseStyleCommand, stylePresets } from '../../src/services/styles.ts';
import type { Button, Conversation, Person, Reply } from './conversation.ts';

/** `/imagine <prompt>`, `/imagine style:<name> [words]`, or (Discord's option, a style button) a style given apart. */
export function imagine(chat: Conversation, p: Person, text: string, style?: string): Promise<Reply> {
  return chat.guard(p, async () => {
    const command = style === undefined ? parseStyleCommand(text) : { style, rest: text };
    // "style:" with no name: which ones are there?
    if (command && !command.style.trim()) return styles(p);
    const prompt = command?.rest ?? text;
    if (!prompt.trim() && !command) return { text: p.t('error.empty_prompt'), error: true };
    const { generation, limits } = chat.services;
    const queued = await limits.run(p.userId, 'imagine', () => generation.imagine(p.userId, prompt, {}, command?.style));
    return chat.queued(p, queued.job, queued.position, queued.notes, queued.etaSeconds);
  });
}

/** `/styles`: the presets, named in the person's language; each works whatever language they write in. */
export function styles(p: Person): Reply {
  const lines = [p.t('styles.title'), ...stylePresets.map((s) => p.t('styles.item', { name: s.names[p.locale], id: s.id }))];
  lines.push('', p.t(p.platform === 'discord' ? 'styles.usage_discord' : 'styles.usage', { example: stylePresets[0]!.id }));
  // One tap paints it: no English needed at all.
  const buttons = stylePresets.map((s): Button => ({ action: `style:${s.id}`, label: s.names[p.locale] }));
  return { text: lines.join('\n'), buttons };
}
