//! `wsloop client` as a subprocess against the real server: lines in, messages out, and the
//! exit status for each way a connection can end.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// What a client run left behind.
struct Run {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
    took: Duration,
}

impl Run {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?} after {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.code,
            self.took,
            self.out(),
            self.stderr
        )
    }
}

/// Runs `wsloop client ARGS` with `input` on a pipe as stdin; killed if it runs over 20s.
fn client(args: &[&str], input: &[u8]) -> Run {
    client_with(args, Stdio::piped(), input)
}

/// Runs the client with the given stdin; `input` is written to it when it is a pipe.
fn client_with(args: &[&str], stdin: Stdio, input: &[u8]) -> Run {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsloop"))
        .arg("client")
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the client");
    let pipe = child.stdin.take();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        if let Some(mut pipe) = pipe {
            let _ = pipe.write_all(&input);
        }
    });
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let end = start + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for the client") {
            break Some(s);
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    let run = Run {
        code: status.and_then(|s| s.code()),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        took: start.elapsed(),
    };
    assert!(status.is_some(), "the client hung: {run:?}");
    run
}

#[test]
fn echoes_several_lines_and_exits_0_after_the_close() {
    let server = TestServer::start(&[]);
    let input = "one\ntwo\n\nκόσμε 🎉\nlast line without newline";
    let run = client(&[&server.url("/echo")], input.as_bytes());
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.out(), format!("{input}\n"), "{run:?}");
    assert!(run.stderr.is_empty(), "{run:?}");
}

#[test]
fn binary_messages_are_raw_bytes_and_a_line() {
    let server = TestServer::start(&[]);
    let input = b"\x00\x01\xff\xfe bytes\n\xc3\x28\n";
    let run = client(&[&server.url("/"), "--binary"], input);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, input, "{run:?}");
}

#[test]
fn invalid_utf8_needs_binary() {
    let server = TestServer::start(&[]);
    let run = client(&[&server.url("/")], b"ok\n\xc3\x28\n");
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("not UTF-8"), "{run:?}");
}

#[test]
fn count_exits_after_n_messages_even_when_stdin_ended_first() {
    let server = TestServer::start(&[]);
    let run = client(
        &[&server.url("/echo"), "--count", "2", "--timeout", "5s"],
        b"a\nb\nc\n",
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.out(), "a\nb\n");
}

#[test]
fn count_times_out_with_exit_5() {
    let server = TestServer::start(&[]);
    let run = client(
        &[&server.url("/echo"), "--count", "3", "--timeout", "300ms"],
        b"only one\n",
    );
    assert_eq!(run.code, Some(5), "{run:?}");
    assert_eq!(run.out(), "only one\n");
    assert!(run.stderr.contains("timed out after 300ms"), "{run:?}");
    assert!(run.stderr.contains("1 of 3"), "{run:?}");
    assert!(run.took < Duration::from_secs(3), "{run:?}");
}

#[test]
fn handshake_timeout_on_a_silent_server_exits_5() {
    // A listener that accepts (the kernel does) but never answers the upgrade.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", silent.local_addr().unwrap());
    let run = client(&[&url, "--timeout", "300ms"], b"");
    assert_eq!(run.code, Some(5), "{run:?}");
    assert!(
        run.stderr
            .contains("timed out after 300ms waiting for the upgrade"),
        "{run:?}"
    );
}

#[test]
fn the_negotiated_protocol_is_shown_with_v() {
    let server = TestServer::start(&["--protocol", "chat,superchat"]);
    let run = client(
        &[
            &server.url("/echo"),
            "-v",
            "--protocol",
            "other",
            "--protocol",
            "superchat,chat",
        ],
        b"hi\n",
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.out(), "hi\n");
    assert!(run.stderr.contains("(protocol: chat)"), "{run:?}");
    let run = client(&[&server.url("/echo"), "-v", "--protocol", "nope"], b"");
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stderr.contains("no protocol chosen"), "{run:?}");
}

#[test]
fn headers_reach_the_server() {
    let server = TestServer::start(&[]);
    // Harmless extra headers change nothing (an Origin must be the server's own to pass).
    let origin = format!("Origin: http://{}", server.addr);
    let run = client(
        &[
            &server.url("/echo"),
            "-H",
            "X-Trace: abc 123",
            "--header",
            &origin,
        ],
        b"hi\n",
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.out(), "hi\n");
    // One that replaces the client's own Sec-WebSocket-Version gets the server's 426.
    let run = client(
        &[&server.url("/echo"), "--header", "Sec-WebSocket-Version: 8"],
        b"hi\n",
    );
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr
            .contains("server refused the upgrade: 426 Upgrade Required: unsupported"),
        "{run:?}"
    );
    // A malformed one is a usage error.
    let run = client(&[&server.url("/echo"), "--header", "no colon"], b"");
    assert_eq!(run.code, Some(2), "{run:?}");
}

