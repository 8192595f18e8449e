#!/usr/bin/env bash
# Echo and broadcast figures for `--workers`, with the shared bench's load generator.
#
#   scripts/bench-workers.sh LOADGEN NAME=BINARY[@CPUS][+FLAGS] ...
#
# e.g. scripts/bench-workers.sh ../shared/bench/target/release/loadgen \
#        main=/tmp/wsloop-main@0 w1=target/release/wsloop@0 'w2=target/release/wsloop@0,1+--workers 2'
#
# Each server runs pinned to CPUS (default 0), the loadgen to cpu 1 (`CLIENT_CPU`), on
# loopback, a fresh server per scenario; each run is bounded (`timeout`) and the server is
# stopped by its PID. Broadcast relays to every client, sender included: `--root-room all
# --room-echo`. Prints one line per cell: msg/s and p99 as the loadgen reports them.
set -euo pipefail
LG="$1"; shift
CLIENT_CPU="${CLIENT_CPU:-1}"
DURATION="${DURATION:-5}"
PORT="${PORT:-19400}"
SCENARIOS=(
  "e100|echo -c 100 -d 1 -s 16"
  "e1000|echo -c 1000 -d 1 -s 128"
  "b100|broadcast -c 100 -d 16 -s 64"
  "b1000|broadcast -c 1000 -d 16 -s 64"
)
for spec in "$@"; do
  name="${spec%%=*}"; rest="${spec#*=}"
  flags=""; [[ "$rest" == *+* ]] && { flags="${rest#*+}"; rest="${rest%%+*}"; }
  cpus="0"; [[ "$rest" == *@* ]] && { cpus="${rest#*@}"; rest="${rest%%@*}"; }
  bin="$rest"
  for sc in "${SCENARIOS[@]}"; do
    id="${sc%%|*}"; args="${sc#*|}"
    extra=""; [[ "$id" == b* ]] && extra="--root-room all --room-echo"
    # shellcheck disable=SC2086
    RUST_LOG=warn taskset -c "$cpus" "$bin" --port "$PORT" --access-log off $flags $extra &
    spid=$!
    for _ in $(seq 1 100); do
      timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT" 2>/dev/null && break
      sleep 0.05
    done
    # shellcheck disable=SC2086
    line=$(taskset -c "$CLIENT_CPU" timeout $((DURATION + 60)) "$LG" $args --port "$PORT" \
      --pid "$spid" --duration "$DURATION" --warmup 1 2>/dev/null | grep -v '^{' | tail -1 || true)
    echo "$name $id: $line"
    kill -TERM "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    PORT=$((PORT + 1))
  done
done
