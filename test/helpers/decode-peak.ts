// Child-process probe for the decode semaphore: decodes one file `count` times at once through normalizeUpload with
// `slots` decode slots, and prints the peak RSS growth and the time as JSON. A fresh process per run, so the growth
// belongs to these decodes alone.
import { readFile } from 'node:fs/promises';
import { normalizeUpload } from '../../src/images/normalize.ts';
import { decodeSlots } from '../../src/images/decode-slots.ts';

const [path, count, slots] = [process.argv[2]!, Number(process.argv[3]), Number(process.argv[4])];
const input = await readFile(path);
decodeSlots.resize(slots);
// Warm sharp up on a tiny image so library start-up is part of the baseline, not the peak.
await normalizeUpload(await readFile(process.argv[5]!), { minShortSide: 1 });
// Resident memory now, sampled while the decodes run (a high-water mark such as getrusage's maxrss would compare
// against whatever module loading peaked at before, which varies with how busy the machine is).
const baseline = process.memoryUsage.rss();
let peak = baseline;
const started = performance.now();
let concurrent = 0;
const poll = setInterval(() => {
  concurrent = Math.max(concurrent, decodeSlots.stats.active);
  peak = Math.max(peak, process.memoryUsage.rss());
}, 2);
// Each result is dropped once it arrives, as a request drops it when it is done: normalizeUpload's result holds the
// decoded pixels (its `pixels`), and keeping all eight would measure the probe's own retention, not the decodes.
await Promise.all(Array.from({ length: count }, () => normalizeUpload(input).then(() => undefined)));
clearInterval(poll);
console.log(JSON.stringify({
  peakMb: Math.round((Math.max(peak, process.memoryUsage.rss()) - baseline) / 2 ** 20),
  ms: Math.round(performance.now() - started),
  concurrent,
}));
