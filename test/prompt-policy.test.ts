// The prompt policy on the configured rules: refused terms are found through case, diacritics, leetspeak, spacing
// and mixed scripts, on whole words only.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadConfig } from '../src/config/index.ts';
import { checkPrompt, policyWords, withPolicyNegative } from '../src/services/prompt-policy.ts';

const { rules, negativePrompt } = loadConfig({}).policy;
const verdict = (prompt: string) => {
  const hit = checkPrompt(prompt, rules);
  return hit ? `${hit.rule.id}:${hit.term}` : 'ok';
};

const refused: Array<[string, string]> = [
  ['me nude on a beach', 'sexual:nude'],
  ['NUDE portrait of me', 'sexual:nude'],
  ['me naked', 'sexual:naked'],
  ['Nüde art', 'sexual:nude'],
  ['n u d e photo', 'sexual:nude'],
  ['n.u.d.e photo', 'sexual:nude'],
  ['n-a-k-e-d', 'sexual:naked'],
  ['s3x scene', 'sexual:sex'],
  ['p0rn star', 'sexual:porn'],
  ['pornographic', 'sexual:porn'],
  ['nuuuude', 'sexual:nude'],
  ['nu\u200bde', 'sexual:nude'],
  ['nudе with a Cyrillic е', 'sexual:nude'],
  ['me without clothes', 'sexual:without clothes'],
  ['NSFW', 'sexual:nsfw'],
  ['XXX poster', 'sexual:xxx'],
  ['голая на пляже', 'sexual:голая'],
  ['обнажённая', 'sexual:обнаж'],
  ['порнография', 'sexual:порн'],
  ['me as a child', 'minors:child'],
  ['me with kids', 'minors:kids'],
  ['a t33n', 'minors:teen'],
  ['little girl in a dress', 'minors:little girl'],
  ['me as a 12 year old', 'minors:12 year old'],
  ['a 12yo', 'minors:12yo'],
  ['ребёнок', 'minors:ребенок'],
  ['школьница', 'minors:школьниц'],
  ['мне 10 лет', 'minors:10 лет'],
];
for (const [prompt, expected] of refused) {
  test(`refused: ${JSON.stringify(prompt)}`, () => assert.equal(verdict(prompt), expected));
}

// Words that contain a refused term, or look like one, pass.
const allowed = [
  'me in Essex', 'Sussex countryside', 'Middlesex, 1850', 'a sextant on a ship', 'skill and skilled', 'unisex jacket',
  'kidney beans', 'a kidnapper in a noir film', 'childhood home, nostalgic', 'a minor chord', 'Scunthorpe station',
  'analysis', 'therapist', 'striped shirt', 'a bare-eye view of Saturn', 'nice!', 'wow!!! me!',
  'me at 30 years old', 'me at 18', 'голова', 'детектив', 'голубое небо', 'попкорн', 'Nudelholz', 'Saturday brunch', 'Kidderminster market',
  'a.m. light', 'I a m here', 'x', 'style x, Malcolm X', 'a woman named Xena', 'zzz, sleepy', 'bustier? no, a suit',
];
for (const prompt of allowed) {
  test(`allowed: ${JSON.stringify(prompt)}`, () => assert.equal(verdict(prompt), 'ok'));
}

test('policy words: normalisation', () => {
  assert.deepEqual(policyWords('N.U.D.E, s3x! Ñaïve'), ['nude', 'sex', 'naive']);
  assert.deepEqual(policyWords('nice! 2024'), ['nice', '2024']);
});

test('the default negative prompt is always appended', () => {
  assert.ok(negativePrompt.includes('nsfw'));
  assert.equal(withPolicyNegative('blurry', negativePrompt), `blurry, ${negativePrompt}`);
  assert.equal(withPolicyNegative('  ', negativePrompt), negativePrompt);
  assert.equal(withPolicyNegative('blurry', ''), 'blurry');
});
