//! Which web pages may talk to this server: the `Origin` check against cross-site WebSocket
//! hijacking (RFC 6455 §10.2) and cross-site `POST /publish`.
//!
//! Browsers send `Origin` on every upgrade and cross-site POST; scripts and other non-browser
//! clients usually send none, and they are not the threat (they could forge it anyway). So a
//! request without `Origin` passes; one with an `Origin` must be the server's own origin (the
//! scheme plus its `Host`) or one the operator allowed with `--allowed-origin`. Origins are
//! compared as RFC 6454 §5 tuples: scheme and host case-insensitively, a default port equal to
//! no port. Pure: no sockets, no clock.

use std::fmt;

/// A serialized origin that is not one (RFC 6454 §6.2: `scheme "://" host [ ":" port ]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OriginParseError {
    /// Not `scheme://…`.
    NoScheme,
    /// A path, query or fragment after the host: an origin has none.
    HasPath,
    /// `user@host`: an origin has no userinfo.
    HasUserinfo,
    /// An empty host, or a byte no host name may hold.
    BadHost,
    /// A port that is not 1–65535.
    BadPort,
    /// A `*` anywhere but as the first label of an allow-list entry (`https://*.example.com`).
    BadWildcard,
}

impl fmt::Display for OriginParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use OriginParseError::*;
        f.write_str(match self {
            NoScheme => "not scheme://host[:port]",
            HasPath => "an origin has no path, query or fragment",
            HasUserinfo => "an origin has no user@",
            BadHost => "not a valid host",
            BadPort => "port must be 1-65535",
            BadWildcard => "a wildcard must be the whole first label (https://*.example.com)",
        })
    }
}

/// Why a request's `Origin` was refused; every one is answered with 403.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OriginError {
    /// The origin is neither the server's own nor allowed by `--allowed-origin`.
    CrossOrigin,
    /// `Origin: null` (sandboxed frames, `file:` pages, some redirects) without `--allowed-origin null`.
    Null,
    /// The header is not a serialized origin (or is repeated).
    Malformed(OriginParseError),
}

impl fmt::Display for OriginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OriginError::CrossOrigin => f.write_str("cross-origin request refused"),
            OriginError::Null => f.write_str("Origin null is not allowed"),
            OriginError::Malformed(e) => write!(f, "Origin header is not an origin: {e}"),
        }
    }
}

impl std::error::Error for OriginError {}

/// A tuple origin (RFC 6454 §4), normalised: scheme and host lowercase, a default port as `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    pub port: Option<u16>,
}

impl Origin {
    /// Parses a serialized origin (`https://App.Example:443` → `https://app.example`).
    pub fn parse(s: &str) -> Result<Origin, OriginParseError> {
        let (scheme, rest) = s.split_once("://").ok_or(OriginParseError::NoScheme)?;
        if !valid_scheme(scheme) {
            return Err(OriginParseError::NoScheme);
        }
        let scheme = scheme.to_ascii_lowercase();
        if rest.contains('@') {
            return Err(OriginParseError::HasUserinfo);
        }
        if rest.contains(['/', '?', '#']) {
            return Err(OriginParseError::HasPath);
        }
        let (host, port) = split_authority(rest)?;
        Ok(Origin::new(scheme, host, port))
    }

    /// The origin a request was sent to: `scheme` (`http`, or `https` behind TLS) and the
    /// authority of its `Host` header (RFC 9110 §7.2).
    pub fn of_host(scheme: &str, host: &str) -> Result<Origin, OriginParseError> {
        if host.contains(['/', '?', '#', '@']) {
            return Err(OriginParseError::BadHost);
        }
        let (h, port) = split_authority(host)?;
        Ok(Origin::new(scheme.to_ascii_lowercase(), h, port))
    }

    fn new(scheme: String, host: &str, port: Option<u16>) -> Origin {
        let port = port.filter(|&p| Some(p) != default_port(&scheme));
        Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        }
    }
}

/// The RFC 6454 §6.2 serialization, which [`Origin::parse`] reads back to the same value.
impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// The port a scheme means when none is written (RFC 6454 §4 step 6).
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// RFC 3986 §3.1: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn valid_scheme(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
}

