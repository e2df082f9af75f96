// The local web playground: a thin HTTP adapter over the platform-neutral services.
import Fastify, { type FastifyError, type FastifyReply, type FastifyRequest } from 'fastify';
import multipart from '@fastify/multipart';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import type { App } from '../../src/app.ts';
import type { Adapter, Generation, Job, TrainingPreview, User } from '../../src/db/schema.ts';
import { stylePresets } from '../../src/services/styles.ts';
import { UserFacingError, notFound } from '../../src/services/errors.ts';
import { isDatabaseUnavailable } from '../../src/db/client.ts';
import { isStorageFull } from '../../src/storage/storage.ts';
import type { PhotoUploadResult } from '../../src/services/photos.ts';
import type { GenerationNote } from '../../src/services/generation.ts';
import type { JobEvent } from '../../src/events/bus.ts';
import { catalogues, isLocale, knownKey, locales, translator, type Locale, type Params, type Translate } from '../shared/i18n/index.ts';
import { errorMessage } from '../shared/error-text.ts';
import { whatKey } from '../shared/job-text.ts';
import { withheldPicturesNotice, withheldSamplesNotice } from '../shared/withheld.ts';
import { acceptLanguage, allowedOrigins, checkStateChange, isStateChanging, localeCookie, localeFromCookie, sessionCookie, sessionFromCookie } from './guard.ts';
import { CONTROL_CHARS, receiveForm } from './uploads.ts';
import { registerOpsRoutes } from './ops.ts';

const pagePath = new URL('./public/index.html', import.meta.url);
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Per request: the session from the cookie, its user once looked up (never created by a read), the language. */
interface WebState {
  session?: string;
  user?: User;
  /** This request created the user: a failing answer deletes it again, so a failed request leaves no row. */
  created: boolean;
  acceptLocale: Locale;
  /** Chosen with the page's language switch. */
  cookieLocale?: Locale;
}

const stateOf = (request: FastifyRequest) => (request as FastifyRequest & { web: WebState }).web;
const localeOf = (request: FastifyRequest): Locale => {
  const state = stateOf(request);
  // The page's switch first, then the account's language (also set by /lang in a chat), then the browser's.
  if (state?.cookieLocale) return state.cookieLocale;
  const locale = state?.user?.locale;
  return locale && isLocale(locale) ? locale : (state?.acceptLocale ?? acceptLanguage(request.headers['accept-language']));
};

interface Classified { status: number; code: string; details: Params; english?: string }

/** Every error as a status and a message code; library text (fastify, busboy, ioredis, pg) never reaches the person. */
function classify(error: unknown): Classified | undefined {
  if (error instanceof UserFacingError) return { status: error.status, code: error.code, details: error.details, english: error.message };
  const { code, statusCode } = error as FastifyError;
  switch (code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE': return { status: 413, code: 'body_too_large', details: {} };
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE': return { status: 415, code: 'bad_content_type', details: {} };
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_JSON_BODY': return { status: 400, code: 'bad_json', details: {} };
  }
  if (isRedisDown(error)) return { status: 503, code: 'queue_unavailable', details: {} };
  if (isDatabaseUnavailable(error)) return { status: 503, code: 'database_unavailable', details: {} };
  if (isStorageFull(error)) return { status: 507, code: 'storage_full', details: {} };
  if (error instanceof SyntaxError && statusCode === 400) return { status: 400, code: 'bad_json', details: {} };
  if (typeof statusCode === 'number' && statusCode >= 400 && statusCode < 500) return { status: statusCode, code: 'bad_request', details: {} };
  return undefined;
}

function isRedisDown(error: unknown): boolean {
  const e = error as { name?: string; message?: string; code?: string };
  return e.name === 'MaxRetriesPerRequestError' || e.message === 'Connection is closed.' || (e.code === 'ECONNREFUSED' && /redis|6379/i.test(e.message ?? ''));
}

const capitalized = (text: string) => text.charAt(0).toUpperCase() + text.slice(1);

