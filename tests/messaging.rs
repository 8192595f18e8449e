//! Rooms, HTTP publish, stats, server push, the operator console and a program per
//! connection, over real sockets with `tungstenite` as the client.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<TcpStream>;

fn ws(server: &TestServer, path: &str) -> Ws {
    let stream = server.connect();
    tungstenite::client(server.url(path), stream)
        .unwrap_or_else(|e| panic!("upgrade on {path}: {e}"))
        .0
}

/// Reads the next data message, or None if nothing arrives within `wait`.
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

fn publish(
    server: &TestServer,
    room: &str,
    content_type: &str,
    body: &str,
    auth: Option<&str>,
) -> (u16, String) {
    let auth = auth
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST /publish/{room} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (code, _, body) = exchange(server, &req);
    (code, body)
}

/// Waits until `/stats` shows `needle` (joins are processed asynchronously to the client).
fn wait_stats(server: &TestServer, needle: &str) -> String {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, _, body) = exchange(
            server,
            "GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        if body.contains(needle) || Instant::now() > end {
            return body;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn rooms_deliver_to_the_others_and_never_across_rooms() {
    let server = TestServer::start(&[]);
    let mut a1 = ws(&server, "/room/a");
    let mut a2 = ws(&server, "/room/a");
    let mut a3 = ws(&server, "/room/a");
    let mut b1 = ws(&server, "/room/b");
    wait_stats(&server, r#""a":3"#);
    a1.send(Message::text("hello room a")).unwrap();
    assert_eq!(text(&mut a2), "hello room a");
    assert_eq!(text(&mut a3), "hello room a");
    a2.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    assert_eq!(
        next_message(&mut a1, Duration::from_secs(5)),
        Some(Message::binary(vec![1u8, 2, 3]))
    );
    assert_eq!(
        next_message(&mut a3, Duration::from_secs(5)),
        Some(Message::binary(vec![1u8, 2, 3]))
    );
    // Neither the sender (no --room-echo) nor room b hears any of it.
    assert_eq!(next_message(&mut a1, Duration::from_millis(300)), None);
    assert_eq!(next_message(&mut b1, Duration::from_millis(300)), None);
    b1.send(Message::text("only b")).unwrap();
    assert_eq!(next_message(&mut a1, Duration::from_millis(300)), None);
}

#[test]
fn room_echo_and_room_events() {
    let server = TestServer::start(&["--room-echo", "--room-events"]);
    let mut a = ws(&server, "/room/lobby");
    assert_eq!(
        text(&mut a),
        r#"{"event":"join","room":"lobby","clients":1}"#
    );
    let mut b = ws(&server, "/room/lobby");
    assert_eq!(
        text(&mut a),
        r#"{"event":"join","room":"lobby","clients":2}"#
    );
    assert_eq!(
        text(&mut b),
        r#"{"event":"join","room":"lobby","clients":2}"#
    );
    a.send(Message::text("mine")).unwrap();
    assert_eq!(text(&mut a), "mine");
    assert_eq!(text(&mut b), "mine");
    drop(b);
    assert_eq!(
        text(&mut a),
        r#"{"event":"leave","room":"lobby","clients":1}"#
    );
}

#[test]
fn bad_room_names_are_refused() {
    let server = TestServer::start(&[]);
    for path in [
        "/room/",
        "/room/a%20b",
        "/room/a/b",
        &format!("/room/{}", "x".repeat(65)),
    ] {
        let mut s = server.connect();
        s.write_all(upgrade_request(path, &[]).as_bytes()).unwrap();
        let (head, _) = read_response(&mut s);
        assert_eq!(status(&head), 404, "{path}");
    }
}

#[test]
fn publish_reaches_the_room_with_counts_and_types() {
    let server = TestServer::start(&[]);
    let mut n1 = ws(&server, "/room/news");
    let mut n2 = ws(&server, "/room/news");
    let mut other = ws(&server, "/room/sport");
    wait_stats(&server, r#""news":2"#);
    assert_eq!(
        publish(
            &server,
            "news",
            "text/plain; charset=utf-8",
            "breaking",
            None
        ),
        (200, r#"{"delivered":2}"#.into())
    );
    assert_eq!(text(&mut n1), "breaking");
    assert_eq!(text(&mut n2), "breaking");
    assert_eq!(
        publish(
            &server,
            "news",
            "application/octet-stream",
            "\u{1}\u{2}",
            None
        )
        .0,
        200
    );
    assert_eq!(
        next_message(&mut n1, Duration::from_secs(5)),
        Some(Message::binary(vec![1u8, 2]))
    );
    assert_eq!(next_message(&mut other, Duration::from_millis(300)), None);
    assert_eq!(
        publish(&server, "nobody-here", "text/plain", "x", None),
        (200, r#"{"delivered":0}"#.into())
    );
    assert_eq!(
        publish(&server, "bad%20name", "text/plain", "x", None).0,
        400
    );
    let (code, head, _) = exchange(
        &server,
        "GET /publish/news HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 405);
    assert_eq!(header(&head, "Allow"), Some("POST"));
}

#[test]
fn publish_token_is_required_when_set() {
    let server = TestServer::start(&["--publish-token", "s3cret"]);
    let mut n = ws(&server, "/room/news");
    wait_stats(&server, r#""news":1"#);
    assert_eq!(publish(&server, "news", "text/plain", "x", None).0, 401);
    assert_eq!(
        publish(&server, "news", "text/plain", "x", Some("wrong")).0,
        401
    );
    assert_eq!(next_message(&mut n, Duration::from_millis(200)), None);
    assert_eq!(
        publish(&server, "news", "text/plain", "ok", Some("s3cret")),
        (200, r#"{"delivered":1}"#.into())
    );
    assert_eq!(text(&mut n), "ok");
}

#[test]
fn stats_count_connections_rooms_and_messages() {
    let server = TestServer::start(&[]);
    let mut e = ws(&server, "/echo");
    let _r = ws(&server, "/room/x");
    e.send(Message::text("12345")).unwrap();
    assert_eq!(text(&mut e), "12345");
    let body = wait_stats(&server, r#""x":1"#);
    assert!(body.contains(r#""websockets":2"#), "{body}");
    assert!(body.contains(r#""rooms":{"x":1}"#), "{body}");
    assert!(
        body.contains(r#""messages_in":1,"bytes_in":5,"messages_out":1,"bytes_out":5"#),
        "{body}"
    );
    assert!(body.contains(r#""uptime_s":"#), "{body}");
}

#[test]
fn push_timer_sends_numbered_messages_on_time() {
    let server = TestServer::start(&["--push-every", "200ms", "--push-text", "tick {n} at {time}"]);
    let mut a = ws(&server, "/echo");
    let start = Instant::now();
    let mut last = 0;
    for _ in 0..4 {
        let t = text(&mut a);
        let n: u64 = t.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(n > last, "{t}");
        last = n;
        let time = t.rsplit(' ').next().unwrap();
        assert_eq!(time.len(), 8, "{t}");
    }
    // Four ticks at 200 ms take about 800 ms from the server's start; allow generous slack.
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn push_room_limits_push_to_one_room() {
    let server = TestServer::start(&[
        "--push-every",
        "100ms",
        "--push-room",
        "alerts",
        "--push-text",
        "p{n}",
    ]);
    let mut alerts = ws(&server, "/room/alerts");
    let mut echo = ws(&server, "/echo");
    assert!(text(&mut alerts).starts_with('p'));
    assert_eq!(next_message(&mut echo, Duration::from_millis(400)), None);
}

#[test]
fn console_sends_stdin_lines_and_prints_client_messages() {
    let mut server = TestServer::start_with(&["--console"], |cmd| {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    });
    let mut stdin = server.child.stdin.take().unwrap();
    let stdout = server.child.stdout.take().unwrap();
    let mut everyone = ws(&server, "/echo");
    let mut news = ws(&server, "/room/news");
    wait_stats(&server, r#""news":1"#);
    stdin
        .write_all(b"hello everyone\n@news just news\n")
        .unwrap();
    assert_eq!(text(&mut everyone), "hello everyone");
    assert_eq!(text(&mut news), "hello everyone");
    assert_eq!(text(&mut news), "just news");
    assert_eq!(
        next_message(&mut everyone, Duration::from_millis(300)),
        None
    );
    news.send(Message::text("from a client")).unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = lines.next().unwrap().unwrap();
    assert!(
        line.starts_with("[127.0.0.1:") && line.ends_with(" news] from a client"),
        "{line}"
    );
    // End of stdin does not stop the server.
    drop(stdin);
    assert!(server.wait_log("console: end of input"));
    everyone.send(Message::text("still up")).unwrap();
    assert_eq!(text(&mut everyone), "still up");
}

fn write_script(name: &str, body: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wsloop-exec-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match next_message(ws, Duration::from_secs(5)) {
            Some(Message::Close(f)) => return f.map(|f| f.code),
            Some(_) => continue,
            None => panic!("no close"),
        }
    }
}

#[test]
fn exec_cat_echoes_lines_through_a_child() {
    let server = TestServer::start(&["--exec", "/bin/cat"]);
    let mut c = ws(&server, "/exec");
    for i in 0..20 {
        let msg = format!("line {i}");
        c.send(Message::text(msg.clone())).unwrap();
        assert_eq!(text(&mut c), msg);
    }
    let body = wait_stats(&server, r#""children":1"#);
    assert!(body.contains(r#""children":1"#), "{body}");
}

#[test]
fn exec_counter_then_close_1000_with_cgi_environment() {
    let script = write_script(
        "counter.sh",
        r#"echo "from $REMOTE_ADDR path $REQUEST_PATH query $QUERY_STRING"; i=1; while [ $i -le "$1" ]; do echo $i; i=$((i+1)); done"#,
    );
    let server = TestServer::start(&["--exec", script.to_str().unwrap(), "--", "3"]);
    let mut c = ws(&server, "/exec?x=1");
    assert_eq!(text(&mut c), "from 127.0.0.1 path /exec query x=1");
    for i in 1..=3 {
        assert_eq!(text(&mut c), i.to_string());
    }
    assert_eq!(close_code(&mut c), Some(CloseCode::Normal));
}

#[test]
fn exec_child_exiting_non_zero_closes_1011_and_stderr_is_logged() {
    let script = write_script("fail.sh", "echo partial; echo 'oops on stderr' >&2; exit 3");
    let server = TestServer::start(&["--exec", script.to_str().unwrap()]);
    let mut c = ws(&server, "/exec");
    assert_eq!(text(&mut c), "partial");
    assert_eq!(close_code(&mut c), Some(CloseCode::Error));
    assert!(server.wait_log("stderr: oops on stderr"));
}

#[test]
fn exec_child_ignoring_sigterm_is_killed_and_no_zombie_is_left() {
    let script = write_script(
        "stubborn.sh",
        "trap '' TERM; echo ready; while true; do sleep 0.05; done",
    );
    let server = TestServer::start(&["--exec", script.to_str().unwrap(), "--exec-grace", "200ms"]);
    let mut c = ws(&server, "/exec");
    assert_eq!(text(&mut c), "ready");
    let kids = children_of(server.child.id());
    assert_eq!(kids.len(), 1, "one child expected: {kids:?}");
    drop(c);
    assert!(server.wait_log("ignored SIGTERM, killed"));
    // Reaped: neither running nor a zombie.
    assert!(
        gone_within(kids[0], Duration::from_secs(3)),
        "child {} left behind",
        kids[0]
    );
    assert!(children_of(server.child.id()).is_empty());
}

#[test]
fn exec_children_are_reaped_after_normal_exits() {
    let server = TestServer::start(&["--exec", "/bin/cat"]);
    for _ in 0..5 {
        let mut c = ws(&server, "/exec");
        c.send(Message::text("x")).unwrap();
        assert_eq!(text(&mut c), "x");
        c.close(None).unwrap();
        while next_message(&mut c, Duration::from_secs(2)).is_some_and(|m| !m.is_close()) {}
    }
    // cat sees end of input when stdin closes and exits; every one is reaped.
    let end = Instant::now() + Duration::from_secs(5);
    while !children_of(server.child.id()).is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<_> = children_of(server.child.id())
        .into_iter()
        .map(|p| (p, process_state(p)))
        .collect();
    assert!(left.is_empty(), "children left: {left:?}");
}

#[test]
fn max_children_refuses_with_503() {
    let server = TestServer::start(&["--exec", "/bin/cat", "--max-children", "1"]);
    let mut first = ws(&server, "/exec");
    let mut s = server.connect();
    s.write_all(upgrade_request("/exec", &[]).as_bytes())
        .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert_eq!(status(&resp), 503, "{resp}");
    first.send(Message::text("still works")).unwrap();
    assert_eq!(text(&mut first), "still works");
}

#[test]
fn clean_closes_leave_the_room() {
    let server = TestServer::start(&[]);
    let mut a = ws(&server, "/room/tmp");
    let mut b = ws(&server, "/room/tmp");
    wait_stats(&server, r#""tmp":2"#);
    for c in [&mut a, &mut b] {
        c.close(None).unwrap();
        while next_message(c, Duration::from_secs(2)).is_some_and(|m| !m.is_close()) {}
    }
    let body = wait_stats(&server, r#""rooms":{}"#);
    assert!(body.contains(r#""rooms":{}"#), "{body}");
}

#[test]
fn root_room_with_room_echo_relays_to_everyone() {
    let server = TestServer::start(&["--root-room", "all", "--room-echo"]);
    let mut a = ws(&server, "/");
    let mut b = ws(&server, "/");
    wait_stats(&server, r#""all":2"#);
    a.send(Message::text("to all")).unwrap();
    assert_eq!(text(&mut a), "to all");
    assert_eq!(text(&mut b), "to all");
    // /echo still echoes.
    let mut e = ws(&server, "/echo");
    e.send(Message::text("me")).unwrap();
    assert_eq!(text(&mut e), "me");
}
