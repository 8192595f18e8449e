//! TLS 1.3 record protection (RFC 8446 §5) for a connection whose handshake rustls has
//! finished. rustls hands over the traffic keys through its kernel-TLS interface
//! ([`KernelConnection`]) and still derives the next ones on a KeyUpdate; what kTLS would do
//! in the kernel is done here, in the loop. Records are opened where the socket put them and
//! sealed straight from the outbox into the output buffer: no per-record allocation, copy or
//! trip through rustls's state machine, which at small messages cost more than the cipher.
//!
//! Pure: bytes in, plaintext and records out; no socket. The next keys come from a
//! [`NextKeys`], so that tests and the fuzzer can drive it without a handshake.

use std::fmt;

use super::aead::{Aead, Algorithm, TAG};
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets, SupportedCipherSuite};

/// A record header: type, legacy version, length (RFC 8446 §5.1).
pub const HEADER: usize = 5;
/// Plaintext per record at most (RFC 8446 §5.1: 2^14 bytes).
pub const MAX_PLAIN: usize = 1 << 14;
/// A protected record's length at most (RFC 8446 §5.2: 2^14 + 256).
const MAX_CIPHER: usize = MAX_PLAIN + 256;

/// `ContentType` values (RFC 8446 §5.1).
pub const ALERT: u8 = 21;
pub const HANDSHAKE: u8 = 22;
pub const APPLICATION_DATA: u8 = 23;
/// `HandshakeType.key_update` (RFC 8446 §4).
pub const KEY_UPDATE: u8 = 24;
/// `AlertDescription` values (RFC 8446 §6).
pub const CLOSE_NOTIFY: u8 = 0;
pub const USER_CANCELED: u8 = 90;

/// KeyUpdates accepted in a row without application data between them; more is a peer
/// making us derive keys for nothing (rustls draws the same line).
const MAX_KEY_UPDATES: u8 = 32;

/// One direction's key, static IV and sequence number (RFC 8446 §5.3).
struct Direction {
    key: Aead,
    iv: [u8; 12],
    seq: u64,
}

impl Direction {
    fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> Result<Self, RecordError> {
        let (alg, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Algorithm::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Algorithm::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (Algorithm::Chacha20Poly1305, key, iv)
            }
            _ => return Err(RecordError::Keys("an AEAD this layer does not know".into())),
        };
        let key = Aead::new(alg, key.as_ref())
            .map_err(|_| RecordError::Keys("the AEAD refused the key".into()))?;
        let iv = iv
            .as_ref()
            .try_into()
            .map_err(|_| RecordError::Keys("an IV that is not 12 bytes".into()))?;
        Ok(Direction { key, iv, seq })
    }

    /// The per-record nonce: the sequence number, big-endian and left-padded, XORed with
    /// the static IV (RFC 8446 §5.3). Each sequence number is used once.
    fn next_nonce(&mut self) -> Result<[u8; 12], RecordError> {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        // RFC 8446 §5.3: the sequence number must not wrap; rekeying comes long before.
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or(RecordError::SequenceExhausted)?;
        Ok(nonce)
    }
}

/// Why a record was refused; each maps to the alert that says so (RFC 8446 §6.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// A record of a type other than application_data after the handshake (§5).
    UnexpectedType(u8),
    /// A record over 2^14 + 256 bytes, or an inner plaintext (content, type and padding)
    /// over 2^14 + 1 (§5.2, §5.4).
    Overflow(usize),
    /// The record did not authenticate (§5.2).
    BadMac,
    /// A plaintext of padding only, without a content type (§5.4).
    NoContentType,
    /// A post-handshake message other than KeyUpdate (§4.6), or a KeyUpdate not alone at the
    /// end of its record (§5.1: messages before a key change align with a record boundary).
    UnexpectedHandshake(u8),
    /// Too many KeyUpdates without data between them.
    KeyUpdateFlood,
    /// A KeyUpdate or alert that does not parse (§4.6.3, §6).
    Malformed(&'static str),
    /// A `request_update` other than 0 or 1 (§4.6.3).
    IllegalKeyUpdate(u8),
    /// The peer ended the connection with an error alert (§6.2).
    PeerAlert(u8),
    /// A sequence number would wrap (§5.3).
    SequenceExhausted,
    /// rustls could not give the next keys, or the AEAD refused them.
    Keys(String),
}

