//! The event loop: one thread, one `mio::Poll`, the listener and every client in a `Slab`.
//!
//! The loop only moves bytes, keeps timers and routes messages; what the bytes mean is decided
//! by the sans-I/O modules (`handshake`, `connection`, `http`). Reads go into one buffer shared
//! by all connections; output is gathered per connection and written once per loop turn.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::mem;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::config::{Config, SlowConsumer};
use crate::connection::{Connection, Event, Expired, MessageKind, State, Timeouts};
use crate::console::{self, Console, Target};
use crate::deflate::SharedCodec;
use crate::error::{close_code, HandshakeError};
use crate::exec::{self, Ending, Pipe, Program, RequestInfo};
use crate::frame::{encode_frame, Role, MAX_HEADER_LEN};
use crate::handshake::{self, Head, HeadStatus};
use crate::http::{self, Response, WebRoot};
use crate::outbox::{Outbox, SharedFrame};
use crate::room::{self, Rooms};
use crate::socket::{Listener, SocketFile, Stream};
use crate::timer::{Timer, TimerTable};
use crate::transport::Transport;

mod access;
mod cluster;
mod compression;
mod deadlines;
mod listening;
mod messaging;
mod peer_addr;
mod programs;
mod protection;
mod requests;
mod room_programs;
mod signals;
mod stats;
mod tls_port;
pub mod workers;

use cluster::{Cluster, REDIS_PUB, REDIS_SUB};
use compression::Broadcast;
use deadlines::{Deadlines, Stamp};
use peer_addr::PeerAddr;
use protection::Protection;
use room_programs::{RoomPrograms, ROOM_PROGRAM};
use stats::Stats;
use tls_port::TlsPort;

const LISTENER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);
const CONSOLE: Token = Token(usize::MAX - 2);
const CONSOLE_OUT: Token = Token(usize::MAX - 3);

/// A client's socket token is its slab key shifted left, leaving room for the pipes of a
/// program attached to the same connection.
const TOKEN_SHIFT: u32 = 2;

/// Frames with at least this much payload to come are read straight into their own buffer.
const DIRECT_READ_MIN: usize = 16 * 1024;

/// Reads per readiness event before other connections get their turn.
const READS_PER_TURN: usize = 8;

/// One client connection as the loop sees it: the slab entry, with an open WebSocket inside
/// it. Laid out for many idle connections (see the size test below): what only a busy
/// connection needs is boxed further down, in `Connection`.
struct Client {
    /// The socket, and TLS on it if the port speaks TLS.
    transport: Transport,
    /// The client's address: the TCP peer's, or the one a trusted proxy forwarded for the
    /// request being served (`--trusted-proxy`, or any peer on a Unix socket). Compact: see
    /// [`PeerAddr`] (`.addr()` gives the `SocketAddr`).
    peer: PeerAddr,
    phase: Phase,
    /// The deadline this client has in the loop's timer heap. Its timers may have moved later
    /// since (activity pushes keepalive back); the entry then fires early and is re-armed, so
    /// that a message never costs a heap operation. An entry left by an earlier client with
    /// the same slab key is told apart by its stamp differing from this one (if it is equal,
    /// handling it is exactly what this client's own entry would do).
    armed: Option<Stamp>,
    /// Already in the list of connections to flush this turn.
    queued: bool,
    /// Bytes arrived since the last idle sweep.
    active: bool,
    /// Not read while its unsent output is over `--max-backlog` (TCP pushes back on the peer).
    paused: bool,
    /// The peer sent its FIN; the connection ends once what is queued for it is written.
    peer_closed: bool,
    /// Bytes read from and written to the socket, for the access log.
    bytes_in: u64,
    bytes_out: u64,
}

impl Client {
    /// Bytes queued for this client and not yet written.
    fn backlog(&self) -> usize {
        match &self.phase {
            Phase::Http(state) => state.out.len(),
            Phase::WebSocket(ws) => ws.conn.out.len(),
            Phase::Linger(_) => 0,
        }
    }

    /// The earliest deadline of whatever phase the connection is in.
    fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Http(state) => state.timers.next(),
            Phase::WebSocket(ws) => ws.conn.poll_timeout(),
            Phase::Linger(until) => Some(*until),
        }
    }

    /// Bytes its program (`--exec`) has not taken on stdin yet.
    fn program_backlog(&self) -> usize {
        match &self.phase {
            Phase::WebSocket(ws) => ws.program.as_ref().map_or(0, |p| p.stdin_backlog()),
            _ => 0,
        }
    }

    /// Output waits beyond `limit`, for the peer or for its program: reading the peer would
    /// only queue more.
    fn over(&self, limit: usize) -> bool {
        self.backlog() > limit || self.program_backlog() > limit
    }
}

