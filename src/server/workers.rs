//! `--workers N`: N event loops, one thread each, with their own `Poll`, slab and listener on
//! the same port (`SO_REUSEPORT`). Nothing on a loop's hot path is shared; what crosses threads
//! goes through the [`Hub`]: one bounded inbox per worker, drained whole once per wake-up.
//!
//! Rooms span workers: each worker keeps a replica of which *other* workers have members of
//! a room (learned from `Joined`/`Left` notes), and hands a room message, encoded once, only
//! to those. Within a worker a frame stays an `Rc` (no atomic per receiver, so one worker is
//! exactly the one-thread server); only the note that crosses carries an `Arc` copy of it. Worker 0 owns the signal pipe, the push timer and the console, and forwards what
//! they produce. With one worker there is no hub at all: the loop is exactly the one-thread one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard, OnceLock};
use std::thread;

use super::stats::{Gauges, Stats};
use super::*;

/// The token of the waker other workers use to say "your inbox is no longer empty".
pub(super) const WAKER: Token = Token(usize::MAX - 4);

/// How often at most a busy worker publishes its counters for `/stats` and `/metrics`
/// answered by another worker (an idle one publishes once after its last turn).
const PUBLISH_EVERY: Duration = Duration::from_millis(50);

/// An encoded frame crossing threads: one copy per message, shared by every worker it goes to.
pub(super) type Frame = Arc<[u8]>;

/// What one worker hands another.
pub(super) enum Note {
    /// A room message from a member (or `/publish`, push, console) on another worker: its
    /// plain frame, already encoded; the receiver compresses it for its deflate members.
    Room {
        room: Arc<str>,
        frame: Frame,
        /// `--redis`: worker 0, which holds the process's link, publishes it to other nodes.
        publish: bool,
    },
    /// Push or console: a frame for every WebSocket.
    Everyone(Frame),
    /// The worker's first member of the room joined (its local count went 0 → 1).
    Joined {
        room: Arc<str>,
        worker: usize,
    },
    /// The worker's last member of the room left (1 → 0).
    Left {
        room: Arc<str>,
        worker: usize,
    },
    /// SIGINT/SIGTERM, SIGHUP, SIGCHLD, as received by worker 0.
    Stop,
    Hangup,
    Child,
    /// `--console`: lines of client messages for worker 0 to write to stdout, so that the
    /// workers' lines never interleave.
    Print(Vec<u8>),
    /// `--room-exec`: a member's message for the room's program, which runs on its owner
    /// (see `room_programs::owner_of`); one line on its stdin.
    RoomInput {
        room: Arc<str>,
        line: Vec<u8>,
    },
    /// The room's program exited (or could not be started by its owner): the receiver closes
    /// its members of the room with this code and reason.
    RoomEnded {
        room: Arc<str>,
        code: u16,
        reason: Arc<str>,
    },
}

impl Note {
    /// Messages may be dropped (and counted) when an inbox is full, like a slow consumer's.
    /// Control notes may not: a lost `Joined` would cut a worker off a room for good. They are
    /// bounded by what clients do (one per room per worker per join or leave of its first or
    /// last member), never by message traffic, and every inbox is drained whole each turn.
    fn droppable(&self) -> bool {
        matches!(
            self,
            Note::Room { .. } | Note::Everyone(_) | Note::Print(_) | Note::RoomInput { .. }
        )
    }
}

/// One worker's inbox.
struct Mailbox {
    queue: Mutex<VecDeque<Note>>,
    /// Set by the worker once its `Poll` exists; notes sent before are found at its start.
    waker: OnceLock<mio::Waker>,
    /// Message notes dropped because the inbox was full (`--worker-inbox`).
    dropped: AtomicU64,
}

/// What a worker last published about itself, read by whichever worker answers `/stats`.
#[derive(Default)]
pub(super) struct Snapshot {
    pub(super) stats: Stats,
    pub(super) gauges: Gauges,
    pub(super) connections: usize,
    /// WebSockets, open or closing.
    pub(super) websockets: usize,
    /// (room, local members) by name.
    pub(super) rooms: Vec<(String, usize)>,
    /// (room, other worker) pairs this worker knows have members.
    pub(super) replicas: usize,
    /// Worker 0 with `--redis`: the link's part of `/stats` and of `/metrics`.
    pub(super) redis_json: String,
    pub(super) redis_metrics: String,
}

