//! The event loop: one thread, one `mio::Poll`, the listener and every client in a `Slab`.
//!
//! The loop only moves bytes, keeps timers and routes messages; what the bytes mean is decided
//! by the sans-I/O modules (`handshake`, `connection`, `http`). Reads go into one buffer shared
//! by all connections; output is gathered per connection and written once per loop turn.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::mem;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Instant;

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::config::Config;
use crate::connection::{Connection, Event, State};
use crate::error::{close_code, HandshakeError};
use crate::frame::Role;
use crate::handshake::{self, Head, HeadStatus};
use crate::http::{self, Response, WebRoot};
use crate::outbox::Outbox;

const LISTENER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);

/// A client's socket token is its slab key shifted left, leaving room for the pipes of a
/// program attached to the same connection.
const TOKEN_SHIFT: u32 = 2;

/// Reads per readiness event before other connections get their turn.
const READS_PER_TURN: usize = 8;

/// One client connection as the loop sees it.
struct Client {
    socket: TcpStream,
    peer: SocketAddr,
    /// Distinguishes this client from a later one that reuses the slab key (for timers).
    serial: u64,
    phase: Phase,
    deadline: Option<Instant>,
    /// Already in the list of connections to flush this turn.
    queued: bool,
    /// Bytes arrived since the last idle sweep.
    active: bool,
}

/// Where a connection stands: awaiting a request head (the handshake, or plain HTTP with
/// keep-alive), open as a WebSocket (open → closing → closed inside `Connection`), or done
/// and waiting for the peer's FIN after ours.
enum Phase {
    Http(HttpState),
    WebSocket(Box<WebSocket>),
    Linger,
}

#[derive(Default)]
struct HttpState {
    /// Bytes of an unfinished request (head, or head and body).
    partial: Vec<u8>,
    out: Outbox,
    /// A response said `Connection: close` (or refused the request): no more requests.
    closing: bool,
}

struct WebSocket {
    conn: Connection,
    route: Route,
}

/// What a WebSocket connection is for, chosen by the path of its upgrade request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/` and `/echo`: every message comes back.
    Echo,
}

impl Route {
    fn from_path(path: &str) -> Option<Route> {
        match path {
            "/" | "/echo" => Some(Route::Echo),
            _ => None,
        }
    }
}

/// The running server.
pub struct Server {
    poll: Poll,
    listener: TcpListener,
    local_addr: SocketAddr,
    config: Config,
    www: WebRoot,
    clients: Slab<Client>,
    serial: u64,
    /// The one read buffer.
    rbuf: Vec<u8>,
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    /// Clients with output gathered this turn.
    to_flush: Vec<usize>,
    /// Clients whose read budget ran out with bytes maybe still waiting.
    to_read: Vec<usize>,
    signals: Option<mio::unix::pipe::Receiver>,
    stopping: Option<Instant>,
    /// When quiet connections next give back their spare buffers.
    next_sweep: Instant,
}

