//! The Redis pub/sub link, sans-I/O: bytes in, events and bytes out, the time passed in. The
//! driver ([`super::bridge::RedisBridge`]) owns the sockets; this decides what to say and what
//! a reply means, when to reconnect, when to ping, and what to drop.
//!
//! Two connections, because RESP2 allows only (UN)SUBSCRIBE and PING on a subscribed one
//! (Redis docs, "Pub/Sub"): the publisher sends `PUBLISH`, the subscriber holds **one
//! `SUBSCRIBE` per room that has local members**, reference-counted (no `PSUBSCRIBE`: a node
//! never receives rooms it has no one in). Channels are `PREFIX:room:NAME`.
//!
//! Failure semantics are at-most-once and never unbounded: publishes over `buffer` bytes of
//! pending output, or while the link is down, are dropped and counted; so are those still
//! unwritten when it is lost. The link is one unit: if either connection fails, both are
//! closed and opened again after a backoff (100 ms doubling to 2 s, jittered), and on every
//! reconnect every live room is subscribed again. A `PING` every `ping_interval` on both
//! connections, unanswered for as long again, counts as a dead link.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::Write as _;
use std::time::{Duration, Instant};

use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::types::RangeFrame;

use super::envelope::{Accept, Envelope, Receiver, Sequencer};
use crate::connection::MessageKind;

/// The first retry's delay; each failure doubles it, up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Buffer capacity kept once a buffer is empty again.
const KEEP: usize = 64 * 1024;

/// Channels per `SUBSCRIBE` when a reconnect subscribes every live room again.
const SUBSCRIBE_BATCH: usize = 128;

/// RESP nesting deeper than this is refused before it is parsed (pub/sub replies nest one
/// level; the parser recurses, so an unbounded depth could exhaust the stack).
const MAX_DEPTH: usize = 4;

/// The link's settings, from `--redis*` and `--max-message-size`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Channel prefix (`--redis-prefix`): channels are `PREFIX:room:NAME`.
    pub prefix: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Most bytes of publishes waiting to be written (`--redis-buffer`).
    pub buffer: usize,
    /// Ping period, and how long a ping may go unanswered (`--redis-ping-interval`); also
    /// how long connecting (TCP, AUTH, first PING) may take.
    pub ping_interval: Duration,
    /// Largest reply accepted (a message from another node); larger ones break the link.
    pub max_reply: usize,
}

impl Settings {
    /// From the `--redis*` flags; user and password come from the URL.
    pub fn from_config(config: &crate::Config) -> Settings {
        let url = config.redis.as_ref();
        Settings {
            prefix: config.redis_prefix.clone(),
            user: url.and_then(|u| u.user.clone()),
            password: url.and_then(|u| u.password.clone()),
            buffer: config.redis_buffer,
            ping_interval: config.redis_ping_interval,
            // The largest message, its envelope and channel, and the RESP around them.
            max_reply: config
                .max_message_size
                .saturating_add(config.redis_prefix.len())
                .saturating_add(1024),
        }
    }
}

/// One of the two connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Publisher = 0,
    Subscriber = 1,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::Publisher, Side::Subscriber];
}

/// What the driver must do with the sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open both connections (to the next address, if there are several).
    Connect,
    /// Close both connections (the link was lost); a `Connect` follows after the backoff.
    Close,
}

/// What the link tells the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Both connections are up (authenticated, answering); every live room is subscribed.
    Up,
    /// The link was lost; it reconnects by itself after `retry_in`.
    Down {
        error: LinkError,
        retry_in: Duration,
    },
    /// A message from another node for a room with local members.
    Message {
        room: String,
        kind: MessageKind,
        payload: Vec<u8>,
    },
    /// `--room-exec`: Redis answered a lease command ([`RedisLink::lease`]).
    Lease {
        op: crate::cluster::lease::LeaseOp,
        room: String,
        granted: bool,
    },
    /// `--room-exec`: a member on another node spoke to the program of `room`, which runs
    /// here ([`RedisLink::subscribe_input`]).
    Input {
        room: String,
        kind: MessageKind,
        payload: Vec<u8>,
    },
}

