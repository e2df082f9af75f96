// Long polling without head-of-line blocking (bots/telegram/update-runner.ts): a slow update in one chat does not
// hold up other chats, and one chat's updates are still handled in the order they were sent.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { startChatStack, type ChatStack } from './helpers/chat-stack.ts';
import { makePhotos } from './helpers/images.ts';
import type { EmulatedUser } from './emulators/telegram.ts';

let chat: ChatStack;
before(async () => { chat = await startChatStack(); });
after(async () => { await chat?.close(); });

const slow: EmulatedUser = { id: 61_001, first_name: 'Slow', language_code: 'en' };
const quick: EmulatedUser = { id: 61_002, first_name: 'Quick', language_code: 'en' };
const HOLD_MS = 3000;

test('a photo whose download hangs for 3 s delays neither another chat\'s /help nor, out of order, its own chat', { timeout: 60_000 }, async () => {
  const { telegram } = chat;
  const [photo] = await makePhotos(1, 90);
  const lastMessage = () => Math.max(0, ...telegram.messages.keys());
  let mark = lastMessage();
  telegram.sendText(slow, '/train');
  await telegram.waitFor(() => telegram.botMessages(slow.id).find((m) => m.message_id > mark), 'the training session');

  // The slow person's photo: its download waits, as a slow Telegram file server would.
  let downloading!: () => void;
  const started = new Promise<void>((r) => { downloading = r; });
  telegram.onCall('getFile', async () => { downloading(); await new Promise((r) => setTimeout(r, HOLD_MS)); });
  mark = lastMessage();
  telegram.sendDocument(slow, photo!, 'slow.jpg', 'image/jpeg');
  await started;
  telegram.sendText(slow, '/status');
  const asked = Date.now();
  telegram.sendText(quick, '/help');
  await telegram.waitFor(() => telegram.botMessages(quick.id).find((m) => m.message_id > mark), 'the quick person\'s help');
  const quickMs = Date.now() - asked;
  assert.ok(quickMs < HOLD_MS / 2, `another chat answered in ${quickMs} ms while the photo download was held ${HOLD_MS} ms`);

  const answers = await telegram.waitFor(() => {
    const mine = telegram.botMessages(slow.id).filter((m) => m.message_id > mark);
    return mine.length >= 2 && mine;
  }, 'both answers to the slow person', 20_000);
  telegram.onCall('getFile', undefined);
  assert.match(answers[0]!.text!, /slow\.jpg: accepted/, 'the photo is answered first');
  assert.match(answers[1]!.text!, /Photos: 1/, 'then /status, which already counts it');
  console.log(`# polling: another chat answered in ${quickMs} ms while one chat's update was held ${HOLD_MS} ms`);
});
