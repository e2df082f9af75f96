#!/usr/bin/env bash
# Runs every test: typecheck, the engine's pytest suite (tiny profile), then the TypeScript suites against
# the real Postgres, Redis and engine. RUN_SLOW=1 adds long runs (e.g. 500 people in test/load.test.ts, 120 mutated
# photos in test/hostile-input.test.ts).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
if ! command -v chromium >/dev/null 2>&1; then
  log "installing Debian chromium for the browser test"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
# Debian's docker-compose (1.29) validates docker-compose.yml in test/compose.test.ts; no Docker engine is needed.
if ! command -v docker-compose >/dev/null 2>&1; then
  log "installing Debian docker-compose for the compose test"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
fi
export ENGINE_CACHE_DIR="${ENGINE_CACHE_DIR:-$PWD/var/engine-cache}"
log "typecheck"
npx tsc --noEmit
log "engine tests (pytest, tiny profile)"
(cd worker/engine && ../../.venv/bin/python -m pytest -q -p no:cacheprovider)
log "TypeScript tests"
node --import tsx test/run.ts
