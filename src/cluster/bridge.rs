//! The Redis link's I/O: two non-blocking `mio` TCP sockets that move bytes between Redis and
//! [`RedisLink`]. Nothing here blocks, except resolving a host name, which happens once, in
//! [`RedisBridge::new`], before the event loop runs.
//!
//! The server loop gives the bridge two tokens, passes it their events ([`RedisBridge::ready`])
//! and wakes it at [`RedisBridge::poll_timeout`]; after each call it drains
//! [`RedisBridge::poll_event`].

use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::redis::{Action, Event, LinkError, RedisLink, RedisStats, Settings, Side};
use super::url::RedisUrl;
use crate::connection::MessageKind;

/// Most bytes read from one connection per call, so that a flood from Redis cannot hold the
/// loop; the rest is read on the next turn ([`RedisBridge::poll_timeout`] says "now").
const READ_BUDGET: usize = 1 << 20;
const READ_CHUNK: usize = 64 * 1024;

pub struct RedisBridge {
    link: RedisLink,
    addrs: Vec<SocketAddr>,
    /// The address of the next attempt: each failure moves to the next one.
    next_addr: usize,
    registry: Registry,
    tokens: [Token; 2],
    sockets: [Option<TcpStream>; 2],
    /// A connection read up to its budget, with more perhaps waiting.
    unread: [bool; 2],
    buf: Vec<u8>,
}