/// The part of the server the workers share.
pub struct Hub {
    mailboxes: Box<[Mailbox]>,
    snapshots: Box<[Mutex<Snapshot>]>,
    capacity: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A worker that panicked while holding a lock takes the process down anyway (see
    // `supervise`); the data it guarded is still a valid queue or snapshot.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    pub fn new(workers: usize, capacity: usize) -> Hub {
        Hub {
            mailboxes: (0..workers)
                .map(|_| Mailbox {
                    queue: Mutex::new(VecDeque::new()),
                    waker: OnceLock::new(),
                    dropped: AtomicU64::new(0),
                })
                .collect(),
            snapshots: (0..workers).map(|_| Mutex::default()).collect(),
            capacity,
        }
    }

    pub fn workers(&self) -> usize {
        self.mailboxes.len()
    }

    /// Queues a note for worker `to`, waking it only if its inbox was empty (a non-empty
    /// inbox has a wake-up pending already). False if the note was dropped.
    pub(super) fn send(&self, to: usize, note: Note) -> bool {
        let mailbox = &self.mailboxes[to];
        let mut queue = lock(&mailbox.queue);
        if queue.len() >= self.capacity && note.droppable() {
            drop(queue);
            mailbox.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let was_empty = queue.is_empty();
        queue.push_back(note);
        drop(queue);
        if was_empty {
            if let Some(waker) = mailbox.waker.get() {
                if let Err(e) = waker.wake() {
                    warn!("worker {to}: wake-up failed: {e}");
                }
            }
        }
        true
    }

    /// The fewest free places among the inboxes of the workers in `mask` (a bit each).
    pub(super) fn space(&self, mask: u64) -> usize {
        let mut least = self.capacity;
        let mut bits = mask;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let queued = lock(&self.mailboxes[i].queue).len();
            least = least.min(self.capacity.saturating_sub(queued));
        }
        least
    }

    /// Takes every note waiting for `me` in one lock: the queue is swapped with `into`
    /// (empty, its capacity kept from last time), so a turn allocates nothing.
    pub(super) fn take(&self, me: usize, into: &mut VecDeque<Note>) {
        debug_assert!(into.is_empty());
        mem::swap(&mut *lock(&self.mailboxes[me].queue), into);
    }

    /// A message note worker `i` took but could not use (a line for a room program whose
    /// stdin is over `--max-backlog`): counted with the inbox drops.
    pub(super) fn count_dropped(&self, i: usize) {
        self.mailboxes[i].dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Message notes dropped for worker `i` because its inbox was full.
    pub(super) fn dropped(&self, i: usize) -> u64 {
        self.mailboxes[i].dropped.load(Ordering::Relaxed)
    }

    pub(super) fn snapshot(&self, i: usize) -> MutexGuard<'_, Snapshot> {
        lock(&self.snapshots[i])
    }
}

/// A worker's place in the hub: the `Server` field that is `None` with one worker.
pub(super) struct Seat {
    pub(super) hub: Arc<Hub>,
    pub(super) me: usize,
    /// Rooms with members on other workers: a bit per worker.
    pub(super) remote: std::collections::HashMap<Arc<str>, u64>,
    /// The inbox being worked through (swapped with the shared one).
    pub(super) notes: VecDeque<Note>,
    pub(super) publish_due: Option<Instant>,
}

impl Seat {
    /// Sends a note to every other worker.
    fn broadcast(&self, note: impl Fn() -> Note) {
        for i in (0..self.hub.workers()).filter(|&i| i != self.me) {
            self.hub.send(i, note());
        }
    }
}

