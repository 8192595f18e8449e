//! `wsloop client URL`: a WebSocket client for scripts and tests, built on the crate's own
//! codec in the client role ([`Connection`] with [`Role::Client`]).
//!
//! Design: the connect and the opening handshake are blocking, each bounded by a deadline;
//! then one `mio::Poll` watches the socket, and a thread reads stdin lines into a bounded
//! channel and wakes the poll with a `mio::Waker`. The thread keeps stdin handling the same
//! for pipes, terminals, regular files and `/dev/null` (epoll refuses regular files).

use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::config::parse_duration;
use crate::connection::{Connection, Event, MessageKind};
use crate::deflate::{self, Agreed, DeflateConfig, DeflateMode, PerMessage};
use crate::error::ProtocolError;
use crate::frame::{random_mask, Role};
use crate::handshake::accept_key;
use crate::transport::ClientTransport;

/// Exit statuses of `wsloop client`, also listed in its `--help`.
pub mod exit {
    /// Stdin ended and the server answered our close, or `--count` messages arrived.
    pub const OK: i32 = 0;
    /// No connection, the upgrade was refused or malformed, or a local I/O error.
    pub const FAILED: i32 = 1;
    /// A bad command line or URL.
    pub const USAGE: i32 = 2;
    /// An abnormal close (a code other than 1000/1001, a protocol error, or too few messages).
    pub const ABNORMAL_CLOSE: i32 = 3;
    /// The TCP connection dropped without a close frame.
    pub const DROPPED: i32 = 4;
    /// Timed out.
    pub const TIMEOUT: i32 = 5;
}

const HELP_AFTER: &str = "\
Each stdin line (without its newline) is sent as one message; each message received is written
to stdout as is (binary ones as raw bytes, not hex) followed by a newline, and stdout is flushed
per message. When stdin ends the client sends a close (1000) and waits up to 3s for the server's;
with --count or --no-close it keeps reading instead.

Exit status:
  0  done: stdin ended and the server closed normally, or --count messages arrived
  1  could not connect, the server refused the upgrade, or a local I/O error
  2  bad command line or URL
  3  abnormal close: a close code other than 1000/1001 (printed as `closed by server: CODE
     REASON`), a protocol error by the server, or a close before --count messages
  4  the TCP connection dropped without a close frame
  5  timed out (--timeout, or the 3s wait for the server's close)";

/// Flags of `wsloop client`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = HELP_AFTER)]
pub struct ClientArgs {
    /// ws[s]://HOST[:PORT][/PATH][?QUERY] to connect to; HOST is a name, IPv4 or [IPv6].
    pub url: String,

    /// wss://: trust the PEM certificate(s) in FILE instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,

    /// wss://: accept any server certificate (for loopback tests with a throwaway one).
    #[arg(long)]
    pub insecure: bool,

    /// Send stdin lines as binary messages instead of text.
    #[arg(long)]
    pub binary: bool,

    /// Subprotocol to offer (repeatable or comma-separated), in order of preference.
    #[arg(long = "protocol", value_delimiter = ',')]
    pub protocols: Vec<String>,

    /// Extra request header, `Name: value` (repeatable); replaces a default header of that name.
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,

    /// Exit 0 once N messages have arrived; stdin ending first does not close the connection.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Give up (exit 5) if connect and handshake take longer; with --count or --no-close,
    /// the limit for the whole run. Without it the handshake is bounded by 10s.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// When stdin ends, keep reading until the server closes (or --count, or --timeout).
    #[arg(long, short = 'n')]
    pub no_close: bool,

    /// Largest message accepted from the server, in bytes; larger ones close with 1009.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_message_size: usize,

    /// Print the connection, the negotiated subprotocol and the close to stderr.
    #[arg(long, short = 'v')]
    pub verbose: bool,

    /// Offer permessage-deflate (RFC 7692) and, if the server agrees, compress messages of
    /// 64 bytes or more and inflate the server's.
    #[arg(long)]
    pub deflate: bool,
}

/// What `wsloop client --deflate` offers: context kept both ways if the server allows, a
/// 32 KiB window (any server window accepted), and any window the server asks of us.
fn client_deflate() -> DeflateConfig {
    DeflateConfig {
        mode: DeflateMode::Dedicated,
        window_bits: 15,
        client_window_bits: 15,
        ..DeflateConfig::default()
    }
}

/// Bound on connect plus handshake when `--timeout` is not given.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the server's close frame once we sent ours.
const CLOSE_WAIT: Duration = Duration::from_secs(3);
/// Largest response head accepted.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Stdin lines are taken from the reader thread only while less than this waits to be sent.
const HIGH_WATER: usize = 1024 * 1024;

/// Why the client stops early: the exit status and a one-line message for stderr.
#[derive(Debug)]
struct Failure {
    code: i32,
    message: String,
}

fn failure(code: i32, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

/// Runs the client; returns the process exit code.
pub fn run(args: ClientArgs) -> i32 {
    match run_client(&args) {
        Ok(code) => code,
        Err(f) => {
            eprintln!("wsloop client: {}", f.message);
            f.code
        }
    }
}

/// A parsed `ws://` or `wss://` URL (RFC 6455 §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsUrl {
    /// `wss://`: TLS to the server.
    pub tls: bool,
    /// The host, without the brackets of an IPv6 literal.
    pub host: String,
    pub port: u16,
    /// Path and query: the request target.
    pub resource: String,
}

impl WsUrl {
    /// The scheme's own port (RFC 6455 §3): 443 for `wss://`, 80 for `ws://`.
    pub fn default_port(&self) -> u16 {
        if self.tls {
            443
        } else {
            80
        }
    }

    /// The `Host` header: the port only when it is not the scheme's default.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for WsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let scheme = if self.tls { "wss" } else { "ws" };
        write!(f, "{scheme}://{host}:{}{}", self.port, self.resource)
    }
}

