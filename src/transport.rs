//! What lies between a client's socket and the WebSocket/HTTP code: plain TCP, or TLS through
//! rustls's unbuffered (sans-I/O) server connection ([`server_tls`]), chosen per connection by
//! its first byte.
//!
//! The loop reads plaintext, writes plaintext and closes through [`Transport`]; the codec never
//! asks whether the bytes were encrypted. The plain case is one enum branch away from the
//! socket calls it made before TLS existed.

use std::io::{self, BufRead, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::{ClientConnection, ConnectionCommon, ServerConfig};

use crate::outbox::Outbox;
use crate::socket::Stream;

pub mod aead;
pub mod records;
mod server_tls;

use server_tls::ServerTls;

/// The first byte of a TLS record carrying a handshake message (RFC 8446 §5.1,
/// `ContentType.handshake`): what a ClientHello starts with.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Ciphertext taken from the socket per recv(2) on a TLS connection, into a buffer the caller
/// shares between connections: rustls alone would read 4 KiB at a time.
pub const TLS_READ_SIZE: usize = 64 * 1024;

/// Ciphertext read but not yet taken by rustls (the caller's buffer was full) is kept per
/// connection; a buffer larger than this is given back as soon as it is empty.
const PENDING_KEEP: usize = 16 * 1024;

/// A client connection's socket (TCP or Unix) and the layer its bytes pass through.
pub struct Transport {
    pub socket: Stream,
    layer: Layer,
}

enum Layer {
    /// Bytes are the application's own.
    Plain,
    /// On a TLS port, before the first byte has arrived: it says whether TLS follows.
    Undecided,
    /// Boxed: a TLS connection is large and plain connections should not pay for it.
    Tls(Box<ServerTls>),
}

/// A rustls connection and the ciphertext it has not taken yet.
struct TlsState<C> {
    conn: C,
    pending: Pending,
}

impl<C> TlsState<C> {
    fn new(conn: C) -> Box<Self> {
        Box::new(TlsState {
            conn,
            pending: Pending::default(),
        })
    }
}

/// Ciphertext read but not yet taken by rustls, consumed from the front by moving an offset:
/// rustls takes a few KiB per call, and draining the `Vec` each time would move the rest of
/// up to 64 KiB again and again.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    at: usize,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.at == self.buf.len()
    }

    fn rest(&self) -> &[u8] {
        &self.buf[self.at..]
    }

    fn consume(&mut self, n: usize) {
        self.at += n;
        if self.is_empty() {
            self.at = 0;
            self.buf.clear();
            if self.buf.capacity() > PENDING_KEEP {
                self.buf = Vec::new();
            }
        }
    }
}

/// What the first byte on a TLS port said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// Nothing yet (or the peer closed): ask again on the next readable edge.
    Nothing,
    /// A TLS handshake record: the connection is TLS from now on.
    Tls,
    /// Anything else: plain HTTP on the TLS port.
    Plain,
}

impl Transport {
    pub fn plain(socket: Stream) -> Self {
        Transport {
            socket,
            layer: Layer::Plain,
        }
    }

    /// A connection on a TLS port: TLS or plain is decided by [`Transport::sniff`].
    pub fn undecided(socket: Stream) -> Self {
        Transport {
            socket,
            layer: Layer::Undecided,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.layer, Layer::Tls(_))
    }

    pub fn is_undecided(&self) -> bool {
        matches!(self.layer, Layer::Undecided)
    }

    /// The TLS handshake is not complete yet (or has not started on a TLS port).
    pub fn handshaking(&self) -> bool {
        match &self.layer {
            Layer::Plain => false,
            Layer::Undecided => true,
            Layer::Tls(tls) => tls.handshaking(),
        }
    }

