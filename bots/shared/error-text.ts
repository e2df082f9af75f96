// A service error code in the person's language: shared by the chat conversation and the web API.
import type { Config } from '../../src/config/index.ts';
import { knownKey, type Locale, type Params, type Translate } from './i18n/index.ts';
import { isDatabaseUnavailable } from '../../src/db/client.ts';

/** The apology for an unexpected failure: a database outage is named as such, anything else stays generic. */
export const apologyFor = (error: unknown) => (isDatabaseUnavailable(error) ? 'error.database_unavailable' : 'error.internal') as 'error.database_unavailable' | 'error.internal';

/**
 * The catalogue text for `error.<code>`, filled in with the numbers it needs; undefined when there is none. A
 * surface (`web`) has its own wording where the chats' names a command it lacks (`web.error.<code>`).
 */
export function errorMessage(
  t: Translate, locale: Locale, config: Pick<Config, 'photos' | 'policy'>, code: string, details: Params = {}, surface?: 'web',
): string | undefined {
  // A refused file says what its bytes look like (text, a web page…) where the code has a message for it and the
  // catalogue a name for that kind.
  const kindName = details.detected ? knownKey(`file_kind.${details.detected}`) : undefined;
  const withKind = kindName && knownKey(`error.${code}.kind`);
  const key = withKind || (surface && knownKey(`${surface}.error.${code}`)) || knownKey(`error.${code}`);
  if (!key) return undefined;
  const { photos } = config;
  const params: Params = { min: photos.minForTraining, max: photos.maxPerUser, ...details };
  if (withKind) params.kind = t(kindName!);
  if (code === 'too_large_bytes') params.maxMb = Math.floor(photos.maxUploadBytes / 1048576);
  if (code === 'not_enough_photos') params.more = Number(details.need ?? photos.minForTraining) - Number(details.have ?? 0);
  // The prompt rule as named in config, in the person's language.
  if (code === 'prompt_refused') params.rule = config.policy.rules.find((r) => r.id === details.rule)?.names[locale] ?? String(details.rule);
  return t(key, params);
}