/// Parses `ws[s]://HOST[:PORT][/PATH][?QUERY]`.
pub fn parse_url(s: &str) -> Result<WsUrl, String> {
    let bad = |why: &str| format!("bad URL {s:?}: {why}");
    let scheme_end = s
        .find("://")
        .ok_or_else(|| bad("expected ws://HOST[:PORT]/PATH"))?;
    let scheme = &s[..scheme_end];
    let tls = scheme.eq_ignore_ascii_case("wss");
    if !tls && !scheme.eq_ignore_ascii_case("ws") {
        return Err(bad("the scheme must be ws:// or wss://"));
    }
    let rest = &s[scheme_end + 3..];
    if rest.contains('#') {
        return Err(bad("a WebSocket URL has no #fragment (RFC 6455 §3)"));
    }
    if rest.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(bad("spaces and control characters must be percent-encoded"));
    }
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, resource) = rest.split_at(split);
    if authority.contains('@') {
        return Err(bad("user information is not supported"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let close = v6.find(']').ok_or_else(|| bad("unclosed [ in host"))?;
        let host = &v6[..close];
        host.parse::<Ipv6Addr>()
            .map_err(|_| bad("not an IPv6 address inside [ ]"))?;
        let after = &v6[close + 1..];
        let port = match after {
            "" => None,
            p if p.starts_with(':') => Some(&p[1..]),
            _ => return Err(bad("unexpected text after ]")),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err(bad(
                    "an IPv6 host must be in brackets, as in ws://[::1]:9001/",
                ))
            }
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        None if tls => 443,
        None => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(bad("the port must be a number from 1 to 65535")),
        },
    };
    let resource = if resource.starts_with('/') {
        resource.to_string()
    } else {
        format!("/{resource}")
    };
    Ok(WsUrl {
        tls,
        host: host.to_string(),
        port,
        resource,
    })
}

/// Splits a `--header` argument, `Name: value`, checking that it cannot break the request.
pub fn parse_header_arg(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("bad --header {s:?}: expected 'Name: value'"))?;
    let name = name.trim();
    let value = value.trim();
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!("bad --header {s:?}: not a valid header name"));
    }
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(format!("bad --header {s:?}: line breaks are not allowed"));
    }
    Ok((name.to_string(), value.to_string()))
}

