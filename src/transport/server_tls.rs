//! The server side of TLS. rustls's unbuffered API runs the handshake (and all of a TLS 1.2
//! connection); a TLS 1.3 connection then has its records protected by [`Records`], with the
//! keys rustls hands over. Either way ciphertext is processed where the socket put it (the
//! loop's shared read buffer), and records are encrypted straight into one per-connection
//! output buffer. rustls's buffered `ServerConnection` copies every record into its own input
//! buffer and allocates every record it sends; at small messages that per-record work cost
//! more than the cipher.

use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError, WriteTraffic,
};
use rustls::{ProtocolVersion, ServerConfig};

use super::records::{self, Opened, RecordError, Records};
use super::{Pending, PlainSink};
use crate::outbox::Outbox;

/// Plaintext encrypted per write call at most: as much as rustls's buffered writer takes
/// (its default buffer limit), so that unsent output waits in the outbox, where it counts.
const WRITE_MAX: usize = 64 * 1024;

/// An output buffer larger than this is given back once it is sent: one write's records fit,
/// so that a stream of large messages does not allocate (and zero) it again each time.
const OUT_KEEP: usize = WRITE_MAX + 2048;

/// The plaintext of one record (RFC 8446 §5.1: 2^14 bytes): small pieces of output (frames
/// queued for a room, a header before its payload) are gathered up to this and sealed as one
/// record, as rustls's buffered writer did, instead of one record (and one AEAD call) each.
const STAGE_MAX: usize = 16 * 1024;

/// A piece of output this large is sealed where it is, without being gathered first.
const STAGE_DIRECT: usize = 4 * 1024;

/// Bytes a record adds to its plaintext, at most (TLS 1.2 GCM: 5 header + 8 explicit nonce +
/// 16 tag; TLS 1.3: 5 header + 1 content type + 16 tag); a wrong guess only costs a retry.
const RECORD_OVERHEAD: usize = 32;

/// `process_tls_records` is called at most this often per operation without input being
/// consumed: each call hands out one queued message or changes state, so a handful suffice.
const MAX_STATES: usize = 64;

/// A server TLS connection and the bytes it has not passed on yet.
pub(super) struct ServerTls {
    session: Session,
    /// Ciphertext not processed yet: a record cut by the end of a read, or records left
    /// when the reader's buffer filled up. The unprocessed bytes always stay in front.
    input: Pending,
    /// Plaintext of a record that did not fit in the reader's buffer.
    plain: Pending,
    /// Small pieces of plaintext gathered into one record.
    stage: Vec<u8>,
    /// Records made and not yet taken by the socket.
    out: Out,
    /// The peer's `close_notify` (RFC 8446 §6.1) or TCP close was read: reads say EOF.
    eof: bool,
    /// Application data has been encrypted: from then on the output buffer is kept for the
    /// next records. Before, it held the handshake's flights, which are not repeated.
    writing: bool,
}

/// Who protects the records.
enum Session {
    /// rustls: the handshake, and the whole of a TLS 1.2 connection. Boxed, so that a
    /// connection gives its memory back once [`Records`] takes over.
    Rustls(Box<UnbufferedServerConnection>),
    /// A TLS 1.3 connection after its handshake (inline: what it reads for every record is
    /// a few words beside the connection's buffers).
    Records(Records),
    /// The hand-over failed; the connection is being closed.
    Lost,
}

/// Why processing stopped.
enum Stop {
    /// A record is incomplete (or the handshake waits for the peer): read the socket.
    NeedData,
    /// The reader's buffer is full.
    Full,
    /// The peer sent `close_notify`.
    Closed,
}

impl ServerTls {
    pub(super) fn new(config: Arc<ServerConfig>) -> io::Result<Box<Self>> {
        Ok(Box::new(ServerTls {
            session: Session::Rustls(Box::new(
                UnbufferedServerConnection::new(config).map_err(io::Error::other)?,
            )),
            input: Pending::default(),
            plain: Pending::default(),
            stage: Vec::new(),
            out: Out::default(),
            eof: false,
            writing: false,
        }))
    }

    pub(super) fn handshaking(&self) -> bool {
        match &self.session {
            Session::Rustls(conn) => conn.is_handshaking(),
            Session::Records(_) | Session::Lost => false,
        }
    }

    #[cfg(test)]
    pub(super) fn set_rekey_limit(&mut self, limit: u64) {
        if let Session::Records(records) = &mut self.session {
            records.set_rekey_limit(limit);
        }
    }