/// Splits `host[:port]` (a bracketed IPv6 literal included) and checks both parts. Host names
/// are what browsers serialize: ASCII (IDNs arrive as punycode), no percent-escapes.
fn split_authority(s: &str) -> Result<(&str, Option<u16>), OriginParseError> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']').ok_or(OriginParseError::BadHost)?;
        let literal = &rest[..end];
        if literal.is_empty()
            || !literal
                .bytes()
                .all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
        {
            return Err(OriginParseError::BadHost);
        }
        let after = &rest[end + 1..];
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or(OriginParseError::BadHost)?),
        };
        (&s[..end + 2], port)
    } else {
        let (host, port) = match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        let host_byte = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_');
        if host.is_empty() || !host.bytes().all(host_byte) {
            return Err(OriginParseError::BadHost);
        }
        (host, port)
    };
    let port = match port {
        None => None,
        Some(p) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|c| c.is_ascii_digit()) {
                return Err(OriginParseError::BadPort);
            }
            match p.parse::<u16>() {
                Ok(n) if n > 0 => Some(n),
                _ => return Err(OriginParseError::BadPort),
            }
        }
    };
    Ok((host, port))
}

/// The origins allowed besides the server's own, parsed once from `--allowed-origin`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    /// `*`: any origin, `null` included.
    pub any: bool,
    /// `null` is allowed.
    pub null: bool,
    /// Exact origins.
    pub exact: Vec<Origin>,
    /// `scheme://*.suffix[:port]`, kept as the origin of `suffix`: any subdomain of it matches.
    pub subdomains: Vec<Origin>,
}

impl OriginPolicy {
    /// Parses the `--allowed-origin` values; an error names the value that is not an origin.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<OriginPolicy, String> {
        let mut policy = OriginPolicy::default();
        for entry in entries {
            let entry = entry.as_ref();
            let bad = |e: OriginParseError| format!("--allowed-origin {entry:?}: {e}");
            match entry {
                "*" => policy.any = true,
                "null" => policy.null = true,
                _ => {
                    let (scheme, rest) = entry
                        .split_once("://")
                        .ok_or(bad(OriginParseError::NoScheme))?;
                    if let Some(suffix) = rest.strip_prefix("*.") {
                        let o = Origin::parse(&format!("{scheme}://{suffix}")).map_err(bad)?;
                        if o.host.starts_with('[') {
                            return Err(bad(OriginParseError::BadWildcard));
                        }
                        policy.subdomains.push(o);
                    } else if entry.contains('*') {
                        return Err(bad(OriginParseError::BadWildcard));
                    } else {
                        policy.exact.push(Origin::parse(entry).map_err(bad)?);
                    }
                }
            }
        }
        Ok(policy)
    }

    /// Whether `origin` is on the list (the server's own origin is checked by [`check`]).
    pub fn allows(&self, origin: &Origin) -> bool {
        self.any
            || self.exact.contains(origin)
            || self.subdomains.iter().any(|s| is_subdomain(origin, s))
    }
}

/// `a.example.com` and `a.b.example.com` are under `example.com`; `example.com` itself and
/// `evilexample.com` are not.
fn is_subdomain(origin: &Origin, of: &Origin) -> bool {
    origin.scheme == of.scheme
        && origin.port == of.port
        && origin.host.len() > of.host.len() + 1
        && origin.host.ends_with(&of.host)
        && origin.host.as_bytes()[origin.host.len() - of.host.len() - 1] == b'.'
}

