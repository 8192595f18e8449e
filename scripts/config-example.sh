#!/usr/bin/env bash
# Running wsloop from a config file (scripts/examples/service.toml): the file's settings apply,
# flags on the command line win over it, --print-config shows the result with the token
# masked, and the service answers /healthz. Needs curl; starts its own server.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need_curl
CONFIG="$ROOT/scripts/examples/service.toml"

# What is in effect: the file's values, the command line's port, the token masked.
printed="$("$WSLOOP" --config "$CONFIG" --port 9100 --print-config)"
expect_eq "port from the command line" "port = 9100" "$(grep '^port = ' <<<"$printed")"
expect_eq "root-room from the file" 'root-room = "lobby"' "$(grep '^root-room = ' <<<"$printed")"
expect_eq "the token masked" 'publish-token = "********"' "$(grep '^publish-token = ' <<<"$printed")"
grep -q change-me <<<"$printed" && fail "--print-config shows the token"

# start_server adds --port 0 --bind 127.0.0.1 on the command line: they win over the file.
start_server --config "$CONFIG"
expect_eq "/healthz" "ok" "$(curl -sS --max-time 5 "$HTTP/healthz")"

# The file's root-room and room-echo: a message to / comes back to its sender.
actual="$(printf 'hello lobby\n' | client "$URL/" --count 1 --timeout 10s)"
expect_eq "room-echo in the root room" "hello lobby" "$actual"

# The file's publish-token.
code() { curl -sS --max-time 5 -o /dev/null -w '%{http_code}' -X POST --data-binary x "$@" "$HTTP/publish/lobby"; }
expect_eq "publish without the token" 401 "$(code)"
expect_eq "publish with the file's token" 200 "$(code -H 'Authorization: Bearer change-me')"

# The file's log-format: every log line is a JSON object.
grep -q '"message":"listening on ws://' "$SERVER_LOG" || fail "no JSON log line" "" "$(cat "$SERVER_LOG")"
