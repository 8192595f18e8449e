//! A client's address as the slab entry keeps it: 24 bytes instead of `SocketAddr`'s 32, since
//! every connection holds one (issue #10: idle memory per connection).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// A `SocketAddr` without the IPv6 flow label, which `accept(2)` reports only on sockets with
/// `IPV6_FLOWINFO` set (never here) and which no log line shows. Converts back exactly
/// otherwise: IPv4 stays IPv4, and an IPv6 scope id (link-local peers) is kept.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct PeerAddr {
    ip: [u8; 16],
    scope_id: u32,
    port: u16,
    v4: bool,
}

impl PeerAddr {
    pub(super) fn addr(self) -> SocketAddr {
        let ip = Ipv6Addr::from(self.ip);
        match (self.v4, ip.to_ipv4_mapped()) {
            (true, Some(v4)) => SocketAddr::new(IpAddr::V4(v4), self.port),
            _ => SocketAddr::V6(SocketAddrV6::new(ip, self.port, 0, self.scope_id)),
        }
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(a: SocketAddr) -> Self {
        match a {
            SocketAddr::V4(v4) => PeerAddr {
                ip: v4.ip().to_ipv6_mapped().octets(),
                scope_id: 0,
                port: v4.port(),
                v4: true,
            },
            SocketAddr::V6(v6) => PeerAddr {
                ip: v6.ip().octets(),
                scope_id: v6.scope_id(),
                port: v6.port(),
                v4: false,
            },
        }
    }
}

impl From<PeerAddr> for SocketAddr {
    fn from(p: PeerAddr) -> Self {
        p.addr()
    }
}

impl PartialEq<SocketAddr> for PeerAddr {
    fn eq(&self, other: &SocketAddr) -> bool {
        self.addr() == *other
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.addr(), f)
    }
}

impl fmt::Debug for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.addr(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_back_exactly_but_for_the_flow_label() {
        for a in [
            "127.0.0.1:50312",
            "0.0.0.0:0",
            "[::1]:9001",
            "[::ffff:10.0.0.1]:80",
            "[fe80::1%3]:443",
            "[2001:db8::7]:65535",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            let p = PeerAddr::from(a);
            assert_eq!(p.addr(), a);
            assert_eq!(p.to_string(), a.to_string());
            assert!(p == a);
        }
        let v6 = SocketAddrV6::new(Ipv6Addr::LOCALHOST, 1, 0xabcde, 0);
        assert_eq!(
            PeerAddr::from(SocketAddr::V6(v6)).addr(),
            "[::1]:1".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(std::mem::size_of::<PeerAddr>(), 24);
    }
}
