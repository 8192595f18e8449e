//! The Redis bridge against a real `redis-server` (Debian's package; `.ci/run` installs it):
//! two `RedisBridge`s in a small `mio` loop stand in for two nodes. Redis runs on a free port
//! with no persistence and is stopped by its PID.

mod common;

use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};
use wsloop::cluster::bridge::RedisBridge;
use wsloop::cluster::redis::{Event, Settings};
use wsloop::cluster::RedisUrl;
use wsloop::connection::MessageKind;

use common::redis::{free_port, have_redis, Redis};

/// Two nodes, A and B, each a bridge, on one poll.
struct Nodes {
    poll: Poll,
    events: Events,
    nodes: [RedisBridge; 2],
    got: [Vec<Event>; 2],
}

const A: usize = 0;
const B: usize = 1;

impl Nodes {
    fn new(port: u16, rooms: &[&str]) -> Nodes {
        let poll = Poll::new().unwrap();
        let url = RedisUrl::parse(&format!("redis://127.0.0.1:{port}")).unwrap();
        let settings = Settings {
            prefix: format!("wsloop-test-{}", std::process::id()),
            user: None,
            password: None,
            buffer: 1 << 20,
            ping_interval: Duration::from_secs(1),
            max_reply: 1 << 20,
        };
        let now = Instant::now();
        let node = |i: usize| {
            let tokens = [Token(2 * i), Token(2 * i + 1)];
            let mut n = RedisBridge::new(
                &url,
                settings.clone(),
                poll.registry(),
                tokens,
                i as u64 + 1,
                now,
            )
            .unwrap();
            for r in rooms {
                n.join(r, now);
            }
            n
        };
        let nodes = [node(A), node(B)];
        Nodes {
            poll,
            events: Events::with_capacity(64),
            nodes,
            got: [Vec::new(), Vec::new()],
        }
    }

    /// One turn of the loop: wait for an event or the earliest timer (at most `max`).
    fn turn(&mut self, max: Duration) {
        let now = Instant::now();
        let wake = self
            .nodes
            .iter()
            .filter_map(|n| n.poll_timeout())
            .min()
            .map_or(max, |t| t.saturating_duration_since(now).min(max));
        self.poll.poll(&mut self.events, Some(wake)).unwrap();
        let now = Instant::now();
        for e in self.events.iter() {
            let i = e.token().0 / 2;
            self.nodes[i].ready(e.token(), now);
        }
        for (n, got) in self.nodes.iter_mut().zip(&mut self.got) {
            n.handle_timeout(now);
            got.extend(std::iter::from_fn(|| n.poll_event()));
        }
    }

    /// Turns the loop until `done` holds or `limit` passes; says whether it held.
    fn until(&mut self, limit: Duration, mut done: impl FnMut(&Nodes) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if done(self) {
                return true;
            }
            self.turn(Duration::from_millis(50));
        }
        done(self)
    }

    fn publish(&mut self, node: usize, room: &str, text: &str) -> bool {
        self.nodes[node].publish(room, MessageKind::Text, text.as_bytes(), Instant::now())
    }

    fn messages(&self, node: usize) -> Vec<String> {
        self.got[node]
            .iter()
            .filter_map(|e| match e {
                Event::Message { payload, .. } => Some(String::from_utf8_lossy(payload).into()),
                _ => None,
            })
            .collect()
    }

    fn count(&self, node: usize, f: impl Fn(&Event) -> bool) -> usize {
        self.got[node].iter().filter(|e| f(e)).count()
    }

    fn ups(&self, node: usize) -> usize {
        self.count(node, |e| matches!(e, Event::Up))
    }

    fn downs(&self, node: usize) -> usize {
        self.count(node, |e| matches!(e, Event::Down { .. }))
    }
}

