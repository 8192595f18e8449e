#!/usr/bin/env bash
# An echo round trip: lines go out as messages through `wsloop client`, and the echoes come
# back as lines, text and binary alike. Works against any wsloop (WSLOOP_URL is fine).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

start_server

# Text: each stdin line is one message; when stdin ends the client closes (1000) and exits 0
# once the server has answered, so every echo is printed first.
expected=$'hello\nwörld\n\n{"json": true}'
actual="$(printf '%s\n' "$expected" | client "$URL/echo")"
expect_eq "text echo on /echo" "$expected" "$actual"

# Binary: the same lines sent as binary messages come back byte for byte.
actual="$(printf '%s\n' "$expected" | client "$URL/" --binary)"
expect_eq "binary echo on /" "$expected" "$actual"

# With --count the client exits as soon as that many messages arrived.
actual="$(printf 'one\ntwo\nthree\n' | client "$URL/echo" --count 2 --timeout 5s)"
expect_eq "--count 2" $'one\ntwo' "$actual"
