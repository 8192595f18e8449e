//! The TLS 1.3 record layer (`transport::records`, RFC 8446 §5) after the handshake, in two
//! modes chosen by the first byte:
//!
//! * raw bytes as ciphertext for the server: `complete` never measures past the input nor
//!   past 5 + 2^14 + 256, its errors are the header's own, every error has the alert RFC 8446
//!   §6.2 gives it (and that alert, sealed, opens on the client as the peer's alert), and
//!   nothing is opened after the first error;
//! * a script sealed by a matching client (data, alerts, KeyUpdates, raw records of any inner
//!   type and padding, gathered records, a bit flip in the last record), opened by the server
//!   whole and cut at a fuzzer-chosen point: the data, the outcome and the server's answers
//!   are the ones the RFC rules predict from the script, and the same either way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustls::crypto::cipher::{AeadKey, Iv};
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};
use wsloop::transport::records::{
    complete, NextKeys, Opened, RecordError, Records, Sink, ALERT, APPLICATION_DATA, CLOSE_NOTIFY,
    HANDSHAKE, HEADER, KEY_UPDATE, MAX_PLAIN, USER_CANCELED,
};

/// A protected record's length at most (RFC 8446 §5.2).
const MAX_CIPHER: usize = MAX_PLAIN + 256;
/// The AEAD tag of every TLS 1.3 suite.
const TAG: usize = 16;
/// KeyUpdates accepted in a row without application data (the limit `records.rs` documents,
/// the same as rustls's).
const MAX_KEY_UPDATES: u32 = 32;
/// What the script's wire may grow to, so that one input stays fast.
const MAX_WIRE: usize = 128 << 10;

fuzz_target!(|input: &[u8]| {
    // Layout: [mode] ...; mode bit 0: 0 raw ciphertext, 1 a script (see README.md).
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        raw(mode, data);
    } else {
        script(mode, data);
    }
});

/// Keys that follow each other by a counter, the same on both sides (as in the unit tests).
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
        self.rx = self.rx.wrapping_add(2);
        Ok((0, secrets(self.rx)))
    }

    fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        self.tx = self.tx.wrapping_add(2);
        Ok((0, secrets(self.tx)))
    }
}

/// A client and a server whose keys match, the client's records starting at sequence
/// number `up`, the server's at `down`; the client rekeys after `limit` records, the server
/// never on its own.
fn pair(up: u64, down: u64, limit: u64) -> (Records<Counter>, Records<Counter>) {
    let side = |tx: u8, rx: u8, (tx_seq, rx_seq): (u64, u64), limit: u64| {
        Records::new(
            ExtractedSecrets {
                tx: (tx_seq, secrets(tx)),
                rx: (rx_seq, secrets(rx)),
            },
            Counter { tx, rx },
            limit,
        )
        .expect("ChaCha20-Poly1305 keys")
    };
    (
        side(1, 2, (up, down), limit),
        side(2, 1, (down, up), u64::MAX),
    )
}

/// The alert each error must send (RFC 8446 §6.2), written out here independently.
fn rfc_alert(e: &RecordError) -> Option<u8> {
    const UNEXPECTED_MESSAGE: u8 = 10;
    const BAD_RECORD_MAC: u8 = 20;
    const RECORD_OVERFLOW: u8 = 22;
    const ILLEGAL_PARAMETER: u8 = 47;
    const DECODE_ERROR: u8 = 50;
    const INTERNAL_ERROR: u8 = 80;
    match e {
        RecordError::UnexpectedType(_)
        | RecordError::NoContentType
        | RecordError::UnexpectedHandshake(_)
        | RecordError::KeyUpdateFlood => Some(UNEXPECTED_MESSAGE),
        RecordError::Overflow(_) => Some(RECORD_OVERFLOW),
        RecordError::BadMac => Some(BAD_RECORD_MAC),
        RecordError::Malformed(_) => Some(DECODE_ERROR),
        RecordError::IllegalKeyUpdate(_) => Some(ILLEGAL_PARAMETER),
        // No alert answers an alert (§6).
        RecordError::PeerAlert(_) => None,
        RecordError::SequenceExhausted | RecordError::Keys(_) => Some(INTERNAL_ERROR),
    }
}

/// The length field of a record header.
fn header_len(h: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([h[3], h[4]]))
}

