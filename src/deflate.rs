//! permessage-deflate (RFC 7692), sans-I/O: the negotiation of `Sec-WebSocket-Extensions`, a
//! compressor for whole messages and an inflater that takes a message in pieces under a size limit.
//!
//! Nothing here sees a socket. The loop picks the memory mode (`--deflate`): `shared` keeps one
//! [`Compressor`] and one [`Inflater`] per event loop and negotiates no context takeover both
//! ways, so a connection holds no compression state; `dedicated` gives each connection its own,
//! allocated on the first compressed message and given back by `release()`.
//! The DEFLATE coder itself is zlib-rs (a pure-Rust port of zlib); everything around it is here.

use std::borrow::Cow;

use zlib_rs::{Deflate, DeflateFlush, Inflate, InflateFlush, Status};

pub use crate::error::DeflateError;
use crate::frame::Role;

pub mod codec;
pub use codec::{PerMessage, SharedCodec};

/// The extension token (RFC 7692 §5).
pub const EXTENSION: &str = "permessage-deflate";

/// What a sync flush leaves at the end of every message, removed by the sender and appended
/// again by the receiver (RFC 7692 §7.2.1, §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// zlib cannot produce a raw stream with an 8-bit window (it silently uses 9), so the smallest
/// window we promise for our own compressor is 9.
const MIN_OWN_WINDOW: u8 = 9;

/// How compression state is held, chosen by `--deflate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeflateMode {
    /// No permessage-deflate: offers are declined.
    Off,
    /// One compressor and one inflater per event loop, reset for every message: no state per
    /// connection, at the cost of ratio (no context takeover either way).
    Shared,
    /// Context takeover both ways where the client allows it: the best ratio, with state per
    /// connection, allocated on the first compressed message.
    Dedicated,
}

/// The settings of the extension (one per server; the flags `--deflate*` fill it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeflateConfig {
    pub mode: DeflateMode,
    /// The LZ77 window (log2 bytes, 9..=15) our compressor uses at most.
    pub window_bits: u8,
    /// The window (9..=15) we ask of a client's compressor when it lets us (`client_max_window_bits`).
    pub client_window_bits: u8,
    /// zlib's memLevel (1..=9): the size of the compressor's hash table and block buffer.
    pub mem_level: u8,
    /// Compression level, 1 (fastest) ..= 9 (smallest). Level 0 (store) never pays, and zlib-rs
    /// 0.6.8 panics in it with a small memLevel (found by the `inflate` fuzz target).
    pub level: u8,
    /// Messages shorter than this are sent uncompressed.
    pub threshold: usize,
}

/// The defaults of the `--deflate*` flags (measured with `cargo bench --bench deflate`).
impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            mode: DeflateMode::Shared,
            window_bits: 13,
            client_window_bits: 13,
            mem_level: 4,
            level: 2,
            threshold: 64,
        }
    }
}

impl From<&crate::Config> for DeflateConfig {
    fn from(c: &crate::Config) -> Self {
        DeflateConfig {
            mode: c.deflate,
            window_bits: c.deflate_window_bits,
            client_window_bits: c.deflate_window_bits,
            mem_level: c.deflate_mem_level,
            level: c.deflate_level,
            threshold: c.deflate_threshold,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sec-WebSocket-Extensions syntax (RFC 6455 §9.1)

/// One element of an extension list: `name *( ";" param [ "=" value ] )`.
#[derive(Debug, PartialEq, Eq)]
struct Element<'a> {
    name: &'a [u8],
    params: Vec<Param<'a>>,
}

/// `name [ "=" value ]`; a quoted value is unescaped.
type Param<'a> = (&'a [u8], Option<Cow<'a, [u8]>>);

/// `tchar` of RFC 9110 §5.6.2, which RFC 6455 §9.1 uses for names and values.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads a header value as a list of elements; a malformed element is `Err` (and declined), the
/// rest of the list still counts. Empty elements (`a,,b`) are skipped as RFC 9110 §5.6.1 allows.
fn parse_list(s: &[u8]) -> Vec<Result<Element<'_>, ()>> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        skip_ows(s, &mut i);
        if i >= s.len() {
            return out;
        }
        if s[i] == b',' {
            i += 1;
            continue;
        }
        let element = parse_element(s, &mut i);
        if element.is_err() {
            skip_to_comma(s, &mut i);
        }
        out.push(element);
        if i < s.len() {
            i += 1; // the comma
        }
    }
}

