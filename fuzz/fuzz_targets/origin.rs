//! `origin::check`, `Origin::parse`, `OriginPolicy::parse` and `target::parse` on arbitrary
//! input. Layout: a flags byte (bit 0: scheme `https`, bits 1-2: method GET/POST/OPTIONS/PUT),
//! then lines: the `Origin` value, a `Host` value that is also tried as a request-target, and
//! `--allowed-origin` entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsloop::origin::{check, Origin, OriginError, OriginPolicy};
use wsloop::target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let scheme = if flags & 1 == 1 { "https" } else { "http" };
    let method = ["GET", "POST", "OPTIONS", "PUT"][usize::from(flags >> 1 & 3)];
    let text = String::from_utf8_lossy(rest);
    let mut lines = text.split('\n');
    let origin = lines.next().unwrap_or("");
    let host = lines.next().unwrap_or("");
    let entries: Vec<&str> = lines.collect();

    origins(origin, host, scheme, &entries);
    request_target(method, host);
});

fn origins(origin: &str, host: &str, scheme: &str, entries: &[&str]) {
    let none = OriginPolicy::default();
    let any = OriginPolicy::parse(&["*"]).unwrap();
    let parsed = Origin::parse(origin);

    // parse → format → parse is the identity, and the format is normalised.
    if let Ok(o) = &parsed {
        let shown = o.to_string();
        assert_eq!(
            Origin::parse(&shown).as_ref(),
            Ok(o),
            "{origin:?} -> {shown:?}"
        );
        assert!(!shown.bytes().any(|b| b.is_ascii_uppercase()), "{shown:?}");
        let default = match o.scheme.as_str() {
            "http" | "ws" => Some(80),
            "https" | "wss" => Some(443),
            _ => None,
        };
        assert!(o.port.is_none() || o.port != default, "{shown:?}");
        // Same origin is always allowed: the origin's own authority as Host.
        if o.scheme == scheme {
            let authority = &shown[scheme.len() + 3..];
            assert_eq!(
                check(&[origin.as_bytes()], authority.as_bytes(), scheme, &none),
                Ok(()),
                "{origin:?} with Host {authority:?}"
            );
        }
    }

    // No Origin always passes; `*` passes exactly what parses (and null).
    assert_eq!(check(&[], host.as_bytes(), scheme, &none), Ok(()));
    let star = check(&[origin.as_bytes()], host.as_bytes(), scheme, &any);
    assert_eq!(
        star.is_ok(),
        origin.trim_ascii() == "null" || Origin::parse(origin.trim_ascii()).is_ok(),
        "{origin:?} under *: {star:?}"
    );

    // Without a list, null is refused and anything allowed is the Host's own origin.
    let plain = check(&[origin.as_bytes()], host.as_bytes(), scheme, &none);
    if origin.trim_ascii() == "null" {
        assert_eq!(plain, Err(OriginError::Null));
    } else if plain.is_ok() {
        let own = Origin::of_host(scheme, host.trim_ascii()).expect("allowed without a Host");
        assert_eq!(Origin::parse(origin.trim_ascii()), Ok(own));
    }

    let Ok(policy) = OriginPolicy::parse(entries) else {
        return;
    };
    // Every exact entry is allowed, whatever the Host.
    for o in &policy.exact {
        assert_eq!(
            check(&[o.to_string().as_bytes()], b"", scheme, &policy),
            Ok(())
        );
    }
    // With no usable Host, what the list allows is null, `*`, an exact entry or a subdomain
    // of a wildcard's suffix: the host ends in `.` + suffix, same scheme and port.
    let listed = check(&[origin.as_bytes()], b"", scheme, &policy);
    if listed.is_ok() && !policy.any && origin.trim_ascii() != "null" {
        let o = Origin::parse(origin.trim_ascii()).unwrap();
        let under_wildcard = policy.subdomains.iter().any(|s| {
            o.scheme == s.scheme
                && o.port == s.port
                && o.host.ends_with(&format!(".{}", s.host))
                && o.host.len() > s.host.len() + 1
        });
        assert!(
            policy.exact.contains(&o) || under_wildcard,
            "{o} allowed by {entries:?}"
        );
    }
}

fn request_target(method: &str, t: &str) {
    let path = target::path_of(method, t);
    match target::parse(method, t) {
        Ok(parts) => {
            assert_eq!(path, parts.path);
            assert!(!t.is_empty() && !t.contains('#'));
            assert!(!t.bytes().any(|b| b <= b' ' || b == 0x7f), "{t:?}");
            assert!(parts.path.starts_with('/') || (parts.path == "*" && method == "OPTIONS"));
            assert!(!parts.path.contains('?'));
            match parts.authority {
                None => {
                    let back = match parts.query {
                        Some(q) => format!("{}?{q}", parts.path),
                        None => parts.path.to_string(),
                    };
                    assert_eq!(back, t);
                }
                Some(a) => {
                    assert!(!a.is_empty() && !a.contains(['@', '/', '?']), "{a:?}");
                    let lower = t.to_ascii_lowercase();
                    assert!(lower.starts_with("http://") || lower.starts_with("https://"));
                }
            }
        }
        Err(_) => assert!(!path.contains(['?', '#'])),
    }
}
