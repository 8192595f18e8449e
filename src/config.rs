//! Every setting and limit, with its default; each field is one command-line flag.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// The server's settings. `wsloop --help` lists them with their defaults.
#[derive(Args, Clone, Debug)]
pub struct Config {
    /// TCP port to listen on (0 picks a free one; the log line shows which).
    #[arg(long, default_value_t = 9001)]
    pub port: u16,

    /// Address to bind (IPv4 or IPv6).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,

    /// Largest message (and so frame) accepted, in bytes; larger ones are closed with 1009.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_message_size: usize,

    /// Largest HTTP request head, in bytes; larger ones get 431.
    #[arg(long, default_value_t = 8 * 1024)]
    pub max_head_size: usize,

    /// Most connections open at once; over it, new ones get 503 and are closed.
    #[arg(long, default_value_t = 100_000)]
    pub max_connections: usize,

    /// Unsent output (bytes) at which a connection stops being read until it drains to half,
    /// so a peer that sends without reading cannot make the server buffer without end.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub max_backlog: usize,

    /// How long to wait for the peer's close frame (and then its FIN) once we closed.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub close_timeout: Duration,

    /// How long a connection may take to send a whole request head.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// How long an idle keep-alive HTTP connection is kept open.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub http_idle_timeout: Duration,

    /// A connection quiet for this long gives back the buffers it kept for reuse.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub shrink_after: Duration,

    /// Size of the one read buffer the event loop shares between all connections, in bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    pub read_buffer_size: usize,

    /// Subprotocols the server speaks, in order of preference (comma-separated).
    #[arg(long = "protocol", value_delimiter = ',')]
    pub protocols: Vec<String>,

    /// Serve this folder over HTTP instead of the bundled pages.
    #[arg(long)]
    pub www: Option<PathBuf>,

    /// Upgrades to `/` join this room instead of echoing (a chat or relay at the root).
    #[arg(long, value_name = "NAME")]
    pub root_room: Option<String>,

    /// Rooms (`/room/NAME`): also send each message back to its sender.
    #[arg(long)]
    pub room_echo: bool,

    /// Rooms: tell members when someone joins or leaves (a small JSON text message).
    #[arg(long)]
    pub room_events: bool,

    /// `POST /publish/NAME` needs `Authorization: Bearer TOKEN`.
    #[arg(long, value_name = "TOKEN")]
    pub publish_token: Option<String>,

    /// Server push: send a message to clients on this period (e.g. 500ms, 2s, 1m).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub push_every: Option<Duration>,

    /// Server push: the text; `{n}` is the push count, `{time}` the UTC time of day.
    #[arg(long, default_value = "push {n} at {time}")]
    pub push_text: String,

    /// Server push: only to this room (default: every WebSocket client).
    #[arg(long, value_name = "NAME")]
    pub push_room: Option<String>,

    /// Operator console: stdin lines go to every client (`@ROOM text` to one room);
    /// client messages are printed to stdout as `[peer room] text`.
    #[arg(long)]
    pub console: bool,

    /// A program per connection: each WebSocket on the exec route runs its own PATH with the
    /// arguments after `--`; its stdout lines become messages, messages become stdin lines.
    #[arg(long, value_name = "PATH")]
    pub exec: Option<PathBuf>,

    /// Arguments for the `--exec` program (after `--`).
    #[arg(last = true, value_name = "ARGS")]
    pub exec_args: Vec<String>,

    /// The upgrade path that runs the `--exec` program.
    #[arg(long, default_value = "/exec")]
    pub exec_route: String,

    /// Most `--exec` programs running at once; over it, upgrades get 503.
    #[arg(long, default_value_t = 64)]
    pub max_children: usize,

    /// After a client leaves, its program gets this long after stdin closes before SIGTERM,
    /// and as long again before SIGKILL.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub exec_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            config: Config,
        }
        <Only as clap::Parser>::parse_from(["wsloop"]).config
    }
}

impl Config {
    /// Checks what the flags' own parsers cannot: names and periods that must make sense.
    pub fn validate(&self) -> std::io::Result<()> {
        let invalid = |msg: String| Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, msg));
        for (flag, room) in [
            ("--push-room", &self.push_room),
            ("--root-room", &self.root_room),
        ] {
            if let Some(room) = room {
                if !crate::room::valid_name(room) {
                    return invalid(format!("{flag} {room:?}: not a room name"));
                }
            }
        }
        if self.push_every.is_some_and(|d| d.is_zero()) {
            return invalid("--push-every must be above zero".into());
        }
        Ok(())
    }
}

/// Reads durations such as `500ms`, `2s`, `1m` or `1h` (a bare number means seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (try 500ms, 2s, 1m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit in {s:?} (use ms, s, m or h)")),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn validation() {
        assert!(Config::default().validate().is_ok());
        let bad_room = Config {
            push_room: Some("bad/name".into()),
            ..Config::default()
        };
        assert!(bad_room.validate().is_err());
        let zero_period = Config {
            push_every: Some(Duration::ZERO),
            ..Config::default()
        };
        assert!(zero_period.validate().is_err());
    }

    #[test]
    fn defaults() {
        let c = Config::default();
        assert_eq!(c.port, 9001);
        assert_eq!(c.max_message_size, 16 << 20);
        assert_eq!(c.max_head_size, 8192);
        assert!(c.protocols.is_empty());
    }
}
