use super::*;

fn cfg(mode: DeflateMode) -> DeflateConfig {
    DeflateConfig {
        mode,
        window_bits: 15,
        client_window_bits: 15,
        threshold: 0,
        ..DeflateConfig::default()
    }
}

#[test]
fn flags_default_to_the_config_default() {
    let from_flags = DeflateConfig::from(&crate::Config::default());
    assert_eq!(from_flags, DeflateConfig::default());
    assert_eq!(from_flags.mode, DeflateMode::Shared);
}

/// The response value for one header line of offers, or `None` when all are declined.
fn answer(offers: &str, cfg: &DeflateConfig) -> Option<String> {
    let agreed = negotiate([offers.as_bytes()], cfg)?;
    let mut out = Vec::new();
    agreed.write_header(&mut out);
    Some(String::from_utf8(out).unwrap())
}

#[test]
fn negotiation_table() {
    let d = cfg(DeflateMode::Dedicated);
    let pmd = "permessage-deflate";
    for (offer, expected) in [
        ("permessage-deflate", Some(pmd)),
        ("PerMessage-Deflate", Some(pmd)),
        // §7.1.2.2: without a value the client only says it understands the parameter.
        ("permessage-deflate; client_max_window_bits", Some(pmd)),
        (
            "permessage-deflate; client_max_window_bits=10",
            Some("permessage-deflate; client_max_window_bits=10"),
        ),
        (
            "permessage-deflate;client_max_window_bits=\"10\"",
            Some("permessage-deflate; client_max_window_bits=10"),
        ),
        (
            "permessage-deflate; client_max_window_bits=\"1\\0\"",
            Some("permessage-deflate; client_max_window_bits=10"),
        ),
        (
            " permessage-deflate ;\tserver_max_window_bits = 12 ; server_no_context_takeover ",
            Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=12"),
        ),
        (
            "permessage-deflate; client_no_context_takeover",
            Some("permessage-deflate; client_no_context_takeover"),
        ),
        // §7.1 examples: the first acceptable offer wins; a declined one is skipped.
        (
            "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=9",
            Some("permessage-deflate; server_max_window_bits=9"),
        ),
        (
            "permessage-deflate; client_max_window_bits; server_max_window_bits=10, permessage-deflate; client_max_window_bits",
            Some("permessage-deflate; server_max_window_bits=10"),
        ),
        ("x-webkit-deflate-frame, permessage-deflate", Some(pmd)),
        ("foo; bar=\"a,b\", permessage-deflate", Some(pmd)),
        ("permessage-deflate; bad=\"unterminated, permessage-deflate", None),
        ("permessage-deflate; client_max_window_bits=16", None),
        ("permessage-deflate; client_max_window_bits=7", None),
        ("permessage-deflate; client_max_window_bits=010", None),
        ("permessage-deflate; client_max_window_bits=\"\"", None),
        ("permessage-deflate; server_max_window_bits", None),
        ("permessage-deflate; server_max_window_bits=8", None),
        ("permessage-deflate; server_no_context_takeover=1", None),
        ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", None),
        ("permessage-deflate; mystery", None),
        ("permessage-deflate; client_max_window_bits=10 extra", None),
        ("permessage-deflate;", None),
        ("x-webkit-deflate-frame", None),
        ("", None),
    ] {
        assert_eq!(answer(offer, &d).as_deref(), expected, "{offer:?}");
    }
}

#[test]
fn several_header_lines_and_modes() {
    let d = cfg(DeflateMode::Dedicated);
    let lines: [&[u8]; 2] = [b"permessage-deflate; mystery", b"permessage-deflate"];
    let agreed = negotiate(lines, &d).unwrap();
    assert!(!agreed.server_no_context_takeover && !agreed.client_no_context_takeover);
    assert!(negotiate(lines, &cfg(DeflateMode::Off)).is_none());

    // Shared mode keeps no context either way and says so.
    let shared = cfg(DeflateMode::Shared);
    assert_eq!(
        answer("permessage-deflate; client_max_window_bits", &shared).as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );

    // A smaller server window than the client allows; a client window limit we ask for.
    let small = DeflateConfig {
        window_bits: 10,
        client_window_bits: 11,
        ..d
    };
    assert_eq!(
        answer(
            "permessage-deflate; server_max_window_bits=12; client_max_window_bits",
            &small
        )
        .as_deref(),
        Some("permessage-deflate; server_max_window_bits=10; client_max_window_bits=11")
    );
    let agreed = negotiate([&b"permessage-deflate"[..]], &small).unwrap();
    assert_eq!(
        (agreed.server_window_bits, agreed.client_window_bits),
        (10, 15)
    );
    // A client that agreed to 8 is inflated with 9 (what zlib really uses).
    let agreed = negotiate([&b"permessage-deflate; client_max_window_bits=8"[..]], &d).unwrap();
    assert_eq!(agreed.client_window_bits, 8);
    assert_eq!(agreed.inflater(Role::Server).window_bits, 9);
}

