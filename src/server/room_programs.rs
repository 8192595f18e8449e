//! A program per room (`--room-exec NAME=PATH`): started with the room's first member, ended
//! `--room-exec-grace` after its last (then the `--exec` ending: stdin closed, SIGTERM, SIGKILL);
//! its stdout lines go to every member as one fan-out each, each member's message is a line on
//! its stdin. A program that exits while members remain closes them (1000 after a zero exit
//! status, 1011 otherwise), as `--exec` closes its one client: restarting could replay a
//! program's start-up output into a conversation that already had it.
//!
//! With `--workers N`, a room's program runs on one worker only, its owner ([`owner_of`]),
//! while the room has members on any worker (its own, or those its replica knows of from
//! `Joined`/`Left` notes). Members' messages on the other workers reach it as `RoomInput`
//! notes; its lines reach them as room messages; its end closes members everywhere.

use std::collections::HashMap;

use super::workers::{Hub, Note};
use super::*;
use crate::config::RoomExec;

/// Set in the tokens of room programs' pipes: a client's token is its slab key shifted by
/// [`TOKEN_SHIFT`], far below this bit, and the loop's own tokens sit at the top of the range,
/// above the pipe tokens a slot could make.
pub(super) const ROOM_PROGRAM: usize = 1 << (usize::BITS - 2);

/// How soon a room program's stdout is read again when it was held for lack of room in
/// other workers' inboxes (they drain theirs whole each turn, so this is short).
const INBOX_RETRY: Duration = Duration::from_millis(1);

/// The room programs running, by slot (their pipes' tokens) and by room.
#[derive(Default)]
pub(super) struct RoomPrograms {
    running: Slab<RoomProgram>,
    by_room: HashMap<Rc<str>, usize>,
    /// Lines read from a stdout, delivered once reading is done (the program is borrowed while
    /// it is read): the bytes, and where each line ends. Kept, so reading does not allocate.
    lines: Vec<u8>,
    ends: Vec<usize>,
    /// Scratch list of a room's members to resume.
    members: Vec<usize>,
    /// With `--workers N > 1` and `--room-exec`: where the programs of rooms owned by other
    /// workers run.
    owners: Option<Owners>,
}

/// The configured rooms whose program another worker runs, so that a member's message here
/// can be handed to it.
struct Owners {
    hub: Arc<Hub>,
    /// Room → (the name notes carry, its owner), for rooms this worker does not own.
    elsewhere: HashMap<Box<str>, (Arc<str>, usize)>,
}

/// The worker that runs `room`'s program: FNV-1a of the name, modulo the number of workers.
/// Every worker computes it alike with no coordination, and a hash spreads the programs (the
/// reading of their stdout and its fan-out) over the cores instead of piling them on worker
/// 0, which already carries signals, push and the console.
pub(super) fn owner_of(room: &str, workers: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in room.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % workers.max(1) as u64) as usize
}

/// How many workers programs are spread over: all of them, or with `--redis` only worker 0,
/// which holds the process's Redis link and so the rooms' leases (`server/cluster.rs`).
pub(super) fn owner_pool(config: &Config, workers: usize) -> usize {
    if config.redis.is_some() {
        1
    } else {
        workers
    }
}

struct RoomProgram {
    room: Rc<str>,
    program: Program,
    /// Stdout is left unread until some member has drained its backlog to half.
    stdout_held: bool,
    /// The room is empty: the program is ended at this time unless someone joins first.
    idle_until: Option<Instant>,
    /// Stdout was held because other workers' inboxes were too full for more lines: it is
    /// read again at this time.
    retry_at: Option<Instant>,
}

