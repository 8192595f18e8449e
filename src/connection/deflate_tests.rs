//! The connection with permessage-deflate agreed (RFC 7692 §6, §7.2): RSV1 rules, inflation
//! under the size limit, UTF-8 on inflated text, context takeover and shared frames.

use super::*;
use crate::deflate::{self, DeflateConfig, DeflateMode, PerMessage, SharedCodec};
use crate::frame::encode_frame;

const MAX: usize = 1 << 20;

fn cfg(mode: DeflateMode) -> DeflateConfig {
    DeflateConfig {
        mode,
        threshold: 16,
        ..DeflateConfig::default()
    }
}

/// A server and a client connection that agreed on `offer` in `mode`.
fn pair(mode: DeflateMode, offer: &str, max: usize) -> (Connection, Connection) {
    let c = cfg(mode);
    let agreed = deflate::negotiate([offer.as_bytes()], &c).expect("agreed");
    let mut header = Vec::new();
    agreed.write_header(&mut header);
    // The client side as one that offered `offer` reads the answer (window 15: it asked no
    // smaller window of the server).
    let client_cfg = DeflateConfig {
        window_bits: 15,
        ..cfg(DeflateMode::Dedicated)
    };
    let client_agreed =
        deflate::accept_response(&header, &client_cfg).expect("client accepts the answer");
    let mut server = Connection::new(Role::Server, max);
    server.set_deflate(PerMessage::for_server(agreed, &SharedCodec::new(c)));
    let mut client = Connection::new(Role::Client, max);
    client.set_deflate(PerMessage::dedicated(client_agreed, client_cfg));
    (server, client)
}

fn wire(c: &mut Connection) -> Vec<u8> {
    let mut v = Vec::new();
    c.out.flush_to(&mut v).unwrap();
    v
}

/// Feeds `bytes` in pieces of `step` (0: at once) and collects the events.
fn feed(c: &mut Connection, bytes: &[u8], step: usize) -> Vec<OwnedEvent> {
    let mut events = Vec::new();
    let step = if step == 0 { bytes.len().max(1) } else { step };
    for piece in bytes.chunks(step) {
        c.receive(&mut piece.to_vec(), Instant::now(), &mut |_, e| {
            events.push(OwnedEvent::from(e))
        });
    }
    events
}

fn text(n: usize) -> String {
    (0..n)
        .map(|i| ["chat ", "room ", "{\"id\":", "42}", " κόσμε "][i % 5])
        .collect()
}

#[test]
fn compressed_text_split_at_every_byte() {
    let msg = text(300);
    for mode in [DeflateMode::Shared, DeflateMode::Dedicated] {
        let (mut server, mut client) =
            pair(mode, "permessage-deflate; client_max_window_bits", MAX);
        assert!(client.send(MessageKind::Text, msg.as_bytes()));
        let bytes = wire(&mut client);
        assert_eq!(bytes[0] & 0x40, 0x40, "RSV1 on a compressed message");
        assert!(
            bytes.len() < msg.len() / 2,
            "{} for {}",
            bytes.len(),
            msg.len()
        );
        for step in 1..bytes.len().min(64) {
            let (mut server2, _) = pair(mode, "permessage-deflate", MAX);
            let events = feed(&mut server2, &bytes, step);
            assert_eq!(
                events,
                vec![OwnedEvent::Message(
                    MessageKind::Text,
                    msg.clone().into_bytes()
                )],
                "{mode:?} step {step}"
            );
        }
        assert_eq!(feed(&mut server, &bytes, 0).len(), 1);
    }
}

