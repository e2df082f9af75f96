// The prompt policy: refused subjects (sexual content, minors, …) from config, matched on whole words after
// normalisation, so "n.u.d.e", "NÜDE", "s3x" and a Cyrillic "е" inside a Latin word are caught while "Essex",
// "Sussex" and "skill" are not. Pure functions.

export interface PolicyRule {
  id: string;
  /** What the person is told the prompt asked for, in each language. */
  names: { en: string; ru: string };
  /** Words or phrases; a trailing `*` on a word matches any ending (for inflected languages: "порн*"). */
  terms: string[];
  /** Also refuse an age under this ("a 12 year old", "12yo", "12-летний"). */
  minAge?: number;
}

export interface PolicyHit {
  rule: PolicyRule;
  /** The term that matched, normalised (what the person is shown). */
  term: string;
}

// Letters that look alike in Latin and Cyrillic: a word mixing the two scripts is read in its main script.
const CYR_TO_LAT: Record<string, string> = { а: 'a', в: 'b', е: 'e', к: 'k', м: 'm', н: 'h', о: 'o', р: 'p', с: 'c', т: 't', у: 'y', х: 'x', і: 'i' };
const LAT_TO_CYR: Record<string, string> = Object.fromEntries(Object.entries(CYR_TO_LAT).map(([c, l]) => [l, c]));
// Within a word that has letters: digits and symbols standing for letters.
const LEET: Record<string, string> = { '0': 'o', '1': 'i', '3': 'e', '4': 'a', '5': 's', '7': 't', '8': 'b', '@': 'a', $: 's', '!': 'i', '|': 'i' };

const latin = /\p{Script=Latin}/u;
const cyrillic = /\p{Script=Cyrillic}/u;

function normalizeWord(raw: string): string {
  let word = raw;
  if (/\p{L}/u.test(word) && /[\d@$!|]/u.test(word)) word = [...word].map((c) => LEET[c] ?? c).join('');
  if (latin.test(word) && cyrillic.test(word)) {
    const chars = [...word];
    const lat = chars.filter((c) => latin.test(c)).length;
    const map = lat >= chars.length - lat ? CYR_TO_LAT : LAT_TO_CYR;
    word = chars.map((c) => map[c] ?? c).join('');
  }
  return word;
}

// "nuuude", "seeex": a letter three or more times read as one (real double letters stay). Tried besides the word
// as written, so a term that is itself a run ("xxx") still matches only itself.
const collapse = (word: string) => word.replace(/(\p{L})\1{2,}/gu, '$1');

/** The words of `text` as the policy reads them. */
export function policyWords(text: string): string[] {
  const folded = text
    .normalize('NFKD')
    .replace(/\p{M}/gu, '') // diacritics: "nüde" → "nude", "ё" → "е"
    .replace(/\p{Cf}/gu, '') // zero-width spaces and joiners, soft hyphens
    .toLowerCase();
  // Symbols count as letters only inside a word ("n!de", "s$x"), not as the punctuation after it ("nice!").
  const raw = folded.match(/[\p{L}\p{N}@$]+(?:[!|]+[\p{L}\p{N}@$]+)*/gu) ?? [];
  // Spaced-out letters ("n u d e", "n.u.d.e", "n-u-d-e") are read as one word.
  const words: string[] = [];
  let run: string[] = [];
  const flush = () => {
    if (run.length >= 3) words.push(run.join(''));
    else words.push(...run);
    run = [];
  };
  for (const w of raw) {
    if ([...w].length === 1 && /\p{L}|[@$!|0-9]/u.test(w)) run.push(w);
    else { flush(); words.push(w); }
  }
  flush();
  return words.map(normalizeWord);
}

type WordTest = (word: string) => boolean;

function compile(term: string): WordTest[] {
  // A `*` ends a word: that word matches any continuation.
  return term.trim().split(/\s+/).map((part) => {
    const prefix = part.endsWith('*');
    const w = policyWords(prefix ? part.slice(0, -1) : part)[0] ?? '';
    return prefix ? (x: string) => x.startsWith(w) : (x: string) => x === w;
  });
}

// Compiled once per rule list (the config's), not per prompt.
// Single whole words (most terms) are looked up; prefixes and phrases are tried at each position.
interface CompiledRule { rule: PolicyRule; exact: Map<string, string>; others: Array<{ term: string; words: WordTest[] }> }
const compiled = new WeakMap<readonly PolicyRule[], CompiledRule[]>();
const compiledRules = (rules: readonly PolicyRule[]) => {
  let found = compiled.get(rules);
  if (!found) {
    found = rules.map((rule) => {
      const exact = new Map<string, string>();
      const others: CompiledRule['others'] = [];
      for (const term of rule.terms) {
        const parts = term.trim().split(/\s+/);
        if (parts.length === 1 && !term.includes('*')) exact.set(policyWords(term)[0] ?? term, term);
        else others.push({ term: term.replace(/\*/g, ''), words: compile(term) });
      }
      return { rule, exact, others };
    });
    compiled.set(rules, found);
  }
  return found;
};

// "12 year old", "12-year-old", "12yo", "12 y.o.", "12 лет", "12-летний".
const AGE = /(?<![\p{L}\p{N}])(\d{1,2})\s*-?\s*(?:years?(?:\s*-?\s*old)?|yrs?(?:\s*-?\s*old)?|y\.?\s?o\.?|yo|год(?:а)?|лет(?:ний|няя|него|нюю|ней|ние|них)?)(?![\p{L}])/giu;

/** The first rule `text` breaks, or undefined. */
export function checkPrompt(text: string, rules: readonly PolicyRule[]): PolicyHit | undefined {
  const words = policyWords(text);
  const collapsed = words.map(collapse);
  const at = (test: WordTest, n: number) => test(words[n]!) || test(collapsed[n]!);
  for (const { rule, exact, others } of compiledRules(rules)) {
    for (let n = 0; n < words.length; n++) {
      const term = exact.get(words[n]!) ?? exact.get(collapsed[n]!);
      if (term) return { rule, term };
    }
    for (const { term, words: tests } of others) {
      for (let i = 0; i + tests.length <= words.length; i++) {
        if (tests.every((test, k) => at(test, i + k))) return { rule, term };
      }
    }
    if (rule.minAge !== undefined) {
      for (const m of text.normalize('NFKC').matchAll(AGE)) {
        if (Number(m[1]) < rule.minAge) return { rule, term: m[0].trim() };
      }
    }
  }
  return undefined;
}

/** The negative prompt the engine gets: the person's (or the style's), then the policy's, always. */
export function withPolicyNegative(negative: string, policyNegative: string): string {
  return [negative.trim(), policyNegative.trim()].filter(Boolean).join(', ');
}
