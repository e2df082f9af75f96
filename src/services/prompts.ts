// Prompt rewriting: the LoRA only paints the person when the prompt names the token it was trained on ("sks person"),
// so first-person words become that subject and a prompt that names nobody gets it. Pure functions.

/** The trained subject, derived from the adapter's instance prompt ("a photo of sks person"). */
export interface Subject {
  /** What the adapter was trained on, e.g. "a photo of sks person". */
  instancePrompt: string;
  /** The rare token that carries the identity, e.g. "sks". */
  token: string;
  /** The subject as a noun phrase, e.g. "sks person". */
  phrase: string;
  /** Its possessive, e.g. "sks person's". */
  possessive: string;
}

export function subjectOf(instancePrompt: string): Subject {
  const text = instancePrompt.trim().replace(/\s+/g, ' ');
  // "a photo of sks person" → "sks person"; "sks person" stays; a leading article goes.
  const afterOf = text.split(/\s+of\s+/i).pop()!;
  const phrase = afterOf.replace(/^(a|an|the)\s+/i, '') || text;
  const token = phrase.split(' ')[0]!;
  return { instancePrompt: text, token, phrase, possessive: `${phrase}'s` };
}

// Letters and digits of any script: JS's \b only knows ASCII, and "я" must not match inside "яблоко".
const W = '[\\p{L}\\p{N}_]';
const word = (alternatives: string) => new RegExp(`(?<!${W})(?:${alternatives})(?!${W})`, 'giu');

export const containsWord = (text: string, wordText: string) =>
  word(wordText.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).test(text);

// Contractions first, so "I'm" is not left as "<subject>'m".
const CONTRACTIONS: Array<[RegExp, string]> = [
  [word("i['’]m"), 'is'],
  [word("i['’]ve"), 'has'],
  [word("i['’]ll"), 'will'],
  [word("i['’]d"), 'would'],
];
// Objects and reflexives in English and Russian (я, меня, мне, мной, себя…).
const PERSONAL = word('me|myself|я|меня|мне|мной|мною|себя|себе|собой');
const POSSESSIVE = word('my|мой|моя|моё|мое|мои|моего|моей|моему|моим|моих|мою|моими|моём|моем');
// "I" the pronoun; not "i.e.", and not a regnal number after a name ("Elizabeth I", "World War I").
const PRONOUN_I = /(?<![\p{L}\p{N}_])(?<before>[\p{Lu}][\p{L}]*\s+)?(?<i>[Ii])(?![\p{L}\p{N}_]|\.\p{L})/gu;

export interface NamedPrompt {
  /** The prompt the engine gets. */
  prompt: string;
  /** kept: it named the token already; replaced: first-person words became the subject; prefixed: it had none. */
  how: 'kept' | 'replaced' | 'prefixed';
}

/** The prompt with the trained subject in it, keeping the person's own wording. */
export function nameSubject(prompt: string, subject: Subject): NamedPrompt {
  const text = prompt.trim();
  if (!text) return { prompt: subject.instancePrompt, how: 'prefixed' };
  if (containsWord(text, subject.token)) return { prompt: text, how: 'kept' };
  const out = firstPerson(text, subject);
  // CLIP reads 77 tokens and drops the rest: a subject named only past that is named up front as well.
  if (out !== text && clipTokensBefore(out, subject.phrase) <= SUBJECT_WITHIN_TOKENS) return { prompt: out, how: 'replaced' };
  return { prompt: `${subject.instancePrompt}, ${out}`, how: 'prefixed' };
}

/** Where the subject must start for CLIP to see it whole: 77 tokens less start/end and the subject's own. */
export const SUBJECT_WITHIN_TOKENS = 70;

/**
 * A cautious count of CLIP tokens before `phrase`: one per word and one per punctuation mark, which is what CLIP's
 * BPE gives for common English words (longer or rare words take more, hence the margin in SUBJECT_WITHIN_TOKENS).
 */
function clipTokensBefore(text: string, phrase: string): number {
  const at = text.indexOf(phrase);
  const before = at < 0 ? text : text.slice(0, at);
  return (before.match(/[\p{L}\p{N}]+|[^\s\p{L}\p{N}]/gu) ?? []).length;
}

/** First-person words ("me", "my", "I'm", "меня"…) replaced by the subject; nothing else changes. */
export function firstPerson(text: string, subject: Subject): string {
  let out = text;
  for (const [pattern, verb] of CONTRACTIONS) out = out.replace(pattern, `${subject.phrase} ${verb}`);
  out = out.replace(PERSONAL, subject.phrase).replace(POSSESSIVE, subject.possessive);
  return out.replace(PRONOUN_I, (whole, before: string | undefined, _i: string, offset: number) => {
    // A capitalised word before "I" that does not start the prompt is a name: "Louis I", "World War I".
    if (before && offset > 0) return whole;
    return `${before ?? ''}${subject.phrase}`;
  });
}

/**
 * The engine prompt as the person may see it: the internal token reads as "you" ("a photo of you, as an astronaut"),
 * so captions show what was painted without the training token.
 */
export function showPrompt(enginePrompt: string, subject: Subject, you = 'you', your = 'your'): string {
  const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return enginePrompt
    .replace(word(`${escape(subject.phrase)}['’]s`), your)
    .replace(word(escape(subject.phrase)), you)
    .replace(word(escape(subject.token)), you);
}

export interface Script {
  /** Letters in Latin script, and in any other (Cyrillic mostly), outside the subject phrase. */
  latin: number;
  other: number;
  /** The words with non-Latin letters, as typed: what SD1.5's English-only CLIP would not understand. */
  words: string[];
}

/** How much of an engine prompt is Latin script (the subject and instance prompt, which we put there, not counted). */
export function scriptOf(enginePrompt: string, subject: Subject): Script {
  const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const text = enginePrompt
    .replace(word(escape(subject.instancePrompt)), ' ')
    .replace(word(`${escape(subject.phrase)}(?:['’]s)?`), ' ');
  const latin = text.match(/\p{Script=Latin}/gu)?.length ?? 0;
  const other = text.match(/(?!\p{Script=Latin})\p{L}/gu)?.length ?? 0;
  const words = [...new Set(text.match(/[\p{L}\p{M}\p{N}'’-]*(?:(?!\p{Script=Latin})\p{L})[\p{L}\p{M}\p{N}'’-]*/gu) ?? [])];
  return { latin, other, words };
}

/**
 * SD1.5's text encoder understands English only. A prompt mostly in another script is refused (the picture would
 * ignore what the person asked for, and cost them a picture of their hourly limit); a few foreign words in an
 * English prompt are painted with a note that they are ignored.
 */
export function languageVerdict(script: Script): 'ok' | 'warn' | 'refuse' {
  if (script.other === 0) return 'ok';
  return script.other > script.latin ? 'refuse' : 'warn';
}
