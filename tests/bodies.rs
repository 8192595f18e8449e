//! HTTP/1.1 request bodies over real sockets: chunked bodies on `POST /publish` (split at
//! every byte, bad sizes, over the limit, trailers, `Expect: 100-continue`, `curl -T -`),
//! the framing rules of RFC 9112 §6.3, and what `POST` gets where there is nothing to post to.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};

use common::*;

/// A chunked `POST /publish/ROOM` head (keep-alive).
fn chunked_head(room: &str, extra: &str) -> String {
    format!(
        "POST /publish/{room} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
         Transfer-Encoding: chunked\r\n{extra}\r\n"
    )
}

/// The message a room member receives next, as text.
fn next_text(member: &mut TcpStream) -> String {
    let (fin, op, payload) = read_frame(member).expect("a message for the member");
    assert!(fin && op == 1, "a whole text frame, got op {op}");
    String::from_utf8(payload).unwrap()
}

fn body_of(s: &mut TcpStream) -> (u16, String) {
    let (head, body) = read_response(s);
    (status(&head), String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn a_chunked_publish_split_at_every_byte_is_delivered_whole() {
    let server = TestServer::start(&[]);
    let mut member = server.ws_raw("/room/r");
    let mut wire = chunked_head("r", "").into_bytes();
    wire.extend_from_slice(b"6;name=value\r\nhello \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n");
    let mut s = server.connect();
    // Cut in two writes at every byte, on one keep-alive connection.
    for cut in 0..=wire.len() {
        s.write_all(&wire[..cut]).unwrap();
        s.flush().unwrap();
        s.write_all(&wire[cut..]).unwrap();
        assert_eq!(
            body_of(&mut s),
            (200, "{\"delivered\":1}".into()),
            "cut {cut}"
        );
        assert_eq!(next_text(&mut member), "hello world", "cut {cut}");
    }
    // And one byte per write.
    for b in &wire {
        s.write_all(std::slice::from_ref(b)).unwrap();
    }
    assert_eq!(body_of(&mut s), (200, "{\"delivered\":1}".into()));
    assert_eq!(next_text(&mut member), "hello world");
}

#[test]
fn chunk_trailers_are_skipped_and_the_next_request_is_answered() {
    let server = TestServer::start(&[]);
    let mut member = server.ws_raw("/room/t");
    let mut s = server.connect();
    let mut wire = chunked_head("t", "").into_bytes();
    wire.extend_from_slice(b"3\r\nabc\r\n0\r\nDigest: x\r\nX-A: b\r\n\r\n");
    wire.extend_from_slice(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(&wire).unwrap();
    assert_eq!(body_of(&mut s).0, 200);
    assert_eq!(next_text(&mut member), "abc");
    let (code, stats) = body_of(&mut s);
    assert_eq!(code, 200);
    assert!(stats.contains("\"connections\""), "{stats}");
}

#[test]
fn expect_100_continue_is_answered_before_a_chunked_body() {
    let server = TestServer::start(&[]);
    let mut member = server.ws_raw("/room/c");
    let mut s = server.connect();
    s.write_all(chunked_head("c", "Expect: 100-continue\r\n").as_bytes())
        .unwrap();
    let head = read_head(&mut s);
    assert_eq!(status(&head), 100, "{head}");
    s.write_all(b"2\r\nok\r\n0\r\n\r\n").unwrap();
    assert_eq!(body_of(&mut s).0, 200);
    assert_eq!(next_text(&mut member), "ok");
}

#[test]
fn malformed_chunks_get_400_and_close() {
    let server = TestServer::start(&[]);
    for body in [
        &b"zz\r\nhello\r\n0\r\n\r\n"[..],
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"fffffffffffffffff\r\n",
        b"\r\n",
    ] {
        let mut s = server.connect();
        let mut wire = chunked_head("m", "").into_bytes();
        wire.extend_from_slice(body);
        s.write_all(&wire).unwrap();
        let (code, _) = body_of(&mut s);
        assert_eq!(code, 400, "{}", String::from_utf8_lossy(body));
        assert!(closed_by_server(&mut s));
    }
    assert!(server.wait_log("malformed chunk size"));
}

#[test]
fn the_limit_applies_to_the_decoded_size() {
    let server = TestServer::start(&["--max-message-size", "100"]);
    let mut member = server.ws_raw("/room/l");
    // 100 bytes in four chunks: delivered.
    let mut s = server.connect();
    let mut wire = chunked_head("l", "").into_bytes();
    for _ in 0..4 {
        wire.extend_from_slice(b"19\r\n");
        wire.extend_from_slice(&[b'x'; 25]);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&wire).unwrap();
    assert_eq!(body_of(&mut s).0, 200);
    assert_eq!(next_text(&mut member).len(), 100);
    // 101 decoded bytes: 413 and close, before the rest is read; nothing delivered.
    let mut s = server.connect();
    let mut wire = chunked_head("l", "").into_bytes();
    wire.extend_from_slice(b"64\r\n");
    wire.extend_from_slice(&[b'y'; 100]);
    wire.extend_from_slice(b"\r\n1\r\n");
    s.write_all(&wire).unwrap();
    assert_eq!(body_of(&mut s).0, 413);
    assert!(closed_by_server(&mut s));
    // One announced chunk over the limit is refused from its size line alone.
    let mut s = server.connect();
    s.write_all(format!("{}ffffff\r\n", chunked_head("l", "")).as_bytes())
        .unwrap();
    assert_eq!(body_of(&mut s).0, 413);
    assert!(closed_by_server(&mut s));
    let (code, stats) = body_of(&mut {
        let mut s = server.connect();
        s.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        s
    });
    assert_eq!(code, 200);
    assert!(stats.contains("\"413\":2"), "{stats}");
}

#[test]
fn transfer_codings_other_than_chunked_and_ambiguous_framing_are_refused() {
    let server = TestServer::start(&[]);
    for (headers, expected) in [
        ("Transfer-Encoding: gzip\r\n", 501),
        ("Transfer-Encoding: gzip, chunked\r\n", 501),
        ("Transfer-Encoding: chunked, chunked\r\n", 400),
        ("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", 400),
        ("Transfer-Encoding: \r\n", 400),
    ] {
        let mut s = server.connect();
        let req =
            format!("POST /publish/x HTTP/1.1\r\nHost: x\r\n{headers}\r\n5\r\nhello\r\n0\r\n\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let (code, reason) = body_of(&mut s);
        assert_eq!(code, expected, "{headers:?}: {reason}");
        assert!(closed_by_server(&mut s), "{headers:?}");
    }
    // HTTP/1.0 has no transfer codings (RFC 9112 §6.1): the framing is faulty.
    let mut s = server.connect();
    s.write_all(b"POST /publish/x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .unwrap();
    assert_eq!(body_of(&mut s).0, 400);
}

#[test]
fn post_where_there_is_nothing_gets_404_and_on_a_page_405() {
    let server = TestServer::start(&[]);
    let mut s = server.connect();
    for (target, expected) in [
        ("/nothing-here", 404),
        ("/no/such/dir/", 404),
        ("/", 405),
        ("/index.html", 405),
    ] {
        let mut wire =
            format!("POST {target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
        wire.push_str("4\r\nbody\r\n0\r\n\r\n");
        s.write_all(wire.as_bytes()).unwrap();
        let (head, _) = read_response(&mut s);
        assert_eq!(status(&head), expected, "{target}: {head}");
        if expected == 405 {
            assert_eq!(header(&head, "Allow"), Some("GET, HEAD"), "{target}");
        }
        // Still usable: the body was read past.
        assert_eq!(header(&head, "Connection"), Some("keep-alive"), "{target}");
    }
}

#[test]
fn curl_streams_a_body_from_stdin_with_chunked() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("curl not installed: skipped");
        return;
    }
    let server = TestServer::start(&[]);
    let mut member = server.ws_raw("/room/curl");
    let url = format!("http://{}/publish/curl", server.addr);
    let mut curl = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-X", "POST", "-T", "-"])
        .args(["-H", "Content-Type: text/plain", &url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start curl");
    let mut stdin = curl.stdin.take().unwrap();
    stdin.write_all(b"streamed ").unwrap();
    stdin.flush().unwrap();
    stdin.write_all(b"from stdin").unwrap();
    drop(stdin);
    let out = curl.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "{\"delivered\":1}");
    assert_eq!(next_text(&mut member), "streamed from stdin");
}
