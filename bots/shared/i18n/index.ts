// Message catalogues and the one function that fills them in.
import { en, type MessageKey } from './en.ts';
import { ru } from './ru.ts';

export type { MessageKey };
export const catalogues = { en, ru } as const satisfies Record<string, Record<MessageKey, string>>;
export type Locale = keyof typeof catalogues;
export const locales = Object.keys(catalogues) as Locale[];

export const isLocale = (value: string): value is Locale => (locales as string[]).includes(value);

/** The bot's language for a platform locale code ('ru', 'ru-RU', 'en-GB', …); English when we have no catalogue. */
export function pickLocale(code: string | undefined | null): Locale {
  const base = (code ?? '').toLowerCase().split(/[-_]/)[0] ?? '';
  return isLocale(base) ? base : 'en';
}

export type Params = Record<string, string | number>;
export type Translate = (key: MessageKey, params?: Params) => string;

/**
 * Counted words use ICU MessageFormat's plural syntax, `{n, plural, one {# photo} other {# photos}}`: `#` is the
 * number, and the branch is chosen by `Intl.PluralRules` for the catalogue's language (Russian: one/few/many/other,
 * so 1 фотография, 2 фотографии, 5 фотографий, 21 фотография).
 */
const PLURAL = /\{(\w+), plural,((?:\s*(?:zero|one|two|few|many|other|=\d+) \{[^{}]*\})+)\s*\}/g;
const BRANCH = /(zero|one|two|few|many|other|=\d+) \{([^{}]*)\}/g;

/** The branches of each plural in a message: { n: { one: '# photo', other: '# photos' } }. */
export function plurals(message: string): Record<string, Record<string, string>> {
  const found: Record<string, Record<string, string>> = {};
  for (const [, name, body] of message.matchAll(PLURAL)) found[name!] = Object.fromEntries([...body!.matchAll(BRANCH)].map((b) => [b[1]!, b[2]!]));
  return found;
}

/** `{name}` placeholders and plural arguments in a message; used by the catalogue test and by translate. */
export const placeholders = (message: string): string[] =>
  [...new Set([...Object.keys(plurals(message)), ...[...message.replace(PLURAL, '').matchAll(/\{(\w+)\}/g)].map((m) => m[1]!)])].sort();

const translators = new Map<Locale, Translate>();

/** The locale's translate function: one per locale, made once (Intl.PluralRules costs ~5-9 µs to construct, and the
 * chats and the web ask for a translator on every update and request). */
export function translator(locale: Locale): Translate {
  let translate = translators.get(locale);
  if (!translate) translators.set(locale, (translate = makeTranslator(locale)));
  return translate;
}

function makeTranslator(locale: Locale): Translate {
  const catalogue = catalogues[locale];
  const rules = new Intl.PluralRules(locale);
  return (key, params = {}) =>
    catalogue[key]
      .replace(PLURAL, (whole, name: string, body: string) => {
        if (!(name in params)) return whole;
        const n = Number(params[name]);
        const branches = plurals(whole)[name]!;
        const branch = branches[`=${n}`] ?? branches[rules.select(n)] ?? branches.other ?? '#';
        return branch.replaceAll('#', String(params[name]));
      })
      .replace(/\{(\w+)\}/g, (whole, name: string) => (name in params ? String(params[name]) : whole));
}

/** Seconds left in words ("about 40 seconds left", "about 3 minutes left"), from the eta.* messages. */
export function etaText(t: Translate, seconds: number): string {
  return seconds < 90 ? t('eta.seconds', { n: Math.max(1, Math.round(seconds)) }) : t('eta.minutes', { n: Math.round(seconds / 60) });
}

/** A message key for arbitrary codes (service error codes, engine error codes), if the catalogue has one. */
export function knownKey(key: string): MessageKey | undefined {
  return key in en ? (key as MessageKey) : undefined;
}