/// `complete` on `rest` (the unread input) agrees with the header's own fields: a length
/// within the input and the limits, or `None` exactly when the record has not all arrived.
fn measure(rest: &[u8]) -> Result<Option<usize>, RecordError> {
    let got = complete(rest);
    match &got {
        Ok(Some(n)) => {
            assert!(
                *n <= rest.len() && *n <= HEADER + MAX_CIPHER,
                "{n} of {}",
                rest.len()
            );
            assert_eq!(rest[0], APPLICATION_DATA);
            assert_eq!(*n, HEADER + header_len(rest));
        }
        Ok(None) => assert!(
            rest.len() < HEADER
                || rest[0] == APPLICATION_DATA
                    && header_len(rest) <= MAX_CIPHER
                    && rest.len() < HEADER + header_len(rest),
            "a whole record not measured"
        ),
        Err(RecordError::UnexpectedType(t)) => {
            assert!(rest.len() >= HEADER && *t == rest[0] && *t != APPLICATION_DATA);
        }
        Err(RecordError::Overflow(len)) => {
            assert_eq!(rest[0], APPLICATION_DATA);
            assert!(*len == header_len(rest) && *len > MAX_CIPHER);
        }
        Err(e) => panic!("complete refused a header with {e:?}"),
    }
    got
}

/// How opening a wire ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Every whole record opened; `pending`: an incomplete one waits at the end.
    Open {
        pending: bool,
    },
    Closed,
    Failed(RecordError),
}

/// Opens the records in `buf[*at..]`; `None` while waiting for more bytes, else the end
/// (after which the connection is gone and nothing more is opened).
fn drive(
    server: &mut Records<Counter>,
    buf: &mut [u8],
    at: &mut usize,
    data: &mut Vec<u8>,
    back: &mut Vec<u8>,
) -> Option<Outcome> {
    loop {
        let n = match measure(&buf[*at..]) {
            Ok(Some(n)) => n,
            Ok(None) => return None,
            Err(e) => return Some(Outcome::Failed(e)),
        };
        let record = &mut buf[*at..*at + n];
        *at += n;
        match server.open(record, back) {
            Ok(Opened::Data { start, end }) => {
                assert!(HEADER <= start && start <= end && end <= n - TAG);
                data.extend_from_slice(&record[start..end]);
            }
            Ok(Opened::Nothing) => {}
            Ok(Opened::Closed) => return Some(Outcome::Closed),
            Err(e) => return Some(Outcome::Failed(e)),
        }
    }
}

/// Mode 0: arbitrary bytes as the client's records.
fn raw(mode: u8, wire: &[u8]) {
    let seq = match mode >> 1 & 3 {
        0 => 0,
        1 => 3,
        // The last sequence numbers: the next record would wrap (§5.3).
        2 => u64::MAX - 1,
        _ => u64::MAX,
    };
    let (mut client, mut server) = pair(seq, 0, u64::MAX);
    let (mut buf, mut at, mut data, mut back) = (wire.to_vec(), 0, Vec::new(), Vec::new());
    let outcome = drive(&mut server, &mut buf, &mut at, &mut data, &mut back);
    assert!(at <= wire.len());
    if let Some(Outcome::Failed(e)) = outcome {
        answer_error(&mut server, &mut client, &e, &mut back, 0);
    }
}

/// The server's alert for `e` is the RFC's, and the client opens it (after the `answers`
/// KeyUpdates already in `back`) as that alert.
fn answer_error(
    server: &mut Records<Counter>,
    client: &mut Records<Counter>,
    e: &RecordError,
    back: &mut Vec<u8>,
    answers: usize,
) {
    assert_eq!(e.alert(), rfc_alert(e), "{e:?}");
    server.alert(back, e);
    let (got, outcome, nothing) = open_back(client, back);
    assert!(got.is_empty());
    assert_eq!(nothing, answers);
    match rfc_alert(e) {
        Some(d) => assert_eq!(outcome, Outcome::Failed(RecordError::PeerAlert(d))),
        None => assert_eq!(outcome, Outcome::Open { pending: false }),
    }
}

