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

/** `{name}` placeholders in a message; used by the catalogue test and by translate's missing-parameter check. */
export const placeholders = (message: string): string[] => [...message.matchAll(/\{(\w+)\}/g)].map((m) => m[1]!).sort();

export function translator(locale: Locale): Translate {
  const catalogue = catalogues[locale];
  return (key, params = {}) =>
    catalogue[key].replace(/\{(\w+)\}/g, (whole, name: string) => (name in params ? String(params[name]) : whole));
}

/** A message key for arbitrary codes (service error codes, engine error codes), if the catalogue has one. */
export function knownKey(key: string): MessageKey | undefined {
  return key in en ? (key as MessageKey) : undefined;
}
