//! The AES-GCM ceiling under a wss:// echo of large messages, in GB/s on one core: the cipher
//! rustls uses (aws-lc-rs) sealing and opening 16 KiB records, TLS's largest (RFC 8446 §5.1).
//! An echo of N bytes costs one open and one seal of N bytes on top of the plain echo, so
//! `1 / (1/open + 1/seal)` bounds what TLS can add back, whatever the server does around it.
//! `cargo bench --bench tls`; no timing is asserted.

use std::hint::black_box;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};

/// TLS's largest record plaintext (RFC 8446 §5.1).
const RECORD: usize = 16 * 1024;

/// Runs `f` (which processes `bytes` bytes per call) for about a second; returns GB/s.
fn gbps(bytes: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut calls = 0u64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(800) {
        for _ in 0..8 {
            f();
        }
        calls += 8;
    }
    (bytes as f64 * calls as f64) / start.elapsed().as_secs_f64() / 1e9
}

fn cipher(name: &str, alg: &'static aws_lc_rs::aead::Algorithm) {
    let key = LessSafeKey::new(UnboundKey::new(alg, &vec![7u8; alg.key_len()]).unwrap());
    let mut record = vec![0x5au8; RECORD];
    let mut counter = 0u64;
    let nonce = |c: u64| {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&c.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    };
    let seal = gbps(RECORD, || {
        counter += 1;
        let tag = key
            .seal_in_place_separate_tag(nonce(counter), Aad::empty(), &mut record)
            .unwrap();
        black_box(tag.as_ref()[0]);
    });
    // Open needs records that authenticate: seal one and open copies of it.
    let mut sealed = vec![0x5au8; RECORD];
    let tag = key
        .seal_in_place_separate_tag(nonce(0), Aad::empty(), &mut sealed)
        .unwrap();
    sealed.extend_from_slice(tag.as_ref());
    let mut work = sealed.clone();
    let open = gbps(RECORD, || {
        work.copy_from_slice(&sealed);
        black_box(
            key.open_in_place(nonce(0), Aad::empty(), &mut work)
                .unwrap(),
        );
    });
    println!(
        "{name:<28} seal {seal:5.2} GB/s  open {open:5.2} GB/s  (open includes a 16 KiB copy)"
    );
    println!(
        "{:<28} echo ceiling {:5.2} GB/s = {:6.0} msg/s of 64 KiB per core",
        "",
        1.0 / (1.0 / seal + 1.0 / open),
        1e9 / (1.0 / seal + 1.0 / open) / 65536.0
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: a quick check then.
    let quick = !std::env::args().any(|a| a == "--bench");
    println!(
        "wsloop AES-GCM ceiling benchmark{}",
        if quick { " (smoke run)" } else { "" }
    );
    if quick {
        // One record each way, so that `cargo test --benches` checks the bench still runs.
        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[7u8; 16]).unwrap());
        let nonce = || Nonce::assume_unique_for_key([0u8; 12]);
        let mut record = b"hello".to_vec();
        key.seal_in_place_append_tag(nonce(), Aad::empty(), &mut record)
            .unwrap();
        let opened = key
            .open_in_place(nonce(), Aad::empty(), &mut record)
            .unwrap();
        assert_eq!(opened, b"hello");
        return;
    }
    cipher("aws-lc-rs AES-128-GCM", &AES_128_GCM);
    cipher("aws-lc-rs AES-256-GCM", &AES_256_GCM);
}
