// The playground is honest about its face checks, in a real browser (Debian chromium via playwright-core): without
// the face models it says the checks are off, why, and how to turn them on, and never calls an upload "good"; with
// them (the fixture models here) the banner is gone and a good photo reads as such.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { repoRoot } from '../src/config/index.ts';
import { PlaygroundClient, startStack, type Stack } from './helpers/stack.ts';
import { fixtureModelsDir, sceneJpeg } from './helpers/vision.ts';

const chromiumPath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const skip = !existsSync(chromiumPath) && 'chromium is not installed';
const photos = resolve(repoRoot, '..', 'shared', 'photos');
let browser: Browser;

before(async () => {
  if (skip) return;
  browser = await chromium.launch({ executablePath: chromiumPath, args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'] });
});
after(() => browser?.close());

/** A cat and a coffee cup: real photos from ../shared when it is there, else pictures with no face in them. */
async function facelessPictures(dir: string): Promise<string[]> {
  const names = ['chelsea.png', 'coffee.png'];
  if (names.every((n) => existsSync(join(photos, n)))) return names.map((n) => join(photos, n));
  return Promise.all([0, 1].map(async (i) => {
    const path = join(dir, `faceless-${i}.jpg`);
    await writeFile(path, await sceneJpeg({ width: 700 + 100 * i, height: 600 }));
    return path;
  }));
}

describe('without the face models', { skip }, () => {
  let stack: Stack;
  before(async () => { stack = await startStack({ VISION_MODELS_DIR: mkdtempSync(join(tmpdir(), 'no-models-')) }, false); });
  after(() => stack?.close());

  test('the API says which face models are missing and the command that installs them', async () => {
    const { body } = await new PlaygroundClient(stack.baseUrl).json('/api/info');
    assert.deepEqual(body.vision, {
      faceChecks: false, pose: false, likeness: false,
      missing: { face: ['face_detection_yunet_2023mar.onnx', 'face_recognition_sface_2021dec.onnx'], pose: ['yolox_l.onnx', 'dw-ll_ucoco_384.onnx'] },
      setupCommand: 'npm run models -- --cpu',
    });
    assert.doesNotMatch(JSON.stringify(body), /\/models\//, 'no server paths');
  });

  test('the page says the checks are off, why and how to turn them on; a cat and a coffee cup are "not checked", never "good"', async () => {
    const page = await browser.newPage();
    await page.goto(stack.baseUrl);
    const banner = page.locator('#face-checks-off');
    await banner.waitFor();
    const text = await banner.innerText();
    assert.match(text, /^Face checks are off: the face models \(face_detection_yunet_2023mar\.onnx, face_recognition_sface_2021dec\.onnx\) are not installed/);
    assert.match(text, /A photo without your face — a cat, a coffee cup — is accepted and trained on/);
    assert.equal(await banner.locator('code').innerText(), 'npm run models -- --cpu');
    assert.match(await page.locator('#pose-hint').innerText(), /not installed here \(npm run models -- --cpu\)/);

    await page.setInputFiles('#photos', await facelessPictures(stack.env.dir));
    await page.click('#upload');
    await page.locator('#upload-results li').nth(1).waitFor();
    const items = await page.locator('#upload-results li').evaluateAll((lis) => lis.map((li) => [li.className, li.textContent]));
    assert.equal(items.length, 2);
    for (const [cls, line] of items) {
      assert.equal(cls, 'warn');
      assert.match(line!, /: accepted, face not checked$/);
    }
    await page.locator('#photo-count', { hasText: '2 photos (faces not checked)' }).waitFor();
    assert.equal(await page.getByText('looks good').count(), 0);
    assert.equal(await page.getByText('good photo').count(), 0);
    await page.close();
  });
});

describe('with the face models', { skip }, () => {
  let stack: Stack;
  before(async () => { stack = await startStack({ VISION_MODELS_DIR: fixtureModelsDir }, false); });
  after(() => stack?.close());

  test('no banner; a good photo "looks good", a faceless one is refused with the reason', async () => {
    const page = await browser.newPage();
    await page.goto(stack.baseUrl);
    await page.locator('#pose-hint', { hasText: 'their pose is extracted' }).waitFor();
    assert.equal(await page.locator('#face-checks-off').isVisible(), false);
    const good = join(stack.env.dir, 'me.jpg'), empty = join(stack.env.dir, 'wall.jpg');
    await writeFile(good, await sceneJpeg({ width: 900, height: 1200, faces: [{ x: 290, y: 300, w: 320, h: 380 }] }));
    await writeFile(empty, await sceneJpeg({ width: 900, height: 900 }));
    await page.setInputFiles('#photos', [good, empty]);
    await page.click('#upload');
    await page.locator('#upload-results li.bad', { hasText: 'wall.jpg' }).waitFor();
    assert.equal(await page.locator('#upload-results li.ok').innerText(), 'me.jpg: looks good');
    assert.match(await page.locator('#upload-results li.bad').innerText(), /^wall\.jpg: .*face/i);
    await page.locator('#photo-count', { hasText: '1 good photo;' }).waitFor();
    await page.close();
  });
});
