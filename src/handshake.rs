//! The opening handshake (RFC 6455 §4.2): request heads parsed with `httparse`, the upgrade
//! checked rule by rule, and the `101` (or refusal) written as bytes.
//!
//! Nothing here touches a socket: the caller hands in the bytes it has and gets back either
//! `Partial` ("need more"), a parsed head that borrows those bytes, or the rule that broke.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

use crate::deflate::Agreed;
use crate::error::HandshakeError;
use crate::http::Response;

/// The GUID every server appends to the client's key (§1.3, §4.2.2).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// At most this many header lines are read; more is answered like an oversized head (`431`).
pub const MAX_HEADERS: usize = 64;

/// A parsed request head. Borrows the buffer it was parsed from.
#[derive(Debug)]
pub struct Head<'b> {
    pub method: &'b str,
    /// The request-target as sent, query included.
    pub target: &'b str,
    /// The minor HTTP version: 0 for 1.0, 1 for 1.1.
    pub minor_version: u8,
    pub headers: Vec<(&'b str, &'b [u8])>,
}

/// The outcome of [`parse_head`].
#[derive(Debug)]
pub enum HeadStatus<'b> {
    /// A whole head, and how many bytes of the buffer it took; the rest belongs to the next layer.
    Complete(Head<'b>, usize),
    Partial,
}

/// Parses a request head from `buf`, refusing heads over `max_len` bytes (`431`) even before
/// they are complete, so a peer cannot make us buffer without end.
pub fn parse_head(buf: &[u8], max_len: usize) -> Result<HeadStatus<'_>, HandshakeError> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut raw);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            if n > max_len {
                return Err(HandshakeError::HeadTooLarge);
            }
            let headers = req
                .headers
                .iter()
                .map(|h| (h.name, h.value))
                .collect::<Vec<_>>();
            Ok(HeadStatus::Complete(
                Head {
                    method: req.method.unwrap_or(""),
                    target: req.path.unwrap_or(""),
                    minor_version: req.version.unwrap_or(0),
                    headers,
                },
                n,
            ))
        }
        Ok(httparse::Status::Partial) if buf.len() >= max_len => Err(HandshakeError::HeadTooLarge),
        Ok(httparse::Status::Partial) => Ok(HeadStatus::Partial),
        Err(httparse::Error::TooManyHeaders) => Err(HandshakeError::HeadTooLarge),
        Err(_) => Err(HandshakeError::MalformedHead),
    }
}

impl<'b> Head<'b> {
    /// Every value of the header `name`, in order (a header may be repeated, RFC 9110 §5.3).
    pub fn values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'b [u8]> + 's {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&'b [u8]> {
        self.values(name).next()
    }

    /// True when any value of `name`, read as a comma-separated token list, holds `token`
    /// (case-insensitive, as §4.2.1 says of Upgrade and Connection).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.values(name)
            .flat_map(|v| v.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    }

    /// The path of the target, without the query (absolute-form included, RFC 9112 §3.2.2).
    pub fn path(&self) -> &'b str {
        crate::target::path_of(self.method, self.target)
    }

    /// The query string, without the `?`.
    pub fn query(&self) -> &'b str {
        self.target.split_once('?').map(|(_, q)| q).unwrap_or("")
    }

    /// Whether the client asks for a WebSocket at all; if not, the request is plain HTTP.
    /// A request that carries a WebSocket key or names websocket in Upgrade is a (maybe
    /// broken) upgrade attempt and is judged by the rules of §4.2.1.
    pub fn wants_websocket(&self) -> bool {
        self.get("Sec-WebSocket-Key").is_some() || self.has_token("Upgrade", "websocket")
    }

    /// HTTP/1.1 keeps the connection by default; 1.0 closes it unless asked (RFC 9112 §9.3).
    pub fn keep_alive(&self) -> bool {
        if self.has_token("Connection", "close") {
            false
        } else {
            self.minor_version >= 1 || self.has_token("Connection", "keep-alive")
        }
    }
}

