//! `--redis`: rooms across processes and machines. The loop's side of the Redis bridge
//! (`crate::cluster`): its two sockets' events, its timer, and the hooks the rest of the
//! server calls when a room gains its first local member, loses its last one, or carries a
//! message that other nodes must hear.
//!
//! What crosses nodes: members' messages and `POST /publish`. Push (`--push-every`), console
//! lines and `--room-events` stay on the node that made them: every node has its own timer,
//! console and members, so sending them on would repeat them.
//!
//! At-most-once: local members get a message directly, whatever Redis does; other nodes get
//! it if the link is up and its buffer has room, otherwise it is dropped and counted.

use super::*;
use crate::cluster::envelope::random_node_id;
use crate::cluster::lease::{LeaseEvent, LeaseSettings, Leases};
use crate::cluster::redis::{Event as LinkEvent, Settings};
use crate::cluster::RedisBridge;

/// The bridge's publisher and subscriber connections (`usize::MAX - 4` is the workers' waker).
pub(super) const REDIS_PUB: Token = Token(usize::MAX - 5);
pub(super) const REDIS_SUB: Token = Token(usize::MAX - 6);

/// The Redis bridge and what the loop keeps about it.
pub(super) struct Cluster {
    bridge: RedisBridge,
    /// The link has been up since it was last lost (for the log: one line per change).
    up: bool,
    /// Failed attempts since the link was last up, for the log.
    failures: u64,
    /// Something was queued for Redis this turn.
    dirty: bool,
    /// `--room-exec`: the rooms whose program this node wants to run, and their leases
    /// (a program runs on the one node holding its room's lease; see README).
    leases: Leases,
}

impl Cluster {
    /// The bridge for `--redis`, connecting in the background; `None` without the flag. Fails
    /// only when the host name does not resolve.
    pub(super) fn new(config: &Config, registry: &mio::Registry) -> io::Result<Option<Cluster>> {
        let Some(url) = &config.redis else {
            return Ok(None);
        };
        let node = random_node_id();
        let bridge = RedisBridge::new(
            url,
            Settings::from_config(config),
            registry,
            [REDIS_PUB, REDIS_SUB],
            node,
            Instant::now(),
        )
        .map_err(|e| crate::error::io_context(format_args!("--redis {}", url.authority()), e))?;
        info!(
            "redis: node {node:016x}, channels {}:room:NAME on {}",
            config.redis_prefix,
            url.authority()
        );
        Ok(Some(Cluster {
            bridge,
            up: false,
            failures: 0,
            dirty: false,
            leases: Leases::new(LeaseSettings::from_config(config)),
        }))
    }
}

impl Server {
    /// An event on one of the bridge's sockets.
    pub(super) fn redis_ready(&mut self, token: Token) {
        let now = self.now;
        if let Some(c) = self.cluster.as_mut() {
            c.bridge.ready(token, now);
        }
        self.redis_events();
    }

