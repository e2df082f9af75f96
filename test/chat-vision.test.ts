// The chat layer with the vision models in place (the generated fixture ONNX models): the coverage summary during
// /train, the /pose skeleton preview on Telegram and Discord, and the /link wrong-code limit. No worker runs: what is
// tested happens before a job starts (a ready model is put in place directly).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { and, eq } from 'drizzle-orm';
import sharp from 'sharp';
import { accounts, adapters, generations, jobs } from '../src/db/schema.ts';
import { baseModelName } from '../src/services/training.ts';
import { Conversation } from '../bots/shared/conversation.ts';
import { LINK_ATTEMPTS, link } from '../bots/shared/account.ts';
import { translator } from '../bots/shared/i18n/index.ts';
import { type EmulatedUser } from './emulators/telegram.ts';
import { type EmulatedDiscordUser, type InteractionRecord } from './emulators/discord.ts';
import { PlaygroundClient, type Stack } from './helpers/stack.ts';
import { startChatStack, type ChatStack } from './helpers/chat-stack.ts';
import { fixtureModelsDir, sceneJpeg, type Scene } from './helpers/vision.ts';

let chats: ChatStack;
let stack: Stack;
let telegram: ChatStack['telegram'];
let discord: ChatStack['discord'];

const vera: EmulatedUser = { id: 7001, first_name: 'Vera', language_code: 'en' };
const pavel: EmulatedUser = { id: 7002, first_name: 'Павел', language_code: 'ru' };
const lena: EmulatedDiscordUser = { id: '710000000000000001', username: 'lena', locale: 'en-US' };

// Three different shots, every one facing the camera (yaw ≈ 0 with the fixture landmarks), all in the same light.
// Framing is face side over the long side: the first (0.32) and second (0.33) are wider shots, the third (0.42) a close-up.
const frontal: Scene[] = [
  { width: 900, height: 1200, faces: [{ x: 290, y: 300, w: 320, h: 380 }] },
  { width: 1200, height: 900, faces: [{ x: 600, y: 150, w: 330, h: 400 }] },
  { width: 1000, height: 1000, faces: [{ x: 100, y: 420, w: 360, h: 420 }] },
];
const onePerson: Scene = { width: 800, height: 600, persons: [{ x: 300, y: 60, w: 180, h: 500 }] };
const nobody: Scene = { width: 640, height: 480 };

before(async () => {
  chats = await startChatStack({ MIN_TRAINING_PHOTOS: '3', VISION_MODELS_DIR: fixtureModelsDir });
  ({ stack, telegram, discord } = chats);
});
after(async () => chats?.close());

const lastMessageId = () => Math.max(0, ...telegram.messages.keys());
const botSays = (user: EmulatedUser, pattern: RegExp, since: number, what = String(pattern)) =>
  telegram.waitFor(() => telegram.botMessages(user.id).find((m) => m.message_id > since && pattern.test(m.text ?? m.caption ?? '')), what);
const replyOf = (record: InteractionRecord, pattern: RegExp) =>
  discord.waitFor(() => record.original && !record.original.deleted && pattern.test(record.original.content) && record.original, `a reply matching ${pattern}`);

const userIdOf = async (externalId: string) => {
  const [row] = await stack.app.database.db.select().from(accounts).where(eq(accounts.externalId, externalId));
  return row!.userId;
};
/** A ready model, as a finished training would leave it (no worker runs here). */
const giveModel = async (userId: string) => {
  await stack.app.database.db.insert(adapters).values({ userId, version: 1, status: 'ready', baseModel: baseModelName(stack.app.config), params: {}, photoIds: [] });
};
const poseJobs = async (userId: string) =>
  stack.app.database.db.select().from(jobs).where(and(eq(jobs.userId, userId), eq(jobs.kind, 'pose')));