/// A fresh `Sec-WebSocket-Key`: base64 of 16 random bytes (§4.1), from the kernel's CSPRNG.
pub fn random_key() -> String {
    let mut raw = [0u8; 16];
    for chunk in raw.chunks_mut(4) {
        chunk.copy_from_slice(&random_mask());
    }
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// The opening handshake request (§4.1) and the key its answer must be checked against.
#[derive(Debug)]
pub struct Request {
    pub bytes: Vec<u8>,
    /// The `Sec-WebSocket-Key` sent: ours, or one given with `--header`.
    pub key: String,
}

/// Builds the upgrade request. A header in `extra` replaces a default one of the same name.
pub fn build_request(
    url: &WsUrl,
    key: &str,
    protocols: &[String],
    extra: &[(String, String)],
) -> Request {
    let mut headers: Vec<(String, String)> = vec![
        ("Host".into(), url.host_header()),
        ("Upgrade".into(), "websocket".into()),
        ("Connection".into(), "Upgrade".into()),
        ("Sec-WebSocket-Key".into(), key.into()),
        ("Sec-WebSocket-Version".into(), "13".into()),
    ];
    if !protocols.is_empty() {
        headers.push(("Sec-WebSocket-Protocol".into(), protocols.join(", ")));
    }
    headers.retain(|(n, _)| !extra.iter().any(|(e, _)| e.eq_ignore_ascii_case(n)));
    headers.extend(extra.iter().cloned());
    let key = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Sec-WebSocket-Key"))
        .map_or_else(String::new, |(_, v)| v.clone());
    let mut text = format!("GET {} HTTP/1.1\r\n", url.resource);
    for (n, v) in &headers {
        text.push_str(n);
        text.push_str(": ");
        text.push_str(v);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    Request {
        bytes: text.into_bytes(),
        key,
    }
}

/// The server's answer to the upgrade request, once its head is complete.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// 101 and every check of §4.1 passed. `head_len` bytes are the head; the rest are frames.
    Accepted {
        head_len: usize,
        protocol: Option<String>,
    },
    /// Any other status: the caller reads the body for the reason.
    Refused {
        head_len: usize,
        status: u16,
        reason: String,
        content_length: Option<usize>,
    },
}

/// Checks the response head in `buf` (§4.1, "the client MUST validate the server's response").
/// `Ok(None)` means the head is not complete yet.
pub fn check_response(buf: &[u8], key: &str, offered: &[String]) -> Result<Option<Answer>, String> {
    Ok(check_response_with(buf, key, offered, None)?.map(|(answer, _)| answer))
}

/// [`check_response`] after offering permessage-deflate with `deflate`: also the agreement,
/// if the server accepted the offer (RFC 7692 §7.1: an answer not matching it fails).
pub fn check_response_with(
    buf: &[u8],
    key: &str,
    offered: &[String],
    deflate: Option<&DeflateConfig>,
) -> Result<Option<(Answer, Option<Agreed>)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("not an HTTP response: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let values = |name: &str| {
        resp.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
            .collect::<Vec<_>>()
    };
    let has_token = |name: &str, token: &str| {
        values(name)
            .iter()
            .flat_map(|v| v.split(',').map(str::trim).collect::<Vec<_>>())
            .any(|t| t.eq_ignore_ascii_case(token))
    };
    if status != 101 {
        let content_length = values("Content-Length")
            .first()
            .and_then(|v| v.parse().ok());
        let refused = Answer::Refused {
            head_len,
            status,
            reason: resp.reason.unwrap_or("").to_string(),
            content_length,
        };
        return Ok(Some((refused, None)));
    }
    if !has_token("Upgrade", "websocket") {
        return Err("the 101 response lacks `Upgrade: websocket`".into());
    }
    if !has_token("Connection", "Upgrade") {
        return Err("the 101 response lacks `Connection: Upgrade`".into());
    }
    let expected = accept_key(key.as_bytes());
    match values("Sec-WebSocket-Accept").as_slice() {
        [v] if *v == expected => {}
        [] => return Err("the 101 response lacks Sec-WebSocket-Accept".into()),
        _ => return Err("Sec-WebSocket-Accept does not match the key sent".into()),
    }
    let agreed = match (values("Sec-WebSocket-Extensions").as_slice(), deflate) {
        ([], _) => None,
        ([v], Some(cfg)) => {
            Some(deflate::accept_response(v.as_bytes(), cfg).map_err(|e| e.to_string())?)
        }
        (_, None) => return Err("the server chose an extension, but none was offered".into()),
        _ => return Err("more than one Sec-WebSocket-Extensions line".into()),
    };
    let protocol = match values("Sec-WebSocket-Protocol").as_slice() {
        [] => None,
        [p] if offered.iter().any(|o| o == p) => Some(p.clone()),
        [p] => {
            return Err(format!(
                "the server chose subprotocol {p:?}, not one offered"
            ))
        }
        _ => return Err("the server chose more than one subprotocol".into()),
    };
    Ok(Some((Answer::Accepted { head_len, protocol }, agreed)))
}

/// A line (or the end) of stdin, from the reader thread.
enum Input {
    Line(Vec<u8>),
    End,
    Error(io::Error),
}

/// Reads stdin lines on a thread: blocking reads work on every kind of stdin.
fn spawn_stdin_reader(tx: SyncSender<Input>, waker: Arc<Waker>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let stdin = io::stdin();
            let mut r = stdin.lock();
            loop {
                let mut line = Vec::new();
                let input = match r.read_until(b'\n', &mut line) {
                    Ok(0) => Input::End,
                    Ok(_) => {
                        if line.last() == Some(&b'\n') {
                            line.pop();
                        }
                        Input::Line(line)
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Input::Error(e),
                };
                let last = !matches!(input, Input::Line(_));
                if tx.send(input).is_err() {
                    return;
                }
                let _ = waker.wake();
                if last {
                    return;
                }
            }
        })
        .map(|_| ())
}

