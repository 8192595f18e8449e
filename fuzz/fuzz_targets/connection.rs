//! `connection::Connection` fed arbitrary bytes, split at a fuzzer-chosen point, as a server
//! and as a client, echoing every message. Never panics, and:
//!
//! * the events do not depend on how the input was split (whole, at the chosen point, byte
//!   by byte) nor on whether payloads were read straight into the message buffer
//!   (`payload_room`); as the server, neither does the output;
//! * no message is delivered after the connection failed or the peer closed;
//! * what it writes is a sequence of well-formed frames, masked as its role requires, with
//!   nothing after its close frame.
//!
//! The top two bits of the split point choose permessage-deflate (RFC 7692): off, the
//! server's shared mode, or dedicated (context takeover), so RSV1 misuse, invalid and
//! oversized compressed data, and compressed echoes go through the same checks.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use wsloop::connection::{Connection, Event, MessageKind, OwnedEvent, State};
use wsloop::deflate::codec::{PerMessage, SharedCodec};
use wsloop::deflate::{self, DeflateConfig, DeflateMode};
use wsloop::frame::{parse_header, Opcode, Parse, Role};

const MAX_MESSAGE: usize = 1 << 16;

/// How pieces reach the connection: all through `receive`, or, as the server does for large
/// frames, straight into the payload buffer whenever `payload_room` offers one.
#[derive(Clone, Copy, PartialEq)]
enum Feed {
    Receive,
    Direct,
}

fn run(role: Role, pieces: &[&[u8]], mode: DeflateMode) -> (Vec<OwnedEvent>, Vec<u8>, State) {
    run_with(role, pieces, Feed::Receive, mode)
}

/// The extension as each side agrees it: the server answers a browser's usual offer; the
/// client's own offer is answered by the server side and accepted. Each run gets fresh state.
fn with_deflate(c: &mut Connection, role: Role, mode: DeflateMode) {
    if mode == DeflateMode::Off {
        return;
    }
    let cfg = DeflateConfig {
        mode,
        threshold: 0,
        ..DeflateConfig::default()
    };
    let per_message = match role {
        Role::Server => {
            let offer: &[u8] = b"permessage-deflate; client_max_window_bits";
            let agreed = deflate::negotiate([offer], &cfg).expect("the usual offer is accepted");
            PerMessage::for_server(agreed, &SharedCodec::new(cfg))
        }
        Role::Client => {
            // Our own offer, answered as the server would answer it.
            let offer = deflate::client_offer(&cfg);
            let answered = deflate::negotiate([offer.as_bytes()], &cfg).expect("offer accepted");
            let mut answer = Vec::new();
            answered.write_header(&mut answer);
            let agreed = deflate::accept_response(&answer, &cfg).expect("the answer is accepted");
            PerMessage::dedicated(agreed, cfg)
        }
    };
    c.set_deflate(per_message);
}

fn run_with(
    role: Role,
    pieces: &[&[u8]],
    feed: Feed,
    mode: DeflateMode,
) -> (Vec<OwnedEvent>, Vec<u8>, State) {
    let mut c = Connection::new(role, MAX_MESSAGE);
    with_deflate(&mut c, role, mode);
    let mut events: Vec<OwnedEvent> = Vec::new();
    let mut ended = false;
    let mut on = |c: &mut Connection, e: Event<'_>| {
        match &e {
            Event::Message(kind, payload) => {
                assert!(!ended, "message after the connection ended: {events:?}");
                assert!(payload.len() <= MAX_MESSAGE, "message over the limit");
                if *kind == MessageKind::Text {
                    assert!(std::str::from_utf8(payload).is_ok(), "invalid UTF-8 text");
                }
            }
            Event::Ping(p) | Event::Pong(p) => assert!(p.len() <= 125),
            Event::Closed { .. } | Event::Failed(_) => ended = true,
        }
        if let Event::Message(kind, payload) = e {
            events.push(OwnedEvent::Message(kind, payload.to_vec()));
            c.send_payload(kind, payload);
        } else {
            events.push(OwnedEvent::from(e));
        }
    };
    for piece in pieces {
        let mut rest: &[u8] = piece;
        while !rest.is_empty() {
            if feed == Feed::Direct {
                if let Some((buf, left)) = c.payload_room(1) {
                    let n = left.min(rest.len());
                    buf.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                    c.payload_appended(n, Instant::now(), &mut on);
                    continue;
                }
            }
            // Through `receive`: everything, or (direct) up to where a payload may start.
            let n = if feed == Feed::Direct {
                rest.len().min(14)
            } else {
                rest.len()
            };
            let mut bytes = rest[..n].to_vec();
            rest = &rest[n..];
            c.receive(&mut bytes, Instant::now(), &mut on);
        }
    }
    let mut out = Vec::new();
    assert!(c.out.flush_to(&mut out).expect("a Vec never fails a write"));
    assert!(c.out.is_empty());
    check_output(role, &out, mode != DeflateMode::Off);
    (events, out, c.state())
}

