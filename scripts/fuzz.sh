#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for N seconds each (default 30), after installing
# cargo-fuzz if it is missing. For developers, not CI: it needs a C++ compiler for libFuzzer
# and uses the nightly-only -Zsanitizer flags, unlocked on stable with RUSTC_BOOTSTRAP=1.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]     (default: 30, every target)
#   FUZZ_JOBS=2 scripts/fuzz.sh 60 connection      parallel fuzzing processes per target
# Crashes are written to fuzz/artifacts/TARGET/; reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${1:-30}"
shift || true
case "$SECS" in
  '' | *[!0-9]*) echo "fuzz.sh: SECONDS must be a whole number, got '$SECS'" >&2; exit 2 ;;
esac
if [ "$SECS" -lt 1 ] || [ "$SECS" -gt 86400 ]; then
  echo "fuzz.sh: SECONDS must be 1..86400" >&2
  exit 2
fi
ALL=(frame_header connection handshake http_static utf8 origin inflate chunked envelope tls_records)
if [ "$#" -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL[@]}"); fi
parallel=()
if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then
  parallel=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS")
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
# The fuzz crate is its own workspace with its own target dir (fuzz/target).
cargo fuzz build

failed=()
for t in "${TARGETS[@]}"; do
  [ -f "fuzz/fuzz_targets/$t.rs" ] || { echo "fuzz.sh: no target '$t'" >&2; exit 2; }
  mkdir -p "fuzz/corpus/$t"
  seeds=()
  [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
  dict=()
  case "$t" in handshake | http_static) dict=(-dict=fuzz/dicts/http.dict) ;; esac
  echo "=== $t: ${SECS}s" >&2
  # Build first, so that the time a rebuild takes (the tree may have changed since the build
  # above) does not count against the fuzzing: -max_total_time bounds the fuzzing, and
  # timeout(1) is only the backstop if it hangs anyway.
  cargo fuzz build "$t"
  if ! timeout --kill-after=10 $((SECS + 120)) \
    cargo fuzz run "$t" "fuzz/corpus/$t" "${seeds[@]}" -- \
    -max_total_time="$SECS" -timeout=10 -rss_limit_mb=512 -print_final_stats=1 "${parallel[@]}" "${dict[@]}"; then
    failed+=("$t")
  fi
done
# http_static makes a scratch web root per process.
rm -rf "${TMPDIR:-/tmp}"/wsloop-fuzz-[0-9]*

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz.sh: FAILED: ${failed[*]} (see fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz.sh: no crashes in ${TARGETS[*]}" >&2