/// `500ms`, `2s`, `1.5s`: durations as the flags spell them.
fn show(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", (d.as_secs_f64() * 1000.0).round() / 1000.0)
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn run_client(args: &ClientArgs) -> Result<i32, Failure> {
    let start = Instant::now();
    let url = parse_url(&args.url).map_err(|m| failure(exit::USAGE, m))?;
    let extra = args
        .headers
        .iter()
        .map(|h| parse_header_arg(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| failure(exit::USAGE, m))?;
    let protocols: Vec<String> = args
        .protocols
        .iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    let handshake_deadline = start + args.timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT);
    let limit = show(args.timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT));

    let tcp = connect(&url, handshake_deadline, &limit)?;
    let mut stream = if url.tls {
        Blocking::Tls(Box::new(tls_handshake(
            args,
            &url,
            tcp,
            handshake_deadline,
        )?))
    } else {
        Blocking::Plain(tcp)
    };
    let deflate_cfg = client_deflate();
    let offer_deflate = args.deflate
        && !extra
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("Sec-WebSocket-Extensions"));
    let mut extra = extra;
    if offer_deflate {
        extra.push((
            "Sec-WebSocket-Extensions".into(),
            deflate::client_offer(&deflate_cfg),
        ));
    }
    let request = build_request(&url, &random_key(), &protocols, &extra);
    let offered_deflate = offer_deflate.then_some(&deflate_cfg);
    let (protocol, agreed, leftover) = handshake(
        &mut stream,
        &request,
        &protocols,
        offered_deflate,
        handshake_deadline,
    )
    .map_err(|f| match f.code {
        exit::TIMEOUT => failure(
            exit::TIMEOUT,
            format!("timed out after {limit} waiting for the upgrade response"),
        ),
        _ => f,
    })?;
    if args.verbose {
        let chosen = match (&protocol, protocols.is_empty()) {
            (Some(p), _) => format!(" (protocol: {p})"),
            (None, false) => " (no protocol chosen)".to_string(),
            (None, true) => String::new(),
        };
        eprintln!("wsloop client: connected to {url}{chosen}");
        if let Some(a) = &agreed {
            let mut ext = Vec::new();
            a.write_header(&mut ext);
            eprintln!(
                "wsloop client: extensions: {}",
                String::from_utf8_lossy(&ext)
            );
        }
    }

    let local = |e: io::Error| failure(exit::FAILED, format!("I/O error: {e}"));
    stream.tcp().set_nodelay(true).map_err(local)?;
    stream.tcp().set_nonblocking(true).map_err(local)?;
    let sock = match stream {
        Blocking::Plain(tcp) => ClientTransport::new(mio::net::TcpStream::from_std(tcp), None),
        Blocking::Tls(tls) => {
            let rustls::StreamOwned { conn, sock } = *tls;
            ClientTransport::new(mio::net::TcpStream::from_std(sock), Some(conn))
        }
    };
    let overall = match (args.count.is_some() || args.no_close, args.timeout) {
        (true, Some(t)) => Some(start + t),
        _ => None,
    };
    let mut conn = Connection::new(Role::Client, args.max_message_size);
    if let Some(agreed) = agreed {
        conn.set_deflate(PerMessage::dedicated(agreed, deflate_cfg));
    }
    let mut session = Session {
        args,
        conn,
        sock,
        received: 0,
        close_sent: false,
        stdin_done: false,
        peer_close: None,
        protocol_error: None,
        eof: false,
        result: None,
        linger_until: None,
        overall,
        stdout_error: None,
        lines_sent: 0,
    };
    session.main_loop(leftover)
}

/// Connects to the first address of `url` that answers, within the deadline.
fn connect(url: &WsUrl, deadline: Instant, limit: &str) -> Result<TcpStream, Failure> {
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| failure(exit::FAILED, format!("cannot resolve {}: {e}", url.host)))?
        .collect();
    let mut last = None;
    for addr in &addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(addr, left) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some((addr, e)),
        }
    }
    Err(match last {
        Some((addr, e)) if is_timeout(&e) => failure(
            exit::TIMEOUT,
            format!("timed out after {limit} connecting to {addr}"),
        ),
        Some((addr, e)) => failure(exit::FAILED, format!("cannot connect to {addr}: {e}")),
        None if addrs.is_empty() => failure(
            exit::FAILED,
            format!("cannot resolve {}: no addresses", url.host),
        ),
        None => failure(
            exit::TIMEOUT,
            format!("timed out after {limit} connecting to {}", url.host),
        ),
    })
}

/// The connection while the opening handshake is read, blocking: TCP, or TLS over it.
enum Blocking {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Blocking {
    fn tcp(&self) -> &TcpStream {
        match self {
            Blocking::Plain(s) => s,
            Blocking::Tls(s) => &s.sock,
        }
    }
}

impl Read for Blocking {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Blocking::Plain(s) => s.read(buf),
            Blocking::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Blocking {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Blocking::Plain(s) => s.write(buf),
            Blocking::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Blocking::Plain(s) => s.flush(),
            Blocking::Tls(s) => s.flush(),
        }
    }
}

