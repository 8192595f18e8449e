//! The room-program lease and input channel against a real `redis-server`: two nodes, each a
//! sans-I/O `RedisLink` and `Leases` driven over plain sockets, compete for one room.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use wsloop::cluster::redis::{Action, Event, Settings, Side};
use wsloop::cluster::{LeaseEvent, LeaseSettings, Leases, RedisLink};
use wsloop::connection::MessageKind;

use common::redis::{free_port, have_redis, Redis};

/// Where the test's Redis listens.
fn addr(redis: &Redis) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], redis.port))
}

/// One node: the link, its leases, and the two sockets (blocking reads with a short timeout).
struct Node {
    link: RedisLink,
    leases: Leases,
    sockets: Option<[TcpStream; 2]>,
    addr: SocketAddr,
    lease_events: Vec<(Instant, LeaseEvent)>,
    inputs: Vec<String>,
}

const TTL: Duration = Duration::from_millis(600);
const RETRY: Duration = Duration::from_millis(50);

impl Node {
    fn new(redis: &Redis, id: u64, prefix: &str) -> Node {
        let settings = Settings {
            prefix: prefix.into(),
            user: None,
            password: None,
            buffer: 1 << 20,
            ping_interval: Duration::from_secs(5),
            max_reply: 1 << 20,
        };
        Node {
            link: RedisLink::new(settings, id, id, Instant::now()),
            leases: Leases::new(LeaseSettings {
                ttl: TTL,
                retry: RETRY,
            }),
            sockets: None,
            addr: addr(redis),
            lease_events: Vec::new(),
            inputs: Vec::new(),
        }
    }

    /// One round: timers, commands, bytes out, bytes in, events.
    fn pump(&mut self) {
        let now = Instant::now();
        self.link.handle_timeout(now);
        self.leases.handle_timeout(now);
        while let Some((op, room)) = self.leases.poll_command() {
            if !self.link.lease(op, &room, TTL) {
                self.leases.unsent(op, &room, now);
            }
        }
        while let Some(action) = self.link.poll_action() {
            self.sockets = match action {
                Action::Connect => Some([0, 1].map(|_| {
                    let s = TcpStream::connect(self.addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
                    s
                })),
                Action::Close => None,
            };
        }
        let Some(sockets) = self.sockets.as_mut() else {
            return;
        };
        let mut buf = [0u8; 4096];
        for (i, side) in [Side::Publisher, Side::Subscriber].into_iter().enumerate() {
            let out = self.link.output(side).to_vec();
            if !out.is_empty() {
                sockets[i].write_all(&out).unwrap();
                self.link.written(side, out.len());
            }
            if let Ok(n) = sockets[i].read(&mut buf) {
                self.link.receive(side, &buf[..n], Instant::now());
            }
        }
        let now = Instant::now();
        while let Some(e) = self.link.poll_event() {
            match e {
                Event::Lease { op, room, granted } => self.leases.on_reply(op, &room, granted, now),
                Event::Down { .. } => self.leases.link_down(now),
                Event::Input { payload, .. } => {
                    self.inputs.push(String::from_utf8(payload).unwrap())
                }
                _ => {}
            }
        }
        while let Some(e) = self.leases.poll_event() {
            if let LeaseEvent::Acquired(room) = &e {
                self.link.subscribe_input(room);
            }
            self.lease_events.push((now, e));
        }
    }

    fn acquired(&self) -> Option<Instant> {
        self.lease_events
            .iter()
            .find(|(_, e)| matches!(e, LeaseEvent::Acquired(_)))
            .map(|(t, _)| *t)
    }
}

/// Pumps both nodes until `done` or `limit`.
fn until(
    nodes: &mut [&mut Node],
    limit: Duration,
    mut done: impl FnMut(&[&mut Node]) -> bool,
) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if done(nodes) {
            return true;
        }
        for n in nodes.iter_mut() {
            n.pump();
        }
    }
    done(nodes)
}

