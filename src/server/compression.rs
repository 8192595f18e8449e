//! permessage-deflate in the loop: the agreement at upgrade, and broadcasts compressed once
//! per window size, whatever the number of receivers (RFC 7692 §7.2.1 lets a server reset
//! its context for any message, so one context-free frame serves every receiver).

use super::*;
use crate::deflate::{self, Agreed, DeflateConfig, PerMessage, SharedCodec};
use crate::frame::{encode_header, parse_header, Parse};

/// Window sizes a compressed broadcast can be made for (9..=15).
const WINDOWS: usize = 7;

/// A message sent to many: its plain frame, and the compressed frame for each window size
/// some receiver needed, made the first time one needs it.
pub(super) struct Broadcast {
    plain: SharedFrame,
    /// `None`: not tried yet; `Some(None)`: compression does not pay, receivers get `plain`.
    compressed: [Option<Option<SharedFrame>>; WINDOWS],
}

impl Broadcast {
    pub(super) fn new(plain: SharedFrame) -> Broadcast {
        Broadcast {
            plain,
            compressed: Default::default(),
        }
    }

    /// The frame for `conn`, and the window it was compressed with (`None`: plain). A
    /// receiver whose window is smaller than ours gets a frame made with its own window.
    pub(super) fn frame_for(
        &mut self,
        conn: &Connection,
        codec: Option<&SharedCodec>,
        scratch: &mut Vec<u8>,
    ) -> (&SharedFrame, Option<u8>) {
        let (Some(pm), Some(codec)) = (conn.deflate(), codec) else {
            return (&self.plain, None);
        };
        let bits = pm.agreed().server_window_bits.clamp(9, 15);
        let slot = &mut self.compressed[usize::from(bits - 9)];
        let plain = &self.plain;
        match slot.get_or_insert_with(|| compress_frame(plain, bits, codec, scratch)) {
            Some(frame) => (frame, Some(bits)),
            None => (&self.plain, None),
        }
    }

    /// The message itself (kind and payload), read back from the plain frame, which holds it
    /// whole: what other nodes are sent.
    pub(super) fn message(&self) -> (MessageKind, &[u8]) {
        match parse_header(&self.plain) {
            Ok(Parse::Complete(h)) => {
                let kind = if h.opcode == crate::frame::Opcode::Text {
                    MessageKind::Text
                } else {
                    MessageKind::Binary
                };
                (kind, &self.plain[h.header_len..])
            }
            // Not reached: `plain` is a whole frame this server encoded.
            _ => (MessageKind::Binary, &[]),
        }
    }

    /// Queues the message on `conn` (the sender's own echo); the bytes queued, if it is open.
    pub(super) fn send(
        &mut self,
        conn: &mut Connection,
        codec: Option<&SharedCodec>,
        scratch: &mut Vec<u8>,
    ) -> Option<usize> {
        let (frame, window) = self.frame_for(conn, codec, scratch);
        let sent = match window {
            Some(bits) => conn.send_shared_compressed(frame, bits),
            None => conn.send_shared(frame),
        };
        sent.then_some(frame.len())
    }
}

/// The plain frame's message compressed alone with a `bits` window, as a frame with RSV1 set;
/// `None` when that does not pay (`--deflate-threshold`, or no smaller).
fn compress_frame(
    plain: &[u8],
    bits: u8,
    codec: &SharedCodec,
    scratch: &mut Vec<u8>,
) -> Option<SharedFrame> {
    let Ok(Parse::Complete(h)) = parse_header(plain) else {
        return None;
    };
    let payload = &plain[h.header_len..];
    scratch.clear();
    scratch.resize(MAX_HEADER_LEN, 0);
    if !codec.compress(bits, payload, scratch).unwrap_or(false) {
        return None;
    }
    let len = scratch.len() - MAX_HEADER_LEN;
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut head, true, h.opcode, None, len);
    // RFC 7692 §6: RSV1 marks the message compressed.
    head[0] |= 0x40;
    let start = MAX_HEADER_LEN - n;
    scratch[start..MAX_HEADER_LEN].copy_from_slice(&head[..n]);
    Some(Rc::from(&scratch[start..]))
}

impl Server {
    /// The loop's compression state, when `--deflate` is not `off`.
    pub(super) fn new_codec(config: &Config) -> Option<Rc<SharedCodec>> {
        let cfg = DeflateConfig::from(config);
        (cfg.mode != deflate::DeflateMode::Off).then(|| SharedCodec::new(cfg))
    }

    /// The answer to an upgrade's `Sec-WebSocket-Extensions` offers (RFC 7692 §5), if any.
    pub(super) fn negotiate_deflate(&self, head: &Head<'_>) -> Option<Agreed> {
        let codec = self.deflate.as_ref()?;
        deflate::negotiate(head.values("Sec-WebSocket-Extensions"), codec.config())
    }

    /// Gives the agreement to a new connection: the loop's state in shared mode, its own
    /// (allocated on its first compressed message) in dedicated mode.
    pub(super) fn attach_deflate(&self, conn: &mut Connection, agreed: Option<Agreed>) {
        if let (Some(agreed), Some(codec)) = (agreed, &self.deflate) {
            conn.set_deflate(PerMessage::for_server(agreed, codec));
        }
    }
}
