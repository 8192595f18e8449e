//! Who the client is behind a reverse proxy: `Forwarded` (RFC 7239) and `X-Forwarded-For` /
//! `X-Forwarded-Proto`, believed only when the TCP peer is a `--trusted-proxy`.
//!
//! Each proxy appends the address it received the request from, so the list is read from the
//! right: hops that are trusted proxies are skipped, and the first untrusted one is the client
//! (anything further left was written by the client itself and proves nothing). Pure: no
//! sockets, table-tested below.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// An address block, `10.0.0.0/8`, `fd00::/8` or one address (`127.0.0.1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside the block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

/// The first `bits` bits of `a` and `b` are equal.
fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = (usize::from(bits / 8), bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || (a[whole] ^ b[whole]) >> (8 - rest) == 0
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || format!("{s:?}: not an address or block (try 10.0.0.0/8, 127.0.0.1, ::1/128)");
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(bad)?,
        };
        // `::ffff:10.0.0.0/104` is the IPv4 block 10.0.0.0/8, as peers are compared.
        match addr.to_canonical() {
            v4 @ IpAddr::V4(_) if addr.is_ipv6() && prefix >= 96 => Ok(Cidr {
                addr: v4,
                prefix: prefix - 96,
            }),
            _ => Ok(Cidr { addr, prefix }),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// For clap: `--trusted-proxy CIDR`.
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.parse()
}

/// What the forwarding headers say, once believed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Client {
    /// The client's address (port 0 when the proxy did not give one).
    pub addr: SocketAddr,
    /// The scheme the client used to reach the proxy, if the proxy said: `http` or `https`.
    pub proto: Option<&'static str>,
}

/// The request's forwarding headers, each field value as sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Headers<'a> {
    pub forwarded: &'a [&'a [u8]],
    pub x_forwarded_for: &'a [&'a [u8]],
    pub x_forwarded_proto: &'a [&'a [u8]],
}

/// The client of a request that came from `peer`. From a peer outside `trusted` the headers
/// are ignored. `Forwarded` is preferred when present (RFC 7239 §7.4 leaves the choice to us:
/// it is the standard one); a hop that names no usable address stops the walk there.
pub fn client(peer: SocketAddr, trusted: &[Cidr], h: &Headers<'_>) -> Client {
    if !trusted.iter().any(|c| c.contains(peer.ip())) {
        return Client {
            addr: peer,
            proto: None,
        };
    }
    behind_proxy(peer, trusted, h)
}

/// The client of a request from `peer`, a proxy trusted for other reasons than `trusted` (a
/// peer on our Unix socket, whose address is a placeholder); the hops are read as by
/// [`client`].
pub fn behind_proxy(peer: SocketAddr, trusted: &[Cidr], h: &Headers<'_>) -> Client {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let mut found = Client {
        addr: peer,
        proto: None,
    };
    let hops: Vec<Hop> = if h.forwarded.is_empty() {
        x_forwarded(h.x_forwarded_for, h.x_forwarded_proto)
    } else {
        h.forwarded
            .iter()
            .flat_map(|v| forwarded_elements(v))
            .collect()
    };
    for hop in hops.iter().rev() {
        // This hop was written by a trusted proxy: what it says about its own side holds.
        if hop.proto.is_some() {
            found.proto = hop.proto;
        }
        let Some(addr) = hop.node else { break };
        found.addr = addr;
        if !is_trusted(addr.ip()) {
            break;
        }
    }
    found
}

/// One proxy's entry: the address it received the request from, and over which scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hop {
    node: Option<SocketAddr>,
    proto: Option<&'static str>,
}

/// `X-Forwarded-For: client, proxy1, proxy2` and `X-Forwarded-Proto: https` (one value, or
/// one per hop; otherwise the right-most, set by the proxy nearest to us).
fn x_forwarded(xff: &[&[u8]], xfp: &[&[u8]]) -> Vec<Hop> {
    let mut hops: Vec<Hop> = list(xff)
        .map(|v| Hop {
            node: node(v),
            proto: None,
        })
        .collect();
    let protos: Vec<Option<&'static str>> = list(xfp).map(scheme).collect();
    if protos.len() == hops.len() {
        for (hop, proto) in hops.iter_mut().zip(protos) {
            hop.proto = proto;
        }
    } else if let (Some(hop), Some(&proto)) = (hops.last_mut(), protos.last()) {
        hop.proto = proto;
    } else if let Some(&proto) = protos.last() {
        hops.push(Hop { node: None, proto });
    }
    hops
}

