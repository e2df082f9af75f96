// The layers follow the processes: src/ (services, storage, queue producers, the engine protocol) is what every role
// shares, so nothing under src/ may reach worker/ (the engine side) or bots/ (the chat and web front ends) — not
// directly, and not through another file. Imports are read with TypeScript's own pre-processor, dynamic ones too.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import ts from 'typescript';
import { repoRoot } from '../src/config/index.ts';

function tsFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return tsFiles(path);
    return entry.name.endsWith('.ts') ? [path] : [];
  });
}

/** The repository files one file imports (relative specifiers only: packages are not layers). */
function localImports(file: string): string[] {
  const info = ts.preProcessFile(readFileSync(file, 'utf8'), true, true);
  return info.importedFiles
    .map((ref) => ref.fileName)
    .filter((spec) => spec.startsWith('.'))
    .map((spec) => resolve(dirname(file), spec));
}

const forbidden = ['worker/', 'bots/'];
const layerOf = (file: string) => relative(repoRoot, file);

/** Every path of imports from a src/ file that ends outside src/ in a forbidden folder. */
function violations(): string[] {
  const found: string[] = [];
  const seen = new Set<string>();
  const walk = (file: string, chain: string[]) => {
    if (seen.has(file)) return;
    seen.add(file);
    for (const target of localImports(file)) {
      const path = [...chain, layerOf(target)];
      if (forbidden.some((folder) => layerOf(target).startsWith(folder))) found.push(path.join(' → '));
      else if (layerOf(target).startsWith('src/')) walk(target, path);
    }
  };
  for (const file of tsFiles(join(repoRoot, 'src'))) walk(file, [layerOf(file)]);
  return found;
}

test('nothing under src/ imports worker/ or bots/, directly or through another file', () => {
  assert.deepEqual(violations(), []);
});

test('the import walk sees static, type-only and dynamic imports', () => {
  const probe = ts.preProcessFile(
    "import type { A } from '../worker/a.ts';\nexport { b } from '../bots/b.ts';\nconst c = await import('../worker/c.ts');",
    true,
    true,
  );
  assert.deepEqual(probe.importedFiles.map((f) => f.fileName), ['../worker/a.ts', '../bots/b.ts', '../worker/c.ts']);
});

test('the engine protocol has one TypeScript definition, under src/, that the worker uses', () => {
  assert.deepEqual(tsFiles(join(repoRoot, 'worker')).filter((f) => f.endsWith('protocol.ts')), []);
  const workerImports = tsFiles(join(repoRoot, 'worker')).flatMap(localImports).map(layerOf);
  assert.ok(workerImports.includes('src/engine/protocol.ts'));
});
