//! The event loop: one thread, one `mio::Poll`, the listener and every client in a `Slab`.
//!
//! The loop only moves bytes, keeps timers and routes messages; what the bytes mean is decided
//! by the sans-I/O modules (`handshake`, `connection`, `http`). Reads go into one buffer shared
//! by all connections; output is gathered per connection and written once per loop turn.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::mem;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::config::Config;
use crate::connection::{Connection, Event, MessageKind, State};
use crate::console::{self, Console, Target};
use crate::error::{close_code, HandshakeError};
use crate::exec::{self, Ending, Pipe, Program, RequestInfo};
use crate::frame::{encode_frame, Role};
use crate::handshake::{self, Head, HeadStatus};
use crate::http::{self, Response, WebRoot};
use crate::outbox::{Outbox, SharedFrame};
use crate::room::{self, Rooms};

const LISTENER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);
const CONSOLE: Token = Token(usize::MAX - 2);

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
    Http(Box<HttpState>),
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
    /// The connection's own program (the exec route).
    program: Option<Box<Program>>,
}

/// What a WebSocket connection is for, chosen by the path of its upgrade request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/` and `/echo`: every message comes back.
    Echo,
    /// `/room/NAME`: every message goes to the other members.
    Room(String),
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

/// Counters for `GET /stats`.
#[derive(Debug, Default)]
struct Stats {
    messages_in: u64,
    bytes_in: u64,
    messages_out: u64,
    bytes_out: u64,
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
    started: Instant,
    rooms: Rooms,
    stats: Stats,
    /// Frames sent to a room while its sender's connection was being read.
    to_room: Vec<SharedFrame>,
    /// Scratch space to encode a shared frame in.
    scratch: Vec<u8>,
    next_push: Option<Instant>,
    pushes: u64,
    console: Option<Console>,
    /// Programs whose connection is gone, being ended and reaped.
    endings: Vec<Ending>,
    /// Programs running: attached ones and those still ending.
    children: usize,
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
        let next_push = config.push_every.map(|every| Instant::now() + every);
        if let Some(room) = &config.push_room {
            if !room::valid_name(room) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("--push-room {room:?}: not a room name"),
                ));
            }
        }
        if let Some(room) = &config.root_room {
            if !room::valid_name(room) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("--root-room {room:?}: not a room name"),
                ));
            }
        }
        if config.push_every.is_some_and(|d| d.is_zero()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "--push-every must be above zero",
            ));
        }
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
            started: Instant::now(),
            rooms: Rooms::new(),
            stats: Stats::default(),
            to_room: Vec::new(),
            scratch: Vec::new(),
            next_push,
            pushes: 0,
            console: None,
            endings: Vec::new(),
            children: 0,
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
        if self.config.console {
            self.start_console();
        }
        info!("listening on ws://{}", self.local_addr);
        loop {
            let timeout = if self.to_read.is_empty() {
                Some(self.next_wakeup().saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
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
                    CONSOLE => self.on_console(),
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
            for key in mem::take(&mut self.to_read) {
                self.on_readable(key, true);
            }
            self.flush_all();
            let now = Instant::now();
            self.expire_timers(now);
            if now >= self.next_sweep {
                self.sweep();
            }
            if self.next_push.is_some_and(|at| now >= at) {
                self.push(now);
            }
            if !self.endings.is_empty() {
                self.tick_endings(now);
            }
            if let Some(deadline) = self.stopping {
                if self.clients.is_empty() || now >= deadline {
                    self.stop_programs();
                    info!("stopped");
                    return Ok(());
                }
            }
        }
    }

    /// The earliest moment the loop has something to do without an event.
    fn next_wakeup(&self) -> Instant {
        let mut next = self.next_sweep;
        if let Some(Reverse((at, _, _))) = self.timers.peek() {
            next = next.min(*at);
        }
        if let Some(at) = self.next_push {
            next = next.min(at);
        }
        for e in &self.endings {
            next = next.min(e.next_deadline());
        }
        if let Some(at) = self.stopping {
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
                phase: Phase::Http(Box::default()),
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
        let body = &after[..length];
        let path = head.path();
        let response = if let Some(name) = path.strip_prefix("/publish/") {
            self.publish(name, head, body)
        } else if path == "/stats" {
            match head.method {
                "GET" | "HEAD" => json_response(200, self.stats_json()),
                _ => method_not_allowed("GET, HEAD"),
            }
        } else {
            http::serve_static(
                &self.www,
                head.method,
                head.target,
                head.get("If-None-Match"),
            )
        };
        debug!(
            "{}: {} {} -> {}",
            self.clients[key].peer, head.method, head.target, response.status
        );
        self.respond(key, &response, head.method == "HEAD", keep_alive);
        Some(length)
    }

    /// `POST /publish/NAME`: the body goes to every member of the room as one message.
    fn publish(&mut self, name: &str, head: &Head<'_>, body: &[u8]) -> Response {
        if head.method != "POST" {
            return method_not_allowed("POST");
        }
        if let Some(token) = &self.config.publish_token {
            let ok = head
                .get("Authorization")
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.trim().strip_prefix("Bearer "))
                .is_some_and(|t| constant_time_eq(t.trim().as_bytes(), token.as_bytes()));
            if !ok {
                let mut r = Response::text(401, "publishing needs Authorization: Bearer TOKEN");
                r.headers.push(("WWW-Authenticate", "Bearer".into()));
                return r;
            }
        }
        if !room::valid_name(name) {
            return Response::text(400, "room names are 1-64 of A-Z a-z 0-9 . _ -");
        }
        let text = head
            .get("Content-Type")
            .is_some_and(|t| t.trim_ascii().to_ascii_lowercase().starts_with(b"text/"));
        if text && std::str::from_utf8(body).is_err() {
            return Response::text(400, "a text/* body must be valid UTF-8");
        }
        let kind = if text {
            MessageKind::Text
        } else {
            MessageKind::Binary
        };
        let frame = shared_frame(&mut self.scratch, kind, body);
        let delivered = self.deliver(name, None, &frame);
        json_response(200, format!("{{\"delivered\":{delivered}}}"))
    }

    fn stats_json(&self) -> String {
        let websockets = self
            .clients
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::WebSocket(_)))
            .count();
        let mut rooms = String::new();
        for (i, (name, n)) in self.rooms.sizes().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(rooms, "{sep}\"{name}\":{n}");
        }
        let s = &self.stats;
        format!(
            "{{\"connections\":{},\"websockets\":{websockets},\"rooms\":{{{rooms}}},\"messages_in\":{},\"bytes_in\":{},\"messages_out\":{},\"bytes_out\":{},\"children\":{},\"uptime_s\":{}}}",
            self.clients.len(),
            s.messages_in,
            s.bytes_in,
            s.messages_out,
            s.bytes_out,
            self.children,
            self.started.elapsed().as_secs()
        )
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

    /// The route an upgrade path names, if any.
    fn route_for(&self, path: &str) -> Option<Route> {
        if self.config.exec.is_some() && path == self.config.exec_route {
            return Some(Route::Exec);
        }
        match path {
            "/" if self.config.root_room.is_some() => {
                self.config.root_room.clone().map(Route::Room)
            }
            "/" | "/echo" => Some(Route::Echo),
            _ => path
                .strip_prefix("/room/")
                .filter(|name| room::valid_name(name))
                .map(|name| Route::Room(name.to_string())),
        }
    }

    /// Checks an upgrade request; on success the client becomes a WebSocket with the 101 queued.
    fn upgrade(&mut self, key: usize, head: &Head<'_>) -> bool {
        let accepted = self
            .route_for(head.path())
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
        let program = if route == Route::Exec {
            match self.start_program(key, head, accepted.protocol.clone()) {
                Ok(p) => Some(p),
                Err(e) => {
                    self.refuse(key, e);
                    return false;
                }
            }
        } else {
            None
        };
        let mut conn = Connection::new(Role::Server, self.config.max_message_size);
        // The 101 goes out now if the socket takes it (it nearly always does), so that an
        // idle connection keeps no output buffer; whatever it does not take is queued.
        let client = &mut self.clients[key];
        self.scratch.clear();
        handshake::write_accept(&mut self.scratch, &accepted);
        let sent = client.socket.write(&self.scratch).unwrap_or_default();
        if sent < self.scratch.len() {
            conn.out.push(&self.scratch[sent..]);
        }
        debug!(
            "{}: WebSocket open on {} ({:?})",
            client.peer, head.target, accepted.protocol
        );
        client.phase = Phase::WebSocket(Box::new(WebSocket {
            conn,
            route: route.clone(),
            program,
        }));
        client.deadline = None;
        self.queue_flush(key);
        if let Route::Room(name) = &route {
            let n = self.rooms.join(name, key);
            if self.config.room_events {
                self.room_event("join", name, n);
            }
        }
        true
    }

    /// Starts the connection's program, with the request in its environment.
    fn start_program(
        &mut self,
        key: usize,
        head: &Head<'_>,
        protocol: Option<String>,
    ) -> Result<Box<Program>, HandshakeError> {
        if self.children >= self.config.max_children {
            info!(
                "exec: {} programs running (limit {})",
                self.children, self.config.max_children
            );
            return Err(HandshakeError::Unavailable);
        }
        let path = self
            .config
            .exec
            .clone()
            .ok_or(HandshakeError::UnknownPath)?;
        let info = RequestInfo {
            remote: Some(self.clients[key].peer),
            path: head.path().to_string(),
            query: head.query().to_string(),
            uri: head.target.to_string(),
            protocol,
            server_port: self.local_addr.port(),
            headers: head
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
        };
        let mut program = Program::spawn(&path, &self.config.exec_args, &info).map_err(|e| {
            warn!("exec: cannot start {}: {e}", path.display());
            HandshakeError::ProgramFailed
        })?;
        if let Err(e) = program.register(self.poll.registry(), key << TOKEN_SHIFT) {
            warn!("exec: cannot poll the pipes of pid {}: {e}", program.pid());
            self.endings
                .push(program.detach(Instant::now(), Duration::ZERO));
            self.children += 1;
            return Err(HandshakeError::ProgramFailed);
        }
        self.children += 1;
        info!(
            "{}: exec pid {} for {}",
            self.clients[key].peer,
            program.pid(),
            head.target
        );
        Ok(Box::new(program))
    }

    /// Feeds a WebSocket connection and acts on its events.
    fn ws_input(&mut self, key: usize, data: &mut [u8]) {
        if data.is_empty() {
            return;
        }
        let Server {
            clients,
            stats,
            to_room,
            scratch,
            config,
            ..
        } = self;
        let client = &mut clients[key];
        let Phase::WebSocket(ws) = &mut client.phase else {
            return;
        };
        let WebSocket {
            conn,
            route,
            program,
        } = &mut **ws;
        let peer = client.peer;
        let before = conn.state();
        let console = config.console;
        let room_echo = config.room_echo;
        let mut on = |c: &mut Connection, e: Event<'_>| match e {
            Event::Message(kind, payload) => {
                stats.messages_in += 1;
                stats.bytes_in += payload.len() as u64;
                if console {
                    console::print_message(
                        &peer,
                        route.label(),
                        kind == MessageKind::Text,
                        &payload,
                    );
                }
                match route {
                    Route::Echo => {
                        stats.messages_out += 1;
                        stats.bytes_out += payload.len() as u64;
                        c.send_payload(kind, payload);
                    }
                    Route::Room(_) => {
                        let frame = shared_frame(scratch, kind, &payload);
                        if room_echo {
                            c.send_shared(&frame);
                        }
                        to_room.push(frame);
                    }
                    Route::Exec => {
                        if let Some(p) = program.as_mut() {
                            if let Err(e) = p.send_line(&payload) {
                                debug!("{peer}: exec stdin closed: {e}");
                            }
                        }
                    }
                }
            }
            other => log_event(peer, &other),
        };
        conn.receive(data, &mut on);
        let after = conn.state();
        let pending = !conn.out.is_empty();
        if after != before {
            if let State::Closing { .. } = after {
                self.set_deadline(key, self.config.close_timeout);
            }
        }
        if pending || after == State::Closed {
            self.queue_flush(key);
        }
        if !self.to_room.is_empty() {
            let frames = mem::take(&mut self.to_room);
            if let Some(Route::Room(name)) = self.route_of(key) {
                for frame in &frames {
                    self.deliver(&name, Some(key), frame);
                }
            }
            self.to_room = frames;
            self.to_room.clear();
        }
    }

    fn route_of(&self, key: usize) -> Option<Route> {
        match &self.clients.get(key)?.phase {
            Phase::WebSocket(ws) => Some(ws.route.clone()),
            _ => None,
        }
    }

    /// Queues a shared frame for every open member of a room but `except`; returns how many.
    fn deliver(&mut self, room: &str, except: Option<usize>, frame: &SharedFrame) -> usize {
        let Server {
            rooms,
            clients,
            to_flush,
            stats,
            ..
        } = self;
        let mut n = 0;
        for &member in rooms.members(room) {
            if Some(member) == except {
                continue;
            }
            if send_to(clients, to_flush, member, frame) {
                n += 1;
            }
        }
        stats.messages_out += n as u64;
        stats.bytes_out += (n * frame.len()) as u64;
        n
    }

    /// `--room-events`: tells a room's members who is there now.
    fn room_event(&mut self, event: &str, room: &str, clients: usize) {
        let json = format!("{{\"event\":\"{event}\",\"room\":\"{room}\",\"clients\":{clients}}}");
        let frame = shared_frame(&mut self.scratch, MessageKind::Text, json.as_bytes());
        self.deliver(room, None, &frame);
    }

    /// Server push: one message, encoded once, to every open WebSocket (or one room's).
    fn push(&mut self, now: Instant) {
        let Some(every) = self.config.push_every else {
            return;
        };
        self.pushes += 1;
        let text = self
            .config
            .push_text
            .replace("{n}", &self.pushes.to_string())
            .replace("{time}", &utc_time_of_day());
        let frame = shared_frame(&mut self.scratch, MessageKind::Text, text.as_bytes());
        let n = match self.config.push_room.clone() {
            Some(room) => self.deliver(&room, None, &frame),
            None => {
                let Server {
                    clients,
                    to_flush,
                    stats,
                    ..
                } = self;
                let keys: Vec<usize> = clients.iter().map(|(k, _)| k).collect();
                let n = keys
                    .into_iter()
                    .filter(|&k| send_to(clients, to_flush, k, &frame))
                    .count();
                stats.messages_out += n as u64;
                stats.bytes_out += (n * frame.len()) as u64;
                n
            }
        };
        debug!("push {}: {n} clients", self.pushes);
        // The next push keeps to the period; if the loop fell behind, it skips rather than bursts.
        let next = self.next_push.unwrap_or(now) + every;
        self.next_push = Some(if next <= now { now + every } else { next });
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
        let peer = client.peer;
        if let Phase::WebSocket(ws) = mem::replace(&mut client.phase, Phase::Linger) {
            self.retire(key, peer, ws);
        }
        self.set_deadline(key, self.config.close_timeout);
    }

    fn set_deadline(&mut self, key: usize, after: std::time::Duration) {
        let at = Instant::now() + after;
        let client = &mut self.clients[key];
        client.deadline = Some(at);
        self.timers.push(Reverse((at, key, client.serial)));
    }

    fn expire_timers(&mut self, now: Instant) {
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
        let mut stop = false;
        let mut child = false;
        if let Some(r) = &mut self.signals {
            let mut b = [0u8; 64];
            while let Ok(n @ 1..) = r.read(&mut b) {
                for &sig in &b[..n] {
                    match sig as libc::c_int {
                        libc::SIGCHLD => child = true,
                        _ => stop = true,
                    }
                }
            }
        }
        if child {
            self.reap();
        }
        if stop {
            self.shut_down();
        }
    }

    fn shut_down(&mut self) {
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

    /// Console input: each line goes to everyone, or to one room (`@ROOM text`).
    fn on_console(&mut self) {
        let Some(mut console) = self.console.take() else {
            return;
        };
        let mut lines = Vec::new();
        let mut buf = mem::take(&mut self.rbuf);
        let pipe = console.read(&mut buf, &mut |line| {
            lines.push(String::from_utf8_lossy(line).into_owned())
        });
        self.rbuf = buf;
        for line in lines {
            self.console_line(&line);
        }
        if pipe == Pipe::Closed {
            info!("console: end of input (the server keeps running)");
            let _ = self.poll.registry().deregister(&mut Console::source());
        } else {
            self.console = Some(console);
        }
    }

    fn console_line(&mut self, line: &str) {
        let (target, text) = console::parse_line(line);
        let frame = shared_frame(&mut self.scratch, MessageKind::Text, text.as_bytes());
        let n = match target {
            Target::Room(room) => self.deliver(room, None, &frame),
            Target::Everyone => {
                let Server {
                    clients,
                    to_flush,
                    stats,
                    ..
                } = self;
                let keys: Vec<usize> = clients.iter().map(|(k, _)| k).collect();
                let n = keys
                    .into_iter()
                    .filter(|&k| send_to(clients, to_flush, k, &frame))
                    .count();
                stats.messages_out += n as u64;
                stats.bytes_out += (n * frame.len()) as u64;
                n
            }
        };
        debug!("console: line sent to {n} clients");
    }

    fn start_console(&mut self) {
        let console = match Console::new() {
            Ok(c) => c,
            Err(e) => return warn!("console: stdin unusable: {e}"),
        };
        match self
            .poll
            .registry()
            .register(&mut Console::source(), CONSOLE, Interest::READABLE)
        {
            Ok(()) => self.console = Some(console),
            Err(e) => {
                // A regular file (or /dev/null) cannot be polled, but never blocks: read it now.
                info!("console: stdin is not pollable ({e}); reading it once");
                self.console = Some(console);
                self.on_console();
                self.console = None;
            }
        }
    }

    /// A program's pipe is ready: its output becomes messages, its errors log lines.
    fn on_program_pipe(&mut self, key: usize, pipe: usize) {
        let mut buf = mem::take(&mut self.rbuf);
        if let Some(client) = self.clients.get_mut(key) {
            let peer = client.peer;
            if let Phase::WebSocket(ws) = &mut client.phase {
                let WebSocket { conn, program, .. } = &mut **ws;
                if let Some(p) = program {
                    match pipe {
                        exec::STDOUT => {
                            let mut sent = 0u64;
                            let mut bytes = 0u64;
                            p.read_stdout(&mut buf, &mut |line| {
                                let text = String::from_utf8_lossy(line);
                                sent += conn.send(MessageKind::Text, text.as_bytes()) as u64;
                                bytes += text.len() as u64;
                            });
                            self.stats.messages_out += sent;
                            self.stats.bytes_out += bytes;
                        }
                        exec::STDERR => {
                            let pid = p.pid();
                            p.read_stderr(&mut buf, &mut |line| {
                                info!(
                                    "{peer}: exec pid {pid} stderr: {}",
                                    String::from_utf8_lossy(line)
                                )
                            });
                        }
                        _ => {
                            let _ = p.flush_stdin();
                        }
                    }
                }
            }
            self.queue_flush(key);
        }
        self.rbuf = buf;
        self.program_progress(key);
    }

    /// Once a program's stdout is closed and it has exited, its connection closes: 1000 for a
    /// zero exit status, 1011 otherwise (after every line it wrote has been queued).
    fn program_progress(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        let peer = client.peer;
        let Phase::WebSocket(ws) = &mut client.phase else {
            return;
        };
        let Some(p) = &mut ws.program else { return };
        if p.stdout_open() {
            return;
        }
        let Some(status) = p.try_reap() else { return };
        // What the program said on stderr just before it exited is still worth a log line.
        let pid = p.pid();
        let mut buf = [0u8; 4096];
        p.read_stderr(&mut buf, &mut |line| {
            info!(
                "{peer}: exec pid {pid} stderr: {}",
                String::from_utf8_lossy(line)
            )
        });
        let (code, reason) = if status.success() {
            (close_code::NORMAL, "program exited".to_string())
        } else {
            (close_code::INTERNAL, format!("program {status}"))
        };
        info!("{peer}: exec pid {} {status}", p.pid());
        ws.program = None;
        ws.conn.close(code, &reason);
        self.children -= 1;
        self.set_deadline(key, self.config.close_timeout);
        self.queue_flush(key);
    }

    /// SIGCHLD: see which programs have exited.
    fn reap(&mut self) {
        let keys: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| matches!(&c.phase, Phase::WebSocket(ws) if ws.program.is_some()))
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            self.program_progress(key);
        }
        self.tick_endings(Instant::now());
    }

    fn tick_endings(&mut self, now: Instant) {
        let before = self.endings.len();
        self.endings.retain_mut(|e| !e.tick(now));
        self.children -= before - self.endings.len();
    }

    /// On the way out: no program outlives the server.
    fn stop_programs(&mut self) {
        let keys: Vec<usize> = self.clients.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.end(key);
        }
        for e in &mut self.endings {
            e.kill_now();
        }
        self.endings.clear();
    }

    /// The one place that ends a connection.
    fn end(&mut self, key: usize) {
        let Some(mut client) = self.clients.try_remove(key) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut client.socket);
        if let Phase::WebSocket(ws) = client.phase {
            self.retire(key, client.peer, ws);
        }
    }

    /// A WebSocket is over (ended, or only waiting for the peer's FIN): it leaves its room,
    /// and its program, if still running, is told to end and is reaped later.
    fn retire(&mut self, key: usize, peer: SocketAddr, ws: Box<WebSocket>) {
        let WebSocket { route, program, .. } = *ws;
        if let Some(p) = program {
            debug!("{peer}: exec pid {}: stdin closed", p.pid());
            self.endings
                .push(p.detach(Instant::now(), self.config.exec_grace));
        }
        if let Route::Room(name) = route {
            let left = self.rooms.leave(&name, key);
            if self.config.room_events && left > 0 {
                self.room_event("leave", &name, left);
            }
        }
    }
}

