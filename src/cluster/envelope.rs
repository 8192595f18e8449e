//! The message that crosses nodes: one room message, framed so that a receiver knows who sent
//! it and in which order, and can drop its own messages when Redis hands them back.
//!
//! Layout (all integers big-endian), 19 bytes plus the room name plus the payload:
//!
//! ```text
//! version u8 (1) | kind u8 (RFC 6455 opcode: 1 text, 2 binary) | node u64 | seq u64
//! | room length u8 (1..=64) | room name | payload (the rest)
//! ```
//!
//! The payload's length is the rest of the envelope: the transport (a Redis bulk string)
//! already delimits it. Sequence numbers count per (node, room), from 1, so that a receiver in
//! only some of a node's rooms can still tell a gap from traffic it never subscribed to.

use std::collections::HashMap;
use std::fmt;

use crate::connection::MessageKind;

/// The only version this build reads and writes.
pub const VERSION: u8 = 1;

/// Bytes before the room name (the room's length byte included).
const FIXED: usize = 19;

/// One room message as it crosses nodes; borrows the bytes it was decoded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The sending node's random id (fresh each process start).
    pub node: u64,
    /// The sender's sequence number for this room, from 1.
    pub seq: u64,
    pub kind: MessageKind,
    pub room: &'a str,
    pub payload: &'a [u8],
}

/// Why bytes are not an envelope; each names the rule broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Shorter than the fixed header, or than the room name it announces.
    Truncated,
    /// A version this build does not speak (a newer or older node).
    UnknownVersion(u8),
    /// The kind is not a data opcode (RFC 6455 §5.2: 0x1 text, 0x2 binary).
    UnknownKind(u8),
    /// Sequence numbers start at 1 (0 would read as "nothing heard yet" to a receiver).
    ZeroSequence,
    /// The room name is empty, over 64 bytes, or has a byte outside `A-Za-z0-9._-`.
    BadRoom,
    /// RFC 6455 §8.1: a text message must be UTF-8, or clients would fail the connection.
    InvalidUtf8,
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvelopeError::Truncated => f.write_str("envelope truncated"),
            EnvelopeError::UnknownVersion(v) => write!(f, "envelope version {v} (this node: 1)"),
            EnvelopeError::UnknownKind(k) => write!(f, "envelope kind {k} is not text or binary"),
            EnvelopeError::ZeroSequence => f.write_str("envelope sequence number 0"),
            EnvelopeError::BadRoom => f.write_str("envelope room is not a room name"),
            EnvelopeError::InvalidUtf8 => f.write_str("text envelope is not UTF-8"),
        }
    }
}

impl std::error::Error for EnvelopeError {}

impl<'a> Envelope<'a> {
    /// The encoded size.
    pub fn encoded_len(&self) -> usize {
        FIXED + self.room.len() + self.payload.len()
    }

    /// Appends the encoding to `out`. The room must be a valid name (the server only has
    /// those); a longer one is cut at 255 bytes and then refused by every receiver.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let room = &self.room.as_bytes()[..self.room.len().min(255)];
        out.reserve(FIXED + room.len() + self.payload.len());
        out.push(VERSION);
        out.push(self.kind.opcode().bits());
        out.extend_from_slice(&self.node.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.push(room.len() as u8);
        out.extend_from_slice(room);
        out.extend_from_slice(self.payload);
    }

    /// Reads an envelope, checking everything a receiver relies on: version, kind, room name,
    /// and UTF-8 for text.
    pub fn decode(bytes: &'a [u8]) -> Result<Envelope<'a>, EnvelopeError> {
        let Some(&version) = bytes.first() else {
            return Err(EnvelopeError::Truncated);
        };
        if version != VERSION {
            return Err(EnvelopeError::UnknownVersion(version));
        }
        if bytes.len() < FIXED {
            return Err(EnvelopeError::Truncated);
        }
        let kind = match bytes[1] {
            1 => MessageKind::Text,
            2 => MessageKind::Binary,
            k => return Err(EnvelopeError::UnknownKind(k)),
        };
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let node = u64_at(2);
        let seq = u64_at(10);
        if seq == 0 {
            return Err(EnvelopeError::ZeroSequence);
        }
        let room_len = usize::from(bytes[18]);
        let rest = &bytes[FIXED..];
        if rest.len() < room_len {
            return Err(EnvelopeError::Truncated);
        }
        let (room, payload) = rest.split_at(room_len);
        let room = std::str::from_utf8(room)
            .ok()
            .filter(|r| crate::room::valid_name(r))
            .ok_or(EnvelopeError::BadRoom)?;
        if kind == MessageKind::Text && std::str::from_utf8(payload).is_err() {
            return Err(EnvelopeError::InvalidUtf8);
        }
        Ok(Envelope {
            node,
            seq,
            kind,
            room,
            payload,
        })
    }
}

/// A node's id: 64 random bits from the kernel, so two processes (or one restarted) never
/// share one and a node can recognise its own messages.
pub fn random_node_id() -> u64 {
    let a = crate::frame::random_mask();
    let b = crate::frame::random_mask();
    let id = u64::from(u32::from_ne_bytes(a)) << 32 | u64::from(u32::from_ne_bytes(b));
    id.max(1)
}

/// What a receiver does with one sequence number from one sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// New: deliver it. `missed` numbers were skipped just before it (0 when in order).
    Deliver { missed: u64 },
    /// A number seen before (or so old it can no longer be told apart): drop it.
    Duplicate,
}