impl Server {
    /// A worker's loop: `listener` is its own socket on the shared port.
    pub(super) fn worker(
        config: Config,
        listener: Listener,
        hub: Arc<Hub>,
        me: usize,
    ) -> io::Result<Server> {
        let mut server = Server::build(config, (listener, None))?;
        let waker = mio::Waker::new(server.poll.registry(), WAKER)?;
        let _ = hub.mailboxes[me].waker.set(waker);
        if me != 0 {
            // Worker 0 owns the push timer and the console; push reaches others as notes.
            server.next_push = None;
            // ... and the process's one Redis link (one SUBSCRIBE per room for all workers).
            server.cluster = None;
        }
        let pool = room_programs::owner_pool(&server.config, hub.workers());
        server
            .room_programs
            .set_owners(&hub, me, &server.config.room_exec, pool);
        server.seat = Some(Box::new(Seat {
            hub,
            me,
            remote: Default::default(),
            notes: VecDeque::new(),
            publish_due: None,
        }));
        Ok(server)
    }

    /// Worker 0, or the only loop: owns stdin, stdout, the push timer and the signal pipe.
    pub(super) fn is_first(&self) -> bool {
        self.seat.as_ref().is_none_or(|s| s.me == 0)
    }

    /// Hook: the first local member of `room` joined. Other workers start sending us its
    /// messages.
    pub(super) fn room_opened(&mut self, room: &str) {
        self.redis_join(room);
        if let Some(seat) = &self.seat {
            let (me, room): (usize, Arc<str>) = (seat.me, room.into());
            seat.broadcast(|| Note::Joined {
                room: room.clone(),
                worker: me,
            });
        }
    }

    /// Hook: the last local member of `room` left.
    pub(super) fn room_closed(&mut self, room: &str) {
        self.redis_leave(room);
        if let Some(seat) = &self.seat {
            let (me, room): (usize, Arc<str>) = (seat.me, room.into());
            seat.broadcast(|| Note::Left {
                room: room.clone(),
                worker: me,
            });
        }
    }

    /// Hook: a room message (from a member, `/publish`, push or console) was delivered to the
    /// local members; the same frame goes to the other workers that have members, and with
    /// `cross_nodes` (members' messages and `/publish`) to other nodes through Redis: directly
    /// from the worker that holds the link (worker 0), through worker 0 from the others.
    /// Returns how many workers it was handed to.
    pub(super) fn room_delivered(
        &mut self,
        room: &str,
        frame: &SharedFrame,
        cross_nodes: bool,
    ) -> usize {
        let publish = cross_nodes && self.config.redis.is_some();
        if publish && self.cluster.is_some() {
            let (kind, payload) = frame_message(frame);
            self.redis_publish(room, kind, payload);
        }
        let Some(seat) = &self.seat else {
            return 0;
        };
        // Worker 0 publishes for the others.
        let via_first = publish && seat.me != 0;
        let (name, mask) = match seat.remote.get_key_value(room) {
            Some((name, &mask)) => (name.clone(), mask),
            None if via_first => (Arc::from(room), 0),
            None => return 0,
        };
        let mask = if via_first { mask | 1 } else { mask };
        let frame: Frame = Arc::from(&frame[..]);
        let mut handed = 0;
        let mut bits = mask;
        while bits != 0 {
            let worker = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let note = Note::Room {
                room: name.clone(),
                frame: frame.clone(),
                publish: via_first && worker == 0,
            };
            if seat.hub.send(worker, note) {
                handed += 1;
            }
        }
        handed
    }

    /// Push or console to everyone: the other workers' clients too.
    pub(super) fn everyone_delivered(&mut self, frame: &SharedFrame) {
        if let Some(seat) = &self.seat {
            let frame: Frame = Arc::from(&frame[..]);
            seat.broadcast(|| Note::Everyone(frame.clone()));
        }
    }

    /// Worker 0 got a signal: the others get it too.
    pub(super) fn forward_signals(&self, stop: bool, hangup: bool, child: bool) {
        if let Some(seat) = &self.seat {
            if child {
                seat.broadcast(|| Note::Child);
            }
            if hangup {
                seat.broadcast(|| Note::Hangup);
            }
            if stop {
                seat.broadcast(|| Note::Stop);
            }
        }
    }