#[test]
fn client_side_offer_and_response() {
    let d = cfg(DeflateMode::Dedicated);
    assert_eq!(
        client_offer(&d),
        "permessage-deflate; client_max_window_bits"
    );
    let ok = accept_response(b"permessage-deflate; client_max_window_bits=12", &d).unwrap();
    assert_eq!((ok.server_window_bits, ok.client_window_bits), (15, 12));
    assert!(accept_response(b"permessage-deflate; server_no_context_takeover", &d).is_ok());
    for bad in [
        &b"x-webkit-deflate-frame"[..],
        b"permessage-deflate, permessage-deflate",
        b"permessage-deflate; client_max_window_bits",
        b"permessage-deflate; client_max_window_bits=8",
        b"permessage-deflate; mystery",
        b"permessage-deflate; server_max_window_bits=16",
        b"",
    ] {
        let err = accept_response(bad, &d).unwrap_err();
        assert!(matches!(err, DeflateError::BadResponse(_)), "{bad:?}");
        assert_eq!(err.close_code(), 1002);
    }
    let shared = DeflateConfig {
        window_bits: 10,
        ..cfg(DeflateMode::Shared)
    };
    let offer = client_offer(&shared);
    assert_eq!(
        offer,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
         server_max_window_bits=10; client_max_window_bits"
    );
    // What our server answers our client is accepted by it.
    let server_side = negotiate([offer.as_bytes()], &shared).unwrap();
    let mut header = Vec::new();
    server_side.write_header(&mut header);
    let client_side = accept_response(&header, &shared).unwrap();
    assert!(client_side.server_no_context_takeover && client_side.client_no_context_takeover);
    assert_eq!(
        client_side.server_window_bits,
        server_side.server_window_bits
    );
    assert!(accept_response(b"permessage-deflate; server_no_context_takeover", &shared).is_err());
    assert!(accept_response(
        b"permessage-deflate; server_no_context_takeover; server_max_window_bits=11",
        &shared
    )
    .is_err());
}

/// Inflates `pieces` as one message; the output, or the error.
fn inflate_pieces(
    inf: &mut Inflater,
    pieces: &[&[u8]],
    limit: usize,
) -> Result<Vec<u8>, DeflateError> {
    let mut out = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        let before = out.len();
        let added = inf.inflate(p, i + 1 == pieces.len(), &mut out, limit)?;
        assert_eq!(added, out.len() - before);
    }
    Ok(out)
}

#[test]
fn rfc7692_examples() {
    // §7.2.3.1: "Hello" in one message, and split over two frames.
    let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    let mut inf = Inflater::new(15, true);
    assert_eq!(inflate_pieces(&mut inf, &[&hello], 100).unwrap(), b"Hello");
    let mut inf = Inflater::new(15, true);
    assert_eq!(
        inflate_pieces(&mut inf, &[&hello[..3], &hello[3..]], 100).unwrap(),
        b"Hello"
    );
    // §7.2.3.2: the second message refers back into the first (context takeover).
    let again = [0xf2, 0x00, 0x11, 0x00, 0x00];
    let mut inf = Inflater::new(15, true);
    assert_eq!(inflate_pieces(&mut inf, &[&hello], 100).unwrap(), b"Hello");
    assert_eq!(inflate_pieces(&mut inf, &[&again], 100).unwrap(), b"Hello");
    // ...which a peer that promised no context takeover never sends: we reset, it fails.
    let mut inf = Inflater::new(15, false);
    assert_eq!(inflate_pieces(&mut inf, &[&hello], 100).unwrap(), b"Hello");
    assert_eq!(
        inflate_pieces(&mut inf, &[&again], 100),
        Err(DeflateError::InvalidData)
    );
    // §7.2.3.3: a stored (uncompressed) block.
    let stored = [
        0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
    ];
    let mut inf = Inflater::new(15, true);
    assert_eq!(inflate_pieces(&mut inf, &[&stored], 100).unwrap(), b"Hello");
    // §7.2.3.4: BFINAL set; the stream ends and the next message starts a new one.
    let last = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
    let mut inf = Inflater::new(15, true);
    assert_eq!(inflate_pieces(&mut inf, &[&last], 100).unwrap(), b"Hello");
    assert_eq!(inflate_pieces(&mut inf, &[&hello], 100).unwrap(), b"Hello");
    // §7.2.3.5: two DEFLATE blocks in one message.
    let two = [
        0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
    ];
    let mut inf = Inflater::new(15, true);
    assert_eq!(inflate_pieces(&mut inf, &[&two], 100).unwrap(), b"Hello");
    // And our compressor makes the §7.2.3.1 bytes, then the §7.2.3.2 ones.
    let mut c = Compressor::new(15, true, &cfg(DeflateMode::Dedicated));
    let mut out = Vec::new();
    assert!(
        !c.compress(b"Hello", &mut out).unwrap(),
        "7 bytes do not pay for 5"
    );
    let mut c = Compressor::new(15, true, &cfg(DeflateMode::Dedicated));
    let msg = b"Hello Hello Hello Hello";
    assert!(c.compress(msg, &mut out).unwrap());
    let mut inf = Inflater::new(15, true);
    assert_eq!(inflate_pieces(&mut inf, &[&out], 100).unwrap(), msg);
}