#[test]
fn one_node_holds_a_rooms_lease_the_other_takes_it_on_release_and_input_crosses() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start(free_port());
    let prefix = format!("wsloop-lease-{}", std::process::id());
    let mut a = Node::new(&redis, 1, &prefix);
    let mut b = Node::new(&redis, 2, &prefix);
    assert!(until(&mut [&mut a, &mut b], Duration::from_secs(5), |n| n
        .iter()
        .all(|n| n.link.is_up())));
    a.leases.want("chat", Instant::now());
    assert!(until(&mut [&mut a, &mut b], Duration::from_secs(5), |n| n
        [0]
    .acquired()
    .is_some()));
    b.leases.want("chat", Instant::now());
    // B keeps asking (every RETRY) and keeps being refused while A renews, for 3 TTLs.
    let watch = Instant::now() + TTL * 3;
    until(
        &mut [&mut a, &mut b],
        TTL * 3 + Duration::from_secs(1),
        |_| Instant::now() >= watch,
    );
    let now = Instant::now();
    assert!(a.leases.holds("chat", now), "A renewed its lease");
    assert!(!b.leases.holds("chat", now));
    assert!(b.lease_events.is_empty(), "{:?}", b.lease_events);
    assert_eq!(a.lease_events.len(), 1, "{:?}", a.lease_events);
    // B's members speak: their messages reach A, which runs the program.
    b.link
        .publish_input("chat", MessageKind::Text, b"from a member on B");
    assert!(until(&mut [&mut a, &mut b], Duration::from_secs(5), |n| !n
        [0]
    .inputs
    .is_empty()));
    assert_eq!(a.inputs, ["from a member on B"]);
    // A's program ends: it releases, and B takes over within a retry or two.
    a.leases.unwant("chat");
    a.link.unsubscribe_input("chat");
    let released = Instant::now();
    assert!(until(&mut [&mut a, &mut b], Duration::from_secs(5), |n| n
        [1]
    .acquired()
    .is_some()));
    assert!(
        b.acquired().unwrap() - released < TTL,
        "taken after the release, not after the TTL"
    );
}

#[test]
fn a_node_that_stops_renewing_loses_its_lease_before_the_other_can_take_it() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start(free_port());
    let prefix = format!("wsloop-lease2-{}", std::process::id());
    let mut a = Node::new(&redis, 1, &prefix);
    let mut b = Node::new(&redis, 2, &prefix);
    assert!(until(&mut [&mut a, &mut b], Duration::from_secs(5), |n| n
        .iter()
        .all(|n| n.link.is_up())));
    a.leases.want("chat", Instant::now());
    assert!(until(&mut [&mut a, &mut b], Duration::from_secs(5), |n| n
        [0]
    .acquired()
    .is_some()));
    b.leases.want("chat", Instant::now());
    // A is cut off from Redis (a partition): its link is never pumped again; only its clock
    // runs, and by it the lease runs out.
    a.sockets = None;
    a.link
        .lost(Instant::now(), wsloop::cluster::redis::LinkError::Closed);
    a.leases.link_down(Instant::now());
    let mut lost_at = None;
    let ok = until(&mut [&mut b], Duration::from_secs(5), |n| {
        let now = Instant::now();
        a.leases.handle_timeout(now);
        while let Some((op, room)) = a.leases.poll_command() {
            a.leases.unsent(op, &room, now);
        }
        if let Some(LeaseEvent::Lost(_)) = a.leases.poll_event() {
            lost_at.get_or_insert(now);
        }
        n[0].acquired().is_some()
    });
    assert!(ok, "B never took the lease");
    let lost_at = lost_at.expect("A noticed the loss by its own clock");
    assert!(!a.leases.holds("chat", b.acquired().unwrap()));
    let taken_at = b.acquired().unwrap();
    assert!(
        lost_at <= taken_at,
        "A stopped {:?} after B started",
        lost_at - taken_at
    );
}
