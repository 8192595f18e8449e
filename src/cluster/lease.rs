//! Which node runs a room's program (`--room-exec` with `--redis`), sans-I/O: a lease per room
//! in Redis, taken with `SET PREFIX:exec:NAME NODE NX PX TTL`, renewed before it runs out only
//! while still ours (compare-and-`PEXPIRE`), released when the program ends (compare-and-`DEL`).
//!
//! Why two nodes never both run it: a node runs the program only while its lease is valid *by
//! its own clock*, counted from the moment it **sent** the command that Redis confirmed. Redis
//! starts its own count when it **receives** that command, later, so the key outlives our
//! validity; another node's `SET NX` succeeds only after the key is gone (expired or deleted),
//! by which time we have stopped (at `until`, the program is killed at once, no grace). This
//! holds while Redis's clock and ours run at about the same rate over one TTL: Redis keeps
//! expiry by its own clock, so a jump of the Redis host's clock can end a lease early; the TTL
//! is seconds and renewals come every third of it to leave room for ordinary drift.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// The three lease commands; each is answered yes (ours) or no.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseOp {
    /// `SET key node NX PX ttl`: `+OK` yes, a null bulk no.
    Acquire,
    /// Compare-and-`PEXPIRE`: 1 yes (still ours, extended), 0 no.
    Renew,
    /// Compare-and-`DEL`: 1 deleted, 0 it was not ours (any more).
    Release,
}

/// What the server must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseEvent {
    /// The lease is ours: start the room's program here.
    Acquired(String),
    /// The lease is no longer ours (Redis said so, or it ran out by our clock before a renewal
    /// was confirmed): stop the program at once; another node may start it.
    Lost(String),
}

