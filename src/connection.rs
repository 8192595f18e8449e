//! The WebSocket protocol of one connection once the handshake is done (RFC 6455 §5–§7):
//! frames in, events and frames out. No sockets and no clock: the server feeds bytes with
//! [`Connection::receive`], reacts to each [`Event`], and writes [`Connection::out`].
//!
//! A frame that arrives whole in the caller's buffer is unmasked in place and handed over as a
//! borrowed slice: no copy and no allocation. Only the bytes of an unfinished frame stay here.

use std::mem;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::deflate::PerMessage;
use crate::error::{close_code, DeflateError, ProtocolError};
use crate::frame::{
    apply_mask, encode_frame, encode_header, parse_header, random_mask, FrameHeader, Opcode, Parse,
    Role, MAX_HEADER_LEN,
};
use crate::outbox::{Outbox, SharedFrame, KEEP_CAPACITY};
use crate::timer::{Timer, TimerTable};
use crate::utf8::Utf8Validator;

/// The kind of a data message (§5.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// Valid UTF-8, checked before the message is handed over.
    Text,
    Binary,
}

impl MessageKind {
    pub fn opcode(self) -> Opcode {
        match self {
            MessageKind::Text => Opcode::Text,
            MessageKind::Binary => Opcode::Binary,
        }
    }
}

/// A message's bytes: borrowed from the caller's buffer (a frame that arrived whole), or the
/// buffer it was assembled in, which [`Connection::send_payload`] can move out without a copy.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    Borrowed(&'a [u8]),
    Assembled(&'a mut Vec<u8>),
}

impl std::ops::Deref for Payload<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Payload::Borrowed(b) => b,
            Payload::Assembled(v) => v,
        }
    }
}

/// What the peer did, as seen by the application.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole message.
    Message(MessageKind, Payload<'a>),
    /// A ping; the pong is already queued (§5.5.2).
    Ping(&'a [u8]),
    /// A pong; needs no answer (§5.5.3).
    Pong(&'a [u8]),
    /// The peer's close frame; when it opened the closing handshake, our answer is queued.
    Closed { code: Option<u16>, reason: &'a str },
    /// The peer broke a rule; a close frame with the matching code is queued.
    Failed(ProtocolError),
}

/// Where the connection stands (§4–§7). The handshake is done before a `Connection` exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Messages flow both ways.
    Open,
    /// We sent a close frame and wait for the peer's. `aligned` is false when an error left
    /// the incoming frames out of step, so nothing more can be read.
    Closing { aligned: bool },
    /// Both close frames are exchanged: flush, then close TCP (§7.1.1: the server closes first).
    Closed,
}

/// A frame whose payload is still arriving.
#[derive(Clone, Copy, Debug)]
struct PartialFrame {
    opcode: Opcode,
    fin: bool,
    mask: Option<[u8; 4]>,
    len: u64,
    done: u64,
    /// Read and thrown away: a frame that follows a close we sent.
    skip: bool,
}

/// A data message being put together from fragments (§5.4), or from a frame split over reads.
#[derive(Debug)]
struct Assembly {
    kind: MessageKind,
    data: Vec<u8>,
    utf8: Utf8Validator,
    /// RSV1 was set on the first frame: `data` holds DEFLATE bytes, inflated at the end.
    compressed: bool,
}

/// Compressed bytes handed to the inflater at a time, so that UTF-8 is checked as the text
/// comes out rather than once the whole message is inflated.
const INFLATE_STEP: usize = 16 * 1024;

/// How long each of a connection's timers runs; shared by every connection of a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Ping after this long without a byte from the peer; `None`: no keepalive.
    pub ping_interval: Option<Duration>,
    /// After a ping, drop the peer if nothing at all arrives for this long.
    pub pong_timeout: Duration,
    /// Once we have closed, how long the peer has to answer with its close frame.
    pub close: Duration,
    /// How long pending output may make no progress.
    pub send: Duration,
}

/// A timer that ends the connection at once: no close handshake is worth attempting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// Pinged, and nothing from the peer since (a vanished host, a dead NAT mapping).
    PongTimeout,
    /// The peer did not answer our close frame in time (§7.1.1 leaves the wait to us).
    CloseTimeout,
    /// The peer has not read any of our pending output for `Timeouts::send`.
    SendTimeout,
}

/// What is kept only while a frame or message arrives in pieces, and the buffer kept for the
/// next message: boxed, so that a connection between messages does not pay for it.
#[derive(Debug, Default)]
struct Inbound {
    header: [u8; MAX_HEADER_LEN],
    header_len: u8,
    frame: Option<PartialFrame>,
    message: Option<Assembly>,
    control: Vec<u8>,
    /// The buffer of the last assembled message, kept for the next one until [`Connection::shrink`].
    spare: Vec<u8>,
}

impl Inbound {
    /// No frame, message or control payload is half received.
    fn between_frames(&self) -> bool {
        self.frame.is_none() && self.message.is_none() && self.header_len == 0
    }
}

/// One WebSocket connection's protocol state.
///
/// Laid out for many idle connections: what only a message in progress needs (`inbound`),
/// pending output (`out`) and compression state are boxed and exist only while used, so an
/// idle connection is a few words (its size is pinned by a test).
#[derive(Debug)]
pub struct Connection {
    role: Role,
    state: State,
    max_message: usize,
    /// Allocated when a frame is split over reads (or a buffer is kept); see [`Inbound`].
    inbound: Option<Box<Inbound>>,
    /// We closed of our own accord: messages the peer sent before it saw our close are still
    /// delivered (§7.1.2 lets an endpoint keep receiving until the peer's close arrives).
    receiving_after_close: bool,
    /// Keepalive, close and send deadlines; unused until [`Connection::set_timeouts`].
    timers: TimerTable,
    timeouts: Option<Rc<Timeouts>>,
    /// The code of the close frame we queued, for the server's counters (1005, "no status",
    /// for an empty close: §7.4.1 reserves it for exactly that meaning).
    close_sent: Option<u16>,
    /// permessage-deflate, when agreed (boxed: a connection without it pays one pointer).
    deflate: Option<Box<PerMessage>>,
    /// Bytes to send to the peer.
    pub out: Outbox,
}

impl Connection {
    /// A connection in the `Open` state; messages over `max_message` bytes fail it with 1009.
    pub fn new(role: Role, max_message: usize) -> Self {
        Connection {
            role,
            state: State::Open,
            max_message,
            inbound: None,
            receiving_after_close: false,
            timers: TimerTable::new(Instant::now()),
            timeouts: None,
            close_sent: None,
            deflate: None,
            out: Outbox::new(),
        }
    }

    /// The handshake agreed on permessage-deflate (RFC 7692): from now on RSV1 marks a
    /// compressed message, and messages worth it are sent compressed.
    pub fn set_deflate(&mut self, deflate: PerMessage) {
        self.deflate = Some(Box::new(deflate));
    }

    /// The agreed permessage-deflate, if any.
    pub fn deflate(&self) -> Option<&PerMessage> {
        self.deflate.as_deref()
    }

    /// Starts the connection's timers: keepalive from `now`, and from then on the close and
    /// send deadlines. Without this call a connection never times out (tests, the client).
    pub fn set_timeouts(&mut self, timeouts: Rc<Timeouts>, now: Instant) {
        self.timers = TimerTable::new(now);
        self.timeouts = Some(timeouts);
        self.heard(now);
        self.sync_timers(now);
    }

