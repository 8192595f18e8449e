//! `--redis redis://[[user]:password@]host[:port][/db]`: the URL form Redis clients share
//! (IANA `redis` scheme; host, port and db as in RFC 3986 §3.2), read by hand in a few lines.

use std::fmt;

/// Redis's own port when the URL names none.
pub const DEFAULT_PORT: u16 = 6379;

/// Where the Redis server is and how to log in. `Debug` and `Display` mask the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// A host name, an IPv4 address, or an IPv6 address without its brackets.
    pub host: String,
    pub port: u16,
    /// `AUTH user password` (Redis 6 ACLs) when set, else `AUTH password`.
    pub user: Option<String>,
    pub password: Option<String>,
    /// Parsed for the clients that share URLs with us; pub/sub channels are not per database
    /// (Redis docs, "Pub/Sub": "Pub/Sub has no relation to the key space"), so it is not sent.
    pub db: u32,
}

/// Why a `--redis` value is not a Redis URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UrlError {
    /// Not `redis://` (`rediss://`, TLS, is not spoken yet).
    Scheme,
    /// No host between `//` (and any `user:password@`) and the port or path.
    MissingHost,
    /// A host with a byte no host name or address has, or an unclosed `[`.
    BadHost,
    /// The port is not a number from 1 to 65535.
    BadPort,
    /// The path is not `/` followed by a database number.
    BadDb,
    /// A `%` not followed by two hex digits in the user or password.
    BadEscape,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UrlError::Scheme => "not a redis:// URL (rediss:// is not supported)",
            UrlError::MissingHost => "no host in the URL",
            UrlError::BadHost => "not a host name or address",
            UrlError::BadPort => "the port is not 1-65535",
            UrlError::BadDb => "the path is not /DB (a database number)",
            UrlError::BadEscape => "a % escape is not two hex digits",
        })
    }
}

impl std::error::Error for UrlError {}

impl RedisUrl {
    pub fn parse(s: &str) -> Result<RedisUrl, UrlError> {
        let rest = s
            .get(..8)
            .filter(|p| p.eq_ignore_ascii_case("redis://"))
            .map(|_| &s[8..])
            .ok_or(UrlError::Scheme)?;
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (u, p) = match info.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (info, None),
                };
                let u = Some(decode(u)?).filter(|u| !u.is_empty());
                let p = p.map(decode).transpose()?;
                // `redis://secret@host`: a lone userinfo is the password, as redis-cli reads it.
                match (u, p) {
                    (Some(u), None) => (None, Some(u)),
                    (u, p) => (u, p),
                }
            }
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let end = v6.find(']').ok_or(UrlError::BadHost)?;
            let host = &v6[..end];
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(UrlError::BadHost);
            }
            (host, port_after(&v6[end + 1..])?)
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, parse_port(p)?),
                None => (hostport, DEFAULT_PORT),
            }
        };
        if host.is_empty() {
            return Err(UrlError::MissingHost);
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
        {
            return Err(UrlError::BadHost);
        }
        let db = match path {
            "" | "/" => 0,
            p => p
                .strip_prefix('/')
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse().ok())
                .ok_or(UrlError::BadDb)?,
        };
        Ok(RedisUrl {
            host: host.to_string(),
            port,
            user,
            password,
            db,
        })
    }

    /// `host:port` as a socket address string (brackets for IPv6).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// For clap: `--redis URL`.
pub fn parse_redis_url(s: &str) -> Result<RedisUrl, String> {
    RedisUrl::parse(s).map_err(|e| format!("{e} (try redis://[:password@]host:port[/db])"))
}

/// `s` with any password replaced by `********`, for `--print-config` and logs.
pub fn mask_password(s: &str) -> String {
    match RedisUrl::parse(s) {
        Ok(u) if u.password.is_some() => u.to_string(),
        _ => s.to_string(),
    }
}

fn port_after(s: &str) -> Result<u16, UrlError> {
    match s {
        "" => Ok(DEFAULT_PORT),
        p => parse_port(p.strip_prefix(':').ok_or(UrlError::BadHost)?),
    }
}

fn parse_port(p: &str) -> Result<u16, UrlError> {
    if p.is_empty() {
        return Ok(DEFAULT_PORT);
    }
    p.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| p.parse::<u16>().ok())
        .flatten()
        .filter(|&p| p != 0)
        .ok_or(UrlError::BadPort)
}

