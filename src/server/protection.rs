//! Protection at the door: the `Origin` check (cross-site WebSocket hijacking), the
//! per-address connection limit, and accepting on when descriptors run out.

use std::collections::HashMap;
use std::fs::File;
use std::net::IpAddr;

use super::*;
use crate::error::io_message;
use crate::forwarded;
use crate::origin::{self, OriginError, OriginPolicy};
use crate::target::Target;

/// While `accept(2)` keeps failing (descriptors out and the spare already spent, no kernel
/// memory), the listener is retried this often: no new edge comes for connections already
/// waiting in its backlog.
pub(super) const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// At most one log line per this period about failing accepts; the rest are counted in it.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(1);

/// What the door keeps between connections.
pub(super) struct Protection {
    origins: OriginPolicy,
    /// Open connections per address; empty (never touched) without `--max-per-ip`.
    per_ip: HashMap<IpAddr, usize>,
    /// A descriptor held in reserve: closed to accept (and refuse) one connection when the
    /// process is out of them, so that the backlog drains instead of stalling the listener.
    spare: Option<File>,
    /// When to try the listener again after an accept failure the spare could not absorb.
    pub(super) accept_retry: Option<Instant>,
    last_accept_log: Option<Instant>,
    /// Accept failures since the last line about them.
    unlogged_accept_errors: u64,
}

impl Protection {
    pub(super) fn new(config: &Config) -> io::Result<Protection> {
        let origins = OriginPolicy::parse(&config.allowed_origins)
            .map_err(|msg| io::Error::new(io::ErrorKind::InvalidInput, msg))?;
        Ok(Protection {
            origins,
            per_ip: HashMap::new(),
            spare: Some(spare_descriptor()?),
            accept_retry: None,
            last_accept_log: None,
            unlogged_accept_errors: 0,
        })
    }
}

fn spare_descriptor() -> io::Result<File> {
    File::open("/dev/null")
}

/// IPv4 peers on a dual-stack socket arrive as `::ffff:a.b.c.d`; one address, one count.
fn address(peer: SocketAddr) -> IpAddr {
    peer.ip().to_canonical()
}

impl Server {
    /// `--max-per-ip`: true (and the connection answered 429 and dropped) when the peer's
    /// address already has as many connections as it may.
    pub(super) fn over_per_ip_limit(&mut self, socket: &mut Stream, peer: SocketAddr) -> bool {
        let Some(max) = self.config.max_per_ip else {
            return false;
        };
        if self.is_trusted_proxy(peer) {
            // Counted under the client's address once its request says who that is.
            return false;
        }
        let open = self
            .protection
            .per_ip
            .get(&address(peer))
            .copied()
            .unwrap_or(0);
        if open < max {
            return false;
        }
        info!(
            "{peer}: refused, {open} connections open from {} (--max-per-ip {max})",
            address(peer)
        );
        self.refuse_unregistered(socket, HandshakeError::TooManyFromAddress);
        true
    }

    /// Counts a connection just accepted against its address (`--max-per-ip`).
    pub(super) fn count_peer(&mut self, peer: SocketAddr) {
        if self.config.max_per_ip.is_some() {
            *self.protection.per_ip.entry(address(peer)).or_insert(0) += 1;
        }
    }