impl Server {
    /// Binds the listener. Port 0 picks a free port: see [`Server::local_addr`].
    pub fn bind(config: Config) -> io::Result<Server> {
        let poll = Poll::new()?;
        let addr = SocketAddr::new(config.bind, config.port);
        let mut listener = TcpListener::bind(addr)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let local_addr = listener.local_addr()?;
        let config_sweep = config.shrink_after;
        let www = match &config.www {
            Some(dir) => WebRoot::dir(dir)?,
            None => WebRoot::embedded(),
        };
        Ok(Server {
            poll,
            listener,
            local_addr,
            rbuf: vec![0; config.read_buffer_size.max(1024)],
            config,
            www,
            clients: Slab::new(),
            serial: 0,
            timers: BinaryHeap::new(),
            to_flush: Vec::new(),
            to_read: Vec::new(),
            signals: None,
            stopping: None,
            next_sweep: Instant::now() + config_sweep,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops cleanly on SIGINT or SIGTERM: clients get a 1001 close, then the loop ends.
    pub fn stop_on_signals(&mut self) -> io::Result<()> {
        let (sender, mut receiver) = mio::unix::pipe::new()?;
        self.poll
            .registry()
            .register(&mut receiver, SIGNALS, Interest::READABLE)?;
        signals::install(sender)?;
        self.signals = Some(receiver);
        Ok(())
    }

    /// Runs the loop until stopped by a signal.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        info!("listening on ws://{}", self.local_addr);
        loop {
            let timeout = if self.to_read.is_empty() {
                let next = self.timers.peek().map(|Reverse((at, _, _))| *at);
                let next = next.map_or(self.next_sweep, |t| t.min(self.next_sweep));
                Some(next.saturating_duration_since(Instant::now()))
            } else {
                Some(std::time::Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    SIGNALS => self.on_signal(),
                    Token(t) => {
                        let key = t >> TOKEN_SHIFT;
                        if event.is_read_closed() || event.is_error() {
                            self.on_readable(key, true);
                        } else if event.is_readable() {
                            self.on_readable(key, false);
                        }
                        if event.is_writable() {
                            self.queue_flush(key);
                        }
                    }
                }
            }
            for key in mem::take(&mut self.to_read) {
                self.on_readable(key, true);
            }
            self.flush_all();
            self.expire_timers();
            if Instant::now() >= self.next_sweep {
                self.sweep();
            }
            if let Some(deadline) = self.stopping {
                if self.clients.is_empty() || Instant::now() >= deadline {
                    info!("stopped");
                    return Ok(());
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let (mut socket, peer) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors and the like: leave the rest in the backlog for now.
                    warn!("accept failed: {e}");
                    return;
                }
            };
            if self.clients.len() >= self.config.max_connections || self.stopping.is_some() {
                info!(
                    "{peer}: refused, {} connections open (limit {})",
                    self.clients.len(),
                    self.config.max_connections
                );
                let mut out = Vec::new();
                handshake::write_refusal(&mut out, HandshakeError::Unavailable);
                let _ = socket.write(&out);
                continue;
            }
            let _ = socket.set_nodelay(true);
            let entry = self.clients.vacant_entry();
            let key = entry.key();
            if let Err(e) = self.poll.registry().register(
                &mut socket,
                Token(key << TOKEN_SHIFT),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                warn!("{peer}: register failed: {e}");
                continue;
            }
            self.serial += 1;
            entry.insert(Client {
                socket,
                peer,
                serial: self.serial,
                phase: Phase::Http(HttpState::default()),
                deadline: None,
                queued: false,
                active: true,
            });
            self.set_deadline(key, self.config.handshake_timeout);
            debug!("{peer}: connected");
        }
    }

    /// Reads what the socket has, a bounded number of times, and hands each piece on.
    /// `drain`: read until `WouldBlock` even after a short read, because the peer's FIN (or
    /// an error) came with this edge and no later edge will announce it.
    fn on_readable(&mut self, key: usize, drain: bool) {
        let mut buf = mem::take(&mut self.rbuf);
        let mut reads = 0;
        while let Some(client) = self.clients.get_mut(key) {
            if reads == READS_PER_TURN {
                // Fairness: the rest waits for the next turn, after everyone else.
                self.to_read.push(key);
                break;
            }
            reads += 1;
            let n = match client.socket.read(&mut buf) {
                Ok(0) => {
                    self.on_eof(key);
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("{}: read error: {e}", client.peer);
                    self.end(key);
                    break;
                }
            };
            self.on_bytes(key, &mut buf[..n]);
            if n < buf.len() && !drain {
                // A short read emptied the socket; the next arrival raises a new edge.
                break;
            }
        }
        self.rbuf = buf;
    }

    fn on_eof(&mut self, key: usize) {
        let client = &self.clients[key];
        match &client.phase {
            Phase::WebSocket(ws) if ws.conn.is_open() => {
                debug!("{}: TCP closed without a close frame", client.peer)
            }
            _ => debug!("{}: closed", client.peer),
        }
        self.end(key);
    }

    fn on_bytes(&mut self, key: usize, data: &mut [u8]) {
        let client = &mut self.clients[key];
        client.active = true;
        match &client.phase {
            Phase::Http(_) => self.http_input(key, data),
            Phase::WebSocket(_) => self.ws_input(key, data),
            Phase::Linger => {}
        }
    }

    /// Request heads (and bodies) of plain HTTP, until one of them upgrades to WebSocket.
    fn http_input(&mut self, key: usize, data: &mut [u8]) {
        let client = &mut self.clients[key];
        let Phase::Http(state) = &mut client.phase else {
            return;
        };
        if state.closing {
            return;
        }
        let mut kept;
        let buf: &mut [u8] = if state.partial.is_empty() {
            data
        } else {
            state.partial.extend_from_slice(data);
            kept = mem::take(&mut state.partial);
            &mut kept
        };
        let mut at = 0;
        while at < buf.len() {
            let step = match handshake::parse_head(&buf[at..], self.config.max_head_size) {
                Ok(HeadStatus::Partial) => {
                    self.keep_partial(key, &buf[at..]);
                    return;
                }
                Err(e) => {
                    self.refuse(key, e);
                    return;
                }
                Ok(HeadStatus::Complete(head, n)) => {
                    if head.wants_websocket() {
                        Step::Upgrade(self.upgrade(key, &head), n)
                    } else {
                        match self.http_request(key, &head, &buf[at + n..]) {
                            Some(used) => Step::Next(n + used),
                            None => {
                                self.keep_partial(key, &buf[at..]);
                                return;
                            }
                        }
                    }
                }
            };
            match step {
                Step::Next(n) => at += n,
                Step::Upgrade(true, n) => return self.ws_input(key, &mut buf[at + n..]),
                Step::Upgrade(false, _) => return,
            }
            let Phase::Http(state) = &self.clients[key].phase else {
                return;
            };
            if state.closing {
                return;
            }
        }
    }

    fn keep_partial(&mut self, key: usize, rest: &[u8]) {
        if let Phase::Http(state) = &mut self.clients[key].phase {
            state.partial.clear();
            state.partial.extend_from_slice(rest);
        }
    }

    /// Answers a plain HTTP request whose head is parsed. Returns how many body bytes it used,
    /// or `None` when the body has not all arrived yet.
    fn http_request(&mut self, key: usize, head: &Head<'_>, after: &[u8]) -> Option<usize> {
        let length = match head.get("Content-Length").map(parse_length) {
            None => 0,
            Some(Some(n)) => n,
            Some(None) => {
                self.refuse(key, HandshakeError::MalformedHead);
                return Some(0);
            }
        };
        if head.get("Transfer-Encoding").is_some() {
            self.respond(
                key,
                &Response::text(411, "send a Content-Length"),
                false,
                false,
            );
            return Some(0);
        }
        if length > self.config.max_message_size {
            self.respond(
                key,
                &Response::text(413, "request body too large"),
                false,
                false,
            );
            return Some(0);
        }
        if after.len() < length {
            return None;
        }
        let keep_alive = head.keep_alive();
        let response = http::serve_static(
            &self.www,
            head.method,
            head.target,
            head.get("If-None-Match"),
        );
        debug!(
            "{}: {} {} -> {}",
            self.clients[key].peer, head.method, head.target, response.status
        );
        self.respond(key, &response, head.method == "HEAD", keep_alive);
        Some(length)
    }

    fn respond(&mut self, key: usize, response: &Response, head_only: bool, keep_alive: bool) {
        let client = &mut self.clients[key];
        let Phase::Http(state) = &mut client.phase else {
            return;
        };
        response.write_to(state.out.buf(), head_only, keep_alive);
        state.out.commit();
        if !keep_alive {
            state.closing = true;
            state.partial = Vec::new();
        }
        self.set_deadline(key, self.config.http_idle_timeout);
        self.queue_flush(key);
    }

    /// Refuses a request with the error's status and closes after the answer.
    fn refuse(&mut self, key: usize, e: HandshakeError) {
        let client = &mut self.clients[key];
        info!("{}: {} {}", client.peer, e.status(), e);
        let Phase::Http(state) = &mut client.phase else {
            return;
        };
        handshake::write_refusal(state.out.buf(), e);
        state.out.commit();
        state.closing = true;
        state.partial = Vec::new();
        self.queue_flush(key);
    }

    /// Checks an upgrade request; on success the client becomes a WebSocket with the 101 queued.
    fn upgrade(&mut self, key: usize, head: &Head<'_>) -> bool {
        let accepted = Route::from_path(head.path())
            .ok_or(HandshakeError::UnknownPath)
            .and_then(|route| {
                Ok((
                    route,
                    handshake::accept_upgrade(head, &self.config.protocols)?,
                ))
            });
        let (route, accepted) = match accepted {
            Ok(v) => v,
            Err(e) => {
                self.refuse(key, e);
                return false;
            }
        };
        let mut conn = Connection::new(Role::Server, self.config.max_message_size);
        handshake::write_accept(conn.out.buf(), &accepted);
        conn.out.commit();
        let client = &mut self.clients[key];
        debug!(
            "{}: WebSocket open on {} ({:?})",
            client.peer, head.target, accepted.protocol
        );
        client.phase = Phase::WebSocket(Box::new(WebSocket { conn, route }));
        client.deadline = None;
        self.queue_flush(key);
        true
    }

    /// Feeds a WebSocket connection and acts on its events.
    fn ws_input(&mut self, key: usize, data: &mut [u8]) {
        if data.is_empty() {
            return;
        }
        let client = &mut self.clients[key];
        let Phase::WebSocket(ws) = &mut client.phase else {
            return;
        };
        let peer = client.peer;
        let before = ws.conn.state();
        let route = &ws.route;
        let mut on = |c: &mut Connection, e: Event<'_>| match e {
            Event::Message(kind, payload) => match route {
                Route::Echo => {
                    c.send_payload(kind, payload);
                }
            },
            other => log_event(peer, &other),
        };
        ws.conn.receive(data, &mut on);
        let after = ws.conn.state();
        let pending = !ws.conn.out.is_empty();
        if after != before {
            if let State::Closing { .. } = after {
                self.set_deadline(key, self.config.close_timeout);
            }
        }
        if pending || after == State::Closed {
            self.queue_flush(key);
        }
    }

    fn queue_flush(&mut self, key: usize) {
        if let Some(client) = self.clients.get_mut(key) {
            if !client.queued {
                client.queued = true;
                self.to_flush.push(key);
            }
        }
    }

    /// Writes each client's gathered output: one `write_vectored` per client per turn.
    fn flush_all(&mut self) {
        for key in mem::take(&mut self.to_flush) {
            let Some(client) = self.clients.get_mut(key) else {
                continue;
            };
            client.queued = false;
            let (out, done) = match &mut client.phase {
                Phase::Http(state) => (&mut state.out, state.closing),
                Phase::WebSocket(ws) => {
                    let closed = ws.conn.state() == State::Closed;
                    (&mut ws.conn.out, closed)
                }
                Phase::Linger => continue,
            };
            match out.flush_to(&mut client.socket) {
                Ok(true) if done => self.linger(key),
                Ok(_) => {}
                Err(e) => {
                    debug!("{}: write error: {e}", client.peer);
                    self.end(key);
                }
            }
        }
    }

    /// Everything is said: send our FIN and wait (briefly) for the peer's, so that unread
    /// bytes on our side do not turn the close into a reset (RFC 6455 §7.1.1).
    fn linger(&mut self, key: usize) {
        let client = &mut self.clients[key];
        if client.socket.shutdown(Shutdown::Write).is_err() {
            return self.end(key);
        }
        client.phase = Phase::Linger;
        self.set_deadline(key, self.config.close_timeout);
    }

    fn set_deadline(&mut self, key: usize, after: std::time::Duration) {
        let at = Instant::now() + after;
        let client = &mut self.clients[key];
        client.deadline = Some(at);
        self.timers.push(Reverse((at, key, client.serial)));
    }

    fn expire_timers(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((at, key, serial))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(client) = self.clients.get(key) else {
                continue;
            };
            if client.serial != serial || client.deadline != Some(at) {
                continue;
            }
            match &client.phase {
                Phase::Http(state) if !state.partial.is_empty() => {
                    info!(
                        "{}: request head not complete in time, closing",
                        client.peer
                    )
                }
                Phase::WebSocket(_) => {
                    info!("{}: no close frame from the peer in time", client.peer)
                }
                _ => debug!("{}: idle, closing", client.peer),
            }
            self.end(key);
        }
    }

