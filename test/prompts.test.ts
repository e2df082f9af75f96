// The trained subject in every prompt: first-person words become it, a prompt without one gets it, other words stay.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { languageVerdict, nameSubject, scriptOf, showPrompt, subjectOf } from '../src/services/prompts.ts';
import { findStyle, parseStyleCommand, stylePresets } from '../src/services/styles.ts';
import { generationOptions } from '../src/services/generation.ts';

const sks = subjectOf('a photo of sks person');

test('the subject comes from the instance prompt', () => {
  assert.deepEqual(sks, { instancePrompt: 'a photo of sks person', token: 'sks', phrase: 'sks person', possessive: "sks person's" });
  assert.equal(subjectOf('photo of ohwx man').phrase, 'ohwx man');
  assert.equal(subjectOf('ohwx woman').token, 'ohwx');
  assert.equal(subjectOf('  A   photo of   zwx person ').phrase, 'zwx person');
});

const cases: Array<[string, string, 'kept' | 'replaced' | 'prefixed']> = [
  ['a portrait of me as an astronaut', 'a portrait of sks person as an astronaut', 'replaced'],
  ['Me, as a knight', 'sks person, as a knight', 'replaced'],
  ['ME AS A PIRATE', 'sks person AS A PIRATE', 'replaced'],
  ['myself in Paris', 'sks person in Paris', 'replaced'],
  ['I am a viking', 'sks person am a viking', 'replaced'],
  ['i as a samurai', 'sks person as a samurai', 'replaced'],
  ["I'm on the moon", 'sks person is on the moon', 'replaced'],
  ['I’ve become a wizard', 'sks person has become a wizard', 'replaced'],
  ['my wedding photo', "sks person's wedding photo", 'replaced'],
  ['My dog and me', "sks person's dog and sks person", 'replaced'],
  ['me and myself, oil painting', 'sks person and sks person, oil painting', 'replaced'],
  ['(me) in a [spacesuit]', '(sks person) in a [spacesuit]', 'replaced'],
  ['"me" on a poster', '"sks person" on a poster', 'replaced'],
  ['me!', 'sks person!', 'replaced'],
  // Russian pronouns (Unicode word boundaries: not inside other words).
  ['портрет меня в космосе', 'портрет sks person в космосе', 'replaced'],
  ['я космонавт', 'sks person космонавт', 'replaced'],
  ['фото мне на память', 'фото sks person на память', 'replaced'],
  ['рисую себя', 'рисую sks person', 'replaced'],
  ['моя собака', "sks person's собака", 'replaced'],
  ['яблоко на столе', 'a photo of sks person, яблоко на столе', 'prefixed'],
  // No subject named: the training caption leads, the person's words follow as typed.
  ['an astronaut on the moon', 'a photo of sks person, an astronaut on the moon', 'prefixed'],
  ['a meadow in spring', 'a photo of sks person, a meadow in spring', 'prefixed'],
  ['Iceland at night', 'a photo of sks person, Iceland at night', 'prefixed'],
  ['time travel, cinematic', 'a photo of sks person, time travel, cinematic', 'prefixed'],
  ['mystic forest, theme park, homemade', 'a photo of sks person, mystic forest, theme park, homemade', 'prefixed'],
  ['i.e. a watercolor', 'a photo of sks person, i.e. a watercolor', 'prefixed'],
  ['a knight of King Louis I', 'a photo of sks person, a knight of King Louis I', 'prefixed'],
  ['me as Queen Elizabeth I', 'sks person as Queen Elizabeth I', 'replaced'],
  ['a World War I pilot', 'a photo of sks person, a World War I pilot', 'prefixed'],
  ['Wi-Fi cafe, Mimi the cat', 'a photo of sks person, Wi-Fi cafe, Mimi the cat', 'prefixed'],
  // The token is there already: left alone, even with first-person words.
  ['sks person as an astronaut', 'sks person as an astronaut', 'kept'],
  ['SKS person and me', 'SKS person and me', 'kept'],
  ['a photo of sks person, me smiling', 'a photo of sks person, me smiling', 'kept'],
  // "sks" inside another word is not the token.
  ['tasks and desks', 'a photo of sks person, tasks and desks', 'prefixed'],
  ['  me   dancing  ', 'sks person   dancing', 'replaced'],
];

for (const [typed, expected, how] of cases) {
  test(`names the subject: ${JSON.stringify(typed)}`, () => {
    assert.deepEqual(nameSubject(typed, sks), { prompt: expected, how });
  });
}