impl RecordError {
    /// The alert to send for it, if any (`AlertDescription`, RFC 8446 §6).
    pub fn alert(&self) -> Option<u8> {
        Some(match self {
            RecordError::UnexpectedType(_)
            | RecordError::NoContentType
            | RecordError::UnexpectedHandshake(_)
            | RecordError::KeyUpdateFlood => 10, // unexpected_message
            RecordError::Overflow(_) => 22,         // record_overflow
            RecordError::BadMac => 20,              // bad_record_mac
            RecordError::Malformed(_) => 50,        // decode_error
            RecordError::IllegalKeyUpdate(_) => 47, // illegal_parameter
            RecordError::PeerAlert(_) => return None,
            RecordError::SequenceExhausted | RecordError::Keys(_) => 80, // internal_error
        })
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::UnexpectedType(t) => {
                write!(f, "TLS record of type {t} after the handshake")
            }
            RecordError::Overflow(n) => write!(f, "TLS record of {n} bytes, over the limit"),
            RecordError::BadMac => f.write_str("TLS record failed authentication"),
            RecordError::NoContentType => f.write_str("TLS record without a content type"),
            RecordError::UnexpectedHandshake(t) => {
                write!(f, "TLS handshake message {t} after the handshake")
            }
            RecordError::KeyUpdateFlood => f.write_str("too many TLS KeyUpdates in a row"),
            RecordError::Malformed(what) => write!(f, "malformed TLS {what}"),
            RecordError::IllegalKeyUpdate(v) => write!(f, "TLS KeyUpdate request_update {v}"),
            RecordError::PeerAlert(d) => write!(f, "the peer sent TLS alert {d}"),
            RecordError::SequenceExhausted => f.write_str("TLS sequence numbers exhausted"),
            RecordError::Keys(why) => write!(f, "TLS keys: {why}"),
        }
    }
}

impl std::error::Error for RecordError {}

/// What one opened record held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// Application data: `input[start..end]`, decrypted in place.
    Data { start: usize, end: usize },
    /// Nothing for the application (a KeyUpdate, a user_canceled warning).
    Nothing,
    /// The peer's `close_notify` (§6.1).
    Closed,
}

/// Where the traffic keys after a KeyUpdate come from (RFC 8446 §7.2): rustls's
/// [`KernelConnection`] on a real connection.
pub trait NextKeys {
    /// The next key for reading, and its first sequence number.
    fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error>;
    /// The next key for writing, and its first sequence number.
    fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error>;
}

/// Boxed: it is large (560 bytes) and needed only on a KeyUpdate, while the rest of
/// [`Records`] is read for every record.
impl NextKeys for Box<KernelConnection<ServerConnectionData>> {
    fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        self.update_rx_secret()
    }

    fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        self.update_tx_secret()
    }
}

/// The protected records of one TLS 1.3 connection.
pub struct Records<K = Box<KernelConnection<ServerConnectionData>>> {
    rx: Direction,
    tx: Direction,
    /// Records sealed under one key before it is replaced by a KeyUpdate (the suite's
    /// confidentiality limit, RFC 8446 §5.5).
    limit: u64,
    /// KeyUpdates read since the last application data.
    key_updates: u8,
    /// The last record we sealed is a KeyUpdate: it answers any request for ours read since
    /// (§4.6.3: while silent, a single update answers several).
    updated_last: bool,
    keys: K,
}

impl Records {
    /// Takes over from rustls's kernel-TLS hand-over.
    pub fn from_kernel(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<ServerConnectionData>,
    ) -> Result<Self, RecordError> {
        let limit = match kernel.negotiated_cipher_suite() {
            SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
            _ => return Err(RecordError::Keys("not a TLS 1.3 suite".into())),
        };
        Records::new(secrets, Box::new(kernel), limit)
    }
}

