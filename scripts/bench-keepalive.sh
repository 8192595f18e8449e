#!/usr/bin/env bash
# What keepalive costs: 10 000 idle WebSocket connections held by ../shared/bench's loadgen
# (which answers pings), the server pinned to cpu 0 and the loadgen to cpu 1, and the
# server's CPU over a measured window, with pings off and with `--ping-interval 1s`.
# Usage: scripts/bench-keepalive.sh [CONNS] [SECONDS]     (a benchmark: not run by cargo test)
set -euo pipefail
cd "$(dirname "$0")/.."
conns="${1:-10000}"
secs="${2:-20}"
lg="../shared/bench/target/release/loadgen"
[ -x "$lg" ] || (cd ../shared/bench && cargo build --release -p loadgen >/dev/null 2>&1)
[ -x target/release/wsloop ] || cargo build --release >/dev/null 2>&1
ulimit -n $((conns + 1000))

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

measure() { # measure LABEL FLAGS...
  local label="$1" port log pid lgpid t0 t1 hz
  shift
  log=$(mktemp)
  taskset -c 0 target/release/wsloop --port 0 --max-connections $((conns + 100)) "$@" 2>"$log" &
  pid=$!
  for _ in $(seq 100); do
    port=$(grep -o 'listening on ws://[^ ]*' "$log" | sed 's/.*://') && [ -n "$port" ] && break
    sleep 0.1
  done
  taskset -c 1 "$lg" idle --port "$port" -c "$conns" --settle 2 --hold $((secs + 4)) --pid "$pid" | grep -o "connected=[0-9]* failed=[0-9]* alive_after_hold=[0-9]*" &
  lgpid=$!
  # Wait until every connection is open, then let a few intervals pass before measuring.
  for _ in $(seq 300); do
    [ "$(ls /proc/$pid/fd | wc -l)" -ge "$conns" ] && break
    sleep 0.1
  done
  sleep 3
  hz=$(getconf CLK_TCK)
  t0=$(cpu_ticks "$pid")
  sleep "$secs"
  t1=$(cpu_ticks "$pid")
  local stats
  stats=$(curl -s "http://127.0.0.1:$port/stats" || true)
  wait "$lgpid" || true
  kill "$pid"
  wait "$pid" || true
  awk -v a="$t0" -v b="$t1" -v hz="$hz" -v s="$secs" -v l="$label" -v c="$conns" \
    'BEGIN { printf "%-28s %d conns: server CPU %.2f%% of a core\n", l, c, 100 * (b - a) / hz / s }'
  echo "  stats: $stats" | grep -o '"websockets":[0-9]*\|"ping_timeouts":[0-9]*' | tr '\n' ' '
  echo
  rm -f "$log"
}

measure "pings off" --ping-interval 0
measure "--ping-interval 1s" --ping-interval 1s --pong-timeout 10s
