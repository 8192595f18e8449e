//! The link driven by scripted RESP bytes and a fake clock: no sockets, no sleeps.

use super::*;
use redis_protocol::resp2::types::OwnedFrame::{Array, BulkString};

const NODE: u64 = 0xA;
const OTHER: u64 = 0xB;
const PING: &str = "*1\r\n$4\r\nPING\r\n";
const SUB_PONG: &[u8] = b"*2\r\n$4\r\npong\r\n$0\r\n\r\n";

fn settings() -> Settings {
    Settings {
        prefix: "wsloop".into(),
        user: None,
        password: None,
        buffer: 1024,
        ping_interval: Duration::from_secs(5),
        max_reply: 64 * 1024,
    }
}

fn link(t0: Instant) -> RedisLink {
    RedisLink::new(settings(), NODE, 7, t0)
}

/// What the link wrote on `side` since last asked (as if the socket took all of it).
fn take(l: &mut RedisLink, side: Side) -> String {
    let out = String::from_utf8_lossy(l.output(side)).into_owned();
    let n = l.output(side).len();
    l.written(side, n);
    out
}

fn events(l: &mut RedisLink) -> Vec<Event> {
    std::iter::from_fn(|| l.poll_event()).collect()
}

fn actions(l: &mut RedisLink) -> Vec<Action> {
    std::iter::from_fn(|| l.poll_action()).collect()
}

fn bulk(s: &[u8]) -> Vec<u8> {
    let mut v = format!("${}\r\n", s.len()).into_bytes();
    v.extend_from_slice(s);
    v.extend_from_slice(b"\r\n");
    v
}

