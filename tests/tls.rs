//! TLS on the port: `wss://` and `https://` through rustls clients, plain HTTP redirected,
//! certificates refused by clients that should refuse them, bad records, and reloading.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::{Message, WebSocket};

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A test CA, and the files of server certificates it (or nobody) signed.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("wsloop-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("wsloop test CA {tag}"));
        let ca = params.self_signed(&ca_key).unwrap();
        Pki { dir, ca, ca_key }
    }

    /// Writes `NAME.crt` (leaf then CA) and `NAME.key` for localhost and 127.0.0.1.
    fn leaf(&self, name: &str, expired: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        if expired {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (crt, k) = (
            self.path(&format!("{name}.crt")),
            self.path(&format!("{name}.key")),
        );
        std::fs::write(&crt, format!("{}{}", cert.pem(), self.ca.pem())).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (crt, k)
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_string()
    }

    fn client_config(&self) -> Arc<ClientConfig> {
        client_config(&[self.ca.der().clone()])
    }

    /// The CA certificate as a PEM file, for `wsloop client --ca`.
    fn ca_file(&self) -> String {
        let path = self.path("ca.pem");
        std::fs::write(&path, self.ca.pem()).unwrap();
        path
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn client_config(roots: &[CertificateDer<'static>]) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let mut c = ClientConfig::builder()
        .with_root_certificates(store)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

fn start(pki_files: &[(String, String)], extra: &[&str]) -> TestServer {
    let mut args: Vec<&str> = Vec::new();
    for (c, k) in pki_files {
        args.extend(["--tls-cert", c, "--tls-key", k]);
    }
    args.extend(extra);
    let server = TestServer::start(&args);
    assert!(server.wait_log("listening on wss://"));
    server
}

/// A TLS connection with its handshake done (or the handshake's error).
fn tls_connect(server: &TestServer, config: Arc<ClientConfig>) -> Result<Tls, std::io::Error> {
    let tcp = server.connect();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(config, name).unwrap();
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

fn wss(server: &TestServer, config: Arc<ClientConfig>, path: &str) -> WebSocket<Tls> {
    let s = tls_connect(server, config).unwrap();
    let url = format!("wss://localhost:{}{path}", server.addr.port());
    let (ws, resp) = tungstenite::client::client(url, s).unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

fn https_request(s: &mut Tls, request: &str) -> (String, Vec<u8>) {
    s.write_all(request.as_bytes()).unwrap();
    s.flush().unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "cut short: {head:?}");
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let len = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0; len];
    s.read_exact(&mut body).unwrap();
    (head, body)
}

/// Reads until the server closes; true if it did within 5 s (EOF or a reset).
fn closed_by_server(s: &mut impl Read) -> bool {
    let end = Instant::now() + Duration::from_secs(5);
    let mut b = [0u8; 4096];
    while Instant::now() < end {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

fn echo(ws: &mut WebSocket<Tls>, msg: Message) {
    ws.send(msg.clone()).unwrap();
    assert_eq!(ws.read().unwrap(), msg);
}

#[test]
fn wss_echo_every_size_and_close() {
    let pki = Pki::new("echo");
    let server = start(&[pki.leaf("server", false)], &[]);
    let mut ws = wss(&server, pki.client_config(), "/echo");
    for size in [
        0,
        1,
        125,
        126,
        16 * 1024,
        65535,
        65536,
        100_000,
        1 << 20,
        3 << 20,
    ] {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        echo(&mut ws, Message::binary(data));
        let text: String = (0..size).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        echo(&mut ws, Message::text(text));
    }
    ws.close(None).unwrap();
    match ws.read() {
        Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => {}
        other => panic!("expected the server's close frame: {other:?}"),
    }
    // The server's close_notify and FIN follow its close frame.
    assert!(closed_by_server(ws.get_mut()));
}

/// TLS 1.2 (RFC 5246) takes the same path as 1.3 through rustls's unbuffered connection, with
/// its own record format (explicit nonce, no inner content type).
#[test]
fn wss_echo_over_tls_1_2() {
    let pki = Pki::new("tls12");
    let server = start(&[pki.leaf("server", false)], &[]);
    let mut store = RootCertStore::empty();
    store.add(pki.ca.der().clone()).unwrap();
    let mut config = ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut ws = wss(&server, Arc::new(config), "/echo");
    assert_eq!(
        ws.get_ref().conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    for size in [0, 125, 16 * 1024, 100_000] {
        let data: Vec<u8> = (0..size).map(|i| (i * 17 % 251) as u8).collect();
        echo(&mut ws, Message::binary(data));
    }
    ws.close(None).unwrap();
    match ws.read() {
        Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => {}
        other => panic!("expected the server's close frame: {other:?}"),
    }
    assert!(closed_by_server(ws.get_mut()));
}

#[test]
fn https_pages_publish_and_origin_over_tls() {
    let pki = Pki::new("https");
    let server = start(&[pki.leaf("server", false)], &[]);
    let port = server.addr.port();
    let mut s = tls_connect(&server, pki.client_config()).unwrap();
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (head, body) = https_request(
        &mut s,
        &format!("GET / HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n"),
    );
    assert_eq!(status(&head), 200, "{head}");
    assert!(String::from_utf8_lossy(&body).contains("<html"));

    // A page from https://localhost:PORT may open wss:// here; one from http:// may not.
    let mut member = wss(&server, pki.client_config(), "/room/news");
    let upgrade = |origin: &str| {
        let mut s = tls_connect(&server, pki.client_config()).unwrap();
        let origin = format!("Origin: {origin}");
        let mut req = upgrade_request("/echo", &[&origin]);
        req = req.replace("Host: localhost", &format!("Host: localhost:{port}"));
        s.write_all(req.as_bytes()).unwrap();
        s.flush().unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap() == 1 {
            head.push(b[0]);
        }
        status(&String::from_utf8_lossy(&head))
    };
    assert_eq!(upgrade(&format!("https://localhost:{port}")), 101);
    assert_eq!(upgrade(&format!("http://localhost:{port}")), 403);

    let (head, body) = https_request(
        &mut s,
        &format!(
            "POST /publish/news HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Type: text/plain\r\n\
             Content-Length: 5\r\n\r\nhello"
        ),
    );
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(body, br#"{"delivered":1}"#);
    assert_eq!(member.read().unwrap(), Message::text("hello"));
}

#[test]
fn plain_http_on_the_tls_port_is_redirected_or_served() {
    let pki = Pki::new("redirect");
    let files = [pki.leaf("server", false)];
    let server = start(&files, &[]);
    let port = server.addr.port();
    let mut s = server.connect();
    s.write_all(
        format!("GET /broadcast.html?x=1 HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let (head, _) = read_response(&mut s);
    assert_eq!(status(&head), 308, "{head}");
    assert_eq!(
        header(&head, "location"),
        Some(format!("https://localhost:{port}/broadcast.html?x=1").as_str())
    );
    assert!(closed_by_server(&mut s));
    // A Host that could smuggle something into the Location is not used.
    let mut s = server.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: evil.example/x\r\n\r\n")
        .unwrap();
    let (head, _) = read_response(&mut s);
    assert_eq!(
        header(&head, "location"),
        Some(format!("https://{}/", server.addr).as_str())
    );

    let allowing = start(&files, &["--tls-allow-plain"]);
    let mut s = allowing.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut s);
    assert_eq!(status(&head), 200, "{head}");
    assert!(String::from_utf8_lossy(&body).contains("<html"));
    // ... and TLS still works beside it.
    let mut ws = wss(&allowing, pki.client_config(), "/echo");
    echo(&mut ws, Message::text("both"));
}

#[test]
fn clients_refuse_unknown_and_expired_certificates() {
    let pki = Pki::new("refuse");
    let other = Pki::new("refuse-other");
    let server = start(&[pki.leaf("server", false)], &[]);
    let err = tls_connect(&server, other.client_config()).expect_err("refused");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    // The client's alert is logged; the server goes on.
    assert!(
        server.wait_log("TLS: received fatal alert"),
        "{}",
        server.log.lock().unwrap()
    );
    let mut ws = wss(&server, pki.client_config(), "/echo");
    echo(&mut ws, Message::text("still here"));

    let expired = start(&[pki.leaf("old", true)], &[]);
    let err = tls_connect(&expired, pki.client_config()).expect_err("refused");
    assert!(err.to_string().contains("certificate expired"), "{err}");
}

#[test]
fn a_bad_tls_record_closes_only_that_connection() {
    let pki = Pki::new("badrecord");
    let server = start(
        &[pki.leaf("server", false)],
        &["--tls-handshakes-per-turn", "1"],
    );
    let mut good = wss(&server, pki.client_config(), "/echo");
    echo(&mut good, Message::text("before"));

    // A handshake record that is not a ClientHello.
    let mut raw = server.connect();
    raw.write_all(&[0x16, 0x03, 0x01, 0x00, 0x04, 0xff, 0x00, 0x00, 0x00])
        .unwrap();
    let mut alert = [0u8; 7];
    raw.read_exact(&mut alert).unwrap();
    assert_eq!(alert[0], 0x15, "an alert record: {alert:?}");
    assert!(closed_by_server(&mut raw));

    // After the handshake: application data that does not decrypt.
    let mut s = tls_connect(&server, pki.client_config()).unwrap();
    let mut junk = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    junk.extend((0..64).map(|i| i as u8));
    s.sock.write_all(&junk).unwrap();
    assert!(closed_by_server(&mut s.sock));
    assert!(server.wait_log("TLS: "), "{}", server.log.lock().unwrap());

    // A handshake that stops halfway is ended by the handshake timeout.
    let slow = start(
        &[pki.leaf("server2", false)],
        &["--handshake-timeout", "500ms"],
    );
    let mut raw = slow.connect();
    raw.write_all(&[0x16, 0x03, 0x01]).unwrap();
    assert!(closed_by_server(&mut raw));
    assert!(slow.wait_log("request head not complete in time"));

    echo(&mut good, Message::text("after"));
}

#[test]
fn handshakes_past_the_per_turn_budget_all_complete() {
    let pki = Pki::new("budget");
    let server = start(
        &[pki.leaf("server", false)],
        &["--tls-handshakes-per-turn", "1"],
    );
    let config = pki.client_config();
    let mut open = wss(&server, config.clone(), "/echo");
    let threads: Vec<_> = (0..40)
        .map(|i| {
            let config = config.clone();
            let addr = server.addr;
            std::thread::spawn(move || {
                let tcp = TcpStream::connect(addr).unwrap();
                tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let conn =
                    ClientConnection::new(config, ServerName::try_from("localhost").unwrap())
                        .unwrap();
                let s = StreamOwned::new(conn, tcp);
                let url = format!("wss://localhost:{}/echo", addr.port());
                let (mut ws, _) = tungstenite::client::client(url, s).unwrap();
                let msg = Message::text(format!("client {i}"));
                ws.send(msg.clone()).unwrap();
                assert_eq!(ws.read().unwrap(), msg);
            })
        })
        .collect();
    echo(&mut open, Message::text("meanwhile"));
    for t in threads {
        t.join().unwrap();
    }
}

fn peer_cert(s: &Tls) -> Vec<u8> {
    s.conn.peer_certificates().unwrap()[0].to_vec()
}

fn pem_leaf(path: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_file(Path::new(path))
        .unwrap()
        .to_vec()
}

#[test]
fn sighup_reloads_certificates_and_open_connections_stay() {
    let first = Pki::new("hup1");
    let second = Pki::new("hup2");
    let (crt, key) = first.leaf("server", false);
    let server = start(&[(crt.clone(), key.clone())], &[]);
    let mut open = wss(&server, first.client_config(), "/echo");
    echo(&mut open, Message::text("before"));

    let hup = || unsafe { libc::kill(server.child.id() as i32, libc::SIGHUP) };
    // A broken file: logged, and the old certificate stays.
    std::fs::write(&crt, "not a certificate").unwrap();
    assert_eq!(hup(), 0);
    assert!(server.wait_log("TLS certificates not reloaded"));
    assert!(tls_connect(&server, first.client_config()).is_ok());

    let (new_crt, new_key) = second.leaf("server", false);
    std::fs::copy(&new_crt, &crt).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    assert_eq!(hup(), 0);
    assert!(server.wait_log("SIGHUP: TLS certificates reloaded"));
    let s = tls_connect(&server, second.client_config()).unwrap();
    assert_eq!(peer_cert(&s), pem_leaf(&new_crt));
    assert!(tls_connect(&server, first.client_config()).is_err());
    echo(&mut open, Message::text("across the reload"));
}

#[test]
fn tls_reload_interval_notices_changed_files() {
    let first = Pki::new("mtime1");
    let second = Pki::new("mtime2");
    let (crt, key) = first.leaf("server", false);
    let server = start(&[(crt.clone(), key.clone())], &["--tls-reload", "100ms"]);
    assert!(tls_connect(&server, first.client_config()).is_ok());
    let (new_crt, new_key) = second.leaf("server", false);
    std::fs::copy(&new_key, &key).unwrap();
    std::fs::copy(&new_crt, &crt).unwrap();
    assert!(server.wait_log("certificate files changed: TLS certificates reloaded"));
    let s = tls_connect(&server, second.client_config()).unwrap();
    assert_eq!(peer_cert(&s), pem_leaf(&new_crt));
}

/// `wsloop client ARGS` with `input` on stdin: (exit code, stdout, stderr). Bounded by its
/// own `--timeout`.
fn run_client(args: &[&str], input: &[u8]) -> (Option<i32>, String, String) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsloop"))
        .arg("client")
        .args(["--timeout", "10s"])
        .args(args)
        .env_remove("SSL_CERT_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn wsloop_client_speaks_wss() {
    let pki = Pki::new("client");
    let server = start(&[pki.leaf("server", false)], &[]);
    let url = format!("wss://localhost:{}/echo", server.addr.port());
    let ca = pki.ca_file();
    let big = "x".repeat(200_000);
    let input = format!("hello\n{big}\nworld\n");
    let (code, out, err) = run_client(&[&url, "--ca", &ca], input.as_bytes());
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, input);

    // Without the CA the certificate is refused; --insecure takes it.
    let (code, _, err) = run_client(&[&url], b"hi\n");
    assert_eq!(code, Some(1), "{err}");
    // (A machine without a system bundle refuses before the handshake.)
    let refused = err.contains("TLS handshake: invalid peer certificate");
    assert!(refused || err.contains("no trusted roots found"), "{err}");
    let (code, out, err) = run_client(&[&url, "--insecure"], b"hi\n");
    assert_eq!((code, out.as_str()), (Some(0), "hi\n"), "{err}");
}

#[test]
fn sighup_reloads_certificates_on_every_worker() {
    let first = Pki::new("workers1");
    let second = Pki::new("workers2");
    let (crt, key) = first.leaf("server", false);
    let server = start(&[(crt.clone(), key.clone())], &["--workers", "3"]);
    assert!(tls_connect(&server, first.client_config()).is_ok());
    let (new_crt, new_key) = second.leaf("server", false);
    std::fs::copy(&new_crt, &crt).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    // SAFETY: a signal to the process this test started, by its PID.
    assert_eq!(
        unsafe { libc::kill(server.child.id() as i32, libc::SIGHUP) },
        0
    );
    // Worker 0 takes the signal and passes it on: each worker reloads its own copy.
    let reloads = || {
        server
            .log
            .lock()
            .unwrap()
            .matches("SIGHUP: TLS certificates reloaded")
            .count()
    };
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while reloads() < 3 && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(reloads(), 3, "{}", server.log.lock().unwrap());
    // New connections, spread over the workers by the kernel, all see the new certificate.
    for _ in 0..12 {
        let s = tls_connect(&server, second.client_config()).unwrap();
        assert_eq!(peer_cert(&s), pem_leaf(&new_crt));
    }
}
