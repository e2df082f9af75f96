// The message catalogues: identical keys and placeholders in every language, and a message for every refusal the
// services can produce.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { catalogues, knownKey, pickLocale, placeholders, plurals, translator } from '../bots/shared/i18n/index.ts';
import { samplesCaption } from '../bots/shared/notifier.ts';
import { errorMessage } from '../bots/shared/error-text.ts';

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
  assert.equal(translator('ru'), translator('ru'), 'one translator per locale, not one per call');
  assert.notEqual(translator('ru'), translator('en'));
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

test('every plural has exactly the forms its language needs (Intl.PluralRules), in every catalogue', () => {
  let count = 0;
  for (const [locale, catalogue] of Object.entries(catalogues)) {
    const needed = [...new Intl.PluralRules(locale).resolvedOptions().pluralCategories].sort();
    for (const [key, message] of Object.entries(catalogue)) {
      for (const [name, branches] of Object.entries(plurals(message))) {
        count += 1;
        assert.deepEqual(Object.keys(branches).sort(), needed, `${locale} ${key} {${name}}`);
        for (const text of Object.values(branches)) assert.match(text, /#/, `${locale} ${key}: every form shows the number`);
      }
    }
  }
  assert.ok(count >= 20, `${count} plurals`);
});

test('counted nouns take the right form: en 1 and 2; ru 1, 2, 5, 11, 21, 22, 25', () => {
  const en = translator('en');
  const ru = translator('ru');
  const ruCounts = [1, 2, 5, 11, 21, 22, 25];
  // photos, models and pictures together, as /forget says them.
  assert.match(en('forget.done', { photos: 1, adapters: 1, generations: 1 }), /\(1 photo, 1 model, 1 picture\)/);
  assert.match(en('forget.done', { photos: 2, adapters: 2, generations: 2 }), /\(2 photos, 2 models, 2 pictures\)/);
  const forgotten = ruCounts.map((n) => ru('forget.done', { photos: n, adapters: n, generations: n }).match(/удалено: (.*)\. /)![1]);
  assert.deepEqual(forgotten, [
    '1 фотография, 1 модель, 1 картинка',
    '2 фотографии, 2 модели, 2 картинки',
    '5 фотографий, 5 моделей, 5 картинок',
    '11 фотографий, 11 моделей, 11 картинок',
    '21 фотография, 21 модель, 21 картинка',
    '22 фотографии, 22 модели, 22 картинки',
    '25 фотографий, 25 моделей, 25 картинок',
  ]);
  // trainings
  assert.match(en('error.limit_trainings', { max: 1, hours: 3 }), /^You have started 1 training today/);
  assert.match(en('error.limit_trainings', { max: 2, hours: 3 }), /^You have started 2 trainings today/);
  assert.deepEqual(ruCounts.map((n) => ru('error.limit_trainings', { max: n, hours: 3 }).match(/обучение (\d+ \S+) —/)![1]),
    ['1 раз', '2 раза', '5 раз', '11 раз', '21 раз', '22 раза', '25 раз']);
  // pictures made (accusative in Russian)
  assert.match(en('error.limit_generations', { max: 1, minutes: 5 }), /^You have made 1 picture in the last hour/);
  assert.match(en('error.limit_generations', { max: 2, minutes: 5 }), /^You have made 2 pictures in the last hour/);
  assert.deepEqual(ruCounts.map((n) => ru('error.limit_generations', { max: n, minutes: 5 }).match(/сделали (\d+ \S+) —/)![1]),
    ['1 картинку', '2 картинки', '5 картинок', '11 картинок', '21 картинку', '22 картинки', '25 картинок']);
  // photos one has
  assert.equal(en('error.too_many_photos', { max: 1 }), 'you already have 1 photo, the most a training uses.');
  assert.equal(en('error.too_many_photos', { max: 2 }), 'you already have 2 photos, the most a training uses.');
  assert.deepEqual(ruCounts.map((n) => ru('error.too_many_photos', { max: n }).match(/уже (\d+ \S+) —/)![1]),
    ['1 фотография', '2 фотографии', '5 фотографий', '11 фотографий', '21 фотография', '22 фотографии', '25 фотографий']);
  // A number that is not an integer or not given: the "other" form, and a missing value stays visible.
  assert.equal(en('error.too_many_photos'), 'you already have {max, plural, one {# photo} other {# photos}}, the most a training uses.');
});

test('a file refused as not an image is named for what it looks like, where the catalogue has words for it', () => {
  const config = { photos: { minForTraining: 3, maxPerUser: 20, maxUploadBytes: 20 << 20 }, policy: { rules: [] } } as unknown as Parameters<typeof errorMessage>[2];
  const say = (locale: 'en' | 'ru', detected?: string) =>
    errorMessage(translator(locale), locale, config, 'not_an_image', detected ? { detected } : {});
  assert.equal(say('en', 'video'), 'this file is not a picture: it looks like a video. Please send a JPEG, PNG or WebP photo.');
  assert.equal(say('ru', 'archive'), 'это не картинка: похоже, это архив (ZIP или подобный). Пришлите фото в JPEG, PNG или WebP.');
  assert.equal(say('ru', 'unknown'), say('ru'));
  assert.equal(say('en'), 'this file is not a picture. Please send a JPEG, PNG or WebP photo.');
});
