//! `utf8::Utf8Validator` fed in fuzzer-chosen pieces agrees with `std::str::from_utf8` on the
//! whole input, and fails exactly when the bytes so far can no longer start valid UTF-8.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsloop::utf8::Utf8Validator;

fuzz_target!(|input: &[u8]| {
    // Layout: [number of cuts (0..=15)] [one byte per cut] [data...]
    let Some((&n, rest)) = input.split_first() else {
        return;
    };
    let n = usize::from(n & 0x0f).min(rest.len());
    let (cut_bytes, data) = rest.split_at(n);
    let mut cuts: Vec<usize> = cut_bytes
        .iter()
        .map(|&c| usize::from(c) % (data.len() + 1))
        .collect();
    cuts.sort_unstable();
    cuts.push(data.len());

    let mut v = Utf8Validator::new();
    let mut start = 0;
    let mut verdict = true;
    for &end in &cuts {
        let fed = v.feed(&data[start..end]);
        // What std says about the prefix fed so far.
        let prefix = std::str::from_utf8(&data[..end]);
        let dead = matches!(&prefix, Err(e) if e.error_len().is_some());
        match fed {
            Err(_) => {
                assert!(dead, "rejected a viable prefix: {:02x?}", &data[..end]);
                verdict = false;
                break;
            }
            Ok(()) => {
                assert!(!dead, "accepted an invalid prefix: {:02x?}", &data[..end]);
                assert_eq!(v.is_complete(), prefix.is_ok(), "{:02x?}", &data[..end]);
            }
        }
        start = end;
    }
    let verdict = verdict && v.is_complete();
    assert_eq!(
        verdict,
        std::str::from_utf8(data).is_ok(),
        "{data:02x?} cut at {cuts:?}"
    );
});
