// What the playground page reads on load (GET /api/state), picture deletion, and its language: Accept-Language, the
// switch (a cookie and the account's locale), and the page's words from the chats' catalogues.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { eq } from 'drizzle-orm';
import { jobs, users } from '../src/db/schema.ts';
import { PlaygroundClient, startStack, type Stack } from './helpers/stack.ts';
import { makePhotos } from './helpers/images.ts';

let stack: Stack;

before(async () => {
  // No worker at first: jobs stay queued until the test starts one.
  stack = await startStack({ MIN_TRAINING_PHOTOS: '3' }, false);
  while (stack.app.queues.connection.status !== 'ready') await new Promise((resolve) => setTimeout(resolve, 50));
});
after(async () => {
  await stack?.close();
});

class RuClient extends PlaygroundClient {
  override request(path: string, init: RequestInit = {}) {
    return super.request(path, { ...init, headers: { 'accept-language': 'ru-RU,ru;q=0.9,en;q=0.5', ...(init.headers as Record<string, string> | undefined) } });
  }
}

test('the API and the page speak Russian to ru-RU; the switch holds before and after an account exists', async () => {
  const client = new RuClient(stack.baseUrl);
  const train = await client.post('/api/train');
  assert.equal(train.status, 400);
  assert.equal(train.body.error.message, 'Для обучения нужно не меньше 3 хороших фотографий, у вас 0. Пришлите ещё 3.');
  const i18n = await client.json('/api/i18n');
  assert.equal(i18n.body.locale, 'ru');
  assert.equal(i18n.body.messages['web.train'], 'Обучить мою модель');
  assert.deepEqual(i18n.body.locales.map((l: { id: string }) => l.id).sort(), ['en', 'ru']);

  // The switch before any upload: a cookie, then the new account gets that language.
  assert.equal((await client.post('/api/locale', { locale: 'en' })).status, 200);
  assert.equal((await client.json('/api/i18n')).body.locale, 'en');
  assert.match((await client.post('/api/train')).body.error.message, /^Training needs at least 3 good photos; you have 0/);
  const upload = await client.upload('/api/photos', (await makePhotos(1)).map((data): [string, Buffer] => ['me.jpg', data]));
  assert.equal(upload.status, 200);
  const [user] = await stack.app.database.db.select().from(users).where(eq(users.id, (await stack.app.services.users.find('web', client.cookie.match(/pb_session=(\w+)/)![1]!))!.id));
  assert.equal(user!.locale, 'en');
  // Back to Russian: the account's language follows (the chats read it too).
  await client.post('/api/locale', { locale: 'ru' });
  assert.equal((await stack.app.services.users.find('web', client.cookie.match(/pb_session=(\w+)/)![1]!))!.locale, 'ru');
  assert.equal((await client.post('/api/locale', { locale: 'de' })).status, 400);
});

test('a file that is not a picture is named for what it looks like, in Russian too', async () => {
  const files: Array<[string, Buffer]> = [
    ['notes.jpg', Buffer.from('Hello! This is not a photo.\n')],
    ['page.jpg', Buffer.from('<!doctype html><html><body>hi</body></html>')],
    ['doc.jpg', Buffer.from('%PDF-1.7\n1 0 obj <<>> endobj\n')],
    ['noise.jpg', Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919) % 251))],
  ];
  const messages = async (client: PlaygroundClient) =>
    ((await client.upload('/api/photos', files)).body.results as Array<{ message: string }>).map((r) => r.message);
  assert.deepEqual(await messages(new RuClient(stack.baseUrl)), [
    'Это не картинка: похоже, это текст. Пришлите фото в JPEG, PNG или WebP.',
    'Это не картинка: похоже, это веб-страница. Пришлите фото в JPEG, PNG или WebP.',
    'Это не картинка: похоже, это документ PDF. Пришлите фото в JPEG, PNG или WebP.',
    'Это не картинка. Пришлите фото в JPEG, PNG или WebP.', // (sniffed as nothing in particular)
  ]);
  const english = await messages(new PlaygroundClient(stack.baseUrl));
  assert.match(english[0]!, /it looks like text/);
  assert.match(english[3]!, /not an image format we recognise/);
});

