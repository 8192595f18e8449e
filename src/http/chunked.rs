//! The chunked transfer coding of request bodies (RFC 9112 §7.1), sans-I/O and incremental:
//! bytes go in as they arrive, the decoded body comes out, and the decoder says when the body
//! (trailers included) has ended and how many of the bytes given were its own.
//!
//! ```text
//! chunked-body = *chunk last-chunk trailer-section CRLF
//! chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! last-chunk   = 1*("0") [ chunk-ext ] CRLF
//! ```
//!
//! Extensions are ignored and trailer fields skipped (§7.1.1, §7.1.2: a recipient may discard
//! them). Lines end in CRLF; a bare LF is refused, since framing that two parsers could read
//! differently is how requests are smuggled (§11.2).

use std::fmt;

/// What [`ChunkedDecoder::decode`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Every byte given was used; the body goes on in the next ones.
    Partial,
    /// The body ended after this many of the bytes given; the rest is the next request.
    Complete(usize),
}

/// A broken rule of the chunked coding; the body cannot be framed and the connection closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkedError {
    /// §7.1: `chunk-size = 1*HEXDIG`, followed only by extensions; or one too large to count.
    BadSize,
    /// §7.1: chunk data, size lines and trailer lines each end in CRLF.
    MissingCrlf,
    /// A size line (with its extensions) or the trailer section is longer than allowed.
    LineTooLong,
    /// The decoded body would pass the body limit (`--max-message-size`).
    TooLarge,
}

impl ChunkedError {
    /// The HTTP status that answers it: 413 for a body over the limit, 400 for the rest.
    pub fn status(self) -> u16 {
        match self {
            ChunkedError::TooLarge => 413,
            _ => 400,
        }
    }
}

impl fmt::Display for ChunkedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChunkedError::BadSize => "malformed chunk size",
            ChunkedError::MissingCrlf => "chunk not ended by CRLF",
            ChunkedError::LineTooLong => "chunk size line or trailers too long",
            ChunkedError::TooLarge => "request body too large",
        })
    }
}

impl std::error::Error for ChunkedError {}

/// Where the decoder stands in the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a chunk size (`digits` so far, `size` their value).
    Size {
        size: u64,
        digits: usize,
    },
    /// After the size: extensions (ignored) up to CR; `len` bytes of the line so far.
    Extension {
        size: u64,
        len: usize,
    },
    /// The CR of a size line was seen; LF must follow.
    SizeLf {
        size: u64,
    },
    /// Inside chunk data, this many bytes left.
    Data {
        left: u64,
    },
    /// After chunk data: CR, then LF.
    DataCr,
    DataLf,
    /// After the last chunk: at the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// Inside a trailer field line, skipped up to its CR.
    Trailer,
    /// The CR of a trailer line; LF must follow.
    TrailerLf,
    /// The CR of the empty line that ends the body; LF must follow.
    EndLf,
    Done,
}

/// Decodes one chunked body, incrementally.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    /// Largest decoded body accepted.
    limit: usize,
    /// Longest size line, and most trailer bytes, accepted.
    max_line: usize,
    /// Decoded bytes so far.
    decoded: usize,
    /// Trailer bytes so far.
    trailers: usize,
}

impl ChunkedDecoder {
    /// A decoder for a body of at most `limit` decoded bytes whose size lines and trailer
    /// section are at most `max_line` bytes each (the request head limit suits).
    pub fn new(limit: usize, max_line: usize) -> ChunkedDecoder {
        ChunkedDecoder {
            state: State::Size { size: 0, digits: 0 },
            limit,
            max_line: max_line.max(16),
            decoded: 0,
            trailers: 0,
        }
    }

    /// Decoded bytes so far.
    pub fn decoded(&self) -> usize {
        self.decoded
    }

