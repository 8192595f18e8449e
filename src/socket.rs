//! The sockets beneath [`crate::transport::Transport`]: a TCP or Unix-domain listener and its
//! streams, what `--bind` names, and the Unix socket file (a stale one replaced, ours removed
//! when the server stops).
//!
//! Both kinds are file descriptors driven by the same calls; the loop holds a [`Listener`] and
//! each client a [`Stream`], and one `match` per call picks the kind.

use std::fmt;
use std::fs;
use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use log::info;
use mio::event::Source;
use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

use crate::error::io_context;

/// The address a peer on a Unix socket is given: it has none. Unspecified, so that no TCP peer
/// can have it; such a peer is a local proxy and is trusted like a `--trusted-proxy`.
pub const UNIX_PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// What `--bind` names: an IP address (with `--port`), or a Unix socket file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindAddr {
    Ip(IpAddr),
    Unix(PathBuf),
}

impl fmt::Display for BindAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindAddr::Ip(ip) => ip.fmt(f),
            BindAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// For clap: `--bind 127.0.0.1`, `--bind ::1`, `--bind unix:/run/wsloop/wsloop.sock`.
pub fn parse_bind(s: &str) -> Result<BindAddr, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("unix: needs a path (unix:/run/wsloop/wsloop.sock)".into());
        }
        return Ok(BindAddr::Unix(path.into()));
    }
    s.parse().map(BindAddr::Ip).map_err(|_| {
        format!("{s:?}: not an IP address or unix:PATH (try 127.0.0.1, ::, unix:/run/wsloop.sock)")
    })
}

/// For clap: `--unix-mode 660` (octal permission bits, as for chmod).
pub fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim(), 8)
        .ok()
        .filter(|&m| m <= 0o777)
        .ok_or_else(|| format!("{s:?}: not a file mode (octal: 660, 600, 666)"))
}

/// The listening socket.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// A new connection and its peer's address ([`UNIX_PEER`] on a Unix socket).
    pub fn accept(&self) -> io::Result<(Stream, SocketAddr)> {
        match self {
            Listener::Tcp(l) => l.accept().map(|(s, peer)| (Stream::Tcp(s), peer)),
            Listener::Unix(l) => l.accept().map(|(s, _)| (Stream::Unix(s), UNIX_PEER)),
        }
    }

    pub fn is_unix(&self) -> bool {
        matches!(self, Listener::Unix(_))
    }

    /// The TCP address; [`UNIX_PEER`] for a Unix socket.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr(),
            Listener::Unix(_) => Ok(UNIX_PEER),
        }
    }

    /// The socket file's path (a Unix socket bound to one).
    pub fn path(&self) -> Option<PathBuf> {
        match self {
            Listener::Tcp(_) => None,
            Listener::Unix(l) => l.local_addr().ok()?.as_pathname().map(Path::to_path_buf),
        }
    }
}

impl Source for Listener {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.register(r, t, i),
            Listener::Unix(l) => l.register(r, t, i),
        }
    }

    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.reregister(r, t, i),
            Listener::Unix(l) => l.reregister(r, t, i),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.deregister(r),
            Listener::Unix(l) => l.deregister(r),
        }
    }
}

/// A client's socket.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Reads without taking (the first byte on a TLS port).
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.peek(buf),
            Stream::Unix(s) => {
                // SAFETY: recv(2) writes at most `buf.len()` bytes into `buf`.
                let n = unsafe {
                    libc::recv(
                        s.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_PEEK,
                    )
                };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(n as usize)
            }
        }
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }

    /// TCP: frames go out as soon as they are written (a Unix socket has no Nagle to turn off).
    pub fn set_nodelay(&self) {
        if let Stream::Tcp(s) = self {
            let _ = s.set_nodelay(true);
        }
    }
}

impl Read for Stream {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    #[inline]
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl Source for Stream {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.register(r, t, i),
            Stream::Unix(s) => s.register(r, t, i),
        }
    }

    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.reregister(r, t, i),
            Stream::Unix(s) => s.reregister(r, t, i),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.deregister(r),
            Stream::Unix(s) => s.deregister(r),
        }
    }
}

/// The Unix socket file this process created: removed when dropped (the server stopped, by a
/// signal or not), unless another file has taken its place since.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// Device, inode and change time: a file made later may reuse the inode number.
    id: (u64, u64, i64, i64),
}

