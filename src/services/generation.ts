import { randomInt, randomUUID } from 'node:crypto';
import { and, desc, eq, inArray } from 'drizzle-orm';
import { z } from 'zod';
import type { Db } from '../db/client.ts';
import { adapters, generations, jobs, type Generation, type GenerationParams, type Job } from '../db/schema.ts';
import type { Config } from '../config/index.ts';
import { queueJobId, type JobQueues } from '../queue/index.ts';
import type { EventBus } from '../events/bus.ts';
import type { BlobStore } from '../storage/storage.ts';
import { normalizeUpload, ImageRejectedError } from '../images/normalize.ts';
import { schedulers } from '../engine/protocol.ts';
import type { TrainingService } from './training.ts';
import { enqueueOrFail } from './training.ts';
import { jobEvent, type JobService } from './jobs.ts';
import { UserFacingError, notFound } from './errors.ts';
import { FINAL_STATUSES, type JobState } from './job-state.ts';
import type { VisionService } from '../vision/index.ts';
import { abandonLeased, deleteUnreferencedBlobs, putLeased, releaseLeases } from './blobs.ts';
import { findStyle, stylePresets } from './styles.ts';
import { checkPrompt, withPolicyNegative } from './prompt-policy.ts';
import { firstPerson, languageVerdict, nameSubject, scriptOf, showPrompt, subjectOf, type Subject } from './prompts.ts';

const dimension = z.number().int().min(256).max(1024).multipleOf(8);
export const generationOptions = z
  .object({
    negativePrompt: z.string().max(500),
    seed: z.number().int().min(0).max(2 ** 31 - 1),
    steps: z.number().int().min(1).max(50),
    guidanceScale: z.number().min(0).max(20),
    width: dimension,
    height: dimension,
    scheduler: z.enum(schedulers),
    loraScale: z.number().min(0).max(2),
    controlnetScale: z.number().min(0).max(2),
  })
  .partial()
  .strict();
export type GenerationOptions = z.infer<typeof generationOptions>;

/** Something the person should know about a queued request (e.g. words the model will ignore). */
export interface GenerationNote { code: 'words_ignored'; message: string; details: Record<string, string | number> }

export interface GenerationQueued { job: Job; generation: Generation; position: number; etaSeconds: number | null; notes: GenerationNote[] }

export class GenerationService {
  constructor(
    private readonly db: Db,
    private readonly queues: JobQueues,
    private readonly events: EventBus,
    private readonly store: BlobStore,
    private readonly training: TrainingService,
    private readonly jobs: JobService,
    private readonly vision: VisionService,
    private readonly config: Config,
    private readonly state: JobState,
  ) {}

  /** `/imagine <prompt>`: a portrait of the user from their newest LoRA, optionally in a style preset. */
  imagine(userId: string, prompt: string, options: unknown = {}, style?: string): Promise<GenerationQueued> {
    return this.queue(userId, 'imagine', prompt, options, undefined, style);
  }

  /**
   * `/pose`: the user in the pose of a reference photo. The pose is extracted (DWPose) and drawn as an OpenPose
   * skeleton, which conditions ControlNet and is shown to the person as a preview. Without the pose models
   * installed, the reference is taken to be a skeleton image already.
   */
  async pose(userId: string, reference: Buffer, prompt: string, options: unknown = {}, style?: string): Promise<GenerationQueued & { skeleton: boolean }> {
    // Refused before any work on the picture.
    this.checkPolicy(prompt, options);
    let normalized;
    try {
      // A skeleton drawing can be small; the pipeline resizes it to the output size.
      normalized = await normalizeUpload(reference, { maxBytes: this.config.photos.maxUploadBytes, minShortSide: 64 });
    } catch (error) {
      if (error instanceof ImageRejectedError) throw new UserFacingError(error.code, error.message, error.details);
      throw error;
    }
    const pose = await this.vision.pose(normalized.data, {}, normalized.pixels); // the upload's pixels: no second decode
    if (!pose.ok && pose.code !== 'pose_unavailable') throw new UserFacingError(pose.code, pose.message, pose.details);
    // Leased until the generation row refers to it: an identical reference that another request is deleting right
    // now (content-addressed, so the same key) cannot vanish under this one.
    const stored = pose.ok ? await putLeased(this.db, this.store, pose.skeleton, 'png') : await putLeased(this.db, this.store, normalized.data, 'jpg');
    try {
      const queued = await this.queue(userId, 'pose', prompt, options, stored.key, style);
      await releaseLeases(this.db, [stored.leaseId]);
      return { ...queued, skeleton: pose.ok };
    } catch (error) {
      await abandonLeased(this.db, this.store, [stored]);
      throw error;
    }
  }

