#!/usr/bin/env bash
# websocketd-style: `wsloop --exec scripts/examples/counter.sh -- 3` runs the program once per
# WebSocket connection on /exec; its stdout lines arrive as messages, and when it exits 0 the
# server closes with 1000. With WSLOOP_URL, that server must run with exactly that --exec.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

start_server --exec "$ROOT/scripts/examples/counter.sh" -- 3

# --no-close: stdin (empty) ending must not close the connection; read until the server closes.
# -v prints the close to stderr; the client exits 0 only on a normal close.
actual="$(client "$URL/exec" --no-close --timeout 10s -v </dev/null 2>"$WORK/client.err")" \
  || fail "the client exited with $?: $(cat "$WORK/client.err")" "1 2 3, close 1000" "$actual"
expect_eq "the program's lines" $'1\n2\n3' "$actual"
expect_eq "the close code" "closed by server: 1000" \
  "$(grep -o 'closed by server: [0-9]*' "$WORK/client.err" || cat "$WORK/client.err")"

# Two connections, two programs: each counts on its own.
background client "$URL/exec" --no-close --timeout 10s </dev/null >"$WORK/one.out"
one=$LAST_PID
client "$URL/exec" --no-close --timeout 10s </dev/null >"$WORK/two.out" || fail "second client exited with $?"
wait "$one" || fail "first client exited with $?"
expect_eq "first of two at once" $'1\n2\n3' "$(cat "$WORK/one.out")"
expect_eq "second of two at once" $'1\n2\n3' "$(cat "$WORK/two.out")"
