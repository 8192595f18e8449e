//! `--workers N`: several loops on one port, rooms spanning them, over real sockets against
//! the real binary.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn stats(server: &TestServer) -> Value {
    let (status, _, body) = exchange(
        server,
        "GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Polls `/stats` (workers publish their figures within 50 ms) until `ok` holds; the last
/// answer either way.
fn stats_until(server: &TestServer, limit: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + limit;
    loop {
        let s = stats(server);
        if ok(&s) || Instant::now() >= end {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Per worker: `key` as a number.
fn per_worker(s: &Value, key: &str) -> Vec<u64> {
    s["workers"]
        .as_array()
        .expect("a workers list")
        .iter()
        .map(|w| w[key].as_u64().unwrap())
        .collect()
}

/// A text message from the server (pings are not sent in these tests).
fn read_text(s: &mut TcpStream) -> String {
    let (fin, op, payload) = read_frame(s).expect("a message");
    assert!(fin);
    assert_eq!(op, 1, "{:?}", String::from_utf8_lossy(&payload));
    String::from_utf8(payload).unwrap()
}

/// Opens WebSockets on `path` until every one of the `n` workers has at least one, as
/// `/stats` shows (the kernel spreads connections by address hash); bounded.
fn members_on_every_worker(server: &TestServer, path: &str, n: usize) -> Vec<TcpStream> {
    let mut clients = Vec::new();
    for _ in 0..64 {
        clients.push(server.ws_raw(path));
        if clients.len() >= n {
            let total = clients.len() as u64;
            let s = stats_until(server, Duration::from_secs(2), |s| {
                per_worker(s, "websockets").iter().sum::<u64>() == total
            });
            if per_worker(&s, "websockets").iter().all(|&w| w > 0) {
                return clients;
            }
        }
    }
    panic!("64 connections and still a worker without any");
}

#[test]
fn a_thousand_members_over_four_workers_get_every_message_once_in_order() {
    const MEMBERS: usize = 1000;
    const SENDERS: usize = 4;
    const EACH: usize = 25;
    let server = TestServer::start(&["--workers", "4"]);
    let mut members: Vec<TcpStream> = (0..MEMBERS).map(|_| server.ws_raw("/room/big")).collect();
    // Every worker has members and knows that the three others do (their `Joined` notes
    // arrived), and the kernel spread the connections evenly.
    let s = stats_until(&server, Duration::from_secs(10), |s| {
        per_worker(s, "websockets").iter().sum::<u64>() == MEMBERS as u64
            && per_worker(s, "room_replicas").iter().all(|&r| r == 3)
    });
    let spread = per_worker(&s, "websockets");
    assert_eq!(spread.iter().sum::<u64>(), MEMBERS as u64, "{s}");
    assert_eq!(per_worker(&s, "room_replicas"), [3, 3, 3, 3], "{s}");
    let mean = MEMBERS as f64 / 4.0;
    for (i, &n) in spread.iter().enumerate() {
        assert!(
            (n as f64 - mean).abs() <= 0.3 * mean,
            "worker {i} has {n} of {MEMBERS} (mean {mean}): {spread:?}"
        );
    }
    assert_eq!(s["rooms"]["big"], MEMBERS as u64, "{s}");

    // The senders are members too; they write in turns, so their messages interleave.
    for n in 0..=EACH {
        for (sender, m) in members.iter_mut().take(SENDERS).enumerate() {
            let text = if n == EACH {
                format!("{sender} end")
            } else {
                format!("{sender} {n}")
            };
            m.write_all(&frame(true, 1, text.as_bytes())).unwrap();
        }
    }
    for (i, m) in members.iter_mut().enumerate() {
        m.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut next = [0usize; SENDERS];
        let mut ended = 0;
        // A sender does not hear itself (no --room-echo).
        let expect_ends = if i < SENDERS { SENDERS - 1 } else { SENDERS };
        while ended < expect_ends {
            let text = read_text(m);
            let (sender, what) = text.split_once(' ').unwrap();
            let sender: usize = sender.parse().unwrap();
            assert_ne!(sender, i, "member {i} heard itself");
            if what == "end" {
                assert_eq!(next[sender], EACH, "member {i}: {sender} ended early");
                ended += 1;
            } else {
                // Exactly once and in order: each sender's numbers come one by one.
                assert_eq!(what.parse::<usize>().unwrap(), next[sender], "member {i}");
                next[sender] += 1;
            }
        }
    }
    // Nothing more for anyone: no duplicate arrived after the ends.
    for m in members.iter_mut().step_by(37) {
        m.set_nonblocking(true).unwrap();
        let mut b = [0u8; 16];
        assert!(
            matches!(m.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "extra bytes after the end"
        );
    }
    let s = stats(&server);
    assert_eq!(s["inbox_dropped"], 0, "{s}");
    assert_eq!(s["messages_in"], (SENDERS * (EACH + 1)) as u64, "{s}");
}

#[test]
fn a_full_inbox_drops_and_counts_while_every_client_carries_on() {
    let server = TestServer::start(&["--workers", "2", "--worker-inbox", "2"]);
    let mut members = members_on_every_worker(&server, "/room/burst", 2);
    let s = stats_until(&server, Duration::from_secs(5), |s| {
        per_worker(s, "room_replicas") == [1, 1]
    });
    assert_eq!(per_worker(&s, "room_replicas"), [1, 1], "{s}");
    // One write of many messages: the sender's worker reads them in a turn or two and hands
    // them to the other faster than a wake-up takes; the inbox holds 2.
    const BURST: usize = 3000;
    let mut burst = Vec::new();
    for n in 0..BURST {
        burst.extend(frame(true, 1, n.to_string().as_bytes()));
    }
    burst.extend(frame(true, 1, b"last"));
    members[0].write_all(&burst).unwrap();
    let s = stats_until(&server, Duration::from_secs(5), |s| {
        s["messages_in"] == (BURST + 1) as u64
    });
    let dropped = s["inbox_dropped"].as_u64().unwrap();
    assert!(dropped > 0, "{s}");
    assert_eq!(per_worker(&s, "inbox_dropped").iter().sum::<u64>(), dropped);
    // Everyone else gets an increasing subset; `last` may be among the dropped, so each
    // then gets one more message, sent once the burst is over.
    members[0].write_all(&frame(true, 1, b"after")).unwrap();
    let mut short = 0;
    for m in members.iter_mut().skip(1) {
        let mut previous: Option<usize> = None;
        let mut got = 0;
        loop {
            let text = read_text(m);
            if text == "after" {
                break;
            }
            if text == "last" {
                continue;
            }
            let n: usize = text.parse().unwrap();
            assert!(previous.is_none_or(|p| n > p), "{n} after {previous:?}");
            previous = Some(n);
            got += 1;
        }
        if got < BURST {
            short += 1;
        }
    }
    assert!(short > 0, "no member missed anything, yet {dropped} drops");
    // The server still answers, on every worker.
    let mut echo = server.ws_raw("/echo");
    echo.write_all(&frame(true, 1, b"still here")).unwrap();
    assert_eq!(read_text(&mut echo), "still here");
}

#[test]
fn push_and_console_reach_members_on_every_worker_and_print_whole_lines() {
    let mut server = TestServer::start_with(
        &[
            "--workers",
            "3",
            "--console",
            "--push-every",
            "200ms",
            "--push-text",
            "tick {n}",
        ],
        |cmd| {
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        },
    );
    let mut stdin = server.child.stdin.take().unwrap();
    let stdout = server.child.stdout.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut clients = members_on_every_worker(&server, "/room/lobby", 3);
    for c in &mut clients {
        let t = read_text(c);
        assert!(t.starts_with("tick "), "{t}");
    }
    stdin.write_all(b"hello from the console\n").unwrap();
    for c in &mut clients {
        loop {
            let t = read_text(c);
            if t == "hello from the console" {
                break;
            }
            assert!(t.starts_with("tick "), "{t}");
        }
    }
    // Every client's message is printed by worker 0, one whole line each.
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(&frame(true, 1, format!("client {i} says hi").as_bytes()))
            .unwrap();
    }
    let mut seen = HashMap::new();
    let end = Instant::now() + Duration::from_secs(5);
    while seen.len() < clients.len() && Instant::now() < end {
        let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        assert!(
            line.starts_with('[') && line.contains(" lobby] client "),
            "{line}"
        );
        let i: usize = line
            .split("] client ")
            .nth(1)
            .and_then(|r| r.strip_suffix(" says hi"))
            .unwrap()
            .parse()
            .unwrap();
        *seen.entry(i).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), clients.len(), "{seen:?}");
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
}

#[test]
fn sigterm_closes_clients_on_every_worker_with_1001_and_exits_0() {
    let mut server = TestServer::start(&["--workers", "3"]);
    let mut clients = members_on_every_worker(&server, "/echo", 3);
    // SAFETY: a signal to the process this test started, by its PID.
    assert_eq!(
        unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) },
        0
    );
    for c in &mut clients {
        assert_eq!(read_close_code(c), Some(1001));
        // Our close answer lets the server finish its closing handshake.
        c.write_all(&frame(true, 8, &1001u16.to_be_bytes()))
            .unwrap();
    }
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < end, "still running");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{}", server.log.lock().unwrap());
    let log = server.log.lock().unwrap();
    assert_eq!(
        log.matches("INFO  wsloop::server] stopped").count(),
        3,
        "{log}"
    );
}

