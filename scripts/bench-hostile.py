#!/usr/bin/env python3
"""Hostile clients against a running wsloop, loopback only, bounded in count and time.

1. Slowloris: N tricklers each send a request head one byte every 500 ms; meanwhile a
   WebSocket client measures echo round trips. Reports the echo p50/p99 and how many
   tricklers the server cut (it must cut all of them at --handshake-timeout).
2. Garbage: M connections each send one kind of bad input (random bytes, a mangled head,
   garbage frames after a good upgrade); counts how many got an answer (an HTTP status or a
   close frame) and a TCP close, and the server's VmRSS before and after.

Usage: scripts/bench-hostile.py PORT PID [TRICKLERS] [GARBAGE]
   e.g. target/release/wsloop --port 9001 --handshake-timeout 3s --close-timeout 200ms &
        scripts/bench-hostile.py 9001 $! 1000 3000
"""
import os
import random
import selectors
import socket
import struct
import sys
import time

HOST = "127.0.0.1"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def ws_connect(port, path="/echo"):
    s = socket.create_connection((HOST, port), timeout=5)
    s.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            raise RuntimeError("closed during the handshake")
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def frame(opcode, payload, mask=b"\x01\x02\x03\x04"):
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise RuntimeError("closed")
        data += chunk
    return data


def echo_rtt(s):
    t = time.perf_counter()
    s.sendall(frame(1, b"ping-pong"))
    h = recv_exact(s, 2)
    recv_exact(s, h[1] & 0x7F)
    return time.perf_counter() - t


def slowloris(port, n):
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(n):
        s = socket.create_connection((HOST, port), timeout=5)
        s.setblocking(False)
        socks.append(s)
        sel.register(s, selectors.EVENT_READ)
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10000
    live = set(range(n))
    probe = ws_connect(port)
    rtts = []
    pos = 0
    deadline = time.time() + 60
    while live and time.time() < deadline:
        for i in list(live):
            try:
                socks[i].send(head[pos : pos + 1])
            except OSError:
                live.discard(i)
        pos += 1
        until = time.time() + 0.5
        while time.time() < until:
            rtts.append(echo_rtt(probe))
            for key, _ in sel.select(timeout=0.02):
                try:
                    if not key.fileobj.recv(4096):
                        live.discard(socks.index(key.fileobj))
                        sel.unregister(key.fileobj)
                except OSError:
                    live.discard(socks.index(key.fileobj))
                    sel.unregister(key.fileobj)
    rtts.sort()
    cut = n - len(live)
    for s in socks:
        s.close()
    probe.close()
    p = lambda q: rtts[min(len(rtts) - 1, int(q * len(rtts)))] * 1000  # noqa: E731
    print(
        f"slowloris: {n} tricklers, {cut} cut by the server after {pos} bytes each; "
        f"echo during it: {len(rtts)} round trips, p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms"
    )
    return cut == n


def garbage(port, pid, m):
    rng = random.Random(7)
    before = rss_kib(pid)
    answered = 0
    closed = 0
    for i in range(m):
        kind = i % 3
        try:
            if kind == 2:
                s = ws_connect(port)
                junk = bytearray(rng.getrandbits(8) for _ in range(200))
                junk[0] |= 0x70  # reserved bits: a frame no extension explains
                s.sendall(bytes(junk))
            else:
                s = socket.create_connection((HOST, port), timeout=5)
                if kind == 0:
                    s.sendall(bytes(rng.getrandbits(8) for _ in range(300)) + b"\r\n\r\n")
                else:
                    s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                              b"Connection: Upgrade\r\nSec-WebSocket-Version: 99\r\n"
                              b"Sec-WebSocket-Key: !!\r\n\r\n")
            s.settimeout(5)
            got = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    closed += 1
                    break
                got += chunk
        except (ConnectionResetError, BrokenPipeError):
            closed += 1
        except OSError:
            pass
        finally:
            s.close()
        if got.startswith(b"HTTP/1.1 4") or got.startswith(b"HTTP/1.1 5") or (got and got[0] == 0x88):
            answered += 1
    time.sleep(1)
    after = rss_kib(pid)
    print(f"garbage: {m} connections, {answered} answered (status or close frame), {closed} closed by the server; "
          f"server RSS {before} KiB before, {after} KiB after")
    return answered == m and closed == m


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    port, pid = int(sys.argv[1]), int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    m = int(sys.argv[4]) if len(sys.argv) > 4 else 3000
    ok = slowloris(port, n) & garbage(port, pid, m)
    sys.exit(0 if ok else 1)
