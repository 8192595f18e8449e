//! wsloop: an RFC 6455 WebSocket server on one `mio` event loop.
//!
//! The protocol lives in sans-I/O modules that never touch a socket — [`frame`] (the codec),
//! [`handshake`] (the opening handshake), [`connection`] (one connection's protocol),
//! [`deflate`] (permessage-deflate) and [`http`] (plain HTTP answers) — so tests and fuzzers
//! drive them with bytes alone.
//! [`server`] is the loop that moves bytes between them and the sockets.

pub mod activation;
pub mod client;
pub mod cluster;
pub mod config;
pub mod config_file;
pub mod connection;
pub mod console;
pub mod deflate;
pub mod error;
pub mod exec;
pub mod forwarded;
pub mod frame;
pub mod handshake;
pub mod http;
pub mod logging;
pub mod origin;
pub mod outbox;
pub mod room;
pub mod server;
pub mod socket;
pub mod target;
pub mod timer;
pub mod tls;
pub mod transport;
pub mod utf8;

pub use config::Config;
pub use server::Server;
