//! What lies between a client's socket and the WebSocket/HTTP code: plain TCP, or TLS through
//! `rustls::ServerConnection` (itself sans-I/O), chosen per connection by its first byte.
//!
//! The loop reads plaintext, writes plaintext and closes through [`Transport`]; the codec never
//! asks whether the bytes were encrypted. The plain case is one enum branch away from the
//! socket calls it made before TLS existed.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::{ClientConnection, ConnectionCommon, ServerConfig, ServerConnection};

use crate::outbox::Outbox;

/// The first byte of a TLS record carrying a handshake message (RFC 8446 §5.1,
/// `ContentType.handshake`): what a ClientHello starts with.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// A client connection's socket and the layer its bytes pass through.
pub struct Transport {
    pub socket: TcpStream,
    layer: Layer,
}

enum Layer {
    /// Bytes are the application's own.
    Plain,
    /// On a TLS port, before the first byte has arrived: it says whether TLS follows.
    Undecided,
    /// Boxed: a `ServerConnection` is large and plain connections should not pay for it.
    Tls(Box<ServerConnection>),
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
    pub fn plain(socket: TcpStream) -> Self {
        Transport {
            socket,
            layer: Layer::Plain,
        }
    }

    /// A connection on a TLS port: TLS or plain is decided by [`Transport::sniff`].
    pub fn undecided(socket: TcpStream) -> Self {
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
            Layer::Tls(tls) => tls.is_handshaking(),
        }
    }

    /// The scheme of the server's own origin as this connection reached it (RFC 6454 §4).
    pub fn scheme(&self) -> &'static str {
        match self.layer {
            Layer::Tls(_) => "https",
            _ => "http",
        }
    }

    /// The name the client asked for (SNI), once the handshake has read its ClientHello.
    pub fn server_name(&self) -> Option<&str> {
        match &self.layer {
            Layer::Tls(tls) => tls.server_name(),
            _ => None,
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
                let conn = ServerConnection::new(config.clone()).map_err(io::Error::other)?;
                self.layer = Layer::Tls(Box::new(conn));
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

    /// Reads application bytes into `buf`. TLS: ciphertext is read from the socket and
    /// decrypted until `buf` is full or the socket is drained, so that a short read still
    /// means "nothing more for now", as it does for plain TCP. Handshake answers and alerts
    /// are written as they arise. A TLS error is `InvalidData` (after the alert is sent).
    #[inline]
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.layer {
            Layer::Plain => self.socket.read(buf),
            Layer::Undecided => Err(io::ErrorKind::WouldBlock.into()),
            Layer::Tls(tls) => tls_read(tls, &mut self.socket, buf),
        }
    }

    /// Reads up to `max` bytes into the spare capacity of `buf` (a message being assembled).
    pub fn read_into_spare(&mut self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        match &mut self.layer {
            Layer::Plain => read_into_spare(&self.socket, buf, max),
            Layer::Undecided => Err(io::ErrorKind::WouldBlock.into()),
            Layer::Tls(tls) => {
                // rustls reads into initialised memory only: zero what it may fill.
                let len = buf.len();
                let max = max.min(buf.capacity() - len);
                buf.resize(len + max, 0);
                let r = tls_read(tls, &mut self.socket, &mut buf[len..]);
                buf.truncate(len + *r.as_ref().unwrap_or(&0));
                r
            }
        }
    }

    /// Writes what `out` holds, as much as the socket takes: `Ok(true)` once everything is
    /// on the wire (for TLS, including records rustls still held), `Ok(false)` if it would
    /// block with bytes pending.
    #[inline]
    pub fn flush(&mut self, out: &mut Outbox) -> io::Result<bool> {
        match &mut self.layer {
            Layer::Plain | Layer::Undecided => out.flush_to(&mut self.socket),
            Layer::Tls(tls) => {
                let mut w = TlsWriter {
                    tls,
                    socket: &mut self.socket,
                };
                let all = out.flush_to(&mut w)?;
                Ok(all && w.push_records()?)
            }
        }
    }

    /// Writes `bytes` now if the socket takes them; returns how many were taken (the caller
    /// queues the rest).
    pub fn write_now(&mut self, bytes: &[u8]) -> usize {
        match &mut self.layer {
            Layer::Plain | Layer::Undecided => self.socket.write(bytes).unwrap_or_default(),
            Layer::Tls(tls) => TlsWriter {
                tls,
                socket: &mut self.socket,
            }
            .write(bytes)
            .unwrap_or_default(),
        }
    }

    /// TLS records (handshake answers, alerts) wait for the socket to take them.
    pub fn wants_write(&self) -> bool {
        match &self.layer {
            Layer::Tls(tls) => tls.wants_write(),
            _ => false,
        }
    }

    /// Ends our direction: TLS sends `close_notify` first (RFC 8446 §6.1), then the FIN.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        if let Layer::Tls(tls) = &mut self.layer {
            tls.send_close_notify();
            let _ = write_records(tls, &mut self.socket);
        }
        self.socket.shutdown(Shutdown::Write)
    }
}

