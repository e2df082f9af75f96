// `models` command: downloads the models the project uses into the models folder (VISION_MODELS_DIR, default
// var/models), resumable and sha256-checked. Offline, it lists exactly what is missing and where to put it.
//   npx tsx scripts/models.ts --cpu        the CPU-only set: yunet sface dwpose (face checks, likeness, /pose)
//   npx tsx scripts/models.ts              everything, including SD1.5, ControlNet and the safety checker (several GB,
//                                          for a GPU)
//   npx tsx scripts/models.ts safety-checker   only the output check's safety checker (about 1.2 GB)
//   npx tsx scripts/models.ts status       list what is in place / missing, download nothing
//   npx tsx scripts/models.ts yunet sface  only these entries
//   npx tsx scripts/models.ts --replace    delete a wrong file found at a model's name (default: keep it aside)
import { resolve } from 'node:path';
import { repoRoot } from '../src/config/index.ts';
import { CPU_MODEL_IDS, MODEL_MANIFEST, type ModelEntry } from '../src/models/manifest.ts';
import {
  downloadFile, expectedDigest, missingFiles, offlineMessage, readRecordedDigests, recordDigest, RECORDED_DIGESTS_FILE,
} from '../src/models/download.ts';

const FLAGS = ['--cpu', '--replace'];

export async function main(argv: string[], env = process.env, manifest: readonly ModelEntry[] = MODEL_MANIFEST): Promise<number> {
  const dir = resolve(env.VISION_MODELS_DIR || resolve(repoRoot, 'var/models'));
  const flags = new Set(argv.filter((a) => a.startsWith('--')));
  const statusOnly = argv[0] === 'status';
  const ids = argv.filter((a) => a !== 'status' && !a.startsWith('--'));
  if (flags.has('--cpu')) ids.push(...CPU_MODEL_IDS.filter((id) => !ids.includes(id)));
  const unknownFlags = [...flags].filter((f) => !FLAGS.includes(f));
  const unknown = ids.filter((id) => !manifest.some((e) => e.id === id));
  if (unknown.length || unknownFlags.length) {
    console.error(`Unknown model(s) or option(s): ${[...unknown, ...unknownFlags].join(', ')}. Known: ${manifest.map((e) => e.id).join(', ')}, ${FLAGS.join(', ')}`);
    return 2;
  }
  const entries = manifest.filter((e) => ids.length === 0 || ids.includes(e.id));
  if (statusOnly) {
    console.log(`Models folder: ${dir}\n${offlineMessage(missingFiles(entries, dir))}`);
    return missingFiles(entries, dir).length === 0 ? 0 : 1;
  }
  if (ids.length === 0) {
    console.log(`Downloading every model, SD1.5, ControlNet and the safety checker included (several GB, for GPU generation).\nFor the CPU-only set (face checks, likeness, /pose): npm run models -- --cpu`);
  }
  const replace = flags.has('--replace');
  const record = resolve(dir, RECORDED_DIGESTS_FILE);
  let failed = 0;
  for (const entry of entries) {
    for (const file of entry.files) {
      const expected = expectedDigest(file, readRecordedDigests(dir));
      try {
        const r = await downloadFile({ ...file, sha256: expected.sha256 }, dir, {
          replace,
          onWrongFile: (message) => console.error(`wrong file ${message}${replace ? '' : ' (--replace deletes a wrong file instead.)'}`),
        });
        let note = '';
        if (expected.source === 'recorded') note = `  (matches the digest recorded on its first download, ${record})`;
        if (expected.source === 'none') {
          await recordDigest(dir, file, r.sha256);
          note = `  (no published digest: recorded in ${record} ${r.status === 'present' ? 'from the file found' : 'on this first download'}; later runs check against it)`;
        }
        console.log(`${r.status.padEnd(10)} ${file.path}  sha256 ${r.sha256}${note}`);
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
