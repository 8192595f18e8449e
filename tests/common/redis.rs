//! A real `redis-server` for tests (Debian's package; `.ci/run` installs it): a free port, no
//! persistence, stopped by its PID; and a few raw RESP queries to look at it from outside.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::have_tool;

pub fn have_redis() -> bool {
    have_tool(
        Command::new("redis-server").arg("--version"),
        "redis-server",
        "apt-get install redis-server",
    )
}

/// A `redis-server` process, killed by its PID when dropped.
pub struct Redis {
    pub child: Child,
    pub port: u16,
}

impl Redis {
    /// Starts redis-server on `port` and waits (bounded) until it answers.
    pub fn start(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is needed: apt-get install redis-server (.ci/run does)");
        let redis = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Accepting is not yet answering: wait for the PONG.
            if query(port, &["PING"]).as_deref() == Some("+PONG\r\n") {
                return redis;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it by PID (SIGKILL: no goodbye to the clients) and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Subscribers of `channel` (`PUBSUB NUMSUB`).
    pub fn numsub(&self, channel: &str) -> u64 {
        let reply = query(self.port, &["PUBSUB", "NUMSUB", channel]).expect("PUBSUB NUMSUB");
        // *2 $len channel :N
        let n = reply.rsplit_once(':').expect("an integer").1;
        n.trim().parse().expect("an integer")
    }

    /// Waits (bounded) until `channel` has `n` subscribers; says whether it did.
    pub fn wait_numsub(&self, channel: &str, n: u64) -> bool {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if self.numsub(channel) == n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.numsub(channel) == n
    }

    /// The channels with subscribers that match `pattern` (`PUBSUB CHANNELS`), as the raw
    /// reply.
    pub fn channels(&self, pattern: &str) -> String {
        query(self.port, &["PUBSUB", "CHANNELS", pattern]).expect("PUBSUB CHANNELS")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends one command and returns its whole reply (read until the answer is complete for the
/// simple shapes used here: a status, an integer, or an array of bulk strings and integers).
pub fn query(port: u16, args: &[&str]) -> Option<String> {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    query_bytes(port, &args)
}

/// [`query`] with arguments that need not be text.
pub fn query_bytes(port: u16, args: &[&[u8]]) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut cmd = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        cmd.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        cmd.extend_from_slice(a);
        cmd.extend_from_slice(b"\r\n");
    }
    s.write_all(&cmd).ok()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !complete(&reply) {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(reply).ok()
}

/// Whether `r` holds one whole reply of the shapes [`query`] handles.
fn complete(r: &[u8]) -> bool {
    let text = String::from_utf8_lossy(r);
    let lines: Vec<&str> = text.split("\r\n").collect();
    if !text.ends_with("\r\n") {
        return false;
    }
    let Some(first) = lines.first() else {
        return false;
    };
    let Some(count) = first.strip_prefix('*') else {
        return true;
    };
    let count: usize = count.parse().unwrap_or(0);
    // Each element is `$len` + data (2 lines) or `:n` (1 line).
    let (mut i, mut seen) = (1, 0);
    while seen < count && i < lines.len() {
        i += if lines[i].starts_with('$') { 2 } else { 1 };
        seen += 1;
    }
    seen == count && i < lines.len()
}
