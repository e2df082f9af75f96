// The code's shape as README promises it: each command's path in five files or fewer, all of them there, and a
// bots/shared whose modules import each other without a cycle and never import a platform adapter.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { commandList } from '../bots/telegram/bot.ts';
import { commands } from '../bots/discord/commands/index.ts';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const shared = join(root, 'bots/shared');

const tsFiles = (dir: string): string[] => readdirSync(dir).flatMap((name) => {
  const path = join(dir, name);
  return statSync(path).isDirectory() ? tsFiles(path) : name.endsWith('.ts') ? [path] : [];
});

/** Every module a file names in `import … from`, `import type … from`, `export … from` or `import('…')`. */
const importsOf = (file: string): string[] =>
  [...readFileSync(file, 'utf8').matchAll(/(?:^|\n)\s*(?:import|export)\b[^'"`;]*?from\s*['"]([^'"]+)['"]|\bimport\(\s*['"]([^'"]+)['"]\s*\)|(?:^|\n)\s*import\s*['"]([^'"]+)['"]/g)]
    .map((m) => m[1] ?? m[2] ?? m[3]!);

/** The README's "Where each command lives" rows: the command cell, then the repository files named in the row. */
function commandTable(): Array<{ command: string; files: string[] }> {
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  const section = readme.split('### Where each command lives')[1]?.split(/\n#{2,3} /)[0];
  assert.ok(section, 'README has a "Where each command lives" section');
  const rows = section.split('\n').filter((line) => line.startsWith('| ') && !line.startsWith('| command') && !line.startsWith('| ---'));
  return rows.map((row) => {
    const [command = '', ...cells] = row.split('|').slice(1, -1).map((c) => c.trim());
    const files = [...new Set(cells.flatMap((cell) => [...cell.matchAll(/`([\w./-]+\.ts)`/g)].map((m) => m[1]!)))];
    return { command, files };
  });
}

test('README names every command, each in five files or fewer, and every file it names exists', () => {
  const rows = commandTable();
  assert.ok(rows.length >= 10);
  for (const { command, files } of rows) {
    assert.ok(files.length >= 1 && files.length <= 5, `${command}: ${files.length} files`);
    for (const file of files) assert.ok(existsSync(join(root, file)), `${command}: ${file} exists`);
  }
  const named = rows.map((r) => r.command).join(' ');
  for (const command of new Set([...commandList, ...commands.keys()])) assert.ok(named.includes(`\`/${command}\``), `/${command} has a row`);
  // The Discord command file a row names is the one that registers that command.
  for (const { command, files } of rows) {
    const discord = files.find((f) => f.startsWith('bots/discord/commands/'));
    if (discord) assert.ok(command.includes(`/${discord.split('/').at(-1)!.replace('.ts', '')}\``), `${command}: ${discord}`);
  }
});

test('bots/shared has no import cycle and imports no platform adapter', () => {
  const files = tsFiles(shared);
  const graph = new Map<string, string[]>();
  for (const file of files) {
    const targets = importsOf(file).filter((spec) => spec.startsWith('.')).map((spec) => resolve(dirname(file), spec));
    for (const target of targets) {
      assert.ok(!/\/bots\/(telegram|discord|web)\//.test(target), `${relative(root, file)} imports ${relative(root, target)}`);
    }
    graph.set(file, targets.filter((target) => target.startsWith(shared + '/')));
  }
  assert.ok(graph.size >= 10, 'the feature modules are there');
  // Depth-first search; a module met again while still on the path closes a cycle.
  const done = new Set<string>();
  const path: string[] = [];
  const visit = (file: string) => {
    if (done.has(file)) return;
    const seen = path.indexOf(file);
    if (seen >= 0) assert.fail(`import cycle: ${[...path.slice(seen), file].map((f) => relative(shared, f)).join(' → ')}`);
    path.push(file);
    for (const next of graph.get(file) ?? []) visit(next);
    path.pop();
    done.add(file);
  };
  for (const file of graph.keys()) visit(file);
});

test('the import reader sees every form of import, so a cycle cannot hide behind one', () => {
  const probe = join(root, 'test/fixtures/import-forms.ts.txt');
  assert.deepEqual(importsOf(probe), ['./a.ts', './b.ts', './c.ts', './d.ts', './e.ts', './f.ts']);
});