/// Where a connection stands: awaiting a request head (the handshake, or plain HTTP with
/// keep-alive), open as a WebSocket (open → closing → closed inside `Connection`), or done
/// and waiting (until the deadline) for the peer's FIN after ours.
///
/// The WebSocket is kept inline, since it is what nearly every connection is for: no box
/// (allocator overhead and a pointer to chase per message). The HTTP state is boxed: it is
/// larger and short-lived.
enum Phase {
    Http(Box<HttpState>),
    WebSocket(WebSocket),
    Linger(Instant),
}

struct HttpState {
    /// The TCP peer itself (`socket::UNIX_PEER` on a Unix socket): `Client::peer` may be the
    /// address a trusted proxy forwarded for, judged anew for every request (and not needed
    /// once the connection is a WebSocket).
    tcp_peer: SocketAddr,
    /// Plain HTTP on the TLS port: its request is answered with a redirect to `https://`.
    to_https: bool,
    /// `Handshake` while a request head is awaited, `Idle` between keep-alive requests,
    /// `Send` while answers are stuck, `Close` once the peer has sent its FIN.
    timers: TimerTable,
    /// Bytes of an unfinished request (head, or head and body).
    partial: Vec<u8>,
    out: Outbox,
    /// A response said `Connection: close` (or refused the request): no more requests.
    closing: bool,
    /// `100 Continue` was sent for the request whose body is awaited (RFC 9110 §10.1.1).
    continued: bool,
    /// The request being answered, for its access line.
    request: Option<access::Request>,
    /// When the request being received began (its first byte, or the previous answer).
    started: Instant,
    /// The chunked body being received: its decoder, and what it decoded so far.
    chunked: Option<Box<(http::chunked::ChunkedDecoder, Vec<u8>)>>,
}

impl HttpState {
    /// A new connection from `tcp_peer`: its first request head is due within `handshake`.
    fn new(tcp_peer: SocketAddr, now: Instant, handshake: Duration) -> Self {
        let mut timers = TimerTable::new(now);
        timers.set(Timer::Handshake, now + handshake);
        HttpState {
            tcp_peer,
            to_https: false,
            timers,
            partial: Vec::new(),
            out: Outbox::new(),
            closing: false,
            continued: false,
            chunked: None,
            request: None,
            started: now,
        }
    }

    /// Bytes arrived: a keep-alive connection that was idle now has a request head under way,
    /// which must be complete within `handshake` (slowloris).
    fn heard(&mut self, now: Instant, handshake: Duration) {
        if self.timers.is_set(Timer::Idle) {
            self.started = now;
            self.timers.stop(Timer::Idle);
            self.timers.set(Timer::Handshake, now + handshake);
        }
    }

    /// Nothing under way: no request begun, nothing waiting to be sent.
    fn idle(&self) -> bool {
        self.partial.is_empty() && self.out.is_empty() && self.timers.is_set(Timer::Idle)
    }

    /// An answer was queued: the next request may take `idle` to begin.
    fn answered(&mut self, now: Instant, idle: Duration) {
        self.started = now;
        self.timers.stop(Timer::Handshake);
        self.timers.set(Timer::Idle, now + idle);
    }
}

struct WebSocket {
    conn: Connection,
    route: Route,
    /// The last message was large: read the next frame's header alone, so that its payload
    /// can be read straight into the buffer it is assembled in.
    large: bool,
    /// The connection's own program (the exec route).
    program: Option<Box<Program>>,
    /// The program's stdout is left unread until the client drains its backlog to half.
    stdout_held: bool,
    /// Fan-out messages skipped because this client was not reading (`--slow-consumer drop`);
    /// saturates (it only says how many in the end-of-connection log line).
    slow_dropped: u32,
    /// The upgrade's path was `/` (the route's own path otherwise): see [`WebSocket::path`].
    at_root: bool,
    /// When the upgrade was accepted, in milliseconds after the server started (for the
    /// session's access line).
    opened_ms: u64,
}

impl WebSocket {
    /// The path of the upgrade request, for the access line: `route_for` matches paths
    /// exactly, so the route (and whether it was reached at `/`) says what it was, and no
    /// connection keeps a copy.
    fn path<'a>(&'a self, config: &'a Config) -> Cow<'a, str> {
        match (&self.route, self.at_root) {
            (_, true) => Cow::Borrowed("/"),
            (Route::Echo, false) => Cow::Borrowed("/echo"),
            (Route::Room(name), false) => Cow::Owned(format!("/room/{name}")),
            (Route::Exec, false) => Cow::Borrowed(&config.exec_route),
        }
    }
}

/// What a WebSocket connection is for, chosen by the path of its upgrade request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/` and `/echo`: every message comes back.
    Echo,
    /// `/room/NAME`: every message goes to the other members.
    Room(Rc<str>),
    /// The `--exec` route: messages go to the connection's program and back.
    Exec,
}

impl Route {
    /// The name shown for the route in logs and on the console.
    fn label(&self) -> &str {
        match self {
            Route::Echo => "echo",
            Route::Room(name) => name,
            Route::Exec => "exec",
        }
    }
}