test('a reload finds photos, model versions, the running job and the gallery; a picture can be deleted', { timeout: 240_000 }, async () => {
  const client = new PlaygroundClient(stack.baseUrl);
  assert.deepEqual((await client.json('/api/state')).body, { consentedAt: null, photos: [], coverage: null, adapters: [], jobs: [], gallery: [] }, 'nobody yet: nothing, and no user made');
  const upload = await client.upload('/api/photos', (await makePhotos(3, 20)).map((data, i): [string, Buffer] => [`me-${i}.jpg`, data]));
  assert.equal(upload.status, 200);

  let state = (await client.json('/api/state')).body;
  assert.deepEqual(state.photos.map((p: { name: string }) => p.name), ['me-0.jpg', 'me-1.jpg', 'me-2.jpg']);
  assert.equal(state.photos[0].faceChecked, false, 'no face models in this stack');
  const thumb = await client.request(state.photos[0].url);
  assert.equal(thumb.status, 200);
  assert.match(thumb.headers.get('content-type')!, /^image\//);
  assert.equal((await new PlaygroundClient(stack.baseUrl).request(state.photos[0].url)).status, 404, 'nobody else sees it');

  // Words for the page, not chat commands.
  const noModel = await client.post('/api/imagine', { prompt: 'me' });
  assert.equal(noModel.body.error.code, 'no_model');
  assert.doesNotMatch(noModel.body.error.message, /\/train/);
  assert.match(noModel.body.error.message, /“Train my model”/);

  // Queued (no worker yet): the state shows the job with its place in line.
  const started = await client.post('/api/train');
  assert.equal(started.status, 202);
  state = (await client.json('/api/state')).body;
  assert.deepEqual([state.jobs[0].id, state.jobs[0].status, state.jobs[0].position, state.jobs[0].etaSeconds], [started.body.jobId, 'queued', 1, null]);
  assert.deepEqual(state.adapters.map((a: { status: string }) => a.status), ['queued']);

  await stack.startWorker();
  assert.equal((await client.waitForJob(started.body.jobId)).job.status, 'completed');
  state = (await client.json('/api/state')).body;
  const [adapter] = state.adapters;
  assert.equal(adapter.status, 'ready');
  assert.deepEqual(Object.keys(adapter.downloads).sort(), ['diffusers', 'kohya']);
  assert.equal((await client.request(adapter.downloads.kohya)).status, 200);
  assert.ok(adapter.sampleUrls.length > 0);
  assert.equal(state.jobs[0].status, 'completed');

  // A picture, then a second one held queued (worker stopped) so it cannot be deleted while it is painted.
  const imagine = await client.post('/api/imagine', { prompt: 'a portrait of me as an astronaut', options: { seed: 7, steps: 3, width: 256, height: 256 } });
  assert.equal(imagine.status, 202, JSON.stringify(imagine.body));
  const done = await client.waitForJob(imagine.body.jobId);
  assert.equal(done.job.status, 'completed');
  await stack.worker!.close();
  stack.worker = undefined;
  const open = await client.post('/api/imagine', { prompt: 'me smiling' });
  assert.equal(open.status, 202);
  const refused = await client.json(`/api/generations/${open.body.generationId}`, { method: 'DELETE' });
  assert.deepEqual([refused.status, refused.body.error.code], [409, 'generation_open']);

  state = (await client.json('/api/state')).body;
  assert.equal(state.gallery.length, 1, 'only finished pictures are in the gallery');
  const [picture] = state.gallery;
  assert.deepEqual(
    [picture.id, picture.prompt, picture.promptUsed, picture.seed, picture.settings.steps, picture.settings.width, picture.images.length],
    [imagine.body.generationId, 'a portrait of me as an astronaut', 'a portrait of you as an astronaut', 7, 3, 256, 1],
  );
  assert.equal(typeof picture.settings.guidanceScale, 'number');
  assert.equal(typeof picture.settings.scheduler, 'string');
  assert.equal((await client.request(picture.images[0])).status, 200);
  assert.ok(state.jobs.some((j: { id: string; status: string; position: number }) => j.id === open.body.jobId && j.status === 'queued' && j.position === 1));

  const stranger = await new PlaygroundClient(stack.baseUrl).json(`/api/generations/${picture.id}`, { method: 'DELETE' });
  assert.equal(stranger.status, 404);
  const [row] = await stack.app.database.db.select().from(jobs).where(eq(jobs.id, imagine.body.jobId));
  const generation = await stack.app.services.generation.get(row!.userId, picture.id);
  const outputs = generation!.outputKeys;
  assert.ok(outputs.length === 1 && (await stack.app.store.has(outputs[0]!)));

  const deleted = await client.json(`/api/generations/${picture.id}`, { method: 'DELETE' });
  assert.equal(deleted.status, 200);
  assert.equal(await stack.app.store.has(outputs[0]!), false, 'its file is gone');
  assert.equal((await client.request(picture.images[0])).status, 404);
  assert.deepEqual((await client.json('/api/state')).body.gallery, []);
  assert.equal((await client.json(`/api/generations/${picture.id}`, { method: 'DELETE' })).status, 404);
  // The job row stays (JobState owns job rows) and still answers.
  assert.equal((await client.json(`/api/jobs/${imagine.body.jobId}`)).body.job.status, 'completed');
});
