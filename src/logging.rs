//! Log output: env_logger's text, or one JSON object per line (`--log-format json`) for log
//! pipelines: `time`, `level`, `target`, `peer`, `message`, then the event's own fields.
//!
//! Most lines start with the peer's address (`127.0.0.1:5000: closed`); in JSON that prefix
//! becomes the `peer` field, so the lines need not know which format they end up in.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;

use clap::ValueEnum;
use log::kv::{Key, Value, VisitSource};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// env_logger's human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether each HTTP request and WebSocket session gets an access line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AccessLog {
    On,
    Off,
}

/// The target access lines are logged under (`RUST_LOG=wsloop::access=off` also hides them).
pub const ACCESS: &str = "wsloop::access";

/// Sets up the logger: `RUST_LOG` picks the level (default `info`), `format` the shape.
pub fn init(format: LogFormat) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let time = buf.timestamp_millis().to_string();
            let line = json_line(&time, record);
            writeln!(buf, "{line}")
        });
    }
    builder.init();
}

/// One record as a JSON object (no newline).
pub fn json_line(time: &str, record: &log::Record<'_>) -> String {
    let message = record.args().to_string();
    let mut fields = Fields(String::new(), false);
    let _ = record.key_values().visit(&mut fields);
    let (peer, message) = match split_peer(&message) {
        Some((peer, rest)) if !fields.1 => (Some(peer), rest),
        _ => (None, message.as_str()),
    };
    let mut out = String::with_capacity(message.len() + 128);
    out.push_str("{\"time\":");
    push_str(&mut out, time);
    out.push_str(",\"level\":");
    push_str(&mut out, record.level().as_str());
    out.push_str(",\"target\":");
    push_str(&mut out, record.target());
    if let Some(peer) = peer {
        out.push_str(",\"peer\":");
        push_str(&mut out, peer);
    }
    out.push_str(",\"message\":");
    push_str(&mut out, message);
    out.push_str(&fields.0);
    out.push('}');
    out
}

/// `ADDR: rest` when ADDR is a socket address (`[::1]:80` included).
fn split_peer(message: &str) -> Option<(&str, &str)> {
    let (head, rest) = message.split_once(": ")?;
    head.parse::<SocketAddr>().ok()?;
    Some((head, rest))
}

/// The event's fields as `,"key":value` (numbers and booleans as such); `.1`: one was `peer`.
struct Fields(String, bool);

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        self.1 |= key.as_str() == "peer";
        self.0.push(',');
        push_str(&mut self.0, key.as_str());
        self.0.push(':');
        if let Some(n) = value.to_u64() {
            let _ = write!(self.0, "{n}");
        } else if let Some(n) = value.to_i64() {
            let _ = write!(self.0, "{n}");
        } else if let Some(b) = value.to_bool() {
            let _ = write!(self.0, "{b}");
        } else {
            push_str(&mut self.0, &value.to_string());
        }
        Ok(())
    }
}

/// A JSON string (RFC 8259 §7): quotes, backslashes and control characters escaped.
pub fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(target: &str, args: std::fmt::Arguments<'_>, kvs: &[(&str, Value<'_>)]) -> String {
        let kvs: Vec<(&str, Value<'_>)> = kvs.to_vec();
        let record = log::Record::builder()
            .args(args)
            .level(log::Level::Info)
            .target(target)
            .key_values(&kvs)
            .build();
        json_line("2026-01-02T03:04:05.678Z", &record)
    }

    #[test]
    fn lines_are_json_with_the_peer_split_off() {
        assert_eq!(
            line("wsloop::server", format_args!("127.0.0.1:5000: 400 bad \"x\"\n\t\u{1}"), &[]),
            "{\"time\":\"2026-01-02T03:04:05.678Z\",\"level\":\"INFO\",\"target\":\"wsloop::server\",\
             \"peer\":\"127.0.0.1:5000\",\"message\":\"400 bad \\\"x\\\"\\n\\t\\u0001\"}"
        );
        assert_eq!(
            line("t", format_args!("listening on ws://[::1]:9001"), &[]),
            "{\"time\":\"2026-01-02T03:04:05.678Z\",\"level\":\"INFO\",\"target\":\"t\",\
             \"message\":\"listening on ws://[::1]:9001\"}"
        );
        assert!(line("t", format_args!("[::1]:80: x"), &[]).contains("\"peer\":\"[::1]:80\""));
        assert!(line("t", format_args!("not an addr: x"), &[])
            .contains("\"message\":\"not an addr: x\""));
    }

    #[test]
    fn fields_keep_their_types() {
        let l = line(
            ACCESS,
            format_args!("1.2.3.4:5 GET / 200"),
            &[
                ("peer", Value::from("1.2.3.4:5")),
                ("status", Value::from(200u16)),
                ("delta", Value::from(-3i64)),
                ("ok", Value::from(true)),
                ("path", Value::from("/a\"b")),
            ],
        );
        assert_eq!(
            l,
            "{\"time\":\"2026-01-02T03:04:05.678Z\",\"level\":\"INFO\",\"target\":\"wsloop::access\",\
             \"message\":\"1.2.3.4:5 GET / 200\",\"peer\":\"1.2.3.4:5\",\"status\":200,\"delta\":-3,\
             \"ok\":true,\"path\":\"/a\\\"b\"}"
        );
    }
}