impl<K: NextKeys> Records<K> {
    /// `limit`: records sealed under one key before a KeyUpdate replaces it.
    pub fn new(secrets: ExtractedSecrets, keys: K, limit: u64) -> Result<Self, RecordError> {
        let (rx_seq, rx) = secrets.rx;
        let (tx_seq, tx) = secrets.tx;
        Ok(Records {
            rx: Direction::new(rx_seq, rx)?,
            tx: Direction::new(tx_seq, tx)?,
            limit,
            key_updates: 0,
            updated_last: false,
            keys,
        })
    }

    /// Brings both keys into the cache ahead of a record (see [`Aead::prefetch`]).
    #[inline]
    pub fn prefetch(&self) {
        self.rx.key.prefetch();
        self.tx.key.prefetch();
    }

    /// Opens the record `record` (one [`complete`] measured) in place. A KeyUpdate
    /// asking for ours gets it sealed into `out` (RFC 8446 §4.6.3).
    pub fn open(&mut self, record: &mut [u8], out: &mut impl Sink) -> Result<Opened, RecordError> {
        let (header, body) = record.split_at_mut(HEADER);
        let nonce = self.rx.next_nonce()?;
        let plain = self
            .rx
            .key
            .open_in_place(&nonce, header, body)
            .map_err(|_| RecordError::BadMac)?;
        // RFC 8446 §5.4: padding does not raise the limit; the whole inner plaintext is at
        // most 2^14 + 1 bytes.
        if plain.len() > MAX_PLAIN + 1 {
            return Err(RecordError::Overflow(plain.len()));
        }
        // RFC 8446 §5.4: the content type is the last non-zero byte; zeros after it are padding.
        let Some(at) = plain.iter().rposition(|&b| b != 0) else {
            return Err(RecordError::NoContentType);
        };
        match plain[at] {
            APPLICATION_DATA => {
                self.key_updates = 0;
                Ok(Opened::Data {
                    start: HEADER,
                    end: HEADER + at,
                })
            }
            ALERT => match plain[..at] {
                [_, CLOSE_NOTIFY] => Ok(Opened::Closed),
                // A warning that a close_notify follows (§6.1).
                [_, USER_CANCELED] => Ok(Opened::Nothing),
                [_, description] => Err(RecordError::PeerAlert(description)),
                _ => Err(RecordError::Malformed("alert")),
            },
            HANDSHAKE => {
                let request = match plain[..at] {
                    [KEY_UPDATE, 0, 0, 1, request] => request,
                    [KEY_UPDATE, ..] => return Err(RecordError::Malformed("KeyUpdate")),
                    [t, ..] => return Err(RecordError::UnexpectedHandshake(t)),
                    [] => return Err(RecordError::Malformed("handshake record")),
                };
                self.key_updates += 1;
                if self.key_updates > MAX_KEY_UPDATES {
                    return Err(RecordError::KeyUpdateFlood);
                }
                if request > 1 {
                    return Err(RecordError::IllegalKeyUpdate(request));
                }
                let (seq, secrets) = self
                    .keys
                    .next_rx()
                    .map_err(|e| RecordError::Keys(e.to_string()))?;
                self.rx = Direction::new(seq, secrets)?;
                if request == 1 && !self.updated_last {
                    self.key_update(out, false)?;
                }
                Ok(Opened::Nothing)
            }
            t => Err(RecordError::UnexpectedType(t)),
        }
    }

    /// Seals `plain` as application data, in records of up to 2^14 bytes, encrypting from
    /// where it lies into `out`.
    pub fn seal(&mut self, out: &mut impl Sink, plain: &[u8]) -> Result<(), RecordError> {
        for chunk in plain.chunks(MAX_PLAIN) {
            self.seal_one(out, APPLICATION_DATA, chunk)?;
        }
        Ok(())
    }