/// Parses one element up to (not past) the next top-level comma or the end.
fn parse_element<'a>(s: &'a [u8], i: &mut usize) -> Result<Element<'a>, ()> {
    let name = token(s, i).ok_or(())?;
    let mut params = Vec::new();
    loop {
        skip_ows(s, i);
        match s.get(*i) {
            None | Some(b',') => return Ok(Element { name, params }),
            Some(b';') => *i += 1,
            Some(_) => return Err(()),
        }
        skip_ows(s, i);
        let key = token(s, i).ok_or(())?;
        skip_ows(s, i);
        let value = if s.get(*i) == Some(&b'=') {
            *i += 1;
            skip_ows(s, i);
            Some(match s.get(*i) {
                Some(b'"') => quoted(s, i)?,
                _ => Cow::Borrowed(token(s, i).ok_or(())?),
            })
        } else {
            None
        };
        params.push((key, value));
    }
}

fn skip_ows(s: &[u8], i: &mut usize) {
    while matches!(s.get(*i), Some(b' ' | b'\t')) {
        *i += 1;
    }
}

fn token<'a>(s: &'a [u8], i: &mut usize) -> Option<&'a [u8]> {
    let start = *i;
    while s.get(*i).is_some_and(|&b| is_tchar(b)) {
        *i += 1;
    }
    (*i > start).then(|| &s[start..*i])
}

/// A quoted-string (RFC 9110 §5.6.4); §9.1 of RFC 6455 requires its unescaped value to be a token.
fn quoted<'a>(s: &'a [u8], i: &mut usize) -> Result<Cow<'a, [u8]>, ()> {
    *i += 1;
    let start = *i;
    let mut owned: Option<Vec<u8>> = None;
    loop {
        match *s.get(*i).ok_or(())? {
            b'"' => break,
            b'\\' => {
                let escaped = *s.get(*i + 1).ok_or(())?;
                owned
                    .get_or_insert_with(|| s[start..*i].to_vec())
                    .push(escaped);
                *i += 2;
            }
            b => {
                if let Some(v) = &mut owned {
                    v.push(b);
                }
                *i += 1;
            }
        }
    }
    let value = match owned {
        Some(v) => Cow::Owned(v),
        None => Cow::Borrowed(&s[start..*i]),
    };
    *i += 1;
    if value.is_empty() || !value.iter().all(|&b| is_tchar(b)) {
        return Err(());
    }
    Ok(value)
}

