//! The operator console: lines typed on the server's stdin go to clients, and what clients say
//! is printed on stdout. stdin and stdout are polled by the server's one `mio::Poll`, like any
//! socket: a terminal or pipe that stops taking output costs dropped lines, never a stalled loop.

use std::io::{self, Write};
use std::os::fd::RawFd;

use crate::exec::{Lines, Pipe};

const STDIN: RawFd = 0;
const STDOUT: RawFd = 1;

/// The file status flags stdin and stdout had before the console made them non-blocking.
/// O_NONBLOCK lives on the open file description, which a terminal or pipe shares with the
/// shell and other programs: it is put back when this is dropped (the server exiting).
#[derive(Debug)]
pub struct StdioFlags {
    saved: Vec<(RawFd, libc::c_int)>,
}

impl StdioFlags {
    /// Records the flags of stdin and stdout, before either is changed (they may be one
    /// file description, as on a terminal).
    pub fn save() -> StdioFlags {
        let saved = [STDIN, STDOUT]
            .into_iter()
            // SAFETY: F_GETFL only reads the descriptor's status flags.
            .map(|fd| (fd, unsafe { libc::fcntl(fd, libc::F_GETFL) }))
            .filter(|&(_, flags)| flags >= 0)
            .collect();
        StdioFlags { saved }
    }

    /// Puts the recorded flags back.
    pub fn restore(&self) {
        for &(fd, flags) in &self.saved {
            // SAFETY: F_SETFL only changes the descriptor's status flags.
            unsafe { libc::fcntl(fd, libc::F_SETFL, flags) };
        }
    }
}

impl Drop for StdioFlags {
    fn drop(&mut self) {
        self.restore();
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with F_GETFL/F_SETFL only changes the descriptor's status flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Where a console line goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// Every WebSocket client.
    Everyone,
    /// The members of one room: the line began `@ROOM `.
    Room(&'a str),
}

/// Splits a typed line into its target and text: `@news hello` goes to room `news`.
pub fn parse_line(line: &str) -> (Target<'_>, &str) {
    if let Some(rest) = line.strip_prefix('@') {
        let (room, text) = rest.split_once(' ').unwrap_or((rest, ""));
        if crate::room::valid_name(room) {
            return (Target::Room(room), text);
        }
    }
    (Target::Everyone, line)
}

/// The server's stdin, non-blocking, split into lines.
#[derive(Debug, Default)]
pub struct Console {
    lines: Lines,
}

impl Console {
    /// Puts stdin in non-blocking mode so the loop never waits on it (see [`StdioFlags`]).
    pub fn new() -> io::Result<Console> {
        set_nonblocking(STDIN)?;
        Ok(Console::default())
    }

    /// The source to register with the poll.
    pub fn source() -> mio::unix::SourceFd<'static> {
        mio::unix::SourceFd(&STDIN)
    }

    /// Reads what stdin has, calling `on_line` per line; `Closed` at end of input.
    pub fn read(&mut self, buf: &mut [u8], on_line: &mut dyn FnMut(&[u8])) -> Pipe {
        loop {
            // SAFETY: read(2) into a buffer we own, at most its length.
            let n = unsafe { libc::read(STDIN, buf.as_mut_ptr().cast(), buf.len()) };
            match n {
                0 => {
                    self.lines.finish(on_line);
                    return Pipe::Closed;
                }
                n if n > 0 => self.lines.feed(&buf[..n as usize], on_line),
                _ => {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return Pipe::Open,
                        io::ErrorKind::Interrupted => {}
                        _ => return Pipe::Closed,
                    }
                }
            }
        }
    }
}

/// Console output waiting for stdout, at most `limit` bytes: whole lines are queued or
/// dropped, and written as stdout takes them.
#[derive(Debug)]
pub struct Output {
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    sent: usize,
    limit: usize,
    /// The last write would have blocked: wait for stdout's writable event before trying again.
    pub blocked: bool,
}

impl Output {
    pub fn new(limit: usize) -> Output {
        Output {
            buf: Vec::new(),
            sent: 0,
            limit,
            blocked: false,
        }
    }

