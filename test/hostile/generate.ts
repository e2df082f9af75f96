// Hostile input for the web API, generated: broken and lying images, bombs, formats we refuse, odd file names,
// malformed multipart, hostile prompts and options, oversized and mistyped bodies, forged origins, bad ids, limits.
// Each case is one or more requests and the answer it must get; test/hostile-input.test.ts sends every case as an
// English person, a Russian person and a cookieless Russian browser, and diffs the database and storage around it.
import sharp from 'sharp';
import { makePhoto } from '../helpers/images.ts';
import { bmp, fakeHeic, flatLosslessWebp, jpegClaiming, pngChunk, pngClaiming } from './images.ts';

export interface HostileRequest {
  method: 'GET' | 'POST' | 'DELETE';
  path: string;
  /** Replace the sender's headers; null removes one (e.g. the Origin a browser would send). */
  headers?: Record<string, string | null>;
  body?: Buffer | string;
}

export interface HostileCase {
  name: string;
  group: string;
  requests: HostileRequest[];
  /** Every answer's status; 200 for unusual but valid photos (the test deletes them again). */
  status: number;
  /** body.error.code of every answer, when it is an error. */
  code?: string;
  /** Sent by the person who already has the 20-photo maximum. */
  byFullPerson?: boolean;
}

const BOUNDARY = 'hostile-boundary-7d3f';

interface Part { name: string; filename?: string; type?: string; data: Buffer | string }

/** A multipart/form-data body written byte by byte, so names and structure can be anything. */
export function multipart(parts: Part[], { boundary = BOUNDARY, close = true } = {}): Buffer {
  const chunks: Buffer[] = [];
  for (const part of parts) {
    const disposition = `form-data; name="${part.name}"${part.filename !== undefined ? `; filename="${part.filename}"` : ''}`;
    const type = part.filename !== undefined ? `\r\nContent-Type: ${part.type ?? 'application/octet-stream'}` : '';
    chunks.push(Buffer.from(`--${boundary}\r\nContent-Disposition: ${disposition}${type}\r\n\r\n`, 'utf8'), Buffer.from(part.data), Buffer.from('\r\n'));
  }
  if (close) chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return Buffer.concat(chunks);
}

const multipartType = `multipart/form-data; boundary=${BOUNDARY}`;
const upload = (parts: Part[], path = '/api/photos'): HostileRequest => ({ method: 'POST', path, headers: { 'content-type': multipartType }, body: multipart(parts) });
const photoUpload = (filename: string, data: Buffer | string) => upload([{ name: 'photos', filename, type: 'image/jpeg', data }]);
const json = (path: string, body: unknown, headers: Record<string, string | null> = {}): HostileRequest =>
  ({ method: 'POST', path, headers: { 'content-type': 'application/json', ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) });

/** Deterministic pseudo-random bytes (the slow run mutates photos with them). */
function prng(seed: number) {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 4294967296;
  };
}

/** Two different 300×300 frames (identical frames would be merged into a still by the encoder). */
async function twoFrames(): Promise<Buffer> {
  return sharp({ create: { width: 300, height: 600, channels: 3, background: '#0a0' } })
    .composite([{ input: { create: { width: 300, height: 300, channels: 3, background: '#a00' } }, top: 300, left: 0 }])
    .raw()
    .toBuffer();
}

const animatedWebp = async () => sharp(await twoFrames(), { raw: { width: 300, height: 600, channels: 3, pageHeight: 300 } }).webp({ loop: 0, delay: [100, 100] }).toBuffer();
const animatedGif = async () => sharp(await twoFrames(), { raw: { width: 300, height: 600, channels: 3, pageHeight: 300 } }).gif({ loop: 0, delay: [100, 100] }).toBuffer();

async function apng(): Promise<Buffer> {
  const png = await sharp({ create: { width: 300, height: 300, channels: 3, background: '#00a' } }).png().toBuffer();
  const actl = Buffer.alloc(8);
  actl.writeUInt32BE(2, 0);
  return Buffer.concat([png.subarray(0, 33), pngChunk('acTL', actl), png.subarray(33)]);
}

async function multiPageTiff(): Promise<Buffer> {
  const pages = await sharp({ create: { width: 300, height: 600, channels: 3, background: '#789' } }).raw().toBuffer();
  return sharp(pages, { raw: { width: 300, height: 600, channels: 3, pageHeight: 300 } }).tiff().toBuffer();
}