/// Checks the `Origin` header values of a request sent to `host` over `scheme`.
///
/// No `Origin` passes (non-browser clients); a repeated one is malformed (RFC 6454 §7.3 allows
/// one). `host` is the `Host` header, or the authority of an absolute-form target.
pub fn check(
    origins: &[&[u8]],
    host: &[u8],
    scheme: &str,
    policy: &OriginPolicy,
) -> Result<(), OriginError> {
    let origin = match origins {
        [] => return Ok(()),
        [one] => std::str::from_utf8(one)
            .map_err(|_| OriginError::Malformed(OriginParseError::BadHost))?
            .trim_ascii(),
        _ => return Err(OriginError::Malformed(OriginParseError::HasPath)),
    };
    if origin == "null" {
        return if policy.null || policy.any {
            Ok(())
        } else {
            Err(OriginError::Null)
        };
    }
    let origin = Origin::parse(origin).map_err(OriginError::Malformed)?;
    let own = std::str::from_utf8(host)
        .ok()
        .and_then(|h| Origin::of_host(scheme, h.trim_ascii()).ok());
    if own.as_ref() == Some(&origin) || policy.allows(&origin) {
        Ok(())
    } else {
        Err(OriginError::CrossOrigin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(s: &str) -> Origin {
        Origin::parse(s).unwrap()
    }

    #[test]
    fn parse_normalises_case_and_default_ports() {
        let cases: &[(&str, &str)] = &[
            ("http://example.com", "http://example.com"),
            ("HTTP://Example.COM", "http://example.com"),
            ("http://example.com:80", "http://example.com"),
            ("https://example.com:443", "https://example.com"),
            ("http://example.com:443", "http://example.com:443"),
            ("https://example.com:80", "https://example.com:80"),
            ("http://127.0.0.1:9001", "http://127.0.0.1:9001"),
            ("http://[::1]:9001", "http://[::1]:9001"),
            ("http://[::1]", "http://[::1]"),
            ("chrome-extension://abcdef", "chrome-extension://abcdef"),
        ];
        for (input, shown) in cases {
            let parsed = o(input);
            assert_eq!(parsed.to_string(), *shown, "{input}");
            assert_eq!(o(shown), parsed, "{input} round trip");
        }
    }

    #[test]
    fn parse_refuses_what_is_not_an_origin() {
        use OriginParseError::*;
        let cases: &[(&str, OriginParseError)] = &[
            ("", NoScheme),
            ("example.com", NoScheme),
            ("://example.com", NoScheme),
            ("1http://example.com", NoScheme),
            ("http://example.com/", HasPath),
            ("http://example.com/x", HasPath),
            ("http://example.com?q", HasPath),
            ("http://example.com#f", HasPath),
            ("http://user@example.com", HasUserinfo),
            ("http://user:pw@example.com", HasUserinfo),
            ("http://", BadHost),
            ("http://:80", BadHost),
            ("http://exa mple.com", BadHost),
            ("http://exämple.com", BadHost),
            ("http://ex%41mple.com", BadHost),
            ("http://[::1", BadHost),
            ("http://[]", BadHost),
            ("http://[::1]x", BadHost),
            ("http://[zz::1]", BadHost),
            ("http://example.com:", BadPort),
            ("http://example.com:0", BadPort),
            ("http://example.com:65536", BadPort),
            ("http://example.com:+80", BadPort),
            ("http://example.com:80:80", BadPort),
            ("http://example.com:000080", BadPort),
        ];
        for (input, err) in cases {
            assert_eq!(Origin::parse(input), Err(*err), "{input:?}");
        }
    }

    #[test]
    fn allow_list_parses_once_and_names_bad_entries() {
        let p =
            OriginPolicy::parse(&["https://app.example", "https://*.Example.com", "null"]).unwrap();
        assert!(p.null && !p.any);
        assert_eq!(p.exact, vec![o("https://app.example")]);
        assert_eq!(p.subdomains, vec![o("https://example.com")]);
        assert!(OriginPolicy::parse(&["*"]).unwrap().any);
        for bad in [
            "app.example",
            "https://app.example/",
            "https://a.*.example.com",
            "https://*example.com",
            "https://*",
            "https://*.[::1]",
            "*.example.com",
            "",
        ] {
            let err = OriginPolicy::parse(&[bad]).unwrap_err();
            assert!(
                err.starts_with(&format!("--allowed-origin {bad:?}: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn check_table() {
        use OriginError::*;
        let none = OriginPolicy::default();
        let list = OriginPolicy::parse(&[
            "https://app.example",
            "https://*.example.com",
            "http://*.dev.test:8080",
        ])
        .unwrap();
        let null = OriginPolicy::parse(&["null"]).unwrap();
        let any = OriginPolicy::parse(&["*"]).unwrap();
        let host = "127.0.0.1:9001";
        #[rustfmt::skip]
        let cases: &[(&str, &str, &OriginPolicy, Result<(), OriginError>)] = &[
            // Same origin: scheme + Host, case and default port aside.
            ("http://127.0.0.1:9001", host, &none, Ok(())),
            ("HTTP://127.0.0.1:9001", host, &none, Ok(())),
            ("http://localhost", "LOCALHOST", &none, Ok(())),
            ("http://localhost:80", "localhost", &none, Ok(())),
            ("http://localhost", "localhost:80", &none, Ok(())),
            ("http://[::1]:9001", "[::1]:9001", &none, Ok(())),
            // Another port, scheme or host is another origin.
            ("http://127.0.0.1:9002", host, &none, Err(CrossOrigin)),
            ("https://127.0.0.1:9001", host, &none, Err(CrossOrigin)),
            ("http://localhost:9001", host, &none, Err(CrossOrigin)),
            ("http://evil.example", host, &none, Err(CrossOrigin)),
            ("null", host, &none, Err(Null)),
            ("http://evil.example/", host, &none, Err(Malformed(OriginParseError::HasPath))),
            ("garbage", host, &none, Err(Malformed(OriginParseError::NoScheme))),
            // A Host we cannot read matches nothing, but the allow-list still applies.
            ("http://a b", "a b", &none, Err(Malformed(OriginParseError::BadHost))),
            ("http://x.test", "x.test/", &none, Err(CrossOrigin)),
            ("https://app.example", "x/", &list, Ok(())),
            // The allow-list.
            ("https://app.example", host, &list, Ok(())),
            ("https://APP.example:443", host, &list, Ok(())),
            ("http://app.example", host, &list, Err(CrossOrigin)),
            ("https://app.example:8443", host, &list, Err(CrossOrigin)),
            ("https://a.example.com", host, &list, Ok(())),
            ("https://a.b.example.com", host, &list, Ok(())),
            ("https://example.com", host, &list, Err(CrossOrigin)),
            ("https://evilexample.com", host, &list, Err(CrossOrigin)),
            ("https://a.example.com.evil", host, &list, Err(CrossOrigin)),
            ("http://a.example.com", host, &list, Err(CrossOrigin)),
            ("https://a.example.com:444", host, &list, Err(CrossOrigin)),
            ("http://x.dev.test:8080", host, &list, Ok(())),
            ("http://x.dev.test", host, &list, Err(CrossOrigin)),
            ("null", host, &list, Err(Null)),
            ("null", host, &null, Ok(())),
            ("http://evil.example", host, &null, Err(CrossOrigin)),
            ("http://evil.example", host, &any, Ok(())),
            ("null", host, &any, Ok(())),
            ("http://evil.example/x", host, &any, Err(Malformed(OriginParseError::HasPath))),
        ];
        for (origin, host, policy, want) in cases {
            assert_eq!(
                check(&[origin.as_bytes()], host.as_bytes(), "http", policy),
                *want,
                "Origin {origin:?}, Host {host:?}"
            );
        }
    }

    #[test]
    fn no_origin_passes_and_two_do_not() {
        let p = OriginPolicy::default();
        assert_eq!(check(&[], b"h", "http", &p), Ok(()));
        let two: &[&[u8]] = &[b"http://h", b"http://h"];
        assert!(matches!(
            check(two, b"h", "http", &p),
            Err(OriginError::Malformed(_))
        ));
        assert!(check(&[b"\xff"], b"h", "http", &p).is_err());
    }

    #[test]
    fn scheme_is_a_parameter() {
        let p = OriginPolicy::default();
        assert_eq!(check(&[b"https://h"], b"h:443", "https", &p), Ok(()));
        assert_eq!(
            check(&[b"http://h"], b"h", "https", &p),
            Err(OriginError::CrossOrigin)
        );
    }
}
