//! The request-target (RFC 9112 §3.2): which of its forms a request uses, and the path,
//! query and authority in it. Pure: the router and the `Origin` check read what this returns.

use std::fmt;

/// A request-target that breaks RFC 9112 §3.2; each is answered with 400 (§3: "Recipients of
/// an invalid request-line SHOULD respond with … 400").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetError {
    /// An empty target.
    Empty,
    /// §3.2: a fragment is never part of a request-target (clients strip it).
    Fragment,
    /// Whitespace, a control byte or DEL: not allowed anywhere in a URI (RFC 3986 §2).
    ControlByte,
    /// §3.2.4: asterisk-form is only for a server-wide `OPTIONS`.
    AsteriskNotOptions,
    /// §3.2.2: absolute-form needs an `http`/`https` URI with a host and no userinfo
    /// (RFC 9110 §4.2.4: userinfo is an error).
    BadAbsoluteForm,
    /// Not origin-form (`/path`), absolute-form or asterisk-form; authority-form is for
    /// `CONNECT`, which this server does not do.
    UnknownForm,
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use TargetError::*;
        f.write_str(match self {
            Empty => "empty request-target",
            Fragment => "request-target with a #fragment",
            ControlByte => "request-target with a control byte or space",
            AsteriskNotOptions => "request-target * is only for OPTIONS",
            BadAbsoluteForm => "absolute request-target needs http(s)://host and no user@",
            UnknownForm => "request-target must start with / (or be http://host/...)",
        })
    }
}

impl std::error::Error for TargetError {}

/// The parts of a valid request-target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target<'a> {
    /// The authority of an absolute-form target; §3.2.2 says the server MUST use it instead
    /// of the `Host` header.
    pub authority: Option<&'a str>,
    /// The path: `/…` (an absolute-form target without one means `/`), or `*`.
    pub path: &'a str,
    /// What follows `?`, without it.
    pub query: Option<&'a str>,
}

/// Splits a request-target into its parts, or names the rule it breaks.
pub fn parse<'a>(method: &str, target: &'a str) -> Result<Target<'a>, TargetError> {
    if target.is_empty() {
        return Err(TargetError::Empty);
    }
    if target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(TargetError::ControlByte);
    }
    if target.contains('#') {
        return Err(TargetError::Fragment);
    }
    if target == "*" {
        if method != "OPTIONS" {
            return Err(TargetError::AsteriskNotOptions);
        }
        return Ok(Target {
            authority: None,
            path: "*",
            query: None,
        });
    }
    let (rest, query) = match target.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (target, None),
    };
    if rest.starts_with('/') {
        return Ok(Target {
            authority: None,
            path: rest,
            query,
        });
    }
    let Some(after) = strip_http_scheme(rest) else {
        return Err(TargetError::UnknownForm);
    };
    let (authority, path) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(TargetError::BadAbsoluteForm);
    }
    Ok(Target {
        authority: Some(authority),
        path,
        query,
    })
}

/// What follows `http://` or `https://` (schemes are case-insensitive, RFC 3986 §3.1).
fn strip_http_scheme(s: &str) -> Option<&str> {
    ["http://", "https://"].iter().find_map(|scheme| {
        let prefix = s.as_bytes().get(..scheme.len())?;
        // The prefix matched is ASCII, so the index is a char boundary.
        prefix
            .eq_ignore_ascii_case(scheme.as_bytes())
            .then(|| &s[scheme.len()..])
    })
}

/// The path of a target that may not have been checked: [`parse`]'s path when it is valid,
/// else everything before `?` or `#` (what the router falls back to, and never routes).
pub fn path_of<'a>(method: &str, target: &'a str) -> &'a str {
    match parse(method, target) {
        Ok(t) => t.path,
        Err(_) => target.split(['?', '#']).next().unwrap_or(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TargetError::*;

    fn ok<'a>(authority: Option<&'a str>, path: &'a str, query: Option<&'a str>) -> Target<'a> {
        Target {
            authority,
            path,
            query,
        }
    }

    #[test]
    fn forms() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, Result<Target<'_>, TargetError>)] = &[
            ("GET", "/", Ok(ok(None, "/", None))),
            ("GET", "/echo?x=1", Ok(ok(None, "/echo", Some("x=1")))),
            ("GET", "/a?", Ok(ok(None, "/a", Some("")))),
            ("GET", "/a?b?c", Ok(ok(None, "/a", Some("b?c")))),
            // §3.2.2: absolute-form MUST be accepted; its authority replaces Host.
            ("GET", "http://h:9001/echo", Ok(ok(Some("h:9001"), "/echo", None))),
            ("POST", "HTTP://h/publish/r?q", Ok(ok(Some("h"), "/publish/r", Some("q")))),
            ("GET", "https://h", Ok(ok(Some("h"), "/", None))),
            ("GET", "http://h?x", Ok(ok(Some("h"), "/", Some("x")))),
            ("GET", "http://[::1]:80/", Ok(ok(Some("[::1]:80"), "/", None))),
            ("OPTIONS", "*", Ok(ok(None, "*", None))),
            ("GET", "", Err(Empty)),
            ("GET", "*", Err(AsteriskNotOptions)),
            ("OPTIONS", "*?x", Err(UnknownForm)),
            ("GET", "/a#frag", Err(Fragment)),
            ("GET", "/a?q#frag", Err(Fragment)),
            ("GET", "/a b", Err(ControlByte)),
            ("GET", "/a\tb", Err(ControlByte)),
            ("GET", "/a\0", Err(ControlByte)),
            ("GET", "/a\x7f", Err(ControlByte)),
            ("GET", "/a\r\n", Err(ControlByte)),
            ("GET", "http://", Err(BadAbsoluteForm)),
            ("GET", "http:///x", Err(BadAbsoluteForm)),
            ("GET", "http://u@h/x", Err(BadAbsoluteForm)),
            ("GET", "ws://h/echo", Err(UnknownForm)),
            ("GET", "echo", Err(UnknownForm)),
            ("CONNECT", "h:443", Err(UnknownForm)),
            ("GET", "é", Err(UnknownForm)),
        ];
        for (method, target, want) in cases {
            assert_eq!(parse(method, target), *want, "{method} {target:?}");
        }
    }

    #[test]
    fn path_of_falls_back_to_the_raw_path() {
        assert_eq!(path_of("GET", "http://h/echo?x"), "/echo");
        assert_eq!(path_of("GET", "/echo#x"), "/echo");
        assert_eq!(path_of("GET", "*"), "*");
    }
}
