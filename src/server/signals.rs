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
        self.forward_signals(stop, hangup, child);
        if child {
            self.reap();
        }
        if hangup {
            self.reload_tls("SIGHUP");
        }
        if stop {
            self.on_stop_signal();
        }
    }

    /// `GET /healthz` answers 503: shutdown has begun (draining, or closing).
    pub(super) fn shutting_down(&self) -> bool {
        self.draining.is_some() || self.stopping.is_some()
    }

    /// The first signal: with `--shutdown-delay`, only health turns 503 for that long;
    /// then (or at once) the close begins. A second signal stops at once.
    pub(super) fn on_stop_signal(&mut self) {
        if self.stopping.is_some() || self.draining.is_some() {
            info!("second signal: stopping now");
            self.draining = None;
            if self.stopping.is_none() {
                self.shut_down();
            }
            self.stopping = Some(Instant::now());
            return;
        }
        let delay = self.config.shutdown_delay;
        if delay.is_zero() {
            self.shut_down();
        } else {
            info!("shutting down in {delay:?}: /healthz answers 503 meanwhile");
            self.draining = Some(Instant::now() + delay);
        }
    }

    pub(super) fn shut_down(&mut self) {
        self.draining = None;
        info!("shutting down: closing {} connections", self.clients.len());
        self.stopping = Some(Instant::now() + self.config.close_timeout);
        // WebSockets get a 1001 close. The listener stays open and plain HTTP connections
        // are kept while the closes finish, so that a load balancer's health check, on a new
        // connection or a keep-alive one, is answered 503 (`GET /healthz`, or the busy answer
        // at accept) rather than left hanging; every answer now closes its connection. Idle
        // HTTP connections do not hold up the exit.
        let keys: Vec<usize> = self.clients.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Phase::WebSocket(ws) = &mut self.clients[key].phase {
                ws.conn
                    .close(close_code::GOING_AWAY, "server shutting down", self.now);
                self.queue_flush(key);
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
