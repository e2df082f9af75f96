// The playground page in a real browser (Debian chromium via playwright-core): upload photos, train, imagine,
// and see the image appear.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { startStack, type Stack } from './helpers/stack.ts';
import { makePhotos } from './helpers/images.ts';

const chromiumPath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
let stack: Stack;
let browser: Browser;

before(async () => {
  // No face models (as on a bare install): the page must say the face checks are off.
  stack = await startStack({ MIN_TRAINING_PHOTOS: '3', VISION_MODELS_DIR: mkdtempSync(join(tmpdir(), 'no-models-')) });
  browser = await chromium.launch({
    executablePath: chromiumPath,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});
after(async () => {
  await browser?.close();
  await stack?.close();
});

test('a person uploads photos, trains, imagines and sees their portrait', { timeout: 240_000, skip: !existsSync(chromiumPath) && 'chromium is not installed' }, async () => {
  const files = await Promise.all((await makePhotos(4, 300)).map(async (data, i) => {
    const path = join(stack.env.dir, `photo-${i}.jpg`);
    await writeFile(path, data);
    return path;
  }));
  const notPhoto = join(stack.env.dir, 'notes.jpg');
  await writeFile(notPhoto, 'just text');

  const page = await browser.newPage();
  await page.goto(stack.baseUrl);
  await page.locator('#notice', { hasText: 'images are noise' }).waitFor();

  await page.setInputFiles('#photos', [...files, notPhoto]);
  await page.click('#upload');
  await page.locator('#upload-results li.bad', { hasText: 'not an image' }).waitFor();
  assert.equal(await page.locator('#upload-results li.warn', { hasText: 'accepted, but the face was not checked' }).count(), 4);
  await page.locator('#photo-count', { hasText: '4 photos (faces not checked)' }).waitFor();

  await page.click('#train');
  await page.locator('#train-status', { hasText: 'Your model is ready' }).waitFor({ timeout: 180_000 });
  // Not a silent blank where the likeness score would be: it says why there is none.
  assert.match(await page.locator('#train-status').innerText(), /Likeness was not scored: the face models are not installed here \(npm run models -- --cpu\)\./);

  await page.fill('#prompt', 'a portrait of me as an astronaut');
  await page.click('#imagine');
  // Sample portraits from the training are in the gallery already; wait for the /imagine result itself.
  assert.ok((await page.locator('#gallery figure', { hasText: 'sample of model v1' }).count()) > 0);
  const image = page.locator('#gallery figure', { hasText: '/imagine' }).locator('img');
  await image.waitFor({ timeout: 120_000 });
  await image.evaluate((img: HTMLImageElement) => img.decode());
  const size = await image.evaluate((img: HTMLImageElement) => [img.naturalWidth, img.naturalHeight]);
  assert.deepEqual(size, [512, 512]);
  // Captioned with the person's words and what was painted, the training token read as "you".
  const caption = await page.locator('#gallery figure', { hasText: '/imagine' }).locator('figcaption').textContent();
  assert.equal(caption, '/imagine “a portrait of me as an astronaut” — painted from: a portrait of you as an astronaut');

  // A style from the list, with no words: the caption names it.
  assert.ok((await page.locator('#style option').count()) >= 7, 'the presets are offered');
  await page.fill('#prompt', '');
  await page.selectOption('#style', 'watercolor');
  await page.click('#imagine');
  const styled = page.locator('#gallery figure', { hasText: '/imagine style:watercolor' }).locator('figcaption');
  await styled.waitFor({ timeout: 120_000 });
  assert.match((await styled.textContent())!, /painted from: a soft watercolor portrait of you/);
  assert.equal(await page.locator('#gallery figcaption', { hasText: 'sks' }).count(), 0);
  await page.screenshot({ path: join(stack.env.dir, 'playground.png') });
});