    /// Whether [`Records`] has taken over from rustls.
    #[cfg(test)]
    pub(super) fn records_took_over(&self) -> bool {
        matches!(self.session, Session::Records(_))
    }

    /// Once rustls has finished a TLS 1.3 handshake and has nothing left to send, its keys go
    /// to [`Records`] (rustls's kernel-TLS hand-over; `enable_secret_extraction` is set).
    fn take_over(&mut self) -> io::Result<()> {
        match &self.session {
            Session::Rustls(conn)
                if !conn.is_handshaking()
                    && conn.protocol_version() == Some(ProtocolVersion::TLSv1_3) => {}
            _ => return Ok(()),
        }
        let Session::Rustls(conn) = std::mem::replace(&mut self.session, Session::Lost) else {
            unreachable!("matched above");
        };
        let (secrets, kernel) = conn.dangerous_into_kernel_connection().map_err(tls_error)?;
        let records = Records::from_kernel(secrets, kernel).map_err(record_error)?;
        self.session = Session::Records(records);
        Ok(())
    }

    /// Records are waiting for the socket.
    pub(super) fn wants_write(&self) -> bool {
        self.out.sent < self.out.end
    }

    /// Gives back the buffers of a quiet connection.
    pub(super) fn shrink(&mut self) {
        if self.input.is_empty() {
            self.input = Pending::default();
        }
        if self.plain.is_empty() {
            self.plain = Pending::default();
        }
        self.stage = Vec::new();
        if !self.wants_write() {
            self.out = Out::default();
        }
    }

