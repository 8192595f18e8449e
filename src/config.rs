//! Every setting and limit, with its default; each field is one command-line flag.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::deflate::DeflateMode;
use crate::logging::{AccessLog, LogFormat};
use crate::socket::BindAddr;

/// What to do with a receiver that fan-out would take past `--max-backlog`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SlowConsumer {
    /// No more data messages; a close 1008 ("slow consumer") follows what it has.
    Close,
    /// Skip that message for that receiver and count the drop.
    Drop,
}

/// The server's settings. `wsloop --help` lists them with their defaults.
#[derive(Args, Clone, Debug)]
pub struct Config {
    /// TCP port to listen on (0 picks a free one; the log line shows which).
    #[arg(long, default_value_t = 9001)]
    pub port: u16,

    /// Address to bind (IPv4 or IPv6), or `unix:PATH` for a Unix socket (for a proxy on this
    /// machine; its peers are trusted like a `--trusted-proxy`). Under systemd socket
    /// activation (`LISTEN_FDS`) the passed socket is served instead.
    #[arg(long, default_value = "127.0.0.1", value_parser = crate::socket::parse_bind, value_name = "ADDR|unix:PATH")]
    pub bind: BindAddr,

    /// Permissions of the `--bind unix:PATH` socket file (octal); connecting needs write
    /// permission, so 660 lets the owner and the group in.
    #[arg(long, default_value = "660", value_parser = crate::socket::parse_mode, value_name = "MODE")]
    pub unix_mode: u32,

    /// Largest message (and so frame) accepted; larger ones are closed with 1009.
    #[arg(long, default_value = "16MiB", value_parser = parse_size, value_name = "SIZE")]
    pub max_message_size: usize,

    /// Largest HTTP request head; larger ones get 431.
    #[arg(long, default_value = "8KiB", value_parser = parse_size, value_name = "SIZE")]
    pub max_head_size: usize,

    /// Most connections open at once; over it, new ones get 503 and are closed.
    #[arg(long, default_value_t = 100_000)]
    pub max_connections: usize,

    /// Most unsent output a connection may have. Its own traffic (echo, HTTP answers) pauses
    /// reading it until it drains to half; fan-out past it is decided by `--slow-consumer`.
    #[arg(long, default_value = "4MiB", value_parser = parse_size, value_name = "SIZE")]
    pub max_backlog: usize,

    /// What happens to a receiver a fan-out message (room, publish, push, console) would take
    /// past `--max-backlog`: `close` it with 1008 after what it has, or `drop` that message.
    #[arg(long, value_enum, default_value_t = SlowConsumer::Close)]
    pub slow_consumer: SlowConsumer,

    /// A connection whose pending output makes no progress for this long is dropped.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub send_timeout: Duration,

    /// After this long with nothing from the peer, a WebSocket is pinged (0 turns pings off).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// A pinged peer that sends nothing for this long is dropped (no close handshake).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub pong_timeout: Duration,

    /// Origins allowed besides the server's own (repeatable): `https://app.example`,
    /// `https://*.example.com`, `null` (pages opened from files) or `*` (any).
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,

    /// Reverse proxies (repeatable; an address or block such as 10.0.0.0/8): only from these
    /// peers do `Forwarded` / `X-Forwarded-For` give the client's address and
    /// `X-Forwarded-Proto` / `proto=` the scheme the Origin check expects.
    #[arg(long = "trusted-proxy", value_name = "CIDR", value_parser = crate::forwarded::parse_cidr)]
    pub trusted_proxies: Vec<crate::forwarded::Cidr>,

    /// Most connections open at once from one address; over it, new ones get 429 (default off).
    #[arg(long, value_name = "N")]
    pub max_per_ip: Option<usize>,

    /// How long to wait for the peer's close frame (and then its FIN) once we closed.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub close_timeout: Duration,

    /// On SIGTERM/SIGINT, keep serving this long with `GET /healthz` answering 503, so that
    /// load balancers stop sending new clients before the WebSockets are closed.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,

    /// Log lines as `text` or as `json` (one object per line: time, level, target, peer,
    /// message and the event's fields). `RUST_LOG` sets the level.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// One `info` line per HTTP request and per finished WebSocket session (peer, path,
    /// status or close code, duration, bytes in and out), under the target `wsloop::access`.
    #[arg(long, value_enum, default_value_t = AccessLog::On)]
    pub access_log: AccessLog,

    /// How long a connection may take to send a whole request head.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// How long an idle keep-alive HTTP connection is kept open.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub http_idle_timeout: Duration,

    /// A connection quiet for this long gives back the buffers it kept for reuse.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub shrink_after: Duration,

