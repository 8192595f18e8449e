//! Plain HTTP on the WebSocket port: request heads (and bodies) until one upgrades, the
//! endpoints (`/publish`, `/stats`, static files), and the upgrade itself.

use super::*;
use crate::error::ChunkedError;
use crate::http::chunked::{self, ChunkedDecoder};
use crate::target;

impl Server {
    /// Request heads (and bodies) of plain HTTP, until one of them upgrades to WebSocket.
    pub(super) fn http_input(&mut self, key: usize, data: &mut [u8]) {
        let client = &mut self.clients[key];
        let Phase::Http(state) = &mut client.phase else {
            return;
        };
        if state.closing {
            return;
        }
        if !data.is_empty() {
            state.heard(self.now, self.config.handshake_timeout);
        }
        // The bytes to parse: straight from the read buffer, or after those kept from before
        // (taken out, and put back below without a copy when nothing of them was used).
        let mut kept = mem::take(&mut state.partial);
        let from_kept = !kept.is_empty();
        if from_kept {
            kept.extend_from_slice(data);
        }
        let buf: &mut [u8] = if from_kept { &mut kept } else { &mut *data };
        let mut at = 0;
        // Bytes of a chunked body already decoded into the request's state, to leave out of
        // what is kept (so a long body is neither kept twice nor decoded twice).
        let mut decoded: Option<std::ops::Range<usize>> = None;
        let keep_from = loop {
            if at == buf.len() {
                break None;
            }
            let step = match handshake::parse_head(&buf[at..], self.config.max_head_size) {
                Ok(HeadStatus::Partial) => break Some(at),
                Err(e) => {
                    self.refuse(key, e);
                    break None;
                }
                Ok(HeadStatus::Complete(head, n)) => {
                    self.begin_request(key, &head, n);
                    // RFC 9112 §3.2: "A server MUST respond with a 400 … to any HTTP/1.1
                    // request message that lacks a Host header field and to any request
                    // message that contains more than one Host header field".
                    let hosts = head.values("Host").count();
                    if hosts > 1 || (hosts == 0 && head.minor_version >= 1) {
                        self.refuse(key, HandshakeError::MissingHost);
                        break None;
                    }
                    if matches!(&self.clients[key].phase, Phase::Http(s) if s.to_https) {
                        self.redirect_to_https(key, &head);
                        break None;
                    }
                    let own = self.clients[key].transport.scheme();
                    let checked = self.forwarded_client(key, &head, own).and_then(|scheme| {
                        let t = target::parse(head.method, head.target)
                            .map_err(HandshakeError::BadTarget)?;
                        self.check_origin(self.clients[key].peer.addr(), scheme, &head, &t)
                    });
                    if let Err(e) = checked {
                        self.refuse(key, e);
                        break None;
                    }
                    if head.wants_websocket() {
                        Step::Upgrade(self.upgrade(key, &head), n)
                    } else {
                        match self.http_request(key, &head, &buf[at + n..]) {
                            BodyRead::Used(used) => Step::Next(n + used),
                            BodyRead::Wait => break Some(at),
                            BodyRead::Decoded(k) => {
                                decoded = Some(at + n..at + n + k);
                                break Some(at);
                            }
                        }
                    }
                }
            };
            match step {
                Step::Next(n) => {
                    at += n;
                    let client = &mut self.clients[key];
                    if at < buf.len() && client.backlog() > self.config.max_backlog {
                        // Pipelined requests wait until the answers so far have drained.
                        client.paused = true;
                        break Some(at);
                    }
                }
                Step::Upgrade(true, n) => {
                    self.ws_input(key, &mut buf[at + n..]);
                    break None;
                }
                Step::Upgrade(false, _) => break None,
            }
            let Phase::Http(state) = &self.clients[key].phase else {
                break None;
            };
            if state.closing {
                break None;
            }
        };
        let Some(at) = keep_from else { return };
        let rest = if from_kept {
            if let Some(range) = decoded {
                kept.drain(range);
            }
            kept.drain(..at);
            kept
        } else {
            let mut rest = data[at..].to_vec();
            if let Some(range) = decoded {
                rest.drain(range.start - at..range.end - at);
            }
            rest
        };
        if let Phase::Http(state) = &mut self.clients[key].phase {
            state.partial = rest;
        }
    }