impl SocketFile {
    fn id(m: &fs::Metadata) -> (u64, u64, i64, i64) {
        (m.dev(), m.ino(), m.ctime(), m.ctime_nsec())
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(m) = fs::symlink_metadata(&self.path) {
            if m.file_type().is_socket() && SocketFile::id(&m) == self.id {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds `--bind`: TCP on `port`, or a Unix socket file with permissions `mode` (the file is
/// removed when the returned [`SocketFile`] is dropped).
pub fn bind(addr: &BindAddr, port: u16, mode: u32) -> io::Result<(Listener, Option<SocketFile>)> {
    match addr {
        BindAddr::Ip(ip) => {
            let addr = SocketAddr::new(*ip, port);
            let l = TcpListener::bind(addr)
                .map_err(|e| io_context(format_args!("cannot listen on {addr}"), e))?;
            Ok((Listener::Tcp(l), None))
        }
        BindAddr::Unix(path) => {
            let (l, file) = bind_unix(path, mode).map_err(|e| {
                io_context(format_args!("cannot listen on unix:{}", path.display()), e)
            })?;
            Ok((Listener::Unix(l), Some(file)))
        }
    }
}

/// A TCP listener on `addr` with `SO_REUSEPORT`, so that each `--workers` loop has its own
/// socket on the same port and the kernel spreads new connections over their accept queues.
pub fn bind_reuse_port(addr: SocketAddr) -> io::Result<Listener> {
    use socket2::{Domain, Socket, Type};
    let bind = || -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.set_cloexec(true)?;
        socket.bind(&addr.into())?;
        // The backlog mio's own `TcpListener::bind` asks for.
        socket.listen(1024)?;
        Ok(TcpListener::from_std(socket.into()))
    };
    bind()
        .map(Listener::Tcp)
        .map_err(|e| io_context(format_args!("cannot listen on {addr} (SO_REUSEPORT)"), e))
}

fn bind_unix(path: &Path, mode: u32) -> io::Result<(UnixListener, SocketFile)> {
    let listener = match UnixListener::bind(path) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            remove_stale(path)?;
            UnixListener::bind(path)?
        }
        r => r?,
    };
    // Connecting needs write permission on the file: the mode says which local users may.
    let chmod = fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("--unix-mode {mode:o}: {}", crate::error::io_message(&e)),
        )
    });
    let meta = fs::symlink_metadata(path);
    if chmod.is_err() || meta.is_err() {
        let _ = fs::remove_file(path);
    }
    chmod?;
    let file = SocketFile {
        path: path.to_path_buf(),
        id: SocketFile::id(&meta?),
    };
    Ok((listener, file))
}

/// A socket file nobody listens on was left by a server that died: it is removed. A file of
/// another type, or a socket a live server listens on, is left alone (and the start fails).
fn remove_stale(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the file exists and is not a socket; not removing it",
        ));
    }
    // Non-blocking: a live server with a full backlog must not stall the start.
    match UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "a server is listening on it",
        )),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "a server is listening on it (its backlog is full)",
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            info!("unix:{}: replacing a stale socket file", path.display());
            fs::remove_file(path)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addresses() {
        assert_eq!(
            parse_bind("127.0.0.1"),
            Ok(BindAddr::Ip([127, 0, 0, 1].into()))
        );
        assert!(matches!(parse_bind("::1"), Ok(BindAddr::Ip(IpAddr::V6(_)))));
        assert_eq!(
            parse_bind("unix:/run/w.sock"),
            Ok(BindAddr::Unix("/run/w.sock".into()))
        );
        assert_eq!(
            parse_bind("unix:rel.sock").unwrap().to_string(),
            "unix:rel.sock"
        );
        assert!(parse_bind("unix:").is_err());
        assert!(parse_bind("localhost").is_err());
        assert!(parse_bind("/run/w.sock").is_err());
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert_eq!(parse_mode("7"), Ok(0o7));
        for bad in ["", "8", "1777", "rw-rw----", "-1"] {
            assert!(parse_mode(bad).is_err(), "{bad:?}");
        }
    }

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("wsloop-socket-{}-{name}", std::process::id()))
    }

    #[test]
    fn a_unix_socket_file_is_made_with_its_mode_replaced_when_stale_and_removed_on_drop() {
        let path = temp_path("life");
        let _ = fs::remove_file(&path);
        // A socket file left behind: bound, never listened on again.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let addr = BindAddr::Unix(path.clone());
        let (listener, file) = bind(&addr, 0, 0o640).unwrap();
        assert!(listener.is_unix() && listener.path() == Some(path.clone()));
        let meta = fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        // A live one is not taken over.
        let err = bind(&addr, 0, 0o640).err().unwrap().to_string();
        assert!(err.contains("a server is listening on it"), "{err}");
        drop(file);
        assert!(!path.exists());
        drop(listener);
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_never_removed() {
        let path = temp_path("regular");
        fs::write(&path, "precious").unwrap();
        let err = bind(&BindAddr::Unix(path.clone()), 0, 0o660)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            format!(
                "cannot listen on unix:{}: the file exists and is not a socket; not removing it",
                path.display()
            )
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "precious");
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_replaced_socket_file_is_not_removed() {
        let path = temp_path("replaced");
        let _ = fs::remove_file(&path);
        let (listener, file) = bind(&BindAddr::Unix(path.clone()), 0, 0o600).unwrap();
        drop(listener);
        fs::remove_file(&path).unwrap();
        fs::write(&path, "someone else's").unwrap();
        drop(file);
        assert!(path.exists());
        fs::remove_file(&path).unwrap();
    }
}