#[test]
fn fragmented_compressed_message_has_rsv1_on_the_first_frame_only() {
    let msg = text(200);
    let (mut server, mut client) = pair(DeflateMode::Dedicated, "permessage-deflate", MAX);
    client.send(MessageKind::Binary, msg.as_bytes());
    let whole = wire(&mut client);
    let head = match parse_header(&whole).unwrap() {
        Parse::Complete(h) => h,
        Parse::Partial => unreachable!(),
    };
    // Unmask, then cut the compressed payload into three fragments.
    let mut payload = whole[head.header_len..].to_vec();
    apply_mask(&mut payload, head.mask.unwrap(), 0);
    let third = payload.len() / 3;
    let key = Some([9, 8, 7, 6]);
    let mut frames = Vec::new();
    encode_frame(&mut frames, false, Opcode::Binary, key, &payload[..third]);
    frames[0] |= 0x40;
    encode_frame(
        &mut frames,
        false,
        Opcode::Continuation,
        key,
        &payload[third..2 * third],
    );
    encode_frame(
        &mut frames,
        true,
        Opcode::Continuation,
        key,
        &payload[2 * third..],
    );
    for step in [0, 1, 5] {
        let (mut s, _) = pair(DeflateMode::Dedicated, "permessage-deflate", MAX);
        assert_eq!(
            feed(&mut s, &frames, step),
            vec![OwnedEvent::Message(
                MessageKind::Binary,
                msg.clone().into_bytes()
            )]
        );
    }
    // RSV1 on a continuation frame as well: 1002.
    let at = frames.len() - (payload.len() - 2 * third) - 6;
    frames[at] |= 0x40;
    let events = feed(&mut server, &frames, 0);
    assert_eq!(
        events.last(),
        Some(&OwnedEvent::Failed(ProtocolError::MisplacedCompressedBit))
    );
    assert_eq!(close_code_of(&wire(&mut server)), Some(1002));
}

fn close_code_of(out: &[u8]) -> Option<u16> {
    let mut at = 0;
    while let Ok(Parse::Complete(h)) = parse_header(&out[at..]) {
        let body = &out[at + h.header_len..at + h.header_len + h.len as usize];
        if h.opcode == Opcode::Close {
            return Some(u16::from_be_bytes([body[0], body[1]]));
        }
        at += h.header_len + h.len as usize;
    }
    None
}

fn masked_rsv(rsv: u8, fin: bool, op: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_frame(&mut v, fin, op, Some([1, 2, 3, 4]), payload);
    v[0] |= rsv << 4;
    v
}

#[test]
fn rsv_misuse_is_a_protocol_error() {
    let cases = [
        (
            "rsv1 without the extension",
            false,
            masked_rsv(4, true, Opcode::Text, b"x"),
        ),
        (
            "rsv1 on a ping",
            true,
            masked_rsv(4, true, Opcode::Ping, b""),
        ),
        (
            "rsv1 on a close",
            true,
            masked_rsv(4, true, Opcode::Close, &[3, 232]),
        ),
        (
            "rsv2 with the extension",
            true,
            masked_rsv(2, true, Opcode::Text, b"x"),
        ),
        (
            "rsv3 with the extension",
            true,
            masked_rsv(1, true, Opcode::Binary, b"x"),
        ),
        ("rsv1 on a continuation", true, {
            let mut v = masked_rsv(0, false, Opcode::Text, b"a");
            v.extend(masked_rsv(4, true, Opcode::Continuation, b"b"));
            v
        }),
    ];
    for (name, agreed, bytes) in cases {
        let mut c = if agreed {
            pair(DeflateMode::Shared, "permessage-deflate", MAX).0
        } else {
            Connection::new(Role::Server, MAX)
        };
        let events = feed(&mut c, &bytes, 0);
        assert!(
            matches!(events.last(), Some(OwnedEvent::Failed(_))),
            "{name}"
        );
        assert_eq!(close_code_of(&wire(&mut c)), Some(1002), "{name}");
    }
}

/// Raw DEFLATE of `n` zero bytes, tail removed, as a peer would send it.
fn zeros_compressed(n: usize) -> Vec<u8> {
    let d = DeflateConfig {
        threshold: 0,
        level: 9,
        mem_level: 9,
        ..cfg(DeflateMode::Shared)
    };
    let mut out = Vec::new();
    assert!(deflate::Compressor::new(15, false, &d)
        .compress(&vec![0; n], &mut out)
        .unwrap());
    out
}