/// RFC 3986 §2.1 percent-decoding (a password may hold `@`, `:` or `/` written as `%40`...).
fn decode(s: &str) -> Result<String, UrlError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or(UrlError::BadEscape)?;
            let hex = std::str::from_utf8(hex).map_err(|_| UrlError::BadEscape)?;
            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(UrlError::BadEscape);
            }
            out.push(u8::from_str_radix(hex, 16).map_err(|_| UrlError::BadEscape)?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError::BadEscape)
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("redis://")?;
        match (&self.user, &self.password) {
            (Some(u), Some(_)) => write!(f, "{u}:********@")?,
            (Some(u), None) => write!(f, "{u}@")?,
            (None, Some(_)) => f.write_str(":********@")?,
            (None, None) => {}
        }
        write!(f, "{}", self.authority())?;
        if self.db != 0 {
            write!(f, "/{}", self.db)?;
        }
        Ok(())
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let ok = |s: &str, host: &str, port: u16, user: Option<&str>, pw: Option<&str>, db: u32| {
            let u = RedisUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(
                (
                    u.host.as_str(),
                    u.port,
                    u.user.as_deref(),
                    u.password.as_deref(),
                    u.db
                ),
                (host, port, user, pw, db),
                "{s}"
            );
        };
        ok("redis://127.0.0.1:6380", "127.0.0.1", 6380, None, None, 0);
        ok("redis://localhost", "localhost", 6379, None, None, 0);
        ok(
            "REDIS://cache.internal:7000/",
            "cache.internal",
            7000,
            None,
            None,
            0,
        );
        ok(
            "redis://:s3cret@10.0.0.5:6379/2",
            "10.0.0.5",
            6379,
            None,
            Some("s3cret"),
            2,
        );
        ok(
            "redis://alice:pw@h:1/15",
            "h",
            1,
            Some("alice"),
            Some("pw"),
            15,
        );
        ok("redis://justpw@h", "h", 6379, None, Some("justpw"), 0);
        ok("redis://:p%40ss%3Aw@h", "h", 6379, None, Some("p@ss:w"), 0);
        ok("redis://:a@b@h", "h", 6379, None, Some("a@b"), 0);
        ok("redis://[::1]:6390/3", "::1", 6390, None, None, 3);
        ok("redis://[::1]", "::1", 6379, None, None, 0);
        ok("redis://h:", "h", 6379, None, None, 0);
        let bad = |s: &str, want: UrlError| assert_eq!(RedisUrl::parse(s), Err(want), "{s}");
        bad("", UrlError::Scheme);
        bad("http://h:6379", UrlError::Scheme);
        bad("rediss://h:6379", UrlError::Scheme);
        bad("h:6379", UrlError::Scheme);
        bad("redis://", UrlError::MissingHost);
        bad("redis://:pw@:6379", UrlError::MissingHost);
        bad("redis://h:0", UrlError::BadPort);
        bad("redis://h:65536", UrlError::BadPort);
        bad("redis://h:+1", UrlError::BadPort);
        bad("redis://h:x", UrlError::BadPort);
        bad("redis://h/x", UrlError::BadDb);
        bad("redis://h/1/2", UrlError::BadDb);
        bad("redis://h/-1", UrlError::BadDb);
        bad("redis://h?db=1", UrlError::BadDb);
        bad("redis://[::1", UrlError::BadHost);
        bad("redis://[nope]", UrlError::BadHost);
        bad("redis://[::1]x", UrlError::BadHost);
        bad("redis://h st", UrlError::BadHost);
        bad("redis://:%4@h", UrlError::BadEscape);
        bad("redis://:%zz@h", UrlError::BadEscape);
    }

    #[test]
    fn passwords_never_show() {
        let u = RedisUrl::parse("redis://alice:s3cret@h:7000/2").unwrap();
        assert_eq!(u.to_string(), "redis://alice:********@h:7000/2");
        assert!(!format!("{u:?}").contains("s3cret"));
        assert_eq!(
            mask_password("redis://:s3cret@[::1]:1"),
            "redis://:********@[::1]:1"
        );
        assert_eq!(mask_password("redis://h:1"), "redis://h:1");
        assert_eq!(u.authority(), "h:7000");
    }
}