    /// The scheme of the server's own origin as this connection reached it (RFC 6454 §4).
    pub fn scheme(&self) -> &'static str {
        match self.layer {
            Layer::Tls(_) => "https",
            _ => "http",
        }
    }

    /// Peeks at the first byte without taking it, and settles the layer: TLS with `config`
    /// if it starts a handshake record, plain otherwise.
    pub fn sniff(&mut self, config: &Arc<ServerConfig>) -> io::Result<Sniffed> {
        if !self.is_undecided() {
            return Ok(Sniffed::Nothing);
        }
        let mut first = [0u8; 1];
        match self.socket.peek(&mut first) {
            Ok(0) => {
                // Closed before saying anything: the plain path reports the EOF.
                self.layer = Layer::Plain;
                Ok(Sniffed::Nothing)
            }
            Ok(_) if first[0] == TLS_HANDSHAKE_RECORD => {
                self.layer = Layer::Tls(ServerTls::new(config.clone())?);
                Ok(Sniffed::Tls)
            }
            Ok(_) => {
                self.layer = Layer::Plain;
                Ok(Sniffed::Plain)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Sniffed::Nothing),
            Err(e) => Err(e),
        }
    }

    /// Reads application bytes into `buf`. TLS: ciphertext is read from the socket into
    /// `scratch` (at least [`TLS_READ_SIZE`]; unused for plain) and decrypted until `buf` is
    /// full or the socket is drained, so that a short read still means "nothing more for
    /// now", as it does for plain TCP. Handshake answers and alerts are written as they arise.
    /// A TLS error is `InvalidData` (after the alert that names it is sent).
    #[inline]
    pub fn read(&mut self, buf: &mut [u8], scratch: &mut [u8]) -> io::Result<usize> {
        match &mut self.layer {
            Layer::Plain => self.socket.read(buf),
            Layer::Undecided => Err(io::ErrorKind::WouldBlock.into()),
            Layer::Tls(tls) => {
                tls.read(&mut self.socket, &mut SliceSink { buf, filled: 0 }, scratch)
            }
        }
    }

    /// Reads up to `max` bytes into the spare capacity of `buf` (a message being assembled).
    pub fn read_into_spare(
        &mut self,
        buf: &mut Vec<u8>,
        max: usize,
        scratch: &mut [u8],
    ) -> io::Result<usize> {
        match &mut self.layer {
            Layer::Plain => read_into_spare(&self.socket, buf, max),
            Layer::Undecided => Err(io::ErrorKind::WouldBlock.into()),
            Layer::Tls(tls) => {
                // Decrypted bytes are copied from rustls's record straight into the spare
                // capacity: no zero-filling of memory that is about to be overwritten.
                let start = buf.len();
                let end = start + max.min(buf.capacity() - start);
                let r = tls.read(
                    &mut self.socket,
                    &mut SpareSink { buf, end, start },
                    scratch,
                );
                if r.is_err() {
                    // As for plain reads: an error appends nothing.
                    buf.truncate(start);
                }
                r
            }
        }
    }

    /// Gives back the TLS buffers of a quiet connection.
    pub fn shrink(&mut self) {
        if let Layer::Tls(tls) = &mut self.layer {
            tls.shrink();
        }
    }

    /// Writes what `out` holds, as much as the socket takes: `Ok(true)` once everything is
    /// on the wire (for TLS, including records rustls still held), `Ok(false)` if it would
    /// block with bytes pending.
    #[inline]
    pub fn flush(&mut self, out: &mut Outbox) -> io::Result<bool> {
        match &mut self.layer {
            Layer::Plain | Layer::Undecided => out.flush_to(&mut self.socket),
            Layer::Tls(tls) => tls.flush(&mut self.socket, out),
        }
    }

    /// Writes `bytes` now if the socket takes them; returns how many were taken (the caller
    /// queues the rest).
    pub fn write_now(&mut self, bytes: &[u8]) -> usize {
        match &mut self.layer {
            Layer::Plain | Layer::Undecided => self.socket.write(bytes).unwrap_or_default(),
            Layer::Tls(tls) => tls.write_now(&mut self.socket, bytes),
        }
    }

    /// TLS records (handshake answers, alerts) wait for the socket to take them.
    pub fn wants_write(&self) -> bool {
        match &self.layer {
            Layer::Tls(tls) => tls.wants_write(),
            _ => false,
        }
    }

    /// On a TLS 1.3 connection past its handshake: lowers the record count after which our
    /// key is replaced; returns whether [`records`] protects the connection.
    #[cfg(test)]
    fn set_tls_rekey_limit(&mut self, limit: u64) -> bool {
        match &mut self.layer {
            Layer::Tls(tls) => {
                tls.set_rekey_limit(limit);
                tls.records_took_over()
            }
            _ => false,
        }
    }

    /// Ends our direction: TLS sends `close_notify` first (RFC 8446 §6.1), then the FIN.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        if let Layer::Tls(tls) = &mut self.layer {
            tls.close_notify(&mut self.socket);
        }
        self.socket.shutdown(Shutdown::Write)
    }
}

