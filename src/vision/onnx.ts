// ONNX Runtime sessions, created once per model file on first use and shared (creation takes a while and each
// session holds its weights). A failed load is not cached, so a model put in place later is picked up.
import * as ort from 'onnxruntime-node';

const sessions = new Map<string, Promise<ort.InferenceSession>>();

export function loadSession(path: string): Promise<ort.InferenceSession> {
  let session = sessions.get(path);
  if (!session) {
    // Two intra-op threads: the bot runs beside a web server and queue workers on the same CPU.
    session = ort.InferenceSession.create(path, { intraOpNumThreads: 2, graphOptimizationLevel: 'all' });
    sessions.set(path, session);
    session.catch(() => sessions.delete(path));
  }
  return session;
}

export async function releaseSessions(): Promise<void> {
  const all = [...sessions.values()];
  sessions.clear();
  await Promise.allSettled(all.map(async (s) => (await s).release()));
}

export function imageTensor(data: Float32Array, height: number, width: number): ort.Tensor {
  return new ort.Tensor('float32', data, [1, 3, height, width]);
}

/** Runs a session and returns each named output as a Float32Array. */
export async function run(session: ort.InferenceSession, feeds: Record<string, ort.Tensor>, outputs: readonly string[]): Promise<Record<string, Float32Array>> {
  const result = await session.run(feeds, outputs as string[]);
  const out: Record<string, Float32Array> = {};
  for (const name of outputs) {
    const tensor = result[name];
    if (!tensor || !(tensor.data instanceof Float32Array)) throw new Error(`model output ${name} missing or not float32`);
    out[name] = tensor.data;
  }
  return out;
}
