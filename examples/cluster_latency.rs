//! Cross-node latency through Redis: one sender on node A, `--members` clients on node B, all
//! in one room, so every message goes A → Redis → B → members. Each message carries its send
//! time; every (message, member) arrival is one sample. Loopback only; stops by itself.
//!
//! `cargo run --release --example cluster_latency -- A_ADDR B_ADDR [--members N] [--rate R]
//! [--seconds S] [--room NAME]` (see `scripts/bench-cluster.sh`, which starts Redis and the
//! two nodes).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

/// Samples are counted in microsecond buckets up to one second; slower ones share the last.
const BUCKETS: usize = 1_000_000;
/// Messages sent before this much time has passed are not measured (subscriptions settle).
const WARMUP: Duration = Duration::from_millis(500);
/// After the last send, arrivals are awaited at most this long.
const DRAIN: Duration = Duration::from_secs(3);

struct Args {
    a: SocketAddr,
    b: SocketAddr,
    members: usize,
    rate: u64,
    seconds: u64,
    room: String,
}

fn args() -> Args {
    let mut it = std::env::args().skip(1);
    let usage =
        "cluster_latency A_ADDR B_ADDR [--members N] [--rate R] [--seconds S] [--room NAME]";
    let addr = |s: Option<String>| -> SocketAddr {
        let a: SocketAddr = s
            .expect(usage)
            .parse()
            .expect("an address like 127.0.0.1:9001");
        assert!(a.ip().is_loopback(), "loopback only");
        a
    };
    let mut args = Args {
        a: addr(it.next()),
        b: addr(it.next()),
        members: 1000,
        rate: 1000,
        seconds: 10,
        room: "bench".into(),
    };
    while let Some(flag) = it.next() {
        let value = it.next().expect(usage);
        match flag.as_str() {
            "--members" => args.members = value.parse().expect("a number"),
            "--rate" => args.rate = value.parse().expect("a number"),
            "--seconds" => args.seconds = value.parse().expect("a number"),
            "--room" => args.room = value,
            _ => panic!("{usage}"),
        }
    }
    assert!(args.seconds <= 120 && args.rate > 0, "bounded runs only");
    args
}

/// Opens a WebSocket to `path` (blocking), without extensions, and returns the socket.
fn open(addr: SocketAddr, path: &str) -> io::Result<StdStream> {
    let mut s = StdStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b)?;
        head.push(b[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(io::Error::other(
            String::from_utf8_lossy(&head).into_owned(),
        ));
    }
    Ok(s)
}

/// A masked binary frame holding the send time (ns since `base`) and a sequence number.
fn frame(sent_ns: u64, seq: u64, out: &mut Vec<u8>) {
    let key = [0x12, 0x34, 0x56, 0x78];
    out.clear();
    out.extend_from_slice(&[0x82, 0x80 | 16]);
    out.extend_from_slice(&key);
    let mut payload = [0u8; 16];
    payload[..8].copy_from_slice(&sent_ns.to_be_bytes());
    payload[8..].copy_from_slice(&seq.to_be_bytes());
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
}

/// The sender: `rate` messages a second for `seconds`, paced against the clock.
fn send(a: SocketAddr, room: &str, rate: u64, seconds: u64, base: Instant) -> u64 {
    let mut s = open(a, &format!("/room/{room}")).expect("sender connects to A");
    let total = rate * seconds;
    let mut buf = Vec::new();
    for seq in 0..total {
        let due = base + Duration::from_nanos(seq * 1_000_000_000 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        frame(base.elapsed().as_nanos() as u64, seq, &mut buf);
        s.write_all(&buf).expect("send to A");
    }
    total
}

struct Member {
    sock: TcpStream,
    buf: Vec<u8>,
}

fn main() {
    let args = args();
    let mut poll = Poll::new().expect("poll");
    let mut members = Vec::with_capacity(args.members);
    for i in 0..args.members {
        let s = open(args.b, &format!("/room/{}", args.room)).expect("member connects to B");
        s.set_nonblocking(true).expect("nonblocking");
        let mut sock = TcpStream::from_std(s);
        poll.registry()
            .register(&mut sock, Token(i), Interest::READABLE)
            .expect("register");
        members.push(Member {
            sock,
            buf: Vec::new(),
        });
    }
    eprintln!(
        "{} members on B; sending {} msg/s for {} s on A",
        args.members, args.rate, args.seconds
    );
    let base = Instant::now();
    let (a, room, rate, seconds) = (args.a, args.room.clone(), args.rate, args.seconds);
    let sender = std::thread::spawn(move || send(a, &room, rate, seconds, base));

    let warm_ns = WARMUP.as_nanos() as u64;
    let mut hist = vec![0u64; BUCKETS];
    let (mut samples, mut arrivals, mut max_us) = (0u64, 0u64, 0u64);
    let mut events = Events::with_capacity(1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let send_end = base + Duration::from_secs(args.seconds);
    let expected = args.rate * args.seconds * args.members as u64;
    while Instant::now() < send_end + DRAIN && arrivals < expected {
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .expect("poll");
        for event in events.iter() {
            let m = &mut members[event.token().0];
            loop {
                match m.sock.read(&mut chunk) {
                    Ok(0) => panic!("member {} closed by B", event.token().0),
                    Ok(n) => m.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => panic!("read: {e}"),
                }
            }
            let now_ns = base.elapsed().as_nanos() as u64;
            let mut at = 0;
            // Server frames: unmasked; ours are 16-byte binary ones, pings are skipped.
            while m.buf.len() - at >= 2 {
                let (op, len7) = (m.buf[at] & 0x0f, usize::from(m.buf[at + 1] & 0x7f));
                let (hlen, len) = match len7 {
                    126 if m.buf.len() - at >= 4 => (
                        4,
                        usize::from(u16::from_be_bytes([m.buf[at + 2], m.buf[at + 3]])),
                    ),
                    126 => break,
                    127 => panic!("unexpected large frame"),
                    n => (2, n),
                };
                if m.buf.len() - at < hlen + len {
                    break;
                }
                let p = &m.buf[at + hlen..at + hlen + len];
                if op == 2 && len == 16 {
                    arrivals += 1;
                    let sent = u64::from_be_bytes(p[..8].try_into().unwrap());
                    if sent >= warm_ns {
                        let us = now_ns.saturating_sub(sent) / 1000;
                        hist[(us as usize).min(BUCKETS - 1)] += 1;
                        max_us = max_us.max(us);
                        samples += 1;
                    }
                }
                at += hlen + len;
            }
            m.buf.drain(..at);
        }
    }
    let sent = sender.join().expect("sender");
    let pct = |q: f64| -> u64 {
        let want = ((samples as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (us, n) in hist.iter().enumerate() {
            seen += n;
            if seen >= want {
                return us as u64;
            }
        }
        max_us
    };
    println!(
        "latency {} -> {}, {} members, {} msg/s for {} s: p50 {} us, p90 {} us, p99 {} us, \
         max {} us; {} of {} arrivals ({} lost), {} samples after {:?} warm-up",
        args.a,
        args.b,
        args.members,
        args.rate,
        args.seconds,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        max_us,
        arrivals,
        sent * args.members as u64,
        sent * args.members as u64 - arrivals.min(sent * args.members as u64),
        samples,
        WARMUP
    );
}
