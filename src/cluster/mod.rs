//! Rooms across processes and machines: the envelope that crosses nodes, and a Redis pub/sub
//! link, sans-I/O ([`redis`]) with a thin `mio` driver ([`bridge`]).
//!
//! The server's side (`--redis`: its tokens, timer and room hooks) is `server/cluster.rs`.

pub mod bridge;
pub mod envelope;
pub mod lease;
pub mod redis;
pub mod url;

pub use bridge::RedisBridge;
pub use envelope::{Envelope, EnvelopeError, GapCounter};
pub use lease::{LeaseEvent, LeaseOp, LeaseSettings, Leases};
pub use redis::{RedisLink, RedisStats};
pub use url::RedisUrl;
