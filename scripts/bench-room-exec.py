#!/usr/bin/env python3
"""A room program's output fanned out to every member, loopback only, bounded in time.

MEMBERS clients join /room/ROOM of a running wsloop whose program for ROOM waits for one
line, then prints 1..LINES and keeps reading. Once all have joined, the first member sends
"go"; the clock runs until every member has received line LINES. Reports lines/s (per
member) and messages/s delivered in total, and the server's CPU time over the run.

Usage: scripts/bench-room-exec.py PORT PID [MEMBERS] [LINES] [ROOM]
   e.g. target/release/wsloop --port 9001 --room-exec bench=/bin/sh \\
          --room-exec-arg 'bench=-c' --room-exec-arg 'bench=read go; seq 1 200000; exec cat' &
        scripts/bench-room-exec.py 9001 $! 10 200000 bench
"""
import base64
import os
import selectors
import socket
import struct
import sys
import time

HOST = "127.0.0.1"
LIMIT = 120  # seconds: the run stops by itself


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def join(port, room):
    s = socket.create_connection((HOST, port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /room/{room} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        b = s.recv(1)
        if not b:
            raise SystemExit("connection closed during the upgrade")
        head += b
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit(head.decode(errors="replace"))
    s.setblocking(False)
    return s


def masked_text(text):
    data = text.encode()
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    return bytes([0x81, 0x80 | len(data)]) + mask + body


class Member:
    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.last = None
        self.count = 0

    def feed(self, data, want):
        self.buf += data
        while len(self.buf) >= 2:
            n = self.buf[1] & 0x7F
            at = 2
            if n == 126:
                if len(self.buf) < 4:
                    return
                n = struct.unpack(">H", self.buf[2:4])[0]
                at = 4
            elif n == 127:
                if len(self.buf) < 10:
                    return
                n = struct.unpack(">Q", self.buf[2:10])[0]
                at = 10
            if len(self.buf) < at + n:
                return
            op = self.buf[0] & 0x0F
            payload = bytes(self.buf[at : at + n])
            del self.buf[: at + n]
            if op == 8:
                raise SystemExit(f"closed by the server: {payload[:2].hex()} {payload[2:]!r}")
            if op == 1 and payload.isdigit():
                self.count += 1
                self.last = int(payload)
        return

    def done(self, want):
        return self.last == want


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    port, pid = int(sys.argv[1]), int(sys.argv[2])
    members = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    lines = int(sys.argv[4]) if len(sys.argv) > 4 else 200_000
    room = sys.argv[5] if len(sys.argv) > 5 else "bench"
    ms = [Member(join(port, room)) for _ in range(members)]
    sel = selectors.DefaultSelector()
    for m in ms:
        sel.register(m.sock, selectors.EVENT_READ, m)
    cpu0 = cpu_seconds(pid)
    start = time.monotonic()
    ms[0].sock.setblocking(True)
    ms[0].sock.sendall(masked_text("go"))
    ms[0].sock.setblocking(False)
    while not all(m.done(lines) for m in ms):
        if time.monotonic() - start > LIMIT:
            raise SystemExit(f"not done in {LIMIT}s: {[m.last for m in ms]}")
        for key, _ in sel.select(timeout=1):
            m = key.data
            try:
                data = m.sock.recv(1 << 20)
            except BlockingIOError:
                continue
            if not data:
                raise SystemExit("a member was disconnected")
            m.feed(data, lines)
    took = time.monotonic() - start
    cpu = cpu_seconds(pid) - cpu0
    counts = {m.count for m in ms}
    print(
        f"{members} members x {lines} lines: {took:.2f} s, {lines / took:,.0f} lines/s, "
        f"{members * lines / took:,.0f} messages/s delivered, server CPU {cpu:.2f} s "
        f"({100 * cpu / took:.0f}%); lines per member {sorted(counts)}"
    )
    for m in ms:
        m.sock.close()


if __name__ == "__main__":
    main()
