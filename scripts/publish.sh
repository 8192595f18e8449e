#!/usr/bin/env bash
# Publishing over plain HTTP: `curl -X POST /publish/news` reaches the WebSocket clients of room
# "news" and answers how many got it; with --publish-token a request without the right
# `Authorization: Bearer` header gets 401. Needs curl. With WSLOOP_URL, the server must have no
# --publish-token, and the token part (which starts its own server) is skipped.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need_curl

start_server

# A client listens in room "news" until its first message.
background client "$URL/room/news" --count 1 --timeout 10s -v </dev/null >"$WORK/news.out" 2>"$WORK/news.err"
listener=$LAST_PID
wait_for_text "$WORK/news.err" "connected"

# Content-Type text/* makes a text message; the answer counts the clients it went to.
answer="$(curl -sS --max-time 5 -X POST -H 'Content-Type: text/plain' \
  --data-binary 'breaking: wsloop speaks HTTP too' "$HTTP/publish/news")"
expect_eq "the publish answer" '{"delivered":1}' "$(tr -d ' \n' <<<"$answer")"
wait "$listener" || fail "the listener exited with $? ($(cat "$WORK/news.err"))"
expect_eq "the listener's message" "breaking: wsloop speaks HTTP too" "$(cat "$WORK/news.out")"

# Nobody listens in room "empty": delivered to no one, and that is not an error.
answer="$(curl -sS --max-time 5 -X POST -H 'Content-Type: text/plain' --data-binary 'x' "$HTTP/publish/empty")"
expect_eq "publish to an empty room" '{"delivered":0}' "$(tr -d ' \n' <<<"$answer")"

if [ -n "${WSLOOP_URL:-}" ]; then
  echo "skipped: the --publish-token part (WSLOOP_URL is set)"
  exit 0
fi

# A server that wants a token: 401 without it or with a wrong one, 200 with it.
start_server --publish-token s3cret
status() { curl -sS --max-time 5 -o /dev/null -w '%{http_code}' -X POST --data-binary 'x' "$@" "$HTTP/publish/news"; }
expect_eq "no token" 401 "$(status)"
expect_eq "a wrong token" 401 "$(status -H 'Authorization: Bearer nope')"
expect_eq "the right token" 200 "$(status -H 'Authorization: Bearer s3cret')"
