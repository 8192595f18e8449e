//! A program per connection (`--exec`): starting it, its pipes, and ending and reaping it.

use super::*;

impl Server {
    /// Starts the connection's program, with the request in its environment.
    pub(super) fn start_program(
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
            remote: Some(self.clients[key].peer.addr()),
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

    /// A program's pipe is ready: its output becomes messages, its errors log lines.
    pub(super) fn on_program_pipe(&mut self, key: usize, pipe: usize) {
        let mut buf = mem::take(&mut self.rbuf);
        if let Some(client) = self.clients.get_mut(key) {
            let peer = client.peer;
            if let Phase::WebSocket(ws) = &mut client.phase {
                let WebSocket {
                    conn,
                    program,
                    stdout_held,
                    ..
                } = ws;
                if let Some(p) = program {
                    match pipe {
                        exec::STDOUT => {
                            let mut sent = 0u64;
                            let mut bytes = 0u64;
                            // Read no more than the client has room for (see `maybe_resume`).
                            let room = self.config.max_backlog.saturating_sub(conn.out.len());
                            let read = p.read_stdout(&mut buf, room, &mut |line| {
                                let text = String::from_utf8_lossy(line);
                                sent += conn.send(MessageKind::Text, text.as_bytes()) as u64;
                                bytes += text.len() as u64;
                            });
                            if read == Pipe::Unread && !*stdout_held {
                                debug!(
                                    "{peer}: exec pid {}: {} bytes unsent, stdout paused",
                                    p.pid(),
                                    conn.out.len()
                                );
                            }
                            *stdout_held = read == Pipe::Unread;
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
        if pipe == exec::STDIN {
            // The program took some of its input: its client may be read again.
            self.maybe_resume(key);
        }
        self.program_progress(key);
    }

    /// A program's stdout left unread for a slow client is read again once the client has
    /// drained to half; it is read now, as the pipe, already full, raises no new event.
    pub(super) fn maybe_resume_program(&mut self, key: usize) {
        let half = self.config.max_backlog / 2;
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        let Phase::WebSocket(ws) = &mut client.phase else {
            return;
        };
        if !ws.stdout_held || ws.conn.out.len() > half {
            return;
        }
        ws.stdout_held = false;
        debug!("{}: exec stdout resumed", client.peer);
        self.on_program_pipe(key, exec::STDOUT);
    }

    /// Once a program's stdout is closed and it has exited, its connection closes: 1000 for a
    /// zero exit status, 1011 otherwise (after every line it wrote has been queued).
    pub(super) fn program_progress(&mut self, key: usize) {
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
        ws.conn.close(code, &reason, self.now);
        self.children -= 1;
        self.queue_flush(key);
    }

    /// SIGCHLD: see which programs have exited.
    pub(super) fn reap(&mut self) {
        let keys: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| matches!(&c.phase, Phase::WebSocket(ws) if ws.program.is_some()))
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            self.program_progress(key);
        }
        self.reap_room_programs();
        self.tick_endings(Instant::now());
    }

    pub(super) fn tick_endings(&mut self, now: Instant) {
        let before = self.endings.len();
        self.endings.retain_mut(|e| !e.tick(now));
        self.children -= before - self.endings.len();
    }

    /// On the way out: no program outlives the server.
    pub(super) fn stop_programs(&mut self) {
        let keys: Vec<usize> = self.clients.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.end(key);
        }
        self.stop_room_programs();
        for e in &mut self.endings {
            e.kill_now();
        }
        self.endings.clear();
    }
}
