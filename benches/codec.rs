//! Codec throughput: decode (parse + unmask + UTF-8 check + hand over), unmask alone, encode,
//! and the UTF-8 check alone, in GB/s. `cargo bench` runs it; no timing here is asserted.

use std::hint::black_box;
use std::time::{Duration, Instant};

use wsloop::connection::{Connection, Event, MessageKind};
use wsloop::frame::{apply_mask, encode_frame, Opcode, Role};
use wsloop::utf8::Utf8Validator;

/// Runs `f` (which processes `bytes` bytes per call) for about a second; returns GB/s.
fn gbps(bytes: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut calls = 0u64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(800) {
        for _ in 0..16 {
            f();
        }
        calls += 16;
    }
    (bytes as f64 * calls as f64) / start.elapsed().as_secs_f64() / 1e9
}

fn masked_stream(payload: &[u8], count: usize, op: Opcode) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..count {
        encode_frame(&mut v, true, op, Some([i as u8, 0x5a, 0xa5, 0x3c]), payload);
    }
    v
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run a quick pass then.
    let quick = !std::env::args().any(|a| a == "--bench");
    println!(
        "wsloop codec benchmark{}",
        if quick { " (smoke run)" } else { "" }
    );
    let ascii: Vec<u8> = (0..1 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    let mixed: Vec<u8> = "grüße, κόσμε, 🎉 ".bytes().cycle().take(1 << 20).collect();
    if quick {
        let mut stream = masked_stream(&ascii[..100], 10, Opcode::Text);
        let mut c = Connection::new(Role::Server, 1 << 24);
        let mut n = 0;
        c.receive(&mut stream, Instant::now(), &mut |_, e| {
            n += matches!(e, Event::Message(..)) as usize
        });
        assert_eq!(n, 10);
        return;
    }

    for (name, size, count) in [
        ("16 B frames", 16usize, 65536usize),
        ("1 KiB frames", 1024, 1024),
        ("64 KiB frames", 65536, 16),
    ] {
        for (kind, src, op) in [
            ("binary", &ascii, Opcode::Binary),
            ("text", &mixed, Opcode::Text),
        ] {
            let template = masked_stream(&src[..size], count, op);
            let mut work = template.clone();
            let mut c = Connection::new(Role::Server, 1 << 24);
            let r = gbps(template.len(), || {
                work.copy_from_slice(&template);
                let mut got = 0usize;
                c.receive(&mut work, Instant::now(), &mut |_, e| {
                    if let Event::Message(_, d) = e {
                        got += d.len();
                    }
                });
                black_box(got);
            });
            println!("decode   {name:14} {kind:6}: {r:6.2} GB/s (includes a memcpy to restore the input)");
        }
    }

    let mut buf = ascii.clone();
    let r = gbps(buf.len(), || {
        apply_mask(black_box(&mut buf), [1, 2, 3, 4], 1)
    });
    println!("unmask   1 MiB in place         : {r:6.2} GB/s");

    let r = gbps(ascii.len(), || {
        black_box(std::str::from_utf8(black_box(&ascii)).is_ok());
    });
    println!("utf-8    1 MiB ascii            : {r:6.2} GB/s");
    let r = gbps(mixed.len(), || {
        let mut v = Utf8Validator::new();
        for piece in mixed.chunks(4093) {
            v.feed(piece).unwrap();
        }
        black_box(v.is_complete());
    });
    println!("utf-8    1 MiB mixed, in pieces : {r:6.2} GB/s");

    for size in [16usize, 1024, 65536] {
        let mut c = Connection::new(Role::Server, 1 << 24);
        let payload = &ascii[..size];
        let mut sink = Vec::with_capacity(1 << 22);
        let count = (1 << 20) / size;
        let r = gbps(count * size, || {
            for _ in 0..count {
                c.send(MessageKind::Binary, payload);
            }
            sink.clear();
            c.out.flush_to(&mut sink).unwrap();
            black_box(sink.len());
        });
        println!("encode   {size:6} B messages      : {r:6.2} GB/s (into the outbox, then out)");
    }
}