impl RoomPrograms {
    /// `--workers`: worker `me` learns which configured rooms others own (none with no
    /// `--room-exec`, so a message costs nothing more then).
    /// `pool`: see [`owner_pool`].
    pub(super) fn set_owners(
        &mut self,
        hub: &Arc<Hub>,
        me: usize,
        rooms: &[RoomExec],
        pool: usize,
    ) {
        let elsewhere: HashMap<Box<str>, (Arc<str>, usize)> = rooms
            .iter()
            .map(|r| (r.room.as_str(), owner_of(&r.room, pool)))
            .filter(|&(_, owner)| owner != me)
            .map(|(name, owner)| (name.into(), (name.into(), owner)))
            .collect();
        if !elsewhere.is_empty() {
            self.owners = Some(Owners {
                hub: hub.clone(),
                elsewhere,
            });
        }
    }

    /// The bytes a room's program has not taken on stdin yet (0 without a program).
    pub(super) fn stdin_backlog(&self, room: &str) -> usize {
        self.by_room
            .get(room)
            .map_or(0, |&slot| self.running[slot].program.stdin_backlog())
    }

    /// Whether `room`'s program runs here.
    pub(super) fn runs(&self, room: &str) -> bool {
        !self.by_room.is_empty() && self.by_room.contains_key(room)
    }

    /// A member's message: one line on the room program's stdin, if the room has one; if
    /// another worker owns it, a note to that worker. A full inbox drops the note (counted
    /// in its `inbox_dropped`): across workers the bound of the inbox, not the program's
    /// stdin backlog, is what holds members back.
    pub(super) fn send_line(&mut self, room: &str, line: &[u8]) {
        if self.by_room.is_empty() && self.owners.is_none() {
            // No room program at all (the common case): not even a hash per message.
            return;
        }
        let Some(&slot) = self.by_room.get(room) else {
            if let Some(Owners { hub, elsewhere }) = &self.owners {
                if let Some((name, owner)) = elsewhere.get(room) {
                    let note = Note::RoomInput {
                        room: name.clone(),
                        line: line.to_vec(),
                    };
                    if !hub.send(*owner, note) {
                        debug!("room {room}: inbox of worker {owner} full, a line for its program dropped");
                    }
                }
            }
            return;
        };
        let p = &mut self.running[slot].program;
        if let Err(e) = p.send_line(line) {
            debug!("room {room}: program pid {} stdin closed: {e}", p.pid());
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.running
            .iter()
            .flat_map(|(_, r)| [r.idle_until, r.retry_at])
            .flatten()
            .min()
    }
}

impl Server {
    /// An upgrade to `room`: its program keeps running, or is started if the room has one
    /// configured and none runs (refused with 503 over `--max-children`, 500 if it fails).
    /// With `--workers`, only the room's owner starts it; an upgrade on another worker is
    /// accepted at once (the owner learns of it from the `Joined` note, and if it cannot start
    /// the program, closes the members everywhere with 1011).
    pub(super) fn room_program_join(&mut self, room: &Rc<str>) -> Result<(), HandshakeError> {
        if let Some(&slot) = self.room_programs.by_room.get(room) {
            let r = &mut self.room_programs.running[slot];
            if r.idle_until.take().is_some() {
                info!(
                    "room {room}: a member is back, program pid {} kept",
                    r.program.pid()
                );
            }
            return Ok(());
        }
        if !self.config.room_exec.iter().any(|r| *r.room == **room) {
            return Ok(());
        }
        if !self.owns(room) {
            self.remind_owner(room);
            return Ok(());
        }
        if self.want_room_program(room) {
            // `--redis`: it starts here only if this node gets the room's lease.
            return Ok(());
        }
        self.start_room_program(room)
    }

    /// A member's message here for `room`'s program, if it has one: a line on its stdin here,
    /// a note to the worker that owns it, or (with `--redis`, the program running on another
    /// node) a publish on the room's input channel.
    pub(super) fn room_program_input(&mut self, room: &str, frame: &[u8]) {
        if !self.config.room_exec.iter().any(|r| *r.room == *room) {
            return;
        }
        let (kind, payload) = workers::frame_message(frame);
        // With `--redis` only the owner (worker 0) holds the link.
        if self.cluster.is_some() && !self.room_programs.runs(room) {
            self.redis_program_input(room, kind, payload);
            return;
        }
        self.room_programs.send_line(room, payload);
    }

