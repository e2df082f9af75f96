// The engine's JSON-lines protocol, TypeScript side: the one definition the services (src/) and the worker share. Python's twin: worker/engine/portrait_engine/protocol.py;
// both are tested against the same fixtures in test/fixtures/engine-protocol/. Objects are strict (unknown fields
// are errors) and bounds match the Python models, so a request the worker builds is one the engine accepts.
import { z } from 'zod';

const MAX_SEED = 2 ** 32 - 1;
const requestId = z.string().min(1).max(200);
const absPath = z.string().startsWith('/', 'must be an absolute path');
const loraPath = absPath.endsWith('.safetensors', 'must end with .safetensors');
const seed = z.number().int().min(0).max(MAX_SEED);
const imageSide = z.number().int().min(64).max(1024).multipleOf(8);

export const schedulers = ['unipc', 'dpmpp_2m_karras', 'euler_a', 'ddim'] as const;
export const lrSchedulers = ['constant', 'constant_with_warmup', 'linear', 'cosine', 'cosine_with_restarts', 'polynomial'] as const;
export const targetModules = ['to_q', 'to_k', 'to_v', 'to_out.0', 'proj_in', 'proj_out', 'ff.net.0.proj', 'ff.net.2'] as const;

export const trainModes = ['lora', 'full'] as const;

// Every field, as a result reports them; requests may leave any out.
export const trainParamsShape = z.strictObject({
  mode: z.enum(trainModes),
  rank: z.number().int().min(1).max(128),
  alpha: z.number().gt(0).max(1024),
  learning_rate: z.number().gt(0).max(1).nullable(),
  max_steps: z.number().int().min(1).max(20_000),
  epochs: z.number().int().min(1).max(10_000).nullable(),
  batch_size: z.number().int().min(1).max(32),
  grad_accum: z.number().int().min(1).max(64),
  resolution: imageSide,
  mixed_precision: z.enum(['no', 'fp16', 'bf16']).nullable(),
  seed,
  instance_prompt: z.string().min(1).max(1000),
  lr_scheduler: z.enum(lrSchedulers),
  lr_warmup_steps: z.number().int().min(0).max(20_000),
  target_modules: z.array(z.enum(targetModules)).min(1),
  use_8bit_adam: z.boolean(),
  checkpoint_steps: z.number().int().min(1).max(20_000).nullable(),
  train_text_encoder: z.boolean(),
  class_prompt: z.string().min(1).max(1000),
  prior_loss_weight: z.number().min(0).max(100),
  snr_gamma: z.number().gt(0).max(100).nullable(),
  noise_offset: z.number().min(0).max(1),
});
export const trainParams = trainParamsShape.partial().refine((p) => !(p.mode === 'full' && p.train_text_encoder), {
  message: 'train_text_encoder is for lora mode; full mode trains the UNet only',
});
export type TrainParams = z.infer<typeof trainParams>;

export const pingRequest = z.strictObject({ id: requestId, op: z.literal('ping') });
export const cancelRequest = z.strictObject({ id: requestId, op: z.literal('cancel'), target: requestId });
export const trainRequest = z.strictObject({
  id: requestId,
  op: z.literal('train'),
  photos: z.array(absPath).min(1).max(200),
  output: loraPath,
  class_photos: z.array(absPath).min(1).max(1000).nullable().optional(),
  checkpoint_dir: absPath.nullable().optional(),
  params: trainParams.optional(),
  // Intermediate previews (0: none), each painted in preview_steps denoising steps, into preview_dir (default:
  // beside output).
  previews: z.number().int().min(0).max(10).optional(),
  preview_steps: z.number().int().min(1).max(50).optional(),
  preview_dir: absPath.nullable().optional(),
}).refine((r) => !(r.params?.epochs != null && r.params.max_steps !== undefined), {
  message: 'params: give max_steps or epochs, not both',
});
export const generateRequest = z.strictObject({
  id: requestId,
  op: z.literal('generate'),
  prompt: z.string().max(2000),
  negative_prompt: z.string().max(2000).optional(),
  lora: loraPath.nullable().optional(),
  lora_scale: z.number().min(0).max(2).optional(),
  control_image: absPath.nullable().optional(),
  controlnet_scale: z.number().min(0).max(2).optional(),
  steps: z.number().int().min(1).max(100).optional(),
  guidance_scale: z.number().min(0).max(30).optional(),
  seed: seed.nullable().optional(),
  width: imageSide.optional(),
  height: imageSide.optional(),
  num_images: z.number().int().min(1).max(4).optional(),
  scheduler: z.enum(schedulers).optional(),
  output_dir: absPath,
});
export const engineRequest = z.discriminatedUnion('op', [pingRequest, cancelRequest, trainRequest, generateRequest]);
export type EngineRequest = z.infer<typeof engineRequest>;
export type TrainRequest = z.infer<typeof trainRequest>;
export type GenerateRequest = z.infer<typeof generateRequest>;