  async get(userId: string, generationId: string): Promise<Generation | undefined> {
    const [row] = await this.db.select().from(generations).where(and(eq(generations.id, generationId), eq(generations.userId, userId)));
    return row;
  }

  /** The person's finished pictures, newest first: the gallery. */
  list(userId: string, limit = 50): Promise<Generation[]> {
    return this.db
      .select({ generation: generations })
      .from(generations)
      .innerJoin(jobs, eq(jobs.id, generations.jobId))
      .where(and(eq(generations.userId, userId), eq(jobs.status, 'completed')))
      .orderBy(desc(generations.createdAt))
      .limit(limit)
      .then((rows) => rows.map((r) => r.generation));
  }

  /**
   * Deletes one picture and the files no other row needs. Only once its job has ended: a job still painting would
   * store its outputs for a row that is gone (its job row stays, the one writer of job rows is JobState).
   */
  async remove(userId: string, generationId: string): Promise<void> {
    const ended = this.db.select({ id: jobs.id }).from(jobs).where(inArray(jobs.status, [...FINAL_STATUSES]));
    const [deleted] = await this.db
      .delete(generations)
      .where(and(eq(generations.id, generationId), eq(generations.userId, userId), inArray(generations.jobId, ended)))
      .returning({ outputs: generations.outputKeys, control: generations.controlKey });
    if (!deleted) {
      if (await this.get(userId, generationId)) throw new UserFacingError('generation_open', 'This picture is still being painted: cancel it first, or wait.', {}, 409);
      throw notFound('Picture');
    }
    await deleteUnreferencedBlobs(this.db, this.store, [...deleted.outputs, ...(deleted.control ? [deleted.control] : [])]);
  }

  /**
   * What the person is shown with the picture: their own words, and the prompt that was painted with the training
   * token read as "you" (`used` is null when that is just their words).
   */
  async shown(generation: Generation): Promise<{ words: string; used: string | null }> {
    const [adapter] = generation.adapterId
      ? await this.db.select({ params: adapters.params }).from(adapters).where(eq(adapters.id, generation.adapterId))
      : [];
    const used = showPrompt(generation.enginePrompt ?? generation.prompt, this.subjectOf(adapter));
    return { words: generation.prompt, used: used === generation.prompt ? null : used };
  }

  /** Refuses a prompt (or negative prompt) that asks for what the policy rules out, naming the rule. */
  private checkPolicy(prompt: string, options: unknown) {
    const negative = (options as { negativePrompt?: unknown } | null)?.negativePrompt;
    const fields: Array<[string, unknown]> = [['prompt', prompt], ['negativePrompt', negative]];
    for (const [field, text] of fields) {
      if (typeof text !== 'string') continue;
      const hit = checkPrompt(text, this.config.policy.rules);
      if (hit) {
        throw new UserFacingError('prompt_refused', `I don’t paint ${hit.rule.names.en} (“${hit.term}” in the ${field === 'prompt' ? 'prompt' : 'negative prompt'}). Please change it.`, { rule: hit.rule.id, term: hit.term, field });
      }
    }
  }

  /** The subject an adapter was trained on (its own instance prompt; the configured one for rows without it). */
  subjectOf(adapter: { params: Record<string, unknown> } | undefined): Subject {
    const trained = adapter?.params.instance_prompt;
    return subjectOf(typeof trained === 'string' && trained.trim() ? trained : this.config.training.instancePrompt);
  }