    /// Reads application bytes into `sink`; see [`super::Transport::read`]. Ciphertext is read
    /// into `scratch` (after what is left of an incomplete record) and decrypted there.
    pub(super) fn read<S: Read + Write>(
        &mut self,
        socket: &mut S,
        sink: &mut impl PlainSink,
        scratch: &mut [u8],
    ) -> io::Result<usize> {
        if let Session::Records(records) = &self.session {
            // The keys' cache misses overlap with the recv(2) below instead of stalling the
            // cipher after it; the reply's seal comes later in the same turn.
            records.prefetch();
        }
        if !self.plain.is_empty() {
            let k = sink.put(self.plain.rest());
            self.plain.consume(k);
        }
        if sink.room() == 0 || self.eof {
            return Ok(sink.filled());
        }
        if !self.input.is_empty() {
            let at = self.input.at;
            let r = process(
                &mut self.session,
                &mut self.input.buf[at..],
                sink,
                &mut self.plain,
                &mut self.out,
            );
            let (used, stop) = self.settle(socket, r)?;
            self.input.consume(used);
            if !matches!(stop, Stop::NeedData) {
                return Ok(sink.filled());
            }
        }
        loop {
            // What is left is an incomplete record: it goes in front of the new bytes.
            let kept = self.input.rest().len();
            if kept >= scratch.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS message larger than the read buffer",
                ));
            }
            let n = match socket.read(&mut scratch[kept..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return match sink.filled() {
                        0 => Err(e),
                        filled => Ok(filled),
                    };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                // A TCP close without `close_notify` is an EOF like any other: WebSocket and
                // HTTP/1.1 framing say whether anything was cut short.
                self.eof = true;
                return Ok(sink.filled());
            }
            let len = kept + n;
            scratch[..kept].copy_from_slice(self.input.rest());
            self.input.consume(kept);
            let r = process(
                &mut self.session,
                &mut scratch[..len],
                sink,
                &mut self.plain,
                &mut self.out,
            );
            let (used, stop) = self.settle(socket, r)?;
            if used < len {
                self.input.buf.extend_from_slice(&scratch[used..len]);
            }
            match stop {
                Stop::NeedData if len < scratch.len() => {
                    // A short read: the socket is drained.
                    return match sink.filled() {
                        0 => Err(io::ErrorKind::WouldBlock.into()),
                        filled => Ok(filled),
                    };
                }
                Stop::NeedData => {}
                Stop::Full | Stop::Closed => return Ok(sink.filled()),
            }
        }
    }

    /// Sends what processing produced (handshake answers, alerts); after an error, the alert
    /// rustls queued for it goes out (as far as the socket takes it) before the error. Notes
    /// the peer's close, and hands a finished TLS 1.3 handshake over to [`Records`].
    fn settle<S: Write>(
        &mut self,
        socket: &mut S,
        r: io::Result<(usize, Stop)>,
    ) -> io::Result<(usize, Stop)> {
        match r {
            Ok(done) => {
                self.send(socket)?;
                match done.1 {
                    Stop::NeedData => self.take_over()?,
                    Stop::Closed => self.eof = true,
                    Stop::Full => {}
                }
                Ok(done)
            }
            Err(e) => {
                let _ = self.alert();
                let _ = self.send(socket);
                Err(e)
            }
        }
    }

    /// After a TLS error: encodes the alert rustls queued for it ([`Records`] seals its own).
    fn alert(&mut self) -> io::Result<()> {
        let Session::Rustls(conn) = &mut self.session else {
            return Ok(());
        };
        for _ in 0..MAX_STATES {
            match conn.process_tls_records(&mut []).state {
                Ok(ConnectionState::EncodeTlsData(mut e)) => self.out.encode(&mut e)?,
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => break,
            }
        }
        Ok(())
    }

    /// Writes the records made so far until none is left (`Ok(true)`) or the socket would
    /// block (`Ok(false)`).
    fn send<S: Write>(&mut self, socket: &mut S) -> io::Result<bool> {
        let out = &mut self.out;
        while out.sent < out.end {
            match socket.write(&out.buf[out.sent..out.end]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => out.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if out.buf.len() > OUT_KEEP || !self.writing {
            *out = Out::default();
        } else {
            (out.sent, out.end) = (0, 0);
        }
        Ok(true)
    }

    /// Drives the connection to a state where application data may be written, passing
    /// queued handshake messages (tickets, key updates) to the output on the way, and calls
    /// `f` with it. `Ok(None)`: not possible yet (the handshake is not done).
    fn with_writer<R>(
        &mut self,
        mut f: impl FnMut(
            &mut WriteTraffic<'_, rustls::server::ServerConnectionData>,
            &mut Out,
        ) -> io::Result<R>,
    ) -> io::Result<Option<R>> {
        let Session::Rustls(conn) = &mut self.session else {
            return Err(io::ErrorKind::BrokenPipe.into());
        };
        for _ in 0..MAX_STATES {
            let at = self.input.at;
            let status = conn.process_tls_records(&mut self.input.buf[at..]);
            let discard = status.discard;
            let result = match status.state {
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    return f(&mut w, &mut self.out).map(Some)
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => self.out.encode(&mut e),
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    Ok(())
                }
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    // Records left when a reader's buffer filled up: their plaintext waits.
                    while let Some(record) = r.next_record() {
                        match record {
                            Ok(record) => self.plain.buf.extend_from_slice(record.payload),
                            Err(e) => return Err(tls_error(e)),
                        }
                    }
                    Ok(())
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.eof = true;
                    Ok(())
                }
                Ok(ConnectionState::BlockedHandshake) => return Ok(None),
                Ok(ConnectionState::Closed) => return Err(io::ErrorKind::BrokenPipe.into()),
                Ok(other) => return Err(unexpected(&other)),
                Err(e) => return Err(tls_error(e)),
            };
            self.input.consume(discard);
            result?;
        }
        Err(io::Error::other("TLS: no state to write in"))
    }

    /// Encrypts plaintext from `bufs` (up to [`WRITE_MAX`] bytes) and sends the records.
    /// Plaintext is taken only while no records are stuck, so that unsent output stays in the
    /// outbox, where backpressure counts it.
    fn write_vectored<S: Write>(
        &mut self,
        socket: &mut S,
        bufs: &[IoSlice<'_>],
    ) -> io::Result<usize> {
        if !self.send(socket)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if let Session::Records(records) = &mut self.session {
            let taken = seal_vectored(records, &mut self.out, bufs).map_err(record_error)?;
            self.writing |= taken > 0;
            self.send(socket)?;
            return Ok(taken);
        }
        let mut stage = std::mem::take(&mut self.stage);
        let taken = self.with_writer(|w, out| {
            if let [one] = bufs {
                // The common case (an echo): sealed straight from the outbox.
                let chunk = &one[..one.len().min(WRITE_MAX)];
                if !chunk.is_empty() {
                    out.encrypt(w, chunk)?;
                }
                return Ok(chunk.len());
            }
            let mut taken = 0;
            stage.clear();
            for b in bufs {
                let chunk = &b[..b.len().min(WRITE_MAX - taken)];
                if chunk.len() >= STAGE_DIRECT {
                    if !stage.is_empty() {
                        out.encrypt(w, &stage)?;
                        stage.clear();
                    }
                    out.encrypt(w, chunk)?;
                } else {
                    if stage.len() + chunk.len() > STAGE_MAX {
                        out.encrypt(w, &stage)?;
                        stage.clear();
                    }
                    stage.extend_from_slice(chunk);
                }
                taken += chunk.len();
                if taken == WRITE_MAX {
                    break;
                }
            }
            if !stage.is_empty() {
                out.encrypt(w, &stage)?;
                stage.clear();
            }
            Ok(taken)
        });
        self.stage = stage;
        let taken = match taken {
            Ok(t) => {
                let t = t.unwrap_or(0);
                self.writing |= t > 0;
                t
            }
            Err(e) => {
                let _ = self.alert();
                let _ = self.send(socket);
                return Err(e);
            }
        };
        if taken == 0 && bufs.iter().any(|b| !b.is_empty()) {
            // The handshake is not done: the plaintext waits.
            self.send(socket)?;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.send(socket)?;
        Ok(taken)
    }

    /// Writes what `out` holds; see [`super::Transport::flush`].
    pub(super) fn flush<S: Write>(&mut self, socket: &mut S, out: &mut Outbox) -> io::Result<bool> {
        let all = out.flush_to(&mut Writer { tls: self, socket })?;
        Ok(all && self.send(socket)?)
    }

    /// Writes `bytes` now if the socket takes them; returns how many were taken.
    pub(super) fn write_now<S: Write>(&mut self, socket: &mut S, bytes: &[u8]) -> usize {
        self.write_vectored(socket, &[IoSlice::new(bytes)])
            .unwrap_or_default()
    }

    /// Queues `close_notify` (RFC 8446 §6.1) and sends what the socket takes.
    pub(super) fn close_notify<S: Write>(&mut self, socket: &mut S) {
        if let Session::Records(records) = &mut self.session {
            let _ = records.close_notify(&mut self.out);
        } else {
            let _ = self.with_writer(|w, out| out.close_notify(w));
        }
        let _ = self.send(socket);
    }
}

/// The outbox's writer on a TLS connection.
struct Writer<'a, S> {
    tls: &'a mut ServerTls,
    socket: &'a mut S,
}

