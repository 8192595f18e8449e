//! The rules a peer can break, one variant each, and the one place that maps each to its
//! answer: a close code (RFC 6455 §7.4.1) or an HTTP status (RFC 6455 §4.2.2, RFC 9110 §15).

use std::fmt;
use std::io;

pub use crate::http::chunked::ChunkedError;
pub use crate::origin::OriginError;
pub use crate::target::TargetError;

/// Close codes this server sends (RFC 6455 §7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    /// Never on the wire: stands for "no status code" in counters (an empty close frame).
    pub const NO_STATUS: u16 = 1005;

    /// Codes a peer may put in a close frame (§7.4.1, §7.4.2): 1000–1003, 1007–1014 and the
    /// registered/private ranges 3000–4999. 1004–1006 and 1015 must never be sent on the wire.
    pub fn is_valid_on_wire(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// A broken rule of the framing or messaging layer; each one fails the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// §5.2: opcodes 3–7 and 0xB–0xF are reserved.
    UnknownOpcode(u8),
    /// §5.2: a 64-bit length must have its most significant bit clear.
    LengthTopBitSet,
    /// §5.1: "a client MUST mask all frames that it sends to the server".
    UnmaskedFrame,
    /// §5.1: "A server MUST NOT mask any frames that it sends to the client".
    MaskedFrame,
    /// §5.2: RSV bits must be 0 unless an extension defining them was negotiated.
    ReservedBits,
    /// §5.5: control frames carry at most 125 bytes of payload.
    ControlTooLong,
    /// §5.5: "Control frames themselves MUST NOT be fragmented."
    FragmentedControl,
    /// §5.4: a continuation frame with no message in progress.
    UnexpectedContinuation,
    /// §5.4: a new data frame while a fragmented message is still open.
    ExpectedContinuation,
    /// §8.1: text messages must be valid UTF-8.
    InvalidUtf8,
    /// §5.5.1: a close body of exactly one byte cannot hold a code.
    CloseBodyTooShort,
    /// §7.4: a close code that must not appear on the wire.
    InvalidCloseCode(u16),
    /// §5.5.1: the close reason must be UTF-8.
    InvalidCloseReason,
    /// §10.4: the frame or message is larger than this server accepts.
    MessageTooBig,
    /// RFC 7692 §6.1: RSV1 ("Per-Message Compressed") only on the first frame of a data
    /// message, never on a control or continuation frame.
    MisplacedCompressedBit,
    /// RFC 7692 §6.2: a compressed message that does not inflate, or inflates past the limit.
    Deflate(DeflateError),
}

impl ProtocolError {
    /// The close code that answers this error (§7.4.1).
    pub fn close_code(self) -> u16 {
        use ProtocolError::*;
        match self {
            InvalidUtf8 | InvalidCloseReason => close_code::INVALID_PAYLOAD,
            MessageTooBig => close_code::TOO_BIG,
            Deflate(e) => e.close_code(),
            UnknownOpcode(_)
            | MisplacedCompressedBit
            | LengthTopBitSet
            | UnmaskedFrame
            | MaskedFrame
            | ReservedBits
            | ControlTooLong
            | FragmentedControl
            | UnexpectedContinuation
            | ExpectedContinuation
            | CloseBodyTooShort
            | InvalidCloseCode(_) => close_code::PROTOCOL_ERROR,
        }
    }

