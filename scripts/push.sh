#!/usr/bin/env bash
# Server push on a timer: with --push-every 200ms --push-text 'tick {n}' the server sends every
# WebSocket client a numbered tick; a client that waits for three sees three consecutive ones.
# With WSLOOP_URL, that server must run with those two flags.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

start_server --push-every 200ms --push-text 'tick {n}'

# No stdin to send; --count 3 keeps the client reading until three messages (or 10s).
actual="$(client "$URL/" --count 3 --timeout 10s </dev/null)" \
  || fail "the client exited with $? before three ticks" "3 ticks" "$actual"

# {n} counts from the server's start, so a client that joins late sees later numbers: check the
# shape and that they are consecutive.
first="$(head -1 <<<"$actual" | sed -n 's/^tick \([0-9][0-9]*\)$/\1/p')"
[ -n "$first" ] || fail "the first message is not a tick" "tick N" "$actual"
expected="$(printf 'tick %d\n' "$first" "$((first + 1))" "$((first + 2))")"
expect_eq "three ticks in order" "$expected" "$actual"
