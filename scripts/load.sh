#!/usr/bin/env bash
# A bounded load: N clients (default 20) each send M messages (default 200) to /echo at once;
# every echo must come back, in order, to its sender. Prints the total time. All within 60s.
# Usage: scripts/load.sh [CLIENTS] [MESSAGES]        (WSLOOP_URL is fine)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

clients="${1:-20}"
messages="${2:-200}"
start_server

start=$(date +%s.%N)
pids=()
for ((i = 1; i <= clients; i++)); do
  # Client i's lines name it and number them, so a crossed echo shows up in the comparison.
  seq -f "client $i message %g" "$messages" >"$WORK/in.$i"
  background timeout 60 "$WSLOOP" client "$URL/echo" <"$WORK/in.$i" >"$WORK/out.$i" 2>"$WORK/err.$i"
  pids+=("$LAST_PID")
done
for ((i = 1; i <= clients; i++)); do
  wait "${pids[$((i - 1))]}" || fail "client $i exited with $?: $(cat "$WORK/err.$i")"
done
end=$(date +%s.%N)

for ((i = 1; i <= clients; i++)); do
  cmp -s "$WORK/in.$i" "$WORK/out.$i" ||
    fail "client $i's echoes differ" "$(head -3 "$WORK/in.$i") ..." "$(head -3 "$WORK/out.$i") ..."
done
total=$((clients * messages))
awk -v n="$total" -v c="$clients" -v s="$start" -v e="$end" 'BEGIN {
  t = e - s; printf "ok: %d clients x %d messages = %d echoes verified in %.2fs (%.0f msg/s)\n", c, n / c, n, t, n / t }'