    /// When the bridge next needs [`Server::redis_timeout`].
    pub(super) fn redis_deadline(&self) -> Option<Instant> {
        let c = self.cluster.as_ref()?;
        match (c.bridge.poll_timeout(), c.leases.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The bridge's timer (connect, backoff, PING) is due, or it has bytes left to read.
    pub(super) fn redis_timeout(&mut self, now: Instant) {
        if let Some(c) = self.cluster.as_mut() {
            c.bridge.handle_timeout(now);
            c.leases.handle_timeout(now);
        }
        self.redis_events();
    }

    /// Once per loop turn: everything published this turn goes to Redis in one write.
    pub(super) fn redis_flush(&mut self) {
        let now = self.now;
        if let Some(c) = self.cluster.as_mut().filter(|c| c.dirty) {
            c.dirty = false;
            c.bridge.flush(now);
        }
        self.redis_events();
    }

    /// A worker's room got its first member: the node subscribes to it (the link counts the
    /// workers, so the process sends one `SUBSCRIBE` per room).
    pub(super) fn redis_join(&mut self, room: &str) {
        let now = self.now;
        if let Some(c) = self.cluster.as_mut() {
            c.bridge.join(room, now);
        }
    }

    /// A worker's room lost its last member: when no worker has one, the node unsubscribes.
    pub(super) fn redis_leave(&mut self, room: &str) {
        let now = self.now;
        if let Some(c) = self.cluster.as_mut() {
            c.bridge.leave(room, now);
        }
    }

    /// A message went to a room's local members; other nodes get it too (at most once: if the
    /// link is down or its buffer is full it is dropped and counted, never queued).
    pub(super) fn redis_publish(&mut self, room: &str, kind: MessageKind, payload: &[u8]) {
        let now = self.now;
        if let Some(c) = self.cluster.as_mut() {
            c.bridge.queue_publish(room, kind, payload, now);
            c.dirty = true;
        }
    }

    /// Acts on what the link says: messages go to local members, changes to the log.
    fn redis_events(&mut self) {
        while let Some(event) = self.cluster.as_mut().and_then(|c| c.bridge.poll_event()) {
            match event {
                LinkEvent::Message {
                    room,
                    kind,
                    payload,
                } => {
                    let frame = shared_frame(&mut self.scratch, kind, &payload);
                    let n = self.deliver_message(&room, None, &mut Broadcast::new(frame.clone()));
                    // This worker holds the link for the process: the others get it from here.
                    let workers = self.room_delivered(&room, &frame, false);
                    debug!("redis: message for {room} to {n} local members, {workers} workers");
                }
                LinkEvent::Lease { op, room, granted } => {
                    let now = self.now;
                    if let Some(c) = self.cluster.as_mut() {
                        c.leases.on_reply(op, &room, granted, now);
                    }
                }
                // A member on another node spoke to the program of a room, which runs here.
                LinkEvent::Input { room, payload, .. } => {
                    self.room_programs.send_line(&room, &payload);
                }
                LinkEvent::Up => {
                    let Some(c) = self.cluster.as_mut() else {
                        return;
                    };
                    c.up = true;
                    c.failures = 0;
                    info!(
                        "redis: connected, {} rooms subscribed (reconnects: {})",
                        c.bridge.rooms(),
                        c.bridge.stats().reconnects
                    );
                }
                LinkEvent::Down { error, retry_in } => {
                    let now = self.now;
                    let Some(c) = self.cluster.as_mut() else {
                        return;
                    };
                    c.leases.link_down(now);
                    c.failures += 1;
                    if mem::take(&mut c.up) {
                        warn!(
                            "redis: link lost ({error}); local rooms go on, messages for other \
                             nodes are dropped until it is back; retry in {retry_in:?}"
                        );
                    } else if c.failures == 1 {
                        warn!("redis: cannot connect ({error}); local rooms work, retry in {retry_in:?}");
                    } else {
                        debug!(
                            "redis: attempt {} failed ({error}); retry in {retry_in:?}",
                            c.failures
                        );
                    }
                }
            }
        }
        self.redis_leases();
    }

    /// `,"redis":{...}` for `/stats`, empty without `--redis`.
    /// The `"redis"` part of `/stats`: this worker's link, or (on another worker) what
    /// worker 0, which holds the process's link, last published of it.
    pub(super) fn redis_json(&self) -> String {
        let Some(c) = &self.cluster else {
            return self.first_worker_redis(|s| s.redis_json.clone());
        };
        let s = c.bridge.stats();
        format!(
            ",\"redis\":{{\"connected\":{},\"reconnects\":{},\"dropped\":{},\"published\":{},\
             \"received\":{},\"missed\":{},\"own\":{},\"invalid\":{},\"rooms\":{},\"pending_bytes\":{},\
             \"node\":\"{:016x}\"}}",
            s.connected,
            s.reconnects,
            s.dropped,
            s.published,
            s.received,
            s.missed,
            s.own,
            s.invalid,
            c.bridge.rooms(),
            c.bridge.pending(),
            c.bridge.node(),
        )
    }

    /// The `wsloop_redis_*` families for `/metrics`, only with `--redis`.
    /// The `wsloop_redis_*` families of `/metrics` (from worker 0 on other workers).
    pub(super) fn redis_metrics(&self, out: &mut String) {
        let Some(c) = &self.cluster else {
            out.push_str(&self.first_worker_redis(|s| s.redis_metrics.clone()));
            return;
        };
        let s = c.bridge.stats();
        let families: [(&str, &str, &str, u64); 10] = [
            (
                "wsloop_redis_connected",
                "gauge",
                "1 while the Redis link is up.",
                u64::from(s.connected),
            ),
            (
                "wsloop_redis_rooms",
                "gauge",
                "Rooms with local members, each one SUBSCRIBE.",
                c.bridge.rooms() as u64,
            ),
            (
                "wsloop_redis_pending_bytes",
                "gauge",
                "Bytes queued for Redis, not yet written.",
                c.bridge.pending() as u64,
            ),
            (
                "wsloop_redis_reconnects_total",
                "counter",
                "Times the Redis link came back after being up.",
                s.reconnects,
            ),
            (
                "wsloop_redis_dropped_total",
                "counter",
                "Messages for other nodes dropped: link down, or --redis-buffer full.",
                s.dropped,
            ),
            (
                "wsloop_redis_published_total",
                "counter",
                "Messages for other nodes that Redis acknowledged.",
                s.published,
            ),
            (
                "wsloop_redis_received_total",
                "counter",
                "Messages from other nodes delivered to local rooms.",
                s.received,
            ),
            (
                "wsloop_redis_missed_total",
                "counter",
                "Messages other nodes numbered that never arrived (sequence gaps).",
                s.missed,
            ),
            (
                "wsloop_redis_own_total",
                "counter",
                "This node's own messages back from Redis, dropped.",
                s.own,
            ),
            (
                "wsloop_redis_invalid_total",
                "counter",
                "Messages from Redis that were not valid envelopes.",
                s.invalid,
            ),
        ];
        for (name, kind, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        }
    }
}

impl Server {
    /// `--redis` and `--room-exec`: a member joined `room` here and its program does not run
    /// here; the node asks for the room's lease (the program starts when it is granted).
    /// False without `--redis`: the program is started at once, as on one node.
    pub(super) fn want_room_program(&mut self, room: &str) -> bool {
        let now = self.now;
        let Some(c) = self.cluster.as_mut() else {
            return false;
        };
        c.leases.want(room, now);
        self.redis_leases();
        true
    }

    /// The room's program is not wanted here any more (no member left, or its grace period
    /// ended): a held lease is released for another node to take.
    pub(super) fn unwant_room_program(&mut self, room: &str) {
        let now = self.now;
        if let Some(c) = self.cluster.as_mut() {
            c.leases.unwant(room);
            c.bridge.unsubscribe_input(room, now);
        }
        self.redis_leases();
    }

    /// A member's message for `room`'s program, which runs on another node (the lease is
    /// elsewhere): it goes there through the room's input channel. False without `--redis`.
    pub(super) fn redis_program_input(&mut self, room: &str, kind: MessageKind, payload: &[u8]) {
        if let Some(c) = self.cluster.as_mut() {
            c.bridge.queue_publish_input(room, kind, payload);
            c.dirty = true;
        }
    }

    /// Puts the leases' commands on the link and acts on what they decided: a lease granted
    /// starts the room's program here, a lease lost kills it at once (so that two nodes never
    /// both run it; see `cluster::lease`).
    fn redis_leases(&mut self) {
        let now = self.now;
        let ttl = self.config.room_exec_lease;
        loop {
            let Some(c) = self.cluster.as_mut() else {
                return;
            };
            while let Some((op, room)) = c.leases.poll_command() {
                if !c.bridge.lease(op, &room, ttl, now) {
                    c.leases.unsent(op, &room, now);
                }
            }
            let Some(event) = c.leases.poll_event() else {
                return;
            };
            match event {
                LeaseEvent::Acquired(room) => {
                    let name: Rc<str> = room.as_str().into();
                    match self.start_room_program(&name) {
                        Ok(()) => {
                            info!("room {room}: this node holds the program's lease");
                            if let Some(c) = self.cluster.as_mut() {
                                c.bridge.subscribe_input(&room, now);
                            }
                        }
                        Err(_) => {
                            if let Some(c) = self.cluster.as_mut() {
                                c.leases.unwant(&room);
                            }
                        }
                    }
                }
                LeaseEvent::Lost(room) => {
                    warn!("room {room}: the program's lease is lost; program killed here");
                    self.kill_room_program(&room);
                    if let Some(c) = self.cluster.as_mut() {
                        c.bridge.unsubscribe_input(&room, now);
                    }
                }
            }
        }
    }
}