#[test]
fn a_bomb_is_closed_with_1009_before_it_is_inflated() {
    // 64 MiB of zeros compress to ~64 KiB; the limit is 1 MiB of inflated bytes.
    let bomb = zeros_compressed(64 << 20);
    assert!(bomb.len() < 100 << 10, "{}", bomb.len());
    for mode in [DeflateMode::Shared, DeflateMode::Dedicated] {
        for fragments in [1, 7] {
            let (mut server, _) = pair(mode, "permessage-deflate", MAX);
            let mut bytes = Vec::new();
            let size = bomb.len().div_ceil(fragments);
            for (i, piece) in bomb.chunks(size).enumerate() {
                let op = if i == 0 {
                    Opcode::Binary
                } else {
                    Opcode::Continuation
                };
                let fin = (i + 1) * size >= bomb.len();
                let at = bytes.len();
                encode_frame(&mut bytes, fin, op, Some([5, 6, 7, 8]), piece);
                if i == 0 {
                    bytes[at] |= 0x40;
                }
            }
            let events = feed(&mut server, &bytes, 4096);
            assert_eq!(
                events,
                vec![OwnedEvent::Failed(ProtocolError::MessageTooBig)],
                "{mode:?} {fragments}"
            );
            assert_eq!(close_code_of(&wire(&mut server)), Some(1009));
            // What was reserved stayed near the limit, far below the bomb's size.
            let spare = server.inbound.as_ref().map_or(0, |i| i.spare.capacity());
            assert!(spare <= 2 * MAX + 64 * 1024);
        }
    }
}

#[test]
fn inflated_text_must_be_utf8_and_data_must_be_deflate() {
    let d = DeflateConfig {
        threshold: 0,
        ..cfg(DeflateMode::Shared)
    };
    let mut bad_text = Vec::new();
    deflate::Compressor::new(15, false, &d)
        .compress(
            &[&[b'a'; 100][..], &[0xce, 0xff, b'c']].concat(),
            &mut bad_text,
        )
        .unwrap();
    let mut cut_text = Vec::new();
    deflate::Compressor::new(15, false, &d)
        .compress(
            (text(40) + "κ").as_bytes().split_last().unwrap().1,
            &mut cut_text,
        )
        .unwrap();
    for (name, payload, expected) in [
        ("bad utf8", bad_text, ProtocolError::InvalidUtf8),
        ("unfinished utf8", cut_text, ProtocolError::InvalidUtf8),
        (
            "not deflate",
            vec![0xff; 20],
            ProtocolError::Deflate(DeflateError::InvalidData),
        ),
    ] {
        let (mut server, _) = pair(DeflateMode::Shared, "permessage-deflate", MAX);
        let bytes = masked_rsv(4, true, Opcode::Text, &payload);
        let events = feed(&mut server, &bytes, 0);
        assert_eq!(events, vec![OwnedEvent::Failed(expected)], "{name}");
        assert_eq!(close_code_of(&wire(&mut server)), Some(1007), "{name}");
        // The shared inflater is fine for the next connection.
        let (mut other, mut client) = pair(DeflateMode::Shared, "permessage-deflate", MAX);
        client.send(MessageKind::Text, text(50).as_bytes());
        assert_eq!(feed(&mut other, &wire(&mut client), 0).len(), 1, "{name}");
    }
}

#[test]
fn shared_mode_interleaves_half_messages_of_two_connections() {
    let (mut a, mut ca) = pair(DeflateMode::Shared, "permessage-deflate", MAX);
    let (mut b, mut cb) = pair(DeflateMode::Shared, "permessage-deflate", MAX);
    ca.send(MessageKind::Text, text(400).as_bytes());
    cb.send(MessageKind::Text, text(401).as_bytes());
    let (wa, wb) = (wire(&mut ca), wire(&mut cb));
    let mut got = (Vec::new(), Vec::new());
    for i in 0..wa.len().max(wb.len()) {
        if let Some(&byte) = wa.get(i) {
            got.0.extend(feed(&mut a, &[byte], 0));
        }
        if let Some(&byte) = wb.get(i) {
            got.1.extend(feed(&mut b, &[byte], 0));
        }
    }
    assert_eq!(
        got.0,
        vec![OwnedEvent::Message(MessageKind::Text, text(400).into())]
    );
    assert_eq!(
        got.1,
        vec![OwnedEvent::Message(MessageKind::Text, text(401).into())]
    );
}