fn sample(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761) | 1;
    let words: [&[u8]; 6] = [
        b"{\"id\":",
        b"\"name\":\"wsloop\",",
        b"\"room\":",
        b"42,",
        b"\"text\":\"hello\"}",
        b" ",
    ];
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.extend_from_slice(words[(x % 6) as usize]);
        v.push(b'a' + (x >> 8) as u8 % 26);
    }
    v.truncate(n);
    v
}

#[test]
fn round_trip_split_at_every_byte() {
    let d = cfg(DeflateMode::Dedicated);
    let text = sample(700, 1);
    let mut c = Compressor::new(15, true, &d);
    let mut wire = Vec::new();
    assert!(c.compress(&text, &mut wire).unwrap());
    assert!(
        wire.len() < text.len() / 2,
        "{} of {}",
        wire.len(),
        text.len()
    );
    for a in 0..=wire.len() {
        let mut inf = Inflater::new(15, true);
        let got = inflate_pieces(&mut inf, &[&wire[..a], &wire[a..]], text.len()).unwrap();
        assert_eq!(got, text, "split at {a}");
    }
    // Byte by byte, too.
    let pieces: Vec<&[u8]> = wire.chunks(1).collect();
    let mut inf = Inflater::new(15, true);
    assert_eq!(inflate_pieces(&mut inf, &pieces, text.len()).unwrap(), text);
}

