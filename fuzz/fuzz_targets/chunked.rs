//! `http::chunked::ChunkedDecoder` on arbitrary bytes. Layout: a 2-byte big-endian body limit,
//! a cut count (low 3 bits), one byte per cut, then the bytes after a request head.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsloop::http::chunked::{ChunkedDecoder, Status};

/// Size lines and trailers are bounded by this (the head limit in the server).
const MAX_LINE: usize = 256;

fuzz_target!(|data: &[u8]| {
    let [hi, lo, cuts, rest @ ..] = data else {
        return;
    };
    let limit = usize::from(u16::from_be_bytes([*hi, *lo]));
    let ncuts = usize::from(cuts & 7).min(rest.len());
    let (cut_bytes, input) = rest.split_at(ncuts);

    let whole = run(input, limit, &[]);
    // Cut points, sorted, inside the input.
    let mut points: Vec<usize> = cut_bytes
        .iter()
        .map(|&c| usize::from(c) * input.len() / 256)
        .collect();
    points.sort_unstable();
    assert_eq!(run(input, limit, &points), whole, "cut at {points:?}");

    if let Ok(Some((body, used))) = &whole {
        // The body limit is on the decoded size; the body never takes more than it was given.
        assert!(body.len() <= limit);
        assert!(*used <= input.len());
        // What it used is a complete body on its own: the same body, the same length.
        assert_eq!(run(&input[..*used], limit, &[]), whole);
        // Re-encoding the body as one chunk decodes back to it.
        if body.is_empty() {
            return;
        }
        let mut again = format!("{:x}\r\n", body.len()).into_bytes();
        again.extend_from_slice(body);
        again.extend_from_slice(b"\r\n0\r\n\r\n");
        let (decoded, n) = run(&again, limit, &[]).unwrap().unwrap();
        assert_eq!((&decoded, n), (body, again.len()));
    }
});

/// Decodes `input` in pieces cut at `points`: the body and the bytes used, `None` if it did
/// not end.
fn run(
    input: &[u8],
    limit: usize,
    points: &[usize],
) -> Result<Option<(Vec<u8>, usize)>, wsloop::http::chunked::ChunkedError> {
    let mut d = ChunkedDecoder::new(limit, MAX_LINE);
    let mut body = Vec::new();
    let mut from = 0;
    for &to in points.iter().chain(std::iter::once(&input.len())) {
        let to = to.max(from);
        match d.decode(&input[from..to], &mut body)? {
            Status::Complete(n) => {
                assert!(n <= to - from);
                return Ok(Some((body, from + n)));
            }
            Status::Partial => assert!(body.len() <= limit),
        }
        assert_eq!(d.decoded(), body.len());
        from = to;
    }
    Ok(None)
}
