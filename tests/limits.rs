//! Limits that protect the server from clients (and programs) that do not keep up: slow room
//! members, programs that do not read or flood, a console nobody reads; and `/metrics`.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// The server's resident memory, from /proc (Linux).
fn rss_kib(server: &TestServer) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// One plain HTTP request on a connection of its own.
fn http(server: &TestServer, method: &str, path: &str) -> (String, String) {
    let mut s = server.connect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let (head, body) = if method == "HEAD" {
        (read_head(&mut s), Vec::new())
    } else {
        read_response(&mut s)
    };
    (head, String::from_utf8(body).unwrap())
}

/// A number in the `/stats` JSON (top-level key).
fn stat(server: &TestServer, name: &str) -> u64 {
    let (_, body) = http(server, "GET", "/stats");
    let at = body.find(&format!("\"{name}\":")).expect(name) + name.len() + 3;
    let digits: String = body[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap()
}

/// Waits (bounded) until `f` holds.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM (by the PID we started) and a bounded wait for the exit: the server ends its
/// programs on the way out, so none outlives the test.
fn stop(server: &mut TestServer) {
    let pid = server.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    wait_until("the server to exit", || {
        server.child.try_wait().unwrap().is_some()
    });
}

/// A series' value in `/metrics`.
fn metric(server: &TestServer, series: &str) -> Option<u64> {
    let (_, body) = http(server, "GET", "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

const MESSAGE: usize = 64 * 1024;
const MAX_MESSAGES: u64 = 1000;

/// A message whose first eight bytes are its sequence number.
fn numbered(seq: u64) -> Vec<u8> {
    let mut p = vec![0x5a; MESSAGE];
    p[..8].copy_from_slice(&seq.to_be_bytes());
    p
}

fn seq_of(payload: &[u8]) -> u64 {
    u64::from_be_bytes(payload[..8].try_into().unwrap())
}

/// What a flood of a room left behind.
struct Flood {
    server: TestServer,
    slow: TcpStream,
    sent: u64,
    baseline_kib: u64,
    peak_kib: u64,
}

/// Three members of a room: one floods it with numbered 64 KiB messages (for ~4 s, at most
/// `MAX_MESSAGES`), one reads and must get all of them in order, one never reads. The
/// server's memory is sampled all along.
fn flood_room(policy: &str) -> Flood {
    let server = TestServer::start(&[
        "--max-backlog",
        "1MiB",
        "--slow-consumer",
        policy,
        // The slow member is read only after the flood: no timer may end it first.
        "--close-timeout",
        "60s",
        "--send-timeout",
        "60s",
    ]);
    let slow = server.ws_raw("/room/flood");
    let mut reader = server.ws_raw("/room/flood");
    let mut sender = server.ws_raw("/room/flood");
    let baseline_kib = rss_kib(&server);
    // The reading member must not itself become a slow consumer on a busy machine: the sender
    // keeps within WINDOW messages (512 KiB, half the cap) of what it has received.
    const WINDOW: u64 = 8;
    let received = Arc::new(AtomicU64::new(0));
    let received2 = received.clone();
    let reading = thread::spawn(move || {
        let mut next = 0;
        loop {
            let (_, op, p) = read_frame(&mut reader).expect("the reader gets every message");
            if op == 1 {
                assert_eq!(p, b"end");
                return next;
            }
            assert_eq!(
                seq_of(&p),
                next,
                "the reading member gets every message in order"
            );
            next += 1;
            received2.store(next, Ordering::Release);
        }
    });
    let sending = thread::spawn(move || {
        let start = Instant::now();
        let mut seq = 0;
        while seq < MAX_MESSAGES && start.elapsed() < Duration::from_secs(4) {
            if seq - received.load(Ordering::Acquire) >= WINDOW {
                thread::sleep(Duration::from_millis(1)); // polling for the reader to catch up
                continue;
            }
            sender.write_all(&frame(true, 2, &numbered(seq))).unwrap();
            seq += 1;
        }
        sender.write_all(&frame(true, 1, b"end")).unwrap();
        seq
    });
    let mut peak_kib = baseline_kib;
    while !sending.is_finished() {
        peak_kib = peak_kib.max(rss_kib(&server));
        thread::sleep(Duration::from_millis(50));
    }
    let sent = sending.join().unwrap();
    assert_eq!(
        reading.join().unwrap(),
        sent,
        "the reader got all that was sent"
    );
    peak_kib = peak_kib.max(rss_kib(&server));
    Flood {
        server,
        slow,
        sent,
        baseline_kib,
        peak_kib,
    }
}

fn assert_bounded(f: &Flood) {
    let grown = f.peak_kib.saturating_sub(f.baseline_kib);
    eprintln!(
        "flood: {} messages, server grew at most {grown} KiB",
        f.sent
    );
    assert!(
        grown < 8 * 1024,
        "server grew {} KiB with a 1 MiB backlog cap ({} messages of 64 KiB sent)",
        grown,
        f.sent
    );
}

#[test]
fn a_slow_room_member_is_closed_with_1008_after_what_it_had() {
    let mut f = flood_room("close");
    assert_bounded(&f);
    assert!(f.server.wait_log("slow consumer"), "a log line names it");
    // What it was sent arrives in order, then the close: nothing after the gap it made.
    let mut next = 0;
    let close = loop {
        let (_, op, p) = read_frame(&mut f.slow).unwrap();
        if op == 8 {
            break p;
        }
        assert_eq!((op, seq_of(&p)), (2, next));
        next += 1;
    };
    assert!(next > 0 && next < f.sent, "{next} of {}", f.sent);
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1008);
    assert_eq!(&close[2..], b"slow consumer");
    f.slow.write_all(&frame(true, 8, &close[..2])).unwrap();
    wait_until("the close in /metrics", || {
        metric(&f.server, "wsloop_closes_total{code=\"1008\"}") == Some(1)
    });
    assert_eq!(
        metric(&f.server, "wsloop_slow_consumers_total{action=\"close\"}"),
        Some(1)
    );
    assert_eq!(stat(&f.server, "slow_closed"), 1);
}

#[test]
fn a_slow_room_member_misses_messages_with_drop() {
    let mut f = flood_room("drop");
    assert_bounded(&f);
    let dropped = stat(&f.server, "dropped");
    assert!(dropped > 0, "/stats counts the dropped messages");
    assert_eq!(
        metric(&f.server, "wsloop_slow_consumers_total{action=\"drop\"}"),
        Some(dropped)
    );
    // It still gets messages, in order, with gaps; the stream ends with the last one sent
    // (sent once it had room again) and no close.
    let mut got = 0;
    let mut last = None;
    f.slow
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while let Ok((_, op, p)) = read_frame(&mut f.slow) {
        got += 1;
        if op == 1 {
            assert_eq!(p, b"end");
            continue;
        }
        assert_eq!(op, 2, "no close for a dropping slow consumer");
        let seq = seq_of(&p);
        assert!(last.is_none_or(|l| seq > l), "in order");
        last = Some(seq);
    }
    // The flood and its "end": each one either arrived or was counted as dropped.
    assert_eq!(got + dropped, f.sent + 1);
}

/// The program that never reads: its stdin fills, then its client is not read.
#[test]
fn a_program_that_does_not_read_stops_the_reading_of_its_client() {
    let mut server = TestServer::start(&[
        "--max-backlog",
        "1MiB",
        "--exec",
        "/bin/sh",
        "--",
        "-c",
        "sleep 30",
    ]);
    let mut s = server.ws_raw("/exec");
    let baseline = rss_kib(&server);
    s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    let line = vec![b'x'; MESSAGE];
    let start = Instant::now();
    let mut sent = 0;
    // Until TCP pushes back (a write times out), at most ~4 s and 1000 lines.
    while sent < MAX_MESSAGES && start.elapsed() < Duration::from_secs(4) {
        if s.write_all(&frame(true, 1, &line)).is_err() {
            break;
        }
        sent += 1;
    }
    assert!(
        server.wait_log("for its program, reading paused"),
        "a log line says reading paused"
    );
    let log = server.log.lock().unwrap().clone();
    assert!(
        log.lines()
            .any(|l| l.contains("for its program, reading paused") && !l.contains(" 0 for its")),
        "paused for the program's stdin:\n{log}"
    );
    let grown = rss_kib(&server).saturating_sub(baseline);
    assert!(grown < 8 * 1024, "grew {grown} KiB after {sent} lines");
    assert!(sent < MAX_MESSAGES, "the client was pushed back");
    stop(&mut server);
}

/// `yes` floods its stdout to a client that does not read: the pipe is left full.
#[test]
fn a_program_that_floods_a_client_that_does_not_read_is_held() {
    let server = TestServer::start(&["--max-backlog", "1MiB", "--exec", "/usr/bin/yes"]);
    let mut s = server.ws_raw("/exec");
    let baseline = rss_kib(&server);
    assert!(server.wait_log("stdout paused"), "reading yes paused");
    let grown = rss_kib(&server).saturating_sub(baseline);
    assert!(grown < 8 * 1024, "grew {grown} KiB");
    // The client reads some: the server drains to half and reads yes again by itself.
    let mut read = 0;
    while !server.log.lock().unwrap().contains("exec stdout resumed") {
        let (_, op, p) = read_frame(&mut s).unwrap();
        assert_eq!((op, p.as_slice()), (1, &b"y"[..]));
        read += 1;
        assert!(read < 10_000_000, "never resumed");
    }
    wait_until("a second pause", || {
        server.log.lock().unwrap().matches("stdout paused").count() >= 2
    });
    let grown = rss_kib(&server).saturating_sub(baseline);
    assert!(grown < 8 * 1024, "grew {grown} KiB");
}

#[test]
fn a_console_nobody_reads_drops_lines_and_the_server_keeps_answering() {
    let server = TestServer::start_with(&["--console", "--console-buffer", "64KiB"], |cmd| {
        // Both pipes stay open, unread and unwritten, for the server's lifetime.
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    });
    let mut s = server.ws_raw("/echo");
    let line = vec![b'c'; 1024];
    // 1000 lines of 1 KiB: more than the pipe (64 KiB) and the queue (64 KiB) hold.
    for i in 0..1000 {
        s.write_all(&frame(true, 1, &line)).unwrap();
        assert_eq!(read_frame(&mut s).unwrap().2, line, "echo {i}");
    }
    assert!(stat(&server, "console_dropped") > 0);
    s.write_all(&frame(true, 1, b"still here")).unwrap();
    assert_eq!(read_frame(&mut s).unwrap().2, b"still here");
}

fn nonblocking(fd: &OwnedFd) -> bool {
    // SAFETY: F_GETFL only reads the flags of a descriptor we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    assert!(flags >= 0);
    flags & libc::O_NONBLOCK != 0
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills two descriptors, which we then own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    use std::os::fd::FromRawFd;
    // SAFETY: both are fresh descriptors owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

#[test]
fn stdin_and_stdout_flags_are_restored_after_sigterm() {
    // O_NONBLOCK lives on the open file description, which our ends share with the server's.
    let (stdin_read, _stdin_write) = pipe();
    let (_stdout_read, stdout_write) = pipe();
    let (child_in, child_out) = (
        stdin_read.try_clone().unwrap(),
        stdout_write.try_clone().unwrap(),
    );
    let mut server = TestServer::start_with(&["--console"], |cmd| {
        cmd.stdin(Stdio::from(child_in))
            .stdout(Stdio::from(child_out));
    });
    assert!(server.wait_log("listening"));
    assert!(
        nonblocking(&stdin_read),
        "the console made stdin non-blocking"
    );
    assert!(nonblocking(&stdout_write), "and stdout");
    stop(&mut server);
    assert!(!nonblocking(&stdin_read), "stdin's flags restored");
    assert!(!nonblocking(&stdout_write), "stdout's flags restored");
}

#[test]
fn metrics_are_prometheus_text_and_count_what_happened() {
    let server = TestServer::start(&[]);
    // A refusal, and a close we send (the answer to the client's 1000).
    let (head, _) = http(&server, "GET", "/nowhere");
    assert_eq!(status(&head), 404, "{head}");
    let mut s = server.connect();
    s.write_all(upgrade_request("/nowhere", &[]).as_bytes())
        .unwrap();
    assert_eq!(status(&read_response(&mut s).0), 404);
    let mut ws = server.ws_raw("/echo");
    ws.write_all(&frame(true, 8, &1000u16.to_be_bytes()))
        .unwrap();
    assert_eq!(read_close_code(&mut ws), Some(1000));
    wait_until("the close counted", || {
        metric(&server, "wsloop_closes_total{code=\"1000\"}") == Some(1)
    });

    let (head, body) = http(&server, "GET", "/metrics");
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(
        header(&head, "Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let mut helped = Vec::new();
    let mut typed = Vec::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.push(rest.split(' ').next().unwrap().to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            typed.push(name.to_string());
        } else {
            let (series, value) = line.rsplit_once(' ').expect(line);
            value.parse::<f64>().expect(line);
            let name = series.split('{').next().unwrap();
            assert!(name.starts_with("wsloop_"), "{line}");
            assert!(helped.iter().any(|n| n == name), "no HELP for {line}");
            assert!(typed.iter().any(|n| n == name), "no TYPE for {line}");
            if series.len() > name.len() {
                let labels = &series[name.len()..];
                assert!(labels.starts_with('{') && labels.ends_with("\"}"), "{line}");
            }
        }
    }
    assert_eq!(
        metric(&server, "wsloop_refused_total{status=\"404\"}"),
        Some(1),
        "the upgrade to an unknown path (a plain GET 404 is no refusal)"
    );
    assert!(metric(&server, "wsloop_uptime_seconds").is_some());
    assert_eq!(
        metric(&server, "wsloop_connections{kind=\"websocket\"}"),
        Some(0)
    );
    let (_, stats) = http(&server, "GET", "/stats");
    assert!(stats.contains(r#""refused":{"404":1}"#), "{stats}");
    assert!(stats.contains(r#""closes":{"1000":1}"#), "{stats}");

    let (head, body) = http(&server, "HEAD", "/metrics");
    assert_eq!((status(&head), body.as_str()), (200, ""), "{head}");
    let (head, _) = http(&server, "POST", "/metrics");
    assert_eq!(status(&head), 405, "{head}");
    assert_eq!(header(&head, "Allow"), Some("GET, HEAD"));
}
