//! Protection over real sockets: the `Origin` check on upgrades and `POST /publish`,
//! request-target forms, `--max-per-ip`, descriptors running out (`prlimit`), and start-up
//! errors that name their subject.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// An upgrade of `target` with this `Host` and maybe an `Origin`.
fn upgrade(target: &str, host: &str, origin: Option<&str>) -> String {
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\n{origin}Upgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// `POST /publish/r` with this `Host` and maybe an `Origin`.
fn publish(host: &str, origin: Option<&str>) -> String {
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    format!(
        "POST /publish/r HTTP/1.1\r\nHost: {host}\r\n{origin}Content-Type: text/plain\r\n\
         Content-Length: 2\r\nConnection: close\r\n\r\nhi"
    )
}

/// The status of an upgrade and of a publish sent with the same `Host` and `Origin`.
fn both(server: &TestServer, host: &str, origin: Option<&str>) -> (u16, u16) {
    let up = exchange(server, &upgrade("/echo", host, origin)).0;
    let publ = exchange(server, &publish(host, origin)).0;
    (up, publ)
}

#[test]
fn origin_same_origin_or_none_is_served_and_cross_origin_gets_403() {
    let server = TestServer::start(&[]);
    let own = server.addr.to_string();
    let port = server.addr.port();

    assert_eq!(both(&server, &own, None), (101, 200), "no Origin");
    let same = format!("http://{own}");
    assert_eq!(both(&server, &own, Some(&same)), (101, 200), "own origin");
    let shouting = format!("HTTP://{own}");
    assert_eq!(both(&server, &own, Some(&shouting)), (101, 200));
    // A default port is no port (RFC 6454 §4).
    assert_eq!(
        both(&server, "localhost", Some("http://localhost:80")),
        (101, 200)
    );
    assert_eq!(
        both(&server, "localhost:80", Some("http://localhost")),
        (101, 200)
    );
    // Another port or scheme is another origin.
    let other_port = format!("http://127.0.0.1:{}", port.wrapping_add(1).max(1));
    assert_eq!(both(&server, &own, Some(&other_port)), (403, 403));
    let https = format!("https://{own}");
    assert_eq!(both(&server, &own, Some(&https)), (403, 403));

    let (code, head, body) = exchange(
        &server,
        &upgrade("/echo", &own, Some("http://evil.example")),
    );
    assert_eq!(code, 403, "{head}");
    assert_eq!(body, "cross-origin request refused\n");
    assert_eq!(header(&head, "connection"), Some("close"));
    assert!(server.wait_log("Origin http://evil.example refused"));
    assert!(server.wait_log("to allow it: --allowed-origin http://evil.example"));

    let (code, _, body) = exchange(&server, &publish(&own, Some("http://evil.example")));
    assert_eq!(code, 403);
    assert_eq!(body, "cross-origin request refused\n");

    let (code, _, body) = exchange(&server, &upgrade("/echo", &own, Some("null")));
    assert_eq!(code, 403);
    assert_eq!(body, "Origin null is not allowed\n");
    assert!(server.wait_log("--allowed-origin null"));
    assert_eq!(both(&server, &own, Some("null")).1, 403);

    // Not an origin at all: a path, userinfo, garbage.
    for bad in [
        format!("http://{own}/"),
        format!("http://user@{own}"),
        "garbage".to_string(),
    ] {
        assert_eq!(both(&server, &own, Some(&bad)), (403, 403), "{bad}");
    }
    // Static pages are not guarded: a page may load its scripts with an Origin header.
    let (code, _, _) = exchange(
        &server,
        &format!("GET / HTTP/1.1\r\nHost: {own}\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(code, 200);
}

#[test]
fn allowed_origins_exact_wildcard_null() {
    let server = TestServer::start(&[
        "--allowed-origin",
        "https://app.example",
        "--allowed-origin",
        "https://*.example.com",
        "--allowed-origin",
        "null",
    ]);
    let own = server.addr.to_string();
    for ok in [
        "https://app.example",
        "https://APP.example:443",
        "https://a.example.com",
        "https://a.b.example.com",
        "null",
        &format!("http://{own}"),
    ] {
        assert_eq!(both(&server, &own, Some(ok)), (101, 200), "{ok}");
    }
    for refused in [
        "https://example.com",
        "https://evilexample.com",
        "https://a.example.com.evil",
        "http://a.example.com",
        "http://app.example",
        "http://evil.example",
    ] {
        assert_eq!(both(&server, &own, Some(refused)), (403, 403), "{refused}");
    }
}

#[test]
fn allowed_origin_star_allows_any_origin() {
    let server = TestServer::start(&["--allowed-origin", "*"]);
    let own = server.addr.to_string();
    for ok in ["http://evil.example", "null", "https://x.test:8443"] {
        assert_eq!(both(&server, &own, Some(ok)), (101, 200), "{ok}");
    }
    // Still not an origin.
    assert_eq!(
        both(&server, &own, Some("http://evil.example/x")),
        (403, 403)
    );
}

#[test]
fn malformed_allowed_origin_is_a_usage_error() {
    let (code, stderr) = run_to_exit(&["--allowed-origin", "https://*example.com"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--allowed-origin \"https://*example.com\""),
        "{stderr}"
    );
}

#[test]
fn request_target_forms() {
    let server = TestServer::start(&[]);
    let own = server.addr.to_string();
    // RFC 9112 §3.2.2: absolute-form MUST be accepted, and its authority stands in for Host.
    let target = format!("http://{own}/echo");
    let (code, head, _) = exchange(
        &server,
        &upgrade(&target, "elsewhere.test", Some(&format!("http://{own}"))),
    );
    assert_eq!(code, 101, "{head}");
    let (code, _, _) = exchange(
        &server,
        &format!("GET http://{own}/stats HTTP/1.1\r\nHost: {own}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(code, 200);
    let (code, _, body) = exchange(
        &server,
        &format!(
            "POST http://{own}/publish/r HTTP/1.1\r\nHost: {own}\r\nContent-Length: 1\r\n\r\nx"
        ),
    );
    assert_eq!((code, body.as_str()), (200, "{\"delivered\":0}"));
    for (target, reason) in [
        ("/echo#frag", "request-target with a #fragment\n"),
        ("*", "request-target * is only for OPTIONS\n"),
        (
            "http://u@h/echo",
            "absolute request-target needs http(s)://host and no user@\n",
        ),
        (
            "echo",
            "request-target must start with / (or be http://host/...)\n",
        ),
    ] {
        let (code, _, body) = exchange(&server, &upgrade(target, &own, None));
        assert_eq!((code, body.as_str()), (400, reason), "{target}");
    }
}

#[test]
fn max_per_ip_answers_429_with_retry_after_then_serves_again() {
    let server = TestServer::start(&["--max-per-ip", "3"]);
    let mut open: Vec<TcpStream> = (0..3).map(|_| server.ws_raw("/echo")).collect();

    let (code, head, body) = exchange(&server, &upgrade_request("/echo", &[]));
    assert_eq!(code, 429, "{head}");
    assert_eq!(header(&head, "retry-after"), Some("5"));
    assert_eq!(
        body,
        "too many connections from this address, try again later\n"
    );
    assert!(server.wait_log("--max-per-ip 3"));
    // Plain HTTP counts too: the limit is on connections.
    let (code, _, _) = exchange(
        &server,
        "GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 429);

    let mut gone = open.pop().unwrap();
    gone.write_all(&frame(true, 8, &1000u16.to_be_bytes()))
        .unwrap();
    assert_eq!(read_close_code(&mut gone), Some(1000));
    drop(gone);
    // The server notices the close on its own time: retry (bounded) until it has.
    let end = Instant::now() + Duration::from_secs(5);
    let mut s = loop {
        let mut s = server.connect();
        s.write_all(upgrade_request("/echo", &[]).as_bytes())
            .unwrap();
        let head = read_head(&mut s);
        if status(&head) == 101 {
            break s;
        }
        assert_eq!(status(&head), 429, "{head}");
        assert!(Instant::now() < end, "a freed slot was never given back");
        std::thread::sleep(Duration::from_millis(20));
    };
    s.write_all(&frame(true, 1, b"again")).unwrap();
    assert_eq!(read_frame(&mut s).unwrap(), (true, 1, b"again".to_vec()));
    assert_eq!(open.len(), 2);
}

#[test]
fn out_of_descriptors_refuses_then_serves_again() {
    let server = TestServer::start(&[]);
    let pid = server.child.id().to_string();
    let limited = Command::new("/usr/bin/prlimit")
        .args(["--pid", &pid, "--nofile=128:128"])
        .status()
        .expect("run prlimit");
    assert!(limited.success());

    // More connections than the server has descriptors; each is accepted or refused.
    let mut held: Vec<TcpStream> = (0..140)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    assert!(
        server.wait_log("accept failed: Too many open files"),
        "no accept error logged"
    );
    // While out of descriptors, a newcomer is answered (503), not left waiting.
    let mut late = server.connect();
    let head = read_head(&mut late);
    assert_eq!(status(&head), 503, "{head:?}");
    assert!(!server.log.lock().unwrap().contains("(os error"));

    held.clear();
    drop(late);
    // Descriptors come back as the server sees the closes: a new client gets in within 3 s.
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let mut s = server.connect();
        s.write_all(upgrade_request("/echo", &[]).as_bytes())
            .unwrap();
        let head = read_head(&mut s);
        if status(&head) == 101 {
            s.write_all(&frame(true, 1, b"back")).unwrap();
            assert_eq!(read_frame(&mut s).unwrap(), (true, 1, b"back".to_vec()));
            break;
        }
        assert!(
            Instant::now() < end,
            "not served 3 s after descriptors were freed: {head:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the binary with `args` until it exits (killed after 10 s): its exit code and stderr.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsloop"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wsloop {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code(), stderr)
}

#[test]
fn start_up_errors_name_their_subject() {
    let (code, stderr) = run_to_exit(&["--bind", "192.0.2.1", "--port", "9"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot listen on 192.0.2.1:9: Cannot assign requested address\n"),
        "{stderr}"
    );
    assert!(!stderr.contains("os error"), "{stderr}");

    let (code, stderr) = run_to_exit(&["--port", "0", "--www", "/nonexistent"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("--www /nonexistent: No such file or directory\n"),
        "{stderr}"
    );

    let (code, stderr) = run_to_exit(&["--port", "0", "--exec", "/nonexistent/prog"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("--exec /nonexistent/prog: No such file or directory\n"),
        "{stderr}"
    );

    let (code, stderr) = run_to_exit(&["--no-such-flag"]);
    assert_eq!(code, Some(2), "{stderr}");
    let (code, stderr) = run_to_exit(&["--protocol", "a b"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--protocol \"a b\""), "{stderr}");
}
