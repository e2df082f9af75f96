// Load: simulated people on Telegram, Discord and the web API at once against the product process (src/main.ts) on the
// real Postgres and Redis, with the instant stand-in engine (test/load/harness.ts says what is measured and how).
// CI runs a small crowd; RUN_SLOW=1 runs 500 people, with and without a flooder, and writes bench/results/.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { cpus, hostname, loadavg } from 'node:os';
import { resolve } from 'node:path';
import { repoRoot } from '../src/config/index.ts';
import { runLoad, startLoadStack, type LoadFigures, type LoadStack } from './load/harness.ts';

const slow = process.env.RUN_SLOW === '1';
const people = Number(process.env.LOAD_PEOPLE ?? (slow ? 500 : 60));
let stack: LoadStack;

before(async () => { stack = await startLoadStack(); });
after(async () => { await stack?.close(); });

const summary = (f: LoadFigures) =>
  `${f.commands} commands in ${f.seconds.toFixed(1)} s = ${f.commandsPerSecond}/s; first reply p50 ${f.firstReplyMs.p50} ms, p99 ${f.firstReplyMs.p99} ms, max ${f.firstReplyMs.max} ms; lost ${f.lost}, duplicated ${f.duplicated}; CPU product ${f.cpuSeconds.product} s (${f.productCpuMsPerCommand} ms/command), driver ${f.cpuSeconds.driver} s; load average ${f.loadAverage.join(' ')}`;

test(`${people} people on Telegram, Discord and the web at once: every request answered exactly once`, { timeout: 600_000 }, async () => {
  const figures = await runLoad(stack, { people, thinkMs: [300, 1200], log: console.log });
  console.log(`# ${summary(figures)}`);
  console.log(`# by platform ${JSON.stringify(figures.firstReplyMsByPlatform)}`);
  console.log(`# by command ${JSON.stringify(figures.firstReplyMsByCommand)}`);
  if (figures.problems.length) console.log(`# problems (${figures.problems.length}):\n${figures.problems.slice(0, 30).join('\n')}`);
  assert.deepEqual(figures.problems, []);
  assert.equal(figures.lost, 0);
  assert.equal(figures.duplicated, 0);
  assert.equal(figures.serverErrors, 0);
  assert.equal(figures.imagine.completedJobs, figures.imagine.requested, 'each /imagine is one completed job');
  assert.equal(figures.imagine.generationsWithImages, figures.imagine.requested, 'each with its picture');
  // Loose: the CI machine runs other suites beside this one.
  assert.ok(figures.firstReplyMs.p99 < 3000, `p99 ${figures.firstReplyMs.p99} ms`);
});
