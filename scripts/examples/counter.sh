#!/usr/bin/env bash
# A tiny --exec program: counts from 1 to N (default 10), one number a line, a beat apart, then
# exits 0. Under `wsloop --exec`, each line becomes a message and the exit a close (1000).
set -euo pipefail
n="${1:-10}"
for ((i = 1; i <= n; i++)); do
  echo "$i"
  sleep 0.1
done
