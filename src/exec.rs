//! A program per connection, as websocketd does it: each connection's child gets the request
//! in CGI-style environment variables, its stdout lines become messages, and messages become
//! lines on its stdin. Pipes are non-blocking and polled by the server's one `mio::Poll`.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Instant;

use mio::unix::pipe::{Receiver, Sender};
use mio::{Interest, Registry, Token};

/// What a pipe token is for: the low bits of a client's token say which of its pipes it is.
pub const STDOUT: usize = 1;
pub const STDERR: usize = 2;
pub const STDIN: usize = 3;

/// A line longer than this is passed on in pieces of this size, so a child that never writes a
/// newline cannot make the server buffer without end.
pub const MAX_LINE: usize = 1 << 20;

/// The request details a program sees, in the way CGI passes them (RFC 3875 §4.1).
#[derive(Debug, Default)]
pub struct RequestInfo {
    pub remote: Option<SocketAddr>,
    pub path: String,
    pub query: String,
    pub uri: String,
    pub protocol: Option<String>,
    pub server_port: u16,
    pub headers: Vec<(String, String)>,
}

impl RequestInfo {
    /// The environment variables for the child.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("GATEWAY_INTERFACE".into(), "websocketd-CGI/0.1".into()),
            (
                "SERVER_SOFTWARE".into(),
                concat!("wsloop/", env!("CARGO_PKG_VERSION")).into(),
            ),
            ("SERVER_PROTOCOL".into(), "HTTP/1.1".into()),
            ("SERVER_PORT".into(), self.server_port.to_string()),
            ("REQUEST_METHOD".into(), "GET".into()),
            ("REQUEST_PATH".into(), self.path.clone()),
            ("REQUEST_URI".into(), self.uri.clone()),
            ("SCRIPT_NAME".into(), self.path.clone()),
            ("QUERY_STRING".into(), self.query.clone()),
        ];
        if let Some(addr) = self.remote {
            env.push(("REMOTE_ADDR".into(), addr.ip().to_string()));
            env.push(("REMOTE_PORT".into(), addr.port().to_string()));
        }
        if let Some(p) = &self.protocol {
            env.push(("SEC_WEBSOCKET_PROTOCOL".into(), p.clone()));
        }
        for (name, value) in &self.headers {
            // RFC 3875 §4.1.18: HTTP_ + the name upper-cased with '-' as '_'.
            let var: String = name
                .chars()
                .map(|c| {
                    if c == '-' {
                        '_'
                    } else {
                        c.to_ascii_uppercase()
                    }
                })
                .collect();
            if var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                env.push((format!("HTTP_{var}"), value.clone()));
            }
        }
        env
    }
}

/// Splits a byte stream into lines (without their `\n` or `\r\n`).
#[derive(Debug, Default)]
pub struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// Adds bytes and calls `on_line` for every line they complete.
    pub fn feed(&mut self, mut data: &[u8], on_line: &mut dyn FnMut(&[u8])) {
        while let Some(i) = data.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() {
                on_line(trim_cr(&data[..i]));
            } else {
                self.partial.extend_from_slice(&data[..i]);
                on_line(trim_cr(&self.partial));
                self.partial.clear();
            }
            data = &data[i + 1..];
        }
        self.partial.extend_from_slice(data);
        while self.partial.len() >= MAX_LINE {
            let rest = self.partial.split_off(MAX_LINE);
            on_line(&self.partial);
            self.partial = rest;
        }
    }

    /// At end of input: the last line, if it had no newline.
    pub fn finish(&mut self, on_line: &mut dyn FnMut(&[u8])) {
        if !self.partial.is_empty() {
            on_line(trim_cr(&self.partial));
            self.partial = Vec::new();
        }
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// A running child attached to one connection.
pub struct Program {
    child: Child,
    stdin: Option<Sender>,
    stdout: Option<Receiver>,
    stderr: Option<Receiver>,
    /// Bytes for stdin the pipe has not taken yet.
    to_stdin: Vec<u8>,
    out_lines: Lines,
    err_lines: Lines,
    status: Option<ExitStatus>,
}

/// What reading a pipe found.
#[derive(Debug, PartialEq, Eq)]
pub enum Pipe {
    Open,
    Closed,
    /// Reading stopped at the caller's limit: bytes may still be waiting, and as the poll is
    /// edge-triggered no new event will say so; the caller reads again when it has room.
    Unread,
}

/// Checks at start-up that `--exec PATH` names a program this process may run, so that a typo
/// fails once with the path named instead of refusing every upgrade with 500. A bare name is
/// looked up in `$PATH`, as `Command` will.
pub fn check_program(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let executable = |p: &std::path::Path| -> io::Result<()> {
        let meta = std::fs::metadata(p)?;
        if !meta.is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a file"));
        }
        let c = std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        // SAFETY: `c` is a NUL-terminated path that lives across the call.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), "not executable by this user"));
        }
        Ok(())
    };
    if path.as_os_str().as_bytes().contains(&b'/') {
        return executable(path);
    }
    let search = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&search).any(|dir| executable(&dir.join(path)).is_ok()) {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no executable of that name in $PATH",
    ))
}