/// Reads up to `max` bytes into the spare capacity of `buf` (no zero-filling first).
fn read_into_spare(socket: &impl AsRawFd, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let max = max.min(spare.len());
    // SAFETY: recv(2) writes at most `max` bytes into the spare capacity, which is at least
    // that long.
    let n = unsafe { libc::recv(socket.as_raw_fd(), spare.as_mut_ptr().cast(), max, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel initialised exactly these `n` bytes.
    unsafe { buf.set_len(buf.len() + n as usize) };
    Ok(n as usize)
}

/// Where decrypted bytes go: a slice to fill, or the spare capacity of a message buffer.
trait PlainSink {
    /// Bytes that still fit.
    fn room(&self) -> usize;
    /// Bytes put in so far by this read.
    fn filled(&self) -> usize;
    /// Moves what rustls has decrypted in (up to [`PlainSink::room`]): `Some(n)`, or `None`
    /// once the peer's `close_notify` (RFC 8446 §6.1) or its TCP close has been reached and
    /// nothing was moved. A TCP close without `close_notify` is an EOF like any other:
    /// WebSocket and HTTP/1.1 framing say whether anything was cut short.
    fn take<D>(&mut self, tls: &mut ConnectionCommon<D>) -> io::Result<Option<usize>>;
    /// Copies in as much of `bytes` as fits; returns how much that was.
    fn put(&mut self, bytes: &[u8]) -> usize;
}

struct SliceSink<'a> {
    buf: &'a mut [u8],
    filled: usize,
}

impl PlainSink for SliceSink<'_> {
    fn room(&self) -> usize {
        self.buf.len() - self.filled
    }

    fn filled(&self) -> usize {
        self.filled
    }

    fn put(&mut self, bytes: &[u8]) -> usize {
        let k = bytes.len().min(self.room());
        self.buf[self.filled..self.filled + k].copy_from_slice(&bytes[..k]);
        self.filled += k;
        k
    }

    fn take<D>(&mut self, tls: &mut ConnectionCommon<D>) -> io::Result<Option<usize>> {
        if self.room() == 0 {
            return Ok(Some(0));
        }
        let n = match tls.reader().read(&mut self.buf[self.filled..]) {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        };
        self.filled += n;
        Ok(Some(n))
    }
}

/// A message buffer filled up to `end` (within its capacity, so it never reallocates).
struct SpareSink<'a> {
    buf: &'a mut Vec<u8>,
    end: usize,
    start: usize,
}

