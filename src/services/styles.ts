// Style presets: a few curated portraits, each an English prompt (SD1.5 reads English only) with its negative prompt
// and settings, named in every language the bot speaks, so anyone can paint themselves without writing English.
import type { schedulers } from '../engine/protocol.ts';

type Scheduler = (typeof schedulers)[number];

export interface StylePreset {
  /** Stable, Latin, typed as `/imagine style:<id>` in any language. */
  id: string;
  names: { en: string; ru: string };
  /** `{subject}` becomes the trained subject ("sks person"). */
  prompt: string;
  negativePrompt: string;
  steps: number;
  guidanceScale: number;
  scheduler: Scheduler;
}

export const stylePresets: readonly StylePreset[] = [
  {
    id: 'astronaut',
    names: { en: 'Astronaut', ru: 'Космонавт' },
    prompt: 'a portrait photo of {subject} as an astronaut in a white spacesuit, holding the helmet, stars and the Earth behind, cinematic light, detailed face',
    negativePrompt: 'helmet visor covering the face, cartoon, deformed face, extra fingers',
    steps: 30, guidanceScale: 7, scheduler: 'dpmpp_2m_karras',
  },
  {
    id: 'oil',
    names: { en: 'Oil painting', ru: 'Портрет маслом' },
    prompt: 'an oil painting portrait of {subject}, classical Renaissance style, visible brush strokes, warm chiaroscuro light, museum quality',
    negativePrompt: 'photo, 3d render, cartoon, frame, text, signature',
    steps: 30, guidanceScale: 7.5, scheduler: 'unipc',
  },
  {
    id: 'watercolor',
    names: { en: 'Watercolor', ru: 'Акварель' },
    prompt: 'a soft watercolor portrait of {subject}, loose washes of color on textured paper, delicate lines, pastel palette',
    negativePrompt: 'photo, harsh lines, dark, oversaturated, text, signature',
    steps: 25, guidanceScale: 7, scheduler: 'euler_a',
  },
  {
    id: 'knight',
    names: { en: 'Knight', ru: 'Рыцарь' },
    prompt: 'a portrait photo of {subject} as a medieval knight in polished plate armor, castle courtyard behind, overcast daylight, detailed face',
    negativePrompt: 'helmet covering the face, cartoon, modern clothes, deformed face',
    steps: 30, guidanceScale: 7, scheduler: 'dpmpp_2m_karras',
  },
  {
    id: 'cyberpunk',
    names: { en: 'Cyberpunk', ru: 'Киберпанк' },
    prompt: 'a portrait photo of {subject} in a neon-lit cyberpunk city at night, rain, reflective jacket, pink and cyan lights, shallow depth of field',
    negativePrompt: 'daylight, washed out, cartoon, deformed face, text',
    steps: 28, guidanceScale: 7.5, scheduler: 'dpmpp_2m_karras',
  },
  {
    id: 'studio',
    names: { en: 'Studio headshot', ru: 'Студийный портрет' },
    prompt: 'a professional studio headshot of {subject}, soft key light, plain grey background, sharp focus on the eyes, 85mm lens',
    negativePrompt: 'busy background, hat, sunglasses, harsh shadows, deformed face',
    steps: 25, guidanceScale: 6.5, scheduler: 'unipc',
  },
  {
    id: 'noir',
    names: { en: 'Film noir', ru: 'Нуар' },
    prompt: 'a black and white film noir portrait of {subject}, 1940s detective, fedora, venetian blind shadows, dramatic contrast, film grain',
    negativePrompt: 'color, modern clothes, cartoon, deformed face',
    steps: 28, guidanceScale: 7, scheduler: 'ddim',
  },
];

// Names are matched loosely: case, ё/е, spaces, dashes and underscores don't matter ("Film-noir", "портрет маслом").
const fold = (name: string) => name.normalize('NFKC').toLowerCase().replace(/ё/g, 'е').replace(/[\s_-]+/g, '');

/** The preset called `name` by its id or by its name in any language. */
export function findStyle(name: string, presets: readonly StylePreset[] = stylePresets): StylePreset | undefined {
  const wanted = fold(name);
  if (!wanted) return undefined;
  return presets.find((p) => [p.id, ...Object.values(p.names)].some((n) => fold(n) === wanted));
}

/**
 * `/imagine style:<name> more words` (or `стиль:`): the preset and the words after it. The name may be quoted, or be
 * a multi-word name ("style:oil painting"); the longest name that matches wins.
 */
export function parseStyleCommand(text: string, presets: readonly StylePreset[] = stylePresets): { style: string; rest: string } | undefined {
  const match = /^\s*(?:style|стиль)\s*[:=]\s*(.*)$/isu.exec(text);
  if (!match) return undefined;
  const body = match[1]!.trim();
  const quoted = /^["«“](.+?)["»”]\s*(.*)$/su.exec(body);
  if (quoted) return { style: quoted[1]!, rest: quoted[2]!.trim() };
  const words = body.split(/\s+/);
  for (let n = Math.min(words.length, 4); n > 1; n--) {
    const candidate = words.slice(0, n).join(' ');
    if (findStyle(candidate, presets)) return { style: candidate, rest: words.slice(n).join(' ') };
  }
  return { style: words[0] ?? '', rest: words.slice(1).join(' ') };
}
