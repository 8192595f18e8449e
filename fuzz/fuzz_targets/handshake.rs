//! `handshake::parse_head` on arbitrary bytes, and for every complete head the upgrade check
//! and the bytes of its answer: a `101` or a refusal that is itself a well-formed response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsloop::handshake::{accept_upgrade, parse_head, write_accept, write_refusal, HeadStatus};

const MAX_HEAD: usize = 8192;

/// Parses our own response with httparse; returns (status, Content-Length, head length).
fn parse_response(out: &[u8]) -> (u16, Option<usize>, usize) {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("our response does not parse ({other:?}): {out:?}"),
    };
    let length = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap());
    (resp.code.unwrap(), length, n)
}

fuzz_target!(|data: &[u8]| {
    // A small limit derived from the input exercises the 431 path too.
    if let Some(&b) = data.first() {
        let small = usize::from(b) * 4;
        if let Ok(HeadStatus::Complete(_, n)) = parse_head(data, small) {
            assert!(
                n <= small,
                "head of {n} bytes accepted under a limit of {small}"
            );
        }
    }

    let (head, n) = match parse_head(data, MAX_HEAD) {
        Ok(HeadStatus::Complete(head, n)) => (head, n),
        Ok(HeadStatus::Partial) => {
            assert!(data.len() < MAX_HEAD, "Partial after {} bytes", data.len());
            return;
        }
        Err(e) => {
            assert!(matches!(e.status(), 400 | 431), "{e:?}");
            let mut out = Vec::new();
            write_refusal(&mut out, e);
            let (status, length, at) = parse_response(&out);
            assert_eq!(status, e.status());
            assert_eq!(length, Some(out.len() - at));
            return;
        }
    };
    assert!(n <= data.len() && n <= MAX_HEAD);

    let path = head.path();
    // An absolute-form target's path comes after its authority (RFC 9112 §3.2.2).
    assert!(head.target.contains(path));
    assert!(!path.contains(['?', '#']));
    let _ = head.query();
    let _ = head.keep_alive();
    let wants = head.wants_websocket();

    let mut out = Vec::new();
    match accept_upgrade(&head, &["chat".into()]) {
        Ok(accepted) => {
            assert!(wants, "accepted a request that does not ask for WebSocket");
            assert_eq!(head.method, "GET");
            assert!(head.minor_version >= 1);
            assert_eq!(accepted.accept.len(), 28, "base64 of a SHA-1");
            if let Some(p) = &accepted.protocol {
                assert_eq!(p, "chat");
                assert!(head.has_token("Sec-WebSocket-Protocol", "chat"));
            }
            write_accept(&mut out, &accepted);
            let (status, length, at) = parse_response(&out);
            assert_eq!((status, length, at), (101, None, out.len()));
        }
        Err(e) => {
            write_refusal(&mut out, e);
            let (status, length, at) = parse_response(&out);
            assert_eq!(status, e.status());
            assert_eq!(length, Some(out.len() - at));
        }
    }
});