    /// Size of the one read buffer the event loop shares between all connections.
    #[arg(long, default_value = "256KiB", value_parser = parse_size, value_name = "SIZE")]
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

    #[arg(long, default_value = "push {n} at {time}", help = push_text_help())]
    pub push_text: String,

    /// Server push: only to this room (default: every WebSocket client).
    #[arg(long, value_name = "NAME")]
    pub push_room: Option<String>,

    /// Operator console: stdin lines go to every client (`@ROOM text` to one room);
    /// client messages are printed to stdout as `[peer room] text`.
    #[arg(long)]
    pub console: bool,

    /// Console: most output waiting for stdout; when it is full, lines are dropped and counted.
    #[arg(long, default_value = "1MiB", value_parser = parse_size, value_name = "SIZE")]
    pub console_buffer: usize,

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

    /// A program per room: `NAME=PATH` runs PATH for room NAME while the room has members
    /// (started with the first, ended `--room-exec-grace` after the last); its stdout lines go
    /// to every member, each member's message is a line on its stdin. Repeatable.
    #[arg(long = "room-exec", value_name = "NAME=PATH", value_parser = parse_room_exec)]
    pub room_exec: Vec<RoomExec>,

    /// An argument for a `--room-exec` program, `NAME=ARG`; repeat it for each argument, in
    /// order (an argument may hold spaces; no shell is involved).
    #[arg(long = "room-exec-arg", value_name = "NAME=ARG", value_parser = parse_room_exec_arg)]
    pub room_exec_args: Vec<(String, String)>,

    /// After a room's last member leaves, its program keeps running this long (a member who
    /// joins meanwhile keeps it); then stdin closes and `--exec-grace` applies.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub room_exec_grace: Duration,

    /// With `--redis`: a room program runs on the node holding the room's lease in Redis,
    /// which lasts this long and is renewed every third of it (see the README).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub room_exec_lease: Duration,

    /// With `--redis`: a node whose room has members but not the lease asks for it this often.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub room_exec_lease_retry: Duration,

    /// permessage-deflate (RFC 7692): `off`; `shared` (one compressor per loop, no context
    /// kept between messages, no state per connection: on by default, as every browser
    /// offers it); `dedicated` (context kept both ways for the best ratio, about 220 KiB per
    /// active connection at the defaults).
    #[arg(long, value_enum, default_value_t = DeflateMode::Shared)]
    pub deflate: DeflateMode,

    /// Deflate: LZ77 window, log2 bytes (9..=15), for our compressor and asked of clients.
    #[arg(long, default_value_t = 13, value_parser = clap::value_parser!(u8).range(9..=15))]
    pub deflate_window_bits: u8,

    /// Deflate: zlib memLevel (1..=9), the compressor's hash table and block buffer size.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=9))]
    pub deflate_mem_level: u8,

    /// Deflate: compression level, 2 (fastest) ..= 9 (smallest, slowest); 1 is taken as 2
    /// (zlib-rs 0.6.8 panics in level 1 on poorly compressible data).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=9))]
    pub deflate_level: u8,

    /// Deflate: messages shorter than this are sent uncompressed.
    #[arg(long, default_value = "64B", value_parser = parse_size, value_name = "SIZE")]
    pub deflate_threshold: usize,

    /// TLS: a PEM certificate chain (leaf first). With `--tls-key`, the port serves `https://`
    /// and `wss://`. Repeatable: pairs in order, chosen by the name the client asks for (SNI).
    #[arg(long = "tls-cert", value_name = "FILE")]
    pub tls_certs: Vec<PathBuf>,

    /// TLS: the PEM private key (ECDSA, Ed25519 or RSA) of the `--tls-cert` at the same place.
    #[arg(long = "tls-key", value_name = "FILE")]
    pub tls_keys: Vec<PathBuf>,

    /// TLS: serve plain HTTP arriving on the TLS port instead of redirecting it to `https://`.
    #[arg(long)]
    pub tls_allow_plain: bool,

    /// TLS: check the certificate and key files this often and load them when they change
    /// (SIGHUP always reloads them); off by default.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub tls_reload: Option<Duration>,

    /// TLS: most handshake steps processed per loop turn; the rest wait for the next turn,
    /// so that open connections keep their latency while many clients connect at once.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub tls_handshakes_per_turn: usize,
    /// Rooms across processes and machines through Redis pub/sub:
    /// `redis://[[user]:password@]host[:port][/db]`. Room messages and `POST /publish` reach
    /// members on every node; at most once: while Redis is away they are dropped and counted.
    #[arg(long, value_name = "URL", value_parser = crate::cluster::url::parse_redis_url)]
    pub redis: Option<crate::cluster::RedisUrl>,

