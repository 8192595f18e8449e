//! The AES-GCM ceiling under a wss:// echo of large messages, in GB/s on one core: the cipher
//! alone (aws-lc-rs seal/open of 16 KiB records, TLS's largest), then rustls's record layer
//! around it (plaintext in, records out and back), in memory, no sockets. An echo of N bytes
//! costs one open and one seal of N bytes, so `1 / (1/open + 1/seal)` GB/s bounds the echo's
//! payload rate whatever the server does. `cargo bench --bench tls`; no timing is asserted.

use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};
use rustls::{ClientConnection, ServerConnection};

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
        black_box(tag);
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
        black_box(key.open_in_place(nonce(0), Aad::empty(), &mut work).unwrap());
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

/// A finished rustls handshake in memory, with the suite `suite` forced.
fn pair(suite: rustls::SupportedCipherSuite) -> (ClientConnection, ServerConnection) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let certified = rustls::pki_types::CertificateDer::from(cert.der().to_vec());
    let private = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![suite],
        ..rustls::crypto::aws_lc_rs::default_provider()
    });
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.clone()], private)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut c =
        ClientConnection::new(Arc::new(client), "localhost".try_into().unwrap()).unwrap();
    let mut s = ServerConnection::new(Arc::new(server)).unwrap();
    let mut buf = Vec::new();
    while c.is_handshaking() || s.is_handshaking() || c.wants_write() || s.wants_write() {
        buf.clear();
        c.write_tls(&mut buf).unwrap();
        s.read_tls(&mut &buf[..]).unwrap();
        s.process_new_packets().unwrap();
        buf.clear();
        s.write_tls(&mut buf).unwrap();
        c.read_tls(&mut &buf[..]).unwrap();
        c.process_new_packets().unwrap();
    }
    (c, s)
}

/// rustls around the cipher: the server seals 64 KiB messages into records (writer + write_tls
/// into memory), and opens the client's (read_tls + process_new_packets + reader).
fn record_layer(name: &str, suite: rustls::SupportedCipherSuite) {
    const MESSAGE: usize = 64 * 1024;
    let (mut client, mut server) = pair(suite);
    let message = vec![0xa5u8; MESSAGE];
    let mut wire = Vec::with_capacity(2 * MESSAGE);
    let seal = gbps(MESSAGE, || {
        server.writer().write_all(&message).unwrap();
        wire.clear();
        while server.wants_write() {
            server.write_tls(&mut wire).unwrap();
        }
        black_box(&wire);
    });
    // The client's records for one message, opened again and again by fresh server state
    // would need a fresh handshake each time; instead the client seals a new message per
    // round (its cost is measured on the other side) and only the server's open is timed.
    let mut records = Vec::new();
    let mut plain = vec![0u8; MESSAGE];
    let mut open_time = Duration::ZERO;
    let mut opened = 0usize;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        client.writer().write_all(&message).unwrap();
        records.clear();
        while client.wants_write() {
            client.write_tls(&mut records).unwrap();
        }
        let t = Instant::now();
        let mut at = &records[..];
        let mut got = 0;
        while got < MESSAGE {
            if !at.is_empty() {
                server.read_tls(&mut at).unwrap();
                server.process_new_packets().unwrap();
            }
            match server.reader().read(&mut plain[got..]) {
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        open_time += t.elapsed();
        opened += MESSAGE;
        black_box(&plain);
    }
    let open = opened as f64 / open_time.as_secs_f64() / 1e9;
    println!("{name:<28} seal {seal:5.2} GB/s  open {open:5.2} GB/s  (64 KiB messages)");
    println!(
        "{:<28} echo ceiling {:5.2} GB/s = {:6.0} msg/s of 64 KiB per core",
        "",
        1.0 / (1.0 / seal + 1.0 / open),
        1e9 / (1.0 / seal + 1.0 / open) / MESSAGE as f64
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: a quick check then.
    let quick = !std::env::args().any(|a| a == "--bench");
    println!(
        "wsloop TLS record benchmark{}",
        if quick { " (smoke run)" } else { "" }
    );
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    if quick {
        let (mut c, mut s) = pair(cs::TLS13_AES_128_GCM_SHA256);
        c.writer().write_all(b"hello").unwrap();
        let mut wire = Vec::new();
        c.write_tls(&mut wire).unwrap();
        s.read_tls(&mut &wire[..]).unwrap();
        s.process_new_packets().unwrap();
        let mut got = [0u8; 5];
        s.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        return;
    }
    cipher("aws-lc-rs AES-128-GCM", &AES_128_GCM);
    cipher("aws-lc-rs AES-256-GCM", &AES_256_GCM);
    record_layer("rustls TLS13_AES_128_GCM", cs::TLS13_AES_128_GCM_SHA256);
    record_layer("rustls TLS13_AES_256_GCM", cs::TLS13_AES_256_GCM_SHA384);
}