fn command(args: &[&str]) -> String {
    let mut s = format!("*{}\r\n", args.len());
    for a in args {
        s.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s
}

/// A `message` push from Redis carrying an envelope.
fn message(channel: &str, node: u64, seq: u64, text: &str) -> Vec<u8> {
    let room = channel.rsplit(':').next().unwrap();
    let mut env = Vec::new();
    Envelope {
        node,
        seq,
        kind: MessageKind::Text,
        room,
        payload: text.as_bytes(),
    }
    .encode(&mut env);
    raw_message(channel, &env)
}

fn raw_message(channel: &str, data: &[u8]) -> Vec<u8> {
    let mut v = b"*3\r\n".to_vec();
    v.extend(bulk(b"message"));
    v.extend(bulk(channel.as_bytes()));
    v.extend(bulk(data));
    v
}

/// Connects (the handshake's output checked) and answers the handshake: the link is up.
fn bring_up(l: &mut RedisLink, now: Instant) -> String {
    l.handle_timeout(now);
    assert_eq!(actions(l), [Action::Connect]);
    assert_eq!(take(l, Side::Publisher), PING);
    let sub = take(l, Side::Subscriber);
    assert!(sub.ends_with(PING), "{sub:?}");
    l.receive(Side::Publisher, b"+PONG\r\n", now);
    assert!(!l.is_up());
    l.receive(Side::Subscriber, b"+PONG\r\n", now);
    assert!(l.is_up());
    assert_eq!(events(l), [Event::Up]);
    sub[..sub.len() - PING.len()].to_string()
}

fn is_down(e: &[Event], want: &LinkError) -> bool {
    matches!(e, [Event::Down { error, .. }] if error == want)
}

#[test]
fn handshake_authenticates_both_connections() {
    let t0 = Instant::now();
    let mut s = settings();
    s.password = Some("pw".into());
    let mut l = RedisLink::new(s.clone(), NODE, 1, t0);
    assert_eq!(l.poll_timeout(), Some(t0));
    l.handle_timeout(t0);
    assert_eq!(actions(&mut l), [Action::Connect]);
    let hello = command(&["AUTH", "pw"]) + PING;
    assert_eq!(take(&mut l, Side::Publisher), hello);
    assert_eq!(take(&mut l, Side::Subscriber), hello);
    l.receive(Side::Publisher, b"+OK\r\n+PONG\r\n", t0);
    // Byte by byte is the same as whole.
    for b in b"+OK\r\n+PONG\r\n" {
        l.receive(Side::Subscriber, &[*b], t0);
    }
    assert_eq!(events(&mut l), [Event::Up]);
    assert!(l.stats().connected);

    // ACL user and password; a refusal loses the link and closes both sockets.
    s.user = Some("alice".into());
    let mut l = RedisLink::new(s, NODE, 1, t0);
    l.handle_timeout(t0);
    assert!(take(&mut l, Side::Publisher).starts_with(&command(&["AUTH", "alice", "pw"])));
    l.receive(
        Side::Publisher,
        b"-WRONGPASS invalid username-password pair\r\n",
        t0,
    );
    let e = events(&mut l);
    assert!(
        is_down(
            &e,
            &LinkError::ErrorReply("WRONGPASS invalid username-password pair".into())
        ),
        "{e:?}"
    );
    assert_eq!(actions(&mut l), [Action::Connect, Action::Close]);
    assert!(!l.stats().connected);
}

#[test]
fn one_subscribe_per_room_reference_counted() {
    let t0 = Instant::now();
    let mut l = link(t0);
    assert_eq!(bring_up(&mut l, t0), "");
    l.join("a");
    assert_eq!(
        take(&mut l, Side::Subscriber),
        command(&["SUBSCRIBE", "wsloop:room:a"])
    );
    l.join("a");
    l.join("b");
    assert_eq!(
        take(&mut l, Side::Subscriber),
        command(&["SUBSCRIBE", "wsloop:room:b"])
    );
    l.leave("a");
    assert_eq!(take(&mut l, Side::Subscriber), "");
    l.leave("a");
    assert_eq!(
        take(&mut l, Side::Subscriber),
        command(&["UNSUBSCRIBE", "wsloop:room:a"])
    );
    l.leave("a");
    l.leave("never");
    assert_eq!(take(&mut l, Side::Subscriber), "");
    assert_eq!(l.rooms().collect::<Vec<_>>(), [("b", 1)]);
    // Confirmations are read and change nothing; nothing goes on the publisher.
    l.receive(
        Side::Subscriber,
        b"*3\r\n$9\r\nsubscribe\r\n$13\r\nwsloop:room:a\r\n:1\r\n",
        t0,
    );
    assert_eq!(events(&mut l), []);
    assert_eq!(take(&mut l, Side::Publisher), "");
}

#[test]
fn every_live_room_is_subscribed_again_after_a_reconnect() {
    let t0 = Instant::now();
    let mut l = link(t0);
    l.join("a");
    l.join("b");
    l.join("gone");
    // Rooms joined before the first connection are subscribed with it.
    assert_eq!(
        bring_up(&mut l, t0),
        command(&[
            "SUBSCRIBE",
            "wsloop:room:a",
            "wsloop:room:b",
            "wsloop:room:gone"
        ])
    );
    l.lost(t0, LinkError::Closed);
    let e = events(&mut l);
    let Some(Event::Down { retry_in, .. }) = e.first() else {
        panic!("{e:?}")
    };
    assert!(*retry_in <= BACKOFF_MIN, "{retry_in:?}");
    assert_eq!(actions(&mut l), [Action::Close]);
    // While down: joins and leaves change the set, nothing is written.
    l.join("c");
    l.leave("gone");
    assert_eq!(take(&mut l, Side::Subscriber), "");
    let at = l.poll_timeout().unwrap();
    l.handle_timeout(at - Duration::from_millis(1));
    assert_eq!(actions(&mut l), []);
    assert_eq!(
        bring_up(&mut l, at),
        command(&[
            "SUBSCRIBE",
            "wsloop:room:a",
            "wsloop:room:b",
            "wsloop:room:c"
        ])
    );
    assert_eq!(l.stats().reconnects, 1);
    // Many rooms go in batches of SUBSCRIBE_BATCH.
    for i in 0..300 {
        l.join(&format!("r{i}"));
    }
    l.lost(at, LinkError::Closed);
    assert_eq!(actions(&mut l), [Action::Close]);
    events(&mut l);
    let at = l.poll_timeout().unwrap();
    let subs = bring_up(&mut l, at);
    assert_eq!(
        subs.matches("SUBSCRIBE").count(),
        303_usize.div_ceil(SUBSCRIBE_BATCH)
    );
    assert_eq!(subs.matches("wsloop:room:").count(), 303);
    assert_eq!(l.stats().reconnects, 2);
}

#[test]
fn backoff_doubles_from_100ms_to_2s_with_seeded_jitter() {
    let run = |seed: u64| {
        let t0 = Instant::now();
        let mut l = RedisLink::new(settings(), NODE, seed, t0);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..8 {
            l.handle_timeout(now);
            assert_eq!(actions(&mut l), [Action::Connect]);
            l.lost(now, LinkError::Io("connection refused".into()));
            assert_eq!(actions(&mut l), [Action::Close]);
            let Some(Event::Down { retry_in, .. }) = l.poll_event() else {
                panic!()
            };
            assert_eq!(l.poll_timeout(), Some(now + retry_in));
            delays.push(retry_in);
            now += retry_in;
        }
        // Up resets it: the next loss retries within 100 ms again.
        bring_up(&mut l, now);
        l.lost(now, LinkError::Closed);
        let Some(Event::Down { retry_in, .. }) = l.poll_event() else {
            panic!()
        };
        assert!(retry_in <= BACKOFF_MIN);
        delays
    };
    let a = run(1);
    let ms = [100, 200, 400, 800, 1600, 2000, 2000, 2000];
    for (d, full) in a.iter().zip(ms) {
        let full = Duration::from_millis(full);
        assert!(*d >= full / 2 && *d <= full, "{d:?} for {full:?} in {a:?}");
    }
    assert_eq!(a, run(1), "the same seed, the same delays");
    assert_ne!(a, run(2), "jitter");
}

#[test]
fn unanswered_ping_or_slow_connect_loses_the_link() {
    let t0 = Instant::now();
    let s5 = Duration::from_secs(5);
    let mut l = link(t0);
    // Connecting: TCP, AUTH and the first PING must be done within the interval.
    l.handle_timeout(t0);
    actions(&mut l);
    assert_eq!(l.poll_timeout(), Some(t0 + s5));
    l.handle_timeout(t0 + s5);
    assert!(is_down(&events(&mut l), &LinkError::ConnectTimeout));

    let mut l = link(t0);
    bring_up(&mut l, t0);
    l.join("a");
    take(&mut l, Side::Subscriber);
    assert_eq!(l.poll_timeout(), Some(t0 + s5));
    l.handle_timeout(t0 + s5);
    assert_eq!(take(&mut l, Side::Publisher), PING);
    assert_eq!(take(&mut l, Side::Subscriber), PING);
    // Answered on both (a subscribed connection answers with an array): still up.
    l.receive(Side::Publisher, b"+PONG\r\n", t0 + s5);
    l.receive(Side::Subscriber, SUB_PONG, t0 + s5);
    assert_eq!(l.poll_timeout(), Some(t0 + 2 * s5));
    l.handle_timeout(t0 + 2 * s5);
    assert!(l.is_up());
    assert_eq!(take(&mut l, Side::Publisher), PING);
    assert_eq!(take(&mut l, Side::Subscriber), PING);
    // Only the publisher answers: the subscriber's link is dead by the deadline.
    l.receive(Side::Publisher, b"+PONG\r\n", t0 + 2 * s5);
    l.handle_timeout(t0 + 3 * s5 - Duration::from_millis(1));
    assert!(l.is_up());
    l.handle_timeout(t0 + 3 * s5);
    assert!(is_down(&events(&mut l), &LinkError::PingTimeout));
    assert_eq!(actions(&mut l), [Action::Close]);
}

#[test]
fn publishes_over_the_buffer_or_while_down_are_dropped_and_counted() {
    let t0 = Instant::now();
    let mut l = link(t0);
    // Down: dropped at once, never queued.
    assert!(!l.publish("a", MessageKind::Text, b"early"));
    assert_eq!(l.stats().dropped, 1);
    bring_up(&mut l, t0);
    // Each publish is 365 bytes of output here: two fit in 1024, the third does not.
    let payload = [b'x'; 300];
    assert!(l.publish("a", MessageKind::Text, &payload));
    assert!(l.publish("a", MessageKind::Text, &payload));
    assert_eq!(l.output(Side::Publisher).len(), 2 * 365);
    assert!(!l.publish("a", MessageKind::Text, &payload));
    assert_eq!(l.stats().dropped, 2);
    let out = take(&mut l, Side::Publisher);
    assert_eq!(out.matches("PUBLISH").count(), 2);
    assert!(out.starts_with("*3\r\n$7\r\nPUBLISH\r\n$13\r\nwsloop:room:a\r\n$320\r\n"));
    // Written: there is room again.
    assert!(l.publish("a", MessageKind::Text, &payload));
    take(&mut l, Side::Publisher);
    l.receive(Side::Publisher, b":1\r\n:0\r\n", t0);
    assert_eq!(l.stats().published, 2);
    // Lost with one written and unacknowledged (not counted: it may have been delivered),
    // one half written and one unwritten (counted).
    assert!(l.publish("a", MessageKind::Binary, b"y"));
    assert!(l.publish("a", MessageKind::Binary, b"z"));
    l.written(Side::Publisher, 10);
    l.lost(t0, LinkError::Closed);
    assert_eq!(l.stats().dropped, 2 + 2);
    assert_eq!(l.output(Side::Publisher), b"");
}

#[test]
fn messages_from_other_nodes_are_delivered_and_our_own_dropped() {
    let t0 = Instant::now();
    let mut l = link(t0);
    l.join("news");
    bring_up(&mut l, t0);
    let ch = "wsloop:room:news";
    let mut bytes = message(ch, NODE, 1, "mine");
    bytes.extend(message(ch, OTHER, 1, "hello"));
    bytes.extend(message(ch, OTHER, 4, "after a gap"));
    bytes.extend(message(ch, OTHER, 4, "duplicate"));
    bytes.extend(message("wsloop:room:sport", OTHER, 1, "no members"));
    bytes.extend(message("other:room:news", OTHER, 5, "another prefix"));
    bytes.extend(raw_message(ch, b"\x09not an envelope"));
    // Split anywhere: the same events.
    for b in &bytes {
        l.receive(Side::Subscriber, &[*b], t0);
    }
    let text = |s: &str| Event::Message {
        room: "news".into(),
        kind: MessageKind::Text,
        payload: s.as_bytes().to_vec(),
    };
    assert_eq!(events(&mut l), [text("hello"), text("after a gap")]);
    let st = l.stats();
    assert_eq!((st.received, st.missed, st.invalid), (2, 2, 2));
    assert!(l.is_up());
    // An envelope that names another room than its channel is not delivered.
    l.receive(
        Side::Subscriber,
        &{
            let mut env = Vec::new();
            Envelope {
                node: OTHER,
                seq: 5,
                kind: MessageKind::Text,
                room: "sport",
                payload: b"x",
            }
            .encode(&mut env);
            raw_message(ch, &env)
        },
        t0,
    );
    assert_eq!(events(&mut l), []);
    assert_eq!(l.stats().invalid, 3);
    assert_eq!(l.stats().own, 1);
    // What we publish carries our node id, so it comes back as our own.
    assert!(l.publish("news", MessageKind::Text, b"round trip"));
    let out = take(&mut l, Side::Publisher);
    let Ok(Some((Array(args), _))) = redis_protocol::resp2::decode::decode(out.as_bytes()) else {
        panic!("{out:?}")
    };
    let [BulkString(cmd), BulkString(channel), BulkString(data)] = &args[..] else {
        panic!("{args:?}")
    };
    assert_eq!((&cmd[..], &channel[..]), (&b"PUBLISH"[..], ch.as_bytes()));
    let env = Envelope::decode(data).unwrap();
    assert_eq!((env.node, env.seq, env.room), (NODE, 1, "news"));
    l.receive(Side::Subscriber, &raw_message(ch, data), t0);
    assert_eq!(events(&mut l), []);
    assert_eq!(l.stats().own, 2);
}

#[test]
fn bad_replies_lose_the_link_without_panicking() {
    let t0 = Instant::now();
    let deep = "*1\r\n".repeat(100_000) + ":1\r\n";
    let too_big = format!("*3\r\n$7\r\nmessage\r\n$1\r\nx\r\n${}\r\n", 70_000);
    let cases: &[(&str, Side, &[u8])] = &[
        ("not RESP", Side::Publisher, b"hello\r\n"),
        ("nested deep", Side::Subscriber, deep.as_bytes()),
        ("integer on the subscriber", Side::Subscriber, b":1\r\n"),
        ("reply nothing asked for", Side::Publisher, b":1\r\n"),
        ("unknown push", Side::Subscriber, b"*1\r\n$3\r\nfoo\r\n"),
        ("bulk length", Side::Publisher, b"$-7\r\n"),
        ("array of -2", Side::Subscriber, b"*-2\r\n"),
        ("too large", Side::Subscriber, too_big.as_bytes()),
    ];
    for (name, side, bytes) in cases {
        let mut l = link(t0);
        bring_up(&mut l, t0);
        l.receive(*side, bytes, t0);
        l.receive(*side, &[b'x'; 70_000], t0);
        let e = events(&mut l);
        assert!(
            matches!(e.as_slice(), [Event::Down { .. }]),
            "{name}: {e:?}"
        );
        assert!(!l.is_up(), "{name}");
        assert_eq!(actions(&mut l), [Action::Close], "{name}");
    }
    // Input while down (a late read) is ignored.
    let mut l = link(t0);
    l.receive(Side::Publisher, b"garbage", t0);
    assert_eq!(events(&mut l), []);
}

#[test]
fn depth_scan_reads_headers_only() {
    assert_eq!(resp_depth(b"+PONG\r\n"), 0);
    assert_eq!(
        resp_depth(b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$3\r\n*9\r\n"),
        1
    );
    assert_eq!(resp_depth(b"*2\r\n*1\r\n:1\r\n*1\r\n*1\r\n:2\r\n"), 3);
    assert_eq!(resp_depth(b"*1\r\n:1\r\n*1\r\n*1\r\n*1\r\n"), 1);
    assert_eq!(resp_depth(b"*2\r\n$99999999999999999999\r\n"), 1);
    assert_eq!(resp_depth(b"*2\r\n$9223372036854775807\r\n"), 1);
    assert_eq!(resp_depth("*1\r\n".repeat(10).as_bytes()), MAX_DEPTH + 1);
}

#[test]
fn jittered_backoff_never_exceeds_the_cap_nor_drops_below_its_half() {
    // Whatever the seed and however many failures, a retry waits at most BACKOFF_MAX: the
    // cross-node recovery promise (within 3 s of Redis being back) rests on it.
    for seed in 0..200u64 {
        let mut l = RedisLink::new(settings(), NODE, seed, Instant::now());
        for failures in 1..=64u32 {
            let d = l.backoff(failures);
            let full = (BACKOFF_MIN * (1u32 << (failures - 1).min(16))).min(BACKOFF_MAX);
            assert!(
                d <= full && d <= BACKOFF_MAX,
                "seed {seed}, {failures}: {d:?}"
            );
            assert!(d >= full / 2, "seed {seed}, {failures}: {d:?}");
        }
        assert!(l.backoff(u32::MAX) <= BACKOFF_MAX);
    }
}
