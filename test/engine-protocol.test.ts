// The TypeScript protocol types against the same fixtures the Python engine's tests use.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  cancelResult, engineRequest, errorEvent, eventEnvelope, generateResult, pingResult, previewEvent, progressEvent, readyEvent, trainResult,
} from '../src/engine/protocol.ts';

const root = 'test/fixtures/engine-protocol';
const fixtures = (dir: string) =>
  readdirSync(join(root, dir)).filter((f) => f.endsWith('.json')).map((f) => [f, JSON.parse(readFileSync(join(root, dir, f), 'utf8'))] as const);

test('every valid request fixture parses', () => {
  const all = fixtures('requests');
  assert.ok(all.length >= 5);
  for (const [name, body] of all) {
    const parsed = engineRequest.safeParse(body);
    assert.ok(parsed.success, `${name}: ${parsed.error?.message}`);
  }
});

test('every invalid request fixture is rejected for its own fault', () => {
  const all = fixtures('invalid-requests');
  assert.ok(all.length >= 10);
  for (const [name, { _expect_error_code: expected, ...request }] of all) {
    // The engine answers these as bad_request; the annotation itself must not be what makes the request invalid.
    assert.equal(expected ?? 'bad_request', 'bad_request', name);
    assert.ok(!engineRequest.safeParse(request).success, `${name} should be rejected`);
  }
});

test('every event fixture parses with the schema of its kind', () => {
  const byResultField = { pong: pingResult, cancelled: cancelResult, output: trainResult, images: generateResult } as const;
  const all = fixtures('events');
  assert.ok(all.length >= 8);
  for (const [name, body] of all) {
    const envelope = eventEnvelope.parse(body);
    const schema = {
      ready: readyEvent,
      progress: progressEvent,
      preview: previewEvent,
      error: errorEvent,
      result: Object.entries(byResultField).find(([field]) => field in body)?.[1],
    }[envelope.event];
    assert.ok(schema, `${name}: no schema for this result`);
    const parsed = schema.safeParse(body);
    assert.ok(parsed.success, `${name}: ${parsed.error?.message}`);
  }
});