/// Why the link was lost; each is answered the same way (close, back off, reconnect), the
/// variant is for the log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkError {
    /// A socket error, or the connection refused (from the driver).
    Io(String),
    /// Redis closed the connection.
    Closed,
    /// TCP, AUTH and the first PING did not complete within the ping interval.
    ConnectTimeout,
    /// A PING went unanswered for the ping interval.
    PingTimeout,
    /// Redis answered with an error (a wrong password, `NOAUTH`, ...).
    ErrorReply(String),
    /// A reply that is not valid RESP2, too deep, or not what was asked for.
    BadReply(String),
    /// A reply larger than `max_reply` (a node with a larger `--max-message-size`?).
    ReplyTooLarge,
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Io(e) => write!(f, "{e}"),
            LinkError::Closed => f.write_str("connection closed by Redis"),
            LinkError::ConnectTimeout => f.write_str("connect timed out"),
            LinkError::PingTimeout => f.write_str("no answer to PING"),
            LinkError::ErrorReply(e) => write!(f, "Redis answered: {e}"),
            LinkError::BadReply(e) => write!(f, "bad reply: {e}"),
            LinkError::ReplyTooLarge => f.write_str("reply over the message size limit"),
        }
    }
}

/// Counters for `/stats` and `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedisStats {
    pub connected: bool,
    /// Times the link came back after being up.
    pub reconnects: u64,
    /// Publishes dropped: link down, buffer full, or unwritten when the link was lost.
    pub dropped: u64,
    /// Publishes Redis acknowledged.
    pub published: u64,
    /// Messages from other nodes handed to local rooms.
    pub received: u64,
    /// Messages other nodes numbered that never arrived here.
    pub missed: u64,
    /// Our own messages, back from Redis and dropped (local members had them already).
    pub own: u64,
    /// Messages from Redis that were not envelopes (or named another room than their channel).
    pub invalid: u64,
}

/// The reply a command waits for, in order, per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    Auth,
    /// The PING of the handshake: its answer makes the connection ready.
    Hello,
    Ping,
    /// A PUBLISH whose command ends `end` bytes into the connection's output.
    Publish {
        end: u64,
    },
    /// A lease command (`room_exec.rs`): `+OK`, null, 1 or 0.
    Lease,
}

#[derive(Debug)]
enum State {
    /// Down; connect at `at`.
    Backoff { at: Instant },
    /// Sockets opening, handshakes in flight; up when both are answered.
    Connecting { deadline: Instant, ready: [bool; 2] },
    Up {
        next_ping: Instant,
        /// A PING is out on a connection and must be answered by then.
        pong_deadline: Option<Instant>,
        waiting: [bool; 2],
    },
}

/// One connection's bytes and the replies it waits for.
#[derive(Debug, Default)]
struct Wire {
    out: Vec<u8>,
    /// Bytes of `out` already written.
    sent: usize,
    /// Bytes ever queued and ever written on this connection.
    queued: u64,
    written: u64,
    input: Vec<u8>,
    expect: VecDeque<Reply>,
}

impl Wire {
    fn pending(&self) -> usize {
        self.out.len() - self.sent
    }

    /// Appends one command (a RESP array of bulk strings).
    fn command(&mut self, args: &[&[u8]]) {
        let start = self.out.len();
        self.out.reserve(command_len(args));
        self.out
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            self.out
                .extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            self.out.extend_from_slice(a);
            self.out.extend_from_slice(b"\r\n");
        }
        debug_assert_eq!(self.out.len() - start, command_len(args));
        self.queued += (self.out.len() - start) as u64;
    }
}

/// Between the prefix and the room name in a channel.
const ROOM_INFIX: &str = ":room:";

/// The encoded size of `PUBLISH channel data`, from the lengths alone.
fn publish_len(channel_len: usize, data_len: usize) -> usize {
    let digits = |n: usize| n.checked_ilog10().unwrap_or(0) as usize + 1;
    // `*3\r\n` `$7\r\nPUBLISH\r\n`, then each argument as `$LEN\r\nARG\r\n`.
    4 + 13 + (5 + digits(channel_len) + channel_len) + (5 + digits(data_len) + data_len)
}

/// The encoded size of a command: `*N\r\n`, then `$LEN\r\nARG\r\n` per argument.
fn command_len(args: &[&[u8]]) -> usize {
    let digits = |n: usize| n.to_string().len();
    3 + digits(args.len())
        + args
            .iter()
            .map(|a| 5 + digits(a.len()) + a.len())
            .sum::<usize>()
}

