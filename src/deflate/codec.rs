//! How connections hold permessage-deflate state (RFC 7692 §7.2): borrowed from the loop's
//! [`SharedCodec`] (`--deflate shared`: nothing per connection but a pointer) or their own,
//! allocated on the first compressed message (`--deflate dedicated`). Still no I/O here.

use std::cell::RefCell;
use std::rc::Rc;

use super::{Agreed, Compressor, DeflateConfig, DeflateError, DeflateMode, Inflater};
use crate::frame::Role;

/// Windows a compressor may use, 9..=15 (zlib cannot make 8).
const WINDOWS: usize = 7;

/// The compression state of one event loop: a no-context compressor per window size in use
/// (echo in shared mode, and every broadcast: one compression per window group, not per
/// receiver) and, in shared mode, the one inflater every connection borrows for a whole message.
pub struct SharedCodec {
    cfg: DeflateConfig,
    compressors: [RefCell<Option<Compressor>>; WINDOWS],
    inflater: RefCell<Inflater>,
}

impl SharedCodec {
    pub fn new(cfg: DeflateConfig) -> Rc<SharedCodec> {
        Rc::new(SharedCodec {
            cfg,
            compressors: Default::default(),
            // A window-15 inflater reads what any smaller window produced (RFC 1951 §3.2).
            inflater: RefCell::new(Inflater::new(15, false)),
        })
    }

    pub fn config(&self) -> &DeflateConfig {
        &self.cfg
    }

    /// Compresses a whole message alone (no context) with a window of at most `window_bits`,
    /// as [`Compressor::compress`] does: `Ok(false)` when it does not pay.
    pub fn compress(
        &self,
        window_bits: u8,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<bool, DeflateError> {
        let bits = window_bits.clamp(9, 15);
        let Ok(mut slot) = self.compressors[usize::from(bits - 9)].try_borrow_mut() else {
            return Ok(false);
        };
        slot.get_or_insert_with(|| Compressor::new(bits, false, &self.cfg))
            .compress(payload, out)
    }

    /// Gives back the zlib state of every compressor (the loop's idle sweep).
    pub fn release(&self) {
        for c in &self.compressors {
            if let Ok(mut c) = c.try_borrow_mut() {
                *c = None;
            }
        }
        if let Ok(mut i) = self.inflater.try_borrow_mut() {
            i.release();
        }
    }
}

/// One connection's side of an agreed permessage-deflate.
pub struct PerMessage {
    agreed: Agreed,
    codec: Codec,
}

enum Codec {
    /// Borrows the loop's state for each whole message (both ends reset every message).
    Shared(Rc<SharedCodec>),
    /// Its own state, allocated on the first compressed message. (`cfg` is boxed so that
    /// the enum fits in 16 bytes and a shared-mode connection's `PerMessage` in a 32-byte
    /// allocation.)
    Dedicated {
        cfg: Box<DeflateConfig>,
        own: Option<Box<Own>>,
    },
}

struct Own {
    compressor: Compressor,
    inflater: Inflater,
}

impl std::fmt::Debug for PerMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match &self.codec {
            Codec::Shared(_) => "shared",
            Codec::Dedicated { .. } => "dedicated",
        };
        f.debug_struct("PerMessage")
            .field("agreed", &self.agreed)
            .field("mode", &mode)
            .finish()
    }
}

impl PerMessage {
    /// The server's side of `agreed`, in the loop's mode: shared borrows `loop_codec`.
    pub fn for_server(agreed: Agreed, loop_codec: &Rc<SharedCodec>) -> PerMessage {
        let codec = match loop_codec.cfg.mode {
            DeflateMode::Shared => Codec::Shared(loop_codec.clone()),
            _ => Codec::Dedicated {
                cfg: Box::new(loop_codec.cfg),
                own: None,
            },
        };
        PerMessage { agreed, codec }
    }

