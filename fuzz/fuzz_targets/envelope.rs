//! The cluster's wire: `Envelope::decode` (what another node, or anyone who can publish to
//! Redis, sends), `GapCounter` on any sequence of numbers, and `RedisLink::receive` on any
//! bytes from Redis, whole or cut in two.
#![no_main]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use wsloop::cluster::envelope::{Accept, Envelope, GapCounter, Receiver, Verdict};
use wsloop::cluster::lease::LeaseOp;
use wsloop::cluster::redis::{Event, LinkError, RedisLink, Settings, Side};
use wsloop::connection::MessageKind;

fuzz_target!(|input: &[u8]| {
    // Layout: [mode] [data...]; mode % 3: 0 envelope, 1 sequence numbers, 2 Redis replies.
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    match mode % 3 {
        0 => envelope(data),
        1 => gaps(data),
        _ => link(mode, data),
    }
});

/// A decoded envelope encodes back to the same bytes, names a valid room, carries UTF-8 when
/// it is text; a receiver delivers it once and drops it the second time.
fn envelope(data: &[u8]) {
    let Ok(env) = Envelope::decode(data) else {
        return;
    };
    let mut out = Vec::new();
    env.encode(&mut out);
    assert_eq!(out, data);
    assert_eq!(env.encoded_len(), data.len());
    assert!(wsloop::room::valid_name(env.room));
    if env.kind == MessageKind::Text {
        assert!(std::str::from_utf8(env.payload).is_ok());
    }
    let mut r = Receiver::new(1);
    let first = r.accept(&env);
    assert_eq!(first == Accept::Own, env.node == 1);
    if first == Accept::Deliver {
        assert_eq!(r.accept(&env), Accept::Duplicate);
    }
}

/// Never the same number delivered twice (between restarts), and the count of missed numbers
/// is exactly the numbers from the first to the highest that were not delivered.
fn gaps(data: &[u8]) {
    let mut g = GapCounter::default();
    let mut delivered = HashSet::new();
    let (mut first, mut highest) = (0u64, 0u64);
    // Missed before the last restart: a restart keeps the count, not the numbers.
    let mut before = 0;
    for pair in data.chunks_exact(2) {
        let seq = u64::from(u16::from_be_bytes([pair[0], pair[1]])) + 1;
        let restart = highest == 0 || seq == 1 && highest > 64;
        match g.observe(seq) {
            Verdict::Deliver { missed } => {
                if restart {
                    delivered.clear();
                    (first, highest) = (seq, seq);
                    before = g.missed();
                    assert_eq!(missed, 0);
                } else if seq > highest {
                    assert_eq!(missed, seq - highest - 1);
                    highest = seq;
                } else {
                    assert_eq!(missed, 0);
                }
                assert!(
                    seq >= first && delivered.insert(seq),
                    "{seq} delivered twice"
                );
            }
            Verdict::Duplicate => assert!(!restart),
        }
        if first != 0 {
            let since = highest - first + 1 - delivered.len() as u64;
            assert_eq!(g.missed(), before + since);
        }
    }
}

/// Any bytes from Redis, on either connection, whole or cut in two: no panic, messages (and
/// room-program input and lease answers) only for the room joined, nothing after the link is lost, and the same events either way (the
/// same messages, and lost or not).
fn link(mode: u8, data: &[u8]) {
    let side = if mode & 0x80 != 0 {
        Side::Publisher
    } else {
        Side::Subscriber
    };
    let cut = usize::from(mode >> 2 & 0x1f) * data.len() / 31;
    let whole = run(side, &[data]);
    let split = run(side, &[&data[..cut], &data[cut..]]);
    // Bytes broken in two ways may be refused for either one, seen first whole or in pieces.
    let same_down = |e: Event| match e {
        Event::Down { retry_in, .. } => Event::Down {
            error: LinkError::Closed,
            retry_in,
        },
        e => e,
    };
    let whole: Vec<Event> = whole.into_iter().map(same_down).collect();
    let split: Vec<Event> = split.into_iter().map(same_down).collect();
    assert_eq!(whole, split);
}

fn run(side: Side, pieces: &[&[u8]]) -> Vec<Event> {
    let t0 = Instant::now();
    let settings = Settings {
        prefix: "p".into(),
        user: None,
        password: None,
        buffer: 4096,
        ping_interval: Duration::from_secs(5),
        max_reply: 4096,
    };
    let mut l = RedisLink::new(settings, 1, 1, t0);
    l.join("r");
    l.handle_timeout(t0);
    while l.poll_action().is_some() {}
    for s in Side::BOTH {
        let n = l.output(s).len();
        l.written(s, n);
        l.receive(s, b"+PONG\r\n", t0);
    }
    assert!(l.is_up());
    assert_eq!(l.poll_event(), Some(Event::Up));
    // One publish waits for its reply, so that an integer on the publisher can be right; a
    // room program's lease command waits for its answer, and its input channel is live.
    l.publish("r", MessageKind::Text, b"x");
    assert!(l.lease(LeaseOp::Acquire, "r", Duration::from_secs(10)));
    l.subscribe_input("r");
    let mut events = Vec::new();
    for p in pieces {
        l.receive(side, p, t0);
        events.extend(std::iter::from_fn(|| l.poll_event()));
    }
    let mut down = false;
    for e in &events {
        assert!(!down, "an event after the link was lost: {events:?}");
        match e {
            Event::Message { room, .. } | Event::Input { room, .. } => assert_eq!(room, "r"),
            Event::Lease { op, room, .. } => {
                assert_eq!((*op, room.as_str()), (LeaseOp::Acquire, "r"));
            }
            Event::Down { .. } => down = true,
            Event::Up => panic!("up twice"),
        }
    }
    events
}