    /// Makes stdout non-blocking (see [`StdioFlags`]) and returns the source to poll for
    /// writability.
    pub fn nonblocking_stdout() -> io::Result<mio::unix::SourceFd<'static>> {
        set_nonblocking(STDOUT)?;
        Ok(mio::unix::SourceFd(&STDOUT))
    }

    /// Queues a client's message as `[peer room] text` (binary as its size); false if it was
    /// dropped because the queue is full.
    pub fn message(
        &mut self,
        peer: &std::net::SocketAddr,
        room: &str,
        text: bool,
        data: &[u8],
    ) -> bool {
        let start = self.buf.len();
        let _ = if text {
            writeln!(
                self.buf,
                "[{peer} {room}] {}",
                String::from_utf8_lossy(data)
            )
        } else {
            writeln!(self.buf, "[{peer} {room}] <{} bytes binary>", data.len())
        };
        if self.buf.len() - self.sent > self.limit {
            self.buf.truncate(start);
            return false;
        }
        true
    }

    /// Queues lines another thread formatted (`--workers`); false if dropped, queue full.
    pub fn append(&mut self, lines: &[u8]) -> bool {
        if self.len() + lines.len() > self.limit {
            return false;
        }
        self.buf.extend_from_slice(lines);
        true
    }

    /// Takes the queued lines out (to hand them to the thread that writes stdout).
    pub fn take_bytes(&mut self) -> Vec<u8> {
        let mut lines = std::mem::take(&mut self.buf);
        lines.drain(..self.sent);
        self.sent = 0;
        lines
    }

    /// Bytes queued and not yet written.
    pub fn len(&self) -> usize {
        self.buf.len() - self.sent
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes what `w` takes now; stops at `WouldBlock` (the poll says when to go on).
    pub fn flush_to<W: Write>(&mut self, w: &mut W) -> io::Result<()> {
        while self.sent < self.buf.len() {
            match w.write(&self.buf[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
        } else if self.sent >= self.buf.len() / 2 {
            self.buf.drain(..self.sent);
            self.sent = 0;
        }
        Ok(())
    }
}

/// The process's stdout as a plain `Write`, without std's buffered, locked `Stdout`: a
/// non-blocking descriptor's `WouldBlock` must come back to the caller as is.
pub struct RawStdout;

impl Write for RawStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: write(2) from a buffer we borrow, at most its length.
        let n = unsafe { libc::write(STDOUT, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes `room` bytes, then would block.
    struct Slow {
        got: Vec<u8>,
        room: usize,
    }

    impl Write for Slow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_is_bounded_drops_whole_lines_and_keeps_order() {
        let peer = "127.0.0.1:5000".parse().unwrap();
        let mut out = Output::new(80);
        assert!(out.message(&peer, "echo", true, b"one"));
        assert!(out.message(&peer, "echo", false, b"xyz"));
        let line = "[127.0.0.1:5000 echo] one\n";
        let queued = out.len();
        assert!(queued <= 80);
        // Full: the next line is dropped whole.
        assert!(!out.message(&peer, "echo", true, &[b'a'; 40]));
        assert_eq!(out.len(), queued);
        let mut w = Slow {
            got: Vec::new(),
            room: 10,
        };
        out.flush_to(&mut w).unwrap();
        assert_eq!(out.len(), queued - 10);
        assert!(out.blocked);
        w.room = usize::MAX;
        out.flush_to(&mut w).unwrap();
        assert!(out.is_empty());
        let expect = format!("{line}[127.0.0.1:5000 echo] <3 bytes binary>\n");
        assert_eq!(String::from_utf8(w.got).unwrap(), expect);
        // Room again once written.
        assert!(out.message(&peer, "echo", true, &[b'a'; 40]));
    }

    #[test]
    fn lines_and_rooms() {
        assert_eq!(parse_line("hello all"), (Target::Everyone, "hello all"));
        assert_eq!(
            parse_line("@news breaking"),
            (Target::Room("news"), "breaking")
        );
        assert_eq!(parse_line("@news"), (Target::Room("news"), ""));
        assert_eq!(
            parse_line("@ not a room"),
            (Target::Everyone, "@ not a room")
        );
        assert_eq!(parse_line("@bad/room x"), (Target::Everyone, "@bad/room x"));
    }
}
