//! `deflate::Inflater` on arbitrary compressed bytes, and `Compressor` → `Inflater` round trips.
//! Invariants: never more output than the limit; the same result whether the input comes whole
//! or in fuzzer-chosen pieces; what the compressor makes inflates back to its input, message after
//! message, with and without context takeover.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsloop::deflate::{Compressor, DeflateConfig, DeflateError, DeflateMode, Inflater};

/// Inflates `data` as one message cut at `cuts`; the output and the result.
fn inflate(data: &[u8], cuts: &[usize], limit: usize) -> (Vec<u8>, Result<(), DeflateError>) {
    let mut inf = Inflater::new(15, true);
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &end) in cuts.iter().enumerate() {
        let before = out.len();
        match inf.inflate(&data[start..end], i + 1 == cuts.len(), &mut out, limit) {
            Ok(n) => assert_eq!(n, out.len() - before),
            Err(e) => return (out, Err(e)),
        }
        assert!(out.len() <= limit, "{} > limit {limit}", out.len());
        start = end;
    }
    (out, Ok(()))
}

fuzz_target!(|input: &[u8]| {
    // Layout: [flags] [limit: 2 bytes BE] [number of cuts (low 3 bits)] [one byte per cut] [data...]
    // flags bit 0: round trip (data is plaintext split into messages at 0xff bytes) instead of
    // inflating data as compressed bytes; bit 1: context takeover; bits 4..7: window - 9 (mod 7).
    let [flags, l0, l1, n, rest @ ..] = input else {
        return;
    };
    let limit = usize::from(u16::from_be_bytes([*l0, *l1]));
    let n = usize::from(n & 7).min(rest.len());
    let (cut_bytes, data) = rest.split_at(n);
    let mut cuts: Vec<usize> = cut_bytes
        .iter()
        .map(|&c| usize::from(c) * data.len() / 255)
        .collect();
    cuts.sort_unstable();
    cuts.push(data.len());

    if flags & 1 == 0 {
        let (whole_out, whole) = inflate(data, &[data.len()], limit);
        let (split_out, split) = inflate(data, &cuts, limit);
        assert_eq!(whole, split, "whole vs cut at {cuts:?}");
        if whole.is_ok() {
            assert_eq!(whole_out, split_out);
        }
        return;
    }

    let keep = flags & 2 != 0;
    let window = 9 + (flags >> 4) % 7;
    let cfg = DeflateConfig {
        mode: DeflateMode::Dedicated,
        window_bits: window,
        client_window_bits: window,
        mem_level: 1 + (flags >> 4) % 9,
        level: 1 + (*l0) % 9,
        threshold: usize::from(*l1 % 8),
    };
    let mut c = Compressor::new(window, keep, &cfg);
    let mut inf = Inflater::new(window, keep);
    for msg in data.split(|&b| b == 0xff) {
        let mut wire = Vec::new();
        if !c.compress(msg, &mut wire).expect("compressor") {
            assert!(wire.is_empty());
            continue;
        }
        assert!(
            wire.len() < msg.len(),
            "a compressed message that does not pay"
        );
        // Inflated in two pieces, cut at the first cut point.
        let cut = cuts[0].min(wire.len());
        let mut out = Vec::new();
        inf.inflate(&wire[..cut], false, &mut out, msg.len())
            .expect("first piece");
        inf.inflate(&wire[cut..], true, &mut out, msg.len())
            .expect("last piece");
        assert_eq!(out, msg);
    }
});