    /// Answers a plain HTTP request whose head is parsed, once its body (framed by
    /// Content-Length or chunked, RFC 9112 §6.3) has arrived: see [`BodyRead`].
    pub(super) fn http_request(&mut self, key: usize, head: &Head<'_>, after: &[u8]) -> BodyRead {
        let framing = match framing(head) {
            Ok(f) => f,
            Err(e) => {
                self.refuse(key, e);
                return BodyRead::Used(0);
            }
        };
        let (body, used): (Cow<'_, [u8]>, usize) = match framing {
            Framing::Length(length) => {
                if length > self.config.max_message_size {
                    self.respond(
                        key,
                        &Response::text(413, "request body too large"),
                        false,
                        false,
                    );
                    return BodyRead::Used(0);
                }
                if after.len() < length {
                    self.expect_continue(key, head);
                    return BodyRead::Wait;
                }
                (Cow::Borrowed(&after[..length]), length)
            }
            Framing::Chunked => match self.read_chunked(key, after) {
                Ok(Some((body, used))) => (Cow::Owned(body), used),
                Ok(None) => {
                    self.expect_continue(key, head);
                    return BodyRead::Decoded(after.len());
                }
                Err(e) => {
                    self.refuse(key, HandshakeError::BadChunkedBody(e));
                    return BodyRead::Used(0);
                }
            },
        };
        if let Phase::Http(state) = &mut self.clients[key].phase {
            state.continued = false;
            if let Some(r) = &mut state.request {
                r.bytes_in += used as u64;
            }
        }
        // Draining: every answer closes its connection, so a proxy reconnects elsewhere.
        let keep_alive = head.keep_alive() && self.stopping.is_none();
        let body = &body[..];
        let path = head.path();
        let response = if let Some(name) = path.strip_prefix("/publish/") {
            self.publish(name, head, body)
        } else if path == "/stats" {
            match head.method {
                "GET" | "HEAD" => json_response(200, self.stats_json()),
                _ => method_not_allowed("GET, HEAD"),
            }
        } else if path == "/healthz" {
            match head.method {
                "GET" | "HEAD" => self.health(),
                _ => method_not_allowed("GET, HEAD"),
            }
        } else if path == "/metrics" {
            match head.method {
                "GET" | "HEAD" => self.metrics_response(),
                _ => method_not_allowed("GET, HEAD"),
            }
        } else if matches!(head.method, "GET" | "HEAD") {
            http::serve_static(
                &self.www,
                head.method,
                head.target,
                head.get("If-None-Match"),
            )
        } else {
            // Another method: 405 where there is a page (RFC 9110 §15.5.6), and where there
            // is none, what a GET would get (404).
            match http::serve_static(&self.www, "GET", head.target, None) {
                r if matches!(r.status, 200 | 304) => method_not_allowed("GET, HEAD"),
                r => r,
            }
        };
        debug!(
            "{}: {} {} -> {}",
            self.clients[key].peer, head.method, head.target, response.status
        );
        self.respond(key, &response, head.method == "HEAD", keep_alive);
        BodyRead::Used(used)
    }

    /// RFC 9110 §10.1.1: a client that asked waits for `100 Continue` before sending the body.
    fn expect_continue(&mut self, key: usize, head: &Head<'_>) {
        let Phase::Http(state) = &mut self.clients[key].phase else {
            return;
        };
        if !state.continued && head.has_token("Expect", "100-continue") {
            state.continued = true;
            state.out.push(b"HTTP/1.1 100 Continue\r\n\r\n");
            self.queue_flush(key);
        }
    }

    /// Feeds the bytes after a request head to its chunked decoder (kept between reads):
    /// the whole body and how many of these bytes it took, or `None` while it goes on.
    fn read_chunked(
        &mut self,
        key: usize,
        after: &[u8],
    ) -> Result<Option<(Vec<u8>, usize)>, ChunkedError> {
        let Phase::Http(state) = &mut self.clients[key].phase else {
            return Ok(None);
        };
        let (limit, max_line) = (self.config.max_message_size, self.config.max_head_size);
        let body = state
            .chunked
            .get_or_insert_with(|| Box::new((ChunkedDecoder::new(limit, max_line), Vec::new())));
        let (decoder, decoded) = &mut **body;
        match decoder.decode(after, decoded) {
            Ok(chunked::Status::Partial) => Ok(None),
            Ok(chunked::Status::Complete(used)) => {
                let body = mem::take(decoded);
                state.chunked = None;
                Ok(Some((body, used)))
            }
            Err(e) => {
                state.chunked = None;
                Err(e)
            }
        }
    }

    /// `GET /healthz`: 200 while accepting, 503 from the moment shutdown begins, so that a
    /// load balancer takes the node out before it stops.
    fn health(&self) -> Response {
        let mut r = if self.shutting_down() {
            Response::text(503, "shutting down")
        } else {
            Response::text(200, "ok")
        };
        r.headers.push(("Cache-Control", "no-cache".into()));
        r
    }