/// Both connections' protocol, the rooms subscribed, the backoff and the counters.
#[derive(Debug)]
pub struct RedisLink {
    settings: Settings,
    /// `PREFIX:room:`, the start of every channel of ours.
    channel_prefix: String,
    state: State,
    wires: [Wire; 2],
    /// Local members per room; a room is subscribed while it is here.
    rooms: BTreeMap<String, usize>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    /// Consecutive failed attempts (0 once up).
    failures: u32,
    ever_up: bool,
    rng: u64,
    sequencer: Sequencer,
    receiver: Receiver,
    stats: RedisStats,
    /// `--room-exec`: lease replies awaited, input channels.
    room_exec: room_exec::RoomExecWire,
}

impl RedisLink {
    /// A link for node `node` that connects at once. `seed` feeds the backoff's jitter (a
    /// fixed one makes tests repeatable).
    pub fn new(settings: Settings, node: u64, seed: u64, now: Instant) -> RedisLink {
        RedisLink {
            channel_prefix: format!("{}{ROOM_INFIX}", settings.prefix),
            settings,
            state: State::Backoff { at: now },
            wires: Default::default(),
            rooms: BTreeMap::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            failures: 0,
            ever_up: false,
            rng: seed | 1,
            sequencer: Sequencer::new(node),
            receiver: Receiver::new(node),
            stats: RedisStats::default(),
            room_exec: room_exec::RoomExecWire::new(node),
        }
    }

    pub fn node(&self) -> u64 {
        self.sequencer.node()
    }

    pub fn stats(&self) -> RedisStats {
        RedisStats {
            missed: self.receiver.missed(),
            ..self.stats
        }
    }

    pub fn is_up(&self) -> bool {
        matches!(self.state, State::Up { .. })
    }

    /// The next thing the driver must do with the sockets; call until `None` after every call
    /// into the link.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event for the server; call until `None` after every call into the link.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Bytes waiting to be written on `side`.
    pub fn output(&self, side: Side) -> &[u8] {
        let w = &self.wires[side as usize];
        &w.out[w.sent..]
    }

    /// The driver wrote `n` bytes of [`Self::output`].
    pub fn written(&mut self, side: Side, n: usize) {
        let w = &mut self.wires[side as usize];
        w.sent = (w.sent + n).min(w.out.len());
        w.written += n as u64;
        if w.sent == w.out.len() {
            w.out.clear();
            // A burst of large publishes does not keep its buffer for ever.
            w.out.shrink_to(KEEP);
            w.sent = 0;
        } else if w.sent >= 64 * 1024 && w.sent * 2 >= w.out.len() {
            w.out.drain(..w.sent);
            w.sent = 0;
        }
    }

