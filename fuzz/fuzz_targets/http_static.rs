//! `http::serve_static` with an arbitrary method, target and If-None-Match, on the embedded
//! root and on an on-disk root with a secret file beside it and symlinks pointing out of it;
//! then `Response::write_to`, whose bytes must be a well-formed response.
#![no_main]

use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wsloop::http::{serve_static, WebRoot};

const SECRET: &[u8] = b"FUZZ-SECRET-0b5e";

/// `<tmp>/wsloop-fuzz-<pid>/{www/..., secret.txt, www2/secret.txt}`; made once per process.
fn disk_root() -> &'static WebRoot {
    static ROOT: OnceLock<WebRoot> = OnceLock::new();
    ROOT.get_or_init(|| {
        let base: PathBuf =
            std::env::temp_dir().join(format!("wsloop-fuzz-{}", std::process::id()));
        let www = base.join("www");
        fs::create_dir_all(www.join("sub")).unwrap();
        fs::create_dir_all(base.join("www2")).unwrap();
        fs::write(base.join("secret.txt"), SECRET).unwrap();
        fs::write(base.join("www2/secret.txt"), SECRET).unwrap();
        fs::write(www.join("index.html"), "<h1>root</h1>").unwrap();
        fs::write(www.join("a.txt"), "a").unwrap();
        fs::write(www.join("sub/index.html"), "<h1>sub</h1>").unwrap();
        for (target, name) in [
            ("..", "up"),
            ("../secret.txt", "leak"),
            ("../www2", "www2"),
            ("/etc", "etc"),
        ] {
            let _ = std::os::unix::fs::symlink(target, www.join(name));
        }
        WebRoot::dir(&www).unwrap()
    })
}

/// Checks the serialized response against the `Response` it came from.
fn check_wire(out: &[u8], status: u16, body: &[u8], head_only: bool) {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("response does not parse ({other:?}): {out:?}"),
    };
    assert_eq!(resp.code, Some(status));
    let length: usize = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
        .expect("Content-Length");
    assert_eq!(length, body.len());
    let sent = &out[n..];
    if head_only || status == 304 {
        assert!(sent.is_empty(), "a body after HEAD/304");
    } else {
        assert_eq!(sent, body);
    }
}

fuzz_target!(|data: &[u8]| {
    // Layout: [flags] method \n target [\n If-None-Match]
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(3, |&b| b == b'\n');
    let method = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let target = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let inm = parts.next();
    let head_only = flags & 1 != 0;
    let keep_alive = flags & 2 != 0;

    for (root, on_disk) in [(&WebRoot::embedded(), false), (disk_root(), true)] {
        let resp = serve_static(root, &method, &target, inm);
        let allowed = method == "GET" || method == "HEAD";
        assert_eq!(
            resp.status == 405,
            !allowed,
            "{method:?} -> {}",
            resp.status
        );
        assert!(
            matches!(resp.status, 200 | 304 | 400 | 403 | 404 | 405),
            "{method:?} {target:?} -> {}",
            resp.status
        );
        if resp.status == 200 || resp.status == 304 {
            let etag = resp.headers.iter().find(|(n, _)| *n == "ETag");
            assert!(etag.is_some(), "{target:?}: no ETag");
        }
        if on_disk && resp.status == 200 {
            let body: &[u8] = &resp.body;
            assert!(
                !body.windows(SECRET.len()).any(|w| w == SECRET),
                "{target:?} escaped the web root"
            );
            assert!(
                [&b"<h1>root</h1>"[..], b"a", b"<h1>sub</h1>"].contains(&body),
                "{target:?} served something unexpected: {body:?}"
            );
        }
        let mut out = Vec::new();
        resp.write_to(&mut out, head_only, keep_alive);
        check_wire(&out, resp.status, &resp.body, head_only);
    }
});