/// The client opens what the server wrote: its data, how it ended, and how many records
/// held nothing for the application (KeyUpdates).
fn open_back(client: &mut Records<Counter>, back: &mut [u8]) -> (Vec<u8>, Outcome, usize) {
    let (mut at, mut data, mut nothing) = (0, Vec::new(), 0);
    loop {
        let n = match complete(&back[at..]) {
            Ok(Some(n)) => n,
            Ok(None) => {
                assert_eq!(at, back.len(), "a cut record in the server's output");
                return (data, Outcome::Open { pending: false }, nothing);
            }
            Err(e) => return (data, Outcome::Failed(e), nothing),
        };
        let record = &mut back[at..at + n];
        at += n;
        match client.open(record, &mut Vec::new()) {
            Ok(Opened::Data { start, end }) => data.extend_from_slice(&record[start..end]),
            Ok(Opened::Nothing) => nothing += 1,
            Ok(Opened::Closed) => return (data, Outcome::Closed, nothing),
            Err(e) => return (data, Outcome::Failed(e), nothing),
        }
    }
}

/// One record as the client sealed it: its inner plaintext (content, type, padding) and the
/// key (by number) it was sealed under.
struct Sealed {
    inner: Vec<u8>,
    epoch: u32,
}

/// The client as the script expects it to behave: what it sealed, under which key, and when
/// it must rekey on its own (the confidentiality limit, §5.5).
struct Model {
    records: Vec<Sealed>,
    epoch: u32,
    seq: u64,
    limit: u64,
}

impl Model {
    fn push(&mut self, inner: Vec<u8>) {
        self.records.push(Sealed {
            inner,
            epoch: self.epoch,
        });
        self.seq += 1;
    }

    /// A KeyUpdate under the current key, then the next key from sequence number 0 (§4.6.3).
    fn key_update(&mut self, request: u8) {
        self.push(vec![KEY_UPDATE, 0, 0, 1, request, HANDSHAKE]);
        self.epoch += 1;
        self.seq = 0;
    }

    /// Before any record but a KeyUpdate: rekey first once the limit is reached.
    fn record(&mut self, inner: Vec<u8>) {
        if self.seq >= self.limit {
            self.key_update(0);
        }
        self.push(inner);
    }

    fn wire_len(&self) -> usize {
        self.records
            .iter()
            .map(|r| HEADER + r.inner.len() + TAG)
            .sum()
    }
}

/// Reads the script.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    /// Up to `n` bytes (fewer when the input ends).
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8 + 1).collect()
}