    /// The earliest time [`Self::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(match self.state {
            State::Backoff { at } => at,
            State::Connecting { deadline, .. } => deadline,
            State::Up {
                next_ping,
                pong_deadline,
                ..
            } => pong_deadline.map_or(next_ping, |d| d.min(next_ping)),
        })
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Backoff { at } if now >= at => self.start_connect(now),
            State::Connecting { deadline, .. } if now >= deadline => {
                self.lose(now, LinkError::ConnectTimeout)
            }
            State::Up { pong_deadline, .. } if pong_deadline.is_some_and(|d| now >= d) => {
                self.lose(now, LinkError::PingTimeout)
            }
            State::Up {
                next_ping,
                ref mut pong_deadline,
                ref mut waiting,
            } if now >= next_ping => {
                let interval = self.settings.ping_interval;
                for side in Side::BOTH {
                    if !waiting[side as usize] {
                        waiting[side as usize] = true;
                        let w = &mut self.wires[side as usize];
                        w.command(&[b"PING"]);
                        w.expect.push_back(Reply::Ping);
                    }
                }
                if pong_deadline.is_none() {
                    *pong_deadline = Some(now + interval);
                }
                self.state_set_next_ping(now + interval);
            }
            _ => {}
        }
    }

    fn state_set_next_ping(&mut self, at: Instant) {
        if let State::Up { next_ping, .. } = &mut self.state {
            *next_ping = at;
        }
    }

    /// A local member joined `room`: the first one subscribes the node to it.
    pub fn join(&mut self, room: &str) {
        let n = self.rooms.entry(room.to_string()).or_insert(0);
        *n += 1;
        if *n == 1 && self.in_session() {
            let channel = self.channel(room);
            self.wires[Side::Subscriber as usize].command(&[b"SUBSCRIBE", channel.as_bytes()]);
        }
    }

    /// A local member left `room`: the last one unsubscribes the node.
    pub fn leave(&mut self, room: &str) {
        let Some(n) = self.rooms.get_mut(room) else {
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        self.rooms.remove(room);
        self.receiver.forget_room(room);
        if self.in_session() {
            let channel = self.channel(room);
            self.wires[Side::Subscriber as usize].command(&[b"UNSUBSCRIBE", channel.as_bytes()]);
        }
    }

    /// Rooms with local members (each one subscribed while the link is up).
    pub fn rooms(&self) -> impl Iterator<Item = (&str, usize)> {
        self.rooms.iter().map(|(r, &n)| (r.as_str(), n))
    }

    /// Sends a room message to the other nodes (local members are the caller's business).
    /// Returns false when it was dropped (link not up, or `buffer` full); the drop is counted.
    pub fn publish(&mut self, room: &str, kind: MessageKind, payload: &[u8]) -> bool {
        // Numbered even when dropped, so that receivers see the gap.
        let env = self.sequencer.next(room, kind, payload);
        if !self.is_up() {
            self.stats.dropped += 1;
            return false;
        }
        // Encoded straight into the output: no allocation per message.
        let prefix = &self.channel_prefix;
        let channel_len = prefix.len() + room.len();
        let data_len = env.encoded_len();
        let w = &mut self.wires[Side::Publisher as usize];
        let len = publish_len(channel_len, data_len);
        if w.pending() + len > self.settings.buffer {
            self.stats.dropped += 1;
            return false;
        }
        let start = w.out.len();
        w.out.reserve(len);
        let _ = write!(
            w.out,
            "*3\r\n$7\r\nPUBLISH\r\n${channel_len}\r\n{prefix}{room}\r\n${data_len}\r\n"
        );
        env.encode(&mut w.out);
        w.out.extend_from_slice(b"\r\n");
        debug_assert_eq!(w.out.len() - start, len);
        w.queued += len as u64;
        let end = w.queued;
        w.expect.push_back(Reply::Publish { end });
        true
    }

    /// Whether a publish of about `len` bytes (room and payload) fits the buffer as it is now
    /// (the exact test, envelope and RESP included, is [`Self::publish`]'s).
    pub fn has_room(&self, len: usize) -> bool {
        const OVERHEAD: usize = 128;
        let pending = self.wires[Side::Publisher as usize].pending();
        pending + len + self.settings.prefix.len() + OVERHEAD <= self.settings.buffer
    }

    /// The driver read `bytes` from `side`.
    pub fn receive(&mut self, side: Side, bytes: &[u8], now: Instant) {
        if !self.in_session() {
            return;
        }
        let w = &mut self.wires[side as usize];
        w.input.extend_from_slice(bytes);
        let mut used = 0;
        let result = loop {
            match self.next_reply(side, used) {
                Ok(Some(n)) => used += n,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = result {
            self.lose(now, e);
            return;
        }
        let w = &mut self.wires[side as usize];
        w.input.drain(..used);
        if w.input.is_empty() {
            w.input.shrink_to(KEEP);
        }
        if w.input.len() > self.settings.max_reply {
            self.lose(now, LinkError::ReplyTooLarge);
            return;
        }
        self.check_ready(now);
    }

    /// The driver lost a connection (socket error, refused, or EOF).
    pub fn lost(&mut self, now: Instant, error: LinkError) {
        if self.in_session() {
            self.lose(now, error);
        }
    }

    /// Connecting or up (not waiting out a backoff).
    pub fn in_session(&self) -> bool {
        !matches!(self.state, State::Backoff { .. })
    }

    fn channel(&self, room: &str) -> String {
        format!("{}{room}", self.channel_prefix)
    }

    fn start_connect(&mut self, now: Instant) {
        self.wires = Default::default();
        self.receiver.forget_all();
        for side in Side::BOTH {
            let w = &mut self.wires[side as usize];
            match (&self.settings.user, &self.settings.password) {
                (Some(u), Some(p)) => w.command(&[b"AUTH", u.as_bytes(), p.as_bytes()]),
                (None, Some(p)) => w.command(&[b"AUTH", p.as_bytes()]),
                _ => {}
            }
            if self.settings.password.is_some() {
                w.expect.push_back(Reply::Auth);
            }
        }
        // Every live room, again: a reconnect must not lose a subscription (socket.io #4845).
        let channels: Vec<String> = self.rooms.keys().map(|r| self.channel(r)).collect();
        for batch in channels.chunks(SUBSCRIBE_BATCH) {
            let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
            args.extend(batch.iter().map(|c| c.as_bytes()));
            self.wires[Side::Subscriber as usize].command(&args);
        }
        self.resubscribe_inputs();
        // Last: Redis answers in order, so its PONG means every SUBSCRIBE above is in effect
        // by the time the link says it is up.
        for w in &mut self.wires {
            w.command(&[b"PING"]);
            w.expect.push_back(Reply::Hello);
        }
        self.state = State::Connecting {
            deadline: now + self.settings.ping_interval,
            ready: [false; 2],
        };
        self.actions.push_back(Action::Connect);
    }

    fn lose(&mut self, now: Instant, error: LinkError) {
        let publisher = &self.wires[Side::Publisher as usize];
        let unwritten = publisher
            .expect
            .iter()
            .filter(|r| matches!(r, Reply::Publish { end } if *end > publisher.written))
            .count();
        self.stats.dropped += unwritten as u64;
        self.wires = Default::default();
        self.room_exec.lost();
        self.stats.connected = false;
        self.failures = self.failures.saturating_add(1);
        let retry_in = self.backoff(self.failures);
        self.state = State::Backoff { at: now + retry_in };
        self.actions.push_back(Action::Close);
        self.events.push_back(Event::Down { error, retry_in });
    }

    /// The delay before attempt `failures + 1`: 100 ms doubling to 2 s, then a uniform draw
    /// in its upper half, so that nodes that lost Redis together do not return together.
    pub fn backoff(&mut self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(16);
        let full = (BACKOFF_MIN * (1u32 << exp)).min(BACKOFF_MAX);
        let half = full / 2;
        let r = self.next_random() % (half.as_micros() as u64 + 1);
        half + Duration::from_micros(r)
    }

    /// xorshift64*: jitter only, not secrecy.
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn check_ready(&mut self, now: Instant) {
        if let State::Connecting {
            ready: [true, true],
            ..
        } = self.state
        {
            self.state = State::Up {
                next_ping: now + self.settings.ping_interval,
                pong_deadline: None,
                waiting: [false; 2],
            };
            self.failures = 0;
            if self.ever_up {
                self.stats.reconnects += 1;
            }
            self.ever_up = true;
            self.stats.connected = true;
            self.events.push_back(Event::Up);
        }
    }

    /// Parses one reply from `side`'s input at `from`; `Ok(None)` when it is not complete.
    fn next_reply(&mut self, side: Side, from: usize) -> Result<Option<usize>, LinkError> {
        let input = &self.wires[side as usize].input[from..];
        if input.is_empty() {
            return Ok(None);
        }
        if resp_depth(input) > MAX_DEPTH {
            return Err(LinkError::BadReply("nested too deep".into()));
        }
        let (frame, used) = match decode_range(input) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(None),
            Err(e) => return Err(LinkError::BadReply(e.to_string())),
        };
        // Checked on whole replies too, so that a reply is refused by its size alone, however
        // its bytes arrive.
        if used > self.settings.max_reply {
            return Err(LinkError::ReplyTooLarge);
        }
        let input = &self.wires[side as usize].input[from..from + used];
        if side == Side::Publisher
            && self.wires[Side::Publisher as usize].expect.front() == Some(&Reply::Lease)
        {
            if let Some(granted) = room_exec::lease_answer(&frame, input) {
                self.on_lease_reply(granted)?;
                return Ok(Some(used));
            }
        }
        let text = |r: &(usize, usize)| String::from_utf8_lossy(&input[r.0..r.1]).into_owned();
        match (&frame, side) {
            (RangeFrame::Error(r), _) => return Err(LinkError::ErrorReply(text(r))),
            (RangeFrame::Array(items), Side::Subscriber) => {
                let bulk = |i: usize| match items.get(i) {
                    Some(RangeFrame::BulkString(r)) => Some(&input[r.0..r.1]),
                    _ => None,
                };
                match bulk(0).map(|k| k.to_ascii_lowercase()).as_deref() {
                    Some(b"message") if items.len() == 3 => {
                        let (Some(channel), Some(data)) = (bulk(1), bulk(2)) else {
                            return Err(LinkError::BadReply("message without data".into()));
                        };
                        let (channel, data) = (channel.to_vec(), data.to_vec());
                        self.on_message(&channel, &data);
                    }
                    Some(b"subscribe") | Some(b"unsubscribe") => {}
                    Some(b"pong") => self.on_reply(side, Reply::Ping)?,
                    _ => return Err(LinkError::BadReply("unknown push on the subscriber".into())),
                }
            }
            (RangeFrame::SimpleString(r), _) => {
                let s = text(r);
                let want = if s.eq_ignore_ascii_case("PONG") {
                    Reply::Ping
                } else if s == "OK" {
                    Reply::Auth
                } else {
                    return Err(LinkError::BadReply(format!("+{s}")));
                };
                self.on_reply(side, want)?;
            }
            (RangeFrame::Integer(_), Side::Publisher) => {
                self.on_reply(side, Reply::Publish { end: 0 })?;
                self.stats.published += 1;
            }
            _ => return Err(LinkError::BadReply(format!("unexpected {frame:?}"))),
        }
        Ok(Some(used))
    }

    /// Matches a reply with the oldest command waiting for one.
    fn on_reply(&mut self, side: Side, got: Reply) -> Result<(), LinkError> {
        let Some(want) = self.wires[side as usize].expect.pop_front() else {
            return Err(LinkError::BadReply("a reply nothing asked for".into()));
        };
        match (want, got) {
            (Reply::Auth, Reply::Auth) | (Reply::Publish { .. }, Reply::Publish { .. }) => {}
            (Reply::Hello, Reply::Ping) => {
                if let State::Connecting { ready, .. } = &mut self.state {
                    ready[side as usize] = true;
                }
            }
            (Reply::Ping, Reply::Ping) => {
                if let State::Up {
                    waiting,
                    pong_deadline,
                    ..
                } = &mut self.state
                {
                    waiting[side as usize] = false;
                    if waiting == &[false, false] {
                        *pong_deadline = None;
                    }
                }
            }
            (want, got) => {
                return Err(LinkError::BadReply(format!(
                    "{got:?} where {want:?} was due"
                )))
            }
        }
        Ok(())
    }

    fn on_message(&mut self, channel: &[u8], data: &[u8]) {
        if self.on_input_message(channel, data) {
            return;
        }
        let Some(room) = channel
            .strip_prefix(self.channel_prefix.as_bytes())
            .and_then(|r| std::str::from_utf8(r).ok())
        else {
            self.stats.invalid += 1;
            return;
        };
        if !self.rooms.contains_key(room) {
            // In flight when the last member left: nobody to give it to.
            return;
        }
        let env = match Envelope::decode(data) {
            Ok(env) if env.room == room => env,
            Ok(_) => {
                self.stats.invalid += 1;
                log::debug!("redis: an envelope on {room} names another room");
                return;
            }
            Err(e) => {
                self.stats.invalid += 1;
                log::debug!("redis: not an envelope on {room}: {e}");
                return;
            }
        };
        match self.receiver.accept(&env) {
            Accept::Deliver => {
                self.stats.received += 1;
                self.events.push_back(Event::Message {
                    room: room.to_string(),
                    kind: env.kind,
                    payload: env.payload.to_vec(),
                });
            }
            Accept::Own => self.stats.own += 1,
            Accept::Duplicate => {}
        }
    }
}

/// How deeply the arrays of the first RESP reply in `input` nest, reading only the headers
/// (a bulk string's body is skipped by its length). Stops at the end of the first reply, at
/// the end of the input, or as soon as the depth is over [`MAX_DEPTH`].
fn resp_depth(input: &[u8]) -> usize {
    // Elements each open array still owes.
    let mut owed: Vec<u64> = Vec::new();
    let mut deepest = 0;
    let mut i = 0;
    while let Some(end) = input
        .get(i..)
        .and_then(|r| r.windows(2).position(|w| w == b"\r\n"))
    {
        let line = &input[i..i + end];
        i += end + 2;
        let count = || -> Option<i64> { std::str::from_utf8(&line[1..]).ok()?.parse().ok() };
        match line.first() {
            Some(b'*') => {
                if let Some(n) = count().filter(|&n| n > 0) {
                    owed.push(n as u64);
                    deepest = deepest.max(owed.len());
                    if deepest > MAX_DEPTH {
                        return deepest;
                    }
                    continue;
                }
            }
            Some(b'$') => {
                if let Some(n) = count().filter(|&n| n >= 0) {
                    i = i.saturating_add(n as usize).saturating_add(2);
                }
            }
            _ => {}
        }
        // One element done: it may complete the arrays around it.
        loop {
            match owed.last_mut() {
                None => return deepest,
                Some(1) => {
                    owed.pop();
                }
                Some(n) => {
                    *n -= 1;
                    break;
                }
            }
        }
    }
    deepest
}

mod room_exec;

#[cfg(test)]
mod tests;