    /// The earliest moment [`Connection::handle_timeout`] has something to do. Call again
    /// after every call that takes `now`: each may move it.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Acts on every timer due at `now`: a due ping is queued (flush `out` afterwards);
    /// `Some` means the connection is to be dropped at once, without a close handshake.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Expired> {
        let t = self.timeouts.clone()?;
        while let Some(timer) = self.timers.expired(now) {
            self.timers.stop(timer);
            match timer {
                Timer::Send => return Some(Expired::SendTimeout),
                Timer::PongDeadline => return Some(Expired::PongTimeout),
                Timer::Close => return Some(Expired::CloseTimeout),
                Timer::Ping => {
                    // §5.5.2: a ping asks for a pong; any frame from the peer will do as
                    // proof of life (see `heard`).
                    if self.ping(&[]) {
                        self.timers.set(Timer::PongDeadline, now + t.pong_timeout);
                    }
                }
                Timer::Handshake | Timer::Idle => {}
            }
        }
        self.sync_timers(now);
        None
    }

    /// The loop wrote some of `out` (`progressed`) or tried to: keeps the send deadline.
    pub fn flushed(&mut self, now: Instant, progressed: bool) {
        if let Some(t) = &self.timeouts {
            let send = t.send;
            self.timers
                .output_flushed(now, progressed, !self.out.is_empty(), send);
        }
    }

    /// The peer's FIN arrived while output is still queued: it may still read, but what is
    /// queued has `Timeouts::close` to go out, and no ping is worth sending.
    pub fn peer_gone(&mut self, now: Instant) {
        if let Some(t) = &self.timeouts {
            let close = t.close;
            self.timers.stop(Timer::Ping);
            self.timers.stop(Timer::PongDeadline);
            if !self.timers.is_set(Timer::Close) {
                self.timers.set(Timer::Close, now + close);
            }
        }
    }

    /// Bytes arrived from the peer: it is alive, so the next ping waits a whole interval.
    fn heard(&mut self, now: Instant) {
        if let Some(interval) = self.timeouts.as_ref().and_then(|t| t.ping_interval) {
            if self.state == State::Open {
                self.timers.set(Timer::Ping, now + interval);
                self.timers.stop(Timer::PongDeadline);
            }
        }
    }

    /// Keeps the timers in step with the state: once closing, keepalive stops and the peer
    /// has `Timeouts::close` to answer.
    fn sync_timers(&mut self, now: Instant) {
        let Some(t) = &self.timeouts else { return };
        if self.state != State::Open && !self.timers.is_set(Timer::Close) {
            let close = t.close;
            self.timers.set(Timer::Close, now + close);
            self.timers.stop(Timer::Ping);
            self.timers.stop(Timer::PongDeadline);
        }
    }

    /// Gives back the buffers kept for reuse; the server calls it when the connection is quiet.
    pub fn shrink(&mut self) {
        if let Some(i) = &mut self.inbound {
            if i.between_frames() {
                self.inbound = None;
            } else {
                i.spare = Vec::new();
            }
        }
        self.out.shrink();
        if let Some(d) = &mut self.deflate {
            d.release();
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// The code of the close frame we sent (or queued), if any: 1005 stands for an empty one.
    pub fn close_sent(&self) -> Option<u16> {
        self.close_sent
    }

    /// Feeds bytes from the peer, arrived at `now`. `input` is unmasked in place, and `on` is
    /// called once per event, in order, with the connection so that it can answer (echo,
    /// close, ...). After a close or an error, later input is only searched for the peer's
    /// close frame.
    pub fn receive<F>(&mut self, input: &mut [u8], now: Instant, on: &mut F)
    where
        F: FnMut(&mut Connection, Event<'_>),
    {
        if !input.is_empty() {
            self.heard(now);
        }
        self.decode(input, on);
        self.sync_timers(now);
    }

    fn decode<F>(&mut self, input: &mut [u8], on: &mut F)
    where
        F: FnMut(&mut Connection, Event<'_>),
    {
        let mut pos = 0;
        while pos < input.len() {
            if matches!(
                self.state,
                State::Closed | State::Closing { aligned: false }
            ) {
                return;
            }
            let mut header_len = 0;
            if let Some(i) = &self.inbound {
                if let Some(frame) = i.frame {
                    pos += self.payload_piece(frame, &mut input[pos..], on);
                    continue;
                }
                header_len = i.header_len;
            }
            let header = if header_len == 0 {
                match parse_header(&input[pos..]) {
                    Ok(Parse::Complete(h)) => {
                        pos += h.header_len;
                        h
                    }
                    Ok(Parse::Partial) => {
                        let rest = &input[pos..];
                        let i = self.inbound();
                        i.header[..rest.len()].copy_from_slice(rest);
                        i.header_len = rest.len() as u8;
                        return;
                    }
                    Err(e) => return self.fail(e, None, on),
                }
            } else {
                // The header began in an earlier read: complete it from this one.
                let i = self.inbound();
                let have = header_len as usize;
                let take = (MAX_HEADER_LEN - have).min(input.len() - pos);
                i.header[have..have + take].copy_from_slice(&input[pos..pos + take]);
                match parse_header(&i.header[..have + take]) {
                    Ok(Parse::Complete(h)) => {
                        pos += h.header_len - have;
                        i.header_len = 0;
                        h
                    }
                    Ok(Parse::Partial) => {
                        i.header_len = (have + take) as u8;
                        pos += take;
                        continue;
                    }
                    Err(e) => return self.fail(e, None, on),
                }
            };
            let skip = match self.check(&header) {
                Ok(skip) => skip,
                Err(e) => {
                    self.fail(e, Some(&header), on);
                    if header.opcode == Opcode::Close {
                        // A malformed close is still the peer's close (see control_frame).
                        self.state = State::Closed;
                    }
                    continue;
                }
            };
            let len = header.len as usize; // check() bounds it by max_message
            let whole = input.len() - pos >= len;
            let single =
                header.opcode.is_control() || (header.fin && header.opcode != Opcode::Continuation);
            if whole && single && !skip {
                let payload = &mut input[pos..pos + len];
                pos += len;
                if let Some(key) = header.mask {
                    apply_mask(payload, key, 0);
                }
                if header.rsv != 0 {
                    self.inflate_whole(header.opcode, payload, on);
                } else {
                    self.whole_frame(header.opcode, payload, on);
                }
            } else {
                self.start_frame(&header, skip, input.len() - pos);
                if len == 0 {
                    self.end_frame(on);
                }
            }
        }
    }

    /// True between frames: no header or payload is half read.
    pub fn at_frame_boundary(&self) -> bool {
        self.inbound
            .as_ref()
            .is_none_or(|i| i.frame.is_none() && i.header_len == 0)
    }

    /// The in-progress state, allocated on first use.
    fn inbound(&mut self) -> &mut Inbound {
        self.inbound.get_or_insert_with(Box::default)
    }

    /// The message being assembled, if any.
    fn message(&self) -> Option<&Assembly> {
        self.inbound.as_ref().and_then(|i| i.message.as_ref())
    }

    /// While a data frame with at least `threshold` more payload bytes is arriving: the buffer
    /// it is assembled in and how many bytes the frame still needs. The caller may read the
    /// socket straight into the buffer's spare capacity (saving a copy through its own read
    /// buffer), then must call [`Connection::payload_appended`] with the count.
    ///
    /// The buffer grows with what has arrived (at most doubling), never by what the header
    /// announces: a 14-byte header must not make the server reserve `max_message` bytes.
    pub fn payload_room(&mut self, threshold: usize) -> Option<(&mut Vec<u8>, usize)> {
        let i = self.inbound.as_mut()?;
        let frame = i.frame.as_ref()?;
        let left = frame.len - frame.done;
        if frame.skip || frame.opcode.is_control() || left < threshold as u64 {
            return None;
        }
        let m = i.message.as_mut()?;
        let left = left as usize;
        let spare = m.data.capacity() - m.data.len();
        if spare < threshold {
            m.data.reserve(left.min(m.data.len().max(threshold)));
        }
        Some((&mut m.data, left))
    }

    /// `n` bytes of the current frame's payload, arrived at `now`, were appended to the buffer
    /// from [`Connection::payload_room`]: unmask and check them as [`Connection::receive`] would.
    pub fn payload_appended<F>(&mut self, n: usize, now: Instant, on: &mut F)
    where
        F: FnMut(&mut Connection, Event<'_>),
    {
        if n > 0 {
            self.heard(now);
        }
        self.appended(n, on);
        self.sync_timers(now);
    }

    fn appended<F>(&mut self, n: usize, on: &mut F)
    where
        F: FnMut(&mut Connection, Event<'_>),
    {
        let Some(i) = self.inbound.as_mut() else {
            return;
        };
        let (Some(mut frame), Some(m)) = (i.frame, i.message.as_mut()) else {
            return;
        };
        let n = n.min((frame.len - frame.done) as usize).min(m.data.len());
        let start = m.data.len() - n;
        let piece = &mut m.data[start..];
        if let Some(key) = frame.mask {
            apply_mask(piece, key, frame.done as usize);
        }
        let invalid = m.kind == MessageKind::Text && !m.compressed && m.utf8.feed(piece).is_err();
        frame.done += n as u64;
        i.frame = Some(frame);
        if invalid {
            return self.fail(ProtocolError::InvalidUtf8, None, on);
        }
        if frame.done == frame.len {
            self.end_frame(on);
        }
    }

    /// Checks a header against the rules of §5 for this connection. `Ok(true)` means the frame
    /// is to be skipped (we are closing and wait only for the peer's close).
    fn check(&self, h: &FrameHeader) -> Result<bool, ProtocolError> {
        if let Opcode::Reserved(bits) = h.opcode {
            return Err(ProtocolError::UnknownOpcode(bits));
        }
        // §5.2: "MUST be 0 unless an extension is negotiated that defines meanings".
        if h.rsv != 0 {
            self.check_rsv(h)?;
        }
        match (self.role, h.mask.is_some()) {
            // §5.1: "The server MUST close the connection upon receiving a frame that is not masked."
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            // §5.1: "A client MUST close a connection if it detects a masked frame."
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        if h.opcode.is_control() {
            // §5.5: "All control frames MUST have a payload length of 125 bytes or less and
            // MUST NOT be fragmented."
            if h.len > 125 {
                return Err(ProtocolError::ControlTooLong);
            }
            if !h.fin {
                return Err(ProtocolError::FragmentedControl);
            }
            return Ok(false);
        }
        if self.state != State::Open && !self.receiving_after_close {
            return Ok(true);
        }
        let so_far = match (self.message(), h.opcode) {
            (None, Opcode::Continuation) => return Err(ProtocolError::UnexpectedContinuation),
            (Some(_), Opcode::Text | Opcode::Binary) => {
                return Err(ProtocolError::ExpectedContinuation)
            }
            (Some(m), _) => m.data.len() as u64,
            (None, _) => 0,
        };
        // §10.4: refuse from the header, before a byte of an oversized payload is buffered.
        if so_far + h.len > self.max_message as u64 {
            return Err(ProtocolError::MessageTooBig);
        }
        Ok(false)
    }

    /// RSV1 is permessage-deflate's, when agreed (RFC 7692 §6); RSV2 and RSV3 mean nothing.
    #[cold]
    fn check_rsv(&self, h: &FrameHeader) -> Result<(), ProtocolError> {
        if h.rsv != 0b100 || self.deflate.is_none() {
            return Err(ProtocolError::ReservedBits);
        }
        // RFC 7692 §6.1: "An endpoint MUST NOT set the "Per-Message Compressed" bit of
        // control frames and non-first fragments of a data message."
        if h.opcode.is_control() || h.opcode == Opcode::Continuation {
            return Err(ProtocolError::MisplacedCompressedBit);
        }
        Ok(())
    }

    /// A compressed message whose one frame is all here: inflated straight from the input.
    fn inflate_whole<F>(&mut self, opcode: Opcode, payload: &[u8], on: &mut F)
    where
        F: FnMut(&mut Connection, Event<'_>),
    {
        let kind = if opcode == Opcode::Text {
            MessageKind::Text
        } else {
            MessageKind::Binary
        };
        let mut out = self.take_buffer();
        self.deliver_inflated(kind, payload, &mut out, on);
        self.keep_buffer(out);
    }

    /// Inflates a whole compressed message into `out` and hands it over, or fails the
    /// connection: over the size limit (counted in inflated bytes, while inflating: RFC 6455
    /// §10.4), not DEFLATE (RFC 7692 §6.2), or not UTF-8 as the text comes out (§8.1).
    fn deliver_inflated<F>(
        &mut self,
        kind: MessageKind,
        compressed: &[u8],
        out: &mut Vec<u8>,
        on: &mut F,
    ) where
        F: FnMut(&mut Connection, Event<'_>),
    {
        let (role, limit) = (self.role, self.max_message);
        let Some(deflate) = self.deflate.as_mut() else {
            return self.fail(ProtocolError::ReservedBits, None, on);
        };
        out.clear();
        let result = deflate
            .with_inflater(role, |inflater| {
                let r = inflate_checked(inflater, kind, compressed, out, limit);
                if r.is_err() {
                    inflater.abort();
                }
                r
            })
            .unwrap_or(Err(ProtocolError::Deflate(DeflateError::Internal)));
        match result {
            Ok(()) => on(self, Event::Message(kind, Payload::Assembled(out))),
            Err(e) => self.fail(e, None, on),
        }
    }

    /// A buffer to assemble or inflate a message in: the one kept from the last message, or
    /// one the outbox has finished writing.
    fn take_buffer(&mut self) -> Vec<u8> {
        let data = self
            .inbound
            .as_mut()
            .map(|i| mem::take(&mut i.spare))
            .unwrap_or_default();
        if data.capacity() == 0 {
            self.out.take_reclaimed()
        } else {
            data
        }
    }

    /// Keeps a message's buffer for the next one, unless it is large.
    fn keep_buffer(&mut self, mut data: Vec<u8>) {
        let kept = self.inbound.as_ref().map_or(0, |i| i.spare.capacity());
        if data.capacity() > kept && data.capacity() <= KEEP_CAPACITY {
            data.clear();
            self.inbound().spare = data;
        }
    }

    /// A control frame, or an unfragmented data message, whose payload is all here.
    fn whole_frame<F>(&mut self, opcode: Opcode, payload: &[u8], on: &mut F)
    where
        F: FnMut(&mut Connection, Event<'_>),
    {
        match opcode {
            Opcode::Text => {
                if std::str::from_utf8(payload).is_err() {
                    return self.fail(ProtocolError::InvalidUtf8, None, on);
                }
                on(
                    self,
                    Event::Message(MessageKind::Text, Payload::Borrowed(payload)),
                );
            }
            Opcode::Binary => on(
                self,
                Event::Message(MessageKind::Binary, Payload::Borrowed(payload)),
            ),
            _ => self.control_frame(opcode, payload, on),
        }
    }

    /// `arrived`: payload bytes already at hand, the most the message buffer reserves now.
    fn start_frame(&mut self, h: &FrameHeader, skip: bool, arrived: usize) {
        if !skip && !h.opcode.is_control() && self.message().is_none() {
            let kind = if h.opcode == Opcode::Text {
                MessageKind::Text
            } else {
                MessageKind::Binary
            };
            let mut data = self.take_buffer();
            data.reserve((h.len as usize).min(arrived));
            self.inbound().message = Some(Assembly {
                kind,
                data,
                utf8: Utf8Validator::new(),
                compressed: h.rsv != 0,
            });
        }
        self.inbound().frame = Some(PartialFrame {
            opcode: h.opcode,
            fin: h.fin,
            mask: h.mask,
            len: h.len,
            done: 0,
            skip,
        });
    }

    /// Takes the next piece of the current frame's payload from `data`; returns bytes used.
    fn payload_piece<F>(&mut self, mut frame: PartialFrame, data: &mut [u8], on: &mut F) -> usize
    where
        F: FnMut(&mut Connection, Event<'_>),
    {
        let take = (frame.len - frame.done).min(data.len() as u64) as usize;
        let piece = &mut data[..take];
        if !frame.skip {
            if let Some(key) = frame.mask {
                apply_mask(piece, key, frame.done as usize);
            }
            let i = self.inbound();
            if frame.opcode.is_control() {
                i.control.extend_from_slice(piece);
            } else if let Some(m) = &mut i.message {
                // §8.1 with fail-fast: judge text as it arrives, not when the message ends
                // (compressed text is judged as it is inflated).
                if m.kind == MessageKind::Text && !m.compressed && m.utf8.feed(piece).is_err() {
                    frame.done += take as u64;
                    i.frame = Some(frame);
                    self.fail(ProtocolError::InvalidUtf8, None, on);
                    return take;
                }
                m.data.extend_from_slice(piece);
            }
        }
        frame.done += take as u64;
        self.inbound().frame = Some(frame);
        if frame.done == frame.len {
            self.end_frame(on);
        }
        take
    }

    /// The current frame's payload is complete.
    fn end_frame<F>(&mut self, on: &mut F)
    where
        F: FnMut(&mut Connection, Event<'_>),
    {
        let Some(frame) = self.inbound.as_mut().and_then(|i| i.frame.take()) else {
            return;
        };
        if frame.skip {
            return;
        }
        if frame.opcode.is_control() {
            let payload = mem::take(&mut self.inbound().control);
            self.control_frame(frame.opcode, &payload, on);
            return;
        }
        if !frame.fin {
            return;
        }
        let Some(mut m) = self.inbound.as_mut().and_then(|i| i.message.take()) else {
            return;
        };
        if m.compressed {
            let mut out = mem::take(&mut self.inbound().spare);
            self.deliver_inflated(m.kind, &m.data, &mut out, on);
            self.keep_buffer(out);
            self.keep_buffer(m.data);
            return;
        }
        if !m.utf8.is_complete() {
            return self.fail(ProtocolError::InvalidUtf8, None, on);
        }
        on(
            self,
            Event::Message(m.kind, Payload::Assembled(&mut m.data)),
        );
        if m.data.capacity() > 0 && m.data.capacity() <= KEEP_CAPACITY {
            m.data.clear();
            self.inbound().spare = m.data;
        }
    }

    fn control_frame<F>(&mut self, opcode: Opcode, payload: &[u8], on: &mut F)
    where
        F: FnMut(&mut Connection, Event<'_>),
    {
        match opcode {
            Opcode::Ping => {
                // §5.5.2: answer with a pong carrying the same payload, unless closing.
                if self.state == State::Open {
                    self.queue(Opcode::Pong, payload);
                }
                on(self, Event::Ping(payload));
            }
            Opcode::Pong => on(self, Event::Pong(payload)),
            Opcode::Close => {
                let (code, reason) = match parse_close(payload) {
                    Ok(v) => v,
                    Err(e) if self.state == State::Open => {
                        // The peer has closed, if badly: answer with the error's code and
                        // end the handshake here rather than wait for a second close.
                        self.fail(e, None, on);
                        self.state = State::Closed;
                        return;
                    }
                    Err(_) => (None, ""),
                };
                if self.state == State::Open {
                    // §5.5.1: answer with a close frame, echoing the status code (and the
                    // reason, so the peer's application sees what it said was heard).
                    match code {
                        Some(code) => self.queue_close(code, reason),
                        None => {
                            self.close_sent = Some(close_code::NO_STATUS);
                            self.queue(Opcode::Close, &[]);
                        }
                    }
                }
                self.state = State::Closed;
                if let Some(i) = &mut self.inbound {
                    i.frame = None;
                    i.message = None;
                }
                on(self, Event::Closed { code, reason });
            }
            _ => {}
        }
    }

    /// Fails the connection (§7.1.7): queue a close frame with the error's code, drop what
    /// was being assembled, and from now on read only to find the peer's close frame.
    /// `header` is the offending frame's, when known, so its payload can be skipped in step.
    fn fail<F>(&mut self, e: ProtocolError, header: Option<&FrameHeader>, on: &mut F)
    where
        F: FnMut(&mut Connection, Event<'_>),
    {
        let aligned = e.frames_still_aligned();
        if self.state == State::Open {
            let reason = e.to_string();
            self.queue_close(e.close_code(), &reason);
            on(self, Event::Failed(e));
        } else if self.receiving_after_close {
            // Our close is already out; the broken rule is still worth reporting.
            on(self, Event::Failed(e));
        }
        if let Some(i) = &mut self.inbound {
            i.message = None;
            i.control.clear();
        }
        self.receiving_after_close = false;
        self.state = State::Closing { aligned };
        if let Some(h) = header {
            self.inbound().frame = Some(PartialFrame {
                opcode: h.opcode,
                fin: h.fin,
                mask: h.mask,
                len: h.len,
                done: 0,
                skip: true,
            });
        } else if let Some(i) = &mut self.inbound {
            if let Some(f) = &mut i.frame {
                f.skip = true;
                if f.done == f.len {
                    i.frame = None;
                }
            }
        }
    }

    /// Queues a data message, compressed when permessage-deflate is agreed and it pays.
    /// Returns false (and sends nothing) unless the connection is open.
    pub fn send(&mut self, kind: MessageKind, data: &[u8]) -> bool {
        if self.state != State::Open {
            return false;
        }
        if self.deflate.is_some() && self.queue_compressed(kind, data) {
            return true;
        }
        self.queue(kind.opcode(), data);
        true
    }

    /// Queues `data` as one compressed frame (RSV1 set, RFC 7692 §6), compressed straight
    /// into the outbox; false (nothing queued) when compression does not pay.
    fn queue_compressed(&mut self, kind: MessageKind, data: &[u8]) -> bool {
        let Some(deflate) = self.deflate.as_mut() else {
            return false;
        };
        let mask = match self.role {
            Role::Server => None,
            Role::Client => Some(random_mask()),
        };
        // Room for the longest header; the payload moves back once its length is known.
        let room = if mask.is_some() { MAX_HEADER_LEN } else { 10 };
        let buf = self.out.buf();
        let start = buf.len();
        buf.resize(start + room, 0);
        match deflate.compress(self.role, data, buf) {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                buf.truncate(start);
                return false;
            }
        }
        let len = buf.len() - start - room;
        let mut head = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut head, true, kind.opcode(), mask, len);
        head[0] |= 0x40;
        buf.copy_within(start + room.., start + n);
        buf.truncate(start + n + len);
        buf[start..start + n].copy_from_slice(&head[..n]);
        if let Some(key) = mask {
            apply_mask(&mut buf[start + n..], key, 0);
        }
        self.out.commit();
        true
    }

    /// Queues a data message from an event's payload; an assembled one is moved, not copied.
    pub fn send_payload(&mut self, kind: MessageKind, payload: Payload<'_>) -> bool {
        match payload {
            Payload::Borrowed(data) => self.send(kind, data),
            Payload::Assembled(data)
                if self.state == State::Open
                    && self.deflate.is_some()
                    && self.queue_compressed(kind, data) =>
            {
                true
            }
            Payload::Assembled(data) if self.state == State::Open => {
                let mask = match self.role {
                    Role::Server => None,
                    Role::Client => Some(random_mask()),
                };
                let mut head = [0u8; MAX_HEADER_LEN];
                let n = encode_header(&mut head, true, kind.opcode(), mask, data.len());
                self.out.push(&head[..n]);
                let mut data = mem::take(data);
                if let Some(key) = mask {
                    apply_mask(&mut data, key, 0);
                }
                self.out.push_moved(data);
                true
            }
            Payload::Assembled(_) => false,
        }
    }

    /// Queues a frame encoded once for many receivers (server role only: it is unmasked).
    pub fn send_shared(&mut self, frame: &SharedFrame) -> bool {
        if self.state != State::Open || self.role != Role::Server {
            return false;
        }
        self.out.push_shared(frame.clone());
        true
    }

    /// Queues a frame compressed once, without context, for many receivers (RFC 7692 §7.2.1,
    /// RSV1 set): only to a peer that agreed on a window of at least `window_bits`.
    pub fn send_shared_compressed(&mut self, frame: &SharedFrame, window_bits: u8) -> bool {
        let Some(deflate) = self.deflate.as_mut() else {
            return false;
        };
        if !deflate.takes_shared_frame(window_bits) || !self.send_shared(frame) {
            return false;
        }
        // Our own compressor's history lacks these bytes: its next message starts afresh.
        if let Some(d) = self.deflate.as_mut() {
            d.forget();
        }
        true
    }

    /// Queues a ping.
    pub fn ping(&mut self, data: &[u8]) -> bool {
        if self.state != State::Open || data.len() > 125 {
            return false;
        }
        self.queue(Opcode::Ping, data);
        true
    }

    /// Starts the closing handshake (§7.1.2) at `now`. The reason is cut to fit a control
    /// frame. Data messages that arrive before the peer's close are still delivered; nothing
    /// more can be sent.
    pub fn close(&mut self, code: u16, reason: &str, now: Instant) {
        if self.state == State::Open {
            self.queue_close(code, reason);
            self.state = State::Closing { aligned: true };
            self.receiving_after_close = true;
        }
        self.sync_timers(now);
    }

    fn queue_close(&mut self, code: u16, reason: &str) {
        self.close_sent = Some(code);
        let mut body = [0u8; 125];
        body[..2].copy_from_slice(&code.to_be_bytes());
        let mut n = reason.len().min(123);
        while !reason.is_char_boundary(n) {
            n -= 1;
        }
        body[2..2 + n].copy_from_slice(&reason.as_bytes()[..n]);
        self.queue(Opcode::Close, &body[..2 + n]);
    }

    fn queue(&mut self, opcode: Opcode, payload: &[u8]) {
        let mask = match self.role {
            Role::Server => None,
            Role::Client => Some(random_mask()),
        };
        encode_frame(self.out.buf(), true, opcode, mask, payload);
        self.out.commit();
    }
}

/// Inflates a whole message in steps of [`INFLATE_STEP`] compressed bytes, checking text as
/// it comes out; the inflater stops at `limit` inflated bytes.
fn inflate_checked(
    inflater: &mut crate::deflate::Inflater,
    kind: MessageKind,
    compressed: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), ProtocolError> {
    let mut utf8 = Utf8Validator::new();
    let mut rest = compressed;
    loop {
        let step = rest.len().min(INFLATE_STEP);
        let fin = step == rest.len();
        let added = inflater
            .inflate(&rest[..step], fin, out, limit)
            .map_err(|e| match e {
                DeflateError::TooBig => ProtocolError::MessageTooBig,
                e => ProtocolError::Deflate(e),
            })?;
        rest = &rest[step..];
        if kind == MessageKind::Text && utf8.feed(&out[out.len() - added..]).is_err() {
            return Err(ProtocolError::InvalidUtf8);
        }
        if fin {
            break;
        }
    }
    if kind == MessageKind::Text && !utf8.is_complete() {
        return Err(ProtocolError::InvalidUtf8);
    }
    Ok(())
}

/// Reads a close frame's body (§5.5.1, §7.4): nothing, or a valid code and a UTF-8 reason.
pub fn parse_close(payload: &[u8]) -> Result<(Option<u16>, &str), ProtocolError> {
    match payload.len() {
        0 => Ok((None, "")),
        1 => Err(ProtocolError::CloseBodyTooShort),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !close_code::is_valid_on_wire(code) {
                return Err(ProtocolError::InvalidCloseCode(code));
            }
            let reason = std::str::from_utf8(&payload[2..])
                .map_err(|_| ProtocolError::InvalidCloseReason)?;
            Ok((Some(code), reason))
        }
    }
}

/// An owned copy of an event, for tests and tools that collect events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedEvent {
    Message(MessageKind, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Closed(Option<u16>, String),
    Failed(ProtocolError),
}

impl From<Event<'_>> for OwnedEvent {
    fn from(e: Event<'_>) -> Self {
        match e {
            Event::Message(k, d) => OwnedEvent::Message(k, d.to_vec()),
            Event::Ping(d) => OwnedEvent::Ping(d.to_vec()),
            Event::Pong(d) => OwnedEvent::Pong(d.to_vec()),
            Event::Closed { code, reason } => OwnedEvent::Closed(code, reason.to_string()),
            Event::Failed(e) => OwnedEvent::Failed(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_frame;

    const MAX: usize = 1 << 20;

    fn masked(fin: bool, op: Opcode, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_frame(&mut v, fin, op, Some([0x11, 0x22, 0x33, 0x44]), payload);
        v
    }

    /// Feeds `bytes` in pieces of `step` bytes (0 = all at once) and collects events and output.
    fn run(bytes: &[u8], step: usize) -> (Vec<OwnedEvent>, Vec<u8>, State) {
        let mut c = Connection::new(Role::Server, MAX);
        let mut events = Vec::new();
        let mut on = |c: &mut Connection, e: Event<'_>| {
            if let Event::Message(k, d) = e {
                events.push(OwnedEvent::Message(k, d.to_vec()));
                c.send_payload(k, d);
                return;
            }
            events.push(OwnedEvent::from(e));
        };
        let step = if step == 0 { bytes.len().max(1) } else { step };
        for piece in bytes.chunks(step) {
            let mut piece = piece.to_vec();
            c.receive(&mut piece, Instant::now(), &mut on);
        }
        let mut out = Vec::new();
        c.out.flush_to(&mut out).unwrap();
        (events, out, c.state())
    }

    fn unmasked(op: Opcode, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_frame(&mut v, true, op, None, payload);
        v
    }

    fn out_close_code(out: &[u8]) -> Option<u16> {
        // The last frame of `out` must be a close frame; return its code.
        let mut at = 0;
        let mut last = None;
        while at < out.len() {
            let Ok(Parse::Complete(h)) = parse_header(&out[at..]) else {
                panic!("bad output")
            };
            let p = &out[at + h.header_len..at + h.header_len + h.len as usize];
            last = Some((h.opcode, p.to_vec()));
            at += h.header_len + h.len as usize;
        }
        match last {
            Some((Opcode::Close, p)) if p.len() >= 2 => Some(u16::from_be_bytes([p[0], p[1]])),
            _ => None,
        }
    }

    #[test]
    fn echoes_a_message_split_at_every_byte_boundary() {
        let mut wire = masked(true, Opcode::Text, "héllo wörld, a message".as_bytes());
        wire.extend(masked(false, Opcode::Binary, &[1, 2, 3]));
        wire.extend(masked(true, Opcode::Ping, b"p"));
        wire.extend(masked(true, Opcode::Continuation, &[4, 5]));
        let expect_out = {
            let mut v = unmasked(Opcode::Text, "héllo wörld, a message".as_bytes());
            v.extend(unmasked(Opcode::Pong, b"p"));
            v.extend(unmasked(Opcode::Binary, &[1, 2, 3, 4, 5]));
            v
        };
        for split in 0..=wire.len() {
            let mut c = Connection::new(Role::Server, MAX);
            let mut events = Vec::new();
            let mut on = |c: &mut Connection, e: Event<'_>| {
                if let Event::Message(k, d) = e {
                    events.push(OwnedEvent::Message(k, d.to_vec()));
                    c.send_payload(k, d);
                    return;
                }
                events.push(OwnedEvent::from(e));
            };
            let (a, b) = wire.split_at(split);
            c.receive(&mut a.to_vec(), Instant::now(), &mut on);
            c.receive(&mut b.to_vec(), Instant::now(), &mut on);
            let mut out = Vec::new();
            c.out.flush_to(&mut out).unwrap();
            assert_eq!(out, expect_out, "split at {split}");
            assert_eq!(events.len(), 3);
        }
        // And byte by byte.
        let (events, out, state) = run(&wire, 1);
        assert_eq!(out, expect_out);
        assert_eq!(events.len(), 3);
        assert_eq!(state, State::Open);
    }

    #[test]
    fn reading_straight_into_the_payload_buffer_equals_receive() {
        let payload: Vec<u8> = "grüße ".bytes().cycle().take(70_000).collect();
        let wire = masked(true, Opcode::Text, &payload);
        let mut c = Connection::new(Role::Server, MAX);
        let mut got = Vec::new();
        let mut on = |_: &mut Connection, e: Event<'_>| got.push(OwnedEvent::from(e));
        // The header and a few payload bytes go through receive(), the rest is appended.
        c.receive(&mut wire[..20].to_vec(), Instant::now(), &mut on);
        assert!(!c.at_frame_boundary());
        let mut at = 20;
        while at < wire.len() {
            let (buf, left) = c.payload_room(1).expect("room while the frame is open");
            let n = left.min(4099).min(wire.len() - at);
            buf.extend_from_slice(&wire[at..at + n]);
            at += n;
            c.payload_appended(n, Instant::now(), &mut on);
        }
        assert!(c.at_frame_boundary());
        assert_eq!(got, vec![OwnedEvent::Message(MessageKind::Text, payload)]);
    }

    #[test]
    fn zero_length_messages_and_fragments() {
        let mut wire = masked(true, Opcode::Text, b"");
        wire.extend(masked(false, Opcode::Text, b""));
        wire.extend(masked(false, Opcode::Continuation, b""));
        wire.extend(masked(true, Opcode::Continuation, b""));
        let (events, out, _) = run(&wire, 0);
        assert_eq!(
            events,
            vec![OwnedEvent::Message(MessageKind::Text, vec![]); 2]
        );
        let mut expect = unmasked(Opcode::Text, b"");
        expect.extend(unmasked(Opcode::Text, b""));
        assert_eq!(out, expect);
    }

    #[test]
    fn the_close_code_sent_is_recorded() {
        let mut c = Connection::new(Role::Server, 1 << 20);
        assert_eq!(c.close_sent(), None);
        c.close(close_code::POLICY, "slow consumer", Instant::now());
        assert_eq!(c.close_sent(), Some(close_code::POLICY));
        let shared: SharedFrame = std::rc::Rc::from(&b"\x82\x01x"[..]);
        assert!(!c.send_shared(&shared), "no data after our close");

        let mut c = Connection::new(Role::Server, 1 << 20);
        c.receive(
            &mut masked(true, Opcode::Close, b""),
            Instant::now(),
            &mut |_, _| {},
        );
        assert_eq!(c.close_sent(), Some(close_code::NO_STATUS));
    }

    #[test]
    fn close_is_echoed_and_state_is_closed() {
        let mut body = 1000u16.to_be_bytes().to_vec();
        body.extend_from_slice(b"bye");
        let (events, out, state) = run(&masked(true, Opcode::Close, &body), 0);
        assert_eq!(events, vec![OwnedEvent::Closed(Some(1000), "bye".into())]);
        assert_eq!(out, unmasked(Opcode::Close, &body));
        assert_eq!(state, State::Closed);
        let (_, out, _) = run(&masked(true, Opcode::Close, b""), 0);
        assert_eq!(out, unmasked(Opcode::Close, b""));
    }

    #[test]
    fn each_broken_rule_gets_its_close_code() {
        let text_bad = masked(true, Opcode::Text, &[0xce, 0xba, 0xff]);
        let mut rsv = masked(true, Opcode::Text, b"x");
        rsv[0] |= 0x40;
        let mut unmasked_frame = Vec::new();
        encode_frame(&mut unmasked_frame, true, Opcode::Text, None, b"x");
        let mut top_bit = vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0];
        top_bit.extend_from_slice(&[1, 2, 3, 4]);
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("unmasked", unmasked_frame, 1002),
            ("rsv", rsv, 1002),
            (
                "reserved opcode",
                masked(true, Opcode::Reserved(3), b""),
                1002,
            ),
            (
                "reserved control opcode",
                masked(true, Opcode::Reserved(0xB), b""),
                1002,
            ),
            ("long ping", masked(true, Opcode::Ping, &[0; 126]), 1002),
            ("fragmented ping", masked(false, Opcode::Ping, b""), 1002),
            (
                "lonely continuation",
                masked(true, Opcode::Continuation, b"x"),
                1002,
            ),
            ("bad utf8", text_bad, 1007),
            ("close 1 byte", masked(true, Opcode::Close, &[3]), 1002),
            (
                "close code 1005",
                masked(true, Opcode::Close, &1005u16.to_be_bytes()),
                1002,
            ),
            (
                "close code 999",
                masked(true, Opcode::Close, &999u16.to_be_bytes()),
                1002,
            ),
            (
                "close reason utf8",
                masked(true, Opcode::Close, &[3, 232, 0xff]),
                1007,
            ),
            (
                "too big",
                masked(true, Opcode::Binary, &vec![0; MAX + 1]),
                1009,
            ),
            ("top bit length", top_bit, 1002),
            (
                "new message inside fragmented",
                {
                    let mut v = masked(false, Opcode::Text, b"a");
                    v.extend(masked(true, Opcode::Text, b"b"));
                    v
                },
                1002,
            ),
        ];
        for (name, wire, code) in cases {
            for step in [0, 1, 3] {
                let (events, out, state) = run(&wire, step);
                assert_eq!(out_close_code(&out), Some(code), "{name} step {step}");
                assert!(
                    matches!(events.last(), Some(OwnedEvent::Failed(_))),
                    "{name}"
                );
                let closed_by_peer = name.starts_with("close");
                assert!(
                    matches!(state, State::Closing { .. }) || closed_by_peer,
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn messages_before_a_bad_frame_are_answered_first() {
        let mut wire = masked(true, Opcode::Text, b"first");
        wire.extend(masked(true, Opcode::Reserved(5), b""));
        wire.extend(masked(true, Opcode::Text, b"never"));
        let (events, out, _) = run(&wire, 0);
        assert_eq!(
            events[0],
            OwnedEvent::Message(MessageKind::Text, b"first".to_vec())
        );
        assert_eq!(events.len(), 2);
        let first = unmasked(Opcode::Text, b"first");
        assert_eq!(&out[..first.len()], &first[..]);
        assert_eq!(out_close_code(&out), Some(1002));
    }

    #[test]
    fn invalid_utf8_fails_on_the_fragment_that_breaks_it() {
        // κόσμε then a fragment starting with 0xF4 0x90 (above U+10FFFF): fail there, before fin.
        let mut c = Connection::new(Role::Server, MAX);
        let mut failed = None;
        let mut on = |_: &mut Connection, e: Event<'_>| {
            if let Event::Failed(err) = e {
                failed = Some(err);
            }
        };
        c.receive(
            &mut masked(false, Opcode::Text, "κόσμε".as_bytes()),
            Instant::now(),
            &mut on,
        );
        assert_eq!(c.state(), State::Open);
        c.receive(
            &mut masked(false, Opcode::Continuation, &[0xf4, 0x90, 0x80]),
            Instant::now(),
            &mut on,
        );
        assert_eq!(failed, Some(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn invalid_utf8_fails_mid_frame() {
        // One frame whose payload arrives in pieces: fail when the bad byte arrives.
        let wire = masked(true, Opcode::Text, &[b'a', b'b', 0xff, b'c', b'd', b'e']);
        let mut c = Connection::new(Role::Server, MAX);
        let mut failed = 0;
        c.receive(&mut wire[..8].to_vec(), Instant::now(), &mut |_, e| {
            failed += matches!(e, Event::Failed(_)) as u32
        });
        assert_eq!(failed, 0);
        c.receive(&mut wire[8..9].to_vec(), Instant::now(), &mut |_, e| {
            failed += matches!(e, Event::Failed(_)) as u32
        });
        assert_eq!(failed, 1);
    }

    #[test]
    fn after_failing_the_peers_close_closes() {
        let mut wire = masked(true, Opcode::Reserved(3), b"junk");
        wire.extend(masked(true, Opcode::Text, b"ignored"));
        wire.extend(masked(true, Opcode::Close, &1002u16.to_be_bytes()));
        for step in [0, 1, 5] {
            let (events, out, state) = run(&wire, step);
            assert_eq!(state, State::Closed, "step {step}");
            assert_eq!(events.len(), 2);
            // Our close only; the peer's close is not answered a second time.
            assert_eq!(out, {
                let mut c = Connection::new(Role::Server, MAX);
                c.queue_close(1002, &ProtocolError::UnknownOpcode(3).to_string());
                let mut v = Vec::new();
                c.out.flush_to(&mut v).unwrap();
                v
            });
        }
    }

    #[test]
    fn a_malformed_close_ends_the_handshake() {
        for wire in [
            masked(true, Opcode::Close, &[3]),
            masked(true, Opcode::Close, &1005u16.to_be_bytes()),
            masked(true, Opcode::Close, &[0x03, 0xe8, 0xff]),
            masked(true, Opcode::Close, &[0; 126]),
        ] {
            let (events, out, state) = run(&wire, 0);
            assert_eq!(state, State::Closed, "{wire:x?}");
            assert!(matches!(events[..], [OwnedEvent::Failed(_)]));
            assert!(out_close_code(&out).is_some());
        }
    }

    #[test]
    fn server_initiated_close_then_peer_answers() {
        let mut c = Connection::new(Role::Server, MAX);
        c.close(1001, "going away", Instant::now());
        assert_eq!(c.state(), State::Closing { aligned: true });
        assert!(!c.send(MessageKind::Text, b"late"));
        // A message the peer sent before it saw our close still arrives; nothing is sent back.
        let mut got = Vec::new();
        c.receive(
            &mut masked(true, Opcode::Text, b"in flight"),
            Instant::now(),
            &mut |c, e| {
                if let Event::Message(k, d) = e {
                    assert!(!c.send_payload(k, d));
                    got.push(k);
                }
            },
        );
        assert_eq!(got, vec![MessageKind::Text]);
        // A broken rule after our close is reported, with no second close frame.
        let mut probe = Connection::new(Role::Server, 4);
        probe.close(1000, "", Instant::now());
        let queued = probe.out.len();
        let mut failed = None;
        probe.receive(
            &mut masked(true, Opcode::Binary, b"too big"),
            Instant::now(),
            &mut |_, e| {
                if let Event::Failed(err) = e {
                    failed = Some(err);
                }
            },
        );
        assert_eq!(failed, Some(ProtocolError::MessageTooBig));
        assert_eq!(probe.out.len(), queued);
        let mut n = 0;
        c.receive(
            &mut masked(true, Opcode::Close, &1001u16.to_be_bytes()),
            Instant::now(),
            &mut |_, _| n += 1,
        );
        assert_eq!(c.state(), State::Closed);
    }

    #[test]
    fn client_role_masks_and_reads_unmasked() {
        let mut client = Connection::new(Role::Client, MAX);
        client.send(MessageKind::Text, b"hi");
        let mut wire = Vec::new();
        client.out.flush_to(&mut wire).unwrap();
        let (events, out, _) = run(&wire, 0);
        assert_eq!(
            events,
            vec![OwnedEvent::Message(MessageKind::Text, b"hi".to_vec())]
        );
        let mut got = Vec::new();
        client.receive(&mut out.clone(), Instant::now(), &mut |_, e| {
            got.push(OwnedEvent::from(e))
        });
        assert_eq!(
            got,
            vec![OwnedEvent::Message(MessageKind::Text, b"hi".to_vec())]
        );
        // A masked frame to a client is an error.
        let mut bad = masked(true, Opcode::Text, b"x");
        let mut failed = None;
        client.receive(&mut bad, Instant::now(), &mut |_, e| {
            if let Event::Failed(err) = e {
                failed = Some(err)
            }
        });
        assert_eq!(failed, Some(ProtocolError::MaskedFrame));
    }

    fn timed(ping: Option<u64>, t0: Instant) -> Connection {
        let mut c = Connection::new(Role::Server, MAX);
        let timeouts = Timeouts {
            ping_interval: ping.map(Duration::from_secs),
            pong_timeout: Duration::from_secs(10),
            close: Duration::from_secs(3),
            send: Duration::from_secs(30),
        };
        c.set_timeouts(Rc::new(timeouts), t0);
        c
    }

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    fn drain(c: &mut Connection) -> Vec<u8> {
        let mut out = Vec::new();
        c.out.flush_to(&mut out).unwrap();
        out
    }

    #[test]
    fn keepalive_pings_a_silent_peer_then_drops_it() {
        let t0 = Instant::now();
        let mut c = timed(Some(30), t0);
        assert_eq!(c.poll_timeout(), Some(secs(t0, 30)));
        assert_eq!(c.handle_timeout(secs(t0, 29)), None);
        assert!(c.out.is_empty());
        // Due: a ping goes out and the pong deadline starts.
        assert_eq!(c.handle_timeout(secs(t0, 30)), None);
        assert_eq!(drain(&mut c), vec![0x89, 0x00]);
        assert_eq!(c.poll_timeout(), Some(secs(t0, 40)));
        assert_eq!(c.handle_timeout(secs(t0, 40)), Some(Expired::PongTimeout));
    }

    #[test]
    fn any_frame_from_the_peer_counts_as_life() {
        let t0 = Instant::now();
        let mut c = timed(Some(30), t0);
        c.handle_timeout(secs(t0, 30));
        drain(&mut c);
        // Not a pong: a data message also proves the peer is there.
        c.receive(
            &mut masked(true, Opcode::Text, b"hi"),
            secs(t0, 35),
            &mut |_, _| {},
        );
        assert_eq!(c.poll_timeout(), Some(secs(t0, 65)));
        assert_eq!(c.handle_timeout(secs(t0, 40)), None);
        assert!(
            c.out.is_empty(),
            "no ping before a whole interval of silence"
        );
        // Activity moves the deadline later, never earlier.
        c.receive(
            &mut masked(true, Opcode::Pong, b""),
            secs(t0, 60),
            &mut |_, _| {},
        );
        assert_eq!(c.poll_timeout(), Some(secs(t0, 90)));
    }

    #[test]
    fn no_keepalive_when_the_interval_is_off() {
        let t0 = Instant::now();
        let mut c = timed(None, t0);
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(c.handle_timeout(secs(t0, 100_000)), None);
        assert!(c.out.is_empty());
    }

    #[test]
    fn closing_gives_the_peer_the_close_timeout_and_stops_pings() {
        let t0 = Instant::now();
        let mut c = timed(Some(30), t0);
        c.close(1000, "bye", secs(t0, 5));
        assert_eq!(c.poll_timeout(), Some(secs(t0, 8)));
        assert_eq!(c.handle_timeout(secs(t0, 8)), Some(Expired::CloseTimeout));
        // A protocol error starts the same wait.
        let mut c = timed(Some(30), t0);
        c.receive(
            &mut unmasked(Opcode::Text, b"x"),
            secs(t0, 1),
            &mut |_, _| {},
        );
        assert!(matches!(c.state(), State::Closing { .. }));
        assert_eq!(c.poll_timeout(), Some(secs(t0, 4)));
    }

    #[test]
    fn send_timeout_counts_from_the_last_progress() {
        let t0 = Instant::now();
        let mut c = timed(None, t0);
        c.send(MessageKind::Binary, &[0; 100]);
        c.flushed(t0, false);
        assert_eq!(c.poll_timeout(), Some(secs(t0, 30)));
        c.flushed(secs(t0, 20), true);
        assert_eq!(c.poll_timeout(), Some(secs(t0, 50)));
        assert_eq!(c.handle_timeout(secs(t0, 49)), None);
        assert_eq!(c.handle_timeout(secs(t0, 50)), Some(Expired::SendTimeout));
        // Once everything is written, nothing is due.
        let mut c = timed(None, t0);
        c.send(MessageKind::Binary, &[0; 100]);
        c.flushed(t0, false);
        drain(&mut c);
        c.flushed(secs(t0, 1), true);
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn a_large_header_alone_reserves_nothing_near_its_length() {
        let mut c = Connection::new(Role::Server, 64 << 20);
        let mut head = [0u8; MAX_HEADER_LEN];
        let n = encode_header(
            &mut head,
            true,
            Opcode::Binary,
            Some([1, 2, 3, 4]),
            60 << 20,
        );
        c.receive(&mut head[..n], Instant::now(), &mut |_, _| {});
        let (buf, left) = c.payload_room(16 * 1024).expect("a data frame in progress");
        assert_eq!(left, 60 << 20);
        assert!(buf.capacity() <= 64 * 1024, "reserved {}", buf.capacity());
        // It grows as bytes arrive: at most doubling what is there.
        let mut arrived = 0usize;
        while arrived < 1 << 20 {
            let (buf, _) = c.payload_room(16 * 1024).unwrap();
            let n = buf.capacity() - buf.len();
            buf.resize(buf.len() + n, 0x55);
            arrived += n;
            c.payload_appended(n, Instant::now(), &mut |_, _| {});
        }
        let (buf, _) = c.payload_room(16 * 1024).unwrap();
        assert!(
            buf.capacity() <= 2 * arrived + 64 * 1024,
            "{} for {arrived}",
            buf.capacity()
        );
    }

    #[test]
    fn a_quiet_connection_gives_back_its_message_state() {
        let mut c = Connection::new(Role::Server, MAX);
        let mut echo = |c: &mut Connection, e: Event<'_>| {
            if let Event::Message(k, d) = e {
                c.send_payload(k, d);
            }
        };
        // A whole frame in one read needs no state of its own.
        let mut whole = masked(true, Opcode::Text, b"hello");
        c.receive(&mut whole, Instant::now(), &mut echo);
        assert!(c.inbound.is_none());
        // A frame split over reads does, until the sweep finds the connection quiet.
        let frame = masked(true, Opcode::Binary, &[7u8; 300]);
        let (a, b) = frame.split_at(100);
        c.receive(&mut a.to_vec(), Instant::now(), &mut echo);
        assert!(!c.at_frame_boundary());
        c.shrink();
        assert!(c.inbound.is_some(), "a frame in progress keeps its state");
        c.receive(&mut b.to_vec(), Instant::now(), &mut echo);
        assert!(c.at_frame_boundary());
        let mut out = Vec::new();
        assert!(c.out.flush_to(&mut out).unwrap());
        assert_eq!(out.len(), 2 + 5 + 4 + 300);
        c.shrink();
        assert!(c.inbound.is_none());
        assert!(c.out.is_empty());
        assert_eq!(c.out.len(), 0);
        // And it still works afterwards: a header split over reads.
        let mut frame = masked(true, Opcode::Text, b"again");
        let (a, b) = frame.split_at_mut(1);
        c.receive(a, Instant::now(), &mut echo);
        c.receive(b, Instant::now(), &mut echo);
        let mut out = Vec::new();
        c.out.flush_to(&mut out).unwrap();
        assert_eq!(out, unmasked(Opcode::Text, b"again"));
    }
}

#[cfg(test)]
mod deflate_tests;
