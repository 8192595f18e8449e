//! Where the server listens: `--bind unix:PATH` (mode, stale and foreign files, removal on
//! exit, peers trusted as a proxy) and systemd socket activation (`LISTEN_FDS=1`, fd 3).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_wsloop");

/// An `--exec` program that says what it was given, then echoes.
const WHO: &str = "echo \"$REMOTE_ADDR ${LISTEN_FDS:-none} ${LISTEN_PID:-none}\"; exec cat";

/// A socket path of this test's own, nothing there yet.
fn sock_path(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("wsloop-it-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// Starts `cmd` (the server, with its log captured) and waits for `ready` in the log.
fn spawn(mut cmd: Command, ready: &str) -> TestServer {
    let server = spawn_only(&mut cmd);
    assert!(
        server.wait_log(ready),
        "no {ready:?} in the log:\n{}",
        server.log.lock().unwrap()
    );
    server
}

fn spawn_only(cmd: &mut Command) -> TestServer {
    cmd.env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start wsloop");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let mut l = log2.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let addr = "0.0.0.0:0".parse().unwrap();
    TestServer { child, addr, log }
}

fn unix_server(path: &Path, args: &[&str]) -> TestServer {
    let mut cmd = Command::new(BIN);
    cmd.arg("--bind").arg(format!("unix:{}", path.display()));
    cmd.args(args);
    spawn(cmd, &format!("listening on unix:{}", path.display()))
}

/// Waits (bounded) for the server to exit; its status.
fn wait_exit(server: &mut TestServer) -> std::process::ExitStatus {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < end, "the server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(server: &TestServer) {
    // SAFETY: kill(2) on our own child, by its PID.
    assert_eq!(
        unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) },
        0
    );
}