    /// A member joins `room` here, another worker owns its program. The first member's
    /// `Joined` (from `room_opened`) tells the owner; a later one repeats it, so that a room
    /// whose program ended while members here were still closing gets a new one.
    fn remind_owner(&self, room: &str) {
        let Some(seat) = &self.seat else { return };
        if self.rooms.members(room).is_empty() {
            return;
        }
        let note = Note::Joined {
            room: room.into(),
            worker: seat.me,
        };
        let pool = owner_pool(&self.config, seat.hub.workers());
        seat.hub.send(owner_of(room, pool), note);
    }

    /// This worker runs `room`'s program (always with one worker).
    fn owns(&self, room: &str) -> bool {
        self.seat
            .as_ref()
            .is_none_or(|s| owner_of(room, owner_pool(&self.config, s.hub.workers())) == s.me)
    }

    /// Other workers have members of `room` (as far as this one's replica knows).
    fn members_elsewhere(&self, room: &str) -> bool {
        self.seat
            .as_ref()
            .is_some_and(|s| s.remote.contains_key(room))
    }

    /// Another worker got its first member of `room`: the owner keeps its program (out of
    /// its grace period) or starts it. If that fails, every member is closed with 1011,
    /// since the upgrades were accepted already on the other workers.
    pub(super) fn room_program_joined_elsewhere(&mut self, room: &Arc<str>) {
        if self.config.room_exec.is_empty() {
            return;
        }
        if let Some(&slot) = self.room_programs.by_room.get(&**room) {
            let r = &mut self.room_programs.running[slot];
            if r.idle_until.take().is_some() {
                info!(
                    "room {room}: a member is back on another worker, program pid {} kept",
                    r.program.pid()
                );
            }
            return;
        }
        if !self.config.room_exec.iter().any(|r| *r.room == **room) || !self.owns(room) {
            return;
        }
        if self.want_room_program(room) {
            // `--redis`: it starts here only if this node gets the room's lease.
            return;
        }
        if let Err(e) = self.start_room_program(&Rc::from(&**room)) {
            let reason = match e {
                HandshakeError::Unavailable => "room program limit reached",
                _ => "room program cannot start",
            };
            warn!("room {room}: {reason}; closing its members on every worker");
            self.close_room_members(room, close_code::INTERNAL, reason);
            self.room_ended_elsewhere(room, close_code::INTERNAL, reason);
        }
    }

    /// A member's message from another worker, for the program of `room` here. Members
    /// elsewhere cannot be paused from here, so while the program's unread stdin is over
    /// `--max-backlog` their lines are dropped and counted (`inbox_dropped`): memory stays
    /// bounded when a program stops reading.
    pub(super) fn room_input_from_elsewhere(&mut self, room: &str, line: &[u8]) {
        if self.room_programs.stdin_backlog(room) > self.config.max_backlog {
            if let Some(seat) = &self.seat {
                seat.hub.count_dropped(seat.me);
            }
            debug!("room {room}: program stdin over the limit, a line from another worker dropped");
            return;
        }
        if self.cluster.is_some() && !self.room_programs.runs(room) {
            // `--redis`: the program runs on the node holding the room's lease.
            self.redis_program_input(room, MessageKind::Binary, line);
            return;
        }
        self.room_programs.send_line(room, line);
    }

    /// Another worker's last member of `room` left: if none remain anywhere, the program's
    /// grace period begins.
    pub(super) fn room_program_left_elsewhere(&mut self, room: &str) {
        if self.room_programs.by_room.is_empty() && self.cluster.is_none() {
            return;
        }
        let left = self.rooms.members(room).len();
        self.room_program_left(room, left);
    }