export const errorCodes = ['bad_request', 'not_found', 'cancelled', 'busy', 'internal'] as const;
export type EngineErrorCode = (typeof errorCodes)[number];

export const readyEvent = z.strictObject({
  id: z.null(),
  event: z.literal('ready'),
  profile: z.string(),
  device: z.string(),
  // The fast path's warm-up report (seconds, peak GPU memory, captured batch sizes); absent when it is off.
  info: z.record(z.string(), z.unknown()).optional(),
});
export const progressEvent = z.strictObject({
  id: z.string(),
  event: z.literal('progress'),
  step: z.number().int().min(0),
  total: z.number().int().min(1),
  loss: z.number().optional(),
});
export type ProgressEvent = z.infer<typeof progressEvent>;
/** A training's sample portrait painted with its LoRA after `step` of `total` (never the last step). */
export const previewEvent = z.strictObject({
  id: z.string(),
  event: z.literal('preview'),
  step: z.number().int().min(1),
  total: z.number().int().min(1),
  image: z.string(),
});
export type PreviewEvent = z.infer<typeof previewEvent>;
/** What a running request reports before its result. */
export type JobUpdate = ProgressEvent | PreviewEvent;
export const errorEvent = z.strictObject({ id: z.string().nullable(), event: z.literal('error'), code: z.enum(errorCodes), message: z.string() });

const result = <T extends z.ZodRawShape>(shape: T) => z.strictObject({ id: z.string(), event: z.literal('result'), ...shape });
export const pingResult = result({ pong: z.literal(true), profile: z.string(), device: z.string(), versions: z.record(z.string(), z.string()) });
export const cancelResult = result({ cancelled: z.boolean() });
export const trainResult = result({
  output: z.string(),
  kohya_output: z.string().optional(),
  steps: z.number().int(),
  final_loss: z.number(),
  losses: z.array(z.number()),
  seconds: z.number(),
  params: trainParamsShape.required(),
  resumed_from: z.number().int().optional(),
  warnings: z.array(z.string()).optional(),
});
export type TrainResult = z.infer<typeof trainResult>;
// `images` are the pictures written; `flagged` the indexes (of num_images) the engine's safety check withheld, never
// written. Every image may be withheld: then `images` is empty.
export const generateResult = result({ images: z.array(z.string()), flagged: z.array(z.number().int().min(0)), seed, seconds: z.number() });
export type GenerateResult = z.infer<typeof generateResult>;

/** Any line the engine may write; results are told apart by the request they answer (see supervisor). */
export const engineEvent = z.union([readyEvent, progressEvent, previewEvent, errorEvent, pingResult, cancelResult, trainResult, generateResult]);
export type EngineEvent = z.infer<typeof engineEvent>;

/** What the supervisor reads first from every line: who it is for and what kind of event it is. */
export const eventEnvelope = z.looseObject({ id: z.string().nullable(), event: z.enum(['ready', 'progress', 'preview', 'result', 'error']) });