/// Our own output: whole frames, FIN set, RSV clear (but RSV1 on compressed data messages),
/// known opcodes, masked only as a client, control payloads of at most 125 bytes, at most one
/// close frame and nothing after it.
fn check_output(role: Role, out: &[u8], deflate: bool) {
    let mut at = 0;
    let mut closed = false;
    while at < out.len() {
        assert!(!closed, "frames after our close frame");
        let Ok(Parse::Complete(h)) = parse_header(&out[at..]) else {
            panic!("unparseable output at {at}: {out:02x?}");
        };
        let compressed = h.rsv == 0b100 && deflate && !h.opcode.is_control();
        assert!(h.fin && (h.rsv == 0 || compressed), "{h:?}");
        assert!(
            matches!(
                h.opcode,
                Opcode::Text | Opcode::Binary | Opcode::Close | Opcode::Ping | Opcode::Pong
            ),
            "{h:?}"
        );
        assert_eq!(h.mask.is_some(), role == Role::Client, "{h:?}");
        if h.opcode.is_control() {
            assert!(h.len <= 125, "{h:?}");
        }
        closed = h.opcode == Opcode::Close;
        at += h.header_len + usize::try_from(h.len).unwrap();
        assert!(at <= out.len(), "frame runs past the output");
    }
}

fuzz_target!(|input: &[u8]| {
    // Layout: [deflate: 2 bits, split point: 14 bits, big-endian] [bytes from the peer...]
    if input.len() < 2 {
        return;
    }
    let (head, data) = input.split_at(2);
    let head = u16::from_be_bytes([head[0], head[1]]);
    let mode = match head >> 14 {
        1 => DeflateMode::Shared,
        2 => DeflateMode::Dedicated,
        _ => DeflateMode::Off,
    };
    let cut = usize::from(head & 0x3fff) % (data.len() + 1);
    let (a, b) = data.split_at(cut);

    for role in [Role::Server, Role::Client] {
        let whole = run(role, &[data], mode);
        let split = run(role, &[a, b], mode);
        assert_eq!(
            whole.0, split.0,
            "{role:?}: events differ when split at {cut}"
        );
        assert_eq!(
            whole.2, split.2,
            "{role:?}: state differs when split at {cut}"
        );
        if role == Role::Server {
            // Server output is unmasked, so deterministic.
            assert_eq!(whole.1, split.1, "output differs when split at {cut}");
        }
        let direct = run_with(role, &[a, b], Feed::Direct, mode);
        assert_eq!(
            whole.0, direct.0,
            "{role:?}: events differ when read directly"
        );
        assert_eq!(
            whole.2, direct.2,
            "{role:?}: state differs when read directly"
        );
        if role == Role::Server {
            assert_eq!(whole.1, direct.1, "output differs when read directly");
        }
        if data.len() <= 512 {
            let bytes: Vec<&[u8]> = data.chunks(1).collect();
            let dribbled = run(role, &bytes, mode);
            assert_eq!(whole.0, dribbled.0, "{role:?}: events differ byte by byte");
            assert_eq!(whole.2, dribbled.2, "{role:?}: state differs byte by byte");
            if role == Role::Server {
                assert_eq!(whole.1, dribbled.1, "output differs byte by byte");
            }
        }
    }
});