/// Queues a shared frame on one client if it is an open WebSocket; true if queued.
fn send_to(
    clients: &mut Slab<Client>,
    to_flush: &mut Vec<usize>,
    key: usize,
    frame: &SharedFrame,
) -> bool {
    let Some(client) = clients.get_mut(key) else {
        return false;
    };
    let Phase::WebSocket(ws) = &mut client.phase else {
        return false;
    };
    if !ws.conn.send_shared(frame) {
        return false;
    }
    if !client.queued {
        client.queued = true;
        to_flush.push(key);
    }
    true
}

/// Encodes a server frame once, for many receivers.
fn shared_frame(scratch: &mut Vec<u8>, kind: MessageKind, payload: &[u8]) -> SharedFrame {
    scratch.clear();
    encode_frame(scratch, true, kind.opcode(), None, payload);
    Rc::from(&scratch[..])
}

fn json_response(status: u16, body: String) -> Response {
    Response {
        status,
        headers: vec![
            ("Content-Type", "application/json".into()),
            ("Cache-Control", "no-cache".into()),
        ],
        body: Cow::Owned(body.into_bytes()),
    }
}

fn method_not_allowed(allow: &str) -> Response {
    let mut r = Response::text(405, "method not allowed here");
    r.headers.push(("Allow", allow.into()));
    r
}

/// Compares a secret without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `HH:MM:SS` in UTC, for `{time}` in push messages.
fn utc_time_of_day() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        % 86_400;
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
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

/// SIGINT, SIGTERM and SIGCHLD, turned into a byte on a pipe the loop polls (the self-pipe trick), so
/// that no work happens in the signal handler and no thread is needed.
mod signals {
    use super::*;
    use std::os::fd::{AsRawFd, IntoRawFd};

    static PIPE: AtomicI32 = AtomicI32::new(-1);

    extern "C" fn on_signal(sig: libc::c_int) {
        let fd = PIPE.load(Ordering::Relaxed);
        if fd >= 0 {
            // SAFETY: write(2) is async-signal-safe; the buffer is a valid one-byte array.
            unsafe { libc::write(fd, [sig as u8].as_ptr().cast(), 1) };
        }
    }

    pub fn install(sender: mio::unix::pipe::Sender) -> io::Result<()> {
        let fd = sender.as_raw_fd();
        let _ = sender.into_raw_fd();
        PIPE.store(fd, Ordering::Relaxed);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGCHLD] {
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