impl Program {
    /// Starts `path args…` with the request's environment and all three pipes.
    pub fn spawn<S: AsRef<OsStr>>(
        path: &std::path::Path,
        args: &[S],
        info: &RequestInfo,
    ) -> io::Result<Program> {
        Program::spawn_with_env(path, args, info.env())
    }

    /// Starts `path args…` with these environment variables added, and all three pipes.
    pub fn spawn_with_env<S: AsRef<OsStr>>(
        path: &std::path::Path,
        args: &[S],
        env: Vec<(String, String)>,
    ) -> io::Result<Program> {
        let mut child = Command::new(path)
            .args(args)
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let pipes = (|| -> io::Result<_> {
            let stdin = Sender::from(child.stdin.take().ok_or(io::ErrorKind::BrokenPipe)?);
            let stdout = Receiver::from(child.stdout.take().ok_or(io::ErrorKind::BrokenPipe)?);
            let stderr = Receiver::from(child.stderr.take().ok_or(io::ErrorKind::BrokenPipe)?);
            stdin.set_nonblocking(true)?;
            stdout.set_nonblocking(true)?;
            stderr.set_nonblocking(true)?;
            Ok((stdin, stdout, stderr))
        })();
        let (stdin, stdout, stderr) = match pipes {
            Ok(p) => p,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(Program {
            child,
            stdin: Some(stdin),
            stdout: Some(stdout),
            stderr: Some(stderr),
            to_stdin: Vec::new(),
            out_lines: Lines::default(),
            err_lines: Lines::default(),
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Registers the pipes; `base` is the client's token, whose low bits are free.
    pub fn register(&mut self, registry: &Registry, base: usize) -> io::Result<()> {
        if let Some(p) = &mut self.stdout {
            registry.register(p, Token(base | STDOUT), Interest::READABLE)?;
        }
        if let Some(p) = &mut self.stderr {
            registry.register(p, Token(base | STDERR), Interest::READABLE)?;
        }
        if let Some(p) = &mut self.stdin {
            registry.register(p, Token(base | STDIN), Interest::WRITABLE)?;
        }
        Ok(())
    }

    /// Queues `line` and a newline for stdin, and writes what the pipe takes now.
    pub fn send_line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.stdin.is_none() {
            return Ok(());
        }
        self.to_stdin.extend_from_slice(line);
        self.to_stdin.push(b'\n');
        self.flush_stdin()
    }

    /// Writes pending stdin bytes until the pipe is full or they are out.
    pub fn flush_stdin(&mut self) -> io::Result<()> {
        let Some(pipe) = &mut self.stdin else {
            return Ok(());
        };
        while !self.to_stdin.is_empty() {
            match pipe.write(&self.to_stdin) {
                Ok(n) => {
                    self.to_stdin.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // The child closed its stdin (or exited): nothing more can reach it.
                    self.to_stdin = Vec::new();
                    self.stdin = None;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Bytes waiting for the child's stdin.
    pub fn stdin_backlog(&self) -> usize {
        self.to_stdin.len()
    }

    /// Closes the child's stdin: it sees end of input.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
        self.to_stdin = Vec::new();
    }

    /// Reads stdout until it would block or `limit` bytes are read, calling `on_line` per
    /// complete line. The limit is the room the client has: a client that does not read
    /// leaves the pipe full, which blocks the program (the pipe's own backpressure).
    pub fn read_stdout(
        &mut self,
        buf: &mut [u8],
        limit: usize,
        on_line: &mut dyn FnMut(&[u8]),
    ) -> Pipe {
        let pipe = read_lines(&mut self.stdout, &mut self.out_lines, buf, limit, on_line);
        if pipe == Pipe::Closed {
            self.out_lines.finish(on_line);
        }
        pipe
    }

    /// Reads stderr likewise.
    pub fn read_stderr(&mut self, buf: &mut [u8], on_line: &mut dyn FnMut(&[u8])) -> Pipe {
        let pipe = read_lines(
            &mut self.stderr,
            &mut self.err_lines,
            buf,
            usize::MAX,
            on_line,
        );
        if pipe == Pipe::Closed {
            self.err_lines.finish(on_line);
        }
        pipe
    }

    pub fn stdout_open(&self) -> bool {
        self.stdout.is_some()
    }

    /// The exit status, once the child has exited (reaping it, so no zombie is left).
    pub fn try_reap(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Detaches the program from its connection: stdin closed, output pipes dropped.
    /// Returns what is left to do: end it politely, then firmly, and reap it.
    pub fn detach(mut self, now: Instant, grace: std::time::Duration) -> Ending {
        self.close_stdin();
        self.stdout = None;
        self.stderr = None;
        Ending {
            term_at: now + grace,
            kill_at: now + grace * 2,
            termed: false,
            program: self,
        }
    }
}

/// Reads a pipe until it would block or `limit` bytes are read, splitting what arrives into
/// lines.
fn read_lines(
    pipe: &mut Option<Receiver>,
    lines: &mut Lines,
    buf: &mut [u8],
    mut limit: usize,
    on_line: &mut dyn FnMut(&[u8]),
) -> Pipe {
    let Some(p) = pipe else { return Pipe::Closed };
    loop {
        if limit == 0 {
            return Pipe::Unread;
        }
        let want = buf.len().min(limit);
        match p.read(&mut buf[..want]) {
            Ok(0) => {
                *pipe = None;
                return Pipe::Closed;
            }
            Ok(n) => {
                limit -= n;
                lines.feed(&buf[..n], on_line)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Pipe::Open,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                *pipe = None;
                return Pipe::Closed;
            }
        }
    }
}

/// A program whose connection is gone: SIGTERM after the grace period, SIGKILL after another.
pub struct Ending {
    program: Program,
    term_at: Instant,
    kill_at: Instant,
    termed: bool,
}

impl Ending {
    /// Moves the ending along; true once the child is reaped.
    pub fn tick(&mut self, now: Instant) -> bool {
        if self.program.try_reap().is_some() {
            return true;
        }
        if now >= self.kill_at {
            let _ = self.program.child.kill();
            let _ = self.program.child.wait();
            log::info!("exec: pid {} ignored SIGTERM, killed", self.program.pid());
            return true;
        }
        if now >= self.term_at && !self.termed {
            self.termed = true;
            let pid = self.program.pid() as libc::pid_t;
            // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        false
    }

    /// Ends the child at once (the server is stopping).
    pub fn kill_now(&mut self) {
        if self.program.try_reap().is_none() {
            let _ = self.program.child.kill();
            let _ = self.program.child.wait();
        }
    }

    /// When [`Ending::tick`] next has something to do.
    pub fn next_deadline(&self) -> Instant {
        if self.termed {
            self.kill_at
        } else {
            self.term_at
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_pieces_with_crlf_and_a_last_unterminated_line() {
        let mut got = Vec::new();
        let mut l = Lines::default();
        for piece in [&b"one\ntw"[..], b"o\r", b"\nthree\n\nfour"] {
            l.feed(piece, &mut |line| {
                got.push(String::from_utf8_lossy(line).into_owned())
            });
        }
        l.finish(&mut |line| got.push(String::from_utf8_lossy(line).into_owned()));
        assert_eq!(got, ["one", "two", "three", "", "four"]);
    }

    #[test]
    fn an_endless_line_is_cut() {
        let mut n = 0;
        let mut l = Lines::default();
        l.feed(&vec![b'x'; MAX_LINE * 2 + 5], &mut |line| {
            assert_eq!(line.len(), MAX_LINE);
            n += 1
        });
        assert_eq!(n, 2);
    }

    #[test]
    fn cgi_environment() {
        let info = RequestInfo {
            remote: Some("127.0.0.1:5555".parse().unwrap()),
            path: "/exec".into(),
            query: "a=1".into(),
            uri: "/exec?a=1".into(),
            protocol: Some("chat".into()),
            server_port: 9001,
            headers: vec![
                ("User-Agent".into(), "test".into()),
                ("Bad Name".into(), "x".into()),
            ],
        };
        let env = info.env();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("REMOTE_ADDR"), Some("127.0.0.1"));
        assert_eq!(get("REMOTE_PORT"), Some("5555"));
        assert_eq!(get("QUERY_STRING"), Some("a=1"));
        assert_eq!(get("REQUEST_PATH"), Some("/exec"));
        assert_eq!(get("SEC_WEBSOCKET_PROTOCOL"), Some("chat"));
        assert_eq!(get("HTTP_USER_AGENT"), Some("test"));
        assert!(get("HTTP_BAD NAME").is_none());
    }
}
