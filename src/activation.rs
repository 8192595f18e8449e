//! systemd socket activation (`sd_listen_fds(3)`): systemd binds the socket named in a
//! `.socket` unit and starts us with it open as descriptor 3, `LISTEN_FDS=1` and
//! `LISTEN_PID=<our pid>`. We serve that socket instead of binding `--bind`.
//!
//! The variables are removed from our environment once read, so that `--exec` programs do
//! not take the socket as theirs; the descriptor is marked close-on-exec for the same reason.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::socket::Listener;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
pub const FIRST_FD: RawFd = 3;

/// How many descriptors the environment says were passed to the process `our_pid`: none
/// when `LISTEN_FDS` is absent, or `LISTEN_PID` names another process (we inherited the
/// variables from a parent that was activated).
pub fn passed(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    our_pid: u32,
) -> Result<usize, String> {
    let Some(fds) = listen_fds else {
        return Ok(0);
    };
    if listen_pid.and_then(|p| p.trim().parse::<u32>().ok()) != Some(our_pid) {
        return Ok(0);
    }
    fds.trim()
        .parse()
        .map_err(|_| format!("LISTEN_FDS={fds:?}: not a number of descriptors"))
}

/// The listener systemd passed, if any. Reads and removes `LISTEN_PID`, `LISTEN_FDS` and
/// `LISTEN_FDNAMES`; call it before any thread starts (the environment is process-wide).
pub fn take() -> io::Result<Option<Listener>> {
    let var = |name| std::env::var(name).ok();
    let (pid, fds) = (var("LISTEN_PID"), var("LISTEN_FDS"));
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(name);
    }
    let n = passed(pid.as_deref(), fds.as_deref(), std::process::id())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    match n {
        0 => Ok(None),
        1 => {
            // SAFETY: LISTEN_FDS and LISTEN_PID say descriptor 3 was passed to this process
            // for it to own; the variables are gone, so nothing else here claims it.
            let fd = unsafe { OwnedFd::from_raw_fd(FIRST_FD) };
            adopt(fd).map(Some).map_err(|e| {
                crate::error::io_context(
                    format_args!("socket activation: descriptor {FIRST_FD} (LISTEN_FDS=1)"),
                    e,
                )
            })
        }
        n => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket activation: LISTEN_FDS={n}, but wsloop serves one socket \
                 (give its .socket unit one ListenStream= line)"
            ),
        )),
    }
}

/// Makes a passed descriptor our listener, TCP or Unix as `getsockname(2)` says, after
/// checking that it is a listening stream socket.
pub fn adopt(fd: OwnedFd) -> io::Result<Listener> {
    let raw = fd.as_raw_fd();
    let invalid = |msg: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, msg.to_string()));
    if sockopt(raw, libc::SO_TYPE)? != libc::SOCK_STREAM {
        return invalid("not a stream socket (the .socket unit needs ListenStream=)");
    }
    if sockopt(raw, libc::SO_ACCEPTCONN)? == 0 {
        return invalid("not a listening socket");
    }
    // SAFETY: `storage` is large enough for any address; `len` says how large it is.
    let family = unsafe {
        let mut storage: libc::sockaddr_storage = mem::zeroed();
        let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getsockname(
            raw,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        libc::c_int::from(storage.ss_family)
    };
    // Programs started by `--exec` must not inherit it.
    // SAFETY: fcntl(2) on a descriptor we own.
    if unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    match family {
        libc::AF_INET | libc::AF_INET6 => {
            let l = std::net::TcpListener::from(fd);
            l.set_nonblocking(true)?;
            Ok(Listener::Tcp(mio::net::TcpListener::from_std(l)))
        }
        libc::AF_UNIX => {
            let l = std::os::unix::net::UnixListener::from(fd);
            l.set_nonblocking(true)?;
            Ok(Listener::Unix(mio::net::UnixListener::from_std(l)))
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a socket of address family {other}, neither TCP nor Unix"),
        )),
    }
}

fn sockopt(fd: RawFd, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` is a c_int and `len` says so.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_names_our_descriptors_only() {
        // (LISTEN_PID, LISTEN_FDS) → descriptors for pid 42
        let cases = [
            (None, None, Ok(0)),
            (Some("42"), None, Ok(0)),
            (Some("42"), Some("1"), Ok(1)),
            (Some("42"), Some("2"), Ok(2)),
            (Some("42"), Some("0"), Ok(0)),
            // Inherited from an activated parent: not ours.
            (Some("41"), Some("1"), Ok(0)),
            (None, Some("1"), Ok(0)),
            (Some("x"), Some("1"), Ok(0)),
            (Some("42"), Some("one"), Err(())),
        ];
        for (pid, fds, want) in cases {
            let want: Result<usize, ()> = want;
            let got = passed(pid, fds, 42).map_err(|_| ());
            assert_eq!(got, want, "LISTEN_PID={pid:?} LISTEN_FDS={fds:?}");
        }
    }

    #[test]
    fn a_passed_descriptor_is_recognised_as_tcp_or_unix_or_refused() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let l = adopt(tcp.into()).unwrap();
        assert!(!l.is_unix());
        assert_eq!(l.local_addr().unwrap(), addr);

        let path = std::env::temp_dir().join(format!("wsloop-adopt-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let l = adopt(unix.into()).unwrap();
        assert!(l.is_unix() && l.path() == Some(path.clone()));
        std::fs::remove_file(&path).unwrap();

        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = adopt(udp.into()).err().unwrap().to_string();
        assert!(err.contains("not a stream socket"), "{err}");

        let connected = std::net::TcpStream::connect(addr).unwrap();
        let err = adopt(connected.into()).err().unwrap().to_string();
        assert!(err.contains("not a listening socket"), "{err}");

        let file = std::fs::File::open("/dev/null").unwrap();
        let err = adopt(file.into()).err().unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTSOCK), "{err}");
    }
}