    /// `POST /publish/NAME`: the body goes to every member of the room as one message.
    pub(super) fn publish(&mut self, name: &str, head: &Head<'_>, body: &[u8]) -> Response {
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
        // Members on other workers and nodes get it too; `delivered` counts this worker's.
        self.room_delivered(name, &frame, true);
        json_response(200, format!("{{\"delivered\":{delivered}}}"))
    }

    /// What is open right now, counted when asked for (the loop keeps no running totals).
    pub(super) fn gauges(&self) -> stats::Gauges {
        let mut g = stats::Gauges {
            rooms: self.rooms.sizes().count(),
            children: self.children,
            uptime_s: self.started.elapsed().as_secs(),
            ..stats::Gauges::default()
        };
        for (_, c) in self.clients.iter() {
            match &c.phase {
                Phase::Http(_) => g.http += 1,
                Phase::WebSocket(ws) if ws.conn.is_open() => g.websocket += 1,
                Phase::WebSocket(_) | Phase::Linger(_) => g.closing += 1,
            }
        }
        g
    }

    /// `GET /metrics`: the counters and gauges for Prometheus.
    fn metrics_response(&self) -> Response {
        let mut body = String::new();
        match self.all_workers() {
            None => stats::prometheus(&self.gauges(), &self.stats, &mut body),
            Some(all) => {
                let (g, s) = sums(&all);
                stats::prometheus(&g, &s, &mut body);
                stats::prometheus_workers(&all, &mut body);
            }
        }
        self.redis_metrics(&mut body);
        Response {
            status: 200,
            headers: vec![
                ("Content-Type", stats::METRICS_CONTENT_TYPE.into()),
                ("Cache-Control", "no-cache".into()),
            ],
            body: Cow::Owned(body.into_bytes()),
        }
    }