impl RedisBridge {
    /// A bridge to `url` that connects at once (in the background). `tokens` are the
    /// publisher's and the subscriber's. Fails only when the host name does not resolve.
    pub fn new(
        url: &RedisUrl,
        mut settings: Settings,
        registry: &Registry,
        tokens: [Token; 2],
        node: u64,
        now: Instant,
    ) -> io::Result<RedisBridge> {
        let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port).to_socket_addrs()?.collect();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no address", url.authority()),
            ));
        }
        settings.user = url.user.clone();
        settings.password = url.password.clone();
        let seed = node ^ u64::from(std::process::id()).rotate_left(32);
        Ok(RedisBridge {
            link: RedisLink::new(settings, node, seed, now),
            addrs,
            next_addr: 0,
            registry: registry.try_clone()?,
            tokens,
            sockets: [None, None],
            unread: [false; 2],
            buf: vec![0; READ_CHUNK],
        })
    }

    /// Which connection a token belongs to, if it is one of the bridge's.
    pub fn side(&self, token: Token) -> Option<Side> {
        Side::BOTH
            .into_iter()
            .find(|&s| self.tokens[s as usize] == token)
    }

    /// An event for one of the bridge's tokens: reads and writes what can be.
    pub fn ready(&mut self, token: Token, now: Instant) {
        if let Some(side) = self.side(token) {
            self.read(side, now);
            self.drive(now);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.unread.contains(&true) {
            return Some(Instant::now());
        }
        self.link.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for side in Side::BOTH {
            if self.unread[side as usize] {
                self.read(side, now);
            }
        }
        self.link.handle_timeout(now);
        self.drive(now);
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.link.poll_event()
    }

    pub fn join(&mut self, room: &str, now: Instant) {
        self.link.join(room);
        self.drive(now);
    }

    pub fn leave(&mut self, room: &str, now: Instant) {
        self.link.leave(room);
        self.drive(now);
    }

    /// Publishes to the other nodes; false when dropped (counted).
    pub fn publish(&mut self, room: &str, kind: MessageKind, payload: &[u8], now: Instant) -> bool {
        let sent = self.link.publish(room, kind, payload);
        self.drive(now);
        sent
    }

    /// Like [`Self::publish`], but only queues: the server writes everything queued in a
    /// loop turn with one [`Self::flush`], not one write per message. When the buffer would
    /// not take it, what is queued is written first (as much as the socket takes), so that
    /// the cap drops messages only when Redis is not reading, not because a turn was busy.
    pub fn queue_publish(
        &mut self,
        room: &str,
        kind: MessageKind,
        payload: &[u8],
        now: Instant,
    ) -> bool {
        if !self.link.has_room(room.len() + payload.len()) {
            self.drive(now);
        }
        self.link.publish(room, kind, payload)
    }

    /// Writes what is queued (what the socket takes; the rest goes on its WRITABLE event).
    pub fn flush(&mut self, now: Instant) {
        self.drive(now);
    }

    /// Bytes queued for Redis and not yet written (both connections).
    pub fn pending(&self) -> usize {
        Side::BOTH.iter().map(|&s| self.link.output(s).len()).sum()
    }

    /// Rooms with local members, each subscribed while the link is up.
    pub fn rooms(&self) -> usize {
        self.link.rooms().count()
    }

    /// `--room-exec`: a lease command (see [`RedisLink::lease`]); false when not sent.
    pub fn lease(
        &mut self,
        op: crate::cluster::lease::LeaseOp,
        room: &str,
        ttl: std::time::Duration,
        now: Instant,
    ) -> bool {
        let sent = self.link.lease(op, room, ttl);
        self.drive(now);
        sent
    }

    /// `--room-exec`: this node runs `room`'s program; members elsewhere reach it.
    pub fn subscribe_input(&mut self, room: &str, now: Instant) {
        self.link.subscribe_input(room);
        self.drive(now);
    }

    pub fn unsubscribe_input(&mut self, room: &str, now: Instant) {
        self.link.unsubscribe_input(room);
        self.drive(now);
    }

    /// `--room-exec`: a local member's message for a program running on another node; it
    /// goes out with this turn's publishes ([`RedisBridge::flush`]). False when dropped.
    pub fn queue_publish_input(&mut self, room: &str, kind: MessageKind, payload: &[u8]) -> bool {
        self.link.publish_input(room, kind, payload)
    }

    pub fn stats(&self) -> RedisStats {
        self.link.stats()
    }

    pub fn node(&self) -> u64 {
        self.link.node()
    }

    /// Carries out the link's actions and writes its output; a write that fails loses the
    /// link, whose `Close` is then carried out too.
    fn drive(&mut self, now: Instant) {
        loop {
            while let Some(action) = self.link.poll_action() {
                match action {
                    Action::Connect => self.connect(now),
                    Action::Close => self.close(),
                }
            }
            let mut failed = false;
            for side in Side::BOTH {
                if let Err(e) = self.write(side) {
                    self.link.lost(now, LinkError::Io(e.to_string()));
                    failed = true;
                }
            }
            if !failed {
                break;
            }
        }
    }

    fn connect(&mut self, now: Instant) {
        self.close();
        let addr = self.addrs[self.next_addr % self.addrs.len()];
        for side in Side::BOTH {
            let opened = TcpStream::connect(addr).and_then(|mut s| {
                s.set_nodelay(true)?;
                self.registry.register(
                    &mut s,
                    self.tokens[side as usize],
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                Ok(s)
            });
            match opened {
                Ok(s) => self.sockets[side as usize] = Some(s),
                Err(e) => {
                    self.next_addr += 1;
                    self.link.lost(now, LinkError::Io(format!("{addr}: {e}")));
                    return;
                }
            }
        }
    }

    fn close(&mut self) {
        for side in Side::BOTH {
            if let Some(mut s) = self.sockets[side as usize].take() {
                let _ = self.registry.deregister(&mut s);
            }
            self.unread[side as usize] = false;
        }
    }

    fn read(&mut self, side: Side, now: Instant) {
        self.unread[side as usize] = false;
        let mut total = 0;
        loop {
            let Some(sock) = self.sockets[side as usize].as_mut() else {
                return;
            };
            if !self.link.in_session() {
                return;
            }
            if total >= READ_BUDGET {
                self.unread[side as usize] = true;
                return;
            }
            match sock.read(&mut self.buf) {
                Ok(0) => {
                    self.link.lost(now, LinkError::Closed);
                    return;
                }
                Ok(n) => {
                    total += n;
                    self.link.receive(side, &self.buf[..n], now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.next_addr += 1;
                    self.link.lost(now, LinkError::Io(e.to_string()));
                    return;
                }
            }
        }
    }

    /// Writes `side`'s pending output until it is empty or the socket is full (mio is
    /// edge-triggered: the next WRITABLE event comes when there is room again).
    fn write(&mut self, side: Side) -> io::Result<()> {
        let Some(sock) = self.sockets[side as usize].as_mut() else {
            return Ok(());
        };
        loop {
            let out = self.link.output(side);
            if out.is_empty() {
                return Ok(());
            }
            match sock.write(out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.link.written(side, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // Still connecting: the WRITABLE event comes when the connection is made.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