fn connect_unix(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// `GET target` with `Connection: close`, read to the end: (status, body).
fn get(mut s: impl Read + Write, target: &str) -> (u16, String) {
    s.write_all(
        format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status(head), body.to_string())
}

/// A text message echoed back, through tungstenite over any stream.
fn echo(stream: impl Read + Write, text: &str) {
    let (mut ws, _) = tungstenite::client("ws://localhost/echo", stream).unwrap();
    ws.send(tungstenite::Message::text(text)).unwrap();
    assert_eq!(ws.read().unwrap().into_text().unwrap().as_str(), text);
    ws.close(None).unwrap();
}

/// An upgrade sent as raw bytes: the status, and the stream for frames.
fn upgrade(path: &Path, target: &str, extra: &[&str]) -> (u16, UnixStream) {
    let mut s = connect_unix(path);
    s.write_all(upgrade_request(target, extra).as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap() == 1 {
        head.push(b[0]);
    }
    (status(&String::from_utf8_lossy(&head)), s)
}

/// A short unmasked text frame from the server.
fn read_text(s: &mut impl Read) -> String {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    assert_eq!((h[0], h[1] & 0x80), (0x81, 0), "a short text frame");
    let mut p = vec![0; usize::from(h[1])];
    s.read_exact(&mut p).unwrap();
    String::from_utf8(p).unwrap()
}

#[test]
fn a_unix_socket_serves_http_and_websockets_with_its_mode_and_is_removed_on_sigterm() {
    let path = sock_path("serve");
    let mut server = unix_server(&path, &["--unix-mode", "600"]);
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(get(connect_unix(&path), "/healthz"), (200, "ok\n".into()));
    echo(connect_unix(&path), "hello over a Unix socket");
    // Two at once, through the same loop.
    let (a, b) = (connect_unix(&path), connect_unix(&path));
    echo(b, "second");
    echo(a, "first");
    sigterm(&server);
    assert!(wait_exit(&mut server).success());
    assert!(server.wait_log("stopped"));
    assert!(!path.exists(), "the socket file is left behind");
}

#[test]
fn a_stale_socket_file_is_replaced_and_a_live_one_is_not() {
    let path = sock_path("stale");
    // What a server killed with SIGKILL leaves: a socket file nobody listens on.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = unix_server(&path, &[]);
    assert!(server.wait_log(&format!(
        "unix:{}: replacing a stale socket file",
        path.display()
    )));
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o660,
        "the default --unix-mode"
    );
    assert_eq!(get(connect_unix(&path), "/healthz").0, 200);

    // A second server on the same path stops, and leaves the first one's socket alone.
    let mut second = spawn_only(
        Command::new(BIN)
            .arg("--bind")
            .arg(format!("unix:{}", path.display())),
    );
    assert_eq!(wait_exit(&mut second).code(), Some(1));
    assert!(second.wait_log(&format!(
        "cannot listen on unix:{}: a server is listening on it",
        path.display()
    )));
    assert_eq!(get(connect_unix(&path), "/healthz").0, 200);
}

#[test]
fn a_file_that_is_not_a_socket_is_refused_by_name_and_kept() {
    let path = sock_path("regular");
    std::fs::write(&path, "not a socket").unwrap();
    let mut server = spawn_only(
        Command::new(BIN)
            .arg("--bind")
            .arg(format!("unix:{}", path.display())),
    );
    assert_eq!(wait_exit(&mut server).code(), Some(1));
    assert!(
        server.wait_log(&format!(
            "cannot listen on unix:{}: the file exists and is not a socket; not removing it",
            path.display()
        )),
        "{}",
        server.log.lock().unwrap()
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_peer_on_the_unix_socket_is_a_trusted_proxy_for_programs_limits_and_origins() {
    let path = sock_path("proxy");
    let server = unix_server(
        &path,
        &["--max-per-ip", "1", "--exec", "/bin/sh", "--", "-c", WHO],
    );
    // The client the proxy names is the program's REMOTE_ADDR and the log's peer.
    let (code, mut a) = upgrade(&path, "/exec", &["X-Forwarded-For: 203.0.113.7"]);
    assert_eq!(code, 101);
    assert_eq!(read_text(&mut a), "203.0.113.7 none none");
    assert!(server.wait_log("forwarded for 203.0.113.7:0"));
    // --max-per-ip counts clients, not the proxy: another client gets in, the same one not.
    let (code, mut b) = upgrade(&path, "/exec", &["X-Forwarded-For: 198.51.100.2"]);
    assert_eq!(code, 101);
    assert_eq!(read_text(&mut b), "198.51.100.2 none none");
    let (code, _) = upgrade(&path, "/exec", &["X-Forwarded-For: 203.0.113.7"]);
    assert_eq!(code, 429);
    // Without a forwarded address a peer has none: 0.0.0.0.
    drop((a, b));
    let (code, mut c) = upgrade(&path, "/exec", &[]);
    assert_eq!(code, 101);
    assert_eq!(read_text(&mut c), "0.0.0.0 none none");
    // The scheme the proxy reports is the one the Origin rule compares with.
    let page = "Origin: https://localhost";
    assert_eq!(upgrade(&path, "/echo", &[page]).0, 403);
    let proto = "X-Forwarded-Proto: https";
    assert_eq!(upgrade(&path, "/echo", &[page, proto]).0, 101);
}

/// Makes `fd` descriptor 3 of the child, open across exec, as systemd passes a socket.
fn pass_as_fd3(cmd: &mut Command, fd: RawFd) {
    // SAFETY: between fork and exec only dup2(2) and fcntl(2) run, both async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let r = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// wsloop started the way systemd starts it: the socket as fd 3, `LISTEN_FDS=1`, and
/// `LISTEN_PID` its own pid (set by the shell that then becomes wsloop). The `--bind` given
/// could not be bound: the server must not try.
fn activated(fd: RawFd, args: &[&str]) -> Command {
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "export LISTEN_PID=$$; exec \"$0\" \"$@\"", BIN])
        .args(["--bind", "unix:/nonexistent/wsloop.sock"])
        .args(args)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "wsloop.socket");
    pass_as_fd3(&mut cmd, fd);
    cmd
}

/// The flags of a descriptor of a process, from `/proc/PID/fdinfo` (octal `O_*` bits).
fn fd_flags(pid: u32, fd: RawFd) -> u32 {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
    let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).unwrap();
    u32::from_str_radix(flags.trim(), 8).unwrap()
}

