//! `wsloop client URL`: a WebSocket client for scripts, built on the crate's own codec.
//! (Placeholder: being written.)

/// Flags of `wsloop client`.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    /// ws://HOST:PORT/PATH to connect to.
    pub url: String,
}

/// Runs the client; returns the process exit code.
pub fn run(_args: ClientArgs) -> i32 {
    eprintln!("wsloop client: not built yet");
    2
}
