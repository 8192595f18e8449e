//! `--redis`: rooms across processes. Two wsloop processes on one real `redis-server` stand in
//! for two machines; Redis runs on a free port with no persistence and is killed, stopped and
//! restarted by its PID. Clients are `tungstenite` over real sockets.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::redis::{free_port, have_redis, Redis};
use common::*;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<TcpStream>;

/// A wsloop node on Redis at `port`, with its own channel prefix per test.
fn node(port: u16, prefix: &str, extra: &[&str]) -> TestServer {
    let url = format!("redis://127.0.0.1:{port}");
    let mut args = vec!["--redis", &url, "--redis-prefix", prefix];
    args.extend_from_slice(extra);
    TestServer::start(&args)
}

/// A prefix no other test (or run) shares, so that tests on one Redis could not meet.
fn prefix(test: &str) -> String {
    format!("wsloop-test-{}-{test}", std::process::id())
}

fn ws(server: &TestServer, path: &str) -> Ws {
    let stream = server.connect();
    tungstenite::client(server.url(path), stream)
        .unwrap_or_else(|e| panic!("upgrade on {path}: {e}"))
        .0
}

/// The next data message, or None if nothing arrives within `wait`.
fn next_message(ws: &mut Ws, wait: Duration) -> Option<Message> {
    ws.get_mut().set_read_timeout(Some(wait)).unwrap();
    loop {
        match ws.read() {
            Ok(m @ (Message::Text(_) | Message::Binary(_) | Message::Close(_))) => return Some(m),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn text(ws: &mut Ws) -> String {
    match next_message(ws, Duration::from_secs(5)) {
        Some(Message::Text(t)) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

fn send(ws: &mut Ws, s: &str) {
    ws.send(Message::text(s)).unwrap();
}

fn stats(server: &TestServer) -> String {
    exchange(
        server,
        "GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .2
}

/// A field of `/stats`'s `"redis"` object, as its JSON text.
fn redis_field(stats: &str, field: &str) -> String {
    let at = stats.find("\"redis\":{").expect("a redis object in /stats");
    let obj = &stats[at..];
    let key = format!("\"{field}\":");
    let start = obj.find(&key).unwrap_or_else(|| panic!("{field} in {obj}")) + key.len();
    let rest = &obj[start..];
    rest[..rest.find([',', '}']).unwrap()].to_string()
}

fn redis_count(server: &TestServer, field: &str) -> u64 {
    redis_field(&stats(server), field).parse().unwrap()
}

fn connected(server: &TestServer) -> bool {
    redis_field(&stats(server), "connected") == "true"
}

/// Polls `done` (every 20 ms) until it holds or `limit` passes; says whether it held.
fn within(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

fn publish(server: &TestServer, room: &str, body: &str) -> String {
    let req = format!(
        "POST /publish/{room} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (code, _, body) = exchange(server, &req);
    assert_eq!(code, 200, "{body}");
    body
}

#[test]
fn a_message_reaches_every_member_on_both_nodes_once() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start(free_port());
    let prefix = prefix("once");
    let channel = format!("{prefix}:room:r");
    let (a, b) = (
        node(redis.port, &prefix, &[]),
        node(redis.port, &prefix, &[]),
    );
    let (mut a1, mut a2) = (ws(&a, "/room/r"), ws(&a, "/room/r"));
    let (mut b1, mut b2) = (ws(&b, "/room/r"), ws(&b, "/room/r"));
    // One SUBSCRIBE per node, however many members it has.
    assert!(redis.wait_numsub(&channel, 2), "{}", redis.numsub(&channel));

    send(&mut a1, "hello");
    send(&mut a1, "second");
    for (name, w) in [("a2", &mut a2), ("b1", &mut b1), ("b2", &mut b2)] {
        // In order, and "hello" once: the next message after it is "second".
        assert_eq!(text(w), "hello", "{name}");
        assert_eq!(text(w), "second", "{name}");
    }
    // POST /publish on B reaches A's members (and B's own); it is the next thing everyone
    // gets, so nothing else (A's own messages coming back) was queued before it.
    assert_eq!(publish(&b, "r", "from b"), r#"{"delivered":2}"#);
    for (name, w) in [
        ("a1", &mut a1),
        ("a2", &mut a2),
        ("b1", &mut b1),
        ("b2", &mut b2),
    ] {
        assert_eq!(text(w), "from b", "{name}");
    }
    // A's own two messages came back from Redis and were dropped there; B's one likewise.
    assert!(within(Duration::from_secs(5), || {
        redis_count(&a, "own") == 2
            && redis_count(&b, "own") == 1
            // Counted when Redis answers the PUBLISH, on the other connection.
            && redis_count(&a, "published") == 2
    }));
    let (sa, sb) = (stats(&a), stats(&b));
    assert_eq!(redis_field(&sa, "published"), "2", "{sa}");
    assert_eq!(redis_field(&sa, "received"), "1", "{sa}");
    assert_eq!(redis_field(&sb, "received"), "2", "{sb}");
    for s in [&sa, &sb] {
        assert_eq!(redis_field(s, "dropped"), "0", "{s}");
        assert_eq!(redis_field(s, "missed"), "0", "{s}");
        assert_eq!(redis_field(s, "connected"), "true", "{s}");
    }
    // /metrics has the same figures.
    let (_, _, metrics) = exchange(
        &a,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(
        metrics.contains("\nwsloop_redis_connected 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nwsloop_redis_own_total 2\n"),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE wsloop_redis_dropped_total counter\n"));
}

#[test]
fn without_redis_flag_stats_have_no_redis_object() {
    let server = TestServer::start(&[]);
    let s = stats(&server);
    assert!(s.starts_with('{') && !s.contains("\"redis\""), "{s}");
}

#[test]
fn redis_killed_and_restarted_clients_stay_and_cross_node_delivery_resumes_within_3s() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start(free_port());
    let port = redis.port;
    let prefix = prefix("restart");
    let channel = format!("{prefix}:room:r");
    let (a, b) = (node(port, &prefix, &[]), node(port, &prefix, &[]));
    let (mut a1, mut a2) = (ws(&a, "/room/r"), ws(&a, "/room/r"));
    let mut b1 = ws(&b, "/room/r");
    assert!(redis.wait_numsub(&channel, 2));
    send(&mut a1, "before");
    assert_eq!(text(&mut a2), "before");
    assert_eq!(text(&mut b1), "before");

    redis.kill();
    assert!(within(Duration::from_secs(5), || !connected(&a) && !connected(&b)));
    // Local delivery goes on; the copy for other nodes is dropped and counted.
    send(&mut a1, "during");
    assert_eq!(text(&mut a2), "during");
    assert!(within(Duration::from_secs(5), || redis_count(
        &a, "dropped"
    ) >= 1));
    assert!(a.wait_log("redis: link lost"));
    // Down long enough for the backoff to reach its cap (the 6th failure waits 1-2 s), so
    // that the figure below is the worst case, not a lucky early retry.
    assert!(a.wait_log("redis: attempt 6 failed") && b.wait_log("redis: attempt 6 failed"));

    // From the moment Redis is started again: A's members keep talking (every 50 ms) until
    // one of their messages reaches B.
    let back = Instant::now();
    let redis = Redis::start(port);
    let mut i = 0;
    let resumed = loop {
        send(&mut a1, &format!("after {i}"));
        i += 1;
        match next_message(&mut b1, Duration::from_millis(50)) {
            Some(Message::Text(t)) => {
                assert!(t.starts_with("after "), "{t}");
                break back.elapsed();
            }
            Some(other) => panic!("b1 got {other:?}"),
            None => assert!(
                back.elapsed() < Duration::from_secs(10),
                "nothing crossed within 10 s"
            ),
        }
    };
    eprintln!("cross-node delivery resumed {resumed:?} after Redis was started again");
    assert!(
        resumed <= Duration::from_secs(3),
        "resumed after {resumed:?}"
    );
    // Nobody was disconnected: a2 had every message, in order, and a1 and b1 still hear.
    for n in 0..i {
        assert_eq!(text(&mut a2), format!("after {n}"));
    }
    assert_eq!(publish(&b, "r", "still here"), r#"{"delivered":1}"#);
    assert_eq!(text(&mut a1), "still here");
    assert_eq!(text(&mut a2), "still here");
    assert!(redis_count(&a, "reconnects") >= 1 && redis_count(&b, "reconnects") >= 1);
    drop(redis);
}

#[test]
fn redis_absent_at_start_local_rooms_work_at_once_and_cross_node_once_it_comes() {
    if !have_redis() {
        return;
    }
    let port = free_port();
    let prefix = prefix("absent");
    let channel = format!("{prefix}:room:r");
    let (a, b) = (node(port, &prefix, &[]), node(port, &prefix, &[]));
    let (mut a1, mut a2) = (ws(&a, "/room/r"), ws(&a, "/room/r"));
    let mut b1 = ws(&b, "/room/r");
    send(&mut a1, "local");
    assert_eq!(text(&mut a2), "local");
    assert!(!connected(&a));
    assert!(a.wait_log("redis: cannot connect"));

    let redis = Redis::start(port);
    // The longest wait is the 2 s backoff cap plus connecting.
    assert!(redis.wait_numsub(&channel, 2), "{}", redis.numsub(&channel));
    assert!(connected(&a) && connected(&b));
    send(&mut a1, "cross");
    assert_eq!(text(&mut a2), "cross");
    assert_eq!(text(&mut b1), "cross");
    assert_eq!(redis_count(&a, "reconnects"), 0, "a first connection");
}

#[test]
fn a_node_unsubscribes_when_its_last_member_leaves() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start(free_port());
    let prefix = prefix("leave");
    let (r, other) = (format!("{prefix}:room:r"), format!("{prefix}:room:other"));
    let (a, b) = (
        node(redis.port, &prefix, &[]),
        node(redis.port, &prefix, &[]),
    );
    let a1 = ws(&a, "/room/r");
    let _a3 = ws(&a, "/room/other");
    let (b1, b2) = (ws(&b, "/room/r"), ws(&b, "/room/r"));
    assert!(redis.wait_numsub(&r, 2));
    assert!(redis.wait_numsub(&other, 1));

    // One of B's two members leaves: B stays subscribed.
    drop(b1);
    assert!(within(Duration::from_secs(5), || stats(&b)
        .contains(r#""rooms":{"r":1}"#)));
    assert_eq!(redis.numsub(&r), 2);
    // Its last one leaves: B unsubscribes; then A's.
    drop(b2);
    assert!(redis.wait_numsub(&r, 1), "{}", redis.numsub(&r));
    drop(a1);
    assert!(redis.wait_numsub(&r, 0), "{}", redis.numsub(&r));
    let channels = redis.channels(&format!("{prefix}:*"));
    assert!(
        channels.contains(&other) && !channels.contains(&r),
        "{channels}"
    );
    assert_eq!(redis_field(&stats(&a), "rooms"), "1");
    assert_eq!(redis_field(&stats(&b), "rooms"), "0");
}

#[test]
fn a_stalled_redis_cannot_grow_the_nodes_memory_drops_are_counted() {
    if !have_redis() {
        return;
    }
    const BUFFER: usize = 64 * 1024;
    const N: u64 = 1500;
    let redis = Redis::start(free_port());
    let prefix = prefix("stall");
    let a = node(
        redis.port,
        &prefix,
        &["--redis-buffer", "64KiB", "--redis-ping-interval", "60s"],
    );
    let mut a1 = ws(&a, "/room/r");
    assert!(redis.wait_numsub(&format!("{prefix}:room:r"), 1));

    // Redis stops reading (SIGSTOP, by its PID): the kernel's buffers fill, then ours.
    let pid = redis.child.id() as libc::pid_t;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let payload = "x".repeat(16 * 1024);
    for _ in 0..N {
        send(&mut a1, &payload);
    }
    // 24 MiB offered, far more than the socket buffers and --redis-buffer hold together.
    assert!(within(Duration::from_secs(30), || {
        stats(&a).contains(&format!("\"messages_in\":{N},"))
    }));
    let s = stats(&a);
    let pending: usize = redis_field(&s, "pending_bytes").parse().unwrap();
    let dropped: u64 = redis_field(&s, "dropped").parse().unwrap();
    // Redis really stalled (output is waiting), and what waits stays under the cap.
    assert!(
        pending > 0 && pending <= BUFFER,
        "{pending} bytes pending: {s}"
    );
    assert!(dropped > 0, "{s}");
    eprintln!("Redis stalled: {pending} bytes pending, {dropped} of {N} dropped");

    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    // At most once, and every message accounted for: acknowledged or dropped.
    assert!(
        within(Duration::from_secs(20), || {
            redis_count(&a, "published") + redis_count(&a, "dropped") == N
        }),
        "{}",
        stats(&a)
    );
    assert_eq!(redis_count(&a, "pending_bytes"), 0);
    assert!(connected(&a));
}

#[test]
fn garbage_on_a_room_channel_is_counted_and_never_reaches_members() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start(free_port());
    let prefix = prefix("garbage");
    let channel = format!("{prefix}:room:r");
    let (a, b) = (
        node(redis.port, &prefix, &[]),
        node(redis.port, &prefix, &[]),
    );
    let mut a1 = ws(&a, "/room/r");
    let mut b1 = ws(&b, "/room/r");
    assert!(redis.wait_numsub(&channel, 2));
    // Something else publishes on the channel: not an envelope, or a text envelope that is
    // not UTF-8 (version 1, kind 1, node, seq 1, room "r", then 0xff).
    let mut bad_text = vec![1u8, 1];
    bad_text.extend_from_slice(&7u64.to_be_bytes());
    bad_text.extend_from_slice(&1u64.to_be_bytes());
    bad_text.extend_from_slice(&[1, b'r', 0xff]);
    for payload in [&b"hello"[..], &bad_text] {
        let reply =
            common::redis::query_bytes(redis.port, &[b"PUBLISH", channel.as_bytes(), payload]);
        assert_eq!(reply.as_deref(), Some(":2\r\n"), "both nodes subscribed");
    }
    assert!(within(Duration::from_secs(5), || {
        redis_count(&a, "invalid") == 2 && redis_count(&b, "invalid") == 2
    }));
    // The next thing members get is a real message: the garbage was not delivered, and the
    // link stayed up.
    send(&mut a1, "real");
    assert_eq!(text(&mut b1), "real");
    assert!(connected(&a) && connected(&b));
    assert_eq!(redis_count(&a, "reconnects"), 0);
}

#[test]
fn messages_from_another_node_are_compressed_for_members_that_agreed_on_deflate() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start(free_port());
    let prefix = prefix("deflate");
    let channel = format!("{prefix}:room:r");
    let (a, b) = (
        node(redis.port, &prefix, &[]),
        node(redis.port, &prefix, &[]),
    );
    let mut a1 = ws(&a, "/room/r");
    // On B: one member that agreed on permessage-deflate, one that did not.
    let mut squeezed = b.connect();
    std::io::Write::write_all(
        &mut squeezed,
        upgrade_request("/room/r", &["Sec-WebSocket-Extensions: permessage-deflate"]).as_bytes(),
    )
    .unwrap();
    let head = read_head(&mut squeezed);
    assert!(
        header(&head, "Sec-WebSocket-Extensions").is_some(),
        "{head}"
    );
    let mut plain = b.ws_raw("/room/r");
    assert!(redis.wait_numsub(&channel, 2));

    let text = "{\"event\":\"price\",\"symbol\":\"ACME\",\"value\":42} ".repeat(30);
    send(&mut a1, &text);
    let (_, op, payload) = read_frame_rsv(&mut squeezed);
    assert_eq!(op, 0x40 | 1, "RSV1 and text");
    assert!(payload.len() < text.len() / 4, "{} bytes", payload.len());
    let mut out = Vec::new();
    wsloop::deflate::Inflater::new(15, false)
        .inflate(&payload, true, &mut out, 1 << 20)
        .unwrap();
    assert_eq!(out, text.as_bytes());
    let (_, op, payload) = read_frame_rsv(&mut plain);
    assert_eq!((op, payload), (1, text.into_bytes()));
}

/// A server frame with its RSV bits: (fin, first byte without FIN, payload).
fn read_frame_rsv(s: &mut TcpStream) -> (bool, u8, Vec<u8>) {
    use std::io::Read;
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0; len];
    s.read_exact(&mut p).unwrap();
    (h[0] & 0x80 != 0, h[0] & 0x7f, p)
}

/// `/stats` as JSON.
fn stats_json(server: &TestServer) -> serde_json::Value {
    serde_json::from_str(&stats(server)).expect("/stats is JSON")
}

/// Per worker: `key` of `/stats`'s `workers` list.
fn per_worker(s: &serde_json::Value, key: &str) -> Vec<u64> {
    s["workers"]
        .as_array()
        .expect("a workers list")
        .iter()
        .map(|w| w[key].as_u64().unwrap())
        .collect()
}

/// Raw members of `room` until each of `workers` has one (the kernel spreads connections by
/// address hash), and every worker knows every other has members; bounded.
fn members_on_every_worker(server: &TestServer, room: &str, workers: usize) -> Vec<TcpStream> {
    let path = format!("/room/{room}");
    let mut members = Vec::new();
    // WebSockets open already (other members of the test).
    let before: u64 = per_worker(&stats_json(server), "websockets").iter().sum();
    while members.len() < 64 {
        members.push(server.ws_raw(&path));
        let total = before + members.len() as u64;
        let mut s = stats_json(server);
        within(Duration::from_secs(2), || {
            s = stats_json(server);
            per_worker(&s, "websockets").iter().sum::<u64>() == total
        });
        if members.len() >= workers && per_worker(&s, "websockets").iter().all(|&n| n > 0) {
            let others = workers as u64 - 1;
            assert!(
                within(Duration::from_secs(3), || per_worker(
                    &stats_json(server),
                    "room_replicas"
                )
                .iter()
                .all(|&r| r == others)),
                "room replicas never settled: {}",
                stats(server)
            );
            return members;
        }
    }
    panic!("64 members and still a worker without any");
}

fn raw_text(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (fin, op, payload) = read_frame(s).expect("a message");
    assert!(
        fin && op == 1,
        "{op} {:?}",
        String::from_utf8_lossy(&payload)
    );
    String::from_utf8(payload).unwrap()
}

fn raw_send(s: &mut TcpStream, text: &str) {
    use std::io::Write as _;
    s.write_all(&frame(true, 1, text.as_bytes())).unwrap();
}

#[test]
fn with_workers_each_process_subscribes_once_and_members_everywhere_get_each_message_once() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start(free_port());
    let prefix = prefix("workers");
    let channel = format!("{prefix}:room:w");
    let a = node(redis.port, &prefix, &["--workers", "3"]);
    let b = node(redis.port, &prefix, &["--workers", "2"]);
    let mut on_a = members_on_every_worker(&a, "w", 3);
    let mut on_b = members_on_every_worker(&b, "w", 2);
    // One subscriber per process: the workers share their process's link.
    assert!(redis.wait_numsub(&channel, 2), "{}", redis.numsub(&channel));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(redis.numsub(&channel), 2, "a subscription per worker?");

    // Every member but the sender, on both processes and every worker, gets each once, in
    // order; the closing "end" shows nothing was doubled in between.
    let (sender, rest_a) = on_a.split_first_mut().unwrap();
    for m in ["a1", "a2", "end"] {
        raw_send(sender, m);
    }
    for (i, member) in rest_a.iter_mut().chain(on_b.iter_mut()).enumerate() {
        let got: Vec<String> = (0..3).map(|_| raw_text(member)).collect();
        assert_eq!(got, ["a1", "a2", "end"], "member {i}");
    }
    // `POST /publish` on B, whichever worker answers it, reaches every member of A.
    publish(&b, "w", "from-b");
    for (i, member) in on_a.iter_mut().enumerate() {
        assert_eq!(raw_text(member), "from-b", "member {i} of A");
    }
    for (i, member) in on_b.iter_mut().enumerate() {
        assert_eq!(raw_text(member), "from-b", "member {i} of B");
    }
    assert_eq!(redis_count(&a, "dropped"), 0);
    assert_eq!(redis_count(&b, "dropped"), 0);
}

/// A room program for the lease test: greets with its PID, then answers each line with
/// `got:LINE`.
fn room_program() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wsloop-cluster-exec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("program.sh");
    std::fs::write(
        &path,
        "#!/bin/sh\necho \"started $$\"\nwhile IFS= read -r line; do echo \"got:$line\"; done\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The room programs a node runs now.
fn programs_of(server: &TestServer) -> Vec<u32> {
    children_of(server.child.id())
}

#[test]
fn a_room_program_runs_on_one_node_members_everywhere_hear_it_and_it_moves_when_its_node_empties() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start(free_port());
    let prefix = prefix("room-exec");
    let spec = format!("chat={}", room_program().display());
    let extra = [
        "--room-exec",
        &spec,
        "--room-exec-grace",
        "300ms",
        "--room-exec-lease-retry",
        "200ms",
    ];
    let (a, b) = (
        node(redis.port, &prefix, &extra),
        node(redis.port, &prefix, &extra),
    );
    assert!(within(Duration::from_secs(5), || connected(&a) && connected(&b)));

    // A's member is first: A takes the lease and runs the program.
    let mut a1 = a.ws_raw("/room/chat");
    let first: u32 = raw_text(&mut a1)
        .strip_prefix("started ")
        .expect("the program's greeting")
        .parse()
        .unwrap();
    assert_eq!(programs_of(&a), [first]);
    // B's member joins: B asks for the lease again and again and never gets it.
    let mut b1 = b.ws_raw("/room/chat");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        programs_of(&b),
        Vec::<u32>::new(),
        "two nodes run the program"
    );
    assert_eq!(programs_of(&a), [first]);

    // B's member speaks: A's member hears it, the program on A hears it once, and its answer
    // reaches both members once.
    raw_send(&mut b1, "hi");
    assert_eq!(raw_text(&mut a1), "hi");
    assert_eq!(raw_text(&mut a1), "got:hi");
    assert_eq!(raw_text(&mut b1), "got:hi");
    // And A's member: the answer, once each, in order after the message itself.
    raw_send(&mut a1, "yo");
    assert_eq!(raw_text(&mut b1), "yo");
    assert_eq!(raw_text(&mut b1), "got:yo");
    assert_eq!(raw_text(&mut a1), "got:yo");

    // A's member leaves: A ends its program after the grace period and releases the lease;
    // B, which still has a member, takes it and starts its own.
    drop(a1);
    let second: u32 = raw_text(&mut b1)
        .strip_prefix("started ")
        .expect("the program's greeting from B")
        .parse()
        .unwrap();
    assert_ne!(first, second);
    assert!(
        gone_within(first, Duration::from_secs(5)),
        "A's program lives on"
    );
    assert_eq!(programs_of(&b), [second]);
    assert_eq!(programs_of(&a), Vec::<u32>::new());
    raw_send(&mut b1, "again");
    assert_eq!(raw_text(&mut b1), "got:again");

    // The last member leaves: no program anywhere.
    drop(b1);
    assert!(
        gone_within(second, Duration::from_secs(5)),
        "B's program lives on"
    );
}

#[test]
fn with_workers_and_two_nodes_a_room_program_runs_once_and_every_member_hears_each_line_once() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start(free_port());
    let prefix = prefix("room-exec-workers");
    let spec = format!("chat={}", room_program().display());
    let extra = ["--workers", "2", "--room-exec", &spec];
    let (a, b) = (
        node(redis.port, &prefix, &extra),
        node(redis.port, &prefix, &extra),
    );
    assert!(within(Duration::from_secs(5), || redis_field(
        &stats(&a),
        "connected"
    ) == "true"
        && redis_field(&stats(&b), "connected") == "true"));
    // The first member hears the program's greeting (it starts once A holds the lease).
    let mut first = a.ws_raw("/room/chat");
    let pid: u32 = raw_text(&mut first)
        .strip_prefix("started ")
        .expect("a greeting")
        .parse()
        .unwrap();
    let mut on_a = members_on_every_worker(&a, "chat", 2);
    on_a.push(first);
    let mut on_b = members_on_every_worker(&b, "chat", 2);
    std::thread::sleep(Duration::from_millis(300));
    let running: Vec<u32> = programs_of(&a).into_iter().chain(programs_of(&b)).collect();
    assert_eq!(running, [pid], "one program for the room across both nodes");

    // A member on B speaks: every other member on both nodes and all workers hears it once,
    // then the program's answer reaches every member once.
    let (sender, rest_b) = on_b.split_first_mut().unwrap();
    raw_send(sender, "hi");
    for (i, m) in rest_b.iter_mut().chain(on_a.iter_mut()).enumerate() {
        assert_eq!(raw_text(m), "hi", "member {i}");
        assert_eq!(raw_text(m), "got:hi", "member {i}");
    }
    assert_eq!(raw_text(sender), "got:hi");
    // And one on A's other worker: the same.
    let last = on_a.len() - 1;
    raw_send(&mut on_a[last], "yo");
    for (i, m) in on_a[..last].iter_mut().chain(on_b.iter_mut()).enumerate() {
        assert_eq!(raw_text(m), "yo", "member {i}");
        assert_eq!(raw_text(m), "got:yo", "member {i}");
    }
    assert_eq!(raw_text(&mut on_a[last]), "got:yo");

    drop(on_a);
    drop(on_b);
    assert!(
        gone_within(pid, Duration::from_secs(8)),
        "the program outlived its members"
    );
}
