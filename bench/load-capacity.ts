// The product's capacity on this machine: the load test's stack and command mix (test/load/harness.ts: bin/start.ts in
// its own process, the Telegram and Discord emulators and web clients in this one, the shared Postgres and Redis, the
// instant stand-in engine) as a closed loop: at each concurrency, that many places, each taken by a new person as soon
// as the last one's script is done, with no pause between commands. Each step is a fresh stack; after a warm-up, the
// window counts the commands served and the CPU used in it: the product (and its engine), this driver, every
// `postgres` process (and of it this step's database's backends), `redis-server`, and the machine's busy time.
//
//   npx tsx bench/load-capacity.ts [--people 10,25,50,100,200] [--warmup-s 10] [--measure-s 25] [--mix full,no-photos]
//                                  [--env NAME=value,…] [--out bench/results/load-capacity-<date>.json]
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { cpus, hostname, loadavg } from 'node:os';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { repoRoot } from '../src/config/index.ts';
import { processCpuSeconds, runLoad, startLoadStack, threadCpuSeconds, treeCpuSeconds, type Command, type LoadFigures } from '../test/load/harness.ts';

const date = new Date().toISOString().slice(0, 10);
const { values: args } = parseArgs({
  options: {
    people: { type: 'string', default: '10,25,50,100,200' },
    'warmup-s': { type: 'string', default: '10' },
    'measure-s': { type: 'string', default: '25' },
    mix: { type: 'string', default: 'full,no-photos' },
    // The product's environment for every step, e.g. DATABASE_POOL_SIZE=40,WORKER_GENERATE_CONCURRENCY=32 (an experiment).
    env: { type: 'string', default: '' },
    out: { type: 'string', default: `bench/results/load-capacity-${date}.json` },
  },
});
const concurrencies = args.people.split(',').map(Number);
const warmupMs = Number(args['warmup-s']) * 1000;
const durationMs = warmupMs + Number(args['measure-s']) * 1000;
const mixes: Record<string, Command[]> = { full: [], 'no-photos': ['photo'] };
const chosen = args.mix.split(',');
const env = Object.fromEntries(args.env.split(',').filter(Boolean).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
for (const mix of chosen) if (!mixes[mix]) throw new Error(`--mix: ${mix} is not one of ${Object.keys(mixes).join(', ')}`);

// ---- CPU readings (seconds, from /proc) ---------------------------------------------------------------------------
/** The machine's CPU time by kind (/proc/stat's first line): busy = user + nice + system + irq + softirq. */
async function machineSeconds() {
  const [user, nice, system, idle, iowait, irq, softirq, steal] = (await readFile('/proc/stat', 'utf8')).split('\n')[0]!.trim().split(/\s+/).slice(1, 9).map((t) => Number(t) / 100) as number[];
  return { busy: user! + nice! + system! + irq! + softirq!, user: user! + nice!, system: system!, irq: irq! + softirq!, idle: idle!, iowait: iowait!, steal: steal! };
}
/** Block devices (not loop, ram, zram): writes completed, flushes completed, ms the device was busy (/proc/diskstats). */
async function diskCounters() {
  let writes = 0, flushes = 0, busyMs = 0;
  for (const line of (await readFile('/proc/diskstats', 'utf8')).split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length < 14 || /^(loop|ram|zram)/.test(f[2]!) || /\d$/.test(f[2]!) && /^(vd|sd|nvme)/.test(f[2]!) && /p?\d+$/.test(f[2]!.replace(/^nvme\d+n\d+/, ''))) continue;
    writes += Number(f[7]); busyMs += Number(f[12]); flushes += Number(f[18] ?? 0);
  }
  return { writes, flushes, busyMs };
}
/** Every process: its name and CPU (its own and its waited-for children's). */
async function processes(): Promise<Map<number, { comm: string; cpu: number }>> {
  const found = new Map<number, { comm: string; cpu: number }>();
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = await readFile(`/proc/${entry}/stat`, 'utf8').catch(() => '');
    const comm = /\((.*)\)/.exec(stat)?.[1];
    if (comm) found.set(Number(entry), { comm, cpu: await processCpuSeconds(Number(entry)) });
  }
  return found;
}
/** The threads of the product and its children: "<process> <thread name>" → CPU seconds (one thread's utime + stime). */
async function productThreads(pids: number[]): Promise<Map<string, number>> {
  const threads = new Map<string, number>();
  for (const [i, pid] of pids.entries()) {
    for (const tid of await readdir(`/proc/${pid}/task`).catch(() => [] as string[])) {
      const name = (await readFile(`/proc/${pid}/task/${tid}/comm`, 'utf8').catch(() => '?')).trim();
      const key = `${i === 0 ? 'product' : `child ${pid}`} ${Number(tid) === pid ? 'main' : name}`;
      threads.set(key, (threads.get(key) ?? 0) + (await threadCpuSeconds(pid, Number(tid))));
    }
  }
  return threads;
}
const driverSeconds = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; };