describe('coverage of the photo set', () => {
  test('Telegram /train: after each batch, where the set stands; all-frontal faces → “turn your head”', { timeout: 60_000 }, async () => {
    let mark = lastMessageId();
    telegram.sendText(vera, '/train');
    await botSays(vera, /You have 0 so far/, mark);

    const shots = await Promise.all(frontal.map((s) => sceneJpeg(s)));
    mark = lastMessageId();
    telegram.sendDocument(vera, shots[0]!, 'one.jpg', 'image/jpeg');
    const first = (await botSays(vera, /one\.jpg: accepted/, mark)).text!;
    assert.match(first, /Your set: 1 facing the camera, 0 turned left, 0 turned right; 0 close-ups, 1 from further away\./);
    assert.doesNotMatch(first, /Before training, add/, 'too few photos to judge variety; “send 2 more” is said already');
    assert.match(first, /Send 2 more/);
    assert.match(first, /Expressions can’t be measured/);

    mark = lastMessageId();
    telegram.sendDocument(vera, shots[1]!, 'two.jpg', 'image/jpeg', { mediaGroupId: 'g1' });
    telegram.sendDocument(vera, shots[2]!, 'three.jpg', 'image/jpeg', { mediaGroupId: 'g1' });
    const batch = (await botSays(vera, /Photos: 3/, mark, 'one answer for the album')).text!;
    assert.match(batch, /Your set: 3 facing the camera, 0 turned left, 0 turned right/);
    assert.match(batch, /Before training, add:\n• a few photos with your head turned left and right/);
    assert.match(batch, /• photos in different light/);
    assert.doesNotMatch(batch, /Expressions/, 'said once per session');
    assert.doesNotMatch(batch, /more photo\(s\)/);
  });

  test('in Russian too', { timeout: 30_000 }, async () => {
    const mark = lastMessageId();
    telegram.sendText(pavel, '/train');
    await botSays(pavel, /Сейчас у вас 0/, mark);
    const after = lastMessageId();
    telegram.sendDocument(pavel, await sceneJpeg(frontal[0]!), 'a.jpg', 'image/jpeg');
    const reply = (await botSays(pavel, /a\.jpg: принято/, after)).text!;
    assert.match(reply, /✅ a\.jpg: принято\./, 'checked by the face models: plainly accepted');
    assert.match(reply, /Ваш набор: 1 анфас/);
    assert.match(reply, /Выражение лица по фото не измерить/);
  });

  test('the web upload answers with the coverage, and GET /api/photos shows it', async () => {
    const client = new PlaygroundClient(stack.baseUrl);
    const upload = await client.upload('/api/photos', await Promise.all(frontal.map(async (s, i): Promise<[string, Buffer]> => [`f${i}.jpg`, await sceneJpeg(s)])));
    assert.equal(upload.status, 200, JSON.stringify(upload.body));
    assert.equal(upload.body.total, 3);
    const { coverage } = upload.body;
    assert.deepEqual(coverage.angles, { left: 0, frontal: 3, right: 0 });
    assert.ok(coverage.suggestions.some((s: { code: string }) => s.code === 'more_angles'), JSON.stringify(coverage));
    assert.deepEqual(coverage.notMeasured, ['expressions']);
    assert.deepEqual((await client.json('/api/photos')).body.coverage, coverage);
  });
});