/// What an accepted upgrade agreed on.
#[derive(Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The `Sec-WebSocket-Accept` value.
    pub accept: String,
    /// The subprotocol chosen, if any.
    pub protocol: Option<String>,
}

/// Checks an upgrade request against §4.2.1 and picks a subprotocol from `server_protocols`
/// (the first of the server's own list that the client offered, §4.2.2 (5)).
pub fn accept_upgrade(
    head: &Head<'_>,
    server_protocols: &[String],
) -> Result<Accepted, HandshakeError> {
    if head.method != "GET" {
        return Err(HandshakeError::NotGet);
    }
    if head.minor_version < 1 {
        return Err(HandshakeError::OldHttpVersion);
    }
    if head.get("Host").is_none() {
        return Err(HandshakeError::MissingHost);
    }
    if !head.has_token("Upgrade", "websocket") {
        return Err(HandshakeError::MissingUpgrade);
    }
    if !head.has_token("Connection", "Upgrade") {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    let key = head
        .get("Sec-WebSocket-Key")
        .ok_or(HandshakeError::BadKey)?
        .trim_ascii();
    match BASE64.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(HandshakeError::BadKey),
    }
    if head.get("Sec-WebSocket-Version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let protocol = server_protocols
        .iter()
        .find(|p| head.has_token("Sec-WebSocket-Protocol", p))
        .cloned();
    Ok(Accepted {
        accept: accept_key(key),
        protocol,
    })
}

/// `Sec-WebSocket-Accept`: base64(SHA-1(key + GUID)) (§4.2.2 (5.4)).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    BASE64.encode(sha.finalize())
}

/// Appends the `101 Switching Protocols` answer, with no extension: offers are declined by
/// silence (§9.1).
pub fn write_accept(out: &mut Vec<u8>, accepted: &Accepted) {
    write_accept_with(out, accepted, None);
}

/// Appends the `101`, naming the agreed permessage-deflate parameters exactly (RFC 7692 §7.1)
/// when there is an agreement.
pub fn write_accept_with(out: &mut Vec<u8>, accepted: &Accepted, deflate: Option<&Agreed>) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accepted.accept.as_bytes());
    if let Some(p) = &accepted.protocol {
        out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
        out.extend_from_slice(p.as_bytes());
    }
    if let Some(agreed) = deflate {
        out.extend_from_slice(b"\r\nSec-WebSocket-Extensions: ");
        agreed.write_header(out);
    }
    out.extend_from_slice(b"\r\n\r\n");
}

/// `Retry-After` of a `429` (`--max-per-ip`): long enough for a reconnect loop to back off,
/// short enough that a page reloaded after closing a tab gets in.
pub const RETRY_AFTER_SECS: u32 = 5;

