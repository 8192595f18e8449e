#!/usr/bin/env bash
# Browser tests for the pages in www/: headless Chromium (Debian's package)
# driven by playwright-core, against the release build of wsloop.
#
#   bash tests/browser/run.sh            # from anywhere
#
# Installs what is missing: chromium (apt), node_modules (npm ci) and the
# release binary (cargo build --release). Screenshots land in
# tests/browser/screenshots/. Exits non-zero if any case fails.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CHROMIUM="${CHROMIUM_PATH:-/usr/bin/chromium}"
cd "$ROOT"

if [ ! -x "$CHROMIUM" ]; then
  echo "browser tests: installing chromium" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

if [ ! -d "$HERE/node_modules/playwright-core" ]; then
  echo "browser tests: npm ci" >&2
  (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
fi

if [ -z "${WSLOOP_BIN:-}" ] && [ ! -x "$ROOT/target/release/wsloop" ]; then
  echo "browser tests: building target/release/wsloop" >&2
  cargo build --release
fi

mkdir -p "$HERE/screenshots"
# The test file bounds every wait itself; this is the outer limit.
timeout --kill-after=10 300 node --test --test-timeout=120000 "$HERE"/*.test.mjs