    /// Begins a record whose plaintext the caller appends to `out` (at most [`MAX_PLAIN`]
    /// bytes) before [`Records::finish`]; returns where it starts.
    pub fn begin(&mut self, out: &mut impl Sink) -> Result<usize, RecordError> {
        self.rekey_if_due(out)?;
        let start = out.written();
        out.append(&[0; HEADER]);
        Ok(start)
    }

    /// Seals the record begun at `start` in place.
    pub fn finish(&mut self, out: &mut impl Sink, start: usize) -> Result<(), RecordError> {
        let plain = out.written() - start - HEADER;
        let header = header(plain);
        let nonce = self.tx.next_nonce()?;
        self.updated_last = false;
        out.append(&[0; 1 + TAG]);
        let record = &mut out.filled_mut()[start..];
        record[..HEADER].copy_from_slice(&header);
        let (body, tail) = record[HEADER..].split_at_mut(plain);
        self.tx
            .key
            .seal_in_place(&nonce, &header, body, &[APPLICATION_DATA], tail)
            .map_err(|_| RecordError::Keys("sealing failed".into()))
    }

    /// Seals a `close_notify` alert (RFC 8446 §6.1).
    pub fn close_notify(&mut self, out: &mut impl Sink) -> Result<(), RecordError> {
        self.seal_one(out, ALERT, &[1, CLOSE_NOTIFY])
    }

    /// Seals the fatal alert that names `error`, if it has one.
    pub fn alert(&mut self, out: &mut impl Sink, error: &RecordError) {
        if let Some(description) = error.alert() {
            let _ = self.seal_one(out, ALERT, &[2, description]);
        }
    }

    /// Seals one record of inner content type `typ` (RFC 8446 §5.2); `plain` at most
    /// [`MAX_PLAIN`] bytes.
    pub fn seal_one(
        &mut self,
        out: &mut impl Sink,
        typ: u8,
        plain: &[u8],
    ) -> Result<(), RecordError> {
        self.rekey_if_due(out)?;
        self.seal_with_current_key(out, typ, plain)
    }

    fn seal_with_current_key(
        &mut self,
        out: &mut impl Sink,
        typ: u8,
        plain: &[u8],
    ) -> Result<(), RecordError> {
        let header = header(plain.len());
        let nonce = self.tx.next_nonce()?;
        self.updated_last = false;
        let start = out.written();
        out.append_zeroed(HEADER + plain.len() + 1 + TAG);
        let record = &mut out.filled_mut()[start..];
        record[..HEADER].copy_from_slice(&header);
        let (body, tail) = record[HEADER..].split_at_mut(plain.len());
        self.tx
            .key
            .seal_scatter(&nonce, &header, plain, body, &[typ], tail)
            .map_err(|_| RecordError::Keys("sealing failed".into()))
    }

    /// Replaces the sending key before it has sealed more than the suite allows (§5.5).
    fn rekey_if_due(&mut self, out: &mut impl Sink) -> Result<(), RecordError> {
        if self.tx.seq >= self.limit {
            self.key_update(out, false)?;
        }
        Ok(())
    }

    /// Lowers the rekeying limit, so that tests see KeyUpdates without sealing millions of
    /// records.
    #[cfg(test)]
    pub(crate) fn set_rekey_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    /// Sends a KeyUpdate, `request`ing the peer's or not, and switches to the next key.
    pub fn key_update(&mut self, out: &mut impl Sink, request: bool) -> Result<(), RecordError> {
        self.seal_with_current_key(out, HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, request as u8])?;
        let (seq, secrets) = self
            .keys
            .next_tx()
            .map_err(|e| RecordError::Keys(e.to_string()))?;
        self.tx = Direction::new(seq, secrets)?;
        self.updated_last = true;
        Ok(())
    }
}

