// The slash commands as deploy-commands.ts registers them: every name and description in both languages, from the
// catalogues, within Discord's rules for names.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { commandPayload } from '../bots/discord/deploy-commands.ts';
import { catalogues, type MessageKey } from '../bots/shared/i18n/index.ts';

// Discord's pattern for command and option names (and their localizations); they must be lowercase too.
const DISCORD_NAME = /^[-_\p{L}\p{N}\p{sc=Deva}\p{sc=Thai}]{1,32}$/u;
const validName = (name: string) => DISCORD_NAME.test(name) && name === name.toLowerCase();

/** The message for an option key; numbered options (photo1 … photo10) share one message with `{n}`. */
const optionText = (locale: 'en' | 'ru', command: string, option: string, suffix = '') => {
  const numbered = /^(\D+)(\d+)$/.exec(option);
  const key = `option.${command}.${numbered ? numbered[1] : option}${suffix}` as MessageKey;
  assert.ok(key in catalogues[locale], `${key} is in the ${locale} catalogue`);
  return catalogues[locale][key].replace('{n}', numbered?.[2] ?? '{n}');
};

test('every command and option carries its Russian name and description, taken from the catalogues', () => {
  const payload = commandPayload();
  assert.ok(payload.length >= 10);
  for (const command of payload) {
    // Command names are the same in every language: every message, /help and the Telegram menu name them so.
    assert.match(command.name, /^[a-z]+$/);
    assert.equal(command.name_localizations, undefined, `/${command.name} keeps its name`);
    const key = `command.${command.name}` as MessageKey;
    assert.equal(command.description, catalogues.en[key], `/${command.name} in English`);
    assert.equal(command.description_localizations?.ru, catalogues.ru[key], `/${command.name} in Russian`);
    for (const option of command.options ?? []) {
      const where = `/${command.name} ${option.name}`;
      assert.equal(option.name, optionText('en', command.name, option.name, '.name'), `${where}: the English label is its name`);
      assert.equal(option.name_localizations?.ru, optionText('ru', command.name, option.name, '.name'), `${where}: Russian label`);
      assert.equal(option.description, optionText('en', command.name, option.name), `${where}: English description`);
      assert.equal(option.description_localizations?.ru, optionText('ru', command.name, option.name), `${where}: Russian description`);
      for (const name of [option.name, option.name_localizations!.ru!]) assert.ok(validName(name), `${where}: “${name}” is a valid Discord name`);
      for (const text of [option.description, option.description_localizations!.ru!]) assert.ok(text.length >= 1 && text.length <= 100, `${where}: 1–100 characters`);
    }
  }
  // Spot checks of what a Russian Discord shows.
  const pose = payload.find((c) => c.name === 'pose')!;
  assert.deepEqual(pose.options!.map((o) => o.name_localizations?.ru), ['картинка', 'промпт']);
  const train = payload.find((c) => c.name === 'train')!;
  assert.deepEqual([train.options![0]!.name_localizations?.ru, train.options![9]!.description_localizations?.ru], ['фото1', 'Фото 10']);
});

test('the command files hold no names or descriptions of their own: every word comes from the catalogues', () => {
  const dir = new URL('../bots/discord/commands/', import.meta.url);
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.ts'))) {
    const source = readFileSync(new URL(file, dir), 'utf8');
    assert.doesNotMatch(source, /\.set(Name|Description)(Localizations)?\(\s*[{'"`]/, `${file} sets a name or description from a literal`);
  }
});

test('the Russian Discord texts name the options by their Russian labels', () => {
  assert.match(catalogues.ru['help.pose_discord'], new RegExp(`/pose ${catalogues.ru['option.pose.image.name']}: ${catalogues.ru['option.pose.prompt.name']}:`));
  assert.ok(catalogues.ru['styles.usage_discord'].includes(`«${catalogues.ru['option.imagine.style.name']}»`));
  assert.match(catalogues.en['help.pose_discord'], /\/pose image: prompt:/);
});
