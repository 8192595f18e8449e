//! Test harness: starts the real `wsloop` binary on port 0 and talks to it over real sockets.
#![allow(dead_code)]

pub mod redis;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A server process, stopped (by its PID) when dropped.
pub struct TestServer {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<String>>,
}

impl TestServer {
    pub fn start(args: &[&str]) -> TestServer {
        Self::start_with(args, |_| {})
    }

    /// Starts the server with extra flags; `setup` may adjust the command (stdin, env, ...).
    pub fn start_with(args: &[&str], setup: impl FnOnce(&mut Command)) -> TestServer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsloop"));
        cmd.args(["--port", "0"]);
        if !args.contains(&"--bind") {
            cmd.args(["--bind", "127.0.0.1"]);
        }
        cmd.args(args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        setup(&mut cmd);
        let mut child = cmd.spawn().expect("start wsloop");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let found = ["listening on ws://", "listening on wss://"]
                    .iter()
                    .find_map(|m| line.find(m).map(|i| i + m.len()));
                if let Some(at) = found {
                    // The address ends the text line; in a JSON line a quote follows it.
                    let rest = &line[at..];
                    let end = rest.find(['"', ' ']).unwrap_or(rest.len());
                    let addr: SocketAddr = rest[..end].trim().parse().unwrap();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start; log:\n{}", log.lock().unwrap());
            }
        };
        TestServer { child, addr, log }
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Waits (bounded) until the server's log contains `needle`.
    pub fn wait_log(&self, needle: &str) -> bool {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if self.log.lock().unwrap().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// A raw WebSocket connection: handshake done, 101 read.
    pub fn ws_raw(&self, path: &str) -> TcpStream {
        let mut s = self.connect();
        s.write_all(upgrade_request(path, &[]).as_bytes()).unwrap();
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        s
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

pub fn upgrade_request(path: &str, extra: &[&str]) -> String {
    let mut r = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for h in extra {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r
}

/// Reads an HTTP response head byte by byte (so no frame bytes are eaten).
pub fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Reads a whole HTTP response: head and `Content-Length` body.
pub fn read_response(s: &mut TcpStream) -> (String, Vec<u8>) {
    let head = read_head(s);
    let len = header(&head, "content-length")
        .map(|v| v.parse::<usize>().unwrap())
        .unwrap_or(0);
    let mut body = vec![0; len];
    s.read_exact(&mut body).unwrap();
    (head, body)
}

/// The value of a header in a response head (case-insensitive name).
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

pub fn status(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A masked client frame.
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let key = [0xa1, 0xb2, 0xc3, 0xd4];
    match payload.len() {
        n if n < 126 => v.push(0x80 | n as u8),
        n if n <= 65535 => {
            v.push(0x80 | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            v.push(0x80 | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    v.extend_from_slice(&key);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    v
}

/// A frame read from the server: (fin, opcode, payload). Panics on a masked server frame.
pub fn read_frame(s: &mut TcpStream) -> std::io::Result<(bool, u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h)?;
    assert_eq!(h[1] & 0x80, 0, "server frames must not be masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b)?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b)?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0; len];
    s.read_exact(&mut p)?;
    Ok((h[0] & 0x80 != 0, h[0] & 0x0f, p))
}

/// Reads frames until a close frame and returns its code (None for an empty close).
pub fn read_close_code(s: &mut TcpStream) -> Option<u16> {
    loop {
        let (_, op, p) = read_frame(s).expect("a close frame");
        if op == 8 {
            return (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
        }
    }
}

/// True when the server closes the TCP connection (EOF) within the read timeout.
pub fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 256];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// A process's state letter from `/proc/PID/stat` (`None`: gone, reaped).
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim().chars().next()
}

/// The processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        if fields.get(1).and_then(|f| f.parse::<u32>().ok()) == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// Sends a raw request on a new connection and reads the whole answer: (status, head, body).
pub fn exchange(server: &TestServer, request: &str) -> (u16, String, String) {
    let mut s = server.connect();
    s.write_all(request.as_bytes()).unwrap();
    let (head, body) = read_response(&mut s);
    (
        status(&head),
        head,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Whether an outside tool a test needs is installed (`probe` runs and succeeds). Without it
/// the test is skipped, loudly, so that `cargo test` works on a fresh machine; under CI
/// (`CI` set, as `.ci/run` runs) it fails instead, since `.ci/run` installs every such tool.
pub fn have_tool(probe: &mut Command, what: &str, install: &str) -> bool {
    let ok = probe
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{what} is missing under CI: {install}"
        );
        // Straight to stderr: libtest captures `eprintln!`, and a skip must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: {what} is missing ({install}); .ci/run installs it ***\n"
        );
    }
    ok
}

/// Waits (up to `limit`) until process `pid` is gone: exited and reaped, not even a zombie.
pub fn gone_within(pid: u32, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while process_state(pid).is_some() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    process_state(pid).is_none()
}
