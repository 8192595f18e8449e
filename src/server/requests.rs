//! Plain HTTP on the WebSocket port: request heads (and bodies) until one upgrades, the
//! endpoints (`/publish`, `/stats`, static files), and the upgrade itself.

use super::*;
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
                    // RFC 9112 §3.2: "A server MUST respond with a 400 … to any HTTP/1.1
                    // request message that lacks a Host header field and to any request
                    // message that contains more than one Host header field".
                    let hosts = head.values("Host").count();
                    if hosts > 1 || (hosts == 0 && head.minor_version >= 1) {
                        self.refuse(key, HandshakeError::MissingHost);
                        break None;
                    }
                    let checked = target::parse(head.method, head.target)
                        .map_err(HandshakeError::BadTarget)
                        .and_then(|t| self.check_origin(self.clients[key].peer, &head, &t));
                    if let Err(e) = checked {
                        self.refuse(key, e);
                        break None;
                    }
                    if head.wants_websocket() {
                        Step::Upgrade(self.upgrade(key, &head), n)
                    } else {
                        match self.http_request(key, &head, &buf[at + n..]) {
                            Some(used) => Step::Next(n + used),
                            None => break Some(at),
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
            kept.drain(..at);
            kept
        } else {
            data[at..].to_vec()
        };
        if let Phase::Http(state) = &mut self.clients[key].phase {
            state.partial = rest;
        }
    }

    /// Answers a plain HTTP request whose head is parsed. Returns how many body bytes it used,
    /// or `None` when the body has not all arrived yet.
    pub(super) fn http_request(
        &mut self,
        key: usize,
        head: &Head<'_>,
        after: &[u8],
    ) -> Option<usize> {
        let length = match content_length(head) {
            Ok(n) => n,
            Err(()) => {
                self.refuse(key, HandshakeError::BadContentLength);
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
            let client = &mut self.clients[key];
            if let Phase::Http(state) = &mut client.phase {
                if !state.continued && head.has_token("Expect", "100-continue") {
                    // RFC 9110 §10.1.1: the client waits for this before sending the body.
                    state.continued = true;
                    state.out.push(b"HTTP/1.1 100 Continue\r\n\r\n");
                    self.queue_flush(key);
                }
            }
            return None;
        }
        if let Phase::Http(state) = &mut self.clients[key].phase {
            state.continued = false;
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
        } else if path == "/metrics" {
            match head.method {
                "GET" | "HEAD" => self.metrics_response(),
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
        stats::prometheus(&self.gauges(), &self.stats, &mut body);
        Response {
            status: 200,
            headers: vec![
                ("Content-Type", stats::METRICS_CONTENT_TYPE.into()),
                ("Cache-Control", "no-cache".into()),
            ],
            body: Cow::Owned(body.into_bytes()),
        }
    }

    pub(super) fn stats_json(&self) -> String {
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
            "{{\"connections\":{},\"websockets\":{websockets},\"rooms\":{{{rooms}}},\"messages_in\":{},\"bytes_in\":{},\"messages_out\":{},\"bytes_out\":{},\"children\":{},\"uptime_s\":{},\
             \"slow_closed\":{},\"dropped\":{},\"ping_timeouts\":{},\"send_timeouts\":{},\"accept_errors\":{},\"console_dropped\":{},\"refused\":{},\"closes\":{}}}",
            self.clients.len(),
            s.messages_in,
            s.bytes_in,
            s.messages_out,
            s.bytes_out,
            self.children,
            self.started.elapsed().as_secs(),
            s.slow_closed,
            s.slow_dropped,
            s.ping_timeouts,
            s.send_timeouts,
            s.accept_errors,
            s.console_dropped,
            stats::json_counts(&s.refused),
            stats::json_counts(&s.closes),
        )
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
        response.write_to(state.out.buf(), head_only, keep_alive);
        state.out.commit();
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
        handshake::write_refusal(state.out.buf(), e);
        state.out.commit();
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
            client.socket.write(&self.scratch).unwrap_or_default()
        } else {
            0
        };
        if sent < self.scratch.len() {
            conn.out.push(&self.scratch[sent..]);
        }
        debug!(
            "{}: WebSocket open on {} ({:?}, deflate {:?})",
            client.peer, head.target, accepted.protocol, deflate
        );
        client.phase = Phase::WebSocket(Box::new(WebSocket {
            conn,
            route: route.clone(),
            large: false,
            program,
            stdout_held: false,
        }));
        self.queue_flush(key);
        if let Route::Room(name) = &route {
            let n = self.rooms.join(name, key);
            if self.config.room_events {
                self.room_event("join", name, n);
            }
        }
        true
    }
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