    /// `GET /stats`. With `--workers`, the keys are the sums over the workers (rooms merged
    /// by name) and `"workers"` lists each one's figures.
    pub(super) fn stats_json(&self) -> String {
        let all = self.all_workers();
        let (g, s, connections, websockets, rooms) = match &all {
            None => (
                self.gauges(),
                Cow::Borrowed(&self.stats),
                self.clients.len(),
                self.websockets(),
                self.rooms.sizes().collect::<Vec<_>>(),
            ),
            Some(all) => {
                let (mut g, s) = sums(all);
                let mut rooms: std::collections::BTreeMap<&str, usize> = Default::default();
                for (snap, _) in all {
                    for (name, n) in &snap.rooms {
                        *rooms.entry(name.as_str()).or_default() += n;
                    }
                }
                g.rooms = rooms.len();
                (
                    g,
                    Cow::Owned(s),
                    all.iter().map(|(w, _)| w.connections).sum(),
                    all.iter().map(|(w, _)| w.websockets).sum(),
                    rooms.into_iter().collect(),
                )
            }
        };
        let mut room_list = String::new();
        for (i, (name, n)) in rooms.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(room_list, "{sep}\"{name}\":{n}");
        }
        let mut top = String::new();
        for (i, (name, n)) in top_rooms(rooms, TOP_ROOMS).into_iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(top, "{sep}[\"{name}\",{n}]");
        }
        let refused_total: u64 = s.refused.iter().map(|(_, n)| n).sum();
        let mut json = format!(
            "{{\"http\":{},\"closing\":{},\"room_count\":{},\"top_rooms\":[{top}],\"refused_total\":{refused_total},\
             \"connections\":{connections},\"websockets\":{websockets},\"rooms\":{{{room_list}}},\"messages_in\":{},\"bytes_in\":{},\"messages_out\":{},\"bytes_out\":{},\"children\":{},\"uptime_s\":{},\
             \"slow_closed\":{},\"dropped\":{},\"ping_timeouts\":{},\"send_timeouts\":{},\"accept_errors\":{},\"console_dropped\":{},\"refused\":{},\"closes\":{}",
            g.http,
            g.closing,
            g.rooms,
            s.messages_in,
            s.bytes_in,
            s.messages_out,
            s.bytes_out,
            g.children,
            self.started.elapsed().as_secs(),
            s.slow_closed,
            s.slow_dropped,
            s.ping_timeouts,
            s.send_timeouts,
            s.accept_errors,
            s.console_dropped,
            stats::json_counts(&s.refused),
            stats::json_counts(&s.closes),
        );
        if let Some(all) = &all {
            let dropped: u64 = all.iter().map(|(_, d)| d).sum();
            let _ = write!(json, ",\"inbox_dropped\":{dropped},\"workers\":[");
            for (i, (w, dropped)) in all.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                let _ = write!(
                    json,
                    "{sep}{{\"worker\":{i},\"connections\":{},\"websockets\":{},\"http\":{},\"closing\":{},\"rooms\":{},\"room_replicas\":{},\
                     \"messages_in\":{},\"messages_out\":{},\"bytes_in\":{},\"bytes_out\":{},\"dropped\":{},\"inbox_dropped\":{dropped},\"children\":{}}}",
                    w.connections,
                    w.websockets,
                    w.gauges.http,
                    w.gauges.closing,
                    w.gauges.rooms,
                    w.replicas,
                    w.stats.messages_in,
                    w.stats.messages_out,
                    w.stats.bytes_in,
                    w.stats.bytes_out,
                    w.stats.slow_dropped,
                    w.gauges.children,
                );
            }
            json.push(']');
        }
        json.push_str(&self.redis_json());
        json.push('}');
        json
    }

    /// WebSockets, open or closing.
    pub(super) fn websockets(&self) -> usize {
        self.clients
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::WebSocket(_)))
            .count()
    }

    pub(super) fn respond(
        &mut self,
        key: usize,
        response: &Response,
        head_only: bool,
        keep_alive: bool,
    ) {
        let client = &mut self.clients[key];
        let Phase::Http(state) = &mut client.phase else {
            return;
        };
        let before = state.out.len();
        response.write_to(state.out.buf(), head_only, keep_alive);
        state.out.commit();
        let written = state.out.len() - before;
        self.access_http(key, response.status, written);
        let Phase::Http(state) = &mut self.clients[key].phase else {
            return;
        };
        if !keep_alive {
            state.closing = true;
            state.partial = Vec::new();
        }
        state.answered(self.now, self.config.http_idle_timeout);
        self.queue_flush(key);
    }

    /// Refuses a request with the error's status and closes after the answer.
    pub(super) fn refuse(&mut self, key: usize, e: HandshakeError) {
        let client = &mut self.clients[key];
        info!("{}: {} {}", client.peer, e.status(), e);
        self.stats.refused.add(e.status());
        let Phase::Http(state) = &mut client.phase else {
            return;
        };
        let before = state.out.len();
        handshake::write_refusal(state.out.buf(), e);
        state.out.commit();
        let written = state.out.len() - before;
        self.access_http(key, e.status(), written);
        let Phase::Http(state) = &mut self.clients[key].phase else {
            return;
        };
        state.closing = true;
        state.partial = Vec::new();
        self.queue_flush(key);
    }

    /// The route an upgrade path names, if any.
    pub(super) fn route_for(&self, path: &str) -> Option<Route> {
        if self.config.exec.is_some() && path == self.config.exec_route {
            return Some(Route::Exec);
        }
        match path {
            "/" if self.config.root_room.is_some() => self
                .config
                .root_room
                .as_deref()
                .map(|name| Route::Room(name.into())),
            "/" | "/echo" => Some(Route::Echo),
            _ => path
                .strip_prefix("/room/")
                .filter(|name| room::valid_name(name))
                .map(|name| Route::Room(name.into())),
        }
    }

    /// Checks an upgrade request; on success the client becomes a WebSocket with the 101 queued.
    pub(super) fn upgrade(&mut self, key: usize, head: &Head<'_>) -> bool {
        if self.stopping.is_some() {
            // A keep-alive connection asking to upgrade during the drain.
            self.refuse(key, HandshakeError::Unavailable);
            return false;
        }
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
        if let Route::Room(name) = &route {
            if let Err(e) = self.room_program_join(name) {
                self.refuse(key, e);
                return false;
            }
        }
        let mut conn = Connection::new(Role::Server, self.config.max_message_size);
        conn.set_timeouts(self.timeouts.clone(), self.now);
        let deflate = self.negotiate_deflate(head);
        self.attach_deflate(&mut conn, deflate);
        let client = &mut self.clients[key];
        // Answers to requests pipelined before this one go out first.
        if let Phase::Http(state) = &mut client.phase {
            conn.out = mem::take(&mut state.out);
        }
        self.scratch.clear();
        handshake::write_accept_with(&mut self.scratch, &accepted, deflate.as_ref());
        // The 101 goes out now if nothing is ahead of it and the socket takes it (it nearly
        // always does), so that an idle connection keeps no output buffer.
        let sent = if conn.out.is_empty() {
            client.transport.write_now(&self.scratch)
        } else {
            0
        };
        client.bytes_out += sent as u64;
        if sent < self.scratch.len() {
            conn.out.push(&self.scratch[sent..]);
        }
        debug!(
            "{}: WebSocket open on {} ({:?}, deflate {:?})",
            client.peer, head.target, accepted.protocol, deflate
        );
        let ws = WebSocket {
            conn,
            route: route.clone(),
            large: false,
            program,
            stdout_held: false,
            slow_dropped: 0,
            at_root: head.path() == "/",
            opened_ms: self.since_start_ms(),
        };
        debug_assert_eq!(ws.path(&self.config), head.path());
        let client = &mut self.clients[key];
        client.phase = Phase::WebSocket(ws);
        self.queue_flush(key);
        if let Route::Room(name) = &route {
            let n = self.rooms.join(name, key);
            if n == 1 {
                self.room_opened(name);
            }
            if self.config.room_events {
                self.room_event("join", name, n);
            }
        }
        true
    }
}

