//! The frame codec of RFC 6455 §5.2: header parse and encode, and masking.
//!
//! Pure functions over byte slices. Parsing never consumes anything: it answers
//! [`Parse::Partial`] until the whole header is there, so the caller can retry with more bytes.

use crate::error::ProtocolError;

/// Frame opcodes (RFC 6455 §5.2, §11.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
    /// One of the opcodes §5.2 reserves (3–7, 0xB–0xF). Parsed so that the frame can be
    /// skipped in step while the connection closes; never accepted.
    Reserved(u8),
}

impl Opcode {
    fn from_bits(bits: u8) -> Opcode {
        match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            other => Opcode::Reserved(other),
        }
    }

    pub fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
            Opcode::Reserved(bits) => bits & 0x0F,
        }
    }

    /// Control frames have the high bit of the opcode set (§5.5).
    pub fn is_control(self) -> bool {
        self.bits() & 0x8 != 0
    }
}

/// Which end of the connection we are: only the masking direction differs (§5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Receives masked frames, sends unmasked ones.
    Server,
    /// Sends masked frames, receives unmasked ones.
    Client,
}

/// A parsed frame header. `len` is the payload length; `header_len` the bytes the header took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: Opcode,
    pub mask: Option<[u8; 4]>,
    pub len: u64,
    pub header_len: usize,
}

/// The outcome of [`parse_header`], in the manner of `httparse::Status`.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    Complete(FrameHeader),
    /// More bytes are needed; nothing was consumed.
    Partial,
}

/// The longest header: 2 bytes, 8 of extended length, 4 of mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// Parses a frame header from the start of `buf`.
///
/// Only the one rule without which the header cannot be read is checked here (a 64-bit length
/// has its top bit clear, §5.2). Opcode, masking, RSV and control-frame rules depend on the
/// connection and are checked by the caller.
#[inline]
pub fn parse_header(buf: &[u8]) -> Result<Parse, ProtocolError> {
    if buf.len() < 2 {
        return Ok(Parse::Partial);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let opcode = Opcode::from_bits(b0 & 0x0F);
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(Parse::Partial);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(Parse::Partial);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(b);
            // §5.2: "the most significant bit MUST be 0".
            if len >> 63 != 0 {
                return Err(ProtocolError::LengthTopBitSet);
            }
            (len, 10)
        }
        n => (n as u64, 2),
    };
    let mask = if masked {
        if buf.len() < at + 4 {
            return Ok(Parse::Partial);
        }
        let key = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        at += 4;
        Some(key)
    } else {
        None
    };
    Ok(Parse::Complete(FrameHeader {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x7,
        opcode,
        mask,
        len,
        header_len: at,
    }))
}

/// Writes a header for a frame of `len` payload bytes into `out` and returns its length.
/// Uses the shortest length form, as §5.2 requires ("the minimal number of bytes MUST be used").
#[inline]
pub fn encode_header(
    out: &mut [u8; MAX_HEADER_LEN],
    fin: bool,
    opcode: Opcode,
    mask: Option<[u8; 4]>,
    len: usize,
) -> usize {
    out[0] = (if fin { 0x80 } else { 0 }) | opcode.bits();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut at = if len < 126 {
        out[1] = mask_bit | len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    if let Some(key) = mask {
        out[at..at + 4].copy_from_slice(&key);
        at += 4;
    }
    at
}

/// Appends a whole frame (header and payload) to `out`; masks the payload when a key is given.
pub fn encode_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: Opcode,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) {
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut head, fin, opcode, mask, payload.len());
    out.reserve(n + payload.len());
    out.extend_from_slice(&head[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key, 0);
    }
}

/// A fresh masking key for a client frame, from the kernel's CSPRNG: §5.3 asks that keys be
/// unpredictable, so that a peer cannot steer the bytes on the wire.
pub fn random_mask() -> [u8; 4] {
    let mut key = [0u8; 4];
    // SAFETY: getrandom writes at most `key.len()` bytes into the buffer it is given.
    let n = unsafe { libc::getrandom(key.as_mut_ptr().cast(), key.len(), 0) };
    if n != key.len() as isize {
        // Practically unreachable on Linux; fall back to the clock rather than a fixed key.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0x5eed_1234);
        key = t.to_ne_bytes();
    }
    key
}

