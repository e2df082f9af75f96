// Prompts in chat, end to end: the real telegraf and discord.js clients against the local emulators, over the real
// Postgres, Redis, worker and tiny engine. What the person is told about their prompt, and what the engine gets.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { eq } from 'drizzle-orm';
import { generations, jobs } from '../src/db/schema.ts';
import { createTelegramBot, type TelegramBot } from '../bots/telegram/bot.ts';
import { createDiscordBot, type DiscordBot } from '../bots/discord/bot.ts';
import { deployCommands } from '../bots/discord/deploy-commands.ts';
import { findStyle, stylePresets } from '../src/services/styles.ts';
import type { GenerateRequest } from '../src/engine/protocol.ts';
import { TelegramEmulator, type EmulatedUser } from './emulators/telegram.ts';
import { DiscordEmulator, type EmulatedDiscordUser, type InteractionRecord } from './emulators/discord.ts';
import { PlaygroundClient, chatEmulatorEnv, eventually, recordGenerateRequests, startStack, type Stack } from './helpers/stack.ts';
import { makePhotos, makeSkeleton } from './helpers/images.ts';

const telegram = new TelegramEmulator();
const discord = new DiscordEmulator();
let stack: Stack;
let telegramBot: TelegramBot;
let discordBot: DiscordBot;
/** Every generate request sent down the engine's pipe. */
let sent: Array<Omit<GenerateRequest, 'op'>> = [];
const olga: EmulatedDiscordUser = { id: '710000000000000001', username: 'olga', locale: 'ru' };
const dan: EmulatedDiscordUser = { id: '710000000000000002', username: 'dan', locale: 'en-US' };

const kate: EmulatedUser = { id: 7101, first_name: 'Kate', language_code: 'en' };
const ivan: EmulatedUser = { id: 7102, first_name: 'Иван', language_code: 'ru' };

before(async () => {
  await Promise.all([telegram.start(), discord.start()]);
  stack = await startStack({
    MIN_TRAINING_PHOTOS: '3',
    TRAIN_MAX_STEPS: '2',
    LIKENESS_SAMPLES: '1',
    ...chatEmulatorEnv(telegram, discord),
  });
  sent = recordGenerateRequests(stack);
  telegramBot = createTelegramBot(stack.app, { sweepIntervalMs: 1000 });
  discordBot = createDiscordBot(stack.app, { sweepIntervalMs: 1000 });
  await Promise.all([telegramBot.start(), discordBot.start()]);
  // Both people have a trained model (trained through the services: the chat flow of /train is tested elsewhere).
  for (const [n, user] of [kate, ivan].entries()) {
    const person = await stack.app.services.users.resolve('telegram', String(user.id), { locale: user.language_code });
    for (const [i, photo] of (await makePhotos(3, 60 + n * 3)).entries()) await stack.app.services.photos.add(person.id, photo, `p${i}.jpg`);
    const started = await stack.app.services.training.start(person.id);
    await eventually(async () => (await stack.app.services.jobs.view(person.id, started.job.id)).job.status === 'completed', 120_000, 'training');
  }
});

after(async () => {
  await Promise.all([telegramBot.stop(), discordBot.stop()]);
  await stack.close();
  await Promise.all([telegram.stop(), discord.stop()]);
});

const lastMessageId = () => Math.max(0, ...telegram.messages.keys());
const botSays = (user: EmulatedUser, pattern: RegExp, since: number) =>
  telegram.waitFor(() => telegram.botMessages(user.id).find((m) => m.message_id > since && pattern.test(m.text ?? m.caption ?? '')), String(pattern), 120_000);
const userIdOf = async (user: EmulatedUser) => (await stack.app.services.users.resolve('telegram', String(user.id))).id;
const jobCount = async (user: EmulatedUser) => (await stack.app.database.db.select().from(jobs).where(eq(jobs.userId, await userIdOf(user)))).length;