/// The running server.
pub struct Server {
    poll: Poll,
    listener: Listener,
    /// The TCP address listened on (`socket::UNIX_PEER` on a Unix socket).
    local_addr: SocketAddr,
    /// `--bind unix:PATH`: the socket file, held to be removed when the server is dropped.
    _socket_file: Option<SocketFile>,
    config: Config,
    www: WebRoot,
    clients: Slab<Client>,
    /// The time of this loop turn: read once after `poll` returns and handed to every
    /// protocol call of the turn.
    now: Instant,
    timeouts: Rc<Timeouts>,
    /// The one read buffer.
    rbuf: Vec<u8>,
    /// One entry per client with a deadline (see [`Client::armed`]).
    timers: Deadlines,
    /// Clients with output gathered this turn.
    to_flush: Vec<usize>,
    /// Clients whose read budget ran out with bytes maybe still waiting.
    to_read: Vec<usize>,
    /// The list being worked through, swapped with `to_flush` or `to_read` so that neither
    /// allocates each turn.
    working: Vec<usize>,
    signals: Option<mio::unix::pipe::Receiver>,
    /// `--shutdown-delay`: a stop signal came; the close begins at this time.
    draining: Option<Instant>,
    /// The close has begun; the loop ends at this time at the latest.
    stopping: Option<Instant>,
    /// When quiet connections next give back their spare buffers.
    next_sweep: Instant,
    started: Instant,
    rooms: Rooms,
    stats: Stats,
    /// Messages sent to a room while its sender's connection was being read.
    to_room: Vec<Broadcast>,
    /// permessage-deflate: the loop's compressors (and, in shared mode, its inflater).
    deflate: Option<Rc<SharedCodec>>,
    /// Scratch space to encode a shared frame in.
    scratch: Vec<u8>,
    next_push: Option<Instant>,
    pushes: u64,
    console: Option<Console>,
    /// `--console`: what clients said, waiting for stdout.
    console_out: Option<console::Output>,
    /// `--console`: stdin's and stdout's flags as they were, put back when the server stops.
    stdio_flags: Option<console::StdioFlags>,
    /// Programs whose connection is gone, being ended and reaped.
    endings: Vec<Ending>,
    /// Programs running: attached ones and those still ending.
    children: usize,
    /// `--room-exec`: the programs of rooms.
    room_programs: RoomPrograms,
    /// Origin policy, per-address counts, the spare descriptor.
    protection: Protection,
    /// `--tls-cert`: the certificates, the handshake budget, reloading.
    tls: Option<TlsPort>,
    /// `--workers` above 1: this worker's number, inbox and room replica; `None` with one.
    seat: Option<Box<workers::Seat>>,
    /// `--redis`: the bridge to the other nodes.
    cluster: Option<Cluster>,
}

impl Server {
    /// Binds the listener (or takes the one systemd passed). Port 0 picks a free port: see
    /// [`Server::local_addr`].
    pub fn bind(config: Config) -> io::Result<Server> {
        config.validate()?;
        let listener = Self::listener(&config)?;
        Self::build(config, listener)
    }

