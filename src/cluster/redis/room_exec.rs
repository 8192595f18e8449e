//! The RESP side of `--room-exec` with `--redis` (the decisions are in [`crate::cluster::lease`]):
//! the lease commands on the publisher, answered in order with the publishes around them, and
//! the input channel `PREFIX:room-in:NAME` through which members on other nodes reach the stdin
//! of the program this node runs. The program's output needs nothing new: it is published to
//! the room's own channel like any member's message.

use std::collections::BTreeSet;

use super::*;
use crate::cluster::lease::LeaseOp;

/// Compare-and-`PEXPIRE`: extends the lease only if it still holds our node id, atomically
/// (Redis runs a script alone), so a lease that ran out and went to another node is not
/// taken back by a late renewal.
const RENEW: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then \
                     return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";

/// Compare-and-`DEL`: releases the lease only if it is still ours.
const RELEASE: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then \
                       return redis.call('del', KEYS[1]) else return 0 end";

/// What the link keeps for room programs.
#[derive(Debug)]
pub(super) struct RoomExecWire {
    /// The lease commands waiting for their replies, in the order sent.
    pending: VecDeque<(LeaseOp, String)>,
    /// Rooms whose program runs here: their input channels are subscribed.
    inputs: BTreeSet<String>,
    /// Input messages are numbered apart from room messages, so that neither stream looks
    /// like it has gaps to the other's receivers.
    sequencer: Sequencer,
    receiver: Receiver,
}

impl RoomExecWire {
    pub(super) fn new(node: u64) -> RoomExecWire {
        RoomExecWire {
            pending: VecDeque::new(),
            inputs: BTreeSet::new(),
            sequencer: Sequencer::new(node),
            receiver: Receiver::new(node),
        }
    }

    /// The link was lost: no reply will come for what was in flight.
    pub(super) fn lost(&mut self) {
        self.pending.clear();
        self.receiver.forget_all();
    }
}

/// A lease reply: `+OK` or 1 is yes, a null bulk or 0 is no; anything else is not one.
pub(super) fn lease_answer(frame: &RangeFrame, input: &[u8]) -> Option<bool> {
    match frame {
        RangeFrame::SimpleString(r) => (&input[r.0..r.1] == b"OK").then_some(true),
        RangeFrame::Null => Some(false),
        RangeFrame::Integer(1) => Some(true),
        RangeFrame::Integer(0) => Some(false),
        _ => None,
    }
}

impl RedisLink {
    /// Puts a lease command on the publisher; its answer comes as [`Event::Lease`]. False
    /// when the link is not up (the caller tells the lease it was not sent).
    pub fn lease(&mut self, op: LeaseOp, room: &str, ttl: Duration) -> bool {
        if !self.is_up() {
            return false;
        }
        let key = format!("{}:exec:{}", self.settings.prefix, room);
        let node = format!("{:016x}", self.node());
        let ms = ttl.as_millis().max(1).to_string();
        let w = &mut self.wires[Side::Publisher as usize];
        match op {
            LeaseOp::Acquire => w.command(&[
                b"SET",
                key.as_bytes(),
                node.as_bytes(),
                b"NX",
                b"PX",
                ms.as_bytes(),
            ]),
            LeaseOp::Renew => w.command(&[
                b"EVAL",
                RENEW.as_bytes(),
                b"1",
                key.as_bytes(),
                node.as_bytes(),
                ms.as_bytes(),
            ]),
            LeaseOp::Release => w.command(&[
                b"EVAL",
                RELEASE.as_bytes(),
                b"1",
                key.as_bytes(),
                node.as_bytes(),
            ]),
        }
        w.expect.push_back(Reply::Lease);
        self.room_exec.pending.push_back((op, room.to_string()));
        true
    }

    /// This node runs `room`'s program: members elsewhere reach it through the input channel.
    pub fn subscribe_input(&mut self, room: &str) {
        if self.room_exec.inputs.insert(room.to_string()) && self.in_session() {
            let channel = self.input_channel(room);
            self.wires[Side::Subscriber as usize].command(&[b"SUBSCRIBE", channel.as_bytes()]);
        }
    }

    /// The program stopped here.
    pub fn unsubscribe_input(&mut self, room: &str) {
        if self.room_exec.inputs.remove(room) {
            self.room_exec.receiver.forget_room(room);
            if self.in_session() {
                let channel = self.input_channel(room);
                self.wires[Side::Subscriber as usize]
                    .command(&[b"UNSUBSCRIBE", channel.as_bytes()]);
            }
        }
    }

    /// A local member's message for `room`'s program, which runs on another node. False
    /// when dropped (link down or buffer full), counted like any publish.
    pub fn publish_input(&mut self, room: &str, kind: MessageKind, payload: &[u8]) -> bool {
        let env = self.room_exec.sequencer.next(room, kind, payload);
        if !self.is_up() {
            self.stats.dropped += 1;
            return false;
        }
        let channel = self.input_channel(room);
        let mut data = Vec::with_capacity(env.encoded_len());
        env.encode(&mut data);
        let w = &mut self.wires[Side::Publisher as usize];
        let args: [&[u8]; 3] = [b"PUBLISH", channel.as_bytes(), &data];
        if w.pending() + command_len(&args) > self.settings.buffer {
            self.stats.dropped += 1;
            return false;
        }
        w.command(&args);
        let end = w.queued;
        w.expect.push_back(Reply::Publish { end });
        true
    }