export async function buildWebServer(app: App) {
  const { services, store, config } = app;
  const configuredOrigins: ReadonlySet<string> = new Set(config.web.origins);
  const web = Fastify({ loggerInstance: app.logger.child({ part: 'web' }), bodyLimit: 1024 * 1024 });
  await web.register(multipart, {
    throwFileSizeLimit: false,
    limits: { fileSize: config.photos.maxUploadBytes, files: config.photos.maxPerUser, fields: 20, fieldSize: 10_000, parts: config.photos.maxPerUser + 20 },
  });

  const t = (request: FastifyRequest): Translate => translator(localeOf(request));
  /** A request-level message: the catalogue's text (both languages), else the service's own English text. */
  const message = (request: FastifyRequest, c: Classified): string => {
    const text = errorMessage(t(request), localeOf(request), config, c.code, c.details, 'web');
    if (text) return capitalized(text);
    return localeOf(request) === 'en' && c.english ? c.english : t(request)(c.status >= 500 ? 'error.internal' : 'error.bad_request');
  };
  /** A photo's verdict: our own detailed English, or the catalogue's text in another language. */
  const verdict = (request: FastifyRequest, code: string, details: Params, english: string) =>
    localeOf(request) === 'en' ? english : capitalized(errorMessage(t(request), localeOf(request), config, code, details) ?? english);
  /** A job as the person may see it: the failure reason from its code, never the worker's raw error text. */
  const reasonOf = (request: FastifyRequest, errorCode: string | null | undefined) =>
    errorCode ? t(request)(knownKey(`reason.${errorCode}`) ?? 'reason.internal') : undefined;
  const publicEvent = (request: FastifyRequest, event: JobEvent): JobEvent => ({ ...event, error: reasonOf(request, event.errorCode) });

  // Requests of one session in flight, so a failure never deletes a user another request is using.
  const inFlight = new Map<string, number>();
  web.decorateRequest('web', null);
  const track = (session: string, reply: FastifyReply) => {
    inFlight.set(session, (inFlight.get(session) ?? 0) + 1);
    reply.raw.once('close', () => {
      const left = (inFlight.get(session) ?? 1) - 1;
      if (left > 0) inFlight.set(session, left);
      else inFlight.delete(session);
    });
  };
  web.addHook('onRequest', async (request, reply) => {
    const session = sessionFromCookie(request.headers.cookie);
    (request as FastifyRequest & { web: WebState }).web = {
      session, created: false, acceptLocale: acceptLanguage(request.headers['accept-language']), cookieLocale: localeFromCookie(request.headers.cookie),
    };
    if (session) track(session, reply);
    if (request.url.startsWith('/api/') && isStateChanging(request)) {
      checkStateChange(request, allowedOrigins(request, config.web), configuredOrigins);
    }
  });
  // Reads look the person up; only a state-changing request that needs a user creates one (ensureUser).
  web.addHook('preHandler', async (request) => {
    const state = stateOf(request);
    if (request.url.startsWith('/api/') && state.session) state.user = await services.users.find('web', state.session);
    if (state.user?.bannedAt) throw new UserFacingError('banned', 'This account is blocked by the operators.', {}, 403);
  });
  web.addHook('onSend', async (request, reply) => {
    const state = stateOf(request);
    if (!state?.created || reply.statusCode < 400 || (inFlight.get(state.session!) ?? 0) > 1) return;
    await services.users.dropIfUnused(state.user!.id);
  });

  const ensureUser = async (request: FastifyRequest, reply: FastifyReply): Promise<string> => {
    const state = stateOf(request);
    if (state.user) return state.user.id;
    if (!state.session) {
      state.session = randomBytes(16).toString('hex');
      track(state.session, reply);
      reply.header('set-cookie', sessionCookie(state.session));
    }
    const { user, created } = await services.users.resolveCreated('web', state.session, { locale: state.cookieLocale ?? state.acceptLocale });
    state.user = user;
    state.created = created;
    return user.id;
  };
  const currentUser = (request: FastifyRequest) => stateOf(request).user?.id;
  /** The words typed, the prompt painted from as the person may see it ("you" for the token), and the exact one. */
  const promptOf = async (generation: Generation) => {
    const shown = await services.generation.shown(generation);
    return { prompt: generation.prompt, style: generation.style, promptUsed: shown.used ?? shown.words, enginePrompt: generation.enginePrompt ?? generation.prompt };
  };
  /** Notes on a queued picture in the person's language. */
  const notesOf = (request: FastifyRequest, notes: GenerationNote[]) =>
    notes.map((n) => ({ ...n, message: t(request)(knownKey(`web.note.${n.code}`) ?? 'web.unknown_error', n.details) }));
  /** Routes that queue or cancel work answer at once while Redis is down, instead of waiting out its retries. */
  const requireQueue = () => {
    if (app.queues.connection.status !== 'ready') throw new UserFacingError('queue_unavailable', 'The job queue is unavailable right now; please try again in a minute.', {}, 503);
  };
  const checkId = (id: string, what: string) => {
    if (!UUID.test(id)) throw notFound(what);
    return id;
  };
  const checkIndex = (n: string) => (/^\d{1,4}$/.test(n) ? Number(n) : -1);
  const checkPrompt = (prompt: unknown): string => {
    if (prompt === undefined) return '';
    if (typeof prompt !== 'string') throw new UserFacingError('bad_prompt', 'The prompt must be text.');
    // Tabs and line breaks are fine; a NUL can't be stored and other control characters are no prompt.
    if (CONTROL_CHARS.test(prompt.replace(/[\t\n\r]/g, ''))) throw new UserFacingError('bad_prompt', 'The prompt contains control characters.');
    return prompt;
  };
  const checkOptions = (options: unknown): Record<string, unknown> => {
    if (options === undefined) return {};
    if (typeof options !== 'object' || options === null || Array.isArray(options)) throw new UserFacingError('bad_options', 'The settings must be a JSON object.');
    return options as Record<string, unknown>;
  };
  const parseOptions = (text: string | undefined) => {
    if (text === undefined || text === '') return {};
    try {
      return checkOptions(JSON.parse(text) as unknown);
    } catch (error) {
      if (error instanceof SyntaxError) throw new UserFacingError('bad_options', 'The settings are not valid JSON.');
      throw error;
    }
  };

  const sendImage = async (reply: FastifyReply, key: string | null | undefined) => {
    if (!key) throw notFound('Image');
    const type = key.endsWith('.png') ? 'image/png' : 'image/jpeg';
    return reply.type(type).header('cache-control', 'private, max-age=86400').send(await store.get(key));
  };
  web.setErrorHandler((error, request, reply) => {
    const classified = classify(error);
    if (classified) {
      // A limit says when it frees up: as Retry-After too, for scripts.
      const { minutes, hours } = classified.details;
      if (classified.status === 429 && (minutes || hours)) reply.header('retry-after', String(Number(minutes ?? 0) * 60 + Number(hours ?? 0) * 3600));
      if (classified.status >= 500) request.log.warn({ err: error }, 'request refused: %s', classified.code);
      return reply.status(classified.status).send({ error: { code: classified.code, message: message(request, classified), details: classified.details } });
    }
    request.log.error({ err: error }, 'request failed');
    // Internal details stay in the log, never in the answer.
    return reply.status(500).send({ error: { code: 'internal', message: t(request)('error.internal') } });
  });
  web.setNotFoundHandler((request, reply) =>
    reply.status(404).send({ error: { code: 'not_found', message: t(request)('error.not_found') } }));

  await registerOpsRoutes(web, app);

  web.get('/', async (_request, reply) => reply.type('text/html; charset=utf-8').send(await readFile(pagePath)));

  web.get('/api/info', async () => ({
    engineProfile: config.engine.profile,
    // Which checks run, the missing model names and the command that installs them (the page shows both).
    vision: app.vision.publicAvailability(),
    minPhotos: config.photos.minForTraining,
    maxPhotos: config.photos.maxPerUser,
    notice: config.engine.profile === 'tiny'
      ? 'Tiny engine: a random-weight model that runs on a CPU in seconds. Training and generation are real, but the images are noise.'
      : undefined,
  }));

  /** A model version as the page shows it: status, likeness, samples and both download formats. */
  const adapterView = (translate: Translate, { metrics, sampleKeys, ...a }: Adapter) => ({
    ...a,
    // What the safety check withheld of its samples (never stored), in the person's words; null when nothing.
    samplesNotice: withheldSamplesNotice(translate, metrics, sampleKeys.length) ?? null,
    likeness: (metrics as { likeness?: { mean?: number | null } } | null)?.likeness?.mean ?? null,
    lowLikeness: (metrics as { lowLikeness?: boolean } | null)?.lowLikeness ?? false,
    sampleUrls: sampleKeys.map((_key, n) => `/api/adapters/${a.id}/samples/${n}`),
    downloads: a.fileKey
      ? { diffusers: `/api/adapters/${a.id}/lora`, ...(a.kohyaFileKey ? { kohya: `/api/adapters/${a.id}/lora?format=kohya` } : {}) }
      : undefined,
  });
  /**
   * A job with its place in line and the seconds until it is done (at its pace while it runs, from its place in
   * line while it waits); a training also with its loss curve and the previews painted so far.
   */
  const jobView = async (request: FastifyRequest, job: Job, previews: TrainingPreview[]) => {
    const { position, etaSeconds } = await services.jobs.place(job);
    return {
      ...job, error: reasonOf(request, job.errorCode) ?? null, position, etaSeconds,
      previews: previews.filter((p) => p.jobId === job.id).map((p) => ({ id: p.id, step: p.step, total: p.total, url: `/api/previews/${p.id}` })),
    };
  };

  web.get('/api/status', async (request) => {
    const userId = currentUser(request);
    if (!userId) return { photos: 0, adapters: [], jobs: [] };
    const [photos, adapters, jobs] = await Promise.all([
      services.photos.count(userId),
      services.training.list(userId),
      services.jobs.list(userId, 10),
    ]);
    return {
      photos,
      adapters: adapters.map((a) => adapterView(t(request), a)),
      jobs: jobs.map((job) => ({ ...job, error: reasonOf(request, job.errorCode) ?? null })),
    };
  });

  // The page's words, from the chats' catalogues, in the language this request resolves to.
  web.get('/api/i18n', async (request) => ({
    locale: localeOf(request),
    locales: locales.map((id) => ({ id, name: catalogues[id]['lang.name'] })),
    messages: catalogues[localeOf(request)],
  }));
  web.post<{ Body: { locale?: unknown } | null }>('/api/locale', async (request, reply) => {
    const locale = request.body?.locale;
    if (typeof locale !== 'string' || !isLocale(locale)) throw new UserFacingError('bad_request', 'locale must be one of: ' + locales.join(', '));
    reply.header('set-cookie', localeCookie(locale));
    const userId = currentUser(request);
    if (userId) await services.users.setLocale(userId, locale);
    return { locale };
  });

  // Everything the page shows, so a reload comes back to where the person was.
  web.get('/api/state', async (request) => {
    const userId = currentUser(request);
    if (!userId) return { consentedAt: null, photos: [], coverage: null, adapters: [], jobs: [], gallery: [] };
    const [photos, adapters, jobs, gallery] = await Promise.all([
      services.photos.list(userId),
      services.training.list(userId),
      services.jobs.list(userId, 10),
      services.generation.list(userId),
    ]);
    const previews = await services.jobs.previews(userId, jobs.filter((job) => job.kind === 'train').map((job) => job.id));
    const coverage = services.photos.coverageOf(photos);
    return {
      // The stored confirmation (consent), so a reload shows it given rather than an empty checkbox.
      consentedAt: stateOf(request).user?.consentedAt ?? null,
      photos: photos.map((p) => ({ id: p.id, name: p.originalName, faceChecked: p.faceMeasures !== null, url: `/api/photos/${p.id}/image`, createdAt: p.createdAt })),
      coverage: coverage ?? null,
      adapters: adapters.map((a) => adapterView(t(request), a)),
      jobs: await Promise.all(jobs.map((job) => jobView(request, job, previews))),
      gallery: await Promise.all(gallery.map(async (g) => ({
        id: g.id, jobId: g.jobId, kind: g.kind, seed: g.seed, settings: { ...g.params, negativePrompt: g.negativePrompt }, likeness: g.likeness,
        createdAt: g.createdAt, ...(await promptOf(g)),
        images: g.outputKeys.map((_key, n) => `/api/generations/${g.id}/images/${n}`),
        withheld: g.withheld,
        notice: withheldPicturesNotice(t(request), t(request)(whatKey(g.kind)), g.outputKeys.length, g.withheld) ?? null,
        controlUrl: g.controlKey ? `/api/generations/${g.id}/control` : null,
      }))),
    };
  });

  web.post('/api/photos', async (request, reply) => {
    if (!request.isMultipart()) throw new UserFacingError('bad_content_type', 'Send photos as multipart/form-data.', {}, 415);
    const form = await receiveForm(request, config.web.uploadTmpDir, config.photos.maxPerUser);
    try {
      if (form.files.length === 0) throw new UserFacingError('no_files', 'No photos were attached.');
      const userId = await ensureUser(request, reply);
      const results: Array<PhotoUploadResult & { filename: string }> = [];
      // One file at a time: only the photo being checked is in memory.
      for (const file of form.files) {
        const result: PhotoUploadResult = file.path
          ? await services.photos.add(userId, await form.read(file), file.filename)
          : { ok: false, code: 'too_large_bytes', message: `This file is larger than ${Math.round(config.photos.maxUploadBytes / 1048576)} MiB.`, details: {} };
        results.push({ ...result, filename: file.filename });
      }
      const shown = results.map((r) => (r.ok
        ? { filename: r.filename, ok: true, duplicate: r.duplicate, faceChecked: r.faceChecked, photoId: r.photo.id }
        : { ...r, message: verdict(request, r.code, r.details, r.message) }));
      const firstRefusal = shown.find((r): r is Extract<typeof r, { ok: false }> => !r.ok);
      if (firstRefusal && !results.some((r) => r.ok)) {
        // Nothing was stored: an error answer (and a user created by this request is removed again).
        reply.status(422);
        return { error: { code: firstRefusal.code, message: firstRefusal.message, details: firstRefusal.details }, results: shown };
      }
      const accepted = await services.photos.list(userId);
      return {
        results: shown,
        total: accepted.length,
        needed: config.photos.minForTraining,
        // Angles, framing and light of the set, and what to add; absent without the face models.
        coverage: services.photos.coverageOf(accepted),
      };
    } finally {
      await form.dispose();
    }
  });

  web.get('/api/photos', async (request) => {
    const userId = currentUser(request);
    if (!userId) return { photos: [] };
    const photos = await services.photos.list(userId);
    return { photos, coverage: services.photos.coverageOf(photos) };
  });
  web.delete<{ Params: { id: string } }>('/api/photos/:id', async (request) => {
    const userId = currentUser(request);
    if (!userId) throw notFound('Photo');
    await services.photos.remove(userId, checkId(request.params.id, 'Photo'));
    return { ok: true };
  });
  // The thumbnail: the square crop the model trains on.
  web.get<{ Params: { id: string } }>('/api/photos/:id/image', async (request, reply) => {
    const userId = currentUser(request);
    const photo = userId && UUID.test(request.params.id) ? (await services.photos.list(userId)).find((p) => p.id === request.params.id) : undefined;
    return sendImage(reply, photo?.cropKey);
  });
  web.delete<{ Params: { id: string } }>('/api/generations/:id', async (request) => {
    const userId = currentUser(request);
    if (!userId) throw notFound('Picture');
    await services.generation.remove(userId, checkId(request.params.id, 'Picture'));
    return { ok: true };
  });

  // Within the person's limits, like the chat bots (src/services/limits.ts). A training already open is handed back
  // as it is, uncounted and never refused by a limit: a double-clicked Train is one training.
  const startTraining = async (userId: string) => {
    if (await services.training.isTraining(userId)) return services.training.start(userId);
    try {
      return await services.limits.run(userId, 'train', () => services.training.start(userId));
    } catch (error) {
      if (error instanceof UserFacingError && error.status === 429 && (await services.training.isTraining(userId))) return services.training.start(userId);
      throw error;
    }
  };

  web.post('/api/consent', async (request, reply) => {
    const consentedAt = await services.users.consent(await ensureUser(request, reply));
    return { consentedAt };
  });

  web.post('/api/train', async (request, reply) => {
    requireQueue();
    const started = await startTraining(await ensureUser(request, reply));
    reply.status(started.created ? 202 : 200);
    return { jobId: started.job.id, adapterId: started.adapter.id, version: started.adapter.version, created: started.created, position: started.position };
  });

  // The style presets, named in both languages, with what each sends to the engine.
  web.get('/api/styles', async () => ({
    styles: stylePresets.map((s) => ({
      id: s.id, names: s.names, prompt: s.prompt.replaceAll('{subject}', 'you'), negativePrompt: s.negativePrompt,
      settings: { steps: s.steps, guidanceScale: s.guidanceScale, scheduler: s.scheduler },
    })),
  }));

  web.post<{ Body: { prompt?: unknown; options?: unknown; style?: unknown } | null }>('/api/imagine', async (request, reply) => {
    const body = request.body;
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new UserFacingError('bad_request', 'Send a JSON object.');
    const prompt = checkPrompt(body.prompt);
    const options = checkOptions(body.options);
    const style = body.style;
    if (style != null && typeof style !== 'string') throw new UserFacingError('bad_options', 'Some settings are not valid: style: expected a style name (see /api/styles)');
    requireQueue();
    const userId = await ensureUser(request, reply);
    const queued = await services.limits.run(userId, 'imagine', () => services.generation.imagine(userId, prompt, options, style || undefined));
    reply.status(202);
    return { jobId: queued.job.id, generationId: queued.generation.id, position: queued.position, seed: queued.generation.seed, ...(await promptOf(queued.generation)), notes: notesOf(request, queued.notes) };
  });

  web.post('/api/pose', async (request, reply) => {
    if (!request.isMultipart()) throw new UserFacingError('bad_content_type', 'Send the pose image as multipart/form-data.', {}, 415);
    const form = await receiveForm(request, config.web.uploadTmpDir, 1);
    try {
      const image = form.files[0];
      if (!image) throw new UserFacingError('no_pose_image', 'Attach a pose reference image.');
      if (!image.path) throw new UserFacingError('too_large_bytes', 'The pose image is too large.');
      const prompt = checkPrompt(form.fields.prompt);
      const options = parseOptions(form.fields.options);
      requireQueue();
      const userId = await ensureUser(request, reply);
      const reference = await form.read(image);
      const queued = await services.limits.run(userId, 'pose', () => services.generation.pose(userId, reference, prompt, options));
      reply.status(202);
      return {
        jobId: queued.job.id,
        generationId: queued.generation.id,
        position: queued.position,
        seed: queued.generation.seed,
        ...(await promptOf(queued.generation)),
        notes: notesOf(request, queued.notes),
        // The pose the person will be painted in, shown before the painting is done.
        controlUrl: `/api/generations/${queued.generation.id}/control`,
        extractedSkeleton: queued.skeleton,
      };
    } finally {
      await form.dispose();
    }
  });

  web.get<{ Params: { id: string } }>('/api/jobs/:id', async (request) => {
    const userId = currentUser(request);
    if (!userId) throw notFound('Job');
    const view = await services.jobs.view(userId, checkId(request.params.id, 'Job'));
    const { generation } = view;
    return {
      job: { ...view.job, error: reasonOf(request, view.job.errorCode) ?? null },
      position: view.position,
      generationId: view.generation?.id,
      ...(generation ? await promptOf(generation) : {}),
      images: view.outputKeys.map((_key, n) => `/api/generations/${view.generation?.id}/images/${n}`),
      // Pictures the safety check withheld (never stored), and what to tell the person about them.
      withheld: generation?.withheld ?? 0,
      notice: withheldPicturesNotice(t(request), t(request)(whatKey(view.job.kind)), view.outputKeys.length, generation?.withheld ?? 0) ?? null,
    };
  });

  web.post<{ Body: { jobId?: unknown } | null }>('/api/cancel', async (request) => {
    const jobId = request.body?.jobId;
    if (jobId !== undefined && typeof jobId !== 'string') throw new UserFacingError('bad_request', 'jobId must be a string.');
    const userId = currentUser(request);
    if (!userId) throw new UserFacingError('nothing_to_cancel', 'There is nothing running to cancel.');
    requireQueue();
    const job = await services.jobs.cancel(userId, jobId);
    return { jobId: job.id, status: job.status };
  });

  web.post('/api/forget', async (request, reply) => {
    const userId = currentUser(request);
    reply.header('set-cookie', sessionCookie(null));
    if (!userId) return { forgotten: { photos: 0, adapters: 0, generations: 0, files: 0 } };
    const forgotten = await services.forget.forget(userId);
    return { forgotten };
  });

  const generationOf = async (request: FastifyRequest<{ Params: { id: string } }>) => {
    const userId = currentUser(request);
    return userId && UUID.test(request.params.id) ? services.generation.get(userId, request.params.id) : undefined;
  };
  const adapterOf = async (request: FastifyRequest<{ Params: { id: string } }>) => {
    const userId = currentUser(request);
    return userId ? (await services.training.list(userId)).find((a) => a.id === request.params.id) : undefined;
  };
  web.get<{ Params: { id: string; n: string } }>('/api/generations/:id/images/:n', async (request, reply) =>
    sendImage(reply, (await generationOf(request))?.outputKeys[checkIndex(request.params.n)]));
  web.get<{ Params: { id: string; n: string } }>('/api/adapters/:id/samples/:n', async (request, reply) =>
    sendImage(reply, (await adapterOf(request))?.sampleKeys[checkIndex(request.params.n)]));
  // A training's intermediate preview (only its owner's session can see it).
  web.get<{ Params: { id: string } }>('/api/previews/:id', async (request, reply) => {
    const userId = currentUser(request);
    if (!userId) throw notFound('Preview');
    return sendImage(reply, (await services.jobs.preview(userId, checkId(request.params.id, 'Preview'))).key);
  });
  // The person's own LoRA, to use elsewhere: diffusers/peft format, or kohya's for A1111 and ComfyUI.
  web.get<{ Params: { id: string }; Querystring: { format?: string } }>('/api/adapters/:id/lora', async (request, reply) => {
    const adapter = await adapterOf(request);
    const kohya = request.query.format === 'kohya';
    const key = kohya ? adapter?.kohyaFileKey : adapter?.fileKey;
    if (!adapter || !key) throw notFound('Model file');
    const name = `portrait-lora-v${adapter.version}${kohya ? '-kohya' : ''}.safetensors`;
    return reply.type('application/octet-stream').header('content-disposition', `attachment; filename="${name}"`).send(await store.get(key));
  });
  web.get<{ Params: { id: string } }>('/api/generations/:id/control', async (request, reply) =>
    sendImage(reply, (await generationOf(request))?.controlKey));

  // Live progress for this browser's user (server-sent events). Open streams are ended on close(), so a shutdown
  // does not wait for every playground tab to go away.
  const streams = new Set<ServerResponse>();
  web.addHook('preClose', async () => {
    for (const stream of streams) stream.end();
  });
  web.get('/api/events', async (request, reply) => {
    const userId = currentUser(request);
    reply.hijack();
    reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
    if (!userId) {
      // Nobody to follow yet (reads create no one): the browser reconnects, and finds the user after a first upload.
      reply.raw.end('retry: 3000\n: no user yet\n\n');
      return;
    }
    reply.raw.write(': connected\n\n');
    streams.add(reply.raw);
    const keepAlive = setInterval(() => reply.raw.write(': ping\n\n'), 15_000);
    let unsubscribe: (() => unknown) | undefined;
    reply.raw.on('close', () => {
      streams.delete(reply.raw);
      clearInterval(keepAlive);
      unsubscribe?.();
    });
    try {
      const stop = await app.events.subscribe(userId, (event) => reply.raw.write(`data: ${JSON.stringify(publicEvent(request, event))}\n\n`));
      if (reply.raw.writableEnded || reply.raw.destroyed) stop();
      else unsubscribe = stop;
    } catch (error) {
      // Redis is down: end the stream; the browser retries on its own.
      request.log.warn({ err: error }, 'event stream unavailable');
      reply.raw.end();
    }
  });

  return web;
}
