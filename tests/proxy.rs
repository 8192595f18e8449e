//! Behind a reverse proxy (`--trusted-proxy`): forwarded addresses and schemes are believed
//! from trusted peers only, and feed logs, `REMOTE_ADDR`, `--max-per-ip` and the Origin rule.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::*;

/// An `--exec` program that says who it was started for, then echoes.
const WHO: &[&str] = &[
    "--exec",
    "/bin/sh",
    "--",
    "-c",
    "echo \"$REMOTE_ADDR\"; exec cat",
];

fn upgrade(server: &TestServer, path: &str, extra: &[&str]) -> (u16, TcpStream) {
    let mut s = server.connect();
    s.write_all(upgrade_request(path, extra).as_bytes())
        .unwrap();
    let head = read_head(&mut s);
    (status(&head), s)
}

fn remote_addr_seen(server: &TestServer, extra: &[&str]) -> String {
    let (code, mut s) = upgrade(server, "/exec", extra);
    assert_eq!(code, 101);
    let (_, _, line) = read_frame(&mut s).unwrap();
    String::from_utf8(line).unwrap()
}

fn with_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    all.extend_from_slice(WHO);
    all
}

#[test]
fn a_trusted_proxy_gives_the_client_address_to_programs_and_logs() {
    let server = TestServer::start(&with_args(&["--trusted-proxy", "127.0.0.0/8"]));
    // The right-most hop that is not a trusted proxy is the client.
    let seen = remote_addr_seen(
        &server,
        &["X-Forwarded-For: 6.6.6.6, 203.0.113.7, 127.0.0.9"],
    );
    assert_eq!(seen, "203.0.113.7");
    let seen = remote_addr_seen(
        &server,
        &["Forwarded: for=\"[2001:db8::1]:4711\";proto=https"],
    );
    assert_eq!(seen, "2001:db8::1");
    assert!(server.wait_log("127.0.0.1:") && server.wait_log("forwarded for 203.0.113.7:0"));
    // No header: the proxy's own address.
    assert_eq!(remote_addr_seen(&server, &[]), "127.0.0.1");
}

#[test]
fn forwarding_headers_from_anyone_else_are_ignored() {
    let server = TestServer::start(&with_args(&["--trusted-proxy", "10.0.0.0/8"]));
    let seen = remote_addr_seen(
        &server,
        &[
            "X-Forwarded-For: 203.0.113.7",
            "Forwarded: for=198.51.100.1",
        ],
    );
    assert_eq!(seen, "127.0.0.1");
    // And without the flag at all.
    let server = TestServer::start(WHO);
    assert_eq!(
        remote_addr_seen(&server, &["X-Forwarded-For: 203.0.113.7"]),
        "127.0.0.1"
    );
}

#[test]
fn the_forwarded_scheme_is_the_one_the_origin_rule_expects() {
    let trusted = TestServer::start(&["--trusted-proxy", "127.0.0.1"]);
    let https = "Origin: https://localhost";
    let http = "Origin: http://localhost";
    // The page was served as https by the proxy: its https origin is the server's own.
    for proto in [
        "X-Forwarded-Proto: https",
        "Forwarded: for=192.0.2.1;proto=https",
    ] {
        assert_eq!(
            upgrade(&trusted, "/echo", &[proto, https]).0,
            101,
            "{proto}"
        );
        assert_eq!(upgrade(&trusted, "/echo", &[proto, http]).0, 403, "{proto}");
    }
    assert_eq!(upgrade(&trusted, "/echo", &[http]).0, 101);
    // From an untrusted peer the header changes nothing.
    let untrusted = TestServer::start(&["--trusted-proxy", "10.0.0.0/8"]);
    let proto = "X-Forwarded-Proto: https";
    assert_eq!(upgrade(&untrusted, "/echo", &[proto, https]).0, 403);
    assert_eq!(upgrade(&untrusted, "/echo", &[proto, http]).0, 101);
}

#[test]
fn max_per_ip_counts_forwarded_clients_not_the_proxy() {
    let server = TestServer::start(&["--trusted-proxy", "127.0.0.0/8", "--max-per-ip", "1"]);
    let a = "X-Forwarded-For: 198.51.100.1";
    let b = "X-Forwarded-For: 198.51.100.2";
    let (code, _a1) = upgrade(&server, "/echo", &[a]);
    assert_eq!(code, 101);
    let (code, _a2) = upgrade(&server, "/echo", &[a]);
    assert_eq!(code, 429);
    assert!(server.wait_log("198.51.100.1:0: refused"));
    // Another client through the same proxy is not affected.
    let (code, _b1) = upgrade(&server, "/echo", &[b]);
    assert_eq!(code, 101);
}