#[test]
fn more_than_one_worker_on_a_unix_socket_is_refused_clearly() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsloop"))
        .args([
            "--workers",
            "2",
            "--bind",
            "unix:/tmp/wsloop-workers-test.sock",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--workers above 1 needs a TCP --bind"),
        "{err}"
    );
}

#[test]
fn publish_reaches_members_on_every_worker_and_metrics_show_each_worker() {
    let server = TestServer::start(&["--workers", "3"]);
    let mut members = members_on_every_worker(&server, "/room/news", 3);
    let s = stats_until(&server, Duration::from_secs(5), |s| {
        per_worker(s, "room_replicas").iter().all(|&r| r == 2)
    });
    assert_eq!(per_worker(&s, "room_replicas"), [2, 2, 2], "{s}");
    for n in 0..5 {
        let body = format!("bulletin {n}");
        let (status, _, answer) = exchange(
            &server,
            &format!(
                "POST /publish/news HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        );
        assert_eq!(status, 200, "{answer}");
    }
    for m in &mut members {
        for n in 0..5 {
            assert_eq!(read_text(m), format!("bulletin {n}"));
        }
    }
    // Whichever worker answers reads the others' figures as they last published them (at
    // most 50 ms old when idle): poll until every worker's own series shows the room replica.
    let fetch = || {
        let (status, _, metrics) = exchange(
            &server,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status, 200);
        metrics
    };
    let end = Instant::now() + Duration::from_secs(5);
    let mut metrics = fetch();
    while !(0..3).all(|i| {
        metrics.contains(&format!(
            "wsloop_worker_room_replicas{{worker=\"{i}\"}} 2\n"
        ))
    }) && Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(20));
        metrics = fetch();
    }
    let value = |series: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    // The total is the sum of the workers' series; each worker has members.
    let per: Vec<u64> = (0..3)
        .map(|i| value(&format!("wsloop_worker_room_replicas{{worker=\"{i}\"}}")))
        .collect();
    assert_eq!(per, [2, 2, 2], "{metrics}");
    let out: u64 = (0..3)
        .map(|i| {
            value(&format!(
                "wsloop_worker_messages_out_total{{worker=\"{i}\"}}"
            ))
        })
        .sum();
    assert!(value("wsloop_messages_out_total") >= out, "{metrics}");
    assert_eq!(value("wsloop_worker_inbox_dropped_total{worker=\"0\"}"), 0);
}
