//! Connection timers over real sockets: keepalive pings, the pong deadline, the send timeout,
//! and message buffers that grow with what arrives rather than with what a header announces.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

/// A field of `/proc/PID/status`, in KiB.
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Reads until EOF (or a reset), answering nothing; true if the server closed within `limit`.
fn dropped_within(s: &mut TcpStream, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut b = [0u8; 1024];
    while Instant::now() < end {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(_) => {}
        }
    }
    false
}

#[test]
fn a_peer_that_never_answers_a_ping_is_dropped_and_leaves_its_room() {
    let server = TestServer::start(&[
        "--ping-interval",
        "300ms",
        "--pong-timeout",
        "300ms",
        "--room-events",
    ]);
    // A live member that answers pings (tungstenite does, on every read), read by its own
    // thread the whole time; it reports whether it heard the dead member leave.
    let (mut live, _) = tungstenite::connect(server.url("/room/r")).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = live.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    }
    let live = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(8);
        while Instant::now() < end {
            match live.read() {
                Ok(Message::Text(t)) if t.contains("\"leave\"") => {
                    return Ok(t.as_str().to_string());
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("the live member lost its connection: {e}")),
            }
        }
        Err("no leave event for the dropped member".to_string())
    });
    // A raw member that reads but never answers: it sees a ping, then is dropped.
    let mut dead = server.ws_raw("/room/r");
    let started = Instant::now();
    let ping = loop {
        let (_, op, _) = read_frame(&mut dead).unwrap();
        if op != 1 {
            break op; // skip room events
        }
    };
    assert_eq!(ping, 0x9, "a ping after the interval of silence");
    assert!(
        dropped_within(&mut dead, Duration::from_secs(5)),
        "no FIN or reset after the pong timeout"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "dropped too early: {took:?}"
    );
    assert!(
        server.wait_log("after a ping, dropping"),
        "{}",
        server.log.lock().unwrap()
    );
    let event = live.join().unwrap().unwrap();
    assert!(event.contains("\"clients\":1"), "{event}");
}

#[test]
fn a_library_peer_that_answers_pings_stays_open() {
    let server = TestServer::start(&["--ping-interval", "200ms", "--pong-timeout", "200ms"]);
    let (mut ws, _) = tungstenite::connect(server.url("/echo")).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    }
    // Several intervals and timeouts pass with nothing sent but the automatic pongs.
    let end = Instant::now() + Duration::from_millis(1500);
    let mut pings = 0;
    while Instant::now() < end {
        match ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(m) => panic!("unexpected {m:?}"),
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("connection lost: {e}"),
        }
    }
    assert!(
        pings >= 3,
        "only {pings} pings in 1.5 s at a 200 ms interval"
    );
    ws.send(Message::text("still here")).unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                assert_eq!(t.as_str(), "still here");
                break;
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
                assert!(Instant::now() < end, "no echo");
            }
            Err(e) => panic!("connection lost: {e}"),
        }
    }
    assert!(!server
        .log
        .lock()
        .unwrap()
        .contains("after a ping, dropping"));
}

#[test]
fn pings_are_off_with_a_zero_interval() {
    let server = TestServer::start(&["--ping-interval", "0", "--pong-timeout", "100ms"]);
    let mut s = server.ws_raw("/echo");
    s.set_read_timeout(Some(Duration::from_millis(800)))
        .unwrap();
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected silence, got {other:?}"),
    }
    // Still open: an echo round trip.
    s.write_all(&frame(true, 1, b"ok")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(read_frame(&mut s).unwrap(), (true, 1, b"ok".to_vec()));
}

#[test]
fn a_websocket_peer_that_reads_nothing_is_dropped_at_the_send_timeout() {
    let server = TestServer::start(&["--send-timeout", "500ms", "--ping-interval", "0"]);
    let mut s = server.ws_raw("/echo");
    // Big echoes that the kernel's buffers cannot hold, and a peer that never reads them.
    let msg = frame(true, 2, &vec![7u8; 4 << 20]);
    for _ in 0..4 {
        if s.write_all(&msg).is_err() {
            break;
        }
    }
    assert!(
        server.wait_log("none taken for 500ms, dropping"),
        "{}",
        server.log.lock().unwrap()
    );
    assert!(dropped_within(&mut s, Duration::from_secs(10)));
}

#[test]
fn an_http_client_that_reads_no_answers_is_dropped_at_the_send_timeout() {
    let server = TestServer::start(&["--send-timeout", "500ms", "--max-backlog", "64KiB"]);
    let mut s = server.connect();
    // Pipelined requests for the console page, never read.
    let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000);
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(&req);
    assert!(
        server.wait_log("none taken for 500ms, dropping"),
        "{}",
        server.log.lock().unwrap()
    );
}

#[test]
fn a_header_announcing_a_huge_frame_reserves_no_memory_for_it() {
    let server = TestServer::start(&["--max-message-size", "64MiB"]);
    let pid = server.child.id();
    let before = proc_kib(pid, "VmData:");
    // 100 connections each announce a 60 MiB frame and send 20 KiB of it: enough to take
    // the path that reads payloads straight into their buffer.
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(60u64 << 20).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    let mut socks = Vec::new();
    for _ in 0..100 {
        let mut s = server.ws_raw("/echo");
        s.write_all(&header).unwrap();
        s.write_all(&[0u8; 20 * 1024]).unwrap();
        socks.push(s);
    }
    // Wait until the server has read what was sent (its stats count no message yet, so
    // check by an echo on a fresh connection, which is served after those reads).
    let mut probe = server.ws_raw("/echo");
    probe.write_all(&frame(true, 1, b"probe")).unwrap();
    assert_eq!(read_frame(&mut probe).unwrap().2, b"probe");
    let after = proc_kib(pid, "VmData:");
    let grown_mib = after.saturating_sub(before) / 1024;
    // Reserving the announced length would be 100 × 60 MiB of address space.
    assert!(grown_mib < 64, "VmData grew by {grown_mib} MiB");
}

#[test]
fn a_dead_peers_program_is_ended_with_it() {
    let server = TestServer::start(&[
        "--exec",
        "/bin/cat",
        "--ping-interval",
        "300ms",
        "--pong-timeout",
        "300ms",
        "--exec-grace",
        "200ms",
    ]);
    let mut dead = server.ws_raw("/exec");
    let kids = children_of(server.child.id());
    assert_eq!(kids.len(), 1, "one program expected: {kids:?}");
    assert_eq!(read_frame(&mut dead).unwrap().1, 0x9, "a ping");
    assert!(dropped_within(&mut dead, Duration::from_secs(5)));
    // Its program is told to end (stdin closed: cat exits) and is reaped.
    assert!(
        gone_within(kids[0], Duration::from_secs(5)),
        "program {} left behind",
        kids[0]
    );
}

#[test]
fn help_shows_push_placeholders_as_typed() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsloop"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("`{n}` is the push count"),
        "clap must not turn {{n}} into a line break:\n{help}"
    );
}