impl PlainSink for SpareSink<'_> {
    fn room(&self) -> usize {
        self.end - self.buf.len()
    }

    fn filled(&self) -> usize {
        self.buf.len() - self.start
    }

    fn put(&mut self, bytes: &[u8]) -> usize {
        let k = bytes.len().min(self.room());
        self.buf.extend_from_slice(&bytes[..k]);
        k
    }

    fn take<D>(&mut self, tls: &mut ConnectionCommon<D>) -> io::Result<Option<usize>> {
        let mut reader = tls.reader();
        let mut got = 0;
        while self.buf.len() < self.end {
            let chunk = match reader.fill_buf() {
                // `close_notify` after the last byte.
                Ok([]) => return Ok(if got > 0 { Some(got) } else { None }),
                Ok(chunk) => chunk,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Ok(if got > 0 { Some(got) } else { None })
                }
                Err(e) => return Err(e),
            };
            let k = chunk.len().min(self.end - self.buf.len());
            self.buf.extend_from_slice(&chunk[..k]);
            reader.consume(k);
            got += k;
        }
        Ok(Some(got))
    }
}

fn tls_read<D, S: Read + Write>(
    tls: &mut ConnectionCommon<D>,
    pending: &mut Pending,
    socket: &mut S,
    sink: &mut impl PlainSink,
    scratch: &mut [u8],
) -> io::Result<usize> {
    debug_assert!(!scratch.is_empty(), "an empty read would look like EOF");
    let mut drained = false;
    loop {
        if sink.take(tls)?.is_none() {
            // `close_notify` or EOF: reported now, or (after these bytes) on the next call.
            return Ok(sink.filled());
        }
        if sink.room() == 0 {
            return Ok(sink.filled());
        }
        if !pending.is_empty() {
            let taken = feed(tls, socket, pending.rest())?;
            pending.consume(taken);
            continue;
        }
        if drained {
            return match sink.filled() {
                0 => Err(io::ErrorKind::WouldBlock.into()),
                filled => Ok(filled),
            };
        }
        let n = match socket.read(scratch) {
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
            // rustls learns of the EOF from an empty read; what it still holds comes first.
            feed(tls, socket, &[])?;
            continue;
        }
        drained = n < scratch.len();
        let mut at = 0;
        while at < n {
            at += feed(tls, socket, &scratch[at..n])?;
            if sink.take(tls)?.is_none() {
                break;
            }
            if sink.room() == 0 {
                // rustls holds at most 16 KiB of plaintext: the rest waits as ciphertext.
                // (Only an empty `pending` leads to a socket read.)
                pending.buf.extend_from_slice(&scratch[at..n]);
                break;
            }
        }
    }
}

/// Hands ciphertext to rustls (an empty slice means EOF) and processes it; returns how much
/// it took. Records rustls answers with (handshake, alerts) are written at once.
fn feed<D, S: Write>(
    tls: &mut ConnectionCommon<D>,
    socket: &mut S,
    data: &[u8],
) -> io::Result<usize> {
    let mut rest = data;
    let r = tls.read_tls(&mut rest);
    let taken = data.len() - rest.len();
    let processed = r.and_then(|_| {
        tls.process_new_packets()
            .map(|_| ())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    });
    if let Err(e) = processed {
        // The alert rustls queued for this error goes out before the connection ends.
        let _ = write_records(tls, socket);
        return Err(e);
    }
    if tls.wants_write() {
        write_records(tls, socket)?;
    }
    Ok(taken)
}

/// Writes the records rustls holds until it has none or the socket would block; `Ok(true)`
/// when none are left.
fn write_records<D, S: Write>(tls: &mut ConnectionCommon<D>, socket: &mut S) -> io::Result<bool> {
    while tls.wants_write() {
        match tls.write_tls(&mut OneSlice(&mut *socket)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Hands rustls's records to the socket: a lone record (an echo, a small message) goes out by
/// write(2), as the plain path's bytes do, sparing the kernel writev's iovec import.
struct OneSlice<'a, S>(&'a mut S);

impl<S: Write> Write for OneSlice<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match bufs {
            [one] => self.0.write(one),
            _ => self.0.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// The outbox's writer on a TLS connection: plaintext goes into rustls's `writer()` and the
/// records it makes go to the socket. Plaintext is taken only while rustls has no records
/// stuck, so the unsent output stays in the outbox, where backpressure counts it.
struct TlsWriter<'a, D, S> {
    tls: &'a mut ConnectionCommon<D>,
    socket: &'a mut S,
}

impl<D, S: Write> TlsWriter<'_, D, S> {
    fn push_records(&mut self) -> io::Result<bool> {
        write_records(self.tls, self.socket)
    }
}

impl<D, S: Write> Write for TlsWriter<'_, D, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if !self.push_records()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.tls.writer().write_vectored(bufs)?;
        if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
            // rustls's own buffer is full (before the handshake ends): wait for the socket.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.push_records()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.push_records().map(|_| ())
    }
}

