//! SIGINT, SIGTERM, SIGCHLD and (with TLS) SIGHUP, turned into a byte on a pipe the loop polls (the self-pipe
//! trick), so that no work happens in the signal handler and no thread is needed.

use std::os::fd::{AsRawFd, IntoRawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use super::*;

impl Server {
    /// Stops cleanly on SIGINT or SIGTERM: clients get a 1001 close, then the loop ends.
    pub fn stop_on_signals(&mut self) -> io::Result<()> {
        let (sender, mut receiver) = mio::unix::pipe::new()?;
        self.poll
            .registry()
            .register(&mut receiver, SIGNALS, Interest::READABLE)?;
        install(sender, self.tls.is_some())?;
        self.signals = Some(receiver);
        Ok(())
    }

    pub(super) fn on_signal(&mut self) {
        let mut stop = false;
        let mut child = false;
        let mut hangup = false;
        if let Some(r) = &mut self.signals {
            let mut b = [0u8; 64];
            while let Ok(n @ 1..) = r.read(&mut b) {
                for &sig in &b[..n] {
                    match sig as libc::c_int {
                        libc::SIGCHLD => child = true,
                        libc::SIGHUP => hangup = true,
                        _ => stop = true,
                    }
                }
            }
        }
        if child {
            self.reap();
        }
        if hangup {
            self.reload_tls("SIGHUP");
        }
        if stop {
            self.shut_down();
        }
    }

    pub(super) fn shut_down(&mut self) {
        if self.stopping.is_some() {
            info!("second signal: stopping now");
            self.stopping = Some(Instant::now());
            return;
        }
        info!("shutting down: closing {} connections", self.clients.len());
        let _ = self.poll.registry().deregister(&mut self.listener);
        self.stopping = Some(Instant::now() + self.config.close_timeout);
        let keys: Vec<usize> = self.clients.iter().map(|(k, _)| k).collect();
        for key in keys {
            match &mut self.clients[key].phase {
                Phase::WebSocket(ws) => {
                    ws.conn
                        .close(close_code::GOING_AWAY, "server shutting down", self.now);
                    self.queue_flush(key);
                }
                _ => self.end(key),
            }
        }
        self.flush_all();
    }
}

static PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn handle_signal(sig: libc::c_int) {
    let fd = PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; the buffer is a valid one-byte array.
        unsafe { libc::write(fd, [sig as u8].as_ptr().cast(), 1) };
    }
}

/// `hangup`: SIGHUP reloads the TLS certificates (without TLS it keeps its default action).
pub fn install(sender: mio::unix::pipe::Sender, hangup: bool) -> io::Result<()> {
    let fd = sender.as_raw_fd();
    let _ = sender.into_raw_fd();
    PIPE.store(fd, Ordering::Relaxed);
    let signals = [libc::SIGINT, libc::SIGTERM, libc::SIGCHLD, libc::SIGHUP];
    for sig in signals.into_iter().take(if hangup { 4 } else { 3 }) {
        // SAFETY: the handler only does an async-signal-safe write to a pipe.
        let old = unsafe {
            libc::signal(
                sig,
                handle_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
        if old == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