describe('prompt language', () => {
  test('a Russian prompt is refused in Russian, with a pointer to /styles, and queues nothing', { timeout: 60_000 }, async () => {
    const before = await jobCount(ivan);
    const mark = lastMessageId();
    telegram.sendText(ivan, '/imagine портрет меня в образе космонавта');
    const refusal = await botSays(ivan, /английск/, mark);
    assert.match(refusal.text!, /понимает только английский: «портрет, в, образе, космонавта»/);
    assert.match(refusal.text!, /\/imagine me as an astronaut/);
    assert.match(refusal.text!, /\/styles/);
    assert.equal(await jobCount(ivan), before, 'no job row');
  });

  test('a few foreign words in an English prompt: painted, with a note that they are ignored', { timeout: 120_000 }, async () => {
    const mark = lastMessageId();
    telegram.sendText(kate, '/imagine me as an astronaut over Москва');
    const note = await botSays(kate, /English only/, mark);
    assert.equal(note.text, '⚠️ The image model understands English only and will ignore: Москва. Ready-made styles work in any language: /styles.');
    const photo = await botSays(kate, /“me as an astronaut over Москва”/, mark);
    assert.ok(photo.photo, 'the portrait came');
    assert.ok(note.message_id < photo.message_id);
    const [row] = await stack.app.database.db.select().from(generations).where(eq(generations.userId, await userIdOf(kate)));
    assert.equal(row!.enginePrompt, 'sks person as an astronaut over Москва');
  });
});

const replyOf = (record: InteractionRecord, pattern: RegExp) =>
  discord.waitFor(() => record.original && !record.original.deleted && pattern.test(record.original.content) && record.original, String(pattern), 60_000);
const generationsOf = async (user: EmulatedUser) =>
  stack.app.database.db.select().from(generations).where(eq(generations.userId, await userIdOf(user))).orderBy(generations.createdAt);