#[test]
fn context_takeover_across_messages_and_reset() {
    let d = cfg(DeflateMode::Dedicated);
    let msgs: Vec<Vec<u8>> = (0..6).map(|i| sample(300 + i * 50, 7)).collect();
    for keep in [true, false] {
        let mut c = Compressor::new(12, keep, &d);
        let mut inf = Inflater::new(12, keep);
        let mut total = 0;
        for m in &msgs {
            let mut wire = Vec::new();
            assert!(c.compress(m, &mut wire).unwrap());
            total += wire.len();
            assert_eq!(&inflate_pieces(&mut inf, &[&wire], 1 << 20).unwrap(), m);
        }
        // The same messages over and over: kept context makes later ones nearly free.
        if keep {
            assert!(total < 400, "with context: {total}");
        } else {
            assert!(total > 600, "without context: {total}");
        }
    }
    // A message that did not pay was fed into the window but never sent: the next one must
    // not refer to it.
    let mut c = Compressor::new(15, true, &d);
    let mut inf = Inflater::new(15, true);
    let noise: Vec<u8> = (0..200u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut wire = Vec::new();
    assert!(!c.compress(&noise, &mut wire).unwrap());
    assert!(wire.is_empty());
    let mut echo = noise.clone();
    echo.extend_from_slice(&sample(100, 3));
    assert!(c.compress(&echo, &mut wire).unwrap());
    assert_eq!(inflate_pieces(&mut inf, &[&wire], 1 << 20).unwrap(), echo);
}

#[test]
fn shared_frame_then_forget() {
    let d = cfg(DeflateMode::Dedicated);
    let agreed = negotiate([&b"permessage-deflate; server_max_window_bits=11"[..]], &d).unwrap();
    let mut own = agreed.compressor(Role::Server, &d);
    let mut client = agreed.inflater(Role::Client);
    let room = Compressor::new(15, false, &d);
    assert!(!agreed.takes_shared_frame(room.window_bits()));
    let mut room = Compressor::new(11, false, &d);
    assert!(agreed.takes_shared_frame(room.window_bits()));

    let a = sample(400, 11);
    let b = sample(400, 12);
    let mut wire = Vec::new();
    assert!(own.compress(&a, &mut wire).unwrap());
    assert_eq!(inflate_pieces(&mut client, &[&wire], 1 << 20).unwrap(), a);
    wire.clear();
    assert!(room.compress(&b, &mut wire).unwrap());
    assert_eq!(inflate_pieces(&mut client, &[&wire], 1 << 20).unwrap(), b);
    own.forget();
    wire.clear();
    assert!(own.compress(&a, &mut wire).unwrap());
    assert_eq!(inflate_pieces(&mut client, &[&wire], 1 << 20).unwrap(), a);
}

#[test]
fn threshold_and_lazy_state() {
    let d = DeflateConfig {
        threshold: 64,
        ..cfg(DeflateMode::Dedicated)
    };
    let mut c = Compressor::new(15, true, &d);
    let mut wire = Vec::new();
    assert!(!c.compress(&[b'a'; 63], &mut wire).unwrap());
    assert!(!c.is_allocated() && wire.is_empty());
    assert!(c.compress(&[b'a'; 64], &mut wire).unwrap());
    assert!(c.is_allocated());
    c.release();
    assert!(!c.is_allocated());
    let mut inf = Inflater::new(15, true);
    assert_eq!(inflate_pieces(&mut inf, &[&wire], 64).unwrap(), [b'a'; 64]);
    // After a release the compressor starts a fresh stream, which the peer still inflates.
    wire.clear();
    assert!(c.compress(&[b'b'; 100], &mut wire).unwrap());
    assert_eq!(
        inflate_pieces(&mut inf, &[&wire], 100).unwrap(),
        [b'b'; 100]
    );

    // The inflater gives its state back only when the peer keeps no context.
    assert!(!inf.release() && inf.is_allocated());
    let mut inf = Inflater::new(15, false);
    let mut out = Vec::new();
    inf.inflate(&wire[..3], false, &mut out, 100).unwrap();
    assert!(!inf.release(), "half a message");
    inf.inflate(&wire[3..], true, &mut out, 100).unwrap();
    assert!(inf.release() && !inf.is_allocated());
}

#[test]
fn size_limit_is_on_inflated_bytes() {
    let d = cfg(DeflateMode::Dedicated);
    let msg = vec![b'x'; 10_000];
    let mut wire = Vec::new();
    assert!(Compressor::new(15, false, &d)
        .compress(&msg, &mut wire)
        .unwrap());
    assert_eq!(
        inflate_pieces(&mut Inflater::new(15, false), &[&wire], 10_000).unwrap(),
        msg
    );
    let err = inflate_pieces(&mut Inflater::new(15, false), &[&wire], 9_999).unwrap_err();
    assert_eq!(err, DeflateError::TooBig);
    assert_eq!(err.close_code(), 1009);
    // The limit counts the whole message across its pieces, and restarts with the next one.
    let mut inf = Inflater::new(15, false);
    let half = wire.len() / 2;
    assert_eq!(
        inflate_pieces(&mut inf, &[&wire[..half], &wire[half..]], 9_999),
        Err(DeflateError::TooBig)
    );
    assert_eq!(inflate_pieces(&mut inf, &[&wire], 10_000).unwrap(), msg);
}

#[test]
fn decompression_bomb_stops_at_the_limit() {
    // One message of ~100 KiB that inflates to 100 MiB of zeros: DEFLATE's best ratio is about
    // 1000:1, so it is 100 blocks of 1 MiB each, each one referring back to the zeros before.
    let d = DeflateConfig {
        level: 9,
        ..cfg(DeflateMode::Dedicated)
    };
    let mut c = Compressor::new(15, true, &d);
    let zeros = vec![0u8; 1 << 20];
    let (mut first, mut next) = (Vec::new(), Vec::new());
    assert!(c.compress(&zeros, &mut first).unwrap());
    assert!(c.compress(&zeros, &mut next).unwrap());
    let mut bomb = first;
    for _ in 1..100 {
        bomb.extend_from_slice(&TAIL);
        bomb.extend_from_slice(&next);
    }
    assert!(bomb.len() < 120 << 10, "{}", bomb.len());

    // Whole, the bomb inflates to exactly 100 MiB; under a 1 MiB limit it stops there.
    let limit = 1 << 20;
    let mut inf = Inflater::new(15, true);
    let mut out = Vec::new();
    let mut result = Ok(0);
    for piece in bomb.chunks(4096) {
        result = inf.inflate(piece, false, &mut out, limit);
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result, Err(DeflateError::TooBig));
    assert!(out.len() <= limit, "{}", out.len());
    assert!(out.capacity() <= limit + 1, "reserved {}", out.capacity());
    let mut inf = Inflater::new(15, true);
    let mut out = Vec::new();
    assert_eq!(inf.inflate(&bomb, true, &mut out, 100 << 20), Ok(100 << 20));
}

#[test]
fn invalid_data() {
    for bad in [
        &[0xff, 0xff, 0xff, 0xff][..],       // reserved block type 3
        &[0x00, 0x05, 0x00, 0x00, 0x00][..], // stored length does not match its complement
        &[0xf2, 0x00, 0x11, 0x00, 0x00][..], // distance back past the start of the stream
    ] {
        let mut inf = Inflater::new(15, true);
        let err = inflate_pieces(&mut inf, &[bad], 1000).unwrap_err();
        assert_eq!(err, DeflateError::InvalidData, "{bad:x?}");
        assert_eq!(err.close_code(), 1007);
        // A shared inflater is usable again for the next connection's message.
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate_pieces(&mut inf, &[&hello], 100).unwrap(), b"Hello");
    }
}

