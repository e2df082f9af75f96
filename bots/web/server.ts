// The local web playground: a thin HTTP adapter over the platform-neutral services.
import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify';
import multipart from '@fastify/multipart';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { App } from '../../src/app.ts';
import type { Generation } from '../../src/db/schema.ts';
import { stylePresets } from '../../src/services/styles.ts';
import { UserFacingError, notFound } from '../../src/services/errors.ts';
import type { PhotoUploadResult } from '../../src/services/photos.ts';

const SESSION_COOKIE = 'pb_session';
const pagePath = new URL('./public/index.html', import.meta.url);

function sessionOf(request: FastifyRequest, reply: FastifyReply): string {
  const cookies = Object.fromEntries(
    (request.headers.cookie ?? '').split(';').map((c) => c.trim().split('=').map(decodeURIComponent) as [string, string]),
  );
  const existing = cookies[SESSION_COOKIE];
  if (existing && /^[a-f0-9]{32}$/.test(existing)) return existing;
  const created = randomBytes(16).toString('hex');
  reply.header('set-cookie', `${SESSION_COOKIE}=${created}; Path=/; HttpOnly; SameSite=Strict; Max-Age=31536000`);
  return created;
}

interface UploadedFile { filename: string; data: Buffer | null }
interface MultipartBody { files: UploadedFile[]; fields: Record<string, string> }

/** Reads every part; a file over the byte limit comes back with data null instead of failing the whole form. */
async function readMultipart(request: FastifyRequest): Promise<MultipartBody> {
  const body: MultipartBody = { files: [], fields: {} };
  for await (const part of request.parts()) {
    if (part.type === 'file') {
      const data = await part.toBuffer();
      body.files.push({ filename: part.filename, data: part.file.truncated ? null : data });
    } else {
      body.fields[part.fieldname] = String(part.value);
    }
  }
  return body;
}