#[test]
fn socket_activation_serves_the_tcp_listener_it_is_given() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let cmd = activated(
        listener.as_raw_fd(),
        &["--exec", "/bin/sh", "--", "-c", WHO],
    );
    let mut server = spawn(cmd, &format!("listening on ws://{addr}"));
    assert!(server.wait_log("socket activation: serving descriptor 3 from systemd"));
    drop(listener); // the server's copy is the one open now

    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(get(tcp, "/healthz"), (200, "ok\n".into()));
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    echo(tcp, "activated");
    // The variables are gone before programs start, and the socket is not inherited.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(upgrade_request("/exec", &[]).as_bytes())
        .unwrap();
    assert_eq!(status(&read_head(&mut s)), 101);
    assert_eq!(read_text(&mut s), "127.0.0.1 none none");
    let flags = fd_flags(server.child.id(), 3);
    assert_ne!(flags & libc::O_CLOEXEC as u32, 0, "fd 3 flags {flags:o}");
    assert_ne!(flags & libc::O_NONBLOCK as u32, 0, "fd 3 flags {flags:o}");

    sigterm(&server);
    assert!(wait_exit(&mut server).success());
}

#[test]
fn socket_activation_serves_a_unix_listener_and_leaves_its_file_to_systemd() {
    let path = sock_path("activated");
    let listener = UnixListener::bind(&path).unwrap();
    let cmd = activated(listener.as_raw_fd(), &[]);
    let mut server = spawn(cmd, &format!("listening on unix:{}", path.display()));
    drop(listener);
    assert_eq!(get(connect_unix(&path), "/healthz"), (200, "ok\n".into()));
    echo(connect_unix(&path), "activated on a Unix socket");
    sigterm(&server);
    assert!(wait_exit(&mut server).success());
    assert!(path.exists(), "the file belongs to systemd, not to wsloop");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn listen_fds_for_another_process_is_ignored_and_not_passed_on() {
    // An activated parent's variables, inherited: LISTEN_PID is not ours.
    let exec = ["--exec", "/bin/sh", "--", "-c", WHO];
    let server = TestServer::start_with(&exec, |cmd| {
        cmd.env("LISTEN_FDS", "1").env("LISTEN_PID", "1");
    });
    assert!(!server.log.lock().unwrap().contains("socket activation"));
    let mut s = server.connect();
    s.write_all(upgrade_request("/exec", &[]).as_bytes())
        .unwrap();
    assert_eq!(status(&read_head(&mut s)), 101);
    assert_eq!(read_text(&mut s), "127.0.0.1 none none");
}

#[test]
fn tls_works_on_a_unix_socket() {
    let dir = std::env::temp_dir().join(format!("wsloop-it-{}-tls", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (crt, k) = (dir.join("c.pem"), dir.join("k.pem"));
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let path = sock_path("tls");
    let args = [
        "--tls-cert",
        crt.to_str().unwrap(),
        "--tls-key",
        k.to_str().unwrap(),
    ];
    let mut cmd = Command::new(BIN);
    cmd.arg("--bind")
        .arg(format!("unix:{}", path.display()))
        .args(args);
    let server = spawn(cmd, &format!("listening on unix:{} (TLS)", path.display()));
    std::fs::remove_dir_all(&dir).unwrap();

    let config = wsloop::tls::client_config(None, true).unwrap();
    let conn = rustls::ClientConnection::new(config, "localhost".try_into().unwrap()).unwrap();
    let tls = rustls::StreamOwned::new(conn, connect_unix(&path));
    echo(tls, "wss over a Unix socket");
    // Plain HTTP there is redirected, as on a TLS port.
    let mut s = connect_unix(&path);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    assert_eq!(status(&text), 308, "{text}");
    assert!(server.wait_log("redirected to https://localhost/healthz"));
}