describe('style presets', () => {
  test('/styles lists every preset in the person’s language (Telegram, Discord, web)', { timeout: 60_000 }, async () => {
    let mark = lastMessageId();
    telegram.sendText(kate, '/styles');
    const en = await botSays(kate, /Ready-made styles/, mark);
    mark = lastMessageId();
    telegram.sendText(ivan, '/styles');
    const ru = await botSays(ivan, /Готовые стили/, mark);
    for (const style of stylePresets) {
      assert.ok(en.text!.includes(`• ${style.names.en} — /imagine style:${style.id}`), style.id);
      assert.ok(ru.text!.includes(`• ${style.names.ru} — команда /imagine style:${style.id}`), style.id);
    }
    assert.match(ru.text!, /стиль:космонавт/);

    const listed = discord.command(olga, 'styles');
    const reply = await replyOf(listed, /Готовые стили/);
    assert.ok(stylePresets.every((s) => reply.content.includes(s.names.ru)));
    assert.match(reply.content, /параметре «стиль»/, 'the option by the label a Russian Discord shows');
    // /imagine offers the presets as choices, named in both languages.
    assert.ok((await deployCommands(stack.app.config.discord)).includes('styles'));
    const imagine = discord.commands.get('global')!.find((c) => c.name === 'imagine');
    const styleOption = imagine.options.find((o: any) => o.name === 'style');
    assert.deepEqual(styleOption.choices.map((c: any) => [c.value, c.name, c.name_localizations.ru]), stylePresets.map((s) => [s.id, s.names.en, s.names.ru]));
    assert.equal(imagine.options.find((o: any) => o.name === 'prompt').required ?? false, false, 'a style alone is a request');

    const web = await (await fetch(`${stack.baseUrl}/api/styles`)).json() as { styles: Array<{ id: string; names: { en: string; ru: string }; prompt: string; settings: { steps: number } }> };
    assert.deepEqual(web.styles.map((s) => s.id), stylePresets.map((s) => s.id));
    assert.ok(web.styles.every((s) => s.names.ru && s.prompt.includes('you') && !/sks/.test(s.prompt) && s.settings.steps > 0));
  });

  test('a preset named in Russian reaches the engine as its English prompt with its settings; the caption names it', { timeout: 180_000 }, async () => {
    const mark = lastMessageId();
    telegram.sendText(ivan, '/imagine стиль:Акварель');
    const photo = await botSays(ivan, /Стиль: Акварель/, mark);
    const preset = findStyle('watercolor')!;
    const [row] = (await generationsOf(ivan)).slice(-1);
    assert.equal(row!.style, 'watercolor');
    assert.equal(row!.prompt, '');
    const request = sent.find((r) => r.seed === row!.seed && r.steps === preset.steps)!;
    assert.equal(request.prompt, 'a soft watercolor portrait of sks person, loose washes of color on textured paper, delicate lines, pastel palette');
    assert.equal(request.guidance_scale, preset.guidanceScale);
    assert.equal(request.scheduler, preset.scheduler);
    assert.equal(request.negative_prompt, `${preset.negativePrompt}, ${stack.app.config.policy.negativePrompt}`);
    assert.equal(photo.caption, `Стиль: Акварель · seed ${row!.seed}\nПромпт для модели: a soft watercolor portrait of you, loose washes of color on textured paper, delicate lines, pastel palette`);
  });

  test('a tap on a style button paints the one who tapped in it (Telegram and Discord)', { timeout: 180_000 }, async () => {
    let mark = lastMessageId();
    telegram.sendText(ivan, '/styles');
    const list = await botSays(ivan, /Готовые стили/, mark);
    const keyboard = list.reply_markup.inline_keyboard as Array<Array<{ text: string; callback_data: string }>>;
    assert.deepEqual(keyboard.flat().map((b) => [b.text, b.callback_data]), stylePresets.map((s) => [s.names.ru, `style:${s.id}`]));
    assert.ok(keyboard.every((row) => row.length <= 3), 'at most three a row');
    mark = lastMessageId();
    telegram.pressButton(ivan, list.message_id, 'style:knight');
    const photo = await botSays(ivan, /^Стиль: Рыцарь · seed/, mark);
    assert.ok(photo.photo);
    assert.equal((await generationsOf(ivan)).at(-1)!.style, 'knight');

    const listed = discord.command(dan, 'styles');
    const reply = await replyOf(listed, /Ready-made styles/);
    assert.deepEqual(reply.components.flatMap((row: any) => row.components.map((b: any) => b.custom_id)), stylePresets.map((s) => `style:${s.id}`));
    assert.ok(reply.components.every((row: any) => row.components.length <= 5));
    // Dan has no model: the tap says so, to him only.
    const press = discord.press(dan, reply, 'style:noir');
    const refusal = await discord.waitFor(() => press.followUps[0], 'the answer to the tap');
    assert.match(refusal.content, /no trained model yet/);
    assert.ok(discord.isEphemeral(refusal));
  });

  test('an unknown preset gets a clear message and queues nothing', { timeout: 60_000 }, async () => {
    const before = await jobCount(kate);
    const mark = lastMessageId();
    telegram.sendText(kate, '/imagine style:pirate me with a parrot');
    const refusal = await botSays(kate, /don’t know the style/, mark);
    assert.equal(refusal.text, `I don’t know the style “pirate”. The styles are: ${stylePresets.map((s) => s.id).join(', ')} — see /styles.`);
    const record = discord.command(olga, 'imagine', { prompt: 'style:пират' });
    const followUp = await discord.waitFor(() => record.followUps[0], 'the refusal');
    assert.match(followUp.content, /^Стиля «пират» нет\. Стили: astronaut, /);
    // A style with no name: the list.
    const listed = lastMessageId();
    telegram.sendText(kate, '/imagine style:');
    await botSays(kate, /Ready-made styles/, listed);
    assert.equal(await jobCount(kate), before);
  });
});