export async function buildWebServer(app: App) {
  const { services, store, config } = app;
  const web = Fastify({ loggerInstance: app.logger.child({ part: 'web' }), bodyLimit: 1024 * 1024 });
  await web.register(multipart, {
    throwFileSizeLimit: false,
    limits: { fileSize: config.photos.maxUploadBytes, files: config.photos.maxPerUser, fields: 20, fieldSize: 10_000 },
  });

  web.decorateRequest('userId', '');
  web.addHook('preHandler', async (request, reply) => {
    if (!request.url.startsWith('/api/')) return;
    const user = await services.users.resolve('web', sessionOf(request, reply));
    (request as FastifyRequest & { userId: string }).userId = user.id;
  });
  const userOf = (request: FastifyRequest) => (request as FastifyRequest & { userId: string }).userId;
  /** The words typed, the prompt painted from as the person may see it ("you" for the token), and the exact one. */
  const promptOf = async (generation: Generation) => {
    const shown = await services.generation.shown(generation);
    return { prompt: generation.prompt, style: generation.style, promptUsed: shown.used ?? shown.words, enginePrompt: generation.enginePrompt ?? generation.prompt };
  };

  web.setErrorHandler((error, request, reply) => {
    if (error instanceof UserFacingError) {
      // A limit says when it frees up: as Retry-After too, for scripts.
      const { minutes, hours } = error.details;
      if (error.status === 429 && (minutes || hours)) reply.header('retry-after', String(Number(minutes ?? 0) * 60 + Number(hours ?? 0) * 3600));
      return reply.status(error.status).send({ error: { code: error.code, message: error.message, details: error.details } });
    }
    const status = (error as { statusCode?: number }).statusCode ?? 500;
    if (status < 500) return reply.status(status).send({ error: { code: 'bad_request', message: (error as Error).message } });
    request.log.error({ err: error }, 'request failed');
    // Internal details stay in the log, never in the answer.
    return reply.status(500).send({ error: { code: 'internal', message: 'Something went wrong on our side. Please try again.' } });
  });

  web.get('/', async (_request, reply) => reply.type('text/html; charset=utf-8').send(await readFile(pagePath)));

  web.get('/api/info', async () => ({
    engineProfile: config.engine.profile,
    vision: (({ faceChecks, pose, likeness }) => ({ faceChecks, pose, likeness }))(app.vision.availability()),
    minPhotos: config.photos.minForTraining,
    maxPhotos: config.photos.maxPerUser,
    notice: config.engine.profile === 'tiny'
      ? 'Tiny engine: a random-weight model that runs on a CPU in seconds. Training and generation are real, but the images are noise.'
      : undefined,
  }));

  web.get('/api/status', async (request) => {
    const userId = userOf(request);
    const [photos, adapters, jobs] = await Promise.all([
      services.photos.count(userId),
      services.training.list(userId),
      services.jobs.list(userId, 10),
    ]);
    return {
      photos,
      adapters: adapters.map(({ metrics, sampleKeys, ...a }) => ({
        ...a,
        likeness: (metrics as { likeness?: { mean?: number | null } } | null)?.likeness?.mean ?? null,
        lowLikeness: (metrics as { lowLikeness?: boolean } | null)?.lowLikeness ?? false,
        sampleUrls: sampleKeys.map((_key, n) => `/api/adapters/${a.id}/samples/${n}`),
        downloads: a.fileKey
          ? { diffusers: `/api/adapters/${a.id}/lora`, ...(a.kohyaFileKey ? { kohya: `/api/adapters/${a.id}/lora?format=kohya` } : {}) }
          : undefined,
      })),
      jobs,
    };
  });

  web.post('/api/photos', async (request) => {
    const userId = userOf(request);
    if (!request.isMultipart()) throw new UserFacingError('no_files', 'Send photos as multipart/form-data.');
    const { files } = await readMultipart(request);
    if (files.length === 0) throw new UserFacingError('no_files', 'No photos were attached.');
    const results: Array<PhotoUploadResult & { filename: string }> = [];
    for (const file of files) {
      const result: PhotoUploadResult = file.data
        ? await services.photos.add(userId, file.data, file.filename)
        : { ok: false, code: 'too_large_bytes', message: `This file is larger than ${Math.round(config.photos.maxUploadBytes / 1048576)} MiB.`, details: {} };
      results.push({ ...result, filename: file.filename });
    }
    return {
      results: results.map((r) => (r.ok ? { filename: r.filename, ok: true, duplicate: r.duplicate, faceChecked: r.faceChecked, photoId: r.photo.id } : r)),
      total: await services.photos.count(userId),
      needed: config.photos.minForTraining,
      // Angles, framing and light of the set, and what to add; absent without the face models.
      coverage: await services.photos.coverage(userId),
    };
  });

  web.get('/api/photos', async (request) => {
    const userId = userOf(request);
    const [photos, coverage] = await Promise.all([services.photos.list(userId), services.photos.coverage(userId)]);
    return { photos, coverage };
  });
  web.delete<{ Params: { id: string } }>('/api/photos/:id', async (request) => {
    await services.photos.remove(userOf(request), request.params.id);
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

  web.post('/api/train', async (request, reply) => {
    const started = await startTraining(userOf(request));
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

  web.post<{ Body: { prompt?: string; options?: unknown; style?: string } }>('/api/imagine', async (request, reply) => {
    const userId = userOf(request);
    const { prompt, options, style } = request.body ?? {};
    if (style != null && typeof style !== 'string') throw new UserFacingError('bad_options', 'Some settings are not valid: style: expected a style name (see /api/styles)');
    const queued = await services.limits.run(userId, 'imagine', () => services.generation.imagine(userId, prompt ?? '', options ?? {}, style || undefined));
    reply.status(202);
    return { jobId: queued.job.id, generationId: queued.generation.id, position: queued.position, seed: queued.generation.seed, ...(await promptOf(queued.generation)), notes: queued.notes };
  });

  web.post('/api/pose', async (request, reply) => {
    if (!request.isMultipart()) throw new UserFacingError('no_files', 'Send the pose image as multipart/form-data.');
    const { files, fields } = await readMultipart(request);
    const image = files[0];
    if (!image) throw new UserFacingError('no_pose_image', 'Attach a pose reference image.');
    if (!image.data) throw new UserFacingError('too_large_bytes', 'The pose image is too large.');
    const options = fields.options ? (JSON.parse(fields.options) as unknown) : {};
    const userId = userOf(request);
    const queued = await services.limits.run(userId, 'pose', () => services.generation.pose(userId, image.data!, fields.prompt ?? '', options));
    reply.status(202);
    return {
      jobId: queued.job.id,
      generationId: queued.generation.id,
      position: queued.position,
      seed: queued.generation.seed,
      ...(await promptOf(queued.generation)),
      notes: queued.notes,
      // The pose the person will be painted in, shown before the painting is done.
      controlUrl: `/api/generations/${queued.generation.id}/control`,
      extractedSkeleton: queued.skeleton,
    };
  });

  web.get<{ Params: { id: string } }>('/api/jobs/:id', async (request) => {
    const view = await services.jobs.view(userOf(request), request.params.id);
    const generation = view.generationId ? await services.generation.get(userOf(request), view.generationId) : undefined;
    return {
      job: view.job,
      position: view.position,
      generationId: view.generationId,
      ...(generation ? await promptOf(generation) : {}),
      images: view.outputKeys.map((_key, n) => `/api/generations/${view.generationId}/images/${n}`),
    };
  });

  web.post<{ Body: { jobId?: string } }>('/api/cancel', async (request) => {
    const job = await services.jobs.cancel(userOf(request), request.body?.jobId);
    return { jobId: job.id, status: job.status };
  });

  web.post('/api/forget', async (request, reply) => {
    const forgotten = await services.forget.forget(userOf(request));
    reply.header('set-cookie', `${SESSION_COOKIE}=; Path=/; Max-Age=0`);
    return { forgotten };
  });

  const sendImage = async (reply: FastifyReply, key: string | null | undefined) => {
    if (!key) throw notFound('Image');
    const type = key.endsWith('.png') ? 'image/png' : 'image/jpeg';
    return reply.type(type).header('cache-control', 'private, max-age=86400').send(await store.get(key));
  };
  web.get<{ Params: { id: string; n: string } }>('/api/generations/:id/images/:n', async (request, reply) => {
    const generation = await services.generation.get(userOf(request), request.params.id);
    return sendImage(reply, generation?.outputKeys[Number(request.params.n)]);
  });
  web.get<{ Params: { id: string; n: string } }>('/api/adapters/:id/samples/:n', async (request, reply) => {
    const adapter = (await services.training.list(userOf(request))).find((a) => a.id === request.params.id);
    return sendImage(reply, adapter?.sampleKeys[Number(request.params.n)]);
  });
  // The person's own LoRA, to use elsewhere: diffusers/peft format, or kohya's for A1111 and ComfyUI.
  web.get<{ Params: { id: string }; Querystring: { format?: string } }>('/api/adapters/:id/lora', async (request, reply) => {
    const adapter = (await services.training.list(userOf(request))).find((a) => a.id === request.params.id);
    const kohya = request.query.format === 'kohya';
    const key = kohya ? adapter?.kohyaFileKey : adapter?.fileKey;
    if (!adapter || !key) throw notFound('Model file');
    const name = `portrait-lora-v${adapter.version}${kohya ? '-kohya' : ''}.safetensors`;
    return reply.type('application/octet-stream').header('content-disposition', `attachment; filename="${name}"`).send(await store.get(key));
  });
  web.get<{ Params: { id: string } }>('/api/generations/:id/control', async (request, reply) => {
    const generation = await services.generation.get(userOf(request), request.params.id);
    return sendImage(reply, generation?.controlKey);
  });

  // Live progress for this browser's user (server-sent events).
  web.get('/api/events', async (request, reply) => {
    const userId = userOf(request);
    reply.hijack();
    reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
    reply.raw.write(': connected\n\n');
    const unsubscribe = await app.events.subscribe(userId, (event) => reply.raw.write(`data: ${JSON.stringify(event)}\n\n`));
    const keepAlive = setInterval(() => reply.raw.write(': ping\n\n'), 15_000);
    request.raw.on('close', () => {
      clearInterval(keepAlive);
      unsubscribe();
    });
  });

  return web;
}