    /// `--console` on a worker other than 0: its clients' lines go to worker 0 to be written.
    pub(super) fn forward_console_output(&mut self) {
        let (Some(seat), Some(out)) = (&self.seat, self.console_out.as_mut()) else {
            return;
        };
        if seat.me == 0 || out.is_empty() {
            return;
        }
        let bytes = out.take_bytes();
        if !seat.hub.send(0, Note::Print(bytes)) {
            self.stats.console_dropped += 1;
        }
    }

    /// Our inbox is no longer empty: everything in it is handled now, in order.
    pub(super) fn on_notes(&mut self) {
        let Some(seat) = self.seat.as_mut() else {
            return;
        };
        let mut notes = mem::take(&mut seat.notes);
        seat.hub.take(seat.me, &mut notes);
        while let Some(note) = notes.pop_front() {
            match note {
                // The worker's own copy, so that its receivers share it without atomics.
                Note::Room {
                    room,
                    frame,
                    publish,
                } => {
                    self.deliver(&room, None, &Rc::from(&frame[..]));
                    if publish {
                        let (kind, payload) = frame_message(&frame);
                        self.redis_publish(&room, kind, payload);
                    }
                }
                Note::Everyone(frame) => {
                    self.deliver_to_all(&Rc::from(&frame[..]));
                }
                Note::Joined { room, worker } => {
                    // Worker 0 holds the Redis link: it subscribes for every worker's rooms.
                    self.redis_join(&room);
                    if let Some(seat) = self.seat.as_mut() {
                        *seat.remote.entry(room.clone()).or_insert(0) |= 1 << worker;
                    }
                    self.room_program_joined_elsewhere(&room);
                }
                Note::Left { room, worker } => {
                    self.redis_leave(&room);
                    if let Some(seat) = self.seat.as_mut() {
                        if let Some(mask) = seat.remote.get_mut(&room) {
                            *mask &= !(1 << worker);
                            if *mask == 0 {
                                seat.remote.remove(&room);
                            }
                        }
                    }
                    self.room_program_left_elsewhere(&room);
                }
                Note::RoomInput { room, line } => self.room_input_from_elsewhere(&room, &line),
                Note::RoomEnded { room, code, reason } => {
                    self.close_room_members(&room, code, &reason);
                }
                Note::Stop => self.on_stop_signal(),
                Note::Hangup => self.reload_tls("SIGHUP"),
                Note::Child => self.reap(),
                Note::Print(bytes) => {
                    if let Some(out) = self.console_out.as_mut() {
                        if !out.append(&bytes) {
                            self.stats.console_dropped += 1;
                        }
                    }
                    self.flush_console();
                }
            }
        }
        if let Some(seat) = self.seat.as_mut() {
            seat.notes = notes;
        }
    }

    /// End of a turn: counters are published at most every [`PUBLISH_EVERY`], and once more
    /// after the last busy turn (the deadline is part of [`Server::next_wakeup`]).
    pub(super) fn maybe_publish(&mut self, now: Instant) {
        let Some(seat) = &self.seat else { return };
        match seat.publish_due {
            Some(at) if now >= at => {
                self.publish_figures();
                if let Some(seat) = self.seat.as_mut() {
                    seat.publish_due = None;
                }
            }
            Some(_) => {}
            None => {
                if let Some(seat) = self.seat.as_mut() {
                    seat.publish_due = Some(now + PUBLISH_EVERY);
                }
            }
        }
    }

    pub(super) fn publish_due(&self) -> Option<Instant> {
        self.seat.as_ref().and_then(|s| s.publish_due)
    }