/// Mode 1: a script sealed by the client, opened by the server.
fn script(mode: u8, data: &[u8]) {
    let seq = [0, 3, 1000, 1 << 32][usize::from(mode >> 1 & 3)];
    let limit = match mode >> 3 & 7 {
        0 => u64::MAX,
        n => u64::from(n),
    };
    let mut r = Reader(data);
    let (Some(hi), Some(lo)) = (r.byte(), r.byte()) else {
        return;
    };
    let cut = usize::from(u16::from_be_bytes([hi, lo]));

    let (mut client, _) = pair(seq, seq, limit);
    let mut model = Model {
        records: Vec::new(),
        epoch: 0,
        seq,
        limit,
    };
    let mut wire = Vec::new();
    // The last record's bit flipped: its offset in the record and the bit.
    let mut flip = None;
    while wire.len() < MAX_WIRE {
        let Some(op) = r.byte() else { break };
        match op % 7 {
            0 => {
                let Some(n) = r.byte() else { break };
                let bytes = if n >= 0xf0 {
                    // Past 2^14: several records.
                    pattern(usize::from(n - 0xef) * 4099)
                } else {
                    r.take(usize::from(n)).to_vec()
                };
                for chunk in bytes.chunks(MAX_PLAIN) {
                    model.record([chunk, &[APPLICATION_DATA]].concat());
                }
                client.seal(&mut wire, &bytes).unwrap();
            }
            1 => {
                let Some(n) = r.byte() else { break };
                let body = r.take(usize::from(n % 4));
                model.record([body, &[ALERT]].concat());
                client.seal_one(&mut wire, ALERT, body).unwrap();
            }
            2 => {
                let Some(request) = r.byte() else { break };
                model.key_update(request & 1);
                client.key_update(&mut wire, request & 1 == 1).unwrap();
            }
            3 => {
                let (Some(typ), Some(n)) = (r.byte(), r.byte()) else {
                    break;
                };
                let body = match n {
                    0xff => pattern(MAX_PLAIN + 1),
                    0xfe => pattern(MAX_PLAIN),
                    n => r.take(usize::from(n)).to_vec(),
                };
                let Some(pad) = r.byte() else { break };
                let pad = usize::from(pad);
                let inner = [&body[..], &[typ], &vec![0; pad]].concat();
                // seal_one adds the type byte last: padding goes in as part of the plaintext.
                let (typ, plain) = match pad {
                    0 => (typ, &body[..]),
                    _ => (0, &inner[..inner.len() - 1]),
                };
                model.record(inner.clone());
                client.seal_one(&mut wire, typ, plain).unwrap();
            }
            4 => {
                let Some(k) = r.byte() else { break };
                let start = client.begin(&mut wire).unwrap();
                let mut inner = Vec::new();
                for _ in 0..=k % 4 {
                    let n = r.byte().unwrap_or(0);
                    let piece = r.take(usize::from(n));
                    Sink::append(&mut wire, piece);
                    inner.extend_from_slice(piece);
                }
                client.finish(&mut wire, start).unwrap();
                inner.push(APPLICATION_DATA);
                model.record(inner);
            }
            5 => {
                model.record(vec![1, CLOSE_NOTIFY, ALERT]);
                client.close_notify(&mut wire).unwrap();
            }
            _ => {
                let (Some(hi), Some(lo), Some(bit)) = (r.byte(), r.byte(), r.byte()) else {
                    break;
                };
                if let Some(last) = model.records.last() {
                    let len = HEADER + last.inner.len() + TAG;
                    let at = usize::from(u16::from_be_bytes([hi, lo])) % len;
                    let bit = 1u8 << (bit & 7);
                    let w = wire.len();
                    wire[w - len + at] ^= bit;
                    flip = Some((at, bit));
                }
                break;
            }
        }
        // The client sealed exactly the records the script says, each of the size §5.2 gives.
        assert_eq!(wire.len(), model.wire_len());
    }

    let want = predict(&model, flip);
    let cut = cut % (wire.len() + 1);

    // Whole.
    let (mut client, mut server) = pair(seq, seq, limit);
    let (mut buf, mut at, mut got, mut back) = (wire.clone(), 0, Vec::new(), Vec::new());
    let outcome =
        drive(&mut server, &mut buf, &mut at, &mut got, &mut back).unwrap_or(Outcome::Open {
            pending: at < wire.len(),
        });
    same_data(&got, &want.data, "whole");
    assert_eq!(outcome, want.outcome);
    let whole_back = back.clone();
    answer(&mut server, &mut client, &outcome, &mut back, want.answers);

    // Cut in two, on a fresh pair: nothing opened past the cut until the rest arrives.
    let (_, mut server) = pair(seq, seq, limit);
    let (mut buf, mut at, mut cut_got, mut cut_back) =
        (wire[..cut].to_vec(), 0, Vec::new(), Vec::new());
    let mut end = drive(&mut server, &mut buf, &mut at, &mut cut_got, &mut cut_back);
    assert!(at <= cut);
    if end.is_none() {
        buf.extend_from_slice(&wire[cut..]);
        end = drive(&mut server, &mut buf, &mut at, &mut cut_got, &mut cut_back);
    }
    let end = end.unwrap_or(Outcome::Open {
        pending: at < wire.len(),
    });
    same_data(&cut_got, &want.data, "cut");
    assert_eq!(end, want.outcome, "cut at {cut}");
    assert!(
        cut_back == whole_back,
        "the server's answers differ, cut at {cut}"
    );
}

/// Compares application data without printing kilobytes of it.
fn same_data(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).take_while(|(a, b)| a == b).count();
        panic!(
            "{what}: {} bytes of application data, want {}; first difference at {at}",
            got.len(),
            want.len()
        );
    }
}

/// What the server must see.
struct Prediction {
    data: Vec<u8>,
    outcome: Outcome,
    /// KeyUpdates the server must have sent (answers to requests for ours).
    answers: usize,
}