    /// Starts `room`'s configured program (with `--redis`: once this node holds the lease).
    pub(super) fn start_room_program(&mut self, room: &Rc<str>) -> Result<(), HandshakeError> {
        let Some(spec) = self.config.room_exec.iter().find(|r| *r.room == **room) else {
            return Ok(());
        };
        if self.children >= self.config.max_children {
            info!(
                "room {room}: {} programs running (limit {}), upgrade refused",
                self.children, self.config.max_children
            );
            return Err(HandshakeError::Unavailable);
        }
        let path = spec.path.clone();
        let args: Vec<&str> = self
            .config
            .room_exec_args
            .iter()
            .filter(|(r, _)| **r == **room)
            .map(|(_, a)| a.as_str())
            .collect();
        let env = vec![
            ("WSLOOP_ROOM".to_string(), room.to_string()),
            (
                "SERVER_SOFTWARE".to_string(),
                concat!("wsloop/", env!("CARGO_PKG_VERSION")).to_string(),
            ),
            (
                "SERVER_PORT".to_string(),
                self.local_addr.port().to_string(),
            ),
        ];
        let mut program = Program::spawn_with_env(&path, &args, env).map_err(|e| {
            warn!("room {room}: cannot start {}: {e}", path.display());
            HandshakeError::ProgramFailed
        })?;
        self.children += 1;
        let slot = self.room_programs.running.vacant_key();
        let base = ROOM_PROGRAM | (slot << TOKEN_SHIFT);
        if let Err(e) = program.register(self.poll.registry(), base) {
            warn!(
                "room {room}: cannot poll the pipes of pid {}: {e}",
                program.pid()
            );
            self.endings
                .push(program.detach(Instant::now(), Duration::ZERO));
            return Err(HandshakeError::ProgramFailed);
        }
        info!("room {room}: program pid {} started", program.pid());
        self.room_programs.running.insert(RoomProgram {
            room: room.clone(),
            program,
            stdout_held: false,
            idle_until: None,
            retry_at: None,
        });
        self.room_programs.by_room.insert(room.clone(), slot);
        Ok(())
    }

    /// A member left `room`, `left` remain: with none left, the program's grace period begins.
    /// With `--workers`, "none left" means on every worker.
    pub(super) fn room_program_left(&mut self, room: &str, left: usize) {
        if left > 0
            || (self.room_programs.by_room.is_empty() && self.cluster.is_none())
            || self.members_elsewhere(room)
        {
            return;
        }
        let Some(&slot) = self.room_programs.by_room.get(room) else {
            // `--redis`: it runs elsewhere, or this node was still asking for its lease.
            if self.config.room_exec.iter().any(|r| *r.room == *room) {
                self.unwant_room_program(room);
            }
            return;
        };
        let r = &mut self.room_programs.running[slot];
        r.idle_until = Some(self.now + self.config.room_exec_grace);
        debug!(
            "room {room}: empty, program pid {} ends in {:?} unless someone joins",
            r.program.pid(),
            self.config.room_exec_grace
        );
    }

    /// The bytes the program of `key`'s room has not taken on stdin (0 for other routes).
    pub(super) fn room_stdin_backlog(&self, key: usize) -> usize {
        if self.room_programs.running.is_empty() {
            return 0;
        }
        match self.clients.get(key).map(|c| &c.phase) {
            Some(Phase::WebSocket(ws)) => match &ws.route {
                Route::Room(name) => self.room_programs.stdin_backlog(name),
                _ => 0,
            },
            _ => 0,
        }
    }

    /// The earliest end of a room program's grace period.
    pub(super) fn room_programs_deadline(&self) -> Option<Instant> {
        self.room_programs.next_deadline()
    }