    /// Copies this worker's counters and gauges where other workers can read them; the
    /// copies reuse their buffers, so this allocates only when rooms are new.
    pub(super) fn publish_figures(&self) {
        let Some(seat) = &self.seat else { return };
        let gauges = self.gauges();
        let mut snap = seat.hub.snapshot(seat.me);
        snap.stats.clone_from(&self.stats);
        snap.gauges = gauges;
        snap.connections = self.clients.len();
        snap.websockets = self.websockets();
        snap.replicas = seat.remote.values().map(|m| m.count_ones() as usize).sum();
        if self.cluster.is_some() {
            snap.redis_json = self.redis_json();
            snap.redis_metrics.clear();
            self.redis_metrics(&mut snap.redis_metrics);
        }
        let mut i = 0;
        for (name, n) in self.rooms.sizes() {
            match snap.rooms.get_mut(i) {
                Some(slot) => {
                    slot.0.clear();
                    slot.0.push_str(name);
                    slot.1 = n;
                }
                None => snap.rooms.push((name.to_string(), n)),
            }
            i += 1;
        }
        snap.rooms.truncate(i);
    }

    /// What worker 0 last published about the Redis link (empty with one worker).
    pub(super) fn first_worker_redis(&self, part: impl Fn(&Snapshot) -> String) -> String {
        self.seat
            .as_ref()
            .map_or_else(String::new, |seat| part(&seat.hub.snapshot(0)))
    }

    /// This worker's own figures, fresh, in the form other workers publish theirs.
    fn own_snapshot(&self) -> Snapshot {
        Snapshot {
            stats: self.stats.clone(),
            gauges: self.gauges(),
            connections: self.clients.len(),
            websockets: self.websockets(),
            rooms: self
                .rooms
                .sizes()
                .map(|(n, s)| (n.to_string(), s))
                .collect(),
            replicas: self.seat.as_ref().map_or(0, |s| {
                s.remote.values().map(|m| m.count_ones() as usize).sum()
            }),
            ..Snapshot::default()
        }
    }

    /// Every worker's figures (ours fresh, the others' as last published) with the inbox
    /// drops of each; `None` with one worker.
    pub(super) fn all_workers(&self) -> Option<Vec<(Snapshot, u64)>> {
        let seat = self.seat.as_ref()?;
        let hub = &seat.hub;
        Some(
            (0..hub.workers())
                .map(|i| {
                    let snap = if i == seat.me {
                        self.own_snapshot()
                    } else {
                        let s = hub.snapshot(i);
                        Snapshot {
                            stats: s.stats.clone(),
                            gauges: s.gauges.clone(),
                            connections: s.connections,
                            websockets: s.websockets,
                            rooms: s.rooms.clone(),
                            replicas: s.replicas,
                            ..Snapshot::default()
                        }
                    };
                    (snap, hub.dropped(i))
                })
                .collect(),
        )
    }
}

/// How a worker ended, as its thread reports it to [`supervise`].
pub type WorkerEnd = Result<(), String>;

/// Starts `--workers N` loops on one port and waits for them. The first one binds the port
/// (port 0 picks one), the others bind the same port. A worker that fails or panics while the
/// others run takes the process down: its listener's accept queue would otherwise be lost
/// silently (the kernel keeps handing it connections).
pub fn run(config: Config) -> io::Result<()> {
    config.validate()?;
    let n = config.workers;
    if crate::activation::take()?.is_some() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--workers above 1 cannot share a socket passed by systemd (one accept queue); use --workers 1",
        ));
    }
    let crate::socket::BindAddr::Ip(ip) = config.bind else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--workers above 1 needs a TCP --bind",
        ));
    };
    let first = crate::socket::bind_reuse_port(SocketAddr::new(ip, config.port))?;
    let port = first.local_addr()?.port();
    let mut listeners = vec![first];
    for _ in 1..n {
        listeners.push(crate::socket::bind_reuse_port(SocketAddr::new(ip, port))?);
    }
    let hub = Arc::new(Hub::new(n, config.worker_inbox));
    let (ends, reports) = mpsc::channel();
    let mut threads = Vec::with_capacity(n);
    for (me, listener) in listeners.into_iter().enumerate() {
        let (config, hub, ends) = (config.clone(), hub.clone(), ends.clone());
        let thread = thread::Builder::new()
            .name(format!("worker-{me}"))
            .spawn(move || {
                let end = guarded(|| {
                    let mut server = Server::worker(config, listener, hub, me)?;
                    if me == 0 {
                        server.stop_on_signals()?;
                    }
                    server.run()
                });
                let _ = ends.send((me, end));
            })?;
        threads.push(thread);
    }
    drop(ends);
    let result = supervise(n, reports);
    if result.is_ok() {
        for t in threads {
            let _ = t.join();
        }
    }
    result
}