    /// A side with its own state (the client, tests).
    pub fn dedicated(agreed: Agreed, cfg: DeflateConfig) -> PerMessage {
        PerMessage {
            agreed,
            codec: Codec::Dedicated {
                cfg: Box::new(cfg),
                own: None,
            },
        }
    }

    pub fn agreed(&self) -> &Agreed {
        &self.agreed
    }

    fn own(&mut self, role: Role) -> Option<&mut Own> {
        let Codec::Dedicated { cfg, own } = &mut self.codec else {
            return None;
        };
        let agreed = &self.agreed;
        Some(own.get_or_insert_with(|| {
            Box::new(Own {
                compressor: agreed.compressor(role, cfg),
                inflater: agreed.inflater(role),
            })
        }))
    }

    /// Compresses one whole message `role` sends: see [`Compressor::compress`].
    pub fn compress(
        &mut self,
        role: Role,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<bool, DeflateError> {
        // Cheap refusals first: a short message allocates nothing, even in dedicated mode.
        let threshold = match &self.codec {
            Codec::Shared(s) => s.cfg.threshold,
            Codec::Dedicated { cfg, .. } => cfg.threshold,
        };
        if payload.is_empty() || payload.len() < threshold {
            return Ok(false);
        }
        let window = match role {
            Role::Server => self.agreed.server_window_bits,
            Role::Client => self.agreed.client_window_bits,
        };
        match &self.codec {
            Codec::Shared(s) => s.compress(window, payload, out),
            Codec::Dedicated { .. } => match self.own(role) {
                Some(own) => own.compressor.compress(payload, out),
                None => Ok(false),
            },
        }
    }

    /// Runs `f` with the inflater for messages `role` receives; `f` must finish the message
    /// (a shared inflater cannot keep one connection's half message while another's arrives).
    /// `None` if the inflater is already lent (never, when each call finishes its message).
    pub fn with_inflater<R>(
        &mut self,
        role: Role,
        f: impl FnOnce(&mut Inflater) -> R,
    ) -> Option<R> {
        match &self.codec {
            Codec::Shared(s) => {
                let mut inflater = s.inflater.try_borrow_mut().ok()?;
                Some(f(&mut inflater))
            }
            Codec::Dedicated { .. } => self.own(role).map(|own| f(&mut own.inflater)),
        }
    }

    /// A frame compressed elsewhere (once for a broadcast) went to the peer: our own
    /// compressor must not refer back past it (RFC 7692 §7.2.3.2: the peer's window has it).
    pub fn forget(&mut self) {
        if let Codec::Dedicated { own: Some(own), .. } = &mut self.codec {
            own.compressor.forget();
        }
    }

    /// Whether a frame compressed alone with a `window_bits` window can go to this peer as is.
    pub fn takes_shared_frame(&self, window_bits: u8) -> bool {
        self.agreed.takes_shared_frame(window_bits)
    }

    /// Gives back what a quiet connection holds: the compressor always (its next message
    /// starts a fresh stream), the inflater when the peer keeps no context.
    pub fn release(&mut self) {
        if let Codec::Dedicated { own, .. } = &mut self.codec {
            if let Some(o) = own {
                o.compressor.release();
                if o.inflater.release() {
                    *own = None;
                }
            }
        }
    }

    /// Whether this connection holds zlib state of its own now.
    pub fn holds_state(&self) -> bool {
        match &self.codec {
            Codec::Shared(_) => false,
            Codec::Dedicated { own, .. } => own
                .as_ref()
                .is_some_and(|o| o.compressor.is_allocated() || o.inflater.is_allocated()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection that agreed on deflate holds a `Box<PerMessage>`: 24 bytes keep it
    /// in the allocator's 32-byte class (idle memory, issue #10).
    #[test]
    fn a_connection_side_fits_a_small_allocation() {
        assert_eq!(std::mem::size_of::<Codec>(), 16);
        assert!(std::mem::size_of::<PerMessage>() <= 24);
    }
}