#[test]
fn server_sends_compressed_when_it_pays_and_plain_otherwise() {
    for mode in [DeflateMode::Shared, DeflateMode::Dedicated] {
        let (mut server, mut client) = pair(mode, "permessage-deflate", MAX);
        for msg in [text(1), text(500), String::new(), text(500)] {
            let payload = msg.as_bytes();
            assert!(server.send(MessageKind::Text, payload));
            let bytes = wire(&mut server);
            let compressed = bytes[0] & 0x40 != 0;
            assert_eq!(
                compressed,
                payload.len() >= 16,
                "{mode:?} {}",
                payload.len()
            );
            let events = feed(&mut client, &bytes, 0);
            assert_eq!(
                events,
                vec![OwnedEvent::Message(MessageKind::Text, payload.to_vec())]
            );
        }
        // Random bytes do not compress: sent plain.
        let mut x = 0x9E37_79B9u32;
        let noise: Vec<u8> = (0..400)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        server.send(MessageKind::Binary, &noise);
        assert_eq!(wire(&mut server)[0] & 0x40, 0);
    }
}

#[test]
fn context_takeover_makes_repeats_small_and_survives_a_shared_frame() {
    let (mut server, mut client) = pair(DeflateMode::Dedicated, "permessage-deflate", MAX);
    let msg = text(300);
    let mut sizes = Vec::new();
    for round in 0..4 {
        if round == 2 {
            // A broadcast frame compressed alone goes out between two messages.
            let codec = SharedCodec::new(cfg(DeflateMode::Shared));
            let mut body = Vec::new();
            assert!(codec
                .compress(13, b"room message room message room message", &mut body)
                .unwrap());
            let mut frame = Vec::new();
            encode_frame(&mut frame, true, Opcode::Text, None, &body);
            frame[0] |= 0x40;
            assert!(server.send_shared_compressed(&SharedFrame::from(frame), 13));
            let events = feed(&mut client, &wire(&mut server), 0);
            assert_eq!(
                events,
                vec![OwnedEvent::Message(
                    MessageKind::Text,
                    b"room message room message room message".to_vec()
                )]
            );
        }
        server.send(MessageKind::Text, msg.as_bytes());
        let bytes = wire(&mut server);
        sizes.push(bytes.len());
        assert_eq!(
            feed(&mut client, &bytes, 0),
            vec![OwnedEvent::Message(
                MessageKind::Text,
                msg.clone().into_bytes()
            )],
            "round {round}"
        );
    }
    // The repeat refers back to the first; after the shared frame the context starts afresh.
    assert!(sizes[1] < sizes[0] * 3 / 4, "{sizes:?}");
    assert_eq!(sizes[2], sizes[0], "{sizes:?}");
    assert_eq!(sizes[3], sizes[1], "{sizes:?}");
    // A client that asked for a smaller window than the shared frame's does not get it.
    let (mut small, _) = pair(
        DeflateMode::Dedicated,
        "permessage-deflate; server_max_window_bits=10",
        MAX,
    );
    assert!(!small.send_shared_compressed(&SharedFrame::from(&b"\xc1\x01x"[..]), 13));
    assert!(small.out.is_empty());
}

#[test]
fn a_quiet_dedicated_connection_gives_its_state_back() {
    let (mut server, mut client) = pair(
        DeflateMode::Dedicated,
        "permessage-deflate; client_no_context_takeover",
        MAX,
    );
    assert!(
        !server.deflate().unwrap().holds_state(),
        "nothing before a message"
    );
    client.send(MessageKind::Text, text(300).as_bytes());
    feed(&mut server, &wire(&mut client), 0);
    server.send(MessageKind::Text, text(300).as_bytes());
    assert_eq!(feed(&mut client, &wire(&mut server), 0).len(), 1);
    assert!(server.deflate().unwrap().holds_state());
    server.shrink();
    assert!(!server.deflate().unwrap().holds_state());
    // And it still speaks afterwards.
    server.send(MessageKind::Text, text(300).as_bytes());
    assert_eq!(feed(&mut client, &wire(&mut server), 0).len(), 1);
}