    /// A connection of this peer has ended (called from `Server::end`).
    pub(super) fn release_peer(&mut self, peer: SocketAddr) {
        if self.config.max_per_ip.is_none() {
            return;
        }
        let ip = address(peer);
        if let Some(n) = self.protection.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.protection.per_ip.remove(&ip);
            }
        }
    }

    /// Answers a socket that never became a client, and counts the refusal. On a TLS port
    /// it is only closed: an answer would need a handshake, which is the CPU a refusal saves.
    pub(super) fn refuse_unregistered(&mut self, socket: &mut Stream, e: HandshakeError) {
        if self.tls.is_none() {
            let mut out = Vec::new();
            handshake::write_refusal(&mut out, e);
            let _ = socket.write(&out);
        }
        self.stats.refused.add(e.status());
    }

    /// Handles an `accept(2)` error; true when the accept loop should go on.
    ///
    /// Out of descriptors (EMFILE, ENFILE), the spare is closed to accept one waiting
    /// connection, answer it 503 and close it: the backlog drains and a new edge will come.
    /// When that cannot help, the listener is retried on a timer while the error lasts.
    pub(super) fn accept_failed(&mut self, e: &io::Error) -> bool {
        self.stats.accept_errors += 1;
        self.log_accept_error(e);
        if e.kind() == io::ErrorKind::ConnectionAborted {
            // The peer gave up while waiting in the backlog; the next one may be fine.
            return true;
        }
        if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
            match self.shed_with_spare() {
                Some(true) => return true,
                Some(false) => return false,
                None => {}
            }
        }
        self.protection.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
        false
    }

    /// Spends the spare descriptor on one waiting connection: Some(true) one was refused,
    /// Some(false) none was waiting, None the spare could not help.
    fn shed_with_spare(&mut self) -> Option<bool> {
        drop(self.protection.spare.take()?);
        let shed = match self.listener.accept() {
            Ok((mut socket, peer)) => {
                debug!("{peer}: refused, out of descriptors");
                self.refuse_unregistered(&mut socket, HandshakeError::Unavailable);
                Some(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(false),
            Err(_) => None,
        };
        self.protection.spare = spare_descriptor().ok();
        shed
    }

    /// Logs accept failures at most once per `ACCEPT_LOG_EVERY`, with how many were not logged.
    fn log_accept_error(&mut self, e: &io::Error) {
        let p = &mut self.protection;
        let now = Instant::now();
        if p.last_accept_log
            .is_some_and(|at| now.duration_since(at) < ACCEPT_LOG_EVERY)
        {
            p.unlogged_accept_errors += 1;
            return;
        }
        let more = mem::take(&mut p.unlogged_accept_errors);
        p.last_accept_log = Some(now);
        if more > 0 {
            warn!(
                "accept failed: {} ({more} more since the last line)",
                io_message(e)
            );
        } else {
            warn!("accept failed: {}", io_message(e));
        }
    }

    /// A `--trusted-proxy`, or any peer on a Unix socket: only local processes allowed to
    /// open the socket file (`--unix-mode`) reach it, and they are the proxy.
    pub(super) fn is_trusted_proxy(&self, peer: SocketAddr) -> bool {
        let ip = peer.ip();
        self.listener.is_unix() || self.config.trusted_proxies.iter().any(|c| c.contains(ip))
    }

    /// `--trusted-proxy`: the client a request from a trusted proxy is for becomes the
    /// connection's peer (logs, `--max-per-ip`, `REMOTE_ADDR`), per request since a proxy
    /// reuses its connections for many clients. Returns the scheme the client used, for the
    /// Origin check, or the refusal when the client's address is over `--max-per-ip`.
    pub(super) fn forwarded_client(
        &mut self,
        key: usize,
        head: &Head<'_>,
        own_scheme: &'static str,
    ) -> Result<&'static str, HandshakeError> {
        let tcp_peer = match &self.clients[key].phase {
            Phase::Http(state) => state.tcp_peer,
            _ => self.clients[key].peer.addr(),
        };
        if !self.is_trusted_proxy(tcp_peer) {
            return Ok(own_scheme);
        }
        let values = |name| head.values(name).collect::<Vec<_>>();
        let (fwd, xff, xfp) = (
            values("Forwarded"),
            values("X-Forwarded-For"),
            values("X-Forwarded-Proto"),
        );
        let headers = forwarded::Headers {
            forwarded: &fwd,
            x_forwarded_for: &xff,
            x_forwarded_proto: &xfp,
        };
        let found = forwarded::behind_proxy(tcp_peer, &self.config.trusted_proxies, &headers);
        let old = self.clients[key].peer.addr();
        if found.addr != old {
            debug!("{tcp_peer}: forwarded for {}", found.addr);
            self.release_peer(old);
            self.clients[key].peer = found.addr.into();
            if let Some(max) = self.config.max_per_ip {
                let open = self.protection.per_ip.get(&address(found.addr)).copied();
                if open.unwrap_or(0) >= max {
                    info!(
                        "{}: refused, {} connections open from {} (--max-per-ip {max})",
                        found.addr,
                        open.unwrap_or(0),
                        address(found.addr)
                    );
                    // Counted, so that the release when the connection ends balances.
                    self.count_peer(found.addr);
                    return Err(HandshakeError::TooManyFromAddress);
                }
            }
            self.count_peer(found.addr);
        }
        Ok(found.proto.unwrap_or(own_scheme))
    }

    /// The `Origin` check for upgrades and `POST /publish` (the two things a hostile page
    /// could make a visitor's browser do here); logs a refusal with the flag that allows it.
    /// `scheme` is how the request reached us (`https` over TLS): the server's own origin.
    pub(super) fn check_origin(
        &self,
        peer: SocketAddr,
        scheme: &str,
        head: &Head<'_>,
        target: &Target<'_>,
    ) -> Result<(), HandshakeError> {
        let guarded = head.wants_websocket()
            || (head.method == "POST" && target.path.starts_with("/publish/"));
        if !guarded {
            return Ok(());
        }
        let origins: Vec<&[u8]> = head.values("Origin").collect();
        if origins.is_empty() {
            return Ok(());
        }
        // RFC 9112 §3.2.2: an absolute-form target's authority stands in for Host.
        let host = target
            .authority
            .map(str::as_bytes)
            .or_else(|| head.get("Host"))
            .unwrap_or_default();
        let Err(e) = origin::check(&origins, host, scheme, &self.protection.origins) else {
            return Ok(());
        };
        let shown = String::from_utf8_lossy(origins[0]);
        let host = String::from_utf8_lossy(host);
        match e {
            OriginError::Malformed(_) => {
                info!("{peer}: Origin {shown:?} refused for Host {host:?}: {e}")
            }
            _ => info!(
                "{peer}: Origin {shown} refused for Host {host:?} ({} {} {}); to allow it: --allowed-origin {shown}",
                head.method, target.path, e
            ),
        }
        Err(HandshakeError::OriginRefused(e))
    }
}
