#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzing client against a fresh release build of wsloop on
# loopback: groups 1-10, then groups 12 and 13 (permessage-deflate, 216 cases, with the
# default --deflate shared; not repeated with --tls). Fails unless every case is OK, bar the three the suite rates
# INFORMATIONAL for every server (7.1.6, 7.13.1, 7.13.2). No NON-STRICT is accepted.
#
# Needs ../shared/autobahn beside the project (set AUTOBAHN_DIR to point elsewhere).
# Usage: scripts/autobahn.sh [--tls] [OUTDIR]   (default target/autobahn, or target/autobahn-tls)
#   --tls: the same cases over wss:// (a throwaway certificate made with openssl).
set -euo pipefail
cd "$(dirname "$0")/.."
AB="${AUTOBAHN_DIR:-../shared/autobahn}"
TLS=""
if [ "${1:-}" = "--tls" ]; then TLS=1; shift; fi
OUT="${1:-target/autobahn${TLS:+-tls}}"
[ -d "$AB" ] || { echo "autobahn.sh: no $AB (the shared Autobahn runner)" >&2; exit 2; }

bash "$AB/setup.sh" >/dev/null
cargo build --release --quiet
mkdir -p "$OUT"
LOG="$OUT/server.log"
SCHEME=ws
TLS_ARGS=()
if [ -n "$TLS" ]; then
  SCHEME=wss
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$OUT/key.pem" -out "$OUT/cert.pem" 2>/dev/null
  TLS_ARGS=(--tls-cert "$OUT/cert.pem" --tls-key "$OUT/key.pem")
fi
RUST_LOG=info ./target/release/wsloop --port 0 --bind 127.0.0.1 --close-timeout 2s "${TLS_ARGS[@]}" >"$LOG" 2>&1 &
PID=$!
trap 'kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  PORT=$(grep -o "listening on $SCHEME://127.0.0.1:[0-9]*" "$LOG" | grep -o '[0-9]*$' || true)
  [ -n "$PORT" ] && break
  sleep 0.1
done
[ -n "${PORT:-}" ] || { echo "autobahn.sh: server did not start" >&2; cat "$LOG" >&2; exit 1; }

bash "$AB/run.sh" "$SCHEME://127.0.0.1:$PORT/" "$OUT"
# permessage-deflate (groups 12 and 13) once, over plain ws://: TLS does not change it.
if [ -z "$TLS" ]; then
  EXCLUDE_CASES= bash "$AB/run.sh" "ws://127.0.0.1:$PORT/" "$OUT/deflate" '12.*,13.*'
fi
check() {
python3 "$AB/summarize.py" "$1" --json > "$1/summary.json"
python3 - "$1/summary.json" "$2" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
expected = int(sys.argv[2])
allowed = {"7.1.6", "7.13.1", "7.13.2"}
bad = []
for agent, r in s.items():
    if r["cases"] != expected:
        bad.append(f"{agent}: {r['cases']} cases run, expected {expected}")
    for c in r["non_ok"]:
        ok_info = c["id"] in allowed and c["behavior"] in ("OK", "INFORMATIONAL") \
            and c["behaviorClose"] in ("OK", "INFORMATIONAL")
        if not ok_info:
            bad.append(f"{c['id']}: behavior={c['behavior']} close={c['behaviorClose']} {c.get('result', '')}")
    print(f"autobahn: {r['cases']} cases, behavior {r['behavior']}, close {r['behaviorClose']}")
if bad:
    print("autobahn: NOT conformant:\n  " + "\n  ".join(bad))
    sys.exit(1)
print("autobahn: all cases OK (7.1.6, 7.13.1, 7.13.2 informational)")
PY
}
check "$OUT" 301
if [ -z "$TLS" ]; then check "$OUT/deflate" 216; fi
