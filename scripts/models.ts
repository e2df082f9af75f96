// `models` command: downloads every model the project uses into the models folder (VISION_MODELS_DIR, default
// var/models), resumable and sha256-checked. Offline, it lists exactly what is missing and where to put it.
//   npx tsx scripts/models.ts            download what is missing
//   npx tsx scripts/models.ts status     list what is in place / missing, download nothing
//   npx tsx scripts/models.ts yunet sface   only these entries
//   npx tsx scripts/models.ts --replace     delete a wrong file found at a model's name (default: keep it aside)
import { resolve } from 'node:path';
import { repoRoot } from '../src/config/index.ts';
import { MODEL_MANIFEST, type ModelEntry } from '../src/models/manifest.ts';
import { downloadFile, missingFiles, offlineMessage } from '../src/models/download.ts';

export async function main(argv: string[], env = process.env, manifest: readonly ModelEntry[] = MODEL_MANIFEST): Promise<number> {
  const dir = resolve(env.VISION_MODELS_DIR || resolve(repoRoot, 'var/models'));
  const flags = new Set(argv.filter((a) => a.startsWith('--')));
  const statusOnly = argv[0] === 'status';
  const ids = argv.filter((a) => a !== 'status' && !a.startsWith('--'));
  const unknownFlags = [...flags].filter((f) => f !== '--replace');
  const unknown = ids.filter((id) => !manifest.some((e) => e.id === id));
  if (unknown.length || unknownFlags.length) {
    console.error(`Unknown model(s) or option(s): ${[...unknown, ...unknownFlags].join(', ')}. Known: ${manifest.map((e) => e.id).join(', ')}, --replace`);
    return 2;
  }
  const entries = manifest.filter((e) => ids.length === 0 || ids.includes(e.id));
  if (statusOnly) {
    console.log(`Models folder: ${dir}\n${offlineMessage(missingFiles(entries, dir))}`);
    return missingFiles(entries, dir).length === 0 ? 0 : 1;
  }
  let failed = 0;
  for (const entry of entries) {
    for (const file of entry.files) {
      try {
        const r = await downloadFile(file, dir, {
          replace: flags.has('--replace'),
          onWrongFile: (message) => console.error(`wrong file ${message}${flags.has('--replace') ? '' : ' (--replace deletes a wrong file instead.)'}`),
        });
        console.log(`${r.status.padEnd(10)} ${file.path}  sha256 ${r.sha256}${r.verified ? '' : '  (not pinned yet: record this digest in src/models/manifest.ts)'}`);
      } catch (error) {
        failed++;
        console.error(`failed     ${file.path}: ${error instanceof Error ? error.message : String(error)}`);
      }
    }
  }
  const missing = missingFiles(entries, dir);
  if (missing.length > 0) console.error(`\n${offlineMessage(missing)}`);
  return failed > 0 || missing.length > 0 ? 1 : 0;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main(process.argv.slice(2)).then((code) => process.exit(code), (error) => {
    console.error(error);
    process.exit(1);
  });
}