/// Runs a worker, turning a panic into an error that names it.
fn guarded(work: impl FnOnce() -> io::Result<()>) -> WorkerEnd {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .map_or("panicked".into(), |m| format!("panicked: {m}"))),
    }
}

/// Waits for `n` workers' ends. All stopping cleanly is `Ok`; the first failure is an error
/// naming the worker, returned at once (the caller exits; the others die with the process).
pub fn supervise(n: usize, reports: mpsc::Receiver<(usize, WorkerEnd)>) -> io::Result<()> {
    for _ in 0..n {
        match reports.recv() {
            Ok((_, Ok(()))) => {}
            Ok((me, Err(e))) => return Err(io::Error::other(format!("worker {me}: {e}"))),
            Err(_) => return Err(io::Error::other("a worker vanished without a word")),
        }
    }
    Ok(())
}

/// The message a frame this server encoded carries: its kind and payload.
pub(super) fn frame_message(frame: &[u8]) -> (MessageKind, &[u8]) {
    use crate::frame::{parse_header, Opcode, Parse};
    match parse_header(frame) {
        Ok(Parse::Complete(h)) => {
            let kind = if h.opcode == Opcode::Text {
                MessageKind::Text
            } else {
                MessageKind::Binary
            };
            (kind, &frame[h.header_len..])
        }
        // Not reached: a whole unmasked frame encoded by `shared_frame`.
        _ => (MessageKind::Binary, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(b: &[u8]) -> Frame {
        Arc::from(b)
    }

    #[test]
    fn a_full_inbox_drops_messages_and_counts_but_keeps_control_notes() {
        let hub = Hub::new(2, 2);
        let room: Arc<str> = "r".into();
        for i in 0..5u8 {
            hub.send(
                1,
                Note::Room {
                    room: room.clone(),
                    frame: frame(&[i]),
                    publish: false,
                },
            );
        }
        assert!(hub.send(
            1,
            Note::Joined {
                room: room.clone(),
                worker: 0
            }
        ));
        assert_eq!(hub.dropped(1), 3);
        assert_eq!(hub.dropped(0), 0);
        let mut got = VecDeque::new();
        hub.take(1, &mut got);
        let kinds: Vec<String> = got
            .iter()
            .map(|n| match n {
                Note::Room { frame, .. } => format!("m{}", frame[0]),
                Note::Joined { .. } => "joined".into(),
                _ => "other".into(),
            })
            .collect();
        // In order, the first two messages kept.
        assert_eq!(kinds, ["m0", "m1", "joined"]);
        let mut again = VecDeque::new();
        hub.take(1, &mut again);
        assert!(again.is_empty());
    }

    #[test]
    fn the_supervisor_reports_a_failed_or_panicking_worker_by_number() {
        let (tx, rx) = mpsc::channel();
        tx.send((0, guarded(|| Ok(())))).unwrap();
        tx.send((2, guarded(|| panic!("boom")))).unwrap();
        let e = supervise(3, rx).unwrap_err();
        assert_eq!(e.to_string(), "worker 2: panicked: boom");

        let (tx, rx) = mpsc::channel();
        tx.send((1, guarded(|| Err(io::Error::other("poll failed")))))
            .unwrap();
        let e = supervise(2, rx).unwrap_err();
        assert_eq!(e.to_string(), "worker 1: poll failed");

        let (tx, rx) = mpsc::channel();
        for i in 0..3 {
            tx.send((i, guarded(|| Ok(())))).unwrap();
        }
        assert!(supervise(3, rx).is_ok());

        // A worker thread that ends without reporting (its sender dropped) is an error too.
        let (tx, rx) = mpsc::channel::<(usize, WorkerEnd)>();
        drop(tx);
        assert!(supervise(1, rx).is_err());
    }
}
