#!/usr/bin/env bash
# Browser tests for the pages in www/: headless Chromium (Debian's package)
# driven by playwright-core, against the release build of wsloop.
#
#   bash tests/browser/run.sh            # from anywhere
#
# Installs what is missing: chromium (apt), node_modules (npm ci) and the
# release binary (cargo build --release, which also picks up edited pages).
# Screenshots land in tests/browser/screenshots/. Exits non-zero if any case
# fails.
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
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

if [ ! -d "$HERE/node_modules/playwright-core" ]; then
  echo "browser tests: npm ci" >&2
  (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
fi

# The pages are compiled into the binary, so an existing binary may hold old
# ones: cargo rebuilds only what changed (and builds it if absent). Set
# WSLOOP_BIN to test another binary as it is.
if [ -z "${WSLOOP_BIN:-}" ]; then
  if command -v cargo >/dev/null; then
    cargo build --release --quiet
  elif [ ! -x "$ROOT/target/release/wsloop" ]; then
    echo "browser tests: target/release/wsloop is missing and cargo is not installed" >&2
    exit 1
  fi
fi

mkdir -p "$HERE/screenshots"
# The test file bounds every wait itself; this is the outer limit.
timeout --kill-after=10 300 node --test --test-timeout=120000 "$HERE"/*.test.mjs