    /// The loop around a listener already bound.
    fn build(config: Config, listener: (Listener, Option<SocketFile>)) -> io::Result<Server> {
        let poll = Poll::new()?;
        let (mut listener, socket_file) = listener;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let local_addr = listener.local_addr()?;
        let config_sweep = config.shrink_after;
        let timeouts = Rc::new(Timeouts {
            ping_interval: Some(config.ping_interval).filter(|d| !d.is_zero()),
            pong_timeout: config.pong_timeout,
            close: config.close_timeout,
            send: config.send_timeout,
        });
        let next_push = config.push_every.map(|every| Instant::now() + every);
        if let Some(path) = &config.exec {
            exec::check_program(path).map_err(|e| {
                crate::error::io_context(format_args!("--exec {}", path.display()), e)
            })?;
        }
        for r in &config.room_exec {
            exec::check_program(&r.path)
                .map_err(|e| crate::error::io_context(format_args!("--room-exec {r}"), e))?;
        }
        let protection = Protection::new(&config)?;
        let tls = TlsPort::new(&config, Instant::now())?;
        let deflate = Server::new_codec(&config);
        let cluster = Cluster::new(&config, poll.registry())?;
        let www = match &config.www {
            Some(dir) => WebRoot::dir(dir).map_err(|e| {
                crate::error::io_context(format_args!("--www {}", dir.display()), e)
            })?,
            None => WebRoot::embedded(),
        };
        Ok(Server {
            poll,
            listener,
            local_addr,
            _socket_file: socket_file,
            rbuf: vec![0; config.read_buffer_size.max(1024)],
            config,
            www,
            clients: Slab::new(),
            now: Instant::now(),
            timeouts,
            timers: Deadlines::new(Instant::now()),
            to_flush: Vec::new(),
            to_read: Vec::new(),
            working: Vec::new(),
            signals: None,
            draining: None,
            stopping: None,
            next_sweep: Instant::now() + config_sweep,
            started: Instant::now(),
            rooms: Rooms::new(),
            stats: Stats::default(),
            to_room: Vec::new(),
            deflate,
            scratch: Vec::new(),
            next_push,
            pushes: 0,
            console: None,
            console_out: None,
            stdio_flags: None,
            endings: Vec::new(),
            children: 0,
            room_programs: RoomPrograms::default(),
            protection,
            tls,
            seat: None,
            cluster,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This loop turn's time as milliseconds since the server started.
    fn since_start_ms(&self) -> u64 {
        let ms = self.now.saturating_duration_since(self.started).as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    /// Runs the loop until stopped by a signal.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        if self.config.console {
            if self.is_first() {
                self.start_console();
            } else {
                // Other workers' client lines go to worker 0, which writes stdout.
                self.console_out = Some(console::Output::new(self.config.console_buffer));
            }
        }
        self.log_listening();
        // Notes sent before this worker's waker existed.
        self.on_notes();
        self.publish_figures();
        loop {
            // Work queued during the last turn (reads cut short, output queued while flushing)
            // must not wait for an event that may never come.
            let timeout = if self.to_read.is_empty() && self.to_flush.is_empty() {
                Some(self.next_wakeup().saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.stop_console();
                    return Err(e);
                }
            }
            self.now = Instant::now();
            self.tls_new_turn();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    SIGNALS => self.on_signal(),
                    CONSOLE => self.on_console(),
                    workers::WAKER => self.on_notes(),
                    REDIS_PUB | REDIS_SUB => self.redis_ready(event.token()),
                    CONSOLE_OUT => {
                        if let Some(out) = self.console_out.as_mut() {
                            out.blocked = false;
                        }
                        self.flush_console();
                    }
                    Token(t) if t & ROOM_PROGRAM != 0 => self.on_room_program_pipe(
                        (t & !ROOM_PROGRAM) >> TOKEN_SHIFT,
                        t & ((1 << TOKEN_SHIFT) - 1),
                    ),
                    Token(t) => {
                        let key = t >> TOKEN_SHIFT;
                        match t & ((1 << TOKEN_SHIFT) - 1) {
                            0 => {
                                if event.is_read_closed() || event.is_error() {
                                    self.on_readable(key, true);
                                } else if event.is_readable() {
                                    self.on_readable(key, false);
                                }
                                if event.is_writable() {
                                    self.queue_flush(key);
                                }
                            }
                            pipe => self.on_program_pipe(key, pipe),
                        }
                    }
                }
            }
            let mut keys = mem::replace(&mut self.to_read, mem::take(&mut self.working));
            for &key in &keys {
                self.on_readable(key, true);
            }
            keys.clear();
            self.working = keys;
            self.flush_all();
            self.redis_flush();
            let now = self.now;
            self.expire_timers(now);
            if self.redis_deadline().is_some_and(|at| now >= at) {
                self.redis_timeout(now);
            }
            if now >= self.next_sweep {
                self.sweep();
            }
            if self.protection.accept_retry.is_some_and(|at| now >= at) {
                self.protection.accept_retry = None;
                self.accept();
            }
            if self.next_push.is_some_and(|at| now >= at) {
                self.push(now);
            }
            if self.tls_check_due(now) {
                self.check_tls_files(now);
            }
            // Exits are noticed on SIGCHLD; here only the SIGTERM/SIGKILL deadlines are kept.
            if self.endings.iter().any(|e| now >= e.next_deadline()) {
                self.tick_endings(now);
            }
            if self.room_programs_deadline().is_some_and(|at| now >= at) {
                self.room_programs_due(now);
            }
            if self.seat.is_some() {
                self.maybe_publish(now);
            }
            if self.draining.is_some_and(|at| now >= at) {
                self.shut_down();
            }
            if let Some(deadline) = self.stopping {
                // Connections that only wait for the peer's FIN have said all they had to,
                // and so have idle HTTP connections once no WebSocket is left to drain.
                let closing = self.clients.iter().any(|(_, c)| match &c.phase {
                    Phase::Linger(_) => false,
                    Phase::Http(state) => !state.idle(),
                    Phase::WebSocket(_) => true,
                });
                if !closing || now >= deadline {
                    self.stop_programs();
                    self.stop_console();
                    info!("stopped");
                    return Ok(());
                }
            }
        }
    }

    /// The earliest moment the loop has something to do without an event.
    fn next_wakeup(&self) -> Instant {
        let mut next = self.next_sweep;
        if let Some(at) = self.timers.next() {
            next = next.min(at);
        }
        if let Some(at) = self.next_push {
            next = next.min(at);
        }
        if let Some(at) = self.protection.accept_retry {
            next = next.min(at);
        }
        for e in &self.endings {
            next = next.min(e.next_deadline());
        }
        if let Some(at) = self.room_programs_deadline() {
            next = next.min(at);
        }
        if let Some(at) = self.stopping {
            next = next.min(at);
        }
        if let Some(at) = self.draining {
            next = next.min(at);
        }
        if let Some(at) = self.tls.as_ref().and_then(|t| t.next_check) {
            next = next.min(at);
        }
        if let Some(at) = self.publish_due() {
            next = next.min(at);
        }
        if let Some(at) = self.redis_deadline() {
            next = next.min(at);
        }
        next
    }