describe('the internal prompt is never shown', () => {
  test('a /pose with no words is captioned without the training prompt', { timeout: 120_000 }, async () => {
    const mark = lastMessageId();
    telegram.sendPhoto(kate, await makeSkeleton(256), { caption: '/pose' });
    const photo = await botSays(kate, /in that pose/, mark);
    const [row] = (await generationsOf(kate)).slice(-1);
    assert.equal(row!.kind, 'pose');
    assert.equal(row!.enginePrompt, 'a photo of sks person');
    assert.equal(photo.caption, `You, in that pose · seed ${row!.seed}`);
    for (const m of telegram.botMessages(kate.id)) assert.doesNotMatch(m.text ?? m.caption ?? '', /sks/i, 'no message shows the token');
    for (const m of telegram.botMessages(ivan.id)) assert.doesNotMatch(m.text ?? m.caption ?? '', /sks/i, 'no message shows the token');
  });
});

describe('prompt policy', () => {
  const storedFiles = async () => (await readdir(stack.app.config.storageDir, { recursive: true })).length;

  test('a refused prompt is told the rule in the person’s language and leaves no job, row or file', { timeout: 60_000 }, async () => {
    const [kateJobs, ivanJobs, filesBefore] = [await jobCount(kate), await jobCount(ivan), await storedFiles()];
    let mark = lastMessageId();
    telegram.sendText(kate, '/imagine me n.u.d.e on a beach');
    assert.equal((await botSays(kate, /don’t paint/, mark)).text, 'I don’t paint sexual content (“nude”). This bot makes portraits only, so please change the prompt.');
    mark = lastMessageId();
    telegram.sendText(ivan, '/imagine me as a ребёнок');
    assert.equal((await botSays(ivan, /не рисую/, mark)).text, 'Я не рисую детей или несовершеннолетних («ребенок»). Этот бот делает только портреты — измените, пожалуйста, промпт.');
    // A style's extra words are checked too, and a /pose prompt before its picture is even stored.
    mark = lastMessageId();
    telegram.sendText(kate, '/imagine style:oil topless');
    assert.match((await botSays(kate, /don’t paint/, mark)).text!, /sexual content \(“topless”\)/);
    mark = lastMessageId();
    telegram.sendPhoto(kate, await makeSkeleton(256), { caption: '/pose as a 12 year old' });
    assert.match((await botSays(kate, /don’t paint/, mark)).text!, /children or minors \(“12 year old”\)/);
    const record = discord.command(dan, 'imagine', { prompt: 'me, NSFW' });
    assert.match((await discord.waitFor(() => record.followUps[0], 'the refusal')).content, /^I don’t paint sexual content \(“nsfw”\)/);
    assert.deepEqual([await jobCount(kate), await jobCount(ivan)], [kateJobs, ivanJobs], 'no job row');
    assert.equal(await storedFiles(), filesBefore, 'no file stored');
  });

  test('the web API refuses a negative prompt that breaks the policy too, and always appends the policy’s own', { timeout: 120_000 }, async () => {
    const web = new PlaygroundClient(stack.baseUrl);
    const refused = await web.post('/api/imagine', { prompt: 'me', options: { negativePrompt: 'clothes, s e x' } });
    assert.equal(refused.status, 400);
    assert.deepEqual([refused.body.error.code, refused.body.error.details], ['prompt_refused', { rule: 'sexual', term: 'sex', field: 'negativePrompt' }]);
    // Kate's model paints with her own negative prompt, and the policy's after it.
    const policy = stack.app.config.policy.negativePrompt;
    const mark = lastMessageId();
    telegram.sendText(kate, '/imagine me in Essex, a sextant in hand');
    await botSays(kate, /“me in Essex, a sextant in hand”/, mark);
    const [row] = (await generationsOf(kate)).slice(-1);
    assert.equal(row!.negativePrompt, `${stack.app.config.generation.negativePrompt}, ${policy}`);
    assert.equal(sent.at(-1)!.negative_prompt, row!.negativePrompt);
    // Every request the engine got carried it, the validation samples after training included.
    assert.ok(sent.some((r) => r.id.includes('sample')), 'samples were sent');
    for (const r of sent) assert.ok(r.negative_prompt!.endsWith(policy), `${r.id}: ${r.negative_prompt}`);
  });
});
