# shellcheck shell=bash
# Helpers shared by the example scripts; source it, don't run it.
#
#   WSLOOP       the binary to run (default target/release/wsloop, else target/debug/wsloop)
#   WSLOOP_URL   ws://HOST:PORT of a server already running: start_server then starts nothing
#                and uses it (scripts that need server flags say which in their header)
#
# Every wait is bounded; `fail` prints what was expected and what happened, then exits 1.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${WSLOOP:-}" ]; then
  WSLOOP="$ROOT/target/release/wsloop"
  [ -x "$WSLOOP" ] || WSLOOP="$ROOT/target/debug/wsloop"
fi
[ -x "$WSLOOP" ] || { echo "no wsloop binary at $WSLOOP (run cargo build, or set WSLOOP)" >&2; exit 2; }

# A scratch folder for logs and outputs, removed on exit.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/wsloop-example.XXXXXX")"
SERVER_PIDS=()
BG_PIDS=()

cleanup() {
  local pid
  for pid in "${BG_PIDS[@]}" "${SERVER_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${BG_PIDS[@]}" "${SERVER_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

# fail MESSAGE [EXPECTED ACTUAL]: print the message (and both values) and exit 1.
fail() {
  echo "FAIL: $1" >&2
  if [ $# -ge 3 ]; then
    printf -- '--- expected:\n%s\n--- actual:\n%s\n---\n' "$2" "$3" >&2
  fi
  exit 1
}

# expect_eq WHAT EXPECTED ACTUAL
expect_eq() {
  [ "$2" == "$3" ] || fail "$1" "$2" "$3"
  echo "ok: $1"
}

# start_server [FLAGS...]: start wsloop on a free loopback port and export PORT, URL (ws://)
# and HTTP (http://), plus SERVER_LOG; the server is killed (by PID) when the script exits.
# With WSLOOP_URL set, the flags are ignored and that server is used.
start_server() {
  if [ -n "${WSLOOP_URL:-}" ]; then
    URL="${WSLOOP_URL%/}"
    HTTP="http://${URL#ws://}"
    PORT="${URL##*:}"
    SERVER_LOG=/dev/null
    export PORT URL HTTP SERVER_LOG
    return
  fi
  SERVER_LOG="$(mktemp "$WORK/server.XXXXXX.log")"
  "$WSLOOP" --port 0 --bind 127.0.0.1 "$@" >"$SERVER_LOG.out" 2>"$SERVER_LOG" </dev/null &
  SERVER_PIDS+=($!)
  local pid=$! i
  PORT=""
  for i in $(seq 100); do
    PORT="$(grep -o 'listening on ws://127.0.0.1:[0-9]*' "$SERVER_LOG" | head -1 | grep -o '[0-9]*$' || true)"
    [ -n "$PORT" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$PORT" ]; then
    echo "server did not start ($WSLOOP --port 0 --bind 127.0.0.1 $*); its log:" >&2
    cat "$SERVER_LOG" >&2
    exit 1
  fi
  URL="ws://127.0.0.1:$PORT"
  HTTP="http://127.0.0.1:$PORT"
  export PORT URL HTTP SERVER_LOG
}

# client ARGS...: the wsloop client, never running longer than 30s.
client() {
  timeout 30 "$WSLOOP" client "$@"
}

# background CMD...: run CMD in the background; it is killed on exit if still running.
# Its PID is in LAST_PID. (`<&0` keeps the caller's stdin: without it a background command
# of a non-interactive shell reads /dev/null.)
background() {
  "$@" <&0 &
  LAST_PID=$!
  BG_PIDS+=("$LAST_PID")
}

# wait_for_text FILE TEXT [SECONDS]: wait (bounded, default 5s) until FILE contains TEXT.
wait_for_text() {
  local i
  for i in $(seq $((${3:-5} * 10))); do
    grep -qF -- "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  fail "no \"$2\" in $1 after ${3:-5}s" "$2" "$(cat "$1" 2>/dev/null)"
}

# need_curl: exit with a clear message unless curl is installed.
need_curl() {
  command -v curl >/dev/null || { echo "this script needs curl (apt-get install curl)" >&2; exit 2; }
}