/** An ISO-BMFF ftyp box with the given major brand (an AVIF image sequence is an animation). */
function ftyp(major: string, compatible: string[]): Buffer {
  const body = Buffer.concat([Buffer.from(major, 'latin1'), Buffer.alloc(4), ...compatible.map((b) => Buffer.from(b, 'latin1'))]);
  const size = Buffer.alloc(4);
  size.writeUInt32BE(body.length + 8);
  return Buffer.concat([size, Buffer.from('ftyp', 'latin1'), body, Buffer.alloc(64)]);
}

export async function generateCases({ slow = false } = {}): Promise<HostileCase[]> {
  const photo = await makePhoto(900, 640, 800);
  const png = await sharp(photo).png().toBuffer();
  const webp = await sharp(photo).webp({ quality: 80 }).toBuffer();
  const cut = (b: Buffer, f = 0.6) => b.subarray(0, Math.floor(b.length * f));
  const images: Array<[string, Buffer | string, string, number?]> = [
    ['empty file', Buffer.alloc(0), 'empty'],
    ['text named .jpg', 'Hello! This is not a photo.\n', 'not_an_image'],
    ['web page', '<!doctype html><html><body>hi</body></html>', 'not_an_image'],
    ['PDF', '%PDF-1.7\n1 0 obj <<>> endobj\n', 'not_an_image'],
    ['ZIP archive', Buffer.concat([Buffer.from([0x50, 0x4b, 0x03, 0x04]), Buffer.alloc(200, 1)]), 'not_an_image'],
    ['WAV audio', Buffer.concat([Buffer.from('RIFF\x24\x00\x00\x00WAVEfmt ', 'latin1'), Buffer.alloc(100)]), 'not_an_image'],
    ['MP4 video', ftyp('isom', ['isom', 'mp41']), 'not_an_image'],
    ['random binary', Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919) % 251)), 'not_an_image'],
    ['JPEG cut at 60%', cut(photo), 'truncated'],
    ['JPEG cut inside its header', photo.subarray(0, 40), 'truncated'],
    ['PNG cut at 60%', cut(png), 'truncated'],
    ['WebP cut at 60%', cut(webp), 'truncated'],
    ['JPEG header claiming 4000×4000 over 640×800 of data', jpegClaiming(photo, 4000, 4000), 'truncated'],
    ['PNG header claiming 4000×3000 over 16×16 of data', await pngClaiming(4000, 3000), 'truncated'],
    ['JPEG signature, HTML after it (polyglot)', Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0]), Buffer.from('<html><script>alert(1)</script></html>')]), 'truncated'],
    ['PNG signature, garbage after it', Buffer.concat([png.subarray(0, 8), Buffer.alloc(500, 0x41)]), 'truncated'],
    ['GIF signature, garbage after it', Buffer.concat([Buffer.from('GIF89a'), Buffer.alloc(500, 0x42)]), 'truncated'],
    ['RIFF/WEBP header, garbage after it', Buffer.concat([Buffer.from('RIFF\x00\x10\x00\x00WEBPVP8 ', 'latin1'), Buffer.alloc(500, 0x43)]), 'truncated'],
    ['PNG bomb header 20000×20000', await pngClaiming(20000, 20000), 'too_many_pixels'],
    ['1.7 KB lossless WebP of 39.9 MP', await flatLosslessWebp(6320, 6320), 'too_many_pixels'],
    ['PNG panorama 70000×300 (longer than JPEG can store)', await pngClaiming(70000, 300), 'too_many_pixels'],
    ['1×1 PNG', await sharp({ create: { width: 1, height: 1, channels: 3, background: '#fff' } }).png().toBuffer(), 'too_small'],
    ['100×100 JPEG', await sharp(photo).resize(100, 100).jpeg().toBuffer(), 'too_small'],
    ['16-bit PNG of 120×90', await sharp(photo).resize(120, 90).toColourspace('rgb16').png().toBuffer(), 'too_small'],
    ['palette PNG of 200×100', await sharp(photo).resize(200, 100).png({ palette: true, colours: 16 }).toBuffer(), 'too_small'],
    ['CMYK JPEG cut at 50%', cut(await sharp(photo).toColourspace('cmyk').jpeg().toBuffer(), 0.5), 'truncated'],
    ['palette PNG cut at 50%', cut(await sharp(photo).png({ palette: true }).toBuffer(), 0.5), 'truncated'],
    ['animated GIF', await animatedGif(), 'animated'],
    ['animated WebP', await animatedWebp(), 'animated'],
    ['animated PNG (APNG)', await apng(), 'animated'],
    ['multi-page TIFF', await multiPageTiff(), 'animated'],
    ['AVIF image sequence brand', ftyp('avis', ['avis', 'msf1', 'mif1']), 'animated'],
    ['HEIC (no HEVC decoder here)', fakeHeic(4032, 3024), 'unsupported_format'],
    ['BMP', bmp(300, 300), 'unsupported_format'],
    ['Photoshop PSD', Buffer.concat([Buffer.from('8BPS\x00\x01', 'latin1'), Buffer.alloc(200)]), 'unsupported_format'],
    ['SVG drawing', '<svg xmlns="http://www.w3.org/2000/svg" width="4000" height="4000"><rect width="100%" height="100%"/></svg>', 'unsupported_format'],
    ['JPEG XL', Buffer.concat([Buffer.from([0xff, 0x0a]), Buffer.alloc(200, 7)]), 'unsupported_format'],
    ['JPEG 2000', Buffer.concat([Buffer.from([0xff, 0x4f, 0xff, 0x51]), Buffer.alloc(200, 7)]), 'unsupported_format'],
    ['icon (ICO)', Buffer.concat([Buffer.from([0, 0, 1, 0, 1, 0]), Buffer.alloc(200, 3)]), 'unsupported_format'],
    ['OpenEXR', Buffer.concat([Buffer.from([0x76, 0x2f, 0x31, 0x01]), Buffer.alloc(200, 3)]), 'unsupported_format'],
    ['one byte over 20 MiB', Buffer.alloc(20 * 1024 * 1024 + 1, 0x20), 'too_large_bytes'],
  ];
  const cases: HostileCase[] = images.map(([name, data, code]) => ({ name, group: 'image', requests: [photoUpload('photo.jpg', data)], status: 422, code }));

  // Unusual but valid photos must be read correctly, not refused: the test deletes each one again afterwards.
  const valid: Array<[string, Buffer]> = [
    ['CMYK JPEG (valid)', await sharp(photo).toColourspace('cmyk').jpeg({ quality: 92 }).toBuffer()],
    ['16-bit PNG with alpha (valid)', await sharp(await makePhoto(901, 640, 800)).ensureAlpha(0.8).toColourspace('rgb16').png().toBuffer()],
    ['palette PNG (valid)', await sharp(await makePhoto(902, 640, 800)).png({ palette: true, colours: 64 }).toBuffer()],
    ['grey JPEG (valid)', await sharp(await makePhoto(903, 640, 800)).greyscale().jpeg().toBuffer()],
    ['TIFF (valid)', await sharp(await makePhoto(904, 640, 800)).tiff().toBuffer()],
  ];
  for (const [name, data] of valid) cases.push({ name, group: 'valid', requests: [photoUpload('ok.jpg', data)], status: 200 });

  const text = 'not a photo';
  cases.push(
    { name: 'NUL in a file name', group: 'name', requests: [photoUpload('me\u0000.jpg', photo)], status: 400, code: 'bad_filename' },
    { name: 'bell and escape characters in a file name', group: 'name', requests: [photoUpload('a\u0007\u001b[31m.jpg', photo)], status: 400, code: 'bad_filename' },
    { name: 'path traversal in a file name', group: 'name', requests: [photoUpload('../../../../etc/passwd', text)], status: 422, code: 'not_an_image' },
    { name: 'a 4000-character file name', group: 'name', requests: [photoUpload(`${'x'.repeat(4000)}.jpg`, text)], status: 422, code: 'not_an_image' },
    { name: 'right-to-left override and emoji in a file name', group: 'name', requests: [photoUpload('\u202Egpj.exe😀.jpg', text)], status: 422, code: 'not_an_image' },
    { name: 'quotes and semicolons in a file name', group: 'name', requests: [photoUpload('a\'; drop table photos; --.jpg', text)], status: 422, code: 'not_an_image' },
  );

  cases.push(
    { name: 'multipart without a boundary', group: 'multipart', requests: [{ method: 'POST', path: '/api/photos', headers: { 'content-type': 'multipart/form-data' }, body: multipart([{ name: 'photos', filename: 'a.jpg', data: text }]) }], status: 400, code: 'bad_multipart' },
    { name: 'multipart cut before its closing boundary', group: 'multipart', requests: [{ method: 'POST', path: '/api/photos', headers: { 'content-type': multipartType }, body: multipart([{ name: 'photos', filename: 'a.jpg', data: photo }], { close: false }).subarray(0, 3000) }], status: 400, code: 'bad_multipart' },
    { name: 'multipart with a malformed part header', group: 'multipart', requests: [{ method: 'POST', path: '/api/photos', headers: { 'content-type': multipartType }, body: `--${BOUNDARY}\r\nContent-Disposition form-data name\r\n\r\nxx\r\n--${BOUNDARY}--\r\n` }], status: 400 },
    { name: 'multipart with the wrong boundary', group: 'multipart', requests: [{ method: 'POST', path: '/api/photos', headers: { 'content-type': 'multipart/form-data; boundary=other' }, body: multipart([{ name: 'photos', filename: 'a.jpg', data: photo }]) }], status: 400, code: 'bad_multipart' },
    { name: '21 files in one upload', group: 'multipart', requests: [upload(Array.from({ length: 21 }, (_, i) => ({ name: 'photos', filename: `${i}.jpg`, data: text })))], status: 413, code: 'too_many_files' },
    { name: '40 form fields', group: 'multipart', requests: [upload(Array.from({ length: 40 }, (_, i) => ({ name: `f${i}`, data: 'x' })))], status: 413, code: 'too_many_fields' },
    { name: 'a 20 000-character form field', group: 'multipart', requests: [upload([{ name: 'note', data: 'y'.repeat(20_000) }, { name: 'photos', filename: 'a.jpg', data: photo }])], status: 400, code: 'field_too_long' },
    { name: 'a form with no file', group: 'multipart', requests: [upload([{ name: 'note', data: 'hello' }])], status: 400, code: 'no_files' },
    { name: '__proto__ as a field name', group: 'multipart', requests: [upload([{ name: '__proto__', data: '{"admin":true}' }, { name: 'photos', filename: 'a.jpg', data: text }])], status: 400, code: 'bad_multipart' },
    { name: 'multipart to a JSON route', group: 'multipart', requests: [upload([{ name: 'prompt', data: 'me' }], '/api/imagine')], status: 415, code: 'bad_content_type' },
    { name: 'pose without an image', group: 'pose', requests: [upload([{ name: 'prompt', data: 'dancing' }], '/api/pose')], status: 400, code: 'no_pose_image' },
    { name: 'pose with two images', group: 'pose', requests: [upload([{ name: 'image', filename: 'a.png', data: png }, { name: 'image', filename: 'b.png', data: png }], '/api/pose')], status: 413, code: 'too_many_files' },
    { name: 'pose options that are not JSON', group: 'pose', requests: [upload([{ name: 'options', data: '{width: 256' }, { name: 'image', filename: 'a.png', data: png }], '/api/pose')], status: 400, code: 'bad_options' },
    { name: 'pose options that are a JSON array', group: 'pose', requests: [upload([{ name: 'options', data: '[1,2]' }, { name: 'image', filename: 'a.png', data: png }], '/api/pose')], status: 400, code: 'bad_options' },
    { name: 'pose prompt with a NUL', group: 'pose', requests: [upload([{ name: 'prompt', data: 'me\u0000' }, { name: 'image', filename: 'a.png', data: png }], '/api/pose')], status: 400, code: 'bad_prompt' },
    { name: 'pose reference that is text', group: 'pose', requests: [upload([{ name: 'image', filename: 'a.png', data: text }], '/api/pose')], status: 400, code: 'not_an_image' },
    { name: 'pose reference that is a pixel bomb', group: 'pose', requests: [upload([{ name: 'image', filename: 'a.png', data: await pngClaiming(20000, 20000) }], '/api/pose')], status: 400, code: 'too_many_pixels' },
  );

  const imagine = (prompt: unknown, options?: unknown) => json('/api/imagine', options === undefined ? { prompt } : { prompt, options });
  cases.push(
    { name: 'prompt with a NUL', group: 'prompt', requests: [imagine('me as an astronaut\u0000')], status: 400, code: 'bad_prompt' },
    { name: 'prompt with terminal escapes', group: 'prompt', requests: [imagine('\u001b[2J\u001b[31mme')], status: 400, code: 'bad_prompt' },
    { name: 'prompt that is a number', group: 'prompt', requests: [imagine(42)], status: 400, code: 'bad_prompt' },
    { name: 'prompt that is an array', group: 'prompt', requests: [imagine(['me', 'you'])], status: 400, code: 'bad_prompt' },
    { name: 'prompt that is an object', group: 'prompt', requests: [imagine({ toString: 'x' })], status: 400, code: 'bad_prompt' },
    { name: 'empty prompt', group: 'prompt', requests: [imagine('')], status: 400, code: 'empty_prompt' },
    { name: 'whitespace prompt', group: 'prompt', requests: [imagine(' \n\t ')], status: 400, code: 'empty_prompt' },
    { name: '501-character prompt', group: 'prompt', requests: [imagine('a'.repeat(501))], status: 400, code: 'prompt_too_long' },
    { name: '200 000-character prompt', group: 'prompt', requests: [imagine('b'.repeat(200_000))], status: 400, code: 'prompt_too_long' },
    { name: 'SQL in a prompt (no model yet)', group: 'prompt', requests: [imagine("me'); delete from users; --")], status: 400, code: 'no_model' },
    { name: 'lone surrogate in a prompt (no model yet)', group: 'prompt', requests: [json('/api/imagine', '{"prompt":"me \\ud800"}')], status: 400, code: 'no_model' },
    { name: 'options that are a string', group: 'options', requests: [imagine('me', 'width=99999')], status: 400, code: 'bad_options' },
    { name: 'options that are an array', group: 'options', requests: [imagine('me', [1])], status: 400, code: 'bad_options' },
    { name: 'options that are null', group: 'options', requests: [imagine('me', null)], status: 400, code: 'bad_options' },
    { name: '__proto__ in options', group: 'options', requests: [json('/api/imagine', '{"prompt":"me","options":{"__proto__":{"admin":true}}}')], status: 400, code: 'bad_json' },
    { name: 'width of 100 000', group: 'options', requests: [imagine('me', { width: 100_000 })], status: 400, code: 'bad_options' },
    { name: 'negative steps', group: 'options', requests: [imagine('me', { steps: -1 })], status: 400, code: 'bad_options' },
  );

  cases.push(
    { name: 'invalid JSON', group: 'body', requests: [json('/api/imagine', '{"prompt": "me",')], status: 400, code: 'bad_json' },
    { name: 'empty JSON body', group: 'body', requests: [json('/api/train', '')], status: 400, code: 'bad_json' },
    { name: 'a JSON array as the body', group: 'body', requests: [json('/api/imagine', '[1,2,3]')], status: 400, code: 'bad_request' },
    { name: 'a JSON string as the body', group: 'body', requests: [json('/api/imagine', '"me"')], status: 400, code: 'bad_request' },
    { name: 'a 2 MiB JSON body', group: 'body', requests: [json('/api/imagine', JSON.stringify({ prompt: 'c'.repeat(2 * 1024 * 1024) }))], status: 413, code: 'body_too_large' },
    { name: 'text/plain body (a form\'s JSON trick)', group: 'body', requests: [{ method: 'POST', path: '/api/imagine', headers: { 'content-type': 'text/plain' }, body: '{"prompt":"me"}' }], status: 415, code: 'bad_content_type' },
    { name: 'urlencoded body', group: 'body', requests: [{ method: 'POST', path: '/api/forget', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'x=1' }], status: 415, code: 'bad_content_type' },
    { name: 'POST without a content type', group: 'body', requests: [{ method: 'POST', path: '/api/train', body: '' }], status: 415, code: 'bad_content_type' },
    { name: 'cancel with a numeric job id', group: 'body', requests: [json('/api/cancel', { jobId: 123 })], status: 400, code: 'bad_request' },
    { name: 'cancel with a job id that is not a UUID', group: 'body', requests: [json('/api/cancel', { jobId: "x' or 1=1 --" })], status: 400, code: 'nothing_to_cancel' },
  );

  const evil = 'http://127.0.0.1:1';
  cases.push(
    { name: 'forget from another origin', group: 'origin', requests: [json('/api/forget', {}, { origin: evil })], status: 403, code: 'cross_site' },
    { name: 'forget with Origin: null (sandboxed frame)', group: 'origin', requests: [json('/api/forget', {}, { origin: 'null' })], status: 403, code: 'cross_site' },
    { name: 'forget, Sec-Fetch-Site cross-site', group: 'origin', requests: [json('/api/forget', {}, { 'sec-fetch-site': 'cross-site' })], status: 403, code: 'cross_site' },
    { name: 'forget, Sec-Fetch-Site same-site (another local port)', group: 'origin', requests: [json('/api/forget', {}, { 'sec-fetch-site': 'same-site' })], status: 403, code: 'cross_site' },
    { name: 'upload without an Origin', group: 'origin', requests: [{ ...photoUpload('a.jpg', photo), headers: { 'content-type': multipartType, origin: null } }], status: 403, code: 'cross_site' },
    { name: 'delete a photo from another origin', group: 'origin', requests: [{ method: 'DELETE', path: '/api/photos/00000000-0000-4000-8000-000000000000', headers: { origin: evil } }], status: 403, code: 'cross_site' },
    { name: 'a cookie with a bad % escape, and bad JSON', group: 'origin', requests: [json('/api/imagine', '{', { cookie: 'pb_session=%E0%A4%A' })], status: 400, code: 'bad_json' },
  );

  const uuid = '3f0c9d4e-1b2a-4c5d-8e6f-7a8b9c0d1e2f';
  cases.push(
    { name: 'job id that is not a UUID', group: 'id', requests: [{ method: 'GET', path: '/api/jobs/not-a-uuid' }], status: 404, code: 'not_found' },
    { name: 'job id with SQL', group: 'id', requests: [{ method: 'GET', path: `/api/jobs/${encodeURIComponent("1' or '1'='1")}` }], status: 404, code: 'not_found' },
    { name: 'someone else\'s (unknown) job id', group: 'id', requests: [{ method: 'GET', path: `/api/jobs/${uuid}` }], status: 404, code: 'not_found' },
    { name: 'delete photo 123', group: 'id', requests: [{ method: 'DELETE', path: '/api/photos/123' }], status: 404, code: 'not_found' },
    { name: 'image index that is not a number', group: 'id', requests: [{ method: 'GET', path: `/api/generations/${uuid}/images/abc` }], status: 404, code: 'not_found' },
    { name: 'generation id that is not a UUID', group: 'id', requests: [{ method: 'GET', path: '/api/generations/..%2F..%2Fetc/control' }], status: 404, code: 'not_found' },
    { name: 'negative sample index', group: 'id', requests: [{ method: 'GET', path: `/api/adapters/${uuid}/samples/-1` }], status: 404, code: 'not_found' },
    { name: 'unknown route', group: 'id', requests: [{ method: 'GET', path: '/api/../../etc/passwd' }], status: 404, code: 'not_found' },
  );

  // Limits: a 21st photo, and many uploads at once (bombs and broken files in parallel, and against a full set).
  const parallelBad = [cut(photo), await pngClaiming(20000, 20000), await flatLosslessWebp(6320, 6320), jpegClaiming(photo, 4000, 4000), await animatedGif(), text, cut(png), bmp(300, 300)];
  cases.push(
    { name: 'a 21st photo', group: 'limits', byFullPerson: true, requests: [photoUpload('21.jpg', await makePhoto(921))], status: 422, code: 'too_many_photos' },
    { name: '12 uploads at once against a full set', group: 'limits', byFullPerson: true, requests: await Promise.all(Array.from({ length: 12 }, async (_, i) => photoUpload(`p${i}.jpg`, await makePhoto(930 + i)))), status: 422, code: 'too_many_photos' },
    { name: '8 broken and bomb uploads at once', group: 'limits', requests: parallelBad.map((data, i) => photoUpload(`b${i}.jpg`, data)), status: 422 },
  );

  if (slow) {
    // Byte-level mutations of valid photos: each must be read or refused with a 4xx, never crash anything.
    const random = prng(13);
    for (const [format, base] of [['JPEG', photo], ['PNG', png], ['WebP', webp]] as const) {
      for (let n = 0; n < 40; n++) {
        const mutated = Buffer.from(base);
        for (let k = 0; k < 1 + Math.floor(random() * 20); k++) mutated[16 + Math.floor(random() * (mutated.length - 16))] = Math.floor(random() * 256);
        cases.push({ name: `${format} with flipped bytes #${n}`, group: 'fuzz', requests: [photoUpload('fuzz.jpg', mutated)], status: -1 });
      }
    }
  }
  return cases;
}
