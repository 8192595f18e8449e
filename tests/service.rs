//! Running as a service: `/healthz` through shutdown.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn get(s: &mut TcpStream, path: &str) -> (String, String) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let (head, body) = read_response(s);
    (head, String::from_utf8_lossy(&body).into_owned())
}

/// SIGTERM by the PID this test started.
fn sigterm(server: &TestServer) {
    let pid = server.child.id() as i32;
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

fn wait_exit(server: &mut TestServer, within: Duration) {
    let end = Instant::now() + within;
    while server.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "the server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn healthz_turns_503_when_shutdown_begins_on_keep_alive_and_new_connections() {
    let mut server = TestServer::start(&["--close-timeout", "3s"]);
    let mut keep = server.connect();
    let (head, body) = get(&mut keep, "/healthz");
    assert_eq!((status(&head), body.as_str()), (200, "ok\n"), "{head}");
    assert_eq!(header(&head, "Connection"), Some("keep-alive"));
    // A WebSocket that does not answer the close keeps the drain going for --close-timeout.
    let mut ws = server.ws_raw("/echo");
    sigterm(&server);
    assert_eq!(read_close_code(&mut ws), Some(1001));
    // The keep-alive connection is answered, and closed after the answer.
    let (head, body) = get(&mut keep, "/healthz");
    assert_eq!((status(&head), body.as_str()), (503, "shutting down\n"));
    assert_eq!(header(&head, "Connection"), Some("close"));
    assert!(closed_by_server(&mut keep));
    // A new connection (the usual health check) gets 503 too, not a hang.
    let mut fresh = server.connect();
    fresh
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(status(&read_head(&mut fresh)), 503);
    wait_exit(&mut server, Duration::from_secs(10));
    assert!(server.wait_log("stopped"));
}

#[test]
fn shutdown_delay_keeps_serving_with_healthz_503_then_closes() {
    let mut server = TestServer::start(&["--shutdown-delay", "1500ms"]);
    let mut ws = server.ws_raw("/echo");
    sigterm(&server);
    assert!(server.wait_log("shutting down in"));
    let t0 = Instant::now();
    // During the delay: health is 503, everything else still served, new clients too.
    let mut fresh = server.connect();
    let (head, _) = get(&mut fresh, "/healthz");
    assert_eq!(status(&head), 503, "{head}");
    let (head, _) = get(&mut fresh, "/stats");
    assert_eq!(status(&head), 200, "{head}");
    ws.write_all(&frame(true, 1, b"still here")).unwrap();
    assert_eq!(read_frame(&mut ws).unwrap().2, b"still here");
    let mut late = server.ws_raw("/echo");
    // Then the close: 1001 for every WebSocket, after the delay.
    assert_eq!(read_close_code(&mut ws), Some(1001));
    assert_eq!(read_close_code(&mut late), Some(1001));
    assert!(
        t0.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        t0.elapsed()
    );
    for s in [&mut ws, &mut late] {
        s.write_all(&frame(true, 8, &1001u16.to_be_bytes()))
            .unwrap();
    }
    wait_exit(&mut server, Duration::from_secs(10));
}
