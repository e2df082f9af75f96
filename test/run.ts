// Runs every *.test.ts under test/ (or the files named) with node's own test runner; Node 20's --test has no globs.
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

function findTests(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return name === 'fixtures' ? [] : findTests(path);
    return name.endsWith('.test.ts') ? [path] : [];
  });
}

const named = process.argv.slice(2);
const files = named.length > 0 ? named : findTests('test').sort();
// Each file owns its databases and queue prefix; two at a time keeps the 2-core machine (and the CPU engine) responsive.
const result = spawnSync(process.execPath, ['--import', 'tsx', '--test', '--test-concurrency=2', '--test-timeout=600000', ...files], {
  stdio: 'inherit',
});
process.exit(result.status ?? 1);
