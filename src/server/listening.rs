//! Where the server listens: the socket systemd passed (socket activation), a TCP port, or a
//! Unix socket file (`--bind unix:PATH`); and the log line that says which.

use super::*;
use crate::activation;
use crate::socket;

impl Server {
    /// The listener the server accepts on, and the socket file it owns (if it made one).
    pub(super) fn listener(config: &Config) -> io::Result<(Listener, Option<SocketFile>)> {
        if let Some(listener) = activation::take()? {
            // systemd owns the socket (and its file): it outlives this process.
            info!(
                "socket activation: serving descriptor {} from systemd; --bind and --port are not used",
                activation::FIRST_FD
            );
            return Ok((listener, None));
        }
        socket::bind(&config.bind, config.port, config.unix_mode)
    }

    /// `listening on ws://127.0.0.1:9001`, `listening on unix:/run/wsloop.sock`: the line
    /// tests and scripts wait for.
    pub(super) fn log_listening(&self) {
        if let Some(seat) = &self.seat {
            if seat.me != 0 {
                return debug!("worker {}: listening on {}", seat.me, self.local_addr);
            }
            let scheme = if self.tls.is_some() { "wss" } else { "ws" };
            return info!(
                "listening on {scheme}://{} ({} workers)",
                self.local_addr,
                seat.hub.workers()
            );
        }
        let tls = self.tls.is_some();
        match self.listener.path() {
            Some(path) if tls => info!("listening on unix:{} (TLS)", path.display()),
            Some(path) => info!("listening on unix:{}", path.display()),
            None if self.listener.is_unix() => info!("listening on an unnamed Unix socket"),
            None if tls => info!("listening on wss://{} (and https://)", self.local_addr),
            None => info!("listening on ws://{}", self.local_addr),
        }
    }
}