    /// Redis: channel prefix; a room is the channel `PREFIX:room:NAME`.
    #[arg(long, default_value = "wsloop", value_name = "PREFIX")]
    pub redis_prefix: String,

    /// Redis: most bytes of messages for other nodes waiting to be written to Redis; past
    /// it (and whenever Redis is unreachable) they are dropped and counted, never queued.
    #[arg(long, default_value = "16MiB", value_parser = parse_size, value_name = "SIZE")]
    pub redis_buffer: usize,

    /// Redis: PING both connections this often; no answer within as long again (or no
    /// connection within it) means a dead link: reconnect, 100ms doubling to 2s, jittered.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub redis_ping_interval: Duration,

    /// Event loops (threads), each with its own listener on the port (`SO_REUSEPORT`: the
    /// kernel spreads new connections); `auto` is one per available core. Rooms span them.
    #[arg(long, default_value = "1", value_parser = parse_workers, value_name = "N|auto")]
    pub workers: usize,

    /// With `--workers` above 1: most notes (room messages from other workers) waiting for a
    /// worker; past it, messages for that worker are dropped and counted, as for a slow consumer.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub worker_inbox: usize,
}

/// clap turns a literal `{n}` in help text into a line break; styling the `n` keeps it shown
/// as typed (the style is dropped when stdout is not a terminal).
fn push_text_help() -> clap::builder::StyledStr {
    use std::fmt::Write;
    let b = clap::builder::styling::Style::new().bold();
    let mut s = clap::builder::StyledStr::new();
    let _ = write!(
        s,
        "Server push: the text; `{{{b}n{b:#}}}` is the push count, `{{time}}` the UTC time of day"
    );
    s
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
        crate::origin::OriginPolicy::parse(&self.allowed_origins)
            .map_err(|msg| std::io::Error::new(std::io::ErrorKind::InvalidInput, msg))?;
        // RFC 6455 §4.1: each subprotocol is an RFC 9110 token; anything else could never be
        // offered by a client, and would be echoed into a header unchecked.
        if let Some(p) = self.protocols.iter().find(|p| !is_token(p)) {
            return invalid(format!(
                "--protocol {p:?}: not a token (letters, digits, !#$%&'*+-.^_`|~)"
            ));
        }
        if self.max_per_ip == Some(0) {
            return invalid("--max-per-ip must be at least 1".into());
        }
        if self.tls_certs.len() != self.tls_keys.len() {
            return invalid(format!(
                "--tls-cert given {} times and --tls-key {} times: they go in pairs",
                self.tls_certs.len(),
                self.tls_keys.len()
            ));
        }
        if self.tls_handshakes_per_turn == 0 {
            return invalid("--tls-handshakes-per-turn must be at least 1".into());
        }
        if self.tls_reload.is_some_and(|d| d.is_zero()) {
            return invalid("--tls-reload must be above zero".into());
        }
        // The prefix is half of a channel name: printable, no spaces, so logs and
        // `redis-cli` show it as it is.
        if self.redis_prefix.is_empty() || !self.redis_prefix.bytes().all(|b| b.is_ascii_graphic())
        {
            return invalid(format!(
                "--redis-prefix {:?}: must be printable ASCII without spaces",
                self.redis_prefix
            ));
        }
        if self.redis_ping_interval.is_zero() {
            return invalid("--redis-ping-interval must be above zero".into());
        }
        if self.room_exec_lease < Duration::from_millis(30) || self.room_exec_lease_retry.is_zero()
        {
            return invalid(
                "--room-exec-lease must be at least 30ms and --room-exec-lease-retry above zero"
                    .into(),
            );
        }
        for (i, r) in self.room_exec.iter().enumerate() {
            if self.room_exec[..i].iter().any(|o| o.room == r.room) {
                return invalid(format!("--room-exec: room {:?} given twice", r.room));
            }
        }
        if let Some((room, _)) = self
            .room_exec_args
            .iter()
            .find(|(room, _)| !self.room_exec.iter().any(|r| &r.room == room))
        {
            return invalid(format!(
                "--room-exec-arg {room}=...: no --room-exec for that room"
            ));
        }
        if self.redis_buffer == 0 {
            return invalid("--redis-buffer must be above zero".into());
        }
        if self.workers == 0 || self.workers > MAX_WORKERS {
            return invalid(format!("--workers must be 1 to {MAX_WORKERS}"));
        }
        if self.worker_inbox == 0 {
            return invalid("--worker-inbox must be at least 1".into());
        }
        if self.workers > 1 && matches!(self.bind, BindAddr::Unix(_)) {
            // Only TCP ports can be shared with SO_REUSEPORT; one Unix socket file has one
            // accept queue, and a proxy in front of it gains little from more loops.
            return invalid("--workers above 1 needs a TCP --bind, not unix:PATH".into());
        }
        Ok(())
    }
}