/// Walks the client's records with the RFC 8446 rules, as `records.rs` documents them.
fn predict(model: &Model, flip: Option<(usize, u8)>) -> Prediction {
    let mut p = Prediction {
        data: Vec::new(),
        outcome: Outcome::Open { pending: false },
        answers: 0,
    };
    let (mut epoch, mut in_a_row) = (0u32, 0u32);
    let last = model.records.len().saturating_sub(1);
    for (i, rec) in model.records.iter().enumerate() {
        let len = rec.inner.len() + TAG;
        let fail = |e| Outcome::Failed(e);
        // The header as the server reads it, with the flipped bit if it fell there.
        let mut header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        let flipped = match flip {
            Some((at, bit)) if i == last => {
                if let Some(b) = header.get_mut(at) {
                    *b ^= bit;
                }
                true
            }
            _ => false,
        };
        let claimed = header_len(&header);
        // The header first (§5.1, §5.2), then authentication, then the inner plaintext.
        if header[0] != APPLICATION_DATA {
            p.outcome = fail(RecordError::UnexpectedType(header[0]));
            break;
        }
        if claimed > MAX_CIPHER {
            p.outcome = fail(RecordError::Overflow(claimed));
            break;
        }
        if claimed > len {
            // The last record claims more than there is: it waits for the rest.
            p.outcome = Outcome::Open { pending: true };
            break;
        }
        // A bit changed in the version (authenticated as additional data), in the ciphertext
        // or tag, or a length that cuts the record short.
        if flipped {
            p.outcome = fail(RecordError::BadMac);
            break;
        }
        // A record sealed under a key the server has moved past, or not yet reached.
        if rec.epoch != epoch {
            p.outcome = fail(RecordError::BadMac);
            break;
        }
        // §5.4: the whole TLSInnerPlaintext, padding included, is at most 2^14 + 1 bytes.
        if rec.inner.len() > MAX_PLAIN + 1 {
            p.outcome = fail(RecordError::Overflow(rec.inner.len()));
            break;
        }
        // §5.4: the type is the last non-zero byte.
        let Some(at) = rec.inner.iter().rposition(|&b| b != 0) else {
            p.outcome = fail(RecordError::NoContentType);
            break;
        };
        let content = &rec.inner[..at];
        match rec.inner[at] {
            APPLICATION_DATA => {
                p.data.extend_from_slice(content);
                in_a_row = 0;
            }
            ALERT => match content {
                [_, CLOSE_NOTIFY] => {
                    p.outcome = Outcome::Closed;
                    break;
                }
                [_, USER_CANCELED] => {}
                &[_, d] => {
                    p.outcome = fail(RecordError::PeerAlert(d));
                    break;
                }
                _ => {
                    p.outcome = fail(RecordError::Malformed("alert"));
                    break;
                }
            },
            // §4.6.3: a KeyUpdate, alone at the end of its record (§5.1).
            HANDSHAKE => match content {
                &[KEY_UPDATE, 0, 0, 1, request] => {
                    in_a_row += 1;
                    if in_a_row > MAX_KEY_UPDATES {
                        p.outcome = fail(RecordError::KeyUpdateFlood);
                        break;
                    }
                    if request > 1 {
                        p.outcome = fail(RecordError::IllegalKeyUpdate(request));
                        break;
                    }
                    epoch += 1;
                    // The server is silent meanwhile: one KeyUpdate answers every request
                    // (§4.6.3).
                    if request == 1 {
                        p.answers = 1;
                    }
                }
                [KEY_UPDATE, ..] => {
                    p.outcome = fail(RecordError::Malformed("KeyUpdate"));
                    break;
                }
                &[t, ..] => {
                    p.outcome = fail(RecordError::UnexpectedHandshake(t));
                    break;
                }
                [] => {
                    p.outcome = fail(RecordError::Malformed("handshake record"));
                    break;
                }
            },
            t => {
                p.outcome = fail(RecordError::UnexpectedType(t));
                break;
            }
        }
    }
    p
}

/// What the server sends after the wire (its KeyUpdate answers are already in `back`) opens
/// on the client: the alert for an error, a close_notify for the peer's, else data it seals
/// now under its new key.
fn answer(
    server: &mut Records<Counter>,
    client: &mut Records<Counter>,
    outcome: &Outcome,
    back: &mut Vec<u8>,
    answers: usize,
) {
    match outcome {
        Outcome::Failed(e) => answer_error(server, client, e, back, answers),
        Outcome::Closed => {
            server.close_notify(back).unwrap();
            let (got, end, nothing) = open_back(client, back);
            assert!(got.is_empty());
            assert_eq!((end, nothing), (Outcome::Closed, answers));
        }
        Outcome::Open { .. } => {
            let reply = pattern(100);
            server.seal(back, &reply).unwrap();
            let (got, end, nothing) = open_back(client, back);
            same_data(&got, &reply, "the server's reply");
            assert_eq!((end, nothing), (Outcome::Open { pending: false }, answers));
        }
    }
}