describe('/pose skeleton preview', () => {
  test('Telegram: the extracted skeleton arrives as a preview photo answering the status message', { timeout: 60_000 }, async () => {
    let mark = lastMessageId();
    telegram.sendText(vera, '/status');
    await botSays(vera, /Photos: 3/, mark);
    const id = await userIdOf(String(vera.id));
    await giveModel(id);

    mark = lastMessageId();
    telegram.sendPhoto(vera, await sceneJpeg(onePerson), { caption: '/pose dancing' });
    const status = await botSays(vera, /Pose portrait/, mark);
    const preview = await telegram.waitFor(() => telegram.botMessages(vera.id).find((m) => m.message_id > mark && m.photo), 'the skeleton preview');
    assert.equal(preview.caption, 'Your pose — painting you in it now…');
    const sent = telegram.callsOf('sendPhoto').at(-1)!;
    assert.equal(Number(sent.params.reply_parameters.message_id), status.message_id, 'the preview answers the status message');
    const meta = await sharp(sent.files.photo!).metadata();
    assert.deepEqual([meta.format, meta.width, meta.height], ['png', 704, 512], 'drawn at detect resolution (512 on the short side)');
    const [generation] = await stack.app.database.db.select().from(generations).where(eq(generations.userId, id));
    assert.deepEqual(sent.files.photo, await stack.app.store.get(generation!.controlKey!), 'the preview is the stored skeleton');
    assert.equal((await poseJobs(id)).length, 1);
  });

  test('Telegram: a picture with nobody in it is refused, nothing queued', { timeout: 30_000 }, async () => {
    const id = await userIdOf(String(vera.id));
    const before = (await poseJobs(id)).length;
    const mark = lastMessageId();
    telegram.sendPhoto(vera, await sceneJpeg(nobody), { caption: '/pose dancing' });
    assert.equal((await botSays(vera, /No person/, mark)).text, 'No person found in this picture — send a photo where one whole person is clearly visible.');
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(telegram.botMessages(vera.id).filter((m) => m.message_id > mark && m.photo).length, 0);
    assert.equal((await poseJobs(id)).length, before);
  });

  test('Discord: the preview is a follow-up file on the deferred reply; nobody → an ephemeral refusal', { timeout: 60_000 }, async () => {
    const help = discord.command(lena, 'help');
    await replyOf(help, /portraits/);
    const id = await userIdOf(lena.id);
    await giveModel(id);

    const file = async (scene: Scene) => ({ file: await sceneJpeg(scene), filename: 'pose.jpg', contentType: 'image/jpeg' });
    const record = discord.command(lena, 'pose', { image: await file(onePerson), prompt: 'dancing' });
    await replyOf(record, /Pose portrait/);
    const preview = await discord.waitFor(() => record.followUps.find((m) => m.attachments.length > 0), 'the skeleton preview');
    assert.equal(preview.content, 'Your pose — painting you in it now…');
    assert.ok(!discord.isEphemeral(preview));
    const meta = await sharp(preview.attachments[0]!.data).metadata();
    assert.deepEqual([meta.format, meta.width, meta.height], ['png', 704, 512], 'drawn at detect resolution (512 on the short side)');

    const refused = discord.command(lena, 'pose', { image: await file(nobody) });
    const refusal = await discord.waitFor(() => refused.followUps[0], 'an ephemeral refusal');
    assert.match(refusal.content, /^No person found in this picture/);
    assert.ok(discord.isEphemeral(refusal));
    assert.equal((await poseJobs(id)).length, 1, 'only the first pose was queued');
  });
});

describe('/link wrong codes', () => {
  test(`after ${LINK_ATTEMPTS} wrong codes in 10 minutes, even a right one is refused until the window ends`, { timeout: 30_000 }, async () => {
    for (let n = 0; n < LINK_ATTEMPTS; n++) {
      const mark = lastMessageId();
      telegram.sendText(pavel, `/link AAAA-BBB${n + 2}`);
      assert.match((await botSays(pavel, /Код|код/, mark)).text!, /Код неверный или устарел/);
    }
    // A right code from Discord, entered now: refused, and not used up.
    const conversation = new Conversation(stack.app);
    const other = await conversation.person('discord', '710000000000000099', { locale: 'ru' });
    const code = /код связи: (\S+)/.exec((await link(conversation, other, '')).text)![1]!;
    let mark = lastMessageId();
    telegram.sendText(pavel, `/link ${code}`);
    assert.match((await botSays(pavel, /Слишком много/, mark)).text!, /^Слишком много неверных кодов\. Попробуйте через 10 мин/);
    const pavelInEnglish = { ...(await conversation.person('telegram', String(pavel.id))), locale: 'en' as const, t: translator('en') };
    assert.match((await link(conversation, pavelInEnglish, code)).text, /^Too many wrong link codes\. Try again in 10 min/);

    // The window ends (its Redis key expires): the code still works.
    const key = `${stack.app.config.queuePrefix}:chat:link-attempts:${await userIdOf(String(pavel.id))}`;
    const ttl = await stack.app.queues.connection.pttl(key);
    assert.ok(ttl > 9 * 60_000 && ttl <= 10 * 60_000, `window ${ttl} ms`);
    await stack.app.queues.connection.del(key);
    mark = lastMessageId();
    telegram.sendText(pavel, `/link ${code}`);
    assert.match((await botSays(pavel, /связаны/, mark)).text!, /Аккаунты связаны/);
    assert.equal(await stack.app.queues.connection.exists(key), 0);
  });
});