/// `wss://`: the TLS handshake, within the deadline, checking the server's certificate
/// against `--ca` (or the system's roots) unless `--insecure`.
fn tls_handshake(
    args: &ClientArgs,
    url: &WsUrl,
    mut tcp: TcpStream,
    deadline: Instant,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, Failure> {
    let config = crate::tls::client_config(args.ca.as_deref(), args.insecure)
        .map_err(|m| failure(exit::FAILED, m))?;
    let name = rustls::pki_types::ServerName::try_from(url.host.clone())
        .map_err(|_| failure(exit::USAGE, format!("{}: not a TLS server name", url.host)))?;
    let mut conn = rustls::ClientConnection::new(config, name)
        .map_err(|e| failure(exit::FAILED, format!("TLS: {e}")))?;
    while conn.is_handshaking() {
        let left = deadline.saturating_duration_since(Instant::now());
        let step = if left.is_zero() {
            Err(io::ErrorKind::TimedOut.into())
        } else {
            tcp.set_read_timeout(Some(left))
                .and_then(|_| tcp.set_write_timeout(Some(left)))
                .and_then(|_| conn.complete_io(&mut tcp))
        };
        match step {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {
                return Err(failure(exit::TIMEOUT, "timed out in the TLS handshake"))
            }
            Err(e) => return Err(failure(exit::FAILED, format!("TLS handshake: {e}"))),
        }
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// Reads with the socket's read timeout set to what is left before `deadline`.
fn read_until_deadline(s: &mut Blocking, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        s.tcp().set_read_timeout(Some(left))?;
        match s.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// The subprotocol and deflate agreement of an accepted upgrade, and the bytes after its head.
type Upgraded = (Option<String>, Option<Agreed>, Vec<u8>);

/// Sends the upgrade request and checks the answer. Returns the subprotocol chosen and any
/// bytes that followed the head (frames the server sent at once).
fn handshake(
    s: &mut Blocking,
    request: &Request,
    offered: &[String],
    deflate: Option<&DeflateConfig>,
    deadline: Instant,
) -> Result<Upgraded, Failure> {
    let io_fail = |what: &str, e: io::Error| {
        if is_timeout(&e) {
            failure(exit::TIMEOUT, format!("timed out {what}"))
        } else {
            failure(exit::FAILED, format!("{what}: {e}"))
        }
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(failure(exit::TIMEOUT, "timed out"));
    }
    s.tcp()
        .set_write_timeout(Some(left))
        .and_then(|_| s.write_all(&request.bytes))
        .and_then(|_| s.flush())
        .map_err(|e| io_fail("sending the upgrade request", e))?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        match check_response_with(&buf, &request.key, offered, deflate) {
            Ok(Some((Answer::Accepted { head_len, protocol }, agreed))) => {
                return Ok((protocol, agreed, buf.split_off(head_len)));
            }
            Ok(Some((
                Answer::Refused {
                    head_len,
                    status,
                    reason,
                    content_length,
                },
                _,
            ))) => {
                let body = read_body(s, buf.split_off(head_len), content_length, deadline);
                let first = String::from_utf8_lossy(&body)
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .unwrap_or("")
                    .to_string();
                let mut msg = format!("server refused the upgrade: {status} {reason}");
                if !first.is_empty() {
                    msg.push_str(": ");
                    msg.push_str(&first);
                }
                return Err(failure(exit::FAILED, msg));
            }
            Ok(None) if buf.len() > MAX_RESPONSE_HEAD => {
                return Err(failure(exit::FAILED, "the response head is too large"));
            }
            Ok(None) => {}
            Err(m) => return Err(failure(exit::FAILED, format!("bad upgrade response: {m}"))),
        }
        match read_until_deadline(s, &mut chunk, deadline) {
            Ok(0) => {
                return Err(failure(
                    exit::FAILED,
                    "the server closed the connection during the handshake",
                ))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(io_fail("reading the upgrade response", e)),
        }
    }
}

/// Reads (a bounded part of) a refusal's body, for its first line. Best effort.
fn read_body(
    s: &mut Blocking,
    mut body: Vec<u8>,
    content_length: Option<usize>,
    deadline: Instant,
) -> Vec<u8> {
    const CAP: usize = 4096;
    let want = content_length.unwrap_or(CAP).min(CAP);
    let deadline = deadline.min(Instant::now() + Duration::from_secs(1));
    let mut chunk = [0u8; 1024];
    while body.len() < want && !body.contains(&b'\n') {
        match read_until_deadline(s, &mut chunk, deadline) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(want);
    body
}

const SOCKET: Token = Token(0);
const WAKE: Token = Token(1);

/// The connection after the handshake, and what has happened on it so far.
struct Session<'a> {
    args: &'a ClientArgs,
    conn: Connection,
    sock: ClientTransport,
    received: u64,
    /// Our close frame is queued.
    close_sent: bool,
    stdin_done: bool,
    /// The server's close frame: code and reason.
    peer_close: Option<(Option<u16>, String)>,
    /// The server broke the protocol; the codec queued a close frame.
    protocol_error: Option<ProtocolError>,
    /// The TCP connection ended (EOF, reset or a write error).
    eof: bool,
    /// The exit status, once decided; the loop may still linger to finish the close.
    result: Option<i32>,
    linger_until: Option<Instant>,
    /// The limit for the whole run (`--timeout` with `--count` or `--no-close`).
    overall: Option<Instant>,
    stdout_error: Option<io::Error>,
    lines_sent: u64,
}

impl Session<'_> {
    fn main_loop(&mut self, mut leftover: Vec<u8>) -> Result<i32, Failure> {
        let local = |e: io::Error| failure(exit::FAILED, format!("I/O error: {e}"));
        let mut poll = Poll::new().map_err(local)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE).map_err(local)?);
        poll.registry()
            .register(
                &mut self.sock.socket,
                SOCKET,
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(local)?;
        let (tx, rx) = mpsc::sync_channel(256);
        // Keep a handle here: the waker's eventfd must outlive the thread, or a wake sent
        // just before the thread ends is lost when the last handle closes it.
        spawn_stdin_reader(tx, waker.clone()).map_err(local)?;
        let mut events = Events::with_capacity(16);
        let mut buf = vec![0u8; 64 * 1024];
        if !leftover.is_empty() {
            self.feed(&mut leftover)?;
        }
        // TLS may hold decrypted bytes that no readiness event will announce.
        self.read_all(&mut buf)?;
        loop {
            if let Some(code) = self.decide() {
                return Ok(code);
            }
            let more_input = self.pump_stdin(&rx)?;
            let flushed = self.flush();
            if let Some(code) = self.decide() {
                return Ok(code);
            }
            let now = Instant::now();
            let wake_at = [self.linger_until, self.overall]
                .into_iter()
                .flatten()
                .min();
            let mut timeout = wake_at.map(|t| t.saturating_duration_since(now));
            if more_input && flushed {
                timeout = Some(Duration::ZERO);
            }
            if let Err(e) = poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(local(e));
                }
            }
            if events.iter().any(|e| e.token() == SOCKET) {
                self.read_all(&mut buf)?;
            }
        }
    }

    /// Reads until the socket would block, feeding the codec.
    fn read_all(&mut self, buf: &mut [u8]) -> Result<(), Failure> {
        while !self.eof {
            match self.sock.read(buf) {
                Ok(0) => self.eof = true,
                Ok(n) => self.feed(&mut buf[..n])?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.eof = true,
            }
        }
        Ok(())
    }

    /// Hands bytes to the codec and prints the messages (up to `--count`).
    fn feed(&mut self, bytes: &mut [u8]) -> Result<(), Failure> {
        let count = self.args.count;
        let received = &mut self.received;
        let peer_close = &mut self.peer_close;
        let protocol_error = &mut self.protocol_error;
        let stdout_error = &mut self.stdout_error;
        let mut out = io::stdout().lock();
        self.conn
            .receive(bytes, Instant::now(), &mut |_, ev| match ev {
                Event::Message(_, data) => {
                    if count.is_some_and(|n| *received >= n) || stdout_error.is_some() {
                        return;
                    }
                    *received += 1;
                    let r = out
                        .write_all(&data)
                        .and_then(|_| out.write_all(b"\n"))
                        .and_then(|_| out.flush());
                    if let Err(e) = r {
                        *stdout_error = Some(e);
                    }
                }
                Event::Closed { code, reason } => {
                    *peer_close = Some((code, reason.to_string()));
                }
                Event::Failed(e) => *protocol_error = Some(e),
                Event::Ping(_) | Event::Pong(_) => {}
            });
        match self.stdout_error.take() {
            Some(e) => Err(failure(exit::FAILED, format!("writing stdout: {e}"))),
            None => Ok(()),
        }
    }

    /// Takes stdin lines and sends them while little is waiting to be written. Returns true
    /// when it stopped with input possibly left (the outbox was full).
    fn pump_stdin(&mut self, rx: &Receiver<Input>) -> Result<bool, Failure> {
        while !self.stdin_done && !self.close_sent && self.result.is_none() {
            if !self.conn.is_open() {
                return Ok(false);
            }
            if self.conn.out.len() >= HIGH_WATER {
                return Ok(true);
            }
            match rx.try_recv() {
                Ok(Input::Line(line)) => {
                    self.lines_sent += 1;
                    let kind = if self.args.binary {
                        MessageKind::Binary
                    } else if std::str::from_utf8(&line).is_ok() {
                        MessageKind::Text
                    } else {
                        return Err(failure(
                            exit::FAILED,
                            format!(
                                "stdin line {} is not UTF-8 (use --binary to send bytes)",
                                self.lines_sent
                            ),
                        ));
                    };
                    self.conn.send(kind, &line);
                }
                Ok(Input::End) | Err(TryRecvError::Disconnected) => {
                    self.stdin_done = true;
                    if self.args.count.is_none() && !self.args.no_close {
                        self.start_close();
                    }
                }
                Ok(Input::Error(e)) => {
                    return Err(failure(exit::FAILED, format!("reading stdin: {e}")))
                }
                Err(TryRecvError::Empty) => return Ok(false),
            }
        }
        Ok(false)
    }

    /// Queues our close (1000). Messages the server sent before it sees our close (echoes of
    /// the last lines) are still delivered by the codec until the server's close arrives.
    fn start_close(&mut self) {
        if self.close_sent || !self.conn.is_open() {
            return;
        }
        self.conn.close(1000, "", Instant::now());
        self.close_sent = true;
        self.linger_until = Some(Instant::now() + CLOSE_WAIT);
    }

    /// Writes what is pending. True when nothing is left.
    fn flush(&mut self) -> bool {
        if self.eof {
            return false;
        }
        match self.sock.flush(&mut self.conn.out) {
            Ok(done) => done,
            Err(_) => {
                // The peer is gone; what it sent before going is still read below.
                let mut buf = vec![0u8; 64 * 1024];
                let _ = self.read_all(&mut buf);
                self.eof = true;
                false
            }
        }
    }

    /// Says whether the run is over, and with which status; prints why when it is not 0.
    fn decide(&mut self) -> Option<i32> {
        let now = Instant::now();
        let verbose = self.args.verbose;
        if let Some(n) = self.args.count {
            if self.received >= n && self.result.is_none() {
                self.result = Some(exit::OK);
                self.start_close();
                self.linger_until = Some(now + CLOSE_WAIT);
            }
        }
        if let Some(e) = self.protocol_error.take() {
            if self.result.is_none() {
                eprintln!("wsloop client: closing with {}: {e}", e.close_code());
                self.result = Some(exit::ABNORMAL_CLOSE);
                self.linger_until = Some(now + CLOSE_WAIT);
            }
        }
        if let Some((code, reason)) = &self.peer_close {
            if self.result.is_none() {
                let shown = match code {
                    Some(c) if reason.is_empty() => c.to_string(),
                    Some(c) => format!("{c} {reason}"),
                    None => "no status code".to_string(),
                };
                let normal = matches!(code, None | Some(1000) | Some(1001));
                let short = self.args.count.filter(|&n| self.received < n);
                self.result = Some(if !normal {
                    eprintln!("wsloop client: closed by server: {shown}");
                    exit::ABNORMAL_CLOSE
                } else if let Some(n) = short {
                    eprintln!(
                        "wsloop client: closed by server: {shown}, after {} of {n} messages",
                        self.received
                    );
                    exit::ABNORMAL_CLOSE
                } else {
                    if verbose {
                        eprintln!("wsloop client: closed by server: {shown}");
                    }
                    exit::OK
                });
            }
            // Our close is out, or the codec's answer to theirs is written: done.
            if self.close_sent || self.conn.out.is_empty() || self.eof {
                return self.result;
            }
            self.linger_until = Some(
                self.linger_until
                    .unwrap_or(now + Duration::from_secs(1))
                    .min(now + Duration::from_secs(1)),
            );
        }
        if self.eof {
            if self.result.is_none() {
                eprintln!("wsloop client: the connection dropped without a close frame");
            }
            return Some(self.result.unwrap_or(exit::DROPPED));
        }
        if self.linger_until.is_some_and(|t| now >= t) {
            if self.result.is_none() {
                eprintln!(
                    "wsloop client: timed out after {} waiting for the server's close",
                    show(CLOSE_WAIT)
                );
            }
            return Some(self.result.unwrap_or(exit::TIMEOUT));
        }
        if self.overall.is_some_and(|t| now >= t) {
            if self.result.is_none() {
                let limit = self.args.timeout.map(show).unwrap_or_default();
                match self.args.count {
                    Some(n) => eprintln!(
                        "wsloop client: timed out after {limit}: received {} of {n} messages",
                        self.received
                    ),
                    None => eprintln!(
                        "wsloop client: timed out after {limit} waiting for the server to close"
                    ),
                }
            }
            return Some(self.result.unwrap_or(exit::TIMEOUT));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(host: &str, port: u16, resource: &str) -> WsUrl {
        WsUrl {
            tls: false,
            host: host.into(),
            port,
            resource: resource.into(),
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("ws://127.0.0.1:9001/echo"),
            Ok(url("127.0.0.1", 9001, "/echo"))
        );
        assert_eq!(
            parse_url("ws://example.com"),
            Ok(url("example.com", 80, "/"))
        );
        assert_eq!(parse_url("WS://h:1?x=1"), Ok(url("h", 1, "/?x=1")));
        assert_eq!(
            parse_url("ws://[::1]:8080/room/a?b"),
            Ok(url("::1", 8080, "/room/a?b"))
        );
        assert_eq!(parse_url("ws://[::1]"), Ok(url("::1", 80, "/")));
        let wss = parse_url("wss://h/x").unwrap();
        assert!(wss.tls && wss.port == 443 && wss.host_header() == "h");
        assert_eq!(wss.to_string(), "wss://h:443/x");
        for bad in [
            "http://h/",
            "h:1/",
            "ws://",
            "ws://:80/",
            "ws://h:0/",
            "ws://h:65536/",
            "ws://h:x/",
            "ws://::1/",
            "ws://[::1/",
            "ws://[nope]/",
            "ws://[::1]x/",
            "ws://h/#frag",
            "ws://h/a b",
            "ws://u@h/",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_header_and_display() {
        assert_eq!(url("h", 80, "/").host_header(), "h");
        assert_eq!(url("h", 81, "/").host_header(), "h:81");
        assert_eq!(url("::1", 81, "/").host_header(), "[::1]:81");
        assert_eq!(url("::1", 81, "/x").to_string(), "ws://[::1]:81/x");
    }

    #[test]
    fn header_args() {
        assert_eq!(
            parse_header_arg("X-Test:  a b "),
            Ok(("X-Test".into(), "a b".into()))
        );
        assert!(parse_header_arg("no colon").is_err());
        assert!(parse_header_arg(": v").is_err());
        assert!(parse_header_arg("Bad Name: v").is_err());
        assert!(parse_header_arg("X: a\r\nY: b").is_err());
    }

    #[test]
    fn keys_are_random_base64_of_16_bytes() {
        let a = random_key();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&a)
            .unwrap();
        assert_eq!(raw.len(), 16);
        assert_ne!(a, random_key());
    }

    #[test]
    fn request_has_the_headers_and_overrides_replace_defaults() {
        let u = url("localhost", 9001, "/chat?x");
        let r = build_request(&u, "KEY", &["a".into(), "b".into()], &[]);
        let text = String::from_utf8(r.bytes).unwrap();
        assert!(text.starts_with("GET /chat?x HTTP/1.1\r\n"));
        assert!(text.contains("\r\nHost: localhost:9001\r\n"));
        assert!(text.contains("\r\nSec-WebSocket-Key: KEY\r\n"));
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(text.contains("\r\nSec-WebSocket-Protocol: a, b\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
        assert_eq!(r.key, "KEY");
        let extra = [
            ("sec-websocket-version".to_string(), "8".to_string()),
            ("Sec-WebSocket-Key".to_string(), "OTHER".to_string()),
            ("X-Name".to_string(), "v".to_string()),
        ];
        let r = build_request(&u, "KEY", &[], &extra);
        let text = String::from_utf8(r.bytes).unwrap();
        assert!(!text.contains("Version: 13"));
        assert!(text.contains("\r\nsec-websocket-version: 8\r\n"));
        assert!(!text.contains("Protocol"));
        assert!(text.contains("\r\nX-Name: v\r\n"));
        assert_eq!(r.key, "OTHER");
    }

    fn response(extra: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    #[test]
    fn accepts_a_good_101_and_keeps_the_frames_after_it() {
        let mut r = response("");
        let head_len = r.len();
        r.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
        assert_eq!(
            check_response(&r, KEY, &[]),
            Ok(Some(Answer::Accepted {
                head_len,
                protocol: None
            }))
        );
        for cut in 0..head_len {
            assert_eq!(check_response(&r[..cut], KEY, &[]), Ok(None), "{cut}");
        }
        let offered = ["chat".to_string(), "superchat".to_string()];
        let r = response("Sec-WebSocket-Protocol: superchat\r\n");
        assert!(matches!(
            check_response(&r, KEY, &offered),
            Ok(Some(Answer::Accepted { protocol: Some(p), .. })) if p == "superchat"
        ));
    }

    #[test]
    fn refuses_a_bad_101() {
        let offered = ["chat".to_string()];
        let cases = [
            (
                response("").replace_all("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "AAAA"),
                "match",
            ),
            (
                response("").replace_all("Upgrade: websocket", "Upgrade: h2c"),
                "Upgrade",
            ),
            (
                response("").replace_all("Connection: Upgrade", "Connection: close"),
                "Connection",
            ),
            (
                response("Sec-WebSocket-Protocol: other\r\n"),
                "not one offered",
            ),
            (
                response("Sec-WebSocket-Extensions: permessage-deflate\r\n"),
                "extension",
            ),
            (b"SSH-2.0-OpenSSH\r\n\r\n".to_vec(), "not an HTTP response"),
        ];
        for (r, why) in cases {
            let err = check_response(&r, KEY, &offered).unwrap_err();
            assert!(err.contains(why), "{err} / {why}");
        }
    }

    trait ReplaceAll {
        fn replace_all(self, from: &str, to: &str) -> Vec<u8>;
    }
    impl ReplaceAll for Vec<u8> {
        fn replace_all(self, from: &str, to: &str) -> Vec<u8> {
            String::from_utf8(self)
                .unwrap()
                .replace(from, to)
                .into_bytes()
        }
    }

    #[test]
    fn reports_a_refusal() {
        let r = b"HTTP/1.1 404 Not Found\r\nContent-Length: 35\r\n\r\nno WebSocket endpoint at this path\n";
        assert_eq!(
            check_response(r, KEY, &[]),
            Ok(Some(Answer::Refused {
                head_len: r.len() - 35,
                status: 404,
                reason: "Not Found".into(),
                content_length: Some(35),
            }))
        );
    }

    #[test]
    fn durations_are_shown_as_flags_spell_them() {
        assert_eq!(show(Duration::from_millis(500)), "500ms");
        assert_eq!(show(Duration::from_secs(2)), "2s");
        assert_eq!(show(Duration::from_millis(1500)), "1.5s");
    }
}