/// Counts the sequence numbers one sender skipped, without trusting that Redis never reorders
/// or repeats: a window of the last 64 numbers tells a late arrival (delivered, and no longer
/// counted as missing) from a duplicate (dropped).
#[derive(Clone, Debug, Default)]
pub struct GapCounter {
    /// The highest number seen; 0 before the first.
    highest: u64,
    /// Bit i set: `highest - i` was seen.
    seen: u64,
    /// Numbers skipped and not (yet) arrived late.
    missed: u64,
}

impl GapCounter {
    /// Records `seq`. The first number heard from a sender is never a gap (we may have joined
    /// late), nor is a restart at 1 (the sender forgot a quiet room's counter).
    pub fn observe(&mut self, seq: u64) -> Verdict {
        if self.highest == 0 || seq == 1 && self.highest > 64 {
            // Everything before the first number counts as seen: it was never a gap.
            self.highest = seq;
            self.seen = u64::MAX;
            return Verdict::Deliver { missed: 0 };
        }
        if seq > self.highest {
            let skipped = seq - self.highest - 1;
            let shift = seq - self.highest;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift } | 1;
            self.highest = seq;
            // A hostile sender can jump by nearly 2^64: the count saturates, never overflows.
            self.missed = self.missed.saturating_add(skipped);
            return Verdict::Deliver { missed: skipped };
        }
        let back = self.highest - seq;
        if back >= 64 || self.seen & (1 << back) != 0 {
            return Verdict::Duplicate;
        }
        // Late but new: it was counted as missed when a higher number came first.
        self.seen |= 1 << back;
        self.missed = self.missed.saturating_sub(1);
        Verdict::Deliver { missed: 0 }
    }

    /// Numbers skipped so far and never arrived.
    pub fn missed(&self) -> u64 {
        self.missed
    }
}

/// The receiving side's view of every (sender, room): drops our own messages, drops
/// duplicates, counts gaps. Bounded: past `MAX_SENDERS` entries it starts afresh (gap
/// counting loses one number per sender, memory never grows).
#[derive(Debug)]
pub struct Receiver {
    node: u64,
    senders: HashMap<(u64, String), GapCounter>,
    /// Numbers missed over every sender, including forgotten ones.
    missed: u64,
}

const MAX_SENDERS: usize = 65_536;

/// What to do with a decoded envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accept {
    Deliver,
    /// Our own message, back from Redis: local members had it already.
    Own,
    Duplicate,
}

impl Receiver {
    pub fn new(node: u64) -> Self {
        Receiver {
            node,
            senders: HashMap::new(),
            missed: 0,
        }
    }

    pub fn accept(&mut self, env: &Envelope<'_>) -> Accept {
        if env.node == self.node {
            return Accept::Own;
        }
        if self.senders.len() >= MAX_SENDERS && !self.senders.contains_key(&key(env)) {
            self.senders.clear();
        }
        let counter = self.senders.entry(key(env)).or_default();
        let before = counter.missed();
        let verdict = counter.observe(env.seq);
        let after = counter.missed();
        // The counter's change may be either way (a late arrival is forgiven); saturate both.
        self.missed = if after >= before {
            self.missed.saturating_add(after - before)
        } else {
            self.missed.saturating_sub(before - after)
        };
        match verdict {
            Verdict::Deliver { .. } => Accept::Deliver,
            Verdict::Duplicate => Accept::Duplicate,
        }
    }

    /// Forgets the senders of a room we left (their numbers would look like gaps on return).
    pub fn forget_room(&mut self, room: &str) {
        self.senders.retain(|(_, r), _| r != room);
    }