interface Reading {
  at: number; machine: Awaited<ReturnType<typeof machineSeconds>>; disk: Awaited<ReturnType<typeof diskCounters>>; product: number; productMainThread: number; driver: number;
  processes: Map<number, { comm: string; cpu: number }>; threads: Map<string, number>; ourBackends: Set<number>; productTree: Set<number>; loadAverage: number[];
}

async function read(productPid: number, databaseUrl: string): Promise<Reading> {
  const database = new URL(databaseUrl).pathname.slice(1);
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  const { rows } = await client.query<{ pid: number }>('select pid from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()', [database]);
  await client.end();
  const children = (await readFile(`/proc/${productPid}/task/${productPid}/children`, 'utf8').catch(() => '')).split(' ').filter(Boolean).map(Number);
  return {
    at: Date.now(), machine: await machineSeconds(), disk: await diskCounters(), product: await treeCpuSeconds(productPid),
    // Its main thread (the event loop: JavaScript, and what runs on it); the rest is libuv's pool, libvips, V8's helpers, the engine.
    productMainThread: await threadCpuSeconds(productPid, productPid), driver: driverSeconds(),
    processes: await processes(), threads: await productThreads([productPid, ...children]), ourBackends: new Set(rows.map((r) => r.pid)), productTree: new Set([productPid, ...children]),
    loadAverage: loadavg().map((l) => Math.round(l * 100) / 100),
  };
}
/** CPU between two readings; a process that started in between counts from zero, one that ended counts in its parent. */
function delta(start: Reading, end: Reading) {
  const grew = (pid: number) => end.processes.get(pid)!.cpu - (start.processes.get(pid)?.cpu ?? 0);
  const named = (name: string) => [...end.processes].filter(([, p]) => p.comm === name).reduce((total, [pid]) => total + grew(pid), 0);
  const ours = new Set([...start.productTree, ...end.productTree, process.pid]);
  const others = new Map<string, number>();
  for (const [pid, p] of end.processes) {
    if (ours.has(pid) || p.comm === 'postgres' || p.comm === 'redis-server') continue;
    others.set(p.comm, (others.get(p.comm) ?? 0) + grew(pid));
  }
  const machine = Object.fromEntries(Object.entries(end.machine).map(([k, v]) => [k, v - start.machine[k as keyof Reading['machine']]])) as Reading['machine'];
  return {
    machine, disk: { writes: end.disk.writes - start.disk.writes, flushes: end.disk.flushes - start.disk.flushes, busyMs: end.disk.busyMs - start.disk.busyMs },
    product: end.product - start.product, productMainThread: end.productMainThread - start.productMainThread, driver: end.driver - start.driver,
    postgres: named('postgres'), redis: named('redis-server'),
    ourBackends: [...end.ourBackends].filter((pid) => end.processes.has(pid)).reduce((total, pid) => total + grew(pid), 0),
    otherProcesses: [...others].filter(([, s]) => s >= 0.05).sort((a, b) => b[1] - a[1]).slice(0, 8),
    // Threads of one name are summed (a thread that ended in between is missing from the end's sum).
    productThreads: [...end.threads].map(([k, v]) => [k, v - (start.threads.get(k) ?? 0)] as const).filter(([, v]) => v >= 0.05).sort((a, b) => b[1] - a[1]).slice(0, 10),
    processesExited: [...start.processes.keys()].filter((pid) => !end.processes.has(pid)).length,
  };
}