    /// Decodes what `input` holds, appending body bytes to `body`. `Partial` means every byte
    /// was used and more are needed: call again with the next ones. After `Complete` or an
    /// error the decoder is finished.
    pub fn decode(&mut self, input: &[u8], body: &mut Vec<u8>) -> Result<Status, ChunkedError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.state = match self.state {
                State::Size { size, digits } => match hex(b) {
                    // §7.1: a size that does not fit in 64 bits cannot be honoured (nor is
                    // any this large ever under the limit).
                    Some(d) if digits < 15 => State::Size {
                        size: size << 4 | u64::from(d),
                        digits: digits + 1,
                    },
                    Some(_) => return Err(ChunkedError::BadSize),
                    None if digits == 0 => return Err(ChunkedError::BadSize),
                    None => {
                        self.check_size(size)?;
                        match b {
                            b'\r' => State::SizeLf { size },
                            // §7.1.1: `chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )`
                            b';' | b' ' | b'\t' => State::Extension {
                                size,
                                len: digits + 1,
                            },
                            _ => return Err(ChunkedError::BadSize),
                        }
                    }
                },
                State::Extension { size, len } => {
                    if len >= self.max_line {
                        return Err(ChunkedError::LineTooLong);
                    }
                    match b {
                        b'\r' => State::SizeLf { size },
                        b'\n' => return Err(ChunkedError::MissingCrlf),
                        // Field values exclude other control characters (RFC 9110 §5.5).
                        0..=8 | 10..=31 | 127 => return Err(ChunkedError::BadSize),
                        _ => State::Extension { size, len: len + 1 },
                    }
                }
                State::SizeLf { size } => match b {
                    b'\n' if size == 0 => State::TrailerStart,
                    b'\n' => State::Data { left: size },
                    _ => return Err(ChunkedError::MissingCrlf),
                },
                State::Data { left } => {
                    let take = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    body.extend_from_slice(&input[i..i + take]);
                    self.decoded += take;
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { left }
                    };
                    continue;
                }
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    _ => return Err(ChunkedError::MissingCrlf),
                },
                State::DataLf => match b {
                    b'\n' => State::Size { size: 0, digits: 0 },
                    _ => return Err(ChunkedError::MissingCrlf),
                },
                State::TrailerStart => match b {
                    b'\r' => State::EndLf,
                    _ => {
                        self.trailer_byte()?;
                        State::Trailer
                    }
                },
                State::Trailer => {
                    self.trailer_byte()?;
                    match b {
                        b'\r' => State::TrailerLf,
                        b'\n' => return Err(ChunkedError::MissingCrlf),
                        _ => State::Trailer,
                    }
                }
                State::TrailerLf => match b {
                    b'\n' => State::TrailerStart,
                    _ => return Err(ChunkedError::MissingCrlf),
                },
                State::EndLf => match b {
                    b'\n' => {
                        self.state = State::Done;
                        return Ok(Status::Complete(i + 1));
                    }
                    _ => return Err(ChunkedError::MissingCrlf),
                },
                State::Done => return Ok(Status::Complete(i)),
            };
            i += 1;
        }
        Ok(if self.state == State::Done {
            Status::Complete(0)
        } else {
            Status::Partial
        })
    }

    /// The limit applies to the decoded size, announced sizes included: a chunk that would
    /// pass it is refused before its data is read.
    fn check_size(&self, size: u64) -> Result<(), ChunkedError> {
        let total = (self.decoded as u64).saturating_add(size);
        if total > self.limit as u64 {
            return Err(ChunkedError::TooLarge);
        }
        Ok(())
    }

    fn trailer_byte(&mut self) -> Result<(), ChunkedError> {
        self.trailers += 1;
        if self.trailers > self.max_line {
            return Err(ChunkedError::LineTooLong);
        }
        Ok(())
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes a whole body at once (for tests and the fuzzer): the body and the bytes it used.
pub fn decode_all(
    input: &[u8],
    limit: usize,
    max_line: usize,
) -> Result<Option<(Vec<u8>, usize)>, ChunkedError> {
    let mut d = ChunkedDecoder::new(limit, max_line);
    let mut body = Vec::new();
    match d.decode(input, &mut body)? {
        Status::Complete(n) => Ok(Some((body, n))),
        Status::Partial => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1000;
    const LINE: usize = 64;

    /// Decodes `input` cut into two pieces at `cut`: the same outcome as in one piece.
    fn split_at(input: &[u8], cut: usize) -> Result<Option<(Vec<u8>, usize)>, ChunkedError> {
        let mut d = ChunkedDecoder::new(LIMIT, LINE);
        let mut body = Vec::new();
        match d.decode(&input[..cut], &mut body)? {
            Status::Complete(n) => return Ok(Some((body, n))),
            Status::Partial => {}
        }
        match d.decode(&input[cut..], &mut body)? {
            Status::Complete(n) => Ok(Some((body, cut + n))),
            Status::Partial => Ok(None),
        }
    }

    /// Every case, whole and split at every byte, one byte at a time too: same answer.
    fn check(input: &[u8], expected: Result<Option<(&[u8], usize)>, ChunkedError>) {
        let expected = expected.map(|o| o.map(|(b, n)| (b.to_vec(), n)));
        let name = String::from_utf8_lossy(input);
        assert_eq!(decode_all(input, LIMIT, LINE), expected, "whole: {name:?}");
        for cut in 0..=input.len() {
            assert_eq!(split_at(input, cut), expected, "cut at {cut}: {name:?}");
        }
        let mut d = ChunkedDecoder::new(LIMIT, LINE);
        let mut body = Vec::new();
        let mut bytewise = Ok(None);
        for (i, b) in input.iter().enumerate() {
            match d.decode(std::slice::from_ref(b), &mut body) {
                Ok(Status::Partial) => {}
                Ok(Status::Complete(n)) => {
                    bytewise = Ok(Some((body.clone(), i + n)));
                    break;
                }
                Err(e) => {
                    bytewise = Err(e);
                    break;
                }
            }
        }
        assert_eq!(bytewise, expected, "byte by byte: {name:?}");
    }

    #[test]
    fn bodies() {
        let ok = |body: &'static [u8], used| Ok(Some((body, used)));
        check(b"0\r\n\r\n", ok(b"", 5));
        check(b"5\r\nhello\r\n0\r\n\r\n", ok(b"hello", 15));
        check(
            b"5\r\nhello\r\n1;ext=\"x;y\"\r\n \r\n000\r\n\r\n",
            ok(b"hello ", 33),
        );
        check(b"A\r\n0123456789\r\n0\r\n\r\n", ok(b"0123456789", 20));
        check(b"a \t;x\r\n0123456789\r\n0\r\n\r\n", ok(b"0123456789", 24));
        // Trailers are skipped; what follows the body is the next request's.
        check(
            b"3\r\nabc\r\n0\r\nDigest: x\r\nX-A: b\r\n\r\nGET / HTTP/1.1\r\n",
            ok(b"abc", 32),
        );
        check(b"3\r\nabc\r\n0\r\n\r\nNEXT", ok(b"abc", 13));
        // Not finished yet.
        check(b"5\r\nhel", Ok(None));
        check(b"5\r\nhello\r\n0\r\n", Ok(None));
    }

    #[test]
    fn malformed() {
        use ChunkedError::*;
        for (input, e) in [
            (&b"\r\n"[..], BadSize),
            (b"x\r\n", BadSize),
            (b"-1\r\n", BadSize),
            (b"+5\r\nhello\r\n0\r\n\r\n", BadSize),
            (b"0x5\r\nhello\r\n", BadSize),
            (b"5\nhello\r\n0\r\n\r\n", BadSize),
            (b"5\r\rhello", MissingCrlf),
            (b"5;a\nhello", MissingCrlf),
            (b"5;a\x01\r\n", BadSize),
            (b"5\r\nhelloX\r\n", MissingCrlf),
            (b"5\r\nhello\rX", MissingCrlf),
            (b"5\r\nhello\n0\r\n\r\n", MissingCrlf),
            (b"0\r\n\rX", MissingCrlf),
            (b"0\r\nX-A: b\n\r\n", MissingCrlf),
            (b"0\r\nX-A: b\rX", MissingCrlf),
            // 16 hex digits would overflow a careless u64.
            (b"fffffffffffffffff\r\n", BadSize),
            (b"10000000000000000\r\n", BadSize),
            (b"3e9\r\n", TooLarge),
        ] {
            check(input, Err(e));
        }
        // Exactly the limit is still fine.
        check(b"3e8\r\n", Ok(None));
    }

    #[test]
    fn the_limit_is_on_the_decoded_size() {
        // 1000 bytes decoded in 10 chunks is fine; 1001 is not, however chunked.
        let mut ok = Vec::new();
        for _ in 0..10 {
            ok.extend_from_slice(b"64\r\n");
            ok.extend_from_slice(&[b'x'; 100]);
            ok.extend_from_slice(b"\r\n");
        }
        let mut over = ok.clone();
        ok.extend_from_slice(b"0\r\n\r\n");
        over.extend_from_slice(b"1\r\ny\r\n0\r\n\r\n");
        let (body, _) = decode_all(&ok, LIMIT, LINE).unwrap().unwrap();
        assert_eq!(body.len(), 1000);
        assert_eq!(decode_all(&over, LIMIT, LINE), Err(ChunkedError::TooLarge));
        assert_eq!(ChunkedError::TooLarge.status(), 413);
        assert_eq!(ChunkedError::BadSize.status(), 400);
    }

    #[test]
    fn long_lines_are_refused() {
        let mut ext = b"1;".to_vec();
        ext.extend(std::iter::repeat_n(b'e', LINE));
        ext.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        assert_eq!(
            decode_all(&ext, LIMIT, LINE),
            Err(ChunkedError::LineTooLong)
        );
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..LINE / 4 {
            trailers.extend_from_slice(b"X-A: b\r\n");
        }
        trailers.extend_from_slice(b"\r\n");
        assert_eq!(
            decode_all(&trailers, LIMIT, LINE),
            Err(ChunkedError::LineTooLong)
        );
        // Leading zeros count as size digits and are bounded the same way.
        assert_eq!(
            decode_all(b"0000000000000000001\r\n", LIMIT, LINE),
            Err(ChunkedError::BadSize)
        );
    }
}