    fn accept(&mut self) {
        loop {
            let (mut socket, peer) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if self.accept_failed(&e) => continue,
                Err(_) => return,
            };
            if self.stopping.is_some() {
                info!("{peer}: refused, shutting down");
                self.refuse_unregistered(&mut socket, HandshakeError::Unavailable);
                continue;
            }
            if self.clients.len() >= self.config.max_connections {
                info!(
                    "{peer}: refused, {} connections open (limit {})",
                    self.clients.len(),
                    self.config.max_connections
                );
                self.refuse_unregistered(&mut socket, HandshakeError::Unavailable);
                continue;
            }
            if self.over_per_ip_limit(&mut socket, peer) {
                continue;
            }
            socket.set_nodelay();
            let key = self.clients.vacant_key();
            if let Err(e) = self.poll.registry().register(
                &mut socket,
                Token(key << TOKEN_SHIFT),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                warn!("{peer}: register failed: {e}");
                continue;
            }
            let transport = self.transport_for(socket);
            let inserted = self.clients.insert(Client {
                transport,
                peer: peer.into(),
                phase: Phase::Http(Box::new(HttpState::new(
                    peer,
                    self.now,
                    self.config.handshake_timeout,
                ))),
                armed: None,
                queued: false,
                active: true,
                paused: false,
                peer_closed: false,
                bytes_in: 0,
                bytes_out: 0,
            });
            debug_assert_eq!(inserted, key);
            self.arm(key);
            self.count_peer(peer);
            debug!("{peer}: connected");
        }
    }

    /// Reads what the socket has, a bounded number of times, and hands each piece on.
    /// `drain`: read until `WouldBlock` even after a short read, because the peer's FIN (or
    /// an error) came with this edge and no later edge will announce it.
    fn on_readable(&mut self, key: usize, drain: bool) {
        let mut buf = mem::take(&mut self.rbuf);
        let mut scratch = self
            .tls
            .as_mut()
            .map(|t| mem::take(&mut t.scratch))
            .unwrap_or_default();
        let mut reads = 0;
        while let Some(client) = self.clients.get_mut(key) {
            if client.paused || client.peer_closed {
                break;
            }
            if reads == READS_PER_TURN {
                // Fairness: the rest waits for the next turn, after everyone else.
                self.to_read.push(key);
                break;
            }
            if client.transport.handshaking() && !self.tls_may_read(key) {
                break;
            }
            let Some(client) = self.clients.get_mut(key) else {
                break;
            };
            reads += 1;
            let mut want = buf.len();
            let mut direct = false;
            let result = match &mut client.phase {
                Phase::WebSocket(ws) => match ws.conn.payload_room(DIRECT_READ_MIN) {
                    // The rest of a large frame: read it where it is assembled, saving a copy.
                    Some((room, left)) => {
                        direct = true;
                        // The buffer grows as the payload arrives: ask for what fits, so that
                        // a short read still means the socket is drained.
                        want = left.min(room.capacity() - room.len());
                        client.transport.read_into_spare(room, want, &mut scratch)
                    }
                    None => {
                        // (Over TLS the payload is copied out of rustls either way.)
                        if ws.large && ws.conn.at_frame_boundary() && !client.transport.is_tls() {
                            want = MAX_HEADER_LEN;
                        }
                        client.transport.read(&mut buf[..want], &mut scratch)
                    }
                },
                _ => client.transport.read(&mut buf, &mut scratch),
            };
            let n = match result {
                Ok(0) => {
                    self.on_eof(key);
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() == io::ErrorKind::InvalidData {
                        // A TLS error; the alert that names it has been sent.
                        info!("{}: TLS: {e}, closing", client.peer);
                    } else {
                        debug!("{}: read error: {e}", client.peer);
                    }
                    self.end(key);
                    break;
                }
            };
            client.bytes_in += n as u64;
            if direct {
                client.active = true;
                self.ws_appended(key, n);
            } else {
                self.on_bytes(key, &mut buf[..n]);
            }
            let room_backlog = self.room_stdin_backlog(key);
            if let Some(client) = self.clients.get_mut(key) {
                let max = self.config.max_backlog;
                if client.over(max) || room_backlog > max {
                    if room_backlog > max {
                        debug!(
                            "{}: {room_backlog} bytes for its room's program, reading paused",
                            client.peer
                        );
                    } else {
                        debug!(
                            "{}: {} bytes unsent, {} for its program, reading paused",
                            client.peer,
                            client.backlog(),
                            client.program_backlog()
                        );
                    }
                    client.paused = true;
                    break;
                }
            }
            if n < want && !drain {
                // A short read emptied the socket; the next arrival raises a new edge.
                break;
            }
        }
        self.rbuf = buf;
        if let Some(tls) = self.tls.as_mut() {
            tls.scratch = scratch;
        }
        if self
            .clients
            .get(key)
            .is_some_and(|c| c.transport.wants_write())
        {
            // TLS records (handshake answers) the socket did not take at once.
            self.queue_flush(key);
        }
        self.arm(key);
    }

    fn on_eof(&mut self, key: usize) {
        let client = &mut self.clients[key];
        if client.backlog() > 0 {
            // A half-close: the peer is done sending but may still read what it asked for.
            debug!(
                "{}: FIN with {} bytes still to send",
                client.peer,
                client.backlog()
            );
            client.peer_closed = true;
            let now = self.now;
            match &mut client.phase {
                Phase::Http(state) => {
                    state.closing = true;
                    state.partial = Vec::new();
                    state
                        .timers
                        .set(Timer::Close, now + self.config.close_timeout);
                }
                Phase::WebSocket(ws) => ws.conn.peer_gone(now),
                Phase::Linger(_) => {}
            }
            self.queue_flush(key);
            return;
        }
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
            Phase::Linger(_) => {}
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
        let mut keys = mem::replace(&mut self.to_flush, mem::take(&mut self.working));
        for &key in &keys {
            let Some(client) = self.clients.get_mut(key) else {
                continue;
            };
            client.queued = false;
            let now = self.now;
            let result = match &mut client.phase {
                Phase::Http(state) => {
                    let before = state.out.len();
                    let r = client.transport.flush(&mut state.out);
                    client.bytes_out += (before - state.out.len()) as u64;
                    let (progressed, pending) = (state.out.len() < before, !state.out.is_empty());
                    let send = self.config.send_timeout;
                    state.timers.output_flushed(now, progressed, pending, send);
                    r.map(|all| (all, state.closing))
                }
                Phase::WebSocket(ws) => {
                    let before = ws.conn.out.len();
                    let r = client.transport.flush(&mut ws.conn.out);
                    client.bytes_out += (before - ws.conn.out.len()) as u64;
                    let progressed = ws.conn.out.len() < before;
                    ws.conn.flushed(now, progressed);
                    r.map(|all| (all, ws.conn.state() == State::Closed))
                }
                Phase::Linger(_) => continue,
            };
            // `(everything written, nothing more to say)`
            match result {
                Ok((true, _)) if client.peer_closed => self.end(key),
                Ok((true, true)) => self.linger(key),
                Ok(_) => self.maybe_resume(key),
                Err(e) => {
                    debug!("{}: write error: {e}", client.peer);
                    self.end(key);
                }
            }
            self.arm(key);
        }
        keys.clear();
        self.working = keys;
    }

    /// A paused connection whose backlog has drained to half is read again: first the
    /// requests it had already sent, then the socket.
    fn maybe_resume(&mut self, key: usize) {
        self.maybe_resume_program(key);
        self.maybe_resume_room_program(key);
        let room_backlog = self.room_stdin_backlog(key);
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        let half = self.config.max_backlog / 2;
        if !client.paused || client.over(half) || room_backlog > half {
            return;
        }
        client.paused = false;
        debug!("{}: reading resumed", client.peer);
        if matches!(&client.phase, Phase::Http(state) if !state.partial.is_empty()) {
            self.http_input(key, &mut []);
        }
        if self.clients.get(key).is_some_and(|c| !c.paused) {
            self.to_read.push(key);
        }
    }

    /// Everything is said: send our FIN and wait (briefly) for the peer's, so that unread
    /// bytes on our side do not turn the close into a reset (RFC 6455 §7.1.1).
    fn linger(&mut self, key: usize) {
        let client = &mut self.clients[key];
        if client.transport.shutdown_write().is_err() {
            return self.end(key);
        }
        let peer = client.peer.addr();
        let traffic = (client.bytes_in, client.bytes_out);
        let until = Phase::Linger(self.now + self.config.close_timeout);
        if let Phase::WebSocket(ws) = mem::replace(&mut client.phase, until) {
            self.retire(key, peer, traffic, ws);
        }
    }

    /// Makes sure the timer heap holds an entry no later than the client's earliest deadline.
    /// Deadlines that moved later need nothing: the old entry fires early and re-arms.
    fn arm(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        if let Some(at) = client.poll_timeout() {
            let at = self.timers.stamp(at);
            if client.armed.is_none_or(|armed| at < armed) {
                client.armed = Some(at);
                self.timers.push(at, key);
            }
        }
    }

    fn expire_timers(&mut self, now: Instant) {
        if let Some(rebase) = self.timers.rebase(now) {
            for (_, client) in self.clients.iter_mut() {
                client.armed = client.armed.map(|s| rebase.apply(s));
            }
        }
        while let Some((at, key)) = self.timers.pop_due(now) {
            let Some(client) = self.clients.get_mut(key) else {
                continue;
            };
            if client.armed != Some(at) {
                continue;
            }
            client.armed = None;
            self.on_timeout(key, now);
            self.arm(key);
        }
    }

    /// A client's deadline passed: its protocol says what that means.
    fn on_timeout(&mut self, key: usize, now: Instant) {
        let client = &mut self.clients[key];
        let peer = client.peer;
        match &mut client.phase {
            Phase::Http(state) => {
                let Some(timer) = state.timers.expired(now) else {
                    return;
                };
                match timer {
                    Timer::Handshake => {
                        info!("{peer}: request head not complete in time, closing")
                    }
                    Timer::Send => {
                        self.stats.send_timeouts += 1;
                        info!(
                            "{peer}: {} bytes unsent and none taken for {:?}, dropping",
                            state.out.len(),
                            self.config.send_timeout
                        )
                    }
                    _ => debug!("{peer}: idle, closing"),
                }
            }
            Phase::WebSocket(ws) => match ws.conn.handle_timeout(now) {
                None => {
                    // A ping went out.
                    if !ws.conn.out.is_empty() {
                        self.queue_flush(key);
                    }
                    return;
                }
                Some(Expired::PongTimeout) => {
                    self.stats.ping_timeouts += 1;
                    info!(
                        "{peer}: nothing heard for {:?} after a ping, dropping",
                        self.timeouts.pong_timeout
                    );
                }
                Some(Expired::CloseTimeout) => {
                    info!("{peer}: no close frame from the peer in time")
                }
                Some(Expired::SendTimeout) => {
                    self.stats.send_timeouts += 1;
                    info!(
                        "{peer}: {} bytes unsent and none taken for {:?}, dropping",
                        ws.conn.out.len(),
                        self.timeouts.send
                    );
                }
            },
            Phase::Linger(until) => {
                if now < *until {
                    return;
                }
                debug!("{peer}: no FIN after ours in time, closing");
            }
        }
        self.end(key);
    }

    /// Connections that received nothing since the last sweep give back their spare buffers,
    /// so that memory follows activity: an idle connection costs about 0.2 KiB.
    fn sweep(&mut self) {
        let mut any_active = false;
        let mut quiet = 0usize;
        for (_, client) in self.clients.iter_mut() {
            any_active |= client.active;
            if !mem::take(&mut client.active) {
                quiet += 1;
                client.transport.shrink();
                match &mut client.phase {
                    Phase::WebSocket(ws) => ws.conn.shrink(),
                    Phase::Http(state) => state.out.shrink(),
                    Phase::Linger(_) => {}
                }
            }
        }
        if !any_active {
            // A quiet server keeps no zlib state either.
            if let Some(codec) = &self.deflate {
                codec.release();
            }
        }
        if quiet > 0 {
            debug!("sweep: {quiet} quiet connections gave back their spare buffers");
        }
        self.next_sweep = self.now + self.config.shrink_after;
    }

    /// The one place that ends a connection.
    fn end(&mut self, key: usize) {
        let Some(mut client) = self.clients.try_remove(key) else {
            return;
        };
        let _ = self
            .poll
            .registry()
            .deregister(&mut client.transport.socket);
        match &client.phase {
            Phase::WebSocket(ws) if ws.slow_dropped > 0 => info!(
                "{}: ended; {} messages were dropped for it as a slow consumer",
                client.peer, ws.slow_dropped
            ),
            _ => {}
        }
        self.release_peer(client.peer.addr());
        if let Phase::WebSocket(ws) = client.phase {
            self.retire(
                key,
                client.peer.addr(),
                (client.bytes_in, client.bytes_out),
                ws,
            );
        }
    }

    /// A WebSocket is over (ended, or only waiting for the peer's FIN): it leaves its room,
    /// and its program, if still running, is told to end and is reaped later.
    /// `traffic`: the connection's bytes in and out, for the access line.
    fn retire(&mut self, key: usize, peer: SocketAddr, traffic: (u64, u64), ws: WebSocket) {
        self.access_websocket(peer, traffic, &ws);
        let WebSocket {
            conn,
            route,
            program,
            ..
        } = ws;
        if let Some(code) = conn.close_sent() {
            self.stats.closes.add(code);
        }
        if let Some(p) = program {
            debug!("{peer}: exec pid {}: stdin closed", p.pid());
            self.endings
                .push(p.detach(self.now, self.config.exec_grace));
        }
        if let Route::Room(name) = route {
            let left = self.rooms.leave(&name, key);
            if self.config.room_events && left > 0 {
                self.room_event("leave", &name, left);
            }
            self.room_program_left(&name, left);
            if left == 0 {
                self.room_closed(&name);
            }
        }
    }
}