    /// Programs of rooms empty for their whole grace period are ended (the `--exec` way).
    /// Held stdouts whose retry is due are read again.
    pub(super) fn room_programs_due(&mut self, now: Instant) {
        let retry: Vec<usize> = self
            .room_programs
            .running
            .iter()
            .filter(|(_, r)| r.retry_at.is_some_and(|at| now >= at))
            .map(|(slot, _)| slot)
            .collect();
        for slot in retry {
            let r = &mut self.room_programs.running[slot];
            r.retry_at = None;
            r.stdout_held = false;
            self.read_room_program(slot);
            self.room_program_progress(slot);
        }
        let due: Vec<usize> = self
            .room_programs
            .running
            .iter()
            .filter(|(_, r)| r.idle_until.is_some_and(|at| now >= at))
            .map(|(slot, _)| slot)
            .collect();
        for slot in due {
            let r = self.room_programs.running.remove(slot);
            self.room_programs.by_room.remove(&r.room);
            info!(
                "room {}: empty for {:?}, program pid {}: stdin closed",
                r.room,
                self.config.room_exec_grace,
                r.program.pid()
            );
            self.endings
                .push(r.program.detach(now, self.config.exec_grace));
            self.unwant_room_program(&r.room);
        }
    }

    /// Ends `room`'s program at once, SIGKILL without a grace period (with `--redis`: the lease
    /// is lost, and another node may start the program as soon as it runs out in Redis).
    pub(super) fn kill_room_program(&mut self, room: &str) {
        let Some(slot) = self.room_programs.by_room.remove(room) else {
            return;
        };
        let r = self.room_programs.running.remove(slot);
        info!("room {room}: program pid {} killed", r.program.pid());
        let mut ending = r.program.detach(self.now, Duration::ZERO);
        if ending.tick(self.now) {
            self.children -= 1;
        } else {
            self.endings.push(ending);
        }
    }

    /// A room program's pipe is ready.
    pub(super) fn on_room_program_pipe(&mut self, slot: usize, pipe: usize) {
        match pipe {
            exec::STDOUT => self.read_room_program(slot),
            exec::STDERR => {
                let mut buf = mem::take(&mut self.rbuf);
                if let Some(r) = self.room_programs.running.get_mut(slot) {
                    let (room, pid) = (&r.room, r.program.pid());
                    r.program.read_stderr(&mut buf, &mut |line| {
                        info!(
                            "room {room}: program pid {pid} stderr: {}",
                            String::from_utf8_lossy(line)
                        )
                    });
                }
                self.rbuf = buf;
            }
            _ => {
                let Some(r) = self.room_programs.running.get_mut(slot) else {
                    return;
                };
                let _ = r.program.flush_stdin();
                // The program took some of its input: members paused for it may be read again.
                let mut members = mem::take(&mut self.room_programs.members);
                members.clear();
                members.extend_from_slice(self.rooms.members(&r.room));
                for &key in &members {
                    self.maybe_resume(key);
                }
                self.room_programs.members = members;
            }
        }
        self.room_program_progress(slot);
    }

