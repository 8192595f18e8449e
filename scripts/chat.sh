#!/usr/bin/env bash
# Two clients in a room: B receives what A sends to /room/lobby, while C, in another room,
# does not. Needs a server without --room-echo or --room-events (WSLOOP_URL is fine if so).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

start_server

# B and C listen, each until its first message (or 10s). -v prints "connected" once the
# upgrade is done, and by then the server has put the client in its room.
background client "$URL/room/lobby" --count 1 --timeout 10s -v </dev/null >"$WORK/b.out" 2>"$WORK/b.err"
b=$LAST_PID
background client "$URL/room/other" --count 1 --timeout 10s -v </dev/null >"$WORK/c.out" 2>"$WORK/c.err"
c=$LAST_PID
wait_for_text "$WORK/b.err" "connected"
wait_for_text "$WORK/c.err" "connected"

# A says something in the lobby, then D in the other room. The server handles A's message
# before D connects, so if the lobby leaked into "other", C's first message would be A's.
echo "hello from A" | client "$URL/room/lobby" >"$WORK/a.out"
echo "hello from D" | client "$URL/room/other" >"$WORK/d.out"

wait "$b" || fail "client B exited with $? ($(cat "$WORK/b.err"))"
wait "$c" || fail "client C exited with $? ($(cat "$WORK/c.err"))"
expect_eq "B, in the lobby, got A's message" "hello from A" "$(cat "$WORK/b.out")"
expect_eq "C, in another room, got only D's" "hello from D" "$(cat "$WORK/c.out")"
expect_eq "A is not sent its own message" "" "$(cat "$WORK/a.out")"