/// `--room-exec NAME=PATH`: which room runs which program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomExec {
    pub room: String,
    pub path: PathBuf,
}

impl std::fmt::Display for RoomExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.room, self.path.display())
    }
}

/// Splits `NAME=VALUE` with NAME a room name.
fn room_pair(s: &str) -> Result<(&str, &str), String> {
    let (room, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=VALUE"))?;
    if !crate::room::valid_name(room) {
        return Err(format!(
            "{room:?}: not a room name (1-64 of A-Z a-z 0-9 . _ -)"
        ));
    }
    Ok((room, value))
}

fn parse_room_exec(s: &str) -> Result<RoomExec, String> {
    let (room, path) = room_pair(s)?;
    if path.is_empty() {
        return Err(format!("{s:?}: no program after '='"));
    }
    Ok(RoomExec {
        room: room.into(),
        path: path.into(),
    })
}

fn parse_room_exec_arg(s: &str) -> Result<(String, String), String> {
    let (room, arg) = room_pair(s)?;
    Ok((room.into(), arg.into()))
}

/// RFC 9110 §5.6.2: `token = 1*tchar`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Most `--workers`: the room replica keeps the other workers of a room in a 64-bit mask.
pub const MAX_WORKERS: usize = 64;

/// `--workers N` or `auto` (the cores this process may run on).
pub fn parse_workers(s: &str) -> Result<usize, String> {
    if s.trim() == "auto" {
        return Ok(std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS)));
    }
    s.trim()
        .parse()
        .map_err(|_| format!("{s:?}: not a number of workers (try 2, 4, auto)"))
}

/// Reads sizes such as `512KiB`, `4MiB`, `1GiB`, `64k` or plain bytes.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("not a size: {s:?} (try 65536, 512KiB, 4MiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("unknown unit in {s:?} (use B, KiB, MiB or GiB)")),
    };
    n.checked_mul(1 << shift)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| format!("size out of range: {s:?}"))
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
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert!(parse_size("4 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
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
        let bad_origin = Config {
            allowed_origins: vec!["https://ok.example".into(), "https://x/y".into()],
            ..Config::default()
        };
        let err = bad_origin.validate().unwrap_err().to_string();
        assert!(err.starts_with("--allowed-origin \"https://x/y\""), "{err}");
        let good_origins = Config {
            allowed_origins: vec!["*".into(), "null".into(), "https://*.example.com".into()],
            ..Config::default()
        };
        assert!(good_origins.validate().is_ok());
        for bad in ["", "a b", "chat,"] {
            let c = Config {
                protocols: vec![bad.into()],
                ..Config::default()
            };
            assert!(c.validate().is_err(), "{bad:?}");
        }
        let zero_per_ip = Config {
            max_per_ip: Some(0),
            ..Config::default()
        };
        assert!(zero_per_ip.validate().is_err());
        let unpaired = Config {
            tls_certs: vec!["a.crt".into()],
            ..Config::default()
        };
        assert!(unpaired.validate().is_err());
        for prefix in ["", "a b", "x\n"] {
            let c = Config {
                redis_prefix: prefix.into(),
                ..Config::default()
            };
            assert!(c.validate().is_err(), "{prefix:?}");
        }
        let zero_ping = Config {
            redis_ping_interval: Duration::ZERO,
            ..Config::default()
        };
        assert!(zero_ping.validate().is_err());
    }

    #[test]
    fn defaults() {
        let c = Config::default();
        assert_eq!(c.port, 9001);
        assert_eq!(c.max_message_size, 16 << 20);
        assert_eq!(c.max_head_size, 8192);
        assert!(c.protocols.is_empty());
        assert_eq!(c.max_backlog, 4 << 20);
        assert_eq!(c.slow_consumer, SlowConsumer::Close);
        assert_eq!(c.send_timeout, Duration::from_secs(30));
        assert_eq!(c.ping_interval, Duration::from_secs(30));
        assert_eq!(c.pong_timeout, Duration::from_secs(10));
        assert!(c.allowed_origins.is_empty());
        assert_eq!(c.max_per_ip, None);
        assert!(c.tls_certs.is_empty() && !c.tls_allow_plain && c.tls_reload.is_none());
        assert_eq!(c.tls_handshakes_per_turn, 16);
        assert_eq!(c.redis, None);
        assert_eq!(c.redis_prefix, "wsloop");
        assert_eq!(c.redis_buffer, 16 << 20);
        assert_eq!(c.redis_ping_interval, Duration::from_secs(5));
        assert_eq!(c.bind, BindAddr::Ip([127, 0, 0, 1].into()));
        assert_eq!(c.unix_mode, 0o660);
    }
}
