//! Incremental UTF-8 validation for text messages that arrive in pieces.
//!
//! RFC 6455 §8.1 asks an endpoint to fail the connection on invalid UTF-8; checking each piece
//! as it arrives fails on the first bad byte rather than at the end of the message, even when a
//! code point is split between fragments.

/// Carries at most one unfinished code point from one piece to the next.
#[derive(Clone, Copy, Debug, Default)]
pub struct Utf8Validator {
    pending: [u8; 4],
    len: u8,
}

/// The byte sequence can no longer be valid UTF-8, whatever follows.
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid;

impl Utf8Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the next piece. `Err` as soon as the bytes so far cannot start valid UTF-8.
    #[inline]
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), Invalid> {
        if self.len > 0 {
            let have = self.len as usize;
            let want = width(self.pending[0]).saturating_sub(have);
            let take = want.min(data.len());
            self.pending[have..have + take].copy_from_slice(&data[..take]);
            match std::str::from_utf8(&self.pending[..have + take]) {
                Ok(_) => self.len = 0,
                Err(e) if e.error_len().is_some() => return Err(Invalid),
                Err(_) => {
                    self.len = (have + take) as u8;
                    return Ok(());
                }
            }
            data = &data[take..];
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(Invalid),
            Err(e) => {
                // An unfinished but so far valid code point ends the piece: keep it.
                let tail = &data[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// True when no code point is left unfinished: the message may end here.
    pub fn is_complete(&self) -> bool {
        self.len == 0
    }
}

/// The length of the sequence a leading byte starts (only called on leads `from_utf8` accepted).
fn width(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_split_everywhere(bytes: &[u8]) -> Option<usize> {
        // Returns the piece-by-piece verdict for every split, asserting they agree with std.
        let whole_ok = std::str::from_utf8(bytes).is_ok();
        for a in 0..=bytes.len() {
            for b in a..=bytes.len() {
                let mut v = Utf8Validator::new();
                let ok = v.feed(&bytes[..a]).is_ok()
                    && v.feed(&bytes[a..b]).is_ok()
                    && v.feed(&bytes[b..]).is_ok()
                    && v.is_complete();
                assert_eq!(ok, whole_ok, "{bytes:x?} split at {a},{b}");
            }
        }
        None
    }

    #[test]
    fn agrees_with_std_at_every_split() {
        let cases: &[&[u8]] = &[
            "Hello-µ@ßöäüàá-UTF-8!!".as_bytes(),
            "κόσμε".as_bytes(),
            "\u{10FFFF}\u{FFFF}\u{800}\u{80}".as_bytes(),
            &[
                0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xf4, 0x90, 0x80,
                0x80,
            ],
            &[0xed, 0xa0, 0x80], // surrogate
            &[0xc0, 0x80],       // overlong
            &[0xf8, 0x88, 0x80, 0x80, 0x80],
            &[0xe0, 0x80, 0xaf],
            &[0xf0, 0x9f, 0x98, 0x80],
            &[0xf0, 0x9f, 0x98], // unfinished at the end
        ];
        for c in cases {
            check_split_everywhere(c);
        }
    }

    #[test]
    fn fails_on_the_first_bad_byte() {
        // 0xF4 0x90 is above U+10FFFF: invalid as soon as the second byte arrives.
        let mut v = Utf8Validator::new();
        assert!(v.feed(&[0xce, 0xba, 0xf4]).is_ok());
        assert_eq!(v.feed(&[0x90]), Err(Invalid));
        // A lone continuation byte is invalid by itself.
        assert_eq!(Utf8Validator::new().feed(&[0x80]), Err(Invalid));
    }

    #[test]
    fn unfinished_is_not_complete() {
        let mut v = Utf8Validator::new();
        v.feed(&[0xe2, 0x82]).unwrap();
        assert!(!v.is_complete());
        v.feed(&[0xac]).unwrap();
        assert!(v.is_complete());
    }
}