    /// Reads the program's stdout, no more than some member has room for, and sends each line
    /// to every member: one fan-out, encoded once, compressed once per window. Members that
    /// are behind meet the slow-consumer policy; when all are, the pipe is left unread (the
    /// program blocks on it) until one drains to half. With `--workers`, no more bytes than
    /// the fullest inbox of the workers with members has free places (a line takes at least
    /// one byte and one place), so that no line is dropped on the way; held for that, the
    /// pipe is read again [`INBOX_RETRY`] later.
    fn read_room_program(&mut self, slot: usize) {
        let RoomPrograms {
            running,
            lines,
            ends,
            ..
        } = &mut self.room_programs;
        let Some(r) = running.get_mut(slot) else {
            return;
        };
        let least = self
            .rooms
            .members(&r.room)
            .iter()
            .filter_map(|&m| self.clients.get(m))
            .map(Client::backlog)
            .min()
            .unwrap_or(0);
        // Half: a line of n bytes and its newline become a frame of at most n + 1 bytes plus a
        // header of 1 to 9 bytes more than the newline, so at most twice what was read.
        let room = self.config.max_backlog.saturating_sub(least) / 2;
        let inboxes = self
            .seat
            .as_ref()
            .and_then(|s| s.remote.get(&*r.room).map(|&mask| s.hub.space(mask)));
        let by_inboxes = inboxes.is_some_and(|space| space < room);
        let room = inboxes.map_or(room, |space| space.min(room));
        let mut buf = mem::take(&mut self.rbuf);
        lines.clear();
        ends.clear();
        let read = r.program.read_stdout(&mut buf, room, &mut |line| {
            lines.extend_from_slice(line);
            ends.push(lines.len());
        });
        self.rbuf = buf;
        if read == Pipe::Unread && !r.stdout_held && !by_inboxes {
            debug!(
                "room {}: every member is behind, program pid {} stdout paused",
                r.room,
                r.program.pid()
            );
        }
        r.stdout_held = read == Pipe::Unread;
        if r.stdout_held && by_inboxes {
            r.retry_at = Some(self.now + INBOX_RETRY);
        }
        let name = r.room.clone();
        let lines = mem::take(&mut self.room_programs.lines);
        let ends = mem::take(&mut self.room_programs.ends);
        let mut start = 0;
        for &end in &ends {
            let text = String::from_utf8_lossy(&lines[start..end]);
            start = end;
            let frame = shared_frame(&mut self.scratch, MessageKind::Text, text.as_bytes());
            let mut message = Broadcast::new(frame);
            self.deliver_message(&name, None, &mut message);
            // The same frame to the other workers with members and, with `--redis`, to the
            // other nodes (one publish, as for a member's message).
            self.room_delivered(&name, message.plain(), true);
        }
        self.room_programs.lines = lines;
        self.room_programs.ends = ends;
    }

    /// A member of `key`'s room drained its backlog: a held stdout is read again (now, as
    /// the pipe, already full, raises no new event).
    pub(super) fn maybe_resume_room_program(&mut self, key: usize) {
        if self.room_programs.running.is_empty() {
            return;
        }
        let Some(client) = self.clients.get(key) else {
            return;
        };
        let Phase::WebSocket(ws) = &client.phase else {
            return;
        };
        let Route::Room(name) = &ws.route else {
            return;
        };
        let Some(&slot) = self.room_programs.by_room.get(name) else {
            return;
        };
        if !self.room_programs.running[slot].stdout_held
            || ws.conn.out.len() > self.config.max_backlog / 2
        {
            return;
        }
        self.room_programs.running[slot].stdout_held = false;
        debug!("room {name}: program stdout resumed");
        self.read_room_program(slot);
        self.room_program_progress(slot);
    }

    /// Once a room program's stdout is closed and it has exited, its members are closed:
    /// 1000 after a zero exit status, 1011 otherwise (after every line it wrote).
    fn room_program_progress(&mut self, slot: usize) {
        let Some(r) = self.room_programs.running.get_mut(slot) else {
            return;
        };
        if r.program.stdout_open() {
            return;
        }
        let Some(status) = r.program.try_reap() else {
            return;
        };
        let (room, pid) = (r.room.clone(), r.program.pid());
        let mut buf = [0u8; 4096];
        r.program.read_stderr(&mut buf, &mut |line| {
            info!(
                "room {room}: program pid {pid} stderr: {}",
                String::from_utf8_lossy(line)
            )
        });
        self.room_programs.running.remove(slot);
        self.room_programs.by_room.remove(&room);
        self.children -= 1;
        let (code, reason) = if status.success() {
            (close_code::NORMAL, "room program exited".to_string())
        } else {
            (close_code::INTERNAL, format!("room program {status}"))
        };
        let members = self.rooms.members(&room).len();
        info!("room {room}: program pid {pid} {status}; closing its {members} members");
        self.close_room_members(&room, code, &reason);
        self.room_ended_elsewhere(&room, code, &reason);
    }

