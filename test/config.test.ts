import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, loadConfig } from '../src/config/index.ts';

test('defaults give a runnable tiny-profile configuration', () => {
  const config = loadConfig({});
  assert.equal(config.engine.profile, 'tiny');
  assert.equal(config.training.resolution, 512);
  assert.equal(config.training.maxSteps, 20);
  assert.equal(config.likeness.samples, 4, 'every validation prompt × seed');
  assert.deepEqual([...config.roles], ['web', 'worker', 'telegram', 'discord']);
});

test('one error names every bad variable', () => {
  assert.throws(
    () => loadConfig({ DATABASE_URL: 'mysql://x', WEB_PORT: 'eighty', ENGINE_PROFILE: 'huge', ROLES: 'web,fax', TRAIN_MAX_STEPS: '-3' }),
    (error) => {
      assert.ok(error instanceof ConfigError);
      for (const name of ['DATABASE_URL', 'WEB_PORT', 'ENGINE_PROFILE', 'ROLES', 'TRAIN_MAX_STEPS']) assert.match(error.message, new RegExp(name));
      assert.equal(error.problems.length, 5);
      return true;
    },
  );
});

test('the real profile needs both model folders', () => {
  assert.throws(() => loadConfig({ ENGINE_PROFILE: 'real' }), /ENGINE_BASE_MODEL[\s\S]*ENGINE_CONTROLNET/);
});