/// The rule fan-out applies to each receiver: a receiver's unsent output never passes
/// `max_backlog` because of others' messages; `policy` says what happens instead.
#[derive(Clone, Copy)]
struct FanOut<'a> {
    max_backlog: usize,
    policy: SlowConsumer,
    /// The loop turn's time, for the close a slow consumer gets.
    now: Instant,
    /// The loop's compressors, for receivers that agreed on deflate.
    deflate: Option<&'a SharedCodec>,
}

impl<'a> FanOut<'a> {
    fn of(config: &Config, now: Instant, deflate: Option<&'a SharedCodec>) -> FanOut<'a> {
        FanOut {
            max_backlog: config.max_backlog,
            policy: config.slow_consumer,
            now,
            deflate,
        }
    }
}

/// Queues a shared frame on one client if it is an open WebSocket; true if queued. A frame
/// that would take it past the backlog limit goes to [`slow_consumer`] instead (an empty
/// outbox still takes one frame, however large, so every message can be delivered).
/// The frame is the receiver's variant of `message` (compressed if it agreed on deflate),
/// and the limit applies to that variant's size. Returns the bytes queued.
fn send_to(
    client: &mut Client,
    key: usize,
    to_flush: &mut Vec<usize>,
    message: &mut Broadcast,
    scratch: &mut Vec<u8>,
    fan: FanOut<'_>,
    stats: &mut Stats,
) -> Option<usize> {
    let deflate = fan.deflate;
    let Phase::WebSocket(ws) = &mut client.phase else {
        return None;
    };
    let (frame, _) = message.frame_for(&ws.conn, deflate, scratch);
    let backlog = ws.conn.out.len();
    if backlog + frame.len() > fan.max_backlog && backlog > 0 {
        slow_consumer(client, key, to_flush, fan, stats);
        return None;
    }
    let sent = message.send(&mut ws.conn, deflate, scratch)?;
    if !client.queued {
        client.queued = true;
        to_flush.push(key);
    }
    Some(sent)
}

/// A receiver is not reading what fan-out sends it: close it (1008, RFC 6455 §7.4.1: a
/// policy violation) after what it has, or skip this message for it. The sender and the
/// other receivers are not affected either way.
#[cold]
fn slow_consumer(
    client: &mut Client,
    key: usize,
    to_flush: &mut Vec<usize>,
    fan: FanOut<'_>,
    stats: &mut Stats,
) {
    let Phase::WebSocket(ws) = &mut client.phase else {
        return;
    };
    if !ws.conn.is_open() {
        return;
    }
    match fan.policy {
        SlowConsumer::Close => {
            info!(
                "{}: slow consumer, {} bytes unsent: closing with 1008",
                client.peer,
                ws.conn.out.len()
            );
            ws.conn.close(close_code::POLICY, "slow consumer", fan.now);
            stats.slow_closed += 1;
            if !client.queued {
                client.queued = true;
                to_flush.push(key);
            }
        }
        SlowConsumer::Drop => {
            if ws.slow_dropped == 0 {
                info!(
                    "{}: slow consumer, {} bytes unsent: dropping messages for it",
                    client.peer,
                    ws.conn.out.len()
                );
            }
            ws.slow_dropped = ws.slow_dropped.saturating_add(1);
            stats.slow_dropped += 1;
        }
    }
}

/// Encodes a server frame once, for many receivers.
fn shared_frame(scratch: &mut Vec<u8>, kind: MessageKind, payload: &[u8]) -> SharedFrame {
    scratch.clear();
    encode_frame(scratch, true, kind.opcode(), None, payload);
    Rc::from(&scratch[..])
}

fn log_event(peer: SocketAddr, e: &Event<'_>) {
    match e {
        Event::Failed(err) => info!("{peer}: {err}: closing with {}", err.close_code()),
        Event::Closed { code, reason } => debug!("{peer}: closed by peer ({code:?} {reason:?})"),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    /// In debug builds mio keeps a selector id beside each socket (16 bytes more per stream).
    const DEBUG_EXTRA: usize = if cfg!(debug_assertions) { 16 } else { 0 };

    /// An idle connection's memory is its slab entry and its timer-heap entry (issue #10:
    /// at most 0.25 KiB per idle connection at 10 000 connections): these pin the layout so
    /// that it cannot silently grow back. Raise them only with a measurement (README).
    #[test]
    fn an_idle_connection_stays_small() {
        eprintln!(
            "Client {}, WebSocket {}, Connection {}, Transport {}, HttpState {}",
            size_of::<Client>(),
            size_of::<WebSocket>(),
            size_of::<Connection>(),
            size_of::<Transport>(),
            size_of::<HttpState>(),
        );
        // slab's entry is `enum Entry<T> { Vacant(usize), Occupied(T) }`.
        #[allow(dead_code, clippy::large_enum_variant)]
        enum Entry {
            Vacant(usize),
            Occupied(Client),
        }
        assert!(size_of::<Client>() <= 200 + DEBUG_EXTRA);
        assert!(size_of::<Entry>() <= 200 + DEBUG_EXTRA);
        assert!(size_of::<WebSocket>() <= 128);
        assert!(size_of::<Connection>() <= 80);
        assert_eq!(size_of::<Option<Stamp>>(), 4);
        assert_eq!(size_of::<Outbox>(), 8);
    }
}
