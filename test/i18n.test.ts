// The message catalogues: identical keys and placeholders in every language, and a message for every refusal the
// services can produce.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { catalogues, knownKey, pickLocale, placeholders, translator } from '../bots/shared/i18n/index.ts';
import { samplesCaption } from '../bots/shared/notifier.ts';

const [first, ...others] = Object.entries(catalogues);

test('every catalogue has exactly the keys of the English one', () => {
  const keys = Object.keys(first![1]).sort();
  for (const [locale, catalogue] of others) assert.deepEqual(Object.keys(catalogue).sort(), keys, `${locale} keys`);
});

test('every message has the same placeholders in every language, and none is empty', () => {
  for (const [key, message] of Object.entries(first![1])) {
    for (const [locale, catalogue] of others) {
      const other = (catalogue as Record<string, string>)[key]!;
      assert.ok(other.trim().length > 0, `${locale} ${key} is empty`);
      assert.deepEqual(placeholders(other), placeholders(message), `${locale} ${key} placeholders`);
    }
  }
});

test('the Russian catalogue is Russian (no English message left untranslated)', () => {
  const same = Object.entries(catalogues.en).filter(([key, text]) => catalogues.ru[key as keyof typeof catalogues.ru] === text && /[a-z]{4}/i.test(text.replace(/\{\w+\}/g, '')));
  assert.deepEqual(same.map(([key]) => key), []);
});

async function sourceFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true });
  const nested = await Promise.all(entries.map((e) => (e.isDirectory() ? sourceFiles(join(dir, e.name)) : Promise.resolve(e.name.endsWith('.ts') ? [join(dir, e.name)] : []))));
  return nested.flat();
}

test('every code a service, upload check or photo check refuses with has a message', async () => {
  const patterns = [/UserFacingError\(\s*'(\w+)'/g, /ImageRejectedError\(\s*'(\w+)'/g, /verdict\('(\w+)'/g, /\bcode: '(no_person|several_people|duplicate)'/g];
  const codes = new Set<string>();
  for (const file of await sourceFiles('src')) {
    const text = await readFile(file, 'utf8');
    for (const pattern of patterns) for (const m of text.matchAll(pattern)) codes.add(m[1]!);
  }
  codes.delete('ok');
  assert.ok(codes.size > 20, `found ${codes.size} codes`);
  assert.deepEqual([...codes].filter((code) => !knownKey(`error.${code}`)).sort(), []);
});

test('translate fills placeholders; pickLocale maps platform locales', () => {
  assert.equal(translator('en')('photos.need_more', { more: 3 }), 'Send 3 more to start training.');
  assert.equal(translator('ru')('photos.need_more', { more: 3 }), 'Пришлите ещё 3, чтобы начать обучение.');
  assert.equal(translator('en')('photos.need_more'), 'Send {more} more to start training.', 'a missing value stays visible');
  assert.deepEqual(['ru', 'ru-RU', 'en-GB', 'de', undefined, 'RU_ru'].map(pickLocale), ['ru', 'ru', 'en', 'en', 'en', 'ru']);
});

test('sample captions say why likeness is missing: models not installed, or no face to compare (not the same thing)', () => {
  for (const locale of ['en', 'ru'] as const) {
    const t = translator(locale);
    assert.equal(samplesCaption(t, { likeness: { skipped: 'face models not installed' } }), t('done.samples_unscored'));
    assert.equal(samplesCaption(t, {}), t('done.samples_unscored'), `${locale}: an adapter trained before likeness existed`);
    // Face models installed, but the worker had no held-out face, or no sample portrait held a face.
    assert.equal(samplesCaption(t, { likeness: { skipped: 'no held-out photo or no face in it' } }), t('done.samples_no_face'));
    assert.equal(samplesCaption(t, { likeness: { mean: null, scores: [null, null] } }), t('done.samples_no_face'));
    assert.equal(samplesCaption(t, { likeness: { mean: 0.61234 } }), t('done.samples', { score: '0.61' }));
    assert.equal(samplesCaption(t, { likeness: { mean: 0.2 }, lowLikeness: true }), `${t('done.samples', { score: '0.20' })}\n${t('done.low_likeness', { score: '0.20' })}`);
  }
  assert.match(translator('en')('done.samples_no_face'), /could not be measured: no face to compare/);
});