// ---- the steps -------------------------------------------------------------------------------------------------
const round = (x: number, digits = 2) => Math.round(x * 10 ** digits) / 10 ** digits;
const cores = cpus().length;
const steps: unknown[] = [];
const rows: string[] = [];
console.log(`# ${hostname()}, ${cores} cores; closed loop, warm-up ${warmupMs / 1000} s, window ${(durationMs - warmupMs) / 1000} s; load average ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
for (const mix of chosen) {
  for (const people of concurrencies) {
    const stack = await startLoadStack(env);
    let figures: LoadFigures;
    const readings: Reading[] = [];
    const loadAtStart = loadavg().map((l) => Math.round(l * 100) / 100);
    try {
      figures = await runLoad(stack, {
        people, thinkMs: [0, 0], closedLoop: { durationMs, warmupMs }, skip: mixes[mix],
        onWindow: async () => { readings.push(await read(stack.product.child.pid!, stack.env.DATABASE_URL!)); },
      });
    } finally {
      await stack.close();
    }
    const cpu = delta(readings[0]!, readings[1]!);
    // Discord REST calls the product made in the window, by second: interaction callbacks (discord.js never held
    // them to its global limit) and the rest (edits, follow-ups: held to its 50 per second until bots/discord/bot.ts
    // took the limit off the interaction calls).
    const { start, end } = figures.closedLoop!.window;
    const perSecond = (callbacks: boolean) => {
      const buckets = new Map<number, number>();
      for (const c of stack.discord.calls) if (c.at >= start && c.at < end && c.path.endsWith('/callback') === callbacks) buckets.set(Math.floor((c.at - start) / 1000), (buckets.get(Math.floor((c.at - start) / 1000)) ?? 0) + 1);
      const counts = [...buckets.values()];
      return { mean: round(counts.reduce((a, b) => a + b, 0) / ((end - start) / 1000), 1), max: Math.max(0, ...counts) };
    };
    const discordRestPerSecond = { callbacks: perSecond(true), others: perSecond(false) };
    const seconds = (readings[1]!.at - readings[0]!.at) / 1000;
    const served = figures.commands;
    const split = {
      product: cpu.product, driver: cpu.driver, postgres: cpu.postgres, redis: cpu.redis,
      other: cpu.machine.busy - cpu.product - cpu.driver - cpu.postgres - cpu.redis,
    };
    const perCommandMs = Object.fromEntries(Object.entries(split).map(([k, v]) => [k, round((v * 1000) / served, 1)]));
    const step = {
      mix, people, persons: figures.closedLoop!.persons, commandsSent: figures.closedLoop!.commandsSent,
      windowSeconds: round(seconds, 1), commandsServed: served, commandsPerSecond: figures.commandsPerSecond,
      firstReplyMs: figures.firstReplyMs, firstReplyMsByPlatform: figures.firstReplyMsByPlatform, firstReplyMsByCommand: figures.firstReplyMsByCommand, completedMsByCommand: figures.completedMsByCommand,
      servedByPlatform: figures.closedLoop!.servedByPlatform, discordRestPerSecond,
      lost: figures.lost, duplicated: figures.duplicated, late: figures.late, serverErrors: figures.serverErrors, imagine: figures.imagine,
      cpuSeconds: { ...Object.fromEntries(Object.entries(split).map(([k, v]) => [k, round(v)])), productMainThread: round(cpu.productMainThread), postgresThisDatabase: round(cpu.ourBackends), machineBusy: round(cpu.machine.busy), machineAvailable: round(cores * seconds) },
      disk: cpu.disk,
      machineCpuSeconds: Object.fromEntries(Object.entries(cpu.machine).map(([k, v]) => [k, round(v)])),
      productThreadsCpuSeconds: Object.fromEntries(cpu.productThreads.map(([k, v]) => [k, round(v)])),
      otherProcessesCpuSeconds: Object.fromEntries(cpu.otherProcesses.map(([k, v]) => [k, round(v)])),
      cpuMsPerCommand: perCommandMs,
      machineBusyFraction: round(cpu.machine.busy / (cores * seconds), 3),
      /** The product's main thread's CPU over the window's length: 1 = its event loop never idle. */
      productMainThreadBusyFraction: round(cpu.productMainThread / seconds, 3),
      processesExited: cpu.processesExited,
      loadAverage: { stepStart: loadAtStart, windowStart: readings[0]!.loadAverage, windowEnd: readings[1]!.loadAverage },
      problems: figures.problems.slice(0, 30),
    };
    steps.push(step);
    const pct = (v: number) => `${Math.round((v / cpu.machine.busy) * 100)}%`;
    const row = `| ${mix} | ${people} | ${figures.commandsPerSecond} | ${figures.firstReplyMs.p50} / ${figures.firstReplyMs.p99} | ${figures.lost} / ${figures.duplicated} | ${round(cpu.machine.busy / seconds)} of ${cores} (${Math.round(step.machineBusyFraction * 100)}%) | ${pct(split.product)} / ${pct(split.driver)} / ${pct(split.postgres)} / ${pct(split.redis)} / ${pct(split.other)} | ${perCommandMs.product} / ${perCommandMs.driver} / ${perCommandMs.postgres} / ${perCommandMs.redis} / ${perCommandMs.other} | ${readings[0]!.loadAverage[0]} → ${readings[1]!.loadAverage[0]} |`;
    rows.push(row);
    console.log(row);
    console.log(`#   product threads ${JSON.stringify(step.productThreadsCpuSeconds)}`);
    console.log(`#   served by platform ${JSON.stringify(step.servedByPlatform)}; Discord REST calls/s ${JSON.stringify(discordRestPerSecond)}`);
    console.log(`#   product main thread ${Math.round(step.productMainThreadBusyFraction * 100)}% of the window; machine ${JSON.stringify(step.machineCpuSeconds)}; disk ${JSON.stringify(cpu.disk)}; other processes ${JSON.stringify(step.otherProcessesCpuSeconds)}; Postgres of it this database ${step.cpuSeconds.postgresThisDatabase} s`);
    if (figures.problems.length) console.log(`# problems (${figures.problems.length}): ${figures.problems.slice(0, 5).join('; ')}`);
  }
}
const header = '| mix | people | commands/s | first reply p50 / p99 ms | lost / dup | machine busy (cores) | CPU share: product / driver / Postgres / Redis / other | CPU ms per command: product / driver / Postgres / Redis / other | load avg (1 min) |';
console.log(`\n${header}\n|${' --- |'.repeat(9)}\n${rows.join('\n')}`);
const report = {
  date, machine: hostname(), cores, loadAverageAtEnd: loadavg(),
  engine: 'instant stand-in (test/load/instant-engine.ts); no face models (photos "not checked")',
  method: `closed loop: at each step N places, each taken by a new person (the load test's script: /start, then help, status, train, photo, text and for 2 in 3 imagine, shuffled) as soon as the last one's script is done, no pause between commands; a fresh stack per step; warm-up ${warmupMs / 1000} s, then a ${(durationMs - warmupMs) / 1000} s window. Served = commands whose every answer arrived in the window; first replies of commands sent in it. CPU from /proc over the window: product = bin/start.ts and its engine; driver = this process (emulators, clients); postgres = every postgres process on the machine (the server is shared), with this step's database's backends apart; redis = redis-server (shared); other = the machine's busy time (/proc/stat) less these.`,
  mixes: Object.fromEntries(chosen.map((m) => [m, mixes[m]!.length ? `without ${mixes[m]!.join(', ')}` : 'the load test mix'])),
  env,
  target: { commandsPerSecond: 300 },
  steps,
};
await writeFile(resolve(repoRoot, args.out), `${JSON.stringify(report, null, 2)}\n`);
console.log(`# wrote ${args.out}; load average ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