/// Appends the refusal for `err`: its status, a one-line reason as the body, and
/// `Connection: close`. A version refusal names the version spoken (§4.2.2).
pub fn write_refusal(out: &mut Vec<u8>, err: HandshakeError) {
    let mut response = Response::text(err.status(), &err.to_string());
    if err == HandshakeError::UnsupportedVersion {
        response
            .headers
            .push(("Sec-WebSocket-Version", "13".into()));
        response.headers.push(("Upgrade", "websocket".into()));
    }
    if err == HandshakeError::TooManyFromAddress {
        // RFC 6585 §4: a 429 MAY say how long to wait.
        response
            .headers
            .push(("Retry-After", RETRY_AFTER_SECS.to_string()));
    }
    response.write_to(out, false, false);
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    fn head(s: &str) -> Head<'_> {
        match parse_head(s.as_bytes(), 8192).unwrap() {
            HeadStatus::Complete(h, n) => {
                assert_eq!(n, s.len());
                h
            }
            HeadStatus::Partial => panic!("partial"),
        }
    }

    /// RFC 6455 §1.3: the example key and its accept value.
    #[test]
    fn rfc_example_accept() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let a = accept_upgrade(&head(GOOD), &[]).unwrap();
        assert_eq!(a.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(a.protocol, None);
    }

    #[test]
    fn picks_the_first_of_the_servers_list_the_client_offered() {
        let list = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let h = head(GOOD);
        assert_eq!(
            accept_upgrade(&h, &list(&["superchat", "chat"]))
                .unwrap()
                .protocol
                .as_deref(),
            Some("superchat")
        );
        assert_eq!(
            accept_upgrade(&h, &list(&["chat", "superchat"]))
                .unwrap()
                .protocol
                .as_deref(),
            Some("chat")
        );
        assert_eq!(accept_upgrade(&h, &list(&["mqtt"])).unwrap().protocol, None);
    }

    #[test]
    fn partial_at_every_cut_then_complete() {
        for cut in 0..GOOD.len() {
            assert!(
                matches!(
                    parse_head(&GOOD.as_bytes()[..cut], 8192),
                    Ok(HeadStatus::Partial)
                ),
                "cut {cut}"
            );
        }
        let mut with_frame = GOOD.as_bytes().to_vec();
        with_frame.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        match parse_head(&with_frame, 8192).unwrap() {
            HeadStatus::Complete(_, n) => assert_eq!(n, GOOD.len()),
            HeadStatus::Partial => panic!(),
        }
    }

    #[test]
    fn oversized_head_is_refused_before_it_ends() {
        let big = format!("GET / HTTP/1.1\r\nX-Pad: {}\r\n", "a".repeat(9000));
        assert_eq!(
            parse_head(big.as_bytes(), 8192).unwrap_err(),
            HandshakeError::HeadTooLarge
        );
    }

    #[test]
    fn each_rule_has_its_error() {
        let cases: &[(&str, &str, HandshakeError)] = &[
            ("GET /chat", "POST /chat", HandshakeError::NotGet),
            (
                "HTTP/1.1\r\nHost",
                "HTTP/1.0\r\nHost",
                HandshakeError::OldHttpVersion,
            ),
            (
                "Host: server.example.com\r\n",
                "",
                HandshakeError::MissingHost,
            ),
            (
                "Upgrade: websocket",
                "Upgrade: h2c",
                HandshakeError::MissingUpgrade,
            ),
            (
                "Connection: Upgrade",
                "Connection: keep-alive",
                HandshakeError::MissingConnectionUpgrade,
            ),
            (
                "dGhlIHNhbXBsZSBub25jZQ==",
                "dGhlIHNhbXBsZQ==",
                HandshakeError::BadKey,
            ),
            (
                "dGhlIHNhbXBsZSBub25jZQ==",
                "not base64!",
                HandshakeError::BadKey,
            ),
            (
                "Version: 13",
                "Version: 8",
                HandshakeError::UnsupportedVersion,
            ),
        ];
        for (from, to, err) in cases {
            let req = GOOD.replacen(from, to, 1);
            assert_eq!(
                accept_upgrade(&head(&req), &[]),
                Err(*err),
                "{from} -> {to}"
            );
        }
    }

    #[test]
    fn tokens_are_case_insensitive_lists() {
        let req = GOOD
            .replace("Upgrade: websocket", "upgrade: foo, WebSocket")
            .replace("Connection: Upgrade", "connection: keep-alive, upgrade");
        assert!(accept_upgrade(&head(&req), &[]).is_ok());
    }

    #[test]
    fn refusal_bytes() {
        let mut out = Vec::new();
        write_refusal(&mut out, HandshakeError::UnsupportedVersion);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(s.contains("Sec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn garbage_is_malformed() {
        assert_eq!(
            parse_head(b"\x16\x03\x01\x02\x00\r\n\r\n", 8192).unwrap_err(),
            HandshakeError::MalformedHead
        );
    }
}