/// XORs `data` with the masking key (§5.3), as if `data` began `offset` bytes into the payload.
///
/// Works eight bytes at a time; the offset lets a payload that arrives in pieces be
/// unmasked piece by piece.
#[inline]
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    let k = offset & 3;
    let key = [key[k], key[(k + 1) & 3], key[(k + 2) & 3], key[(k + 3) & 3]];
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_ne_bytes(word) ^ wide;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    // The tail starts at a multiple of 8 from `offset`, so the key phase is unchanged.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in data.iter_mut().enumerate() {
            *b ^= key[(i + offset) % 4];
        }
    }

    #[test]
    fn mask_matches_naive_for_every_length_and_offset() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..40 {
            for offset in 0..8 {
                let orig: Vec<u8> = (0..len as u8).collect();
                let mut a = orig.clone();
                let mut b = orig.clone();
                apply_mask(&mut a, key, offset);
                naive_mask(&mut b, key, offset);
                assert_eq!(a, b, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn masking_in_pieces_equals_masking_whole() {
        let key = [1, 2, 3, 4];
        let orig: Vec<u8> = (0..100u8).collect();
        let mut whole = orig.clone();
        apply_mask(&mut whole, key, 0);
        for split in 0..orig.len() {
            let mut pieces = orig.clone();
            let (a, b) = pieces.split_at_mut(split);
            apply_mask(a, key, 0);
            apply_mask(b, key, split);
            assert_eq!(pieces, whole, "split at {split}");
        }
    }

    /// RFC 6455 §5.7: a single-frame masked text message "Hello".
    #[test]
    fn rfc_example_masked_hello() {
        let bytes = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let Parse::Complete(h) = parse_header(&bytes).unwrap() else {
            panic!("partial")
        };
        assert!(h.fin);
        assert_eq!(h.opcode, Opcode::Text);
        assert_eq!(h.len, 5);
        assert_eq!(h.header_len, 6);
        let mut payload = bytes[6..].to_vec();
        apply_mask(&mut payload, h.mask.unwrap(), 0);
        assert_eq!(payload, b"Hello");
    }

    #[test]
    fn all_three_length_forms_round_trip() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 1 << 20] {
            for mask in [None, Some([9, 8, 7, 6])] {
                let mut head = [0u8; MAX_HEADER_LEN];
                let n = encode_header(&mut head, true, Opcode::Binary, mask, len);
                let expect = match len {
                    0..=125 => 2,
                    126..=65535 => 4,
                    _ => 10,
                } + if mask.is_some() { 4 } else { 0 };
                assert_eq!(n, expect);
                let h = match parse_header(&head[..n]).unwrap() {
                    Parse::Complete(h) => h,
                    Parse::Partial => panic!("partial"),
                };
                assert_eq!((h.len, h.header_len, h.mask), (len as u64, n, mask));
                // Every strict prefix is Partial, never an error.
                for cut in 0..n {
                    assert_eq!(parse_header(&head[..cut]).unwrap(), Parse::Partial);
                }
            }
        }
    }

    #[test]
    fn header_errors() {
        let Parse::Complete(h) = parse_header(&[0x8B, 0x80, 1, 2, 3, 4]).unwrap() else {
            panic!()
        };
        assert_eq!(h.opcode, Opcode::Reserved(0xB));
        assert!(h.opcode.is_control());
        let mut b = vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse_header(&b), Err(ProtocolError::LengthTopBitSet));
        b[2] = 0x7F;
        assert!(matches!(parse_header(&b), Ok(Parse::Partial)));
    }

    #[test]
    fn rsv_bits_are_reported() {
        let Parse::Complete(h) = parse_header(&[0xF1, 0x00]).unwrap() else {
            panic!()
        };
        assert_eq!(h.rsv, 0b111);
        assert!(h.mask.is_none());
    }
}
