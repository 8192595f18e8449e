//! Where WebSocket messages go: echo, rooms, server push and the operator console.

use super::*;

impl Server {
    /// Feeds a WebSocket connection and acts on its events.
    pub(super) fn ws_input(&mut self, key: usize, data: &mut [u8]) {
        if !data.is_empty() {
            self.ws_feed(key, Input::Bytes(data));
        }
    }

    /// `n` payload bytes were read straight into the connection's own buffer.
    pub(super) fn ws_appended(&mut self, key: usize, n: usize) {
        self.ws_feed(key, Input::Appended(n));
    }

    fn ws_feed(&mut self, key: usize, input: Input<'_>) {
        let Server {
            clients,
            stats,
            to_room,
            scratch,
            config,
            now,
            console_out,
            deflate,
            ..
        } = self;
        let now = *now;
        let deflate = deflate.as_deref();
        let client = &mut clients[key];
        let Phase::WebSocket(ws) = &mut client.phase else {
            return;
        };
        let WebSocket {
            conn,
            route,
            large,
            program,
            ..
        } = ws;
        let peer = client.peer;
        let room_echo = config.room_echo;
        let mut on = |c: &mut Connection, e: Event<'_>| match e {
            Event::Message(kind, payload) => {
                *large = payload.len() >= DIRECT_READ_MIN;
                stats.messages_in += 1;
                stats.bytes_in += payload.len() as u64;
                if let Some(out) = console_out.as_mut() {
                    let text = kind == MessageKind::Text;
                    if !out.message(&peer.addr(), route.label(), text, &payload) {
                        stats.console_dropped += 1;
                    }
                }
                match route {
                    Route::Echo => {
                        stats.messages_out += 1;
                        stats.bytes_out += payload.len() as u64;
                        c.send_payload(kind, payload);
                    }
                    Route::Room(_) => {
                        let mut message = Broadcast::new(shared_frame(scratch, kind, &payload));
                        if room_echo {
                            message.send(c, deflate, scratch);
                        }
                        to_room.push(message);
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
            other => log_event(peer.addr(), &other),
        };
        match input {
            Input::Bytes(data) => conn.receive(data, now, &mut on),
            Input::Appended(n) => conn.payload_appended(n, now, &mut on),
        }
        let after = conn.state();
        let pending = !conn.out.is_empty();
        if self
            .console_out
            .as_ref()
            .is_some_and(|o| !o.is_empty() && !o.blocked)
        {
            self.flush_console();
        }
        if pending || after == State::Closed {
            self.queue_flush(key);
        }
        if !self.to_room.is_empty() {
            let mut frames = mem::take(&mut self.to_room);
            if let Some(Route::Room(name)) = self.route_of(key) {
                for message in &mut frames {
                    self.deliver_message(&name, Some(key), message);
                    self.room_delivered(&name, message.plain(), true);
                    // Only now, so that no member hears the program's answer before the
                    // message itself (the answer may come back through another worker).
                    if !self.config.room_exec.is_empty() {
                        self.room_program_input(&name, message.plain());
                    }
                }
            }
            frames.clear();
            self.to_room = frames;
        }
    }

    /// A connection's route; a room's name is shared, so this costs no allocation.
    fn route_of(&self, key: usize) -> Option<Route> {
        match &self.clients.get(key)?.phase {
            Phase::WebSocket(ws) => Some(ws.route.clone()),
            _ => None,
        }
    }

    /// Queues a shared frame for every open member of a room but `except`; returns how many.
    pub(super) fn deliver(
        &mut self,
        room: &str,
        except: Option<usize>,
        frame: &SharedFrame,
    ) -> usize {
        self.deliver_message(room, except, &mut Broadcast::new(frame.clone()))
    }

    /// Queues a message for every open member of a room but `except`, compressed once per
    /// window size for those that agreed on deflate; returns how many.
    pub(super) fn deliver_message(
        &mut self,
        room: &str,
        except: Option<usize>,
        message: &mut Broadcast,
    ) -> usize {
        let Server {
            rooms,
            clients,
            to_flush,
            stats,
            config,
            now,
            deflate,
            scratch,
            ..
        } = self;
        let fan = FanOut::of(config, *now, deflate.as_deref());
        let (mut n, mut bytes) = (0, 0);
        for &member in rooms.members(room) {
            if Some(member) == except {
                continue;
            }
            if let Some(client) = clients.get_mut(member) {
                if let Some(sent) = send_to(client, member, to_flush, message, scratch, fan, stats)
                {
                    n += 1;
                    bytes += sent;
                }
            }
        }
        stats.messages_out += n as u64;
        stats.bytes_out += bytes as u64;
        n
    }

    /// Queues a shared frame for every open WebSocket; returns how many.
    pub(super) fn deliver_to_all(&mut self, frame: &SharedFrame) -> usize {
        let Server {
            clients,
            to_flush,
            stats,
            config,
            now,
            deflate,
            scratch,
            ..
        } = self;
        let fan = FanOut::of(config, *now, deflate.as_deref());
        let mut message = Broadcast::new(frame.clone());
        let (mut n, mut bytes) = (0, 0);
        for (key, client) in clients.iter_mut() {
            if let Some(sent) = send_to(client, key, to_flush, &mut message, scratch, fan, stats) {
                n += 1;
                bytes += sent;
            }
        }
        stats.messages_out += n as u64;
        stats.bytes_out += bytes as u64;
        n
    }

    /// `--room-events`: tells a room's members who is there now.
    pub(super) fn room_event(&mut self, event: &str, room: &str, clients: usize) {
        let json = format!("{{\"event\":\"{event}\",\"room\":\"{room}\",\"clients\":{clients}}}");
        let frame = shared_frame(&mut self.scratch, MessageKind::Text, json.as_bytes());
        self.deliver(room, None, &frame);
    }

    /// Server push: one message, encoded once, to every open WebSocket (or one room's).
    pub(super) fn push(&mut self, now: Instant) {
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
            Some(room) => {
                let n = self.deliver(&room, None, &frame);
                self.room_delivered(&room, &frame, false);
                n
            }
            None => {
                self.everyone_delivered(&frame);
                self.deliver_to_all(&frame)
            }
        };
        debug!("push {}: {n} clients", self.pushes);
        // The next push keeps to the period; if the loop fell behind, it skips rather than bursts.
        let next = self.next_push.unwrap_or(now) + every;
        self.next_push = Some(if next <= now { now + every } else { next });
    }

    /// Console input: each line goes to everyone, or to one room (`@ROOM text`).
    pub(super) fn on_console(&mut self) {
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

    pub(super) fn console_line(&mut self, line: &str) {
        let (target, text) = console::parse_line(line);
        let frame = shared_frame(&mut self.scratch, MessageKind::Text, text.as_bytes());
        let n = match target {
            Target::Room(room) => {
                let n = self.deliver(room, None, &frame);
                self.room_delivered(room, &frame, false);
                n
            }
            Target::Everyone => {
                self.everyone_delivered(&frame);
                self.deliver_to_all(&frame)
            }
        };
        debug!("console: line sent to {n} clients");
    }

    /// Writes what stdout takes of the console's output; the rest waits for its next
    /// writable event.
    pub(super) fn flush_console(&mut self) {
        if !self.is_first() {
            return self.forward_console_output();
        }
        let Some(out) = self.console_out.as_mut() else {
            return;
        };
        if let Err(e) = out.flush_to(&mut console::RawStdout) {
            warn!("console: stdout unusable ({e}); no more output");
            self.console_out = None;
        }
    }

    /// On the way out: what stdout takes now is written, and stdin's and stdout's flags are
    /// put back for the terminal or pipe the server shares with others.
    pub(super) fn stop_console(&mut self) {
        self.flush_console();
        if let Some(flags) = self.stdio_flags.take() {
            debug!("console: stdin and stdout flags restored");
            flags.restore();
        }
    }

    pub(super) fn start_console(&mut self) {
        self.stdio_flags = Some(console::StdioFlags::save());
        self.start_console_output();
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
}

impl Server {
    /// Client messages go to stdout through a bounded queue, written as stdout takes it.
    fn start_console_output(&mut self) {
        let mut source = match console::Output::nonblocking_stdout() {
            Ok(s) => s,
            Err(e) => return warn!("console: stdout unusable: {e}"),
        };
        // A regular file or /dev/null cannot be polled, but never makes a write wait either.
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut source, CONSOLE_OUT, Interest::WRITABLE)
        {
            debug!("console: stdout is not pollable ({e}); written as it comes");
        }
        self.console_out = Some(console::Output::new(self.config.console_buffer));
    }
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

/// Bytes for a WebSocket connection: in the shared read buffer, or already appended to its
/// own payload buffer by a direct read.
enum Input<'a> {
    Bytes(&'a mut [u8]),
    Appended(usize),
}