#[test]
fn an_unknown_path_is_refused_with_the_status_and_reason() {
    let server = TestServer::start(&[]);
    let run = client(&[&server.url("/no/such/endpoint")], b"hi\n");
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(
        run.stderr.trim_end(),
        "wsloop client: server refused the upgrade: 404 Not Found: no WebSocket endpoint at this path",
    );
    assert!(run.stdout.is_empty());
}

#[test]
fn connection_refused_exits_1() {
    // A port that was free a moment ago: nothing listens there now.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let run = client(&[&format!("ws://127.0.0.1:{port}/")], b"hi\n");
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("cannot connect to 127.0.0.1:"),
        "{run:?}"
    );
    assert!(run.stderr.contains("refused"), "{run:?}");
}

#[test]
fn bad_urls_exit_2() {
    for url in [
        "https://127.0.0.1/",
        "http://127.0.0.1/",
        "ws://127.0.0.1:99999/",
    ] {
        let run = client(&[url], b"");
        assert_eq!(run.code, Some(2), "{url}: {run:?}");
        assert!(run.stderr.contains("bad URL"), "{run:?}");
    }
}

#[test]
fn an_abnormal_close_exits_3_and_shows_the_code() {
    let server = TestServer::start(&["--max-message-size", "10"]);
    let run = client(
        &[&server.url("/echo")],
        b"short\nthis line is over ten bytes\n",
    );
    assert_eq!(run.code, Some(3), "{run:?}");
    assert_eq!(run.out(), "short\n");
    assert!(run.stderr.contains("closed by server: 1009"), "{run:?}");
}

/// A fake server's side of the handshake: reads the request head and answers a correct 101,
/// with `then` in the same write.
fn fake_upgrade(s: &mut std::net::TcpStream, then: &[u8]) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let key = header(&head, "sec-websocket-key").unwrap_or("").to_string();
    let accept = wsloop::handshake::accept_key(key.as_bytes());
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes();
    resp.extend_from_slice(then);
    s.write_all(&resp).unwrap();
}

#[test]
fn a_dropped_connection_exits_4() {
    // A fake server: a correct 101, one message, then a TCP close with no close frame.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let fake = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // The first message rides in the same write as the head.
        fake_upgrade(&mut s, &[0x81, 5, b'h', b'e', b'l', b'l', b'o']);
        std::thread::sleep(Duration::from_millis(100));
    });
    let run = client(&[&url, "--no-close", "--timeout", "5s"], b"");
    fake.join().unwrap();
    assert_eq!(run.code, Some(4), "{run:?}");
    assert_eq!(run.out(), "hello\n");
    assert!(
        run.stderr.contains("dropped without a close frame"),
        "{run:?}"
    );
}

#[test]
fn a_server_that_stays_silent_after_our_close_times_out_with_5() {
    // A fake server that upgrades, then reads and ignores everything.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let fake = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
        fake_upgrade(&mut s, &[]);
        let mut sink = [0u8; 1024];
        while s.read(&mut sink).map(|n| n > 0).unwrap_or(false) {}
    });
    let run = client(&[&url], b"");
    fake.join().unwrap();
    assert_eq!(run.code, Some(5), "{run:?}");
    assert!(
        run.stderr.contains("waiting for the server's close"),
        "{run:?}"
    );
}

#[test]
fn a_bad_accept_key_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let fake = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = read_head(&mut s);
        let _ = s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        );
    });
    let run = client(&[&url], b"hi\n");
    fake.join().unwrap();
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("Sec-WebSocket-Accept"), "{run:?}");
}

#[test]
fn stdin_from_dev_null_and_from_a_file() {
    let server = TestServer::start(&[]);
    // /dev/null: nothing to send, a clean close.
    let run = client_with(&[&server.url("/echo")], Stdio::null(), b"");
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    // A regular file (epoll refuses those; the reader thread does not care).
    let path = std::env::temp_dir().join(format!("wsloop-client-{}.txt", std::process::id()));
    std::fs::write(&path, "from\na file\n").unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let run = client_with(&[&server.url("/echo")], Stdio::from(file), b"");
    let _ = std::fs::remove_file(&path);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.out(), "from\na file\n");
}

#[test]
fn many_lines_and_a_large_message_round_trip() {
    let server = TestServer::start(&[]);
    let mut input = String::new();
    for i in 0..5000 {
        input.push_str(&format!("line {i}\n"));
    }
    input.push_str(&"x".repeat(3 << 20));
    input.push('\n');
    let run = client(&[&server.url("/echo")], input.as_bytes());
    assert_eq!(run.code, Some(0), "exit {:?}: {}", run.code, run.stderr);
    assert!(run.stdout == input.as_bytes(), "echo differs");
}

#[test]
fn a_message_over_the_clients_limit_closes_with_1009_and_exits_3() {
    let server = TestServer::start(&[]);
    let run = client(
        &[&server.url("/echo"), "--max-message-size", "3"],
        b"abc\nhello\n",
    );
    assert_eq!(run.code, Some(3), "{run:?}");
    assert_eq!(run.out(), "abc\n");
    assert!(run.stderr.contains("closing with 1009"), "{run:?}");
}
