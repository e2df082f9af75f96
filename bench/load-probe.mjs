// Preloaded into the product process by bench/load-kinds.ts (node --import): counts the Postgres queries it sends, by
// statement, and on SIGUSR2 writes the counts and the process's CPU time to LOAD_PROBE_FILE. Plain JavaScript: it runs
// before tsx is registered.
import { createRequire } from 'node:module';
import { writeFileSync } from 'node:fs';

const pg = createRequire(import.meta.url)('pg');
const byStatement = new Map();
const query = pg.Client.prototype.query;
pg.Client.prototype.query = function countedQuery(config, ...rest) {
  const text = typeof config === 'string' ? config : config?.text;
  if (typeof text === 'string') byStatement.set(text, (byStatement.get(text) ?? 0) + 1);
  return query.call(this, config, ...rest);
};

const write = () => {
  const cpu = process.cpuUsage();
  writeFileSync(process.env.LOAD_PROBE_FILE, JSON.stringify({ cpuMs: (cpu.user + cpu.system) / 1000, systemMs: cpu.system / 1000, queries: Object.fromEntries(byStatement) }));
};
process.on('SIGUSR2', write);
// Also at exit, so that a whole load test can be counted (LOAD_PRODUCT_NODE_ARGS="--import ./bench/load-probe.mjs").
process.on('exit', write);