test('a subject named only past what CLIP reads (77 tokens) is named up front too', () => {
  const long = `${'a very detailed, '.repeat(20)}me on a horse`;
  assert.equal(nameSubject(long, sks).prompt, `a photo of sks person, ${'a very detailed, '.repeat(20)}sks person on a horse`);
  const fits = `${'a very detailed, '.repeat(10)}me on a horse`;
  assert.equal(nameSubject(fits, sks).how, 'replaced');
});

test('an empty prompt is the instance prompt', () => {
  assert.deepEqual(nameSubject('   ', sks), { prompt: 'a photo of sks person', how: 'prefixed' });
});

test('another instance prompt gives another subject', () => {
  const ohwx = subjectOf('photo of ohwx man');
  assert.equal(nameSubject('me on a horse', ohwx).prompt, 'ohwx man on a horse');
  assert.equal(nameSubject('on a horse', ohwx).prompt, 'photo of ohwx man, on a horse');
  // The default token is not special for an adapter trained on another one.
  assert.equal(nameSubject('sks person on a horse', ohwx).how, 'prefixed');
});

test('the prompt as shown reads "you" for the token', () => {
  assert.equal(showPrompt('a photo of sks person, an astronaut', sks), 'a photo of you, an astronaut');
  assert.equal(showPrompt("sks person's dog and sks person", sks), 'your dog and you');
  assert.equal(showPrompt('SKS man', sks), 'you man');
  assert.equal(showPrompt('tasks for sks person', sks), 'tasks for you');
});

test('prompts not in Latin script: refused when mostly foreign, a note when a few words are', () => {
  const verdict = (typed: string) => {
    const script = scriptOf(nameSubject(typed, sks).prompt, sks);
    return [languageVerdict(script), script.words];
  };
  assert.deepEqual(verdict('me as an astronaut'), ['ok', []]);
  assert.deepEqual(verdict('Café crème in Zürich, naïve style'), ['ok', []]);
  // Russian pronouns become the subject, so this one is all English once rewritten.
  assert.deepEqual(verdict('я as an astronaut'), ['ok', []]);
  assert.deepEqual(verdict('меня'), ['ok', []]);
  assert.deepEqual(verdict('портрет меня в образе космонавта'), ['refuse', ['портрет', 'в', 'образе', 'космонавта']]);
  assert.deepEqual(verdict('宇宙飛行士'), ['refuse', ['宇宙飛行士']]);
  assert.deepEqual(verdict('Ελληνικό νησί'), ['refuse', ['Ελληνικό', 'νησί']]);
  assert.deepEqual(verdict('me as an astronaut over Москва'), ['warn', ['Москва']]);
  assert.deepEqual(verdict('me 🚀 on the moon, 4k'), ['ok', []]);
});

test('style presets: at least six, named in both languages, English prompts with the subject and settings in range', () => {
  assert.ok(stylePresets.length >= 6);
  assert.equal(new Set(stylePresets.map((s) => s.id)).size, stylePresets.length);
  for (const s of stylePresets) {
    assert.match(s.id, /^[a-z]+$/);
    assert.ok(s.names.en && /\p{Script=Cyrillic}/u.test(s.names.ru), s.id);
    assert.ok(s.prompt.includes('{subject}'), s.id);
    assert.equal(languageVerdict(scriptOf(s.prompt, sks)), 'ok', `${s.id} is English`);
    // Inside the option ranges the API accepts.
    assert.ok(generationOptions.safeParse({ steps: s.steps, guidanceScale: s.guidanceScale, scheduler: s.scheduler, negativePrompt: s.negativePrompt }).success, s.id);
  }
});

test('a style is found by its id or its name in any language', () => {
  assert.equal(findStyle('astronaut')?.id, 'astronaut');
  assert.equal(findStyle('Космонавт')?.id, 'astronaut');
  assert.equal(findStyle('портрет маслом')?.id, 'oil');
  assert.equal(findStyle('Film-Noir')?.id, 'noir');
  assert.equal(findStyle('нуар')?.id, 'noir');
  assert.equal(findStyle('nope'), undefined);
  assert.equal(findStyle(''), undefined);
  assert.deepEqual(parseStyleCommand('style:oil smiling'), { style: 'oil', rest: 'smiling' });
  assert.deepEqual(parseStyleCommand('стиль: портрет маслом в шляпе'), { style: 'портрет маслом', rest: 'в шляпе' });
  assert.deepEqual(parseStyleCommand('style:"Film noir" with a cigar'), { style: 'Film noir', rest: 'with a cigar' });
  assert.deepEqual(parseStyleCommand('STYLE = knight'), { style: 'knight', rest: '' });
  assert.deepEqual(parseStyleCommand('style:unknown thing'), { style: 'unknown', rest: 'thing' });
  assert.equal(parseStyleCommand('me in a stylish coat'), undefined);
  assert.equal(parseStyleCommand('a style: minimal'), undefined, 'only at the start');
});