/// The client's side (`wsloop client wss://`): the same reads and writes over a
/// `ClientConnection`, once its handshake is done.
pub struct ClientTransport {
    pub socket: TcpStream,
    tls: Option<Box<TlsState<ClientConnection>>>,
    scratch: Vec<u8>,
}

impl ClientTransport {
    pub fn new(socket: TcpStream, tls: Option<ClientConnection>) -> Self {
        let scratch = match tls {
            Some(_) => vec![0; TLS_READ_SIZE],
            None => Vec::new(),
        };
        ClientTransport {
            socket,
            tls: tls.map(TlsState::new),
            scratch,
        }
    }

    /// Reads application bytes; see [`Transport::read`].
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.tls {
            None => self.socket.read(buf),
            Some(tls) => tls_read(
                &mut tls.conn,
                &mut tls.pending,
                &mut self.socket,
                &mut SliceSink { buf, filled: 0 },
                &mut self.scratch,
            ),
        }
    }

    /// Writes what `out` holds; see [`Transport::flush`].
    pub fn flush(&mut self, out: &mut Outbox) -> io::Result<bool> {
        match &mut self.tls {
            None => out.flush_to(&mut self.socket),
            Some(tls) => {
                let mut w = TlsWriter {
                    tls: &mut tls.conn,
                    socket: &mut self.socket,
                };
                let all = out.flush_to(&mut w)?;
                Ok(all && w.push_records()?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A TLS connection over loopback: the server side as a `Transport`, the client side as
    /// rustls's blocking stream in a thread that sends `data` and then closes.
    fn pair(data: Vec<u8>) -> (Transport, std::thread::JoinHandle<()>) {
        pair_with(move |mut s| {
            s.write_all(&data).unwrap();
            s.conn.send_close_notify();
            s.flush().unwrap();
            // Unread session tickets would turn our close into a reset: read until the end.
            s.sock.shutdown(std::net::Shutdown::Write).unwrap();
            let _ = std::io::copy(&mut s.sock, &mut std::io::sink());
        })
    }

    type Client = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

    /// A TLS connection over loopback: the server side as a `Transport`, the client side as
    /// rustls's blocking stream, handed to `client` in a thread.
    fn pair_with<T: Send + 'static>(
        client: impl FnOnce(Client) -> T + Send + 'static,
    ) -> (Transport, std::thread::JoinHandle<T>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        // One directory per call: tests run in parallel.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("wsloop-transport-{}-{call}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = crate::tls::CertFiles {
            cert: dir.join("c.pem"),
            key: dir.join("k.pem"),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        let config = crate::tls::server_config(std::slice::from_ref(&files)).unwrap();
        std::fs::remove_dir_all(dir).unwrap();

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let tcp = std::net::TcpStream::connect(addr).unwrap();
            let config = crate::tls::client_config(None, true).unwrap();
            let name = "localhost".try_into().unwrap();
            let conn = rustls::ClientConnection::new(config, name).unwrap();
            client(rustls::StreamOwned::new(conn, tcp))
        });
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_nonblocking(true).unwrap();
        let mut t = Transport::undecided(Stream::Tcp(TcpStream::from_std(tcp)));
        let end = Instant::now() + Duration::from_secs(10);
        while t.sniff(&config).unwrap() != Sniffed::Tls {
            assert!(Instant::now() < end, "no ClientHello");
            std::thread::sleep(Duration::from_millis(1));
        }
        (t, client)
    }

    /// Reads everything with reads of `step` bytes until the peer's close_notify.
    fn read_all(t: &mut Transport, step: usize) -> Vec<u8> {
        let mut scratch = vec![0; TLS_READ_SIZE];
        let mut got = Vec::new();
        let mut buf = vec![0; step];
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < end, "only {} bytes arrived", got.len());
            match t.read(&mut buf, &mut scratch) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                // The socket is drained: wait (briefly) for the next bytes.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Reads everything into the spare capacity of a growing buffer, at most `max` bytes a
    /// call, as the loop assembles a large message.
    fn read_all_into_spare(t: &mut Transport, max: usize) -> Vec<u8> {
        let mut scratch = vec![0; TLS_READ_SIZE];
        let mut got = Vec::with_capacity(1000);
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < end, "only {} bytes arrived", got.len());
            if got.capacity() == got.len() {
                got.reserve(got.len());
            }
            let (len, cap) = (got.len(), got.capacity());
            match t.read_into_spare(&mut got, max, &mut scratch) {
                Ok(0) => return got,
                Ok(n) => {
                    assert_eq!(got.len(), len + n);
                    assert!(n <= max, "{n} bytes read, {max} asked for");
                    assert_eq!(got.capacity(), cap, "the buffer grew while read into");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn tls_flushes_send_every_byte_then_close_notify() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 11 % 241) as u8).collect();
        // The client reads until the server's close_notify: a TCP close without it would be
        // an `UnexpectedEof` error, not the end of `read_to_end`.
        let (mut t, client) = pair_with(|mut s| {
            let mut got = Vec::new();
            s.read_to_end(&mut got).map(|_| got)
        });
        let mut scratch = vec![0; TLS_READ_SIZE];
        let mut buf = [0u8; 64];
        let end = Instant::now() + Duration::from_secs(10);
        // The handshake completes as the client's Finished is read.
        while t.handshaking() {
            assert!(Instant::now() < end, "the handshake did not complete");
            match t.read(&mut buf, &mut scratch) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                r => panic!("{r:?} during the handshake"),
            }
        }
        let mut out = Outbox::new();
        // In pieces of many sizes, in the outbox's own buffer and moved in by turns (so that
        // a write sees many slices: small ones gathered into a record, large ones sealed where
        // they are), and records and writes do not line up.
        let (mut at, mut i) = (0, 0);
        while at < data.len() {
            let size = [1, 100, 5000, 70_001, 3, 16_384, 20_000, 40][i % 8];
            let piece = &data[at..(at + size).min(data.len())];
            if i % 2 == 0 {
                out.push(piece);
            } else {
                out.push_moved(piece.to_vec());
            }
            (at, i) = (at + piece.len(), i + 1);
        }
        while !t.flush(&mut out).unwrap() {
            assert!(Instant::now() < end, "{} bytes still unsent", out.len());
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(out.is_empty() && !t.wants_write());
        t.shutdown_write().unwrap();
        let got = client.join().unwrap().expect("a clean TLS close");
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the bytes differ");
        t.shrink();
    }

    /// Completes the handshake on the server side.
    fn handshake(t: &mut Transport) {
        let mut scratch = vec![0; TLS_READ_SIZE];
        let end = Instant::now() + Duration::from_secs(10);
        while t.handshaking() {
            assert!(Instant::now() < end, "the handshake did not complete");
            match t.read(&mut [0; 64], &mut scratch) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                r => panic!("{r:?} during the handshake"),
            }
        }
    }

    #[test]
    fn tls13_key_updates_both_ways_keep_every_byte() {
        let data: Vec<u8> = (0..150_000u32).map(|i| (i * 17 % 253) as u8).collect();
        let sent = data.clone();
        // rustls's client asks for our KeyUpdate with each of its own (RFC 8446 §4.6.3).
        let (mut t, client) = pair_with(move |mut s| {
            for part in sent.chunks(40_000) {
                s.write_all(part).unwrap();
                s.conn.refresh_traffic_keys().unwrap();
            }
            s.flush().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).map(|_| got)
        });
        let mut scratch = vec![0; TLS_READ_SIZE];
        let mut buf = vec![0; 3000];
        let (mut echoed, mut out, mut limited) = (0, Outbox::new(), false);
        let end = Instant::now() + Duration::from_secs(10);
        while echoed < data.len() || !out.is_empty() {
            assert!(Instant::now() < end, "{echoed} bytes echoed");
            let r = t.read(&mut buf, &mut scratch);
            if !limited {
                // Once ours, our key is replaced every 5 records.
                limited = t.set_tls_rekey_limit(5);
            }
            match r {
                Ok(0) => panic!("EOF after {echoed} bytes"),
                Ok(n) => {
                    out.push(&buf[..n]);
                    echoed += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
            t.flush(&mut out).unwrap();
        }
        while t.wants_write() {
            assert!(Instant::now() < end, "records still unsent");
            t.flush(&mut out).unwrap();
        }
        assert!(limited, "TLS 1.3 records were never protected by `records`");
        t.shutdown_write().unwrap();
        let got = client.join().unwrap().expect("a clean TLS close");
        assert!(
            got == data,
            "{} bytes came back, not the {} sent",
            got.len(),
            data.len()
        );
    }

    #[test]
    fn tls13_bad_records_get_the_alert_that_names_them() {
        // A record that fails authentication; one too long (RFC 8446 §5.2); a plaintext
        // change_cipher_spec after the handshake.
        let mut forged = vec![23, 3, 3, 0, 40];
        forged.extend_from_slice(&[0x5a; 40]);
        let cases: [(Vec<u8>, &str); 3] = [
            (forged, "BadRecordMac"),
            (vec![23, 3, 3, 0x41, 0x01], "RecordOverflow"),
            (vec![20, 3, 3, 0, 1, 1], "UnexpectedMessage"),
        ];
        for (bytes, alert) in cases {
            let (mut t, client) = pair_with(move |mut s| {
                s.conn.complete_io(&mut s.sock).unwrap();
                // Past rustls: these bytes are ours, not a record it made.
                s.sock.write_all(&bytes).unwrap();
                let mut buf = [0; 16];
                match s.read(&mut buf) {
                    Err(e) => e.to_string(),
                    Ok(n) => format!("read {n} bytes"),
                }
            });
            handshake(&mut t);
            let mut scratch = vec![0; TLS_READ_SIZE];
            let end = Instant::now() + Duration::from_secs(10);
            let err = loop {
                assert!(Instant::now() < end, "the bad record was not noticed");
                match t.read(&mut [0; 64], &mut scratch) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(e) => break e,
                    Ok(n) => panic!("{n} bytes from a bad record"),
                }
            };
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            let said = client.join().unwrap();
            assert!(said.contains(alert), "the client saw {said:?}, not {alert}");
        }
    }

    #[test]
    fn tls_reads_into_spare_capacity_get_every_byte_then_eof() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 251) as u8).collect();
        for max in [5, 16 * 1024, 1 << 20] {
            let (mut t, client) = pair(data.clone());
            assert_eq!(read_all_into_spare(&mut t, max), data, "reads of {max}");
            drop(t);
            client.join().unwrap();
        }
    }

    #[test]
    fn tls_reads_of_any_size_get_every_byte_then_eof() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 253) as u8).collect();
        for step in [7, 4096, 100_000] {
            let (mut t, client) = pair(data.clone());
            assert!(t.is_tls() && t.scheme() == "https");
            assert_eq!(read_all(&mut t, step), data, "reads of {step}");
            t.shrink();
            drop(t);
            client.join().unwrap();
        }
    }
}