    /// Connections that received nothing since the last sweep give back their spare buffers,
    /// so that memory follows activity: an idle connection costs a few hundred bytes.
    fn sweep(&mut self) {
        for (_, client) in self.clients.iter_mut() {
            if !mem::take(&mut client.active) {
                match &mut client.phase {
                    Phase::WebSocket(ws) => ws.conn.shrink(),
                    Phase::Http(state) => state.out.shrink(),
                    Phase::Linger => {}
                }
            }
        }
        self.next_sweep = Instant::now() + self.config.shrink_after;
    }

    fn on_signal(&mut self) {
        if let Some(r) = &mut self.signals {
            let mut b = [0u8; 16];
            while matches!(r.read(&mut b), Ok(n) if n > 0) {}
        }
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
                        .close(close_code::GOING_AWAY, "server shutting down");
                    self.queue_flush(key);
                }
                _ => self.end(key),
            }
        }
        self.flush_all();
    }

    /// The one place that ends a connection.
    fn end(&mut self, key: usize) {
        if let Some(mut client) = self.clients.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut client.socket);
        }
    }
}

enum Step {
    /// The request was answered; the next one starts this many bytes further on.
    Next(usize),
    /// An upgrade was tried (true: accepted); the frames start this many bytes further on.
    Upgrade(bool, usize),
}

