// Slash-command names and descriptions in every catalogue language (Discord's name_localizations and
// description_localizations). Command names stay the same in every language: they are the commands every message,
// /help and the Telegram menu name. Option names are field labels only Discord shows (interactions carry the
// default name), so they are translated; the catalogues hold `option.<command>.<option>` (the description) and
// `option.<command>.<option>.name` (the label).
import type { LocaleString, LocalizationMap } from 'discord.js';
import { catalogues, translator, type Locale, type MessageKey, type Params } from '../shared/i18n/index.ts';

/** Discord's code for each of our languages but English, the default (a new catalogue must be named here). */
const discordLocales: Record<Exclude<Locale, 'en'>, LocaleString> = { ru: 'ru' };

interface Localizable {
  setName(name: string): unknown;
  setDescription(description: string): unknown;
  setNameLocalizations(names: LocalizationMap | null): unknown;
  setDescriptionLocalizations(descriptions: LocalizationMap | null): unknown;
}

/** A message in every language but English, as Discord's localization map. */
export function localizations(key: MessageKey, params?: Params): LocalizationMap {
  return Object.fromEntries(Object.entries(discordLocales).map(([locale, discord]) => [discord, translator(locale as Locale)(key, params)]));
}

/** A command: its name as it is, its description from `command.<name>`. */
export function localizedCommand<T extends Localizable>(builder: T, name: string): T {
  const key = `command.${name}` as MessageKey;
  builder.setName(name);
  builder.setDescription(catalogues.en[key]);
  builder.setDescriptionLocalizations(localizations(key));
  return builder;
}

/**
 * An option of `command`: label and description from `option.<command>.<key>`. Numbered options (train's photo1 …
 * photo10) share one key: `params` fill in the number, `name` is then the default name.
 */
export function localizedOption<T extends Localizable>(builder: T, command: string, key: string, params?: Params, name = key): T {
  const description = `option.${command}.${key}` as MessageKey;
  builder.setName(name);
  builder.setDescription(translator('en')(description, params));
  builder.setDescriptionLocalizations(localizations(description, params));
  builder.setNameLocalizations(localizations(`${description}.name` as MessageKey, params));
  return builder;
}