    fn input_channel(&self, room: &str) -> String {
        format!("{}:room-in:{}", self.settings.prefix, room)
    }

    /// On a reconnect: the input channels of the programs running here, again.
    pub(super) fn resubscribe_inputs(&mut self) {
        let channels: Vec<String> = self
            .room_exec
            .inputs
            .iter()
            .map(|r| self.input_channel(r))
            .collect();
        for batch in channels.chunks(SUBSCRIBE_BATCH) {
            let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
            args.extend(batch.iter().map(|c| c.as_bytes()));
            self.wires[Side::Subscriber as usize].command(&args);
        }
    }

    /// The answer to the oldest lease command.
    pub(super) fn on_lease_reply(&mut self, granted: bool) -> Result<(), LinkError> {
        let w = &mut self.wires[Side::Publisher as usize];
        if w.expect.pop_front() != Some(Reply::Lease) {
            return Err(LinkError::BadReply(
                "a lease answer nothing asked for".into(),
            ));
        }
        let Some((op, room)) = self.room_exec.pending.pop_front() else {
            return Err(LinkError::BadReply(
                "a lease answer nothing asked for".into(),
            ));
        };
        self.events.push_back(Event::Lease { op, room, granted });
        Ok(())
    }

    /// A message on an input channel; false if `channel` is not one.
    pub(super) fn on_input_message(&mut self, channel: &[u8], data: &[u8]) -> bool {
        let prefix = format!("{}:room-in:", self.settings.prefix);
        let Some(room) = channel.strip_prefix(prefix.as_bytes()) else {
            return false;
        };
        let Some(room) = std::str::from_utf8(room)
            .ok()
            .filter(|r| self.room_exec.inputs.contains(*r))
        else {
            // Not (or no longer) running here.
            return true;
        };
        let env = match Envelope::decode(data) {
            Ok(env) if env.room == room => env,
            _ => {
                self.stats.invalid += 1;
                return true;
            }
        };
        if self.room_exec.receiver.accept(&env) == Accept::Deliver {
            self.events.push_back(Event::Input {
                room: room.to_string(),
                kind: env.kind,
                payload: env.payload.to_vec(),
            });
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis_protocol::resp2::types::OwnedFrame;

    const NODE: u64 = 0xA;
    const OTHER: u64 = 0xB;

    fn up(t0: Instant) -> RedisLink {
        let settings = Settings {
            prefix: "p".into(),
            user: None,
            password: None,
            buffer: 4096,
            ping_interval: Duration::from_secs(5),
            max_reply: 64 * 1024,
        };
        let mut l = RedisLink::new(settings, NODE, 7, t0);
        l.handle_timeout(t0);
        drain(&mut l, Side::Publisher);
        drain(&mut l, Side::Subscriber);
        l.receive(Side::Publisher, b"+PONG\r\n", t0);
        l.receive(Side::Subscriber, b"+PONG\r\n", t0);
        assert!(l.is_up());
        events(&mut l);
        l
    }

    fn drain(l: &mut RedisLink, side: Side) -> Vec<Vec<String>> {
        let mut out = l.output(side).to_vec();
        let n = out.len();
        l.written(side, n);
        let mut commands = Vec::new();
        while !out.is_empty() {
            let (frame, used) = redis_protocol::resp2::decode::decode(&out)
                .unwrap()
                .unwrap();
            let OwnedFrame::Array(args) = frame else {
                panic!("{frame:?}")
            };
            commands.push(
                args.iter()
                    .map(|a| match a {
                        OwnedFrame::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                        other => panic!("{other:?}"),
                    })
                    .collect(),
            );
            out.drain(..used);
        }
        commands
    }

    fn events(l: &mut RedisLink) -> Vec<Event> {
        std::iter::from_fn(|| l.poll_event()).collect()
    }

    fn lease_event(op: LeaseOp, granted: bool) -> Event {
        Event::Lease {
            op,
            room: "chat".into(),
            granted,
        }
    }

    #[test]
    fn lease_commands_and_their_answers_in_order_with_publishes() {
        let t0 = Instant::now();
        let mut l = up(t0);
        let ttl = Duration::from_secs(10);
        assert!(l.lease(LeaseOp::Acquire, "chat", ttl));
        assert!(l.publish("chat", MessageKind::Text, b"between"));
        assert!(l.lease(LeaseOp::Renew, "chat", ttl));
        assert!(l.lease(LeaseOp::Release, "chat", ttl));
        assert!(l.lease(LeaseOp::Acquire, "chat", ttl));
        let sent = drain(&mut l, Side::Publisher);
        let node = format!("{NODE:016x}");
        assert_eq!(sent[0], ["SET", "p:exec:chat", &node, "NX", "PX", "10000"]);
        assert_eq!(sent[1][0], "PUBLISH");
        assert_eq!(sent[2][0], "EVAL");
        assert_eq!(sent[2][2..], ["1", "p:exec:chat", &node, "10000"]);
        assert!(sent[2][1].contains("pexpire"), "{}", sent[2][1]);
        assert_eq!(sent[3][2..], ["1", "p:exec:chat", &node]);
        assert!(sent[3][1].contains("'del'"), "{}", sent[3][1]);
        // Answered in order (byte by byte): the lease, the publish's count, 1, 0, and a
        // null (another node holds it).
        for b in b"+OK\r\n:1\r\n:1\r\n:0\r\n$-1\r\n" {
            l.receive(Side::Publisher, &[*b], t0);
        }
        assert!(l.is_up());
        assert_eq!(
            events(&mut l),
            [
                lease_event(LeaseOp::Acquire, true),
                lease_event(LeaseOp::Renew, true),
                lease_event(LeaseOp::Release, false),
                lease_event(LeaseOp::Acquire, false),
            ]
        );
        assert_eq!(l.stats().published, 1);
    }

    #[test]
    fn no_lease_command_while_down_and_none_awaited_after_a_loss() {
        let t0 = Instant::now();
        let settings = Settings {
            prefix: "p".into(),
            user: None,
            password: None,
            buffer: 4096,
            ping_interval: Duration::from_secs(5),
            max_reply: 64 * 1024,
        };
        let mut down = RedisLink::new(settings, NODE, 7, t0);
        assert!(!down.lease(LeaseOp::Acquire, "chat", Duration::from_secs(1)));
        let mut l = up(t0);
        assert!(l.lease(LeaseOp::Acquire, "chat", Duration::from_secs(1)));
        l.lost(t0, LinkError::Closed);
        events(&mut l);
        // Back up: the old command's answer is not expected any more.
        l.handle_timeout(t0 + Duration::from_secs(3));
        drain(&mut l, Side::Publisher);
        drain(&mut l, Side::Subscriber);
        let t1 = t0 + Duration::from_secs(3);
        l.receive(Side::Publisher, b"+PONG\r\n", t1);
        l.receive(Side::Subscriber, b"+PONG\r\n", t1);
        assert_eq!(events(&mut l), [Event::Up]);
        l.receive(Side::Publisher, b"+OK\r\n", t1);
        assert!(!l.is_up(), "an answer nothing asked for loses the link");
        assert!(events(&mut l)
            .iter()
            .all(|e| !matches!(e, Event::Lease { .. })));
    }

    #[test]
    fn input_channel_subscribed_again_on_reconnect_and_delivered() {
        let t0 = Instant::now();
        let mut l = up(t0);
        l.subscribe_input("chat");
        l.subscribe_input("chat");
        assert_eq!(
            drain(&mut l, Side::Subscriber),
            [["SUBSCRIBE", "p:room-in:chat"]]
        );
        // A member elsewhere: the envelope arrives as input, not as a room message.
        let mut data = Vec::new();
        Envelope {
            node: OTHER,
            seq: 1,
            kind: MessageKind::Text,
            room: "chat",
            payload: b"to stdin",
        }
        .encode(&mut data);
        let push = |channel: &str, data: &[u8]| {
            let mut v =
                format!("*3\r\n$7\r\nmessage\r\n${}\r\n{channel}\r\n", channel.len()).into_bytes();
            v.extend(format!("${}\r\n", data.len()).as_bytes());
            v.extend_from_slice(data);
            v.extend_from_slice(b"\r\n");
            v
        };
        l.receive(Side::Subscriber, &push("p:room-in:chat", &data), t0);
        assert_eq!(
            events(&mut l),
            [Event::Input {
                room: "chat".into(),
                kind: MessageKind::Text,
                payload: b"to stdin".to_vec()
            }]
        );
        // The same again is a duplicate; another room's input is not ours.
        l.receive(Side::Subscriber, &push("p:room-in:chat", &data), t0);
        l.receive(Side::Subscriber, &push("p:room-in:other", &data), t0);
        assert_eq!(events(&mut l), []);
        // Published input carries its own numbering, under the input channel.
        assert!(l.publish_input("news", MessageKind::Text, b"hi"));
        let sent = drain(&mut l, Side::Publisher);
        assert_eq!(sent[0][..2], ["PUBLISH", "p:room-in:news"]);
        let env = Envelope::decode(sent[0][2].as_bytes()).unwrap();
        assert_eq!((env.node, env.seq, env.room), (NODE, 1, "news"));
        // Reconnect: subscribed again before the PING that says the link is up.
        l.lost(t0, LinkError::Closed);
        l.handle_timeout(t0 + Duration::from_secs(3));
        let sub = drain(&mut l, Side::Subscriber);
        assert_eq!(sub, [vec!["SUBSCRIBE", "p:room-in:chat"], vec!["PING"]]);
        l.unsubscribe_input("chat");
        assert_eq!(
            drain(&mut l, Side::Subscriber),
            [["UNSUBSCRIBE", "p:room-in:chat"]]
        );
    }
}
