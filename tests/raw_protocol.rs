//! Raw bytes over TCP: each malformed handshake gets its exact status, each malformed frame its
//! exact close code, and none of it disturbs other clients.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;

fn handshake_status(server: &TestServer, request: &str) -> (u16, String, Vec<u8>) {
    let mut s = server.connect();
    s.write_all(request.as_bytes()).unwrap();
    let (head, body) = read_response(&mut s);
    assert!(
        closed_by_server(&mut s),
        "server must close after a refusal: {head}"
    );
    (status(&head), head, body)
}

#[test]
fn accept_key_matches_the_rfc_example() {
    let server = TestServer::start(&[]);
    let mut s = server.connect();
    s.write_all(upgrade_request("/", &[]).as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(
        header(&head, "Sec-WebSocket-Accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert!(header(&head, "Upgrade")
        .unwrap()
        .eq_ignore_ascii_case("websocket"));
}

#[test]
fn each_bad_handshake_gets_its_status_and_a_reason() {
    let server = TestServer::start(&[]);
    let good = upgrade_request("/", &[]);
    let cases: Vec<(&str, String, u16)> = vec![
        ("POST", good.replacen("GET", "POST", 1), 400),
        ("HTTP/1.0", good.replacen("HTTP/1.1", "HTTP/1.0", 1), 400),
        ("no Host", good.replacen("Host: localhost\r\n", "", 1), 400),
        (
            "Upgrade not websocket",
            good.replacen("Upgrade: websocket", "Upgrade: h2c", 1),
            400,
        ),
        (
            "no Connection: Upgrade",
            good.replacen("Connection: Upgrade", "Connection: keep-alive", 1),
            400,
        ),
        ("short key", good.replacen(KEY, "c2hvcnQ=", 1), 400),
        (
            "key not base64",
            good.replacen(KEY, "!!!!not-base64!!!!!!!!==", 1),
            400,
        ),
        (
            "no key",
            good.replacen(&format!("Sec-WebSocket-Key: {KEY}\r\n"), "", 1),
            400,
        ),
        (
            "garbage",
            "\x16\x03\x01\x00\x05\x01\x00\x00\r\n\r\n".to_string(),
            400,
        ),
        (
            "version 8",
            good.replacen("Version: 13", "Version: 8", 1),
            426,
        ),
        (
            "no version",
            good.replacen("Sec-WebSocket-Version: 13\r\n", "", 1),
            426,
        ),
        ("unknown path", upgrade_request("/nowhere", &[]), 404),
    ];
    for (name, req, want) in cases {
        let (got, head, body) = handshake_status(&server, &req);
        assert_eq!(got, want, "{name}: {head}");
        assert!(!body.is_empty(), "{name}: a one-line reason is expected");
        if want == 426 {
            assert_eq!(header(&head, "Sec-WebSocket-Version"), Some("13"), "{name}");
        }
    }
    assert!(server.wait_log("400 Sec-WebSocket-Key must be base64 of 16 bytes"));
}

#[test]
fn head_over_the_limit_gets_431() {
    let server = TestServer::start(&[]);
    let pad = format!("X-Pad: {}", "a".repeat(9000));
    let (got, _, _) = handshake_status(&server, &upgrade_request("/", &[&pad]));
    assert_eq!(got, 431);
    let server = TestServer::start(&["--max-head-size", "300"]);
    let pad = format!("X-Pad: {}", "a".repeat(200));
    let (got, _, _) = handshake_status(&server, &upgrade_request("/", &[&pad]));
    assert_eq!(got, 431);
}

#[test]
fn head_split_over_many_writes_with_frames_in_the_same_packet() {
    let server = TestServer::start(&[]);
    let mut s = server.connect();
    let mut bytes = upgrade_request("/echo", &[]).into_bytes();
    bytes.extend(frame(true, 1, b"right behind the head"));
    // The head dribbles in, then its last bytes arrive together with a frame.
    let cut = bytes.len() - 30;
    for chunk in bytes[..cut].chunks(7) {
        s.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    s.write_all(&bytes[cut..]).unwrap();
    assert!(read_head(&mut s).starts_with("HTTP/1.1 101"));
    assert_eq!(
        read_frame(&mut s).unwrap(),
        (true, 1, b"right behind the head".to_vec())
    );
}

#[test]
fn a_message_split_at_every_byte_boundary_over_tcp() {
    let server = TestServer::start(&[]);
    let mut s = server.ws_raw("/");
    let mut wire = frame(false, 1, "héllo ".as_bytes());
    wire.extend(frame(true, 9, b"ping"));
    wire.extend(frame(true, 0, "wörld".as_bytes()));
    for chunk in wire.chunks(1) {
        s.write_all(chunk).unwrap();
    }
    assert_eq!(read_frame(&mut s).unwrap(), (true, 10, b"ping".to_vec()));
    assert_eq!(
        read_frame(&mut s).unwrap(),
        (true, 1, "héllo wörld".as_bytes().to_vec())
    );
}

#[test]
fn each_bad_frame_gets_its_close_code_then_tcp_close() {
    let server = TestServer::start(&["--max-message-size", "65536"]);
    let mut unmasked = vec![0x81, 0x02];
    unmasked.extend_from_slice(b"hi");
    let mut rsv1 = frame(true, 1, b"x");
    rsv1[0] |= 0x40;
    let mut rsv3 = frame(true, 2, b"x");
    rsv3[0] |= 0x10;
    let mut top_bit = vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0];
    top_bit.extend_from_slice(&[1, 2, 3, 4]);
    let mut fragmented_text_then_text = frame(false, 1, b"a");
    fragmented_text_then_text.extend(frame(true, 1, b"b"));
    let mut bad_utf8_across_fragments = frame(false, 1, &[0xce, 0xba, 0xf4]);
    bad_utf8_across_fragments.extend(frame(true, 0, &[0x90, 0x80, 0x80]));
    let mut too_big_fragmented = frame(false, 2, &[0; 40000]);
    too_big_fragmented.extend(frame(true, 0, &[0; 40000]));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame", unmasked, 1002),
        ("RSV1 without extension", rsv1, 1002),
        ("RSV3", rsv3, 1002),
        ("reserved data opcode 3", frame(true, 3, b""), 1002),
        ("reserved control opcode 0xB", frame(true, 0xB, b""), 1002),
        ("ping over 125 bytes", frame(true, 9, &[0; 126]), 1002),
        ("fragmented ping", frame(false, 9, b"x"), 1002),
        ("continuation without start", frame(true, 0, b"x"), 1002),
        (
            "new message inside a fragmented one",
            fragmented_text_then_text,
            1002,
        ),
        ("64-bit length with top bit", top_bit, 1002),
        (
            "invalid UTF-8 text",
            frame(true, 1, &[0x61, 0xff, 0x62]),
            1007,
        ),
        (
            "UTF-8 broken across fragments",
            bad_utf8_across_fragments,
            1007,
        ),
        (
            "frame over the size limit",
            frame(true, 2, &[0; 65537]),
            1009,
        ),
        ("message over the size limit", too_big_fragmented, 1009),
        ("close with 1-byte body", frame(true, 8, &[0x03]), 1002),
        (
            "close code 1005",
            frame(true, 8, &1005u16.to_be_bytes()),
            1002,
        ),
        (
            "close code 1016",
            frame(true, 8, &1016u16.to_be_bytes()),
            1002,
        ),
        (
            "close code 2999",
            frame(true, 8, &2999u16.to_be_bytes()),
            1002,
        ),
        (
            "close code 5000",
            frame(true, 8, &5000u16.to_be_bytes()),
            1002,
        ),
        (
            "close reason not UTF-8",
            frame(true, 8, &[0x03, 0xe8, 0xff, 0xfe]),
            1007,
        ),
    ];
    for (name, bytes, code) in cases {
        let mut s = server.ws_raw("/");
        s.write_all(&bytes).unwrap();
        assert_eq!(read_close_code(&mut s), Some(code), "{name}");
        // Answer the close; the server then closes TCP.
        let _ = s.write_all(&frame(true, 8, &code.to_be_bytes()));
        assert!(closed_by_server(&mut s), "{name}: TCP should close");
    }
    assert!(server.wait_log("reserved opcode 0x3: closing with 1002"));
}

#[test]
fn messages_before_a_bad_frame_are_echoed_first() {
    let server = TestServer::start(&[]);
    let mut s = server.ws_raw("/");
    let mut wire = frame(true, 1, b"one");
    wire.extend(frame(true, 2, b"two"));
    wire.extend(frame(true, 5, b"bad"));
    wire.extend(frame(true, 1, b"never"));
    s.write_all(&wire).unwrap();
    assert_eq!(read_frame(&mut s).unwrap(), (true, 1, b"one".to_vec()));
    assert_eq!(read_frame(&mut s).unwrap(), (true, 2, b"two".to_vec()));
    assert_eq!(read_close_code(&mut s), Some(1002));
}

#[test]
fn invalid_utf8_fails_before_the_message_ends() {
    let server = TestServer::start(&[]);
    let mut s = server.ws_raw("/");
    s.write_all(&frame(false, 1, "κόσμε".as_bytes())).unwrap();
    s.write_all(&frame(false, 0, &[0xed, 0xa0, 0x80])).unwrap(); // a surrogate: never valid
                                                                 // No final fragment is sent; the close must come anyway.
    assert_eq!(read_close_code(&mut s), Some(1007));
}

#[test]
fn close_handshake_echoes_the_code_and_empty_close_gets_empty_close() {
    let server = TestServer::start(&[]);
    let mut s = server.ws_raw("/");
    let mut body = 3001u16.to_be_bytes().to_vec();
    body.extend_from_slice(b"reason");
    s.write_all(&frame(true, 8, &body)).unwrap();
    assert_eq!(read_frame(&mut s).unwrap(), (true, 8, body));
    assert!(closed_by_server(&mut s));

    let mut s = server.ws_raw("/");
    s.write_all(&frame(true, 8, b"")).unwrap();
    assert_eq!(read_frame(&mut s).unwrap(), (true, 8, vec![]));
    assert!(closed_by_server(&mut s));
}

#[test]
fn a_peer_that_never_answers_our_close_is_dropped_after_the_timeout() {
    let server = TestServer::start(&["--close-timeout", "300ms"]);
    let mut s = server.ws_raw("/");
    s.write_all(&frame(true, 3, b"")).unwrap();
    assert_eq!(read_close_code(&mut s), Some(1002));
    // We do not answer; the server gives up after its close timeout.
    let t = std::time::Instant::now();
    assert!(closed_by_server(&mut s));
    assert!(t.elapsed() < Duration::from_secs(4));
    assert!(server.wait_log("no close frame from the peer in time"));
}

#[test]
fn tcp_close_without_close_frame_is_quiet_and_others_carry_on() {
    let server = TestServer::start(&[]);
    let mut other = server.ws_raw("/");
    {
        let mut s = server.ws_raw("/");
        s.write_all(&frame(false, 1, b"half a mess")).unwrap();
    } // dropped mid-message
    other.write_all(&frame(true, 1, b"still here")).unwrap();
    assert_eq!(
        read_frame(&mut other).unwrap(),
        (true, 1, b"still here".to_vec())
    );
    assert!(
        server.wait_log("TCP closed without a close frame"),
        "{}",
        server.log.lock().unwrap()
    );
}

#[test]
fn a_slow_reader_does_not_block_anyone_else() {
    let server = TestServer::start(&[]);
    let mut slow = server.ws_raw("/");
    // 8 MiB of echo that the slow client never reads fills both socket buffers.
    let big = frame(true, 2, &vec![1u8; 1 << 20]);
    slow.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    for _ in 0..8 {
        if slow.write_all(&big).is_err() {
            break;
        }
    }
    let mut fast = server.ws_raw("/");
    for i in 0..100 {
        let msg = format!("quick {i}");
        fast.write_all(&frame(true, 1, msg.as_bytes())).unwrap();
        assert_eq!(read_frame(&mut fast).unwrap(), (true, 1, msg.into_bytes()));
    }
}

#[test]
fn slowloris_head_is_dropped_after_the_handshake_timeout() {
    let server = TestServer::start(&["--handshake-timeout", "300ms"]);
    let mut s = server.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    assert!(closed_by_server(&mut s));
    assert!(server.wait_log("request head not complete in time"));
}

#[test]
fn connection_limit_answers_503() {
    let server = TestServer::start(&["--max-connections", "2"]);
    let _a = server.ws_raw("/");
    let _b = server.ws_raw("/");
    let mut c = server.connect();
    let mut head = String::new();
    let _ = c.read_to_string(&mut head);
    assert_eq!(status(&head), 503, "{head}");
}

/// Ctrl-C (SIGINT) and SIGTERM: every client gets a 1001 close, then the server exits 0.
#[test]
fn ctrl_c_and_sigterm_close_clients_with_1001_and_exit() {
    for signal in ["-INT", "-TERM"] {
        let mut server = TestServer::start(&[]);
        let mut s = server.ws_raw("/");
        // kill(1) by the PID this test started.
        let pid = server.child.id().to_string();
        std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert_eq!(read_close_code(&mut s), Some(1001), "{signal}");
        s.write_all(&frame(true, 8, &1001u16.to_be_bytes()))
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(st) = server.child.try_wait().unwrap() {
                assert!(st.success(), "{signal}: exit status {st:?}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{signal}: server did not exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(server.wait_log("stopped"), "{signal}");
    }
}

#[test]
fn offered_extensions_are_declined_with_deflate_off() {
    // permessage-deflate is on by default (tests/deflate.rs); off, every offer is declined.
    let server = TestServer::start(&["--deflate", "off"]);
    let mut s = server.connect();
    let req = upgrade_request(
        "/",
        &["Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"],
    );
    s.write_all(req.as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert_eq!(status(&head), 101);
    assert_eq!(header(&head, "Sec-WebSocket-Extensions"), None);
    // And a frame with RSV1 (a compressed message) is therefore refused.
    let mut f = frame(true, 1, b"x");
    f[0] |= 0x40;
    s.write_all(&f).unwrap();
    assert_eq!(read_close_code(&mut s), Some(1002));
}

#[test]
fn unsolicited_pongs_are_ignored() {
    let server = TestServer::start(&[]);
    let mut s = server.ws_raw("/");
    let mut wire = frame(true, 10, b"nobody asked");
    wire.extend(frame(true, 1, b"after the pong"));
    s.write_all(&wire).unwrap();
    // The first thing back is the echo: no answer to the pong, no close.
    assert_eq!(
        read_frame(&mut s).unwrap(),
        (true, 1, b"after the pong".to_vec())
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_peer_that_sends_without_reading_is_paused_not_buffered() {
    let server = TestServer::start(&["--max-backlog", "1048576"]);
    let s = server.ws_raw("/");
    let before = rss_kib(server.child.id());
    // 64 echoes of 1 MiB each, written while nobody reads the answers.
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        for i in 0..64u8 {
            if writer
                .write_all(&frame(true, 2, &vec![i; 1 << 20]))
                .is_err()
            {
                return false;
            }
        }
        true
    });
    // The event under test: the server stops reading this peer (TCP then pushes back).
    assert!(
        server.wait_log("reading paused"),
        "reading never paused for a peer that does not read"
    );
    let grown = rss_kib(server.child.id()).saturating_sub(before);
    assert!(
        grown < 24 * 1024,
        "server grew {} MiB for a peer that does not read",
        grown / 1024
    );
    // Nothing was lost: every echo comes back, in order, once the peer reads.
    let mut reader = s;
    for i in 0..64u8 {
        let (fin, op, payload) = read_frame(&mut reader).unwrap();
        assert_eq!((fin, op, payload.len()), (true, 2, 1 << 20));
        assert!(payload.iter().all(|&b| b == i), "echo {i} out of order");
    }
    assert!(sender.join().unwrap());
}

#[test]
fn large_frames_read_straight_into_their_buffer_are_still_checked() {
    let server = TestServer::start(&[]);
    let mut s = server.ws_raw("/");
    // A large valid text message first: the server then reads large frames header-first and
    // their payload straight into the message buffer, where UTF-8 is checked as it arrives.
    let good: Vec<u8> = "κόσμε ".bytes().cycle().take(200_000).collect();
    let good = &good[..good.len() - good.len() % 11]; // whole "κόσμε " repeats
    s.write_all(&frame(true, 1, good)).unwrap();
    assert_eq!(read_frame(&mut s).unwrap(), (true, 1, good.to_vec()));
    let mut bad = vec![b'a'; 150_000];
    bad[149_990] = 0xff;
    let wire = frame(true, 1, &bad);
    // Sent in pieces, so the bad byte arrives in a later read than the header.
    for piece in wire.chunks(30_000) {
        s.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(read_close_code(&mut s), Some(1007));
}

#[test]
fn a_get_pipelined_before_an_upgrade_is_answered_first() {
    let server = TestServer::start(&[]);
    let mut s = server.connect();
    let mut wire = b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    wire.extend(upgrade_request("/echo", &[]).into_bytes());
    wire.extend(frame(true, 1, b"after both"));
    s.write_all(&wire).unwrap();
    let (head, body) = read_response(&mut s);
    assert_eq!(status(&head), 200, "{head}");
    assert!(!body.is_empty());
    assert!(read_head(&mut s).starts_with("HTTP/1.1 101"));
    assert_eq!(
        read_frame(&mut s).unwrap(),
        (true, 1, b"after both".to_vec())
    );
}

#[test]
fn an_upgrade_with_two_host_headers_is_refused() {
    let server = TestServer::start(&[]);
    let mut s = server.connect();
    s.write_all(upgrade_request("/", &["Host: other"]).as_bytes())
        .unwrap();
    let (head, _) = read_response(&mut s);
    assert_eq!(status(&head), 400, "{head}");
}