#[test]
fn a_message_cut_off_by_its_budget_leaves_nothing_behind() {
    // An empty message does not pay (the flush alone is 5 bytes); the compressor stopped with
    // part of that flush still inside. Found by the `inflate` fuzz target.
    let mut c = Compressor::new(15, true, &cfg(DeflateMode::Dedicated));
    let mut wire = Vec::new();
    assert!(!c.compress(b"", &mut wire).unwrap());
    let msg = b"{\"id\":1,\"text\":\"hello hello hello \"}";
    assert!(c.compress(msg, &mut wire).unwrap());
    let mut inf = Inflater::new(15, true);
    assert_eq!(inflate_pieces(&mut inf, &[&wire], msg.len()).unwrap(), msg);
    // Nor does an empty message right after a compressed one (also from the fuzzer).
    wire.clear();
    assert!(!c.compress(b"", &mut wire).unwrap());
    assert!(c.compress(msg, &mut wire).unwrap());
    assert_eq!(inflate_pieces(&mut inf, &[&wire], msg.len()).unwrap(), msg);
}

#[test]
fn level_one_is_taken_as_two_where_zlib_rs_panics() {
    // Autobahn 12.2.3 (image data) made zlib-rs 0.6.8's deflate_quick panic at level 1.
    let mut x = 0x1234_5678u32;
    for mem_level in [1, 4, 9] {
        let d = DeflateConfig {
            level: 1,
            mem_level,
            threshold: 0,
            ..cfg(DeflateMode::Shared)
        };
        for (mask, size) in [(0xff, 256), (0x7f, 1024), (0x0f, 16384), (0xff, 65536)] {
            let data: Vec<u8> = (0..size)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8 & mask
                })
                .collect();
            let mut c = Compressor::new(13, false, &d);
            for _ in 0..3 {
                let mut out = Vec::new();
                if c.compress(&data, &mut out).unwrap() {
                    let mut back = Vec::new();
                    Inflater::new(13, false)
                        .inflate(&out, true, &mut back, usize::MAX)
                        .unwrap();
                    assert_eq!(back, data);
                }
            }
        }
    }
}

/// Autobahn 12.2.x sends poorly compressible messages of every size: zlib-rs 0.6.8 panicked
/// ("buf.len() must fit in remaining()") when the compressor's output room ran short mid-message.
#[test]
fn poorly_compressible_messages_of_every_size_never_panic() {
    let mut x = 0x1234_5678u32;
    for (level, mem_level) in [(2, 4), (2, 8), (6, 4), (9, 9)] {
        let d = DeflateConfig {
            level,
            mem_level,
            threshold: 64,
            ..cfg(DeflateMode::Shared)
        };
        let mut c = Compressor::new(13, false, &d);
        let mut out = Vec::new();
        for i in 0..3000usize {
            let size = [16, 64, 256, 1024, 4096][i % 5];
            let data: Vec<u8> = (0..size)
                .map(|j| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    if j % 7 < 3 {
                        (j / 7) as u8
                    } else {
                        x as u8
                    }
                })
                .collect();
            if out.len() > 100_000 {
                out.clear();
            }
            // As the outbox does: room for a header, then the payload after it.
            out.resize(out.len() + 10, 0);
            let start = out.len();
            if c.compress(&data, &mut out).unwrap() {
                let mut back = Vec::new();
                Inflater::new(13, false)
                    .inflate(&out[start..], true, &mut back, usize::MAX)
                    .unwrap();
                assert_eq!(back, data);
            }
        }
    }
}