/// The comma-separated elements of every value, trimmed, empty ones skipped.
fn list<'a>(values: &'a [&'a [u8]]) -> impl Iterator<Item = &'a [u8]> + 'a {
    values
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|v| !v.is_empty())
}

/// RFC 7239 §4: `Forwarded: for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8::1]"`.
/// Commas and semicolons inside quoted strings do not split.
fn forwarded_elements(value: &[u8]) -> Vec<Hop> {
    let mut hops = Vec::new();
    for element in split_unquoted(value, b',') {
        let mut hop = Hop {
            node: None,
            proto: None,
        };
        for pair in split_unquoted(element, b';') {
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            let (name, v) = (
                pair[..eq].trim_ascii(),
                unquote(pair[eq + 1..].trim_ascii()),
            );
            if name.eq_ignore_ascii_case(b"for") {
                hop.node = node(&v);
            } else if name.eq_ignore_ascii_case(b"proto") {
                hop.proto = scheme(&v);
            }
        }
        hops.push(hop);
    }
    hops
}

fn split_unquoted(s: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut quoted = false;
    let mut escaped = false;
    s.split(move |&b| {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        }
        b == sep && !quoted
    })
    .map(<[u8]>::trim_ascii)
    .filter(|e| !e.is_empty())
}

/// A `quoted-string` (RFC 9110 §5.6.4) without its quotes and escapes, or a token as it is.
fn unquote(v: &[u8]) -> Vec<u8> {
    let Some(inner) = v.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")) else {
        return v.to_vec();
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut escaped = false;
    for &b in inner {
        if b == b'\\' && !escaped {
            escaped = true;
            continue;
        }
        escaped = false;
        out.push(b);
    }
    out
}

/// RFC 7239 §6: `192.0.2.43`, `192.0.2.43:47011`, `[2001:db8::1]`, `[2001:db8::1]:4711`, a
/// bare IPv6 address (as `X-Forwarded-For` has them); `unknown` and obfuscated names
/// (`_hidden`) are no address.
fn node(v: &[u8]) -> Option<SocketAddr> {
    let s = std::str::from_utf8(v).ok()?.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some(addr);
    }
    let ip = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    let ip: IpAddr = ip.parse().ok()?;
    Some(SocketAddr::new(ip, 0))
}

