//! permessage-deflate: bytes of zlib state per compressor / inflater for a few (window, memLevel)
//! pairs, counted by a global allocator, and compress + inflate rate for 1 KiB JSON-like
//! messages with and without context takeover. `cargo bench --bench deflate`; nothing is asserted
//! about speed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use wsloop::deflate::{Compressor, DeflateConfig, DeflateMode, Inflater};

/// Counts live heap bytes, so a state's size is "live after" minus "live before".
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Relaxed);
        LIVE.fetch_sub(l.size(), Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// A JSON-like chat message of about `n` bytes, different for each `seed`.
fn message(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut s = String::new();
    while s.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(&format!(
            "{{\"id\":{},\"user\":\"user{}\",\"room\":\"lobby\",\"text\":\"message number {} says hi\",\"ts\":{}}},",
            x % 100_000,
            x % 97,
            x % 1000,
            1_700_000_000 + x % 1_000_000
        ));
    }
    s.truncate(n);
    s.into_bytes()
}

fn kib(bytes: usize) -> f64 {
    bytes as f64 / 1024.0
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let msg = message(1024, 1);
    println!(
        "wsloop deflate benchmark{}",
        if quick { " (smoke run)" } else { "" }
    );

    println!("zlib state per compressor (after its first message) and per inflater:");
    for (window, mem_level) in [
        (15u8, 8u8),
        (15, 4),
        (13, 8),
        (13, 4),
        (12, 5),
        (11, 4),
        (10, 3),
        (9, 1),
    ] {
        let cfg = DeflateConfig {
            mode: DeflateMode::Dedicated,
            window_bits: window,
            mem_level,
            threshold: 0,
            ..DeflateConfig::default()
        };
        let mut out = Vec::with_capacity(4096);
        let before = LIVE.load(Relaxed);
        let mut c = Compressor::new(window, true, &cfg);
        c.compress(&msg, &mut out).unwrap();
        let compressor = LIVE.load(Relaxed) - before;
        let before = LIVE.load(Relaxed);
        let mut inf = Inflater::new(window, true);
        let mut plain = Vec::with_capacity(4096);
        inf.inflate(&out, true, &mut plain, 1 << 20).unwrap();
        let inflater = LIVE.load(Relaxed) - before;
        assert_eq!(plain, msg);
        println!(
            "  window {window:2} memLevel {mem_level}: compressor {:7.1} KiB, inflater {:5.1} KiB, 1 KiB message -> {} B",
            kib(compressor),
            kib(inflater),
            out.len()
        );
        black_box((c, inf));
    }

    let msgs: Vec<Vec<u8>> = (0..256).map(|i| message(1024, i)).collect();
    let budget = if quick {
        Duration::from_millis(50)
    } else {
        Duration::from_secs(1)
    };
    for (window, mem_level, level) in [
        (15u8, 8u8, 6u8),
        (15, 8, 1),
        (13, 4, 6),
        (13, 4, 1),
        (11, 4, 1),
    ] {
        for keep in [false, true] {
            let cfg = DeflateConfig {
                mode: DeflateMode::Dedicated,
                window_bits: window,
                client_window_bits: window,
                mem_level,
                level,
                threshold: 0,
            };
            let mut c = Compressor::new(window, keep, &cfg);
            let mut inf = Inflater::new(window, keep);
            let (mut wire, mut plain) = (Vec::new(), Vec::new());
            let (mut n, mut in_bytes, mut out_bytes) = (0usize, 0usize, 0usize);
            let start = Instant::now();
            while start.elapsed() < budget {
                for m in &msgs {
                    wire.clear();
                    plain.clear();
                    assert!(c.compress(m, &mut wire).unwrap());
                    inf.inflate(&wire, true, &mut plain, 1 << 20).unwrap();
                    in_bytes += m.len();
                    out_bytes += wire.len();
                }
                n += msgs.len();
            }
            let rate = n as f64 / start.elapsed().as_secs_f64();
            println!(
                "  1 KiB JSON, window {window} memLevel {mem_level} level {level}, {}: {:8.0} msg/s compress+inflate, ratio {:.2}",
                if keep { "context takeover   " } else { "no context takeover" },
                rate,
                out_bytes as f64 / in_bytes as f64
            );
        }
    }
}