impl<S: Write> Write for Writer<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tls.write_vectored(self.socket, &[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.tls.write_vectored(self.socket, bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tls.send(self.socket).map(|_| ())
    }
}

/// The output buffer: `buf[sent..end]` waits for the socket, and the bytes beyond `end` are
/// initialised room to encrypt into (kept, so that it is zeroed once).
#[derive(Default)]
struct Out {
    buf: Vec<u8>,
    sent: usize,
    end: usize,
}

impl Out {
    fn room(&mut self, need: usize) -> &mut [u8] {
        if self.buf.len() < self.end + need {
            self.buf.resize(self.end + need, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Runs a rustls encoder into the room at the end of the buffer, growing the room to
    /// what rustls says it needs when the first guess (`need`) is short.
    fn put<E: std::fmt::Display>(
        &mut self,
        mut need: usize,
        mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
        required: impl Fn(&E) -> Option<usize>,
    ) -> io::Result<()> {
        loop {
            match write(self.room(need)) {
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) => match required(&e) {
                    Some(size) => need = size,
                    None => return Err(io::Error::other(e.to_string())),
                },
            }
        }
    }

    /// Handshake messages are sized by rustls first, so that no larger buffer stays behind.
    fn encode(
        &mut self,
        e: &mut EncodeTlsData<'_, rustls::server::ServerConnectionData>,
    ) -> io::Result<()> {
        self.put(
            0,
            |room| e.encode(room),
            |err| match err {
                EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                    Some(*required_size)
                }
                _ => None,
            },
        )
    }

    fn encrypt(
        &mut self,
        w: &mut WriteTraffic<'_, rustls::server::ServerConnectionData>,
        plain: &[u8],
    ) -> io::Result<()> {
        let need = plain.len() + RECORD_OVERHEAD * (plain.len() / (16 * 1024) + 1);
        self.put(need, |room| w.encrypt(plain, room), encrypt_size)
    }

    fn close_notify(
        &mut self,
        w: &mut WriteTraffic<'_, rustls::server::ServerConnectionData>,
    ) -> io::Result<()> {
        self.put(64, |room| w.queue_close_notify(room), encrypt_size)
    }
}

impl records::Sink for Out {
    fn written(&self) -> usize {
        self.end
    }

    fn filled_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.end]
    }

    fn append(&mut self, bytes: &[u8]) {
        self.room(bytes.len())[..bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    fn append_zeroed(&mut self, n: usize) {
        self.room(n);
        self.end += n;
    }
}

/// Seals up to [`WRITE_MAX`] bytes of `bufs` into `out`: small pieces gathered into records
/// of up to 2^14 bytes, large ones (or a lone one) encrypted from where they lie.
fn seal_vectored(
    records: &mut Records,
    out: &mut Out,
    bufs: &[IoSlice<'_>],
) -> Result<usize, RecordError> {
    use records::Sink;
    let mut taken = 0;
    // Where the record being gathered starts.
    let mut open = None;
    for b in bufs {
        let chunk = &b[..b.len().min(WRITE_MAX - taken)];
        if chunk.len() >= STAGE_DIRECT || bufs.len() == 1 {
            if let Some(start) = open.take() {
                records.finish(out, start)?;
            }
            records.seal(out, chunk)?;
        } else if !chunk.is_empty() {
            if let Some(start) = open {
                if out.written() - start - records::HEADER + chunk.len() > records::MAX_PLAIN {
                    records.finish(out, start)?;
                    open = None;
                }
            }
            if open.is_none() {
                open = Some(records.begin(out)?);
            }
            out.append(chunk);
        }
        taken += chunk.len();
        if taken == WRITE_MAX {
            break;
        }
    }
    if let Some(start) = open {
        records.finish(out, start)?;
    }
    Ok(taken)
}

/// The room an encryption asked for, when what it had was short.
fn encrypt_size(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

/// Processes the records at the front of `input` (decrypting them where they are), moving
/// plaintext into `sink` (what does not fit into `plain`) and handshake records into `out`.
/// Returns how many bytes of `input` are done with and why it stopped.
fn process(
    session: &mut Session,
    input: &mut [u8],
    sink: &mut impl PlainSink,
    plain: &mut Pending,
    out: &mut Out,
) -> io::Result<(usize, Stop)> {
    let conn = match session {
        Session::Rustls(conn) => conn,
        Session::Records(records) => {
            return open_records(records, input, sink, plain, out).map_err(|e| {
                records.alert(out, &e);
                record_error(e)
            })
        }
        Session::Lost => return Err(io::ErrorKind::BrokenPipe.into()),
    };
    let mut used = 0;
    loop {
        let status = conn.process_tls_records(&mut input[used..]);
        let mut discard = status.discard;
        let stop = match status.state {
            Ok(ConnectionState::ReadTraffic(mut r)) => {
                // Every record is taken, so that writing finds no plaintext in the way.
                while let Some(record) = r.next_record() {
                    let record = record.map_err(tls_error)?;
                    discard += record.discard;
                    let k = sink.put(record.payload);
                    plain.buf.extend_from_slice(&record.payload[k..]);
                }
                (sink.room() == 0).then_some(Stop::Full)
            }
            Ok(ConnectionState::EncodeTlsData(mut e)) => {
                out.encode(&mut e)?;
                None
            }
            Ok(ConnectionState::TransmitTlsData(t)) => {
                // The records are ours to send now (the caller does, after this).
                t.done();
                None
            }
            Ok(ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_)) => {
                Some(Stop::NeedData)
            }
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => Some(Stop::Closed),
            Ok(other) => return Err(unexpected(&other)),
            Err(e) => return Err(tls_error(e)),
        };
        used += discard;
        if let Some(stop) = stop {
            return Ok((used, stop));
        }
    }
}

/// [`process`] for a [`Records`] session: opens the complete records at the front of `input`
/// in place, until the sink is full.
fn open_records(
    records: &mut Records,
    input: &mut [u8],
    sink: &mut impl PlainSink,
    plain: &mut Pending,
    out: &mut Out,
) -> Result<(usize, Stop), RecordError> {
    let mut used = 0;
    loop {
        let Some(n) = records::complete(&input[used..])? else {
            return Ok((used, Stop::NeedData));
        };
        let record = &mut input[used..used + n];
        used += n;
        match records.open(record, out)? {
            Opened::Data { start, end } => {
                let data = &record[start..end];
                let k = sink.put(data);
                plain.buf.extend_from_slice(&data[k..]);
                if sink.room() == 0 {
                    return Ok((used, Stop::Full));
                }
            }
            Opened::Nothing => {}
            Opened::Closed => return Ok((used, Stop::Closed)),
        }
    }
}

/// A record error as the loop expects it (`InvalidData`: logged, the connection ends).
fn record_error(e: RecordError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// A TLS error as the loop expects it (`InvalidData`: logged, the connection ends).
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// A state our configuration rules out (early data is not enabled).
fn unexpected<D>(state: &ConnectionState<'_, '_, D>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("TLS: unexpected state {state:?}"),
    )
}