/// The length of the complete record at the front of `input`, or `None` if it has not
/// all arrived. Checks the header first, so that a bad one is refused before its body.
pub fn complete(input: &[u8]) -> Result<Option<usize>, RecordError> {
    let Some(header) = input.get(..HEADER) else {
        return Ok(None);
    };
    if header[0] != APPLICATION_DATA {
        return Err(RecordError::UnexpectedType(header[0]));
    }
    let len = u16::from_be_bytes([header[3], header[4]]) as usize;
    if len > MAX_CIPHER {
        return Err(RecordError::Overflow(len));
    }
    Ok((input.len() >= HEADER + len).then_some(HEADER + len))
}

/// The header of a protected record carrying `plain` bytes (RFC 8446 §5.2): always
/// application_data and version 0x0303 outside; the real type is inside.
fn header(plain: usize) -> [u8; HEADER] {
    let len = (plain + 1 + TAG) as u16;
    let [hi, lo] = len.to_be_bytes();
    [APPLICATION_DATA, 3, 3, hi, lo]
}

/// Where records are sealed: a growing byte buffer.
pub trait Sink {
    /// Bytes filled so far.
    fn written(&self) -> usize;
    fn filled_mut(&mut self) -> &mut [u8];
    /// Appends `bytes`.
    fn append(&mut self, bytes: &[u8]);
    /// Appends `n` bytes whose value does not matter (they are overwritten at once).
    fn append_zeroed(&mut self, n: usize);
}

impl Sink for Vec<u8> {
    fn written(&self) -> usize {
        Vec::len(self)
    }

    fn filled_mut(&mut self) -> &mut [u8] {
        self
    }

