#!/bin/sh
# ENGINE_PYTHON for load tests: whatever arguments the worker passes (-m portrait_engine …), run the instant stand-in.
exec node --import tsx "$(dirname "$0")/instant-engine.ts"
