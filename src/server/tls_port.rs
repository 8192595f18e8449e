//! TLS on the port: which connections speak it (the first byte), how many handshakes a loop
//! turn spends CPU on, plain HTTP sent to the TLS port, and certificates reloaded on SIGHUP or
//! when their files change. The bytes themselves go through [`Transport`].

use std::path::PathBuf;
use std::sync::Arc;

use rustls::ServerConfig;

use super::*;
use crate::tls::{self, CertFiles};
use crate::transport::Sniffed;

/// What the loop keeps for TLS.
pub(super) struct TlsPort {
    /// Handed to each new connection; replaced whole on reload, so open connections keep the
    /// configuration they started with.
    config: Arc<ServerConfig>,
    files: Vec<CertFiles>,
    /// The files' modification times at the last load (`--tls-reload`).
    mtimes: Vec<Option<SystemTime>>,
    /// When `--tls-reload` next looks at the files.
    pub(super) next_check: Option<Instant>,
    /// Handshake steps this loop turn may still process.
    budget: usize,
    /// Where ciphertext is read, shared by all TLS connections (taken while reading).
    pub(super) scratch: Vec<u8>,
}

impl TlsPort {
    /// Loads the certificates named by the flags; `None` when TLS is off.
    pub(super) fn new(config: &Config, now: Instant) -> io::Result<Option<TlsPort>> {
        if config.tls_certs.is_empty() {
            return Ok(None);
        }
        let invalid = |e: tls::TlsFileError| io::Error::new(io::ErrorKind::InvalidInput, e);
        let files = tls::pairs(&config.tls_certs, &config.tls_keys).map_err(invalid)?;
        let server = tls::server_config(&files).map_err(invalid)?;
        Ok(Some(TlsPort {
            config: server,
            mtimes: tls::mtimes(&files),
            files,
            next_check: config.tls_reload.map(|every| now + every),
            budget: config.tls_handshakes_per_turn,
            scratch: vec![0; crate::transport::TLS_READ_SIZE],
        }))
    }
}

impl Server {
    /// The transport a newly accepted socket starts with.
    pub(super) fn transport_for(&self, socket: Stream) -> Transport {
        match self.tls {
            Some(_) => Transport::undecided(socket),
            None => Transport::plain(socket),
        }
    }

    /// A new loop turn: the handshake budget is full again.
    pub(super) fn tls_new_turn(&mut self) {
        if let Some(tls) = &mut self.tls {
            tls.budget = self.config.tls_handshakes_per_turn;
        }
    }

    /// Called before reading a connection whose TLS handshake is not done. Handshakes cost
    /// CPU (key exchange, signature): past the turn's budget the connection waits for the
    /// next turn, after the events of open connections. On the first byte, settles whether
    /// the connection is TLS. False when the connection is not to be read now.
    pub(super) fn tls_may_read(&mut self, key: usize) -> bool {
        let Some(tls) = &mut self.tls else {
            return true;
        };
        if tls.budget == 0 {
            self.to_read.push(key);
            return false;
        }
        let client = &mut self.clients[key];
        if !client.transport.is_undecided() {
            tls.budget -= 1;
            return true;
        }
        match client.transport.sniff(&tls.config) {
            Ok(Sniffed::Tls) => {
                tls.budget -= 1;
                true
            }
            Ok(Sniffed::Plain) => {
                if let (false, Phase::Http(state)) =
                    (self.config.tls_allow_plain, &mut client.phase)
                {
                    state.to_https = true;
                }
                debug!("{}: plain HTTP on the TLS port", client.peer);
                true
            }
            // Nothing to read yet; or the peer closed, which the plain read now reports.
            Ok(Sniffed::Nothing) => !client.transport.is_undecided(),
            Err(e) => {
                debug!("{}: {e}", client.peer);
                self.end(key);
                false
            }
        }
    }

    /// Plain HTTP on the TLS port: a permanent redirect to the same target over `https://`
    /// (308 keeps the method and body, RFC 9110 §15.4.9), then the connection closes.
    pub(super) fn redirect_to_https(&mut self, key: usize, head: &Head<'_>) {
        let host = head
            .get("Host")
            .and_then(|h| std::str::from_utf8(h).ok())
            .map(str::trim)
            .filter(|h| is_authority(h))
            .map(str::to_owned)
            .unwrap_or_else(|| self.local_addr.to_string());
        let location = format!("https://{host}{}", head.target);
        info!(
            "{}: plain HTTP on the TLS port: {} {} redirected to {location}",
            self.clients[key].peer, head.method, head.target
        );
        let mut r = Response::text(308, "this port speaks TLS: use https:// or wss://");
        r.headers.push(("Location", location));
        self.respond(key, &r, head.method == "HEAD", false);
    }

    /// SIGHUP, or changed files with `--tls-reload`: new connections get the certificates in
    /// the files now; open ones keep theirs. A file that does not load is logged and the
    /// certificates in use are kept.
    pub(super) fn reload_tls(&mut self, why: &str) {
        let Some(tls) = &mut self.tls else {
            info!("{why}: no TLS certificates to reload");
            return;
        };
        // Times first: a file rewritten while it is read is read again at the next check.
        tls.mtimes = tls::mtimes(&tls.files);
        match tls::server_config(&tls.files) {
            Ok(config) => {
                tls.config = config;
                let names: Vec<&PathBuf> = tls.files.iter().map(|f| &f.cert).collect();
                info!("{why}: TLS certificates reloaded from {names:?}");
            }
            Err(e) => warn!("{why}: TLS certificates not reloaded, the old ones stay: {e}"),
        }
    }

    /// `--tls-reload`: the files are due to be looked at.
    pub(super) fn tls_check_due(&self, now: Instant) -> bool {
        self.tls
            .as_ref()
            .and_then(|t| t.next_check)
            .is_some_and(|at| now >= at)
    }

    /// `--tls-reload`: reloads when a certificate or key file's modification time changed.
    pub(super) fn check_tls_files(&mut self, now: Instant) {
        let Some(tls) = &mut self.tls else { return };
        let Some(every) = self.config.tls_reload else {
            return;
        };
        tls.next_check = Some(now + every);
        if tls::mtimes(&tls.files) != tls.mtimes {
            self.reload_tls("certificate files changed");
        }
    }
}

/// A `Host` value safe to put in a `Location`: host name or address and port, nothing else
/// (RFC 3986 §3.2: reg-name, IPv6 literal, port).
fn is_authority(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_authorities_go_into_a_location() {
        for ok in ["example.com", "example.com:8443", "[::1]:9001", "127.0.0.1"] {
            assert!(is_authority(ok), "{ok}");
        }
        for bad in ["", "a/b", "a b", "evil.com/@x", "a\"b", "x?y", "x#y", "u@h"] {
            assert!(!is_authority(bad), "{bad}");
        }
    }
}