/// `http` or `https` (any case); other schemes are not ones a page is served over.
fn scheme(v: &[u8]) -> Option<&'static str> {
    let v = v.trim_ascii();
    if v.eq_ignore_ascii_case(b"https") {
        Some("https")
    } else if v.eq_ignore_ascii_case(b"http") {
        Some("http")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn blocks() {
        for (block, ip, inside) in [
            ("10.0.0.0/8", "10.1.2.3", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("192.168.1.0/25", "192.168.1.127", true),
            ("192.168.1.0/25", "192.168.1.128", false),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("0.0.0.0/0", "::1", false),
            ("::1", "::1", true),
            ("fd00::/8", "fd12::1", true),
            ("fd00::/8", "fe80::1", false),
            ("::/0", "2001:db8::1", true),
            // A v4-mapped peer (dual-stack socket) is its IPv4 address.
            ("127.0.0.0/8", "::ffff:127.0.0.1", true),
            ("::ffff:10.0.0.0/104", "10.9.9.9", true),
        ] {
            let c: Cidr = block.parse().unwrap();
            assert_eq!(c.contains(ip.parse().unwrap()), inside, "{block} ∋ {ip}");
        }
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "host.example",
            "10.0.0.0/x",
            "/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
    }

    /// (peer, trusted, Forwarded, X-Forwarded-For, X-Forwarded-Proto) → (client, proto)
    #[test]
    #[rustfmt::skip]
    fn clients() {
        let proxy = "127.0.0.1:5000";
        let lan = &["127.0.0.0/8", "10.0.0.0/8"][..];
        for (peer, trusted, fwd, xff, xfp, want, proto) in [
            // Not from a trusted proxy: headers ignored.
            ("198.51.100.1:1", lan, "for=1.2.3.4;proto=https", "", "", "198.51.100.1:1", None),
            (proxy, &[][..], "", "1.2.3.4", "https", proxy, None),
            // The right-most untrusted hop, skipping trusted ones.
            (proxy, lan, "", "203.0.113.7", "", "203.0.113.7:0", None),
            (proxy, lan, "", "6.6.6.6, 203.0.113.7, 10.0.0.2", "https", "203.0.113.7:0", Some("https")),
            (proxy, lan, "", "10.0.0.3, 10.0.0.2", "", "10.0.0.3:0", None),
            (proxy, lan, "", "203.0.113.7:5555", "", "203.0.113.7:5555", None),
            (proxy, lan, "", "2001:db8::1", "http", "[2001:db8::1]:0", Some("http")),
            // Garbage in the chain: the walk stops at the last good trusted hop.
            (proxy, lan, "", "203.0.113.7, garbage", "", proxy, None),
            (proxy, lan, "", "", "https", proxy, Some("https")),
            (proxy, lan, "", "", "gopher", proxy, None),
            // One proto per hop: the client's hop's.
            (proxy, lan, "", "203.0.113.7, 10.0.0.2", "https, http", "203.0.113.7:0", Some("https")),
            // Forwarded (RFC 7239 §4 examples).
            (proxy, lan, "for=\"_gazonk\"", "", "", proxy, None),
            (proxy, lan, "For=\"[2001:db8:cafe::17]:4711\"", "", "", "[2001:db8:cafe::17]:4711", None),
            (proxy, lan, "for=192.0.2.60;proto=http;by=203.0.113.43", "", "", "192.0.2.60:0", Some("http")),
            (proxy, lan, "for=192.0.2.43, for=198.51.100.17;proto=https", "", "", "198.51.100.17:0", Some("https")),
            (proxy, lan, "for=192.0.2.43, for=10.0.0.9;proto=https", "", "", "192.0.2.43:0", Some("https")),
            (proxy, lan, "for=unknown;proto=https", "", "", proxy, Some("https")),
            (proxy, lan, "for=\"1.2.3.4;x\", for=5.6.7.8", "", "", "5.6.7.8:0", None),
            // Forwarded wins over X-Forwarded-For when both are there.
            (proxy, lan, "for=192.0.2.1", "203.0.113.7", "https", "192.0.2.1:0", None),
        ] {
            let (fwd, xff, xfp) = ([fwd.as_bytes()], [xff.as_bytes()], [xfp.as_bytes()]);
            let h = Headers {
                forwarded: if fwd[0].is_empty() { &[] } else { &fwd },
                x_forwarded_for: if xff[0].is_empty() { &[] } else { &xff },
                x_forwarded_proto: if xfp[0].is_empty() { &[] } else { &xfp },
            };
            let got = client(peer.parse().unwrap(), &cidrs(trusted), &h);
            assert_eq!(
                (got.addr, got.proto),
                (want.parse().unwrap(), proto),
                "{peer} {trusted:?} fwd={fwd:?} xff={xff:?} xfp={xfp:?}"
            );
        }
    }

    /// A proxy on our Unix socket: trusted without being in the list, its placeholder
    /// address kept when it names nobody.
    #[test]
    fn a_proxy_trusted_without_an_address() {
        let unix: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let xff = [&b"6.6.6.6, 203.0.113.7"[..]];
        let xfp = [&b"https"[..]];
        let h = Headers {
            x_forwarded_for: &xff,
            x_forwarded_proto: &xfp,
            ..Headers::default()
        };
        let got = behind_proxy(unix, &[], &h);
        assert_eq!(
            (got.addr, got.proto),
            ("203.0.113.7:0".parse().unwrap(), Some("https"))
        );
        // A hop that is a --trusted-proxy is skipped as usual.
        let got = behind_proxy(unix, &cidrs(&["203.0.113.0/24"]), &h);
        assert_eq!(got.addr, "6.6.6.6:0".parse().unwrap());
        assert_eq!(behind_proxy(unix, &[], &Headers::default()).addr, unix);
        // `client` does not trust it.
        assert_eq!(client(unix, &[], &h).addr, unix);
    }
}