/// Skips to the next comma outside a quoted string (after a malformed element).
fn skip_to_comma(s: &[u8], i: &mut usize) {
    let mut in_quotes = false;
    while let Some(&b) = s.get(*i) {
        match b {
            b'"' => in_quotes = !in_quotes,
            b'\\' if in_quotes => *i += 1,
            b',' if !in_quotes => return,
            _ => {}
        }
        *i += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// Negotiation (RFC 7692 §5, §7.1)

/// The four parameters of one permessage-deflate offer or response, checked for §7.1's rules:
/// known names only, none repeated, window values 8..=15 without leading zeros.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Params {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value (allowed in an offer only, §7.1.2.2).
    client_max_window_bits: Option<Option<u8>>,
}

impl Params {
    fn parse(element: &Element<'_>) -> Result<Params, &'static str> {
        let mut p = Params::default();
        let mut seen = [false; 4];
        for (key, value) in &element.params {
            let index = match key.to_ascii_lowercase().as_slice() {
                b"server_no_context_takeover" => 0,
                b"client_no_context_takeover" => 1,
                b"server_max_window_bits" => 2,
                b"client_max_window_bits" => 3,
                _ => return Err("unknown parameter"),
            };
            // §7.1: "has multiple parameters with the same name" → decline.
            if std::mem::replace(&mut seen[index], true) {
                return Err("repeated parameter");
            }
            let bits = value.as_deref().map(window_bits).transpose()?;
            match (index, bits) {
                (0, None) if value.is_none() => p.server_no_context_takeover = true,
                (1, None) if value.is_none() => p.client_no_context_takeover = true,
                (2, Some(b)) => p.server_max_window_bits = Some(b),
                (3, b) => p.client_max_window_bits = Some(b),
                (0 | 1, _) => return Err("no_context_takeover takes no value"),
                _ => return Err("server_max_window_bits needs a value"),
            }
        }
        Ok(p)
    }
}

/// §7.1.2.1: "a decimal integer value without leading zeroes between 8 to 15, inclusive".
fn window_bits(v: &[u8]) -> Result<u8, &'static str> {
    match v {
        [d @ b'8'..=b'9'] => Ok(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Ok(10 + d - b'0'),
        _ => Err("window bits not 8..15"),
    }
}

/// What both ends agreed on for one connection: the effective parameters, and which of them the
/// response states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreed {
    /// The server resets its compressor for every message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor for every message.
    pub client_no_context_takeover: bool,
    /// The largest window the server's compressor uses (what the client must inflate with).
    pub server_window_bits: u8,
    /// The largest window the client's compressor uses.
    pub client_window_bits: u8,
    /// The window values the response states (§7.1.2: only when the offer had the parameter).
    server_max_window_bits: Option<u8>,
    client_max_window_bits: Option<u8>,
}

impl Agreed {
    /// Appends the `Sec-WebSocket-Extensions` response value that states exactly this agreement.
    pub fn write_header(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(EXTENSION.as_bytes());
        if self.server_no_context_takeover {
            out.extend_from_slice(b"; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            out.extend_from_slice(b"; client_no_context_takeover");
        }
        if let Some(b) = self.server_max_window_bits {
            out.extend_from_slice(format!("; server_max_window_bits={b}").as_bytes());
        }
        if let Some(b) = self.client_max_window_bits {
            out.extend_from_slice(format!("; client_max_window_bits={b}").as_bytes());
        }
    }

    /// Whether `role`'s own compressor keeps its context from one message to the next.
    fn keeps_context(&self, role: Role) -> bool {
        match role {
            Role::Server => !self.server_no_context_takeover,
            Role::Client => !self.client_no_context_takeover,
        }
    }

    fn window_of(&self, role: Role) -> u8 {
        match role {
            Role::Server => self.server_window_bits,
            Role::Client => self.client_window_bits,
        }
    }

    fn peer(role: Role) -> Role {
        match role {
            Role::Server => Role::Client,
            Role::Client => Role::Server,
        }
    }

    /// The compressor `role` sends with on this connection (dedicated mode; nothing allocated yet).
    pub fn compressor(&self, role: Role, cfg: &DeflateConfig) -> Compressor {
        Compressor::new(self.window_of(role), self.keeps_context(role), cfg)
    }

    /// The inflater `role` receives with on this connection (dedicated mode; nothing allocated yet).
    /// It uses the peer's negotiated window, but at least 9: a zlib peer told 8 uses 9 (§7.1.2.2).
    pub fn inflater(&self, role: Role) -> Inflater {
        let peer = Self::peer(role);
        Inflater::new(self.window_of(peer), self.keeps_context(peer))
    }

    /// Whether a message compressed alone (fresh context) with a `window_bits` window can be sent
    /// as-is to this server connection's client: the client inflates with at least our window.
    pub fn takes_shared_frame(&self, window_bits: u8) -> bool {
        window_bits <= self.server_window_bits
    }
}

/// The server's answer to the offers of a request, RFC 7692 §5: the first acceptable
/// permessage-deflate offer, in order, across every `Sec-WebSocket-Extensions` line. Offers with
/// unknown, repeated or invalid parameters are declined (the handshake goes on without the
/// extension); other extensions are skipped.
pub fn negotiate<'a>(
    header_values: impl IntoIterator<Item = &'a [u8]>,
    cfg: &DeflateConfig,
) -> Option<Agreed> {
    if cfg.mode == DeflateMode::Off {
        return None;
    }
    for value in header_values {
        for element in parse_list(value).into_iter().flatten() {
            if !element.name.eq_ignore_ascii_case(EXTENSION.as_bytes()) {
                continue;
            }
            let Ok(offer) = Params::parse(&element) else {
                continue;
            };
            if let Some(agreed) = accept_offer(&offer, cfg) {
                return Some(agreed);
            }
        }
    }
    None
}

/// The answer to one valid offer, or `None` when we cannot honour it.
fn accept_offer(offer: &Params, cfg: &DeflateConfig) -> Option<Agreed> {
    let shared = cfg.mode == DeflateMode::Shared;
    let own = cfg.window_bits.clamp(MIN_OWN_WINDOW, 15);
    // §7.1.2.1: answered with the same or a smaller value. zlib cannot make 8: decline.
    let (server_window_bits, server_max_window_bits) = match offer.server_max_window_bits {
        Some(b) if b < MIN_OWN_WINDOW => return None,
        Some(b) => (b.min(own), Some(b.min(own))),
        None => (own, None),
    };
    // §7.1.2.2: only when offered; then any value 8..=offered (the client said it can).
    let client_max_window_bits = match offer.client_max_window_bits {
        Some(offered) if !shared => {
            let limit = cfg.client_window_bits.clamp(8, 15);
            let b = offered.unwrap_or(15).min(limit);
            (offered.is_some() || b < 15).then_some(b)
        }
        _ => None,
    };
    let client_window_bits = client_max_window_bits
        .or(offer.client_max_window_bits.flatten())
        .unwrap_or(15);
    Some(Agreed {
        // §7.1.1.1: an offer with server_no_context_takeover is only accepted by stating it.
        server_no_context_takeover: offer.server_no_context_takeover || shared,
        // §7.1.1.2: the server may ask this of any client; shared mode needs it.
        client_no_context_takeover: offer.client_no_context_takeover || shared,
        server_window_bits,
        client_window_bits,
        server_max_window_bits,
        client_max_window_bits,
    })
}

/// The offer `wsloop client` sends (one permessage-deflate element).
pub fn client_offer(cfg: &DeflateConfig) -> String {
    let mut s = String::from(EXTENSION);
    if cfg.mode == DeflateMode::Shared {
        s.push_str("; server_no_context_takeover; client_no_context_takeover");
    }
    if cfg.window_bits < 15 {
        s.push_str(&format!(
            "; server_max_window_bits={}",
            cfg.window_bits.max(8)
        ));
    }
    // We can honour any window the server asks of us (down to 9).
    s.push_str("; client_max_window_bits");
    s
}

/// The client's check of the server's `Sec-WebSocket-Extensions` answer to
/// [`client_offer`]`(cfg)`: anything not offered, or invalid, fails the connection
/// (RFC 6455 §9.1, RFC 7692 §7.1).
pub fn accept_response(value: &[u8], cfg: &DeflateConfig) -> Result<Agreed, DeflateError> {
    let bad = DeflateError::BadResponse;
    let list = parse_list(value);
    let [Ok(element)] = list.as_slice() else {
        return Err(bad("not exactly one well-formed extension"));
    };
    if !element.name.eq_ignore_ascii_case(EXTENSION.as_bytes()) || cfg.mode == DeflateMode::Off {
        return Err(bad("an extension that was not offered"));
    }
    let p = Params::parse(element).map_err(bad)?;
    let shared = cfg.mode == DeflateMode::Shared;
    // §7.1.1.1: an offered server_no_context_takeover must be in the answer.
    if shared && !p.server_no_context_takeover {
        return Err(bad("server_no_context_takeover missing"));
    }
    let asked = (cfg.window_bits < 15).then_some(cfg.window_bits.max(8));
    let server_window_bits = match (asked, p.server_max_window_bits) {
        (Some(_), None) => return Err(bad("server_max_window_bits missing")),
        (Some(a), Some(b)) if b > a => return Err(bad("server_max_window_bits above the offer")),
        (_, b) => b.unwrap_or(15),
    };
    let client_window_bits = match p.client_max_window_bits {
        None => cfg.window_bits.clamp(MIN_OWN_WINDOW, 15),
        Some(None) => return Err(bad("client_max_window_bits without a value")),
        Some(Some(b)) if b < MIN_OWN_WINDOW => {
            return Err(bad("client_max_window_bits=8 cannot be produced"))
        }
        Some(Some(b)) => b.min(cfg.window_bits.clamp(MIN_OWN_WINDOW, 15)),
    };
    Ok(Agreed {
        server_no_context_takeover: p.server_no_context_takeover,
        // The server may ask this of us without our offer; shared mode does it anyway.
        client_no_context_takeover: p.client_no_context_takeover || shared,
        server_window_bits,
        client_window_bits,
        server_max_window_bits: p.server_max_window_bits,
        client_max_window_bits: p.client_max_window_bits.flatten(),
    })
}

// ---------------------------------------------------------------------------------------------
// Compression (RFC 7692 §7.2.1)

/// Compresses whole messages into raw DEFLATE with the sync-flush tail removed. The zlib state is
/// allocated on the first message worth compressing and given back by [`Compressor::release`].
pub struct Compressor {
    state: Option<Deflate>,
    window_bits: u8,
    mem_level: u8,
    level: u8,
    threshold: usize,
    keep_context: bool,
    /// The state holds history the peer does not have (a message that did not pay, or a frame
    /// sent from another compressor): start a fresh stream before the next message.
    stale: bool,
}

impl Compressor {
    /// A compressor with a `window_bits` window (9..=15). With `keep_context` false it resets
    /// before every message (`*_no_context_takeover`, and the loop's shared compressor).
    pub fn new(window_bits: u8, keep_context: bool, cfg: &DeflateConfig) -> Self {
        Compressor {
            state: None,
            window_bits: window_bits.clamp(MIN_OWN_WINDOW, 15),
            mem_level: cfg.mem_level.clamp(1, 9),
            // zlib-rs 0.6.8 panics in level 1 (deflate_quick) on poorly compressible input
            // at every memLevel (found by Autobahn case 12.2.3): level 2 is the fastest safe one.
            level: cfg.level.clamp(2, 9),
            threshold: cfg.threshold,
            keep_context,
            stale: false,
        }
    }

    /// The window this compressor uses (for [`Agreed::takes_shared_frame`]).
    pub fn window_bits(&self) -> u8 {
        self.window_bits
    }

    /// Compresses one whole message payload, appending it to `out`. `Ok(true)`: send what was
    /// appended with RSV1 set. `Ok(false)`: nothing appended; compression would not pay (below
    /// the threshold, or no smaller), send the payload uncompressed with RSV1 clear.
    pub fn compress(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<bool, DeflateError> {
        // An empty message never pays, and zlib emits no second flush marker in a row for it.
        if payload.is_empty() || payload.len() < self.threshold {
            return Ok(false);
        }
        let start = out.len();
        let state = match &mut self.state {
            Some(s) => {
                if self.stale || !self.keep_context {
                    // A fresh state needs no reset (it clears the hash table); one that took
                    // input, or holds output a full budget cut off, does.
                    if s.total_in() > 0 || s.total_out() > 0 {
                        s.reset();
                    }
                    self.stale = false;
                }
                s
            }
            None => self
                .state
                .insert(Deflate::new_with_config(zlib_rs::DeflateConfig {
                    level: i32::from(self.level),
                    window_bits: -i32::from(self.window_bits),
                    mem_level: i32::from(self.mem_level),
                    ..zlib_rs::DeflateConfig::default()
                })),
        };
        // It pays only when shorter than the payload once the 4-byte tail is gone.
        let budget = payload.len() + TAIL.len() - 1;
        // zlib-rs 0.6.8 can panic ("buf.len() must fit in remaining()", in a stored block)
        // when output room runs short mid-message (Autobahn 12.2.3): give it room for the
        // worst case (stored blocks: 5 bytes per 16 KiB, plus the flush) and judge at the end.
        out.reserve(payload.len() + payload.len() / 1024 * 5 + 64);
        let mut consumed = 0;
        loop {
            if out.capacity() == out.len() {
                out.reserve(payload.len() / 2 + 64);
            }
            let room = out.capacity() - out.len();
            let spare = &mut out.spare_capacity_mut()[..room];
            let (in_before, out_before) = (state.total_in(), state.total_out());
            let result =
                state.compress_uninit(&payload[consumed..], spare, DeflateFlush::SyncFlush);
            let made = (state.total_out() - out_before) as usize;
            consumed += (state.total_in() - in_before) as usize;
            // SAFETY: zlib initialised the `made` bytes it reports after the old length.
            unsafe { out.set_len(out.len() + made) };
            if result.is_err() {
                out.truncate(start);
                self.state = None;
                return Err(DeflateError::Internal);
            }
            // A sync flush is complete when input is used up and output room was left over.
            if consumed == payload.len() && made < room {
                break;
            }
        }
        if !out.ends_with(&TAIL) {
            out.truncate(start);
            self.state = None;
            return Err(DeflateError::Internal);
        }
        if out.len() - start >= budget {
            // Those bytes went into the window but will not reach the peer (§7.2.1 note).
            out.truncate(start);
            self.stale = true;
            return Ok(false);
        }
        out.truncate(out.len() - TAIL.len());
        Ok(true)
    }

    /// The peer's window received bytes this compressor did not produce (a frame compressed
    /// once for a whole room): the next message must not refer back past them.
    pub fn forget(&mut self) {
        self.stale = true;
    }

    /// Gives the zlib state back (a quiet connection). Always allowed: the next message starts a
    /// fresh stream, which any peer inflates; only the ratio of that one message suffers.
    pub fn release(&mut self) {
        self.state = None;
        self.stale = false;
    }

    /// Whether zlib state is allocated now.
    pub fn is_allocated(&self) -> bool {
        self.state.is_some()
    }
}

// ---------------------------------------------------------------------------------------------
// Inflation (RFC 7692 §7.2.2)

/// Inflates messages that arrive in pieces, appending to a caller's buffer and stopping as soon
/// as the inflated size would pass a limit (a small message must not become gigabytes).
/// A shared (per-loop) inflater must get each message whole (`fin` on the one call): state in
/// the middle of one connection's message cannot serve another.
pub struct Inflater {
    state: Option<Inflate>,
    window_bits: u8,
    keep_context: bool,
    /// Inflated bytes of the current message.
    produced: usize,
    /// The stream ended (a block with BFINAL, §7.2.3.4): the rest of the message is ignored.
    ended: bool,
    /// A message is half inflated.
    mid_message: bool,
    /// Reset before the next message.
    stale: bool,
}

impl Inflater {
    /// An inflater for a peer whose compressor uses at most `window_bits` (raised to 9: a zlib
    /// peer that agreed to 8 uses 9). `keep_context` false: the peer resets every message.
    pub fn new(window_bits: u8, keep_context: bool) -> Self {
        Inflater {
            state: None,
            window_bits: window_bits.clamp(MIN_OWN_WINDOW, 15),
            keep_context,
            produced: 0,
            ended: false,
            mid_message: false,
            stale: false,
        }
    }

    /// Inflates the next piece of a compressed message (`fin` on the last piece: the tail is
    /// appended then), appending the output to `out`; returns how many bytes were appended, so a
    /// text message can be UTF-8-checked as it comes out. `TooBig` as soon as the message's
    /// inflated size would pass `limit`, before more than `limit + 1` bytes are reserved.
    pub fn inflate(
        &mut self,
        input: &[u8],
        fin: bool,
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<usize, DeflateError> {
        let start = out.len();
        let mut result = self.feed(input, out, limit);
        if fin && result.is_ok() {
            result = self.feed(&TAIL, out, limit);
        }
        if result.is_err() {
            // Whatever the caller does next, this state is not to be trusted again.
            self.stale = true;
        }
        self.mid_message = !fin && result.is_ok();
        if !self.mid_message {
            self.produced = 0;
            self.stale |= !self.keep_context || self.ended;
            self.ended = false;
        }
        result.map(|()| out.len() - start)
    }

    fn feed(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), DeflateError> {
        if !self.mid_message && self.stale {
            self.reset();
        }
        self.mid_message = true;
        let window_bits = self.window_bits;
        let state = self
            .state
            .get_or_insert_with(|| Inflate::new(false, window_bits));
        while !self.ended {
            // Room for one byte past the limit: getting it is how we know the limit is passed.
            let allowed = limit.saturating_sub(self.produced).saturating_add(1);
            if out.capacity() == out.len() {
                out.reserve_exact(out.len().clamp(4096, 1 << 20).min(allowed));
            }
            let room = (out.capacity() - out.len()).min(allowed);
            let spare = &mut out.spare_capacity_mut()[..room];
            let (in_before, out_before) = (state.total_in(), state.total_out());
            let status = state.decompress_uninit(input, spare, InflateFlush::NoFlush);
            let made = (state.total_out() - out_before) as usize;
            let used = (state.total_in() - in_before) as usize;
            input = &input[used..];
            // SAFETY: zlib initialised the `made` bytes it reports after the old length.
            unsafe { out.set_len(out.len() + made) };
            self.produced += made;
            if self.produced > limit {
                out.truncate(out.len() - made);
                return Err(DeflateError::TooBig);
            }
            match status {
                Err(_) => return Err(DeflateError::InvalidData),
                Ok(Status::StreamEnd) => self.ended = true,
                Ok(Status::Ok | Status::BufError) => {
                    // Done when the input is used up and zlib did not fill the room it had.
                    if (input.is_empty() && made < room) || (made == 0 && used == 0) {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.stale = false;
        if let Some(state) = &mut self.state {
            if self.window_bits == 15 {
                state.reset(false);
            } else {
                // zlib-rs's reset restores the default window; keep ours.
                *state = Inflate::new(false, self.window_bits);
            }
        }
    }

    /// Abandons a message half inflated (its connection failed): the next message, maybe
    /// another connection's, starts from a fresh state.
    pub fn abort(&mut self) {
        self.mid_message = false;
        self.produced = 0;
        self.ended = false;
        self.stale = true;
    }

    /// Gives the zlib state back between messages when the peer keeps no context; `false` (kept)
    /// when the peer may still refer to earlier messages or a message is half inflated.
    pub fn release(&mut self) -> bool {
        if self.keep_context || self.mid_message {
            return false;
        }
        self.state = None;
        self.stale = false;
        true
    }

    /// Whether zlib state is allocated now.
    pub fn is_allocated(&self) -> bool {
        self.state.is_some()
    }
}

#[cfg(test)]
mod tests;
