#!/usr/bin/env bash
# Cross-node latency through Redis: a redis-server on a free port (no persistence), two
# release wsloop nodes on it, one sender on node A and MEMBERS clients on node B in one room
# (examples/cluster_latency.rs), RATE messages a second for SECONDS; prints p50/p90/p99.
# Loopback only, bounded; everything started here is stopped by its PID.
# Usage: scripts/bench-cluster.sh [MEMBERS] [RATE] [SECONDS]   (a benchmark: not run by cargo test)
# LOCAL=1 puts the sender on node B too: the same fan-out without the Redis hop, for comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
members="${1:-1000}"
rate="${2:-1000}"
secs="${3:-10}"
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }
cargo build --release --bin wsloop --example cluster_latency >/dev/null 2>&1
ulimit -n $((members + 1000))

pids=()
logs=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -f "${logs[@]}"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break
  sleep 0.1
done

node() { # node VAR: starts a node, sets VAR to its port (no $(...): the node would hold it open)
  local log p
  log=$(mktemp)
  logs+=("$log")
  target/release/wsloop --port 0 --redis "redis://127.0.0.1:$port" --redis-prefix bench \
    --max-connections $((members + 100)) >/dev/null 2>"$log" &
  pids+=($!)
  for _ in $(seq 100); do
    p=$(grep -o 'listening on ws://[^ ]*' "$log" | sed 's/.*://') && [ -n "$p" ] && { printf -v "$1" %s "$p"; return; }
    sleep 0.1
  done
  echo "node did not start: $(cat "$log")" >&2
  exit 1
}
node a
node b
sender=$a
[ -n "${LOCAL:-}" ] && sender=$b
timeout $((secs + 60)) target/release/examples/cluster_latency "127.0.0.1:$sender" "127.0.0.1:$b" \
  --members "$members" --rate "$rate" --seconds "$secs"
echo "node A redis: $(curl -s "http://127.0.0.1:$a/stats" | grep -o '"redis":{[^}]*}')"
echo "node B redis: $(curl -s "http://127.0.0.1:$b/stats" | grep -o '"redis":{[^}]*}')"