    fn append(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    fn append_zeroed(&mut self, n: usize) {
        self.resize(Vec::len(self) + n, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    /// Keys that follow each other by a counter, the same on both sides.
    struct Counter {
        rx: u8,
        tx: u8,
    }

    fn secrets(n: u8) -> ConnectionTrafficSecrets {
        ConnectionTrafficSecrets::Chacha20Poly1305 {
            key: AeadKey::from([n; 32]),
            iv: Iv::new([n.wrapping_mul(7); 12]),
        }
    }

    impl NextKeys for Counter {
        fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
            self.rx += 2;
            Ok((0, secrets(self.rx)))
        }

        fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
            self.tx += 2;
            Ok((0, secrets(self.tx)))
        }
    }

    /// A client and a server whose keys match: the client's odd keys are the server's
    /// reading keys, its even ones the server's writing keys.
    fn pair(limit: u64) -> (Records<Counter>, Records<Counter>) {
        let side = |tx: u8, rx: u8| {
            Records::new(
                ExtractedSecrets {
                    tx: (3, secrets(tx)),
                    rx: (3, secrets(rx)),
                },
                Counter { tx, rx },
                limit,
            )
            .unwrap()
        };
        (side(1, 2), side(2, 1))
    }

    /// Opens every record in `wire`: application data concatenated, and the other outcomes.
    fn open_all(
        r: &mut Records<Counter>,
        wire: &mut [u8],
        out: &mut Vec<u8>,
    ) -> (Vec<u8>, Vec<Result<Opened, RecordError>>) {
        let (mut data, mut events, mut at) = (Vec::new(), Vec::new(), 0);
        while at < wire.len() {
            let n = match complete(&wire[at..]) {
                Ok(Some(n)) => n,
                Ok(None) => panic!("a cut record at {at}"),
                Err(e) => {
                    events.push(Err(e));
                    break;
                }
            };
            let record = &mut wire[at..at + n];
            at += n;
            match r.open(record, out) {
                Ok(Opened::Data { start, end }) => data.extend_from_slice(&record[start..end]),
                other => {
                    let stop = other.is_err();
                    events.push(other);
                    if stop {
                        break;
                    }
                }
            }
        }
        (data, events)
    }

    #[test]
    fn data_of_every_size_round_trips_in_records_of_at_most_2_14() {
        let (mut client, mut server) = pair(u64::MAX);
        let data: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut wire = Vec::new();
        for size in [0, 1, 100, MAX_PLAIN, 40_000] {
            client.seal(&mut wire, &data[..size]).unwrap();
        }
        let mut at = 0;
        while at < wire.len() {
            let n = complete(&wire[at..]).unwrap().unwrap();
            assert!(n <= HEADER + MAX_PLAIN + 1 + TAG);
            assert!(complete(&wire[at..at + n - 1]).unwrap().is_none());
            at += n;
        }
        let (got, events) = open_all(&mut server, &mut wire, &mut Vec::new());
        let want: Vec<u8> = [0, 1, 100, MAX_PLAIN, 40_000]
            .iter()
            .flat_map(|&s| data[..s].iter().copied())
            .collect();
        assert_eq!(got, want);
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn gathered_pieces_are_one_record() {
        let (mut client, mut server) = pair(u64::MAX);
        let mut wire = Vec::new();
        let start = client.begin(&mut wire).unwrap();
        wire.append(&mut b"one ".to_vec());
        Sink::append(&mut wire, b"two");
        client.finish(&mut wire, start).unwrap();
        assert_eq!(complete(&wire).unwrap(), Some(wire.len()));
        let (got, _) = open_all(&mut server, &mut wire, &mut Vec::new());
        assert_eq!(got, b"one two");
    }

    #[test]
    fn padding_is_stripped_and_padding_alone_is_refused() {
        let (mut client, mut server) = pair(u64::MAX);
        let mut wire = Vec::new();
        // Inner plaintext "hi" 0x17 0 0 0: the type is the last non-zero byte (§5.4).
        client.seal_one(&mut wire, 0, b"hi\x17\0\0").unwrap();
        client.seal_one(&mut wire, 0, &[0; 9]).unwrap();
        let (got, events) = open_all(&mut server, &mut wire, &mut Vec::new());
        assert_eq!(got, b"hi");
        assert_eq!(events, [Err(RecordError::NoContentType)]);
        assert_eq!(RecordError::NoContentType.alert(), Some(10));
    }

    #[test]
    fn a_requested_key_update_is_answered_and_both_directions_rekey() {
        let (mut client, mut server) = pair(u64::MAX);
        let (mut wire, mut back) = (Vec::new(), Vec::new());
        client.seal(&mut wire, b"before").unwrap();
        client.key_update(&mut wire, true).unwrap();
        client.seal(&mut wire, b" after").unwrap();
        let (got, events) = open_all(&mut server, &mut wire, &mut back);
        assert_eq!(got, b"before after");
        assert_eq!(events, [Ok(Opened::Nothing)]);
        // The server answered with its own KeyUpdate, then writes under its new key.
        server.seal(&mut back, b"reply").unwrap();
        let (got, events) = open_all(&mut client, &mut back, &mut Vec::new());
        assert_eq!(got, b"reply");
        assert_eq!(events, [Ok(Opened::Nothing)]);
        assert_eq!((server.rx.seq, server.tx.seq), (1, 1));
    }

    #[test]
    fn the_writer_rekeys_at_the_confidentiality_limit() {
        let (mut client, mut server) = pair(3);
        let mut wire = Vec::new();
        for i in 0..10u8 {
            server.seal(&mut wire, &[i]).unwrap();
        }
        let (got, events) = open_all(&mut client, &mut wire, &mut Vec::new());
        assert_eq!(got, (0..10).collect::<Vec<u8>>());
        // Sequence numbers start at 3 (as the handshake left them): at once, then every 3.
        assert_eq!(events.len(), 4, "{events:?}");
        assert!(server.tx.seq <= 3);
    }

    #[test]
    fn tampering_and_replay_fail_authentication() {
        let (mut client, mut server) = pair(u64::MAX);
        let mut wire = Vec::new();
        client.seal(&mut wire, b"hello").unwrap();
        let mut bad = wire.clone();
        bad[HEADER + 1] ^= 1;
        assert_eq!(
            server.open(&mut bad, &mut Vec::new()),
            Err(RecordError::BadMac)
        );
        // The failed record used up its sequence number, as in TLS the connection is over.
        let (mut client, mut server) = pair(u64::MAX);
        let mut wire = Vec::new();
        client.seal(&mut wire, b"hello").unwrap();
        assert!(server.open(&mut wire.clone(), &mut Vec::new()).is_ok());
        assert_eq!(
            server.open(&mut wire, &mut Vec::new()),
            Err(RecordError::BadMac),
            "a replayed record"
        );
        assert_eq!(RecordError::BadMac.alert(), Some(20));
    }

    #[test]
    fn headers_are_checked_before_bodies() {
        assert_eq!(complete(&[23, 3, 3]), Ok(None));
        assert_eq!(complete(&[23, 3, 3, 0, 20, 1]), Ok(None));
        assert_eq!(
            complete(&[20, 3, 3, 0, 1, 1]),
            Err(RecordError::UnexpectedType(20)),
            "change_cipher_spec after the handshake"
        );
        assert_eq!(
            complete(&[22, 3, 1, 0, 4]),
            Err(RecordError::UnexpectedType(22))
        );
        let len = (MAX_CIPHER + 1) as u16;
        let [hi, lo] = len.to_be_bytes();
        assert_eq!(
            complete(&[23, 3, 3, hi, lo]),
            Err(RecordError::Overflow(MAX_CIPHER + 1))
        );
        assert_eq!(RecordError::Overflow(0).alert(), Some(22));
        // Plaintext over 2^14 inside a record of legal length.
        let (mut client, mut server) = pair(u64::MAX);
        let mut wire = Vec::new();
        client
            .seal_one(&mut wire, APPLICATION_DATA, &vec![1; MAX_PLAIN + 1])
            .unwrap();
        assert_eq!(
            server.open(&mut wire, &mut Vec::new()),
            Err(RecordError::Overflow(MAX_PLAIN + 2))
        );
    }

    #[test]
    fn padding_does_not_raise_the_limit_on_the_inner_plaintext() {
        // §5.4: content, type and padding together at most 2^14 + 1 bytes.
        let at_limit = [&b"hi"[..], &[APPLICATION_DATA], &vec![0; MAX_PLAIN - 2]].concat();
        let over = [&vec![1; MAX_PLAIN][..], &[APPLICATION_DATA], &[0; 9]].concat();
        let (mut client, mut server) = pair(u64::MAX);
        let mut wire = Vec::new();
        client
            .seal_one(&mut wire, 0, &at_limit[..at_limit.len() - 1])
            .unwrap();
        client
            .seal_one(&mut wire, 0, &over[..over.len() - 1])
            .unwrap();
        let (got, events) = open_all(&mut server, &mut wire, &mut Vec::new());
        assert_eq!(got, b"hi");
        assert_eq!(events, [Err(RecordError::Overflow(MAX_PLAIN + 10))]);
    }

    #[test]
    fn requests_read_while_silent_get_a_single_key_update() {
        let (mut client, mut server) = pair(u64::MAX);
        let (mut wire, mut back) = (Vec::new(), Vec::new());
        // More requests than a peer accepts KeyUpdates in a row without data.
        for _ in 0..=MAX_KEY_UPDATES {
            client.key_update(&mut wire, true).unwrap();
            client.seal(&mut wire, b"x").unwrap();
        }
        let (got, events) = open_all(&mut server, &mut wire, &mut back);
        assert_eq!(got.len(), MAX_KEY_UPDATES as usize + 1);
        assert!(
            events.iter().all(|e| *e == Ok(Opened::Nothing)),
            "{events:?}"
        );
        server.seal(&mut back, b"reply").unwrap();
        let (got, events) = open_all(&mut client, &mut back, &mut Vec::new());
        assert_eq!(got, b"reply");
        assert_eq!(
            events,
            [Ok(Opened::Nothing)],
            "one KeyUpdate answers them all"
        );
        // Once we have written since, a new request gets a new answer.
        let mut wire = Vec::new();
        client.key_update(&mut wire, true).unwrap();
        let mut back = Vec::new();
        open_all(&mut server, &mut wire, &mut back);
        let (_, events) = open_all(&mut client, &mut back, &mut Vec::new());
        assert_eq!(events, [Ok(Opened::Nothing)]);
    }

    #[test]
    fn alerts_close_warn_or_fail() {
        let cases: [(&[u8], Result<Opened, RecordError>); 5] = [
            (&[1, CLOSE_NOTIFY], Ok(Opened::Closed)),
            (&[1, USER_CANCELED], Ok(Opened::Nothing)),
            (&[2, 40], Err(RecordError::PeerAlert(40))),
            (&[1], Err(RecordError::Malformed("alert"))),
            (&[2, 40, 0x15], Err(RecordError::Malformed("alert"))),
        ];
        for (payload, want) in cases {
            let (mut client, mut server) = pair(u64::MAX);
            let mut wire = Vec::new();
            client.seal_one(&mut wire, ALERT, payload).unwrap();
            assert_eq!(server.open(&mut wire, &mut Vec::new()), want, "{payload:?}");
        }
        assert_eq!(
            RecordError::PeerAlert(40).alert(),
            None,
            "no answer to an alert"
        );
    }

    #[test]
    fn only_a_lone_well_formed_key_update_is_accepted_after_the_handshake() {
        let cases: [(&[u8], RecordError); 4] = [
            (&[KEY_UPDATE, 0, 0, 1, 2], RecordError::IllegalKeyUpdate(2)),
            (
                &[KEY_UPDATE, 0, 0, 2, 0, 0],
                RecordError::Malformed("KeyUpdate"),
            ),
            // A KeyUpdate must end its record (§5.1).
            (
                &[KEY_UPDATE, 0, 0, 1, 0, 5],
                RecordError::Malformed("KeyUpdate"),
            ),
            // NewSessionTicket: only servers send it.
            (&[4, 0, 0, 1, 0], RecordError::UnexpectedHandshake(4)),
        ];
        for (payload, want) in cases {
            let (mut client, mut server) = pair(u64::MAX);
            let mut wire = Vec::new();
            client.seal_one(&mut wire, HANDSHAKE, payload).unwrap();
            assert_eq!(server.open(&mut wire, &mut Vec::new()), Err(want.clone()));
            assert!(want.alert().is_some());
        }
    }

    #[test]
    fn a_flood_of_key_updates_is_cut_off_and_data_resets_the_count() {
        let (mut client, mut server) = pair(u64::MAX);
        let mut wire = Vec::new();
        for _ in 0..MAX_KEY_UPDATES {
            client.key_update(&mut wire, false).unwrap();
        }
        client.seal(&mut wire, b"x").unwrap();
        for _ in 0..=MAX_KEY_UPDATES {
            client.key_update(&mut wire, false).unwrap();
        }
        let (got, events) = open_all(&mut server, &mut wire, &mut Vec::new());
        assert_eq!(got, b"x");
        assert_eq!(events.len(), 2 * MAX_KEY_UPDATES as usize + 1);
        assert_eq!(events.last(), Some(&Err(RecordError::KeyUpdateFlood)));
    }

    #[test]
    fn close_notify_and_error_alerts_are_sealed() {
        let (mut client, mut server) = pair(u64::MAX);
        let mut back = Vec::new();
        server.alert(&mut back, &RecordError::BadMac);
        server.alert(&mut back, &RecordError::PeerAlert(40));
        server.close_notify(&mut back).unwrap();
        let (_, events) = open_all(&mut client, &mut back, &mut Vec::new());
        assert_eq!(
            events,
            [Err(RecordError::PeerAlert(20))],
            "bad_record_mac first"
        );
        let (mut client, mut server) = pair(u64::MAX);
        let mut back = Vec::new();
        server.close_notify(&mut back).unwrap();
        let (_, events) = open_all(&mut client, &mut back, &mut Vec::new());
        assert_eq!(events, [Ok(Opened::Closed)]);
    }
}