    /// Closes this worker's members of `room` with `code` (the room's program ended).
    pub(super) fn close_room_members(&mut self, room: &str, code: u16, reason: &str) {
        let mut keys = mem::take(&mut self.room_programs.members);
        keys.clear();
        keys.extend_from_slice(self.rooms.members(room));
        for &key in &keys {
            if let Some(Phase::WebSocket(ws)) = self.clients.get_mut(key).map(|c| &mut c.phase) {
                ws.conn.close(code, reason, self.now);
            }
            self.queue_flush(key);
        }
        self.room_programs.members = keys;
    }

    /// `--workers`: the members of `room` on the other workers are closed too (a control
    /// note, never dropped). A member that joins another worker in the instant between the
    /// exit and the note's arrival is closed with the others.
    fn room_ended_elsewhere(&mut self, room: &str, code: u16, reason: &str) {
        let Some(seat) = &self.seat else { return };
        let Some((name, &mask)) = seat.remote.get_key_value(room) else {
            return;
        };
        let reason: Arc<str> = reason.into();
        let mut bits = mask;
        while bits != 0 {
            let worker = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            seat.hub.send(
                worker,
                Note::RoomEnded {
                    room: name.clone(),
                    code,
                    reason: reason.clone(),
                },
            );
        }
    }

    /// SIGCHLD: see which room programs have exited.
    pub(super) fn reap_room_programs(&mut self) {
        let slots: Vec<usize> = self.room_programs.running.iter().map(|(s, _)| s).collect();
        for slot in slots {
            self.room_program_progress(slot);
        }
    }

    /// On the way out: no room program outlives the server.
    pub(super) fn stop_room_programs(&mut self) {
        let rooms: Vec<Rc<str>> = self.room_programs.by_room.keys().cloned().collect();
        for room in rooms {
            self.kill_room_program(&room);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    #[test]
    fn owners_are_fnv1a_of_the_name_and_spread_over_the_workers() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c (the published test vector).
        assert_eq!(owner_of("a", 1 << 20), 0xaf63dc4c8601ec8c % (1 << 20));
        assert_eq!(owner_of("anything", 1), 0);
        let mut per = [0; 4];
        for i in 0..400 {
            per[owner_of(&format!("room{i}"), 4)] += 1;
        }
        assert!(per.iter().all(|&n| n > 50), "{per:?}");
    }

    #[test]
    fn a_line_for_a_room_owned_elsewhere_goes_to_its_owner_and_a_full_inbox_drops_it() {
        let hub = Arc::new(Hub::new(4, 2));
        let rooms: Vec<RoomExec> = (0..40)
            .map(|i| RoomExec {
                room: format!("r{i}"),
                path: "/bin/cat".into(),
            })
            .collect();
        let me = 1;
        let mut programs = RoomPrograms::default();
        programs.set_owners(&hub, me, &rooms, 4);
        let theirs = rooms
            .iter()
            .find(|r| owner_of(&r.room, 4) != me)
            .unwrap()
            .room
            .clone();
        let mine = rooms
            .iter()
            .find(|r| owner_of(&r.room, 4) == me)
            .unwrap()
            .room
            .clone();
        let owner = owner_of(&theirs, 4);
        // A room this worker owns (no program running) and one not configured: no note.
        programs.send_line(&mine, b"x");
        programs.send_line("plain", b"x");
        for line in [&b"one"[..], b"two", b"three"] {
            programs.send_line(&theirs, line);
        }
        let mut got = VecDeque::new();
        hub.take(owner, &mut got);
        let lines: Vec<(String, Vec<u8>)> = got
            .drain(..)
            .map(|n| match n {
                Note::RoomInput { room, line } => (room.to_string(), line),
                _ => panic!("not a RoomInput"),
            })
            .collect();
        assert_eq!(
            lines,
            [(theirs.clone(), b"one".to_vec()), (theirs, b"two".to_vec())]
        );
        assert_eq!(hub.dropped(owner), 1);
        for w in (0..4).filter(|&w| w != owner) {
            hub.take(w, &mut got);
            assert!(got.is_empty(), "worker {w} got a note");
        }
    }
}
