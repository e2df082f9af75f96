#!/usr/bin/env bash
# Starts the whole stack: migrations, worker + engine, web playground (and the bots whose tokens are set).
# With no GPU configured it runs the tiny CPU engine (ENGINE_PROFILE=tiny).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec node --import tsx bin/start.ts
