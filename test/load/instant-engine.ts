// A stand-in engine for load tests: a real child process speaking the engine's JSON-lines protocol on stdin/stdout
// (src/engine/protocol.ts) that answers at once. `generate` writes real PNG files (a flat colour per seed)
// where the request asks; `train` is refused, because load tests measure the chat and web paths, not training.
// Run as `node --import tsx test/load/instant-engine.ts`.
import { createInterface } from 'node:readline';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import { engineEvent, engineRequest } from '../../src/engine/protocol.ts';

// Every line is checked against the protocol's own schema, so the stand-in cannot drift from what the worker reads.
const write = (event: Record<string, unknown>): void => { process.stdout.write(`${JSON.stringify(engineEvent.parse(event))}\n`); };

async function answer(line: string): Promise<void> {
  const parsed = engineRequest.safeParse(JSON.parse(line));
  if (!parsed.success) {
    write({ id: null, event: 'error', code: 'bad_request', message: parsed.error.message });
    return;
  }
  const request = parsed.data;
  const started = Date.now();
  switch (request.op) {
    case 'ping':
      return write({ id: request.id, event: 'result', pong: true, profile: 'instant', device: 'none', versions: {} });
    case 'cancel':
      return write({ id: request.id, event: 'result', cancelled: false });
    case 'train':
      return write({ id: request.id, event: 'error', code: 'bad_request', message: 'the instant stand-in engine does not train' });
    case 'generate': {
      const seed = request.seed ?? Math.floor(Math.random() * 2 ** 32);
      await mkdir(request.output_dir, { recursive: true });
      const images: string[] = [];
      for (let n = 0; n < (request.num_images ?? 1); n++) {
        const path = join(request.output_dir, `image-${n}.png`);
        const colour = { r: seed % 256, g: (seed >> 8) % 256, b: (n * 64) % 256 };
        await sharp({ create: { width: request.width ?? 64, height: request.height ?? 64, channels: 3, background: colour } }).png().toFile(path);
        images.push(path);
      }
      write({ id: request.id, event: 'progress', step: request.steps ?? 1, total: request.steps ?? 1 });
      return write({ id: request.id, event: 'result', images, seed, flagged: [], seconds: (Date.now() - started) / 1000 });
    }
  }
}

const inFlight = new Set<Promise<void>>();
createInterface({ input: process.stdin }).on('line', (line) => {
  const answering = answer(line).catch((error: Error) => {
    const id = (() => { try { return (JSON.parse(line) as { id?: string }).id ?? null; } catch { return null; } })();
    write({ id, event: 'error', code: 'internal', message: error.message });
  }).finally(() => inFlight.delete(answering));
  inFlight.add(answering);
}).on('close', () => void Promise.all(inFlight).then(() => process.exit(0)));
write({ id: null, event: 'ready', profile: 'instant', device: 'none' });