    /// Whether the frame stream is still in step after this error, so that a close frame
    /// from the peer can still be recognised while we wait for it.
    pub fn frames_still_aligned(self) -> bool {
        self != ProtocolError::LengthTopBitSet
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ProtocolError::*;
        match self {
            UnknownOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            LengthTopBitSet => f.write_str("64-bit payload length with the top bit set"),
            UnmaskedFrame => f.write_str("unmasked frame from a client"),
            MaskedFrame => f.write_str("masked frame from a server"),
            ReservedBits => f.write_str("RSV bits set without a negotiated extension"),
            ControlTooLong => f.write_str("control frame payload over 125 bytes"),
            FragmentedControl => f.write_str("fragmented control frame"),
            UnexpectedContinuation => f.write_str("continuation frame without a message"),
            ExpectedContinuation => f.write_str("new data frame inside a fragmented message"),
            InvalidUtf8 => f.write_str("text message is not valid UTF-8"),
            CloseBodyTooShort => f.write_str("close frame body of 1 byte"),
            InvalidCloseCode(c) => write!(f, "close code {c} is not allowed on the wire"),
            InvalidCloseReason => f.write_str("close reason is not valid UTF-8"),
            MessageTooBig => f.write_str("message over the size limit"),
            MisplacedCompressedBit => {
                f.write_str("RSV1 on a control or continuation frame (RFC 7692 §6.1)")
            }
            Deflate(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// Why an upgrade request was refused (RFC 6455 §4.2.1, §4.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// The request head is not valid HTTP/1.1.
    MalformedHead,
    /// The request head is larger than the configured limit.
    HeadTooLarge,
    /// §4.2.1 (1): the method must be GET.
    NotGet,
    /// §4.2.1 (1): HTTP/1.1 or higher.
    OldHttpVersion,
    /// §4.2.1 (2), RFC 9112 §3.2: exactly one Host header is required.
    MissingHost,
    /// RFC 9112 §6.3: Content-Length values that are not one run of digits.
    BadContentLength,
    /// §4.2.1 (3): Upgrade must include the token "websocket".
    MissingUpgrade,
    /// §4.2.1 (4): Connection must include the token "Upgrade".
    MissingConnectionUpgrade,
    /// §4.2.1 (5): Sec-WebSocket-Key must be base64 of 16 bytes.
    BadKey,
    /// §4.2.1 (6): only version 13 is spoken; §4.2.2 says to answer 426 with the versions we do.
    UnsupportedVersion,
    /// The request path names no WebSocket endpoint.
    UnknownPath,
    /// A resource limit (connections, children) is reached.
    Unavailable,
    /// The connection's program (`--exec`) could not be started.
    ProgramFailed,
    /// RFC 9112 §3.2: the request-target is none of the forms a server accepts.
    BadTarget(TargetError),
    /// RFC 6455 §10.2: the page's `Origin` is not this server's nor allowed by `--allowed-origin`.
    OriginRefused(OriginError),
    /// `--max-per-ip`: the address has as many connections open as it may (RFC 6585 §4).
    TooManyFromAddress,
    /// RFC 9112 §7.1: a chunked body that breaks the coding, or decodes past the body limit.
    BadChunkedBody(ChunkedError),
    /// RFC 9112 §6.1: a transfer coding other than `chunked`, which is all this server decodes.
    UnsupportedTransferCoding,
    /// RFC 9112 §6.1: `chunked` missing from the end or given twice, or any Transfer-Encoding
    /// in an HTTP/1.0 request: the body cannot be framed.
    BadTransferEncoding,
    /// RFC 9112 §6.3: Transfer-Encoding and Content-Length together (a smuggling attempt).
    LengthAndChunked,
}

impl HandshakeError {
    /// The HTTP status that answers this error.
    pub fn status(self) -> u16 {
        use HandshakeError::*;
        match self {
            HeadTooLarge => 431,
            UnsupportedVersion => 426,
            UnknownPath => 404,
            Unavailable => 503,
            ProgramFailed => 500,
            OriginRefused(_) => 403,
            TooManyFromAddress => 429,
            BadChunkedBody(e) => e.status(),
            UnsupportedTransferCoding => 501,
            BadTarget(_)
            | MalformedHead
            | BadContentLength
            | NotGet
            | OldHttpVersion
            | MissingHost
            | MissingUpgrade
            | MissingConnectionUpgrade
            | BadKey
            | BadTransferEncoding
            | LengthAndChunked => 400,
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use HandshakeError::*;
        f.write_str(match self {
            BadTarget(e) => return e.fmt(f),
            OriginRefused(e) => return e.fmt(f),
            BadChunkedBody(e) => return e.fmt(f),
            UnsupportedTransferCoding => "only the chunked transfer coding is supported",
            BadTransferEncoding => "Transfer-Encoding must end in one \"chunked\" (HTTP/1.1 only)",
            LengthAndChunked => "Transfer-Encoding and Content-Length together",
            MalformedHead => "malformed HTTP request head",
            HeadTooLarge => "request head too large",
            NotGet => "WebSocket upgrade must use GET",
            OldHttpVersion => "WebSocket upgrade needs HTTP/1.1 or later",
            MissingHost => "a request needs exactly one Host header",
            BadContentLength => "invalid Content-Length",
            MissingUpgrade => "Upgrade header must contain \"websocket\"",
            MissingConnectionUpgrade => "Connection header must contain \"Upgrade\"",
            BadKey => "Sec-WebSocket-Key must be base64 of 16 bytes",
            UnsupportedVersion => "unsupported Sec-WebSocket-Version (this server speaks 13)",
            UnknownPath => "no WebSocket endpoint at this path",
            Unavailable => "server busy, try again later",
            ProgramFailed => "the program for this endpoint could not be started",
            TooManyFromAddress => "too many connections from this address, try again later",
        })
    }
}

impl std::error::Error for HandshakeError {}

/// An I/O error as the operator reads it: the system's message without the `(os error N)`
/// that `io::Error` appends, which names nothing the operator can act on.
pub fn io_message(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}

/// `e`, kind kept, with its subject in front: `cannot listen on 1.2.3.4:9001: Cannot assign
/// requested address`, `--www /x: No such file or directory`.
pub fn io_context(subject: impl fmt::Display, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{subject}: {}", io_message(&e)))
}

/// A broken rule of permessage-deflate (RFC 7692); each one fails the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeflateError {
    /// RFC 6455 §10.4 applied to the inflated size: the message inflates past the size limit.
    TooBig,
    /// RFC 7692 §6.2: the compressed payload is not valid DEFLATE data. Answered like bad UTF-8
    /// ("data inconsistent with the type of the message", as Node's `ws` does).
    InvalidData,
    /// RFC 6455 §9.1, RFC 7692 §7.1: the server's answer is invalid or names what was not offered.
    BadResponse(&'static str),
    /// Our own compressor failed (out of memory).
    Internal,
}

impl DeflateError {
    /// The close code that answers this error (RFC 6455 §7.4.1).
    pub fn close_code(self) -> u16 {
        match self {
            DeflateError::TooBig => close_code::TOO_BIG,
            DeflateError::InvalidData => close_code::INVALID_PAYLOAD,
            DeflateError::BadResponse(_) => close_code::PROTOCOL_ERROR,
            DeflateError::Internal => close_code::INTERNAL,
        }
    }
}

impl fmt::Display for DeflateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeflateError::TooBig => f.write_str("compressed message inflates past the size limit"),
            DeflateError::InvalidData => {
                f.write_str("compressed message is not valid DEFLATE data")
            }
            DeflateError::BadResponse(why) => write!(f, "bad permessage-deflate response: {why}"),
            DeflateError::Internal => f.write_str("compressor failed"),
        }
    }
}

impl std::error::Error for DeflateError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_code_ranges() {
        for c in [1000, 1001, 1002, 1003, 1007, 1010, 1014, 3000, 4999] {
            assert!(close_code::is_valid_on_wire(c), "{c}");
        }
        for c in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert!(!close_code::is_valid_on_wire(c), "{c}");
        }
    }

    #[test]
    fn error_codes() {
        assert_eq!(ProtocolError::InvalidUtf8.close_code(), 1007);
        assert_eq!(ProtocolError::MessageTooBig.close_code(), 1009);
        assert_eq!(ProtocolError::ReservedBits.close_code(), 1002);
        assert_eq!(HandshakeError::UnsupportedVersion.status(), 426);
        assert_eq!(HandshakeError::HeadTooLarge.status(), 431);
        assert_eq!(HandshakeError::BadKey.status(), 400);
        assert_eq!(
            HandshakeError::OriginRefused(OriginError::CrossOrigin).status(),
            403
        );
        assert_eq!(HandshakeError::TooManyFromAddress.status(), 429);
        assert_eq!(
            HandshakeError::BadTarget(TargetError::Fragment).status(),
            400
        );
    }

    #[test]
    fn io_errors_name_their_subject_without_the_os_error_number() {
        let e = io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
        assert!(e.to_string().contains("(os error"));
        let e = io_context("cannot listen on 192.0.2.1:9001", e);
        assert_eq!(e.kind(), io::ErrorKind::AddrNotAvailable);
        assert_eq!(
            e.to_string(),
            "cannot listen on 192.0.2.1:9001: Cannot assign requested address"
        );
        let plain = io::Error::other("no number (here)");
        assert_eq!(io_message(&plain), "no number (here)");
        assert_eq!(DeflateError::TooBig.close_code(), 1009);
        assert_eq!(DeflateError::InvalidData.close_code(), 1007);
        assert_eq!(
            ProtocolError::Deflate(DeflateError::TooBig).close_code(),
            1009
        );
        assert_eq!(ProtocolError::MisplacedCompressedBit.close_code(), 1002);
    }
}
