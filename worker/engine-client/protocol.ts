// The engine's JSON-lines protocol, TypeScript side. Python's twin: worker/engine/portrait_engine/protocol.py;
// both are tested against test/fixtures/engine-protocol/.
import { z } from 'zod';

const requestId = z.string().min(1);
const absPath = z.string().min(1);

export const trainParams = z
  .object({
    rank: z.number().int().positive(),
    alpha: z.number().positive(),
    learning_rate: z.number().positive(),
    max_steps: z.number().int().positive(),
    batch_size: z.number().int().positive(),
    grad_accum: z.number().int().positive(),
    resolution: z.number().int().positive(),
    mixed_precision: z.enum(['no', 'fp16', 'bf16']),
    seed: z.number().int(),
    instance_prompt: z.string().min(1),
    lr_scheduler: z.string(),
    lr_warmup_steps: z.number().int().min(0),
    target_modules: z.array(z.string()).min(1),
  })
  .partial();
export type TrainParams = z.infer<typeof trainParams>;

export const schedulers = ['unipc', 'dpmpp_2m_karras', 'euler_a', 'ddim'] as const;

export const pingRequest = z.object({ id: requestId, op: z.literal('ping') });
export const cancelRequest = z.object({ id: requestId, op: z.literal('cancel'), target: requestId });
export const trainRequest = z.object({
  id: requestId,
  op: z.literal('train'),
  photos: z.array(absPath).min(1),
  output: absPath,
  params: trainParams.optional(),
});
export const generateRequest = z.object({
  id: requestId,
  op: z.literal('generate'),
  prompt: z.string().min(1),
  negative_prompt: z.string().optional(),
  lora: absPath.nullable().optional(),
  lora_scale: z.number().optional(),
  control_image: absPath.nullable().optional(),
  controlnet_scale: z.number().optional(),
  steps: z.number().int().min(1).max(100).optional(),
  guidance_scale: z.number().optional(),
  seed: z.number().int().min(0).optional(),
  width: z.number().int().min(64).max(1024).multipleOf(8).optional(),
  height: z.number().int().min(64).max(1024).multipleOf(8).optional(),
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

export const readyEvent = z.object({ id: z.null(), event: z.literal('ready'), profile: z.string(), device: z.string() }).loose();
export const progressEvent = z
  .object({ id: requestId, event: z.literal('progress'), step: z.number().int(), total: z.number().int(), loss: z.number().optional() })
  .loose();
export const resultEvent = z.object({ id: requestId, event: z.literal('result') }).loose();
export const errorEvent = z.object({
  id: requestId.nullable(),
  event: z.literal('error'),
  code: z.enum(errorCodes),
  message: z.string(),
});
export const engineEvent = z.discriminatedUnion('event', [readyEvent, progressEvent, resultEvent, errorEvent]);
export type EngineEvent = z.infer<typeof engineEvent>;
export type ProgressEvent = z.infer<typeof progressEvent>;

export const trainResult = z
  .object({ output: absPath, steps: z.number().int(), final_loss: z.number(), losses: z.array(z.number()), seconds: z.number() })
  .loose();
export type TrainResult = z.infer<typeof trainResult>;
export const generateResult = z.object({ images: z.array(absPath).min(1), seed: z.number().int(), seconds: z.number() }).loose();
export type GenerateResult = z.infer<typeof generateResult>;
export const pingResult = z.object({ pong: z.literal(true), profile: z.string(), device: z.string() }).loose();