#[test]
fn a_message_reaches_the_other_node_once_and_not_its_sender() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start(free_port());
    let mut n = Nodes::new(redis.port, &["news"]);
    assert!(n.until(Duration::from_secs(5), |n| n.ups(A) == 1 && n.ups(B) == 1));
    assert!(n.nodes[A].stats().connected);
    // Up means subscribed (the handshake's PING follows the SUBSCRIBEs), so nothing is lost.
    for i in 0..100 {
        assert!(n.publish(A, "news", &format!("m{i}")));
    }
    assert!(n.publish(A, "news", "end"));
    assert!(n.until(Duration::from_secs(5), |n| {
        n.messages(B).last().map(String::as_str) == Some("end") && n.nodes[A].stats().own == 101
    }));
    let want: Vec<String> = (0..100)
        .map(|i| format!("m{i}"))
        .chain(["end".into()])
        .collect();
    assert_eq!(n.messages(B), want, "each once, in order");
    assert_eq!(n.messages(A), Vec::<String>::new(), "A drops its own");
    // A hears B (so its silence above is its own rule, not a deaf subscriber).
    assert!(n.publish(B, "news", "from b"));
    assert!(n.until(Duration::from_secs(5), |n| n.messages(A) == ["from b"]));
    // A room B is not in never reaches B's node: one SUBSCRIBE per room with members.
    n.nodes[A].join("sport", Instant::now());
    assert!(n.publish(B, "news", "sync"));
    assert!(n.until(Duration::from_secs(5), |n| n.messages(A).len() == 2));
    assert!(n.publish(A, "sport", "only A's room"));
    assert!(n.publish(A, "news", "after"));
    // Redis answers each PUBLISH (counted in `published`) on A's own connection, so B may
    // hear the last message before A has read the answers: wait for both.
    assert!(
        n.until(Duration::from_secs(5), |n| n.messages(B).len() == 102
            && n.nodes[A].stats().published == 103)
    );
    assert_eq!(n.messages(B).last().map(String::as_str), Some("after"));
    let (a, b) = (n.nodes[A].stats(), n.nodes[B].stats());
    assert_eq!(
        (a.published, a.dropped, a.missed, a.invalid),
        (103, 0, 0, 0)
    );
    assert_eq!((b.received, b.missed, b.invalid, b.own), (102, 0, 0, 2));
}

#[test]
fn redis_restarted_on_the_same_port_both_nodes_resubscribe() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start(free_port());
    let port = redis.port;
    let mut n = Nodes::new(port, &["news"]);
    assert!(n.until(Duration::from_secs(5), |n| n.ups(A) == 1 && n.ups(B) == 1));
    assert!(n.publish(A, "news", "before"));
    assert!(n.until(Duration::from_secs(5), |n| n.messages(B) == ["before"]));

    redis.kill();
    assert!(n.until(Duration::from_secs(5), |n| n.downs(A) >= 1
        && n.downs(B) >= 1));
    assert!(!n.nodes[A].stats().connected);
    // Down: publishes are dropped and counted, not queued.
    assert!(!n.publish(A, "news", "lost"));
    assert_eq!(n.nodes[A].stats().dropped, 1);

    let back = Instant::now();
    let redis = Redis::start(port);
    // Publish (every 20 ms, once A is up again) until B has one: delivery must resume
    // within 3 s of Redis being back.
    let (mut i, mut last) = (0, back);
    while n.messages(B).len() < 2 && back.elapsed() < Duration::from_secs(3) {
        if n.nodes[A].stats().connected && last.elapsed() >= Duration::from_millis(20) {
            n.publish(A, "news", &format!("after {i}"));
            (i, last) = (i + 1, Instant::now());
        }
        n.turn(Duration::from_millis(20));
    }
    assert!(
        n.messages(B).len() >= 2,
        "nothing delivered within 3 s of Redis being back: {:?}",
        n.got
    );
    eprintln!(
        "delivery resumed {:?} after Redis was started again",
        back.elapsed()
    );
    assert!(n.nodes[A].stats().reconnects >= 1 && n.nodes[B].stats().reconnects >= 1);
    assert!(n.messages(B)[1].starts_with("after "));
    drop(redis);
}

#[test]
fn redis_absent_at_start_the_bridge_retries_with_backoff_then_connects() {
    if !have_redis() {
        return;
    }
    let port = free_port();
    let mut n = Nodes::new(port, &["news"]);
    // Refused, again and again, each retry later than the one before (100 ms doubling).
    assert!(n.until(Duration::from_secs(5), |n| n.downs(A) >= 4));
    let delays: Vec<Duration> = n.got[A]
        .iter()
        .filter_map(|e| match e {
            Event::Down { retry_in, .. } => Some(*retry_in),
            _ => None,
        })
        .collect();
    for (i, d) in delays.iter().take(4).enumerate() {
        let full = Duration::from_millis(100 << i);
        assert!(
            *d >= full / 2 && *d <= full,
            "retry {i}: {d:?} in {delays:?}"
        );
    }
    assert_eq!(n.ups(A), 0);
    assert!(!n.publish(A, "news", "nobody"));

    let redis = Redis::start(port);
    // The longest wait is the 2 s cap plus the connect.
    assert!(n.until(Duration::from_secs(5), |n| n.ups(A) == 1 && n.ups(B) == 1));
    assert!(n.publish(A, "news", "hello"));
    assert!(n.until(Duration::from_secs(5), |n| n.messages(B) == ["hello"]));
    assert_eq!(
        n.nodes[A].stats().reconnects,
        0,
        "a first connection is not a reconnect"
    );
    drop(redis);
}