/// Reads up to `max` bytes into the spare capacity of `buf` (no zero-filling first).
fn read_into_spare(socket: &TcpStream, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
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

fn tls_read<D>(
    tls: &mut ConnectionCommon<D>,
    socket: &mut TcpStream,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut filled = 0;
    let mut eof = false;
    loop {
        if filled == buf.len() {
            return Ok(filled);
        }
        match tls.reader().read(&mut buf[filled..]) {
            // `close_notify` received: the peer sends nothing more (RFC 8446 §6.1).
            Ok(0) => return Ok(filled),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // TCP closed without `close_notify`: for WebSocket and HTTP/1.1 framing says
            // whether anything was cut short, so this is an EOF like any other.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(filled),
            Err(e) => return Err(e),
        }
        if filled == buf.len() || eof {
            return Ok(filled);
        }
        match tls.read_tls(socket) {
            Ok(0) => eof = true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return if filled > 0 { Ok(filled) } else { Err(e) };
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if let Err(e) = tls.process_new_packets() {
            // The alert rustls queued for this error goes out before the connection ends.
            let _ = write_records(tls, socket);
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        if tls.wants_write() {
            write_records(tls, socket)?;
        }
    }
}

/// Writes the records rustls holds until it has none or the socket would block; `Ok(true)`
/// when none are left.
fn write_records<D>(tls: &mut ConnectionCommon<D>, socket: &mut TcpStream) -> io::Result<bool> {
    while tls.wants_write() {
        match tls.write_tls(socket) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The outbox's writer on a TLS connection: plaintext goes into rustls's `writer()` and the
/// records it makes go to the socket. Plaintext is taken only while rustls has no records
/// stuck, so the unsent output stays in the outbox, where backpressure counts it.
struct TlsWriter<'a, D> {
    tls: &'a mut ConnectionCommon<D>,
    socket: &'a mut TcpStream,
}

impl<D> TlsWriter<'_, D> {
    fn push_records(&mut self) -> io::Result<bool> {
        write_records(self.tls, self.socket)
    }
}

impl<D> Write for TlsWriter<'_, D> {
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
    tls: Option<Box<ClientConnection>>,
}

impl ClientTransport {
    pub fn new(socket: TcpStream, tls: Option<Box<ClientConnection>>) -> Self {
        ClientTransport { socket, tls }
    }

    /// Reads application bytes; see [`Transport::read`].
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.tls {
            None => self.socket.read(buf),
            Some(tls) => tls_read(tls, &mut self.socket, buf),
        }
    }

    /// Writes what `out` holds; see [`Transport::flush`].
    pub fn flush(&mut self, out: &mut Outbox) -> io::Result<bool> {
        match &mut self.tls {
            None => out.flush_to(&mut self.socket),
            Some(tls) => {
                let mut w = TlsWriter {
                    tls,
                    socket: &mut self.socket,
                };
                let all = out.flush_to(&mut w)?;
                Ok(all && w.push_records()?)
            }
        }
    }
}