  private async queue(userId: string, kind: 'imagine' | 'pose', rawPrompt: string, rawOptions: unknown, controlKey?: string, styleName?: string) {
    const prompt = rawPrompt.trim();
    const maxChars = this.config.generation.maxPromptChars;
    const preset = styleName === undefined ? undefined : findStyle(styleName);
    if (styleName !== undefined && !preset) {
      const styles = stylePresets.map((p) => p.id).join(', ');
      throw new UserFacingError('unknown_style', `There is no style “${styleName}”. The styles are: ${styles}.`, { style: styleName, styles });
    }
    // A /pose needs no words (the pose says what to paint), nor does a style.
    if (!prompt && kind === 'imagine' && !preset) throw new UserFacingError('empty_prompt', 'Tell me what to paint, e.g. /imagine a portrait of me as an astronaut.');
    if (prompt.length > maxChars) {
      throw new UserFacingError('prompt_too_long', `That prompt is ${prompt.length} characters; the limit is ${maxChars}.`, { length: prompt.length, max: maxChars });
    }
    const parsed = generationOptions.safeParse(rawOptions);
    if (!parsed.success) {
      const problems = parsed.error.issues.map((i) => `${i.path.join('.') || 'options'}: ${i.message}`).join('; ');
      throw new UserFacingError('bad_options', `Some settings are not valid: ${problems}`);
    }
    this.checkPolicy(prompt, parsed.data);
    const adapter = await this.training.latestReady(userId);
    if (!adapter) {
      if (await this.training.isTraining(userId)) throw new UserFacingError('training_in_progress', 'Your model is still training — I will tell you when it is ready.');
      throw new UserFacingError('no_model', 'You have no trained model yet: send 10–20 photos of yourself with /train first.');
    }
    // The LoRA paints the person only when the prompt names what it was trained on.
    const subject = this.subjectOf(adapter);
    // A style is its English prompt with the subject in it; the person's words, if any, follow.
    const enginePrompt = preset
      ? [preset.prompt.replaceAll('{subject}', subject.phrase), firstPerson(prompt, subject)].filter(Boolean).join(', ')
      : nameSubject(prompt, subject).prompt;
    const notes: GenerationNote[] = [];
    const script = scriptOf(enginePrompt, subject);
    const words = script.words.slice(0, 8).join(', ');
    const verdict = languageVerdict(script);
    if (verdict === 'refuse') {
      throw new UserFacingError('prompt_not_english', `The image model understands English only, so it would ignore “${words}”. Please write the prompt in English, or pick a style (/styles).`, { words });
    }
    if (verdict === 'warn') notes.push({ code: 'words_ignored', message: `The image model understands English only and will ignore: ${words}.`, details: { words } });
    const g = this.config.generation;
    const o = parsed.data;
    const params: GenerationParams = {
      // Settings asked for explicitly win over the style's, which win over the configured defaults.
      steps: o.steps ?? preset?.steps ?? g.steps,
      guidanceScale: o.guidanceScale ?? preset?.guidanceScale ?? g.guidanceScale,
      width: o.width ?? g.width,
      height: o.height ?? g.height,
      scheduler: o.scheduler ?? preset?.scheduler ?? g.scheduler,
      loraScale: o.loraScale ?? g.loraScale,
      ...(kind === 'pose' ? { controlnetScale: o.controlnetScale ?? g.controlnetScale } : {}),
    };
    const jobId = randomUUID();
    const created = await this.db.transaction(async (tx) => {
      const job = await this.state.create(tx, { id: jobId, userId, kind, queueJobId: queueJobId(jobId, 'generate'), adapterId: adapter.id, totalSteps: params.steps });
      const [generation] = await tx
        .insert(generations)
        .values({
          userId,
          jobId,
          adapterId: adapter.id,
          kind,
          prompt,
          enginePrompt,
          style: preset?.id ?? null,
          // The policy's negative prompt always goes last, whatever the person or the style asked for.
          negativePrompt: withPolicyNegative(o.negativePrompt ?? preset?.negativePrompt ?? g.negativePrompt, this.config.policy.negativePrompt),
          seed: o.seed ?? randomInt(0, 2 ** 31 - 1),
          params,
          controlKey,
        })
        .returning();
      return { job, generation: generation! };
    });
    await enqueueOrFail(this.state, created.job, () => this.queues.addGenerate({ jobId, generationId: created.generation.id }));
    const { position, etaSeconds } = await this.jobs.place(created.job);
    await this.events.publish(userId, jobEvent(created.job, { position, etaSeconds, generationId: created.generation.id }));
    return { ...created, position, etaSeconds, notes };
  }
}