    /// Forgets every sender: after a reconnect, what was missed while down is not a gap of
    /// the link we watch, it was counted as dropped.
    pub fn forget_all(&mut self) {
        self.senders.clear();
    }

    /// Sequence numbers missed (skipped by a sender and never arrived).
    pub fn missed(&self) -> u64 {
        self.missed
    }
}

fn key(env: &Envelope<'_>) -> (u64, String) {
    (env.node, env.room.to_string())
}

/// The sending side: numbers each room's messages from 1. Bounded: past `MAX_SENDERS`
/// rooms, the counters start again at 1 (which receivers take as a restart, not a gap).
#[derive(Debug)]
pub struct Sequencer {
    node: u64,
    next: HashMap<String, u64>,
}

impl Sequencer {
    pub fn new(node: u64) -> Self {
        Sequencer {
            node,
            next: HashMap::new(),
        }
    }

    pub fn node(&self) -> u64 {
        self.node
    }

    /// The envelope for the next message to `room`.
    pub fn next<'a>(
        &mut self,
        room: &'a str,
        kind: MessageKind,
        payload: &'a [u8],
    ) -> Envelope<'a> {
        if self.next.len() >= MAX_SENDERS && !self.next.contains_key(room) {
            self.next.clear();
        }
        // A room already numbered costs no allocation (`entry` would take an owned key).
        let seq = match self.next.get_mut(room) {
            Some(seq) => seq,
            None => self.next.entry(room.to_string()).or_insert(1),
        };
        let env = Envelope {
            node: self.node,
            seq: *seq,
            kind,
            room,
            payload,
        };
        *seq += 1;
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(node: u64, seq: u64, payload: &[u8]) -> Envelope<'_> {
        Envelope {
            node,
            seq,
            kind: MessageKind::Text,
            room: "news",
            payload,
        }
    }

    #[test]
    fn round_trip_is_compact() {
        let e = Envelope {
            node: 0x0102_0304_0506_0708,
            seq: 42,
            kind: MessageKind::Binary,
            room: "a.b-c_9",
            payload: &[0, 255, 1],
        };
        let mut out = Vec::new();
        e.encode(&mut out);
        assert_eq!(out.len(), e.encoded_len());
        assert_eq!(out.len(), 19 + 7 + 3);
        assert_eq!(&out[..2], &[1, 2]);
        assert_eq!(Envelope::decode(&out), Ok(e));
        let empty = env(1, 1, b"");
        let mut out = Vec::new();
        empty.encode(&mut out);
        assert_eq!(Envelope::decode(&out), Ok(empty));
    }

    #[test]
    fn bad_envelopes_are_named() {
        let mut good = Vec::new();
        env(7, 3, b"hi").encode(&mut good);
        let with = |i: usize, b: u8| {
            let mut v = good.clone();
            v[i] = b;
            v
        };
        let cases: &[(&str, Vec<u8>, EnvelopeError)] = &[
            ("empty", vec![], EnvelopeError::Truncated),
            ("version 2", with(0, 2), EnvelopeError::UnknownVersion(2)),
            ("version 0", with(0, 0), EnvelopeError::UnknownVersion(0)),
            ("header cut", good[..18].to_vec(), EnvelopeError::Truncated),
            ("kind ping", with(1, 9), EnvelopeError::UnknownKind(9)),
            (
                "kind continuation",
                with(1, 0),
                EnvelopeError::UnknownKind(0),
            ),
            ("room cut", good[..21].to_vec(), EnvelopeError::Truncated),
            ("sequence 0", with(17, 0), EnvelopeError::ZeroSequence),
            ("room length 0", with(18, 0), EnvelopeError::BadRoom),
            ("room byte", with(19, b'/'), EnvelopeError::BadRoom),
            (
                "text not UTF-8",
                with(good.len() - 1, 0xff),
                EnvelopeError::InvalidUtf8,
            ),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(Envelope::decode(bytes), Err(*want), "{name}");
        }
        let mut long = good.clone();
        long[18] = 65;
        long.extend_from_slice(&[b'a'; 70]);
        long[19..19 + 65].fill(b'a');
        assert_eq!(Envelope::decode(&long), Err(EnvelopeError::BadRoom));
        // Binary payloads need not be UTF-8.
        assert!(Envelope::decode(&with(1, 2)).is_ok());
        assert!(Envelope::decode(&{
            let mut v = with(1, 2);
            *v.last_mut().unwrap() = 0xff;
            v
        })
        .is_ok());
    }

    #[test]
    fn gaps_are_counted_and_late_arrivals_forgiven() {
        let mut g = GapCounter::default();
        // The first number heard is never a gap: we may have joined after it started.
        assert_eq!(g.observe(10), Verdict::Deliver { missed: 0 });
        assert_eq!(
            g.observe(9),
            Verdict::Duplicate,
            "before the first: not a gap, not new"
        );
        assert_eq!(g.observe(11), Verdict::Deliver { missed: 0 });
        assert_eq!(g.observe(14), Verdict::Deliver { missed: 2 });
        assert_eq!(g.missed(), 2);
        // 12 arrives late: delivered, no longer missing; again: a duplicate.
        assert_eq!(g.observe(12), Verdict::Deliver { missed: 0 });
        assert_eq!(g.missed(), 1);
        assert_eq!(g.observe(12), Verdict::Duplicate);
        assert_eq!(g.observe(14), Verdict::Duplicate);
        assert_eq!(g.observe(11), Verdict::Duplicate);
        assert_eq!(g.missed(), 1);
        // A jump past the window, then something from before it: too old to tell, dropped.
        assert_eq!(g.observe(200), Verdict::Deliver { missed: 185 });
        assert_eq!(g.observe(13), Verdict::Duplicate);
        assert_eq!(g.missed(), 186);
        // A sender that forgot a quiet room's counter starts again at 1: not a gap.
        assert_eq!(g.observe(1), Verdict::Deliver { missed: 0 });
        assert_eq!(g.observe(2), Verdict::Deliver { missed: 0 });
        assert_eq!(g.missed(), 186);
    }

    #[test]
    fn receiver_drops_own_and_counts_per_sender_and_room() {
        let mut r = Receiver::new(1);
        assert_eq!(r.accept(&env(1, 1, b"x")), Accept::Own);
        assert_eq!(r.accept(&env(2, 1, b"x")), Accept::Deliver);
        assert_eq!(r.accept(&env(3, 5, b"x")), Accept::Deliver);
        assert_eq!(r.accept(&env(2, 3, b"x")), Accept::Deliver);
        assert_eq!(r.missed(), 1);
        assert_eq!(r.accept(&env(2, 3, b"x")), Accept::Duplicate);
        // Another room of the same sender has its own numbers.
        let other = Envelope {
            room: "sport",
            ..env(2, 1, b"x")
        };
        assert_eq!(r.accept(&other), Accept::Deliver);
        assert_eq!(r.accept(&env(2, 2, b"x")), Accept::Deliver);
        assert_eq!(r.missed(), 0);
        r.forget_room("news");
        assert_eq!(r.accept(&env(2, 9, b"x")), Accept::Deliver);
        assert_eq!(r.missed(), 0);
    }

    #[test]
    fn sequencer_numbers_each_room_from_one() {
        let mut s = Sequencer::new(9);
        assert_eq!(s.next("a", MessageKind::Text, b"").seq, 1);
        assert_eq!(s.next("a", MessageKind::Text, b"").seq, 2);
        assert_eq!(s.next("b", MessageKind::Text, b"").seq, 1);
        assert_eq!(s.next("a", MessageKind::Text, b"").node, 9);
        assert_ne!(random_node_id(), random_node_id());
    }

    #[test]
    fn huge_sequence_jumps_saturate_instead_of_overflowing() {
        // Found by the `envelope` fuzz target: two jumps of nearly 2^64 from one sender.
        let mut r = Receiver::new(1);
        let env = |node, seq| Envelope {
            node,
            seq,
            kind: MessageKind::Text,
            room: "r",
            payload: b"x",
        };
        assert_eq!(r.accept(&env(2, 2)), Accept::Deliver);
        assert_eq!(r.accept(&env(2, u64::MAX / 2)), Accept::Deliver);
        assert_eq!(r.accept(&env(2, u64::MAX)), Accept::Deliver);
        // Every number between 2 and u64::MAX was skipped: counted once, not twice.
        assert_eq!(r.missed(), u64::MAX - 3 - 1);
        // A second sender's jump takes the total past what u64 holds: it stops there.
        assert_eq!(r.accept(&env(3, 5)), Accept::Deliver);
        assert_eq!(r.accept(&env(3, u64::MAX)), Accept::Deliver);
        assert_eq!(r.missed(), u64::MAX);
        let mut g = GapCounter::default();
        g.observe(1);
        g.observe(u64::MAX - 1);
        g.observe(u64::MAX);
        assert_eq!(g.missed(), u64::MAX - 3);
    }
}
