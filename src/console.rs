//! The operator console: lines typed on the server's stdin go to clients, and what clients say
//! is printed on stdout. stdin is polled by the server's one `mio::Poll`, like any socket.

use std::io::{self, Write};
use std::os::fd::RawFd;

use crate::exec::{Lines, Pipe};

const STDIN: RawFd = 0;

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
    /// Puts stdin in non-blocking mode so the loop never waits on it.
    pub fn new() -> io::Result<Console> {
        // SAFETY: fcntl on fd 0 with F_GETFL/F_SETFL only changes its status flags.
        unsafe {
            let flags = libc::fcntl(STDIN, libc::F_GETFL);
            if flags < 0 || libc::fcntl(STDIN, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
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

/// Prints a client's message on stdout as `[peer room] text` (binary as its size).
pub fn print_message(peer: &std::net::SocketAddr, room: &str, text: bool, data: &[u8]) {
    let mut out = io::stdout().lock();
    let _ = if text {
        writeln!(out, "[{peer} {room}] {}", String::from_utf8_lossy(data))
    } else {
        writeln!(out, "[{peer} {room}] <{} bytes binary>", data.len())
    };
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

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