/// Rooms listed in `/stats` `top_rooms`.
const TOP_ROOMS: usize = 10;

/// The `n` largest rooms, largest first (ties by name): what a dashboard can show of
/// thousands of rooms.
fn top_rooms(mut all: Vec<(&str, usize)>, n: usize) -> Vec<(&str, usize)> {
    let by_size = |a: &(&str, usize), b: &(&str, usize)| b.1.cmp(&a.1).then(a.0.cmp(b.0));
    if all.len() > n {
        all.select_nth_unstable_by(n, by_size);
        all.truncate(n);
    }
    all.sort_unstable_by(by_size);
    all
}

/// The workers' gauges and counters added up.
fn sums(all: &[(workers::Snapshot, u64)]) -> (stats::Gauges, stats::Stats) {
    let mut g = stats::Gauges::default();
    let mut s = stats::Stats::default();
    for (w, _) in all {
        g.add(&w.gauges);
        s.add(&w.stats);
    }
    (g, s)
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

/// How far [`Server::http_request`] got with a request's body.
pub(super) enum BodyRead {
    /// Answered; the body took this many of the bytes after the head.
    Used(usize),
    /// The body has not all arrived; keep everything and try again with more.
    Wait,
    /// The body goes on; the first this many bytes after the head are decoded already and
    /// need not be kept.
    Decoded(usize),
}

/// How a request's body is framed (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// This many bytes (none when neither header is there).
    Length(usize),
    /// The chunked coding, up to its last chunk and trailers.
    Chunked,
}

/// RFC 9112 §6.3: Transfer-Encoding wins over Content-Length, but a request with both is
/// refused (§6.1 lets a server do so, and it is how requests are smuggled past proxies);
/// `chunked` must be the last coding and the only one, since it is the only one decoded.
fn framing(head: &Head<'_>) -> Result<Framing, HandshakeError> {
    let mut codings = head
        .values("Transfer-Encoding")
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty())
        .peekable();
    if codings.peek().is_none() {
        if head.get("Transfer-Encoding").is_some() {
            return Err(HandshakeError::BadTransferEncoding);
        }
        return content_length(head)
            .map(Framing::Length)
            .map_err(|()| HandshakeError::BadContentLength);
    }
    let mut chunked = 0;
    for coding in codings {
        if !coding.eq_ignore_ascii_case(b"chunked") {
            return Err(HandshakeError::UnsupportedTransferCoding);
        }
        chunked += 1;
    }
    if chunked > 1 || head.minor_version == 0 {
        return Err(HandshakeError::BadTransferEncoding);
    }
    if head.get("Content-Length").is_some() {
        return Err(HandshakeError::LengthAndChunked);
    }
    Ok(Framing::Chunked)
}

enum Step {
    /// The request was answered; the next one starts this many bytes further on.
    Next(usize),
    /// An upgrade was tried (true: accepted); the frames start this many bytes further on.
    Upgrade(bool, usize),
}

/// The body length (RFC 9112 §6.3): absent means none; every value, in every Content-Length
/// field, must be the same run of digits, or the framing cannot be trusted.
fn content_length(head: &Head<'_>) -> Result<usize, ()> {
    let mut length = None;
    for value in head.values("Content-Length") {
        for part in value.split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let n: usize = std::str::from_utf8(part)
                .map_err(|_| ())?
                .parse()
                .map_err(|_| ())?;
            if length.is_some_and(|l| l != n) {
                return Err(());
            }
            length = Some(n);
        }
    }
    Ok(length.unwrap_or(0))
}
