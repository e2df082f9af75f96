// Multipart uploads streamed to temporary files with a byte limit per file, so a request with 20 photos of 20 MiB
// holds one file in memory at a time (while it is checked), not all of them for the whole request.
import { createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { FastifyRequest } from 'fastify';
import { UserFacingError } from '../../src/services/errors.ts';

export interface ReceivedFile {
  filename: string;
  /** Null when the file was over the byte limit (its bytes were discarded as they arrived). */
  path: string | null;
}

export interface ReceivedForm {
  files: ReceivedFile[];
  fields: Record<string, string>;
  read(file: ReceivedFile): Promise<Buffer>;
  /** Removes the temporary files; called when the request is done, whatever happened. */
  dispose(): Promise<void>;
}

// eslint-disable-next-line no-control-regex
export const CONTROL_CHARS = /[\u0000-\u001f\u007f]/;

/** Reads every part of a multipart request; a client mistake becomes a UserFacingError, never a 500. */
export async function receiveForm(request: FastifyRequest, tmpRoot: string, maxFiles: number): Promise<ReceivedForm> {
  await mkdir(tmpRoot, { recursive: true });
  const dir = await mkdtemp(join(tmpRoot, 'upload-'));
  const form: ReceivedForm = {
    files: [],
    fields: {},
    read: (file) => readFile(file.path!),
    dispose: () => rm(dir, { recursive: true, force: true }),
  };
  try {
    for await (const part of request.parts({ limits: { files: maxFiles } })) {
      if (part.type === 'field') {
        if (part.fieldnameTruncated || part.valueTruncated) throw new UserFacingError('field_too_long', 'A form field is too long.');
        form.fields[part.fieldname] = String(part.value);
        continue;
      }
      // The name is only kept as a label, but Postgres refuses a NUL in text: refuse it before anything is stored.
      if (CONTROL_CHARS.test(part.filename)) {
        part.file.resume();
        throw new UserFacingError('bad_filename', 'A file name contains control characters.');
      }
      const path = join(dir, String(form.files.length));
      await pipeline(part.file, createWriteStream(path));
      if (part.file.truncated) await rm(path, { force: true });
      form.files.push({ filename: part.filename, path: part.file.truncated ? null : path });
    }
  } catch (error) {
    await form.dispose();
    throw multipartMistake(error, maxFiles);
  }
  return form;
}

/** @fastify/multipart's and busboy's errors carry library text ("reach files limit"): name them for the person. */
function multipartMistake(error: unknown, maxFiles: number): unknown {
  if (error instanceof UserFacingError) return error;
  const { code, syscall } = error as { code?: string; syscall?: string };
  if (syscall) return error; // the server's disk, not the client: a real 500
  switch (code) {
    case 'FST_FILES_LIMIT': return new UserFacingError('too_many_files', `At most ${maxFiles} files per upload.`, { max: maxFiles }, 413);
    case 'FST_FIELDS_LIMIT':
    case 'FST_PARTS_LIMIT': return new UserFacingError('too_many_fields', 'The form has too many fields.', {}, 413);
    case 'FST_INVALID_MULTIPART_CONTENT_TYPE': return new UserFacingError('bad_content_type', 'Send photos as multipart/form-data.', {}, 415);
    default: return new UserFacingError('bad_multipart', 'The upload was cut off or malformed.');
  }
}