fn parse_length(v: &[u8]) -> Option<usize> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

fn log_event(peer: SocketAddr, e: &Event<'_>) {
    match e {
        Event::Failed(err) => info!("{peer}: {err}: closing with {}", err.close_code()),
        Event::Closed { code, reason } => debug!("{peer}: closed by peer ({code:?} {reason:?})"),
        _ => {}
    }
}

/// SIGINT and SIGTERM, turned into a byte on a pipe the loop polls (the self-pipe trick), so
/// that no work happens in the signal handler and no thread is needed.
mod signals {
    use super::*;
    use std::os::fd::{AsRawFd, IntoRawFd};

    static PIPE: AtomicI32 = AtomicI32::new(-1);

    extern "C" fn on_signal(_: libc::c_int) {
        let fd = PIPE.load(Ordering::Relaxed);
        if fd >= 0 {
            // SAFETY: write(2) is async-signal-safe; the buffer is a valid one-byte array.
            unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
        }
    }

    pub fn install(sender: mio::unix::pipe::Sender) -> io::Result<()> {
        let fd = sender.as_raw_fd();
        let _ = sender.into_raw_fd();
        PIPE.store(fd, Ordering::Relaxed);
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: the handler only does an async-signal-safe write to a pipe.
            let old = unsafe {
                libc::signal(
                    sig,
                    on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
                )
            };
            if old == libc::SIG_ERR {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}
