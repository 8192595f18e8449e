//! `frame::parse_header` on arbitrary bytes: never panics, never reads past the input, and
//! every complete header survives an `encode_header` round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsloop::frame::{encode_header, parse_header, Parse, MAX_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let h = match parse_header(data) {
        Ok(Parse::Complete(h)) => h,
        Ok(Parse::Partial) => {
            assert!(
                data.len() < MAX_HEADER_LEN,
                "Partial with {} bytes",
                data.len()
            );
            return;
        }
        Err(_) => {
            // The only header-level error: a 64-bit length with its top bit set (§5.2).
            assert!(data.len() >= 10 && data[1] & 0x7f == 127 && data[2] & 0x80 != 0);
            return;
        }
    };
    assert!(
        h.header_len <= MAX_HEADER_LEN,
        "header_len {}",
        h.header_len
    );
    assert!(h.header_len <= data.len(), "header_len past the input");
    assert_eq!(h.len >> 63, 0);
    assert!(h.rsv <= 7);
    assert_eq!(h.fin, data[0] & 0x80 != 0);
    assert_eq!(h.opcode.bits(), data[0] & 0x0f);
    assert_eq!(h.mask.is_some(), data[1] & 0x80 != 0);
    let form = match data[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    assert_eq!(h.header_len, form + if h.mask.is_some() { 4 } else { 0 });

    // Every strict prefix of a complete header is Partial: nothing is decided early.
    for k in 0..h.header_len {
        assert!(
            matches!(parse_header(&data[..k]), Ok(Parse::Partial)),
            "prefix {k}"
        );
    }

    // Re-encode (encode_header has no RSV parameter, so put the bits back) and re-parse.
    let mut out = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut out, h.fin, h.opcode, h.mask, h.len as usize);
    out[0] |= h.rsv << 4;
    let Ok(Parse::Complete(h2)) = parse_header(&out[..n]) else {
        panic!("re-encoded header does not parse: {:02x?}", &out[..n]);
    };
    assert_eq!(
        (h2.fin, h2.rsv, h2.opcode, h2.mask, h2.len),
        (h.fin, h.rsv, h.opcode, h.mask, h.len)
    );
    assert_eq!(h2.header_len, n);
    assert!(n <= h.header_len, "encode_header is not minimal");
    if n == h.header_len {
        // Same length form, so the input was minimal too: the bytes must be identical.
        assert_eq!(&out[..n], &data[..n]);
    }
});