/// Timing: how long a lease lasts and how often a node without it asks again.
#[derive(Clone, Copy, Debug)]
pub struct LeaseSettings {
    /// The lease's time to live (`--room-exec-lease`); renewed every third of it.
    pub ttl: Duration,
    /// A node with members but not the lease asks again this often (`--room-exec-lease-retry`).
    pub retry: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lease {
    /// Wanted, not ours: ask at `at`.
    Waiting { at: Instant },
    /// `SET NX` sent at `sent`, not answered yet.
    Asking { sent: Instant },
    /// Ours until `until` by our clock; a renewal is due at `renew_at`, or is out since
    /// `renewing`.
    Held {
        until: Instant,
        renew_at: Instant,
        renewing: Option<Instant>,
    },
}

/// Every room this node wants to run the program of, and where its lease stands.
#[derive(Debug)]
pub struct Leases {
    settings: LeaseSettings,
    rooms: BTreeMap<String, Lease>,
    commands: VecDeque<(LeaseOp, String)>,
    events: VecDeque<LeaseEvent>,
}

impl LeaseSettings {
    pub fn from_config(config: &crate::Config) -> LeaseSettings {
        LeaseSettings {
            ttl: config.room_exec_lease,
            retry: config.room_exec_lease_retry,
        }
    }
}

impl Leases {
    pub fn new(settings: LeaseSettings) -> Leases {
        Leases {
            settings,
            rooms: BTreeMap::new(),
            commands: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The room has members here and a program configured: try to take its lease now.
    pub fn want(&mut self, room: &str, now: Instant) {
        if self.rooms.contains_key(room) {
            return;
        }
        self.rooms
            .insert(room.to_string(), Lease::Asking { sent: now });
        self.commands
            .push_back((LeaseOp::Acquire, room.to_string()));
    }

    /// The program is not wanted here any more (its grace period ended): a held lease is
    /// released so that another node can take it without waiting for it to run out.
    pub fn unwant(&mut self, room: &str) {
        if let Some(Lease::Held { .. }) = self.rooms.remove(room) {
            self.commands
                .push_back((LeaseOp::Release, room.to_string()));
        }
    }

    /// True while the lease is ours by our clock.
    pub fn holds(&self, room: &str, now: Instant) -> bool {
        matches!(self.rooms.get(room), Some(Lease::Held { until, .. }) if now < *until)
    }

    /// The next command to put on the wire (`RedisLink::lease`); call until `None`.
    pub fn poll_command(&mut self) -> Option<(LeaseOp, String)> {
        self.commands.pop_front()
    }

    /// The next thing the server must do; call until `None`.
    pub fn poll_event(&mut self) -> Option<LeaseEvent> {
        self.events.pop_front()
    }

    /// Redis answered `op` for `room`: `granted` is yes (see [`LeaseOp`]).
    pub fn on_reply(&mut self, op: LeaseOp, room: &str, granted: bool, now: Instant) {
        let ttl = self.settings.ttl;
        let retry = self.settings.retry;
        let Some(lease) = self.rooms.get_mut(room) else {
            if op == LeaseOp::Acquire && granted {
                // Asked for, then no longer wanted: give it back at once.
                self.commands
                    .push_back((LeaseOp::Release, room.to_string()));
            }
            return;
        };
        match (op, *lease) {
            (LeaseOp::Acquire, Lease::Asking { sent }) => {
                if granted && now < sent + ttl {
                    *lease = Lease::Held {
                        until: sent + ttl,
                        renew_at: sent + ttl / 3,
                        renewing: None,
                    };
                    self.events
                        .push_back(LeaseEvent::Acquired(room.to_string()));
                } else {
                    *lease = Lease::Waiting { at: now + retry };
                    if granted {
                        // Confirmed too late to use: ours in Redis, but not safely ours here.
                        self.commands
                            .push_back((LeaseOp::Release, room.to_string()));
                    }
                }
            }
            (
                LeaseOp::Renew,
                Lease::Held {
                    until,
                    renewing: Some(sent),
                    ..
                },
            ) => {
                if granted {
                    *lease = Lease::Held {
                        until: until.max(sent + ttl),
                        renew_at: sent + ttl / 3,
                        renewing: None,
                    };
                } else {
                    *lease = Lease::Waiting { at: now + retry };
                    self.events.push_back(LeaseEvent::Lost(room.to_string()));
                }
            }
            // A late answer to a command from before the link was lost (its state was reset).
            _ => {}
        }
    }

    /// The command could not be sent (the link is down): try again after `retry`; a held
    /// lease stays ours until it runs out by our clock.
    pub fn unsent(&mut self, op: LeaseOp, room: &str, now: Instant) {
        let retry = self.settings.retry;
        match (op, self.rooms.get_mut(room)) {
            (LeaseOp::Acquire, Some(lease @ Lease::Asking { .. })) => {
                *lease = Lease::Waiting { at: now + retry }
            }
            (
                LeaseOp::Renew,
                Some(Lease::Held {
                    renew_at, renewing, ..
                }),
            ) => {
                *renewing = None;
                *renew_at = now + retry;
            }
            _ => {}
        }
    }

    /// The link was lost: answers to what was in flight will never come.
    pub fn link_down(&mut self, now: Instant) {
        let retry = self.settings.retry;
        for lease in self.rooms.values_mut() {
            match lease {
                Lease::Asking { .. } => *lease = Lease::Waiting { at: now + retry },
                Lease::Held {
                    renew_at, renewing, ..
                } if renewing.is_some() => {
                    *renewing = None;
                    *renew_at = now + retry;
                }
                _ => {}
            }
        }
    }

    /// When [`Self::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.rooms
            .values()
            .filter_map(|l| match *l {
                Lease::Waiting { at } => Some(at),
                Lease::Asking { .. } => None,
                Lease::Held {
                    until,
                    renew_at,
                    renewing,
                } => Some(if renewing.is_some() {
                    until
                } else {
                    until.min(renew_at)
                }),
            })
            .min()
    }

    /// Asks again where it is time, renews what is due, and gives up what ran out.
    pub fn handle_timeout(&mut self, now: Instant) {
        let retry = self.settings.retry;
        for (room, lease) in self.rooms.iter_mut() {
            match lease {
                Lease::Waiting { at } if now >= *at => {
                    *lease = Lease::Asking { sent: now };
                    self.commands.push_back((LeaseOp::Acquire, room.clone()));
                }
                Lease::Held { until, .. } if now >= *until => {
                    *lease = Lease::Waiting { at: now + retry };
                    self.events.push_back(LeaseEvent::Lost(room.clone()));
                }
                Lease::Held {
                    renew_at,
                    renewing: renewing @ None,
                    ..
                } if now >= *renew_at => {
                    *renewing = Some(now);
                    self.commands.push_back((LeaseOp::Renew, room.clone()));
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(9);
    const RETRY: Duration = Duration::from_secs(1);

    fn leases() -> Leases {
        Leases::new(LeaseSettings {
            ttl: TTL,
            retry: RETRY,
        })
    }

    fn commands(l: &mut Leases) -> Vec<(LeaseOp, String)> {
        std::iter::from_fn(|| l.poll_command()).collect()
    }

    fn events(l: &mut Leases) -> Vec<LeaseEvent> {
        std::iter::from_fn(|| l.poll_event()).collect()
    }

    fn cmd(op: LeaseOp) -> Vec<(LeaseOp, String)> {
        vec![(op, "chat".to_string())]
    }

    #[test]
    fn taken_renewed_every_third_and_released() {
        let t0 = Instant::now();
        let mut l = leases();
        l.want("chat", t0);
        l.want("chat", t0);
        assert_eq!(commands(&mut l), cmd(LeaseOp::Acquire));
        let t1 = t0 + Duration::from_millis(5);
        l.on_reply(LeaseOp::Acquire, "chat", true, t1);
        assert_eq!(events(&mut l), [LeaseEvent::Acquired("chat".into())]);
        assert!(l.holds("chat", t1));
        // Counted from when the SET was sent, not answered.
        assert_eq!(l.poll_timeout(), Some(t0 + TTL / 3));
        l.handle_timeout(t0 + TTL / 3 - Duration::from_millis(1));
        assert!(commands(&mut l).is_empty());
        let t2 = t0 + TTL / 3;
        l.handle_timeout(t2);
        assert_eq!(commands(&mut l), cmd(LeaseOp::Renew));
        // No second renewal while one is out.
        l.handle_timeout(t2 + Duration::from_millis(1));
        assert!(commands(&mut l).is_empty());
        l.on_reply(LeaseOp::Renew, "chat", true, t2 + Duration::from_millis(3));
        assert!(l.holds("chat", t0 + TTL + Duration::from_secs(1)));
        assert_eq!(l.poll_timeout(), Some(t2 + TTL / 3));
        l.unwant("chat");
        assert_eq!(commands(&mut l), cmd(LeaseOp::Release));
        assert!(!l.holds("chat", t2));
        assert_eq!(l.poll_timeout(), None);
        assert!(events(&mut l).is_empty());
    }

    #[test]
    fn a_node_without_the_lease_asks_again_each_retry() {
        let t0 = Instant::now();
        let mut l = leases();
        l.want("chat", t0);
        commands(&mut l);
        l.on_reply(LeaseOp::Acquire, "chat", false, t0);
        assert!(events(&mut l).is_empty());
        assert!(!l.holds("chat", t0));
        assert_eq!(l.poll_timeout(), Some(t0 + RETRY));
        l.handle_timeout(t0 + RETRY);
        assert_eq!(commands(&mut l), cmd(LeaseOp::Acquire));
        l.on_reply(LeaseOp::Acquire, "chat", true, t0 + RETRY);
        assert_eq!(events(&mut l), [LeaseEvent::Acquired("chat".into())]);
        // Not wanted any more: nothing to release if it was never ours.
        let mut other = leases();
        other.want("chat", t0);
        commands(&mut other);
        other.unwant("chat");
        assert!(commands(&mut other).is_empty());
        // ... but a grant arriving after that is given back at once.
        other.on_reply(LeaseOp::Acquire, "chat", true, t0);
        assert_eq!(commands(&mut other), cmd(LeaseOp::Release));
        assert!(events(&mut other).is_empty());
    }

    #[test]
    fn a_renewal_refused_loses_the_lease_at_once() {
        let t0 = Instant::now();
        let mut l = leases();
        l.want("chat", t0);
        commands(&mut l);
        l.on_reply(LeaseOp::Acquire, "chat", true, t0);
        events(&mut l);
        l.handle_timeout(t0 + TTL / 3);
        commands(&mut l);
        l.on_reply(LeaseOp::Renew, "chat", false, t0 + TTL / 3);
        assert_eq!(events(&mut l), [LeaseEvent::Lost("chat".into())]);
        assert!(!l.holds("chat", t0 + TTL / 3));
        // Still wanted: asked for again later.
        l.handle_timeout(t0 + TTL / 3 + RETRY);
        assert_eq!(commands(&mut l), cmd(LeaseOp::Acquire));
    }

    #[test]
    fn without_redis_a_held_lease_runs_out_by_our_clock() {
        let t0 = Instant::now();
        let mut l = leases();
        l.want("chat", t0);
        commands(&mut l);
        l.on_reply(LeaseOp::Acquire, "chat", true, t0);
        events(&mut l);
        l.handle_timeout(t0 + TTL / 3);
        assert_eq!(commands(&mut l), cmd(LeaseOp::Renew));
        // The link goes down with the renewal in flight; renewals cannot be sent either.
        l.link_down(t0 + TTL / 3);
        let mut t = t0 + TTL / 3;
        while t < t0 + TTL {
            t = l.poll_timeout().unwrap();
            l.handle_timeout(t);
            for (op, room) in commands(&mut l) {
                assert_eq!(op, LeaseOp::Renew);
                l.unsent(op, &room, t);
            }
            if t < t0 + TTL {
                assert!(events(&mut l).is_empty(), "lost early at {:?}", t - t0);
                assert!(l.holds("chat", t));
            }
        }
        assert_eq!(t, t0 + TTL);
        assert_eq!(events(&mut l), [LeaseEvent::Lost("chat".into())]);
        assert!(!l.holds("chat", t));
    }

    #[test]
    fn a_grant_that_arrives_after_the_ttl_is_not_used() {
        let t0 = Instant::now();
        let mut l = leases();
        l.want("chat", t0);
        commands(&mut l);
        l.on_reply(LeaseOp::Acquire, "chat", true, t0 + TTL);
        assert!(events(&mut l).is_empty());
        assert_eq!(commands(&mut l), cmd(LeaseOp::Release));
        // A late answer from before a lost link changes nothing.
        l.on_reply(LeaseOp::Renew, "chat", false, t0 + TTL);
        assert!(events(&mut l).is_empty());
    }
}
