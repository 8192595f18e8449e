//! The plain-HTTP side over raw sockets: static files from `--www` and the bundled pages,
//! content types, validators, HEAD, method refusals, keep-alive, pipelining, connection
//! closing, limits, and path traversal attempts that must never leave the web root.

mod common;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

/// A scratch directory under the system temp dir, removed when dropped.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "wsloop-http-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }

    fn write(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A web root with a few small files of distinct content; the server serves `<tmp>/www`.
struct Site {
    tmp: TempDir,
}

const A_TXT: &[u8] = b"alpha file\n";
const B_TXT: &[u8] = b"bravo file, a little longer\n";
const C_JSON: &[u8] = b"{\"charlie\":3}";

impl Site {
    fn new(tag: &str) -> Site {
        let tmp = TempDir::new(tag);
        tmp.write("www/index.html", b"<h1>test index</h1>");
        tmp.write("www/a.txt", A_TXT);
        tmp.write("www/b.txt", B_TXT);
        tmp.write("www/c.json", C_JSON);
        Site { tmp }
    }

    fn www(&self) -> PathBuf {
        self.tmp.path.join("www")
    }

    fn start(&self, extra: &[&str]) -> TestServer {
        let www = self.www();
        let mut args = vec!["--www", www.to_str().unwrap()];
        args.extend_from_slice(extra);
        TestServer::start(&args)
    }
}

/// A request with the given method and target; `extra` are whole header lines.
fn request(method: &str, target: &str, extra: &[&str]) -> String {
    let mut r = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\n");
    for h in extra {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r
}

fn get(target: &str) -> String {
    request("GET", target, &[])
}

/// Reads until the server closes the connection (bounded by the 5 s read timeout).
fn read_to_eof(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return all,
            Err(e) => panic!(
                "no EOF from the server ({e}); got so far: {:?}",
                String::from_utf8_lossy(&all)
            ),
        }
    }
}

/// Splits a raw response into its head (without the blank line) and everything after it.
fn split_response(raw: &[u8]) -> (String, Vec<u8>) {
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {:?}", String::from_utf8_lossy(raw)));
    (
        String::from_utf8_lossy(&raw[..at + 4]).into_owned(),
        raw[at + 4..].to_vec(),
    )
}

/// Sends one request on a fresh connection and reads its response with `read_response`.
fn exchange(server: &TestServer, raw: &[u8]) -> (String, Vec<u8>) {
    let mut s = server.connect();
    s.write_all(raw).unwrap();
    read_response(&mut s)
}

fn content_length(head: &str) -> usize {
    header(head, "Content-Length")
        .unwrap_or_else(|| panic!("no Content-Length in {head}"))
        .parse()
        .unwrap()
}

/// The media type of a Content-Type value, lowercased, without parameters.
fn media_type(head: &str) -> String {
    header(head, "Content-Type")
        .unwrap_or_else(|| panic!("no Content-Type in {head}"))
        .split(';')
        .next()
        .unwrap()
        .trim()
        .to_ascii_lowercase()
}

fn allow_set(head: &str) -> Vec<String> {
    let mut v: Vec<String> = header(head, "Allow")
        .unwrap_or_else(|| panic!("405 without Allow: {head}"))
        .split(',')
        .map(|m| m.trim().to_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn content_types_lengths_and_cache_headers_from_www_dir() {
    let site = Site::new("ctype");
    // Binary content full of the bytes that would confuse a sloppy reader.
    let png: Vec<u8> = b"\x89PNG\r\n\x1a\n\0\0\r\n\r\n"
        .iter()
        .copied()
        .chain((0..=255u8).cycle().take(3000))
        .collect();
    let files: Vec<(&str, Vec<u8>, &str)> = vec![
        ("page.html", b"<p>page</p>".to_vec(), "text/html"),
        ("UPPER.HTML", b"<p>upper</p>".to_vec(), "text/html"),
        ("style.css", b"body{color:red}".to_vec(), "text/css"),
        ("app.js", b"console.log(1)".to_vec(), "text/javascript"),
        ("data.json", b"{\"k\":[1,2]}".to_vec(), "application/json"),
        (
            "logo.svg",
            b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>".to_vec(),
            "image/svg+xml",
        ),
        ("img.png", png, "image/png"),
        (
            "favicon.ico",
            vec![0, 0, 1, 0, 1, 0, 16, 16],
            "image/x-icon",
        ),
        ("notes.txt", b"plain notes\n".to_vec(), "text/plain"),
        ("mod.wasm", b"\0asm\x01\0\0\0".to_vec(), "application/wasm"),
        (
            "blob.xyz",
            b"unknown kind".to_vec(),
            "application/octet-stream",
        ),
        (
            "Makefile",
            b"all:\n\ttrue\n".to_vec(),
            "application/octet-stream",
        ),
        ("empty.txt", Vec::new(), "text/plain"),
        ("sub/deep/x.css", b"p{}".to_vec(), "text/css"),
        (
            "large.bin",
            (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect(),
            "application/octet-stream",
        ),
    ];
    for (rel, bytes, _) in &files {
        site.tmp.write(&format!("www/{rel}"), bytes);
    }
    let server = site.start(&[]);
    for (rel, bytes, ctype) in &files {
        // Connection: close and read to EOF, so any byte beyond Content-Length would show.
        let mut s = server.connect();
        s.write_all(request("GET", &format!("/{rel}"), &["Connection: close"]).as_bytes())
            .unwrap();
        let (head, body) = split_response(&read_to_eof(&mut s));
        assert_eq!(status(&head), 200, "{rel}: {head}");
        assert_eq!(media_type(&head), *ctype, "{rel}: {head}");
        if ctype.starts_with("text/") {
            let full = header(&head, "Content-Type").unwrap().to_ascii_lowercase();
            assert!(full.contains("charset=utf-8"), "{rel}: {head}");
        }
        assert_eq!(content_length(&head), bytes.len(), "{rel}: {head}");
        assert_eq!(&body, bytes, "{rel}: body differs from the file");
        assert_eq!(header(&head, "Cache-Control"), Some("no-cache"), "{rel}");
        assert_eq!(header(&head, "X-Content-Type-Options"), Some("nosniff"));
        assert!(header(&head, "ETag").is_some(), "{rel}: {head}");
        assert!(
            header(&head, "Date").is_some_and(|d| d.ends_with(" GMT")),
            "{rel}: {head}"
        );
        assert_eq!(header(&head, "Connection"), Some("close"), "{rel}");
    }

    // `/` and a directory serve its index.html; a query string does not change the file.
    site.tmp.write("www/sub/index.html", b"<p>sub index</p>");
    let cases: [(&str, &[u8]); 5] = [
        ("/", b"<h1>test index</h1>"),
        ("/sub/", b"<p>sub index</p>"),
        ("/sub", b"<p>sub index</p>"),
        ("/a.txt?v=2&x=%2e%2e", A_TXT),
        ("/c%2Ejson", C_JSON),
    ];
    for (target, want) in cases {
        let (head, body) = exchange(&server, get(target).as_bytes());
        assert_eq!(status(&head), 200, "{target}: {head}");
        assert_eq!(body, want, "{target}");
    }
}

#[test]
fn bundled_pages_are_served_without_www() {
    let server = TestServer::start(&[]);
    let index: &[u8] = include_bytes!("../www/index.html");
    let broadcast: &[u8] = include_bytes!("../www/broadcast.html");
    let mut s = server.connect();
    let mut etags = Vec::new();
    for (target, want) in [
        ("/", index),
        ("/index.html", index),
        ("/broadcast.html", broadcast),
    ] {
        s.write_all(get(target).as_bytes()).unwrap();
        let (head, body) = read_response(&mut s);
        assert_eq!(status(&head), 200, "{target}: {head}");
        assert_eq!(media_type(&head), "text/html", "{target}");
        assert_eq!(header(&head, "Cache-Control"), Some("no-cache"), "{target}");
        assert_eq!(content_length(&head), want.len(), "{target}");
        assert!(body == want, "{target}: body differs from www/");
        etags.push(header(&head, "ETag").unwrap().to_owned());
    }
    assert_eq!(
        etags[0], etags[1],
        "/ and /index.html are one representation"
    );
    assert_ne!(etags[0], etags[2]);

    // The bundled pages answer validators and HEAD like files on disk.
    s.write_all(request("GET", "/", &[&format!("If-None-Match: {}", etags[0])]).as_bytes())
        .unwrap();
    let head = read_head(&mut s);
    assert_eq!(status(&head), 304, "{head}");
    s.write_all(request("HEAD", "/broadcast.html", &[]).as_bytes())
        .unwrap();
    let head = read_head(&mut s);
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(content_length(&head), broadcast.len());
    // Nothing of either body came down the wire: the next response starts right away.
    s.write_all(get("/nope.html").as_bytes()).unwrap();
    let (head, body) = read_response(&mut s);
    assert_eq!(status(&head), 404, "{head}");
    assert!(!body.is_empty());
}

#[test]
fn etag_and_if_none_match_give_304_without_a_body() {
    let site = Site::new("etag");
    let server = site.start(&[]);
    let mut s = server.connect();
    s.write_all(get("/a.txt").as_bytes()).unwrap();
    let (head, body) = read_response(&mut s);
    assert_eq!(body, A_TXT);
    let etag = header(&head, "ETag").unwrap().to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong, quoted: {etag}"
    );

    for inm in [
        etag.clone(),
        format!("W/{etag}"),
        "*".to_owned(),
        format!("\"other\", {etag}"),
    ] {
        // The 304 and a second request go in one write: if the 304 carried a body, the
        // second response would not start where the head of the first ends.
        let mut wire = request("GET", "/a.txt", &[&format!("If-None-Match: {inm}")]);
        wire.push_str(&get("/b.txt"));
        s.write_all(wire.as_bytes()).unwrap();
        let head = read_head(&mut s);
        assert_eq!(status(&head), 304, "If-None-Match: {inm}: {head}");
        assert_eq!(header(&head, "ETag"), Some(etag.as_str()));
        if let Some(n) = header(&head, "Content-Length") {
            // If sent, it must be the length a 200 would have had (RFC 9110 §8.6).
            assert_eq!(n, A_TXT.len().to_string());
        }
        let (head, body) = read_response(&mut s);
        assert_eq!(status(&head), 200, "{head}");
        assert_eq!(body, B_TXT, "the 304 must not carry a body");
    }

    // A different tag gets the full response.
    s.write_all(request("GET", "/a.txt", &["If-None-Match: \"stale-1\""]).as_bytes())
        .unwrap();
    let (head, body) = read_response(&mut s);
    assert_eq!((status(&head), body.as_slice()), (200, A_TXT), "{head}");

    // The tag follows the content: after a change the old tag no longer matches.
    site.tmp.write("www/a.txt", b"alpha, rewritten\n");
    s.write_all(request("GET", "/a.txt", &[&format!("If-None-Match: {etag}")]).as_bytes())
        .unwrap();
    let (head, body) = read_response(&mut s);
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(body, b"alpha, rewritten\n");
    assert_ne!(header(&head, "ETag"), Some(etag.as_str()));
}

#[test]
fn head_sends_headers_and_length_but_no_body() {
    let site = Site::new("head");
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    site.tmp.write("www/big.bin", &big);
    let server = site.start(&[]);
    let mut s = server.connect();
    for (target, len, code) in [
        ("/big.bin", big.len(), 200),
        ("/c.json", C_JSON.len(), 200),
        ("/missing.txt", 0, 404),
    ] {
        // HEAD, then a GET in the same write; the GET's response must follow the HEAD's
        // head immediately.
        let mut wire = request("HEAD", target, &[]);
        wire.push_str(&get("/a.txt"));
        s.write_all(wire.as_bytes()).unwrap();
        let head = read_head(&mut s);
        assert_eq!(status(&head), code, "HEAD {target}: {head}");
        if code == 200 {
            assert_eq!(content_length(&head), len, "HEAD {target}");
            assert!(header(&head, "Content-Type").is_some(), "{head}");
            assert!(header(&head, "ETag").is_some(), "{head}");
        }
        let (head, body) = read_response(&mut s);
        assert_eq!(status(&head), 200, "after HEAD {target}: {head}");
        assert_eq!(body, A_TXT, "after HEAD {target}: a body leaked");
    }
}

#[test]
fn missing_files_get_404() {
    let site = Site::new("404");
    fs::create_dir_all(site.www().join("noindex")).unwrap();
    let server = site.start(&[]);
    let mut s = server.connect();
    for target in [
        "/nope.txt",
        "/a.txt/",
        "/noindex/",
        "/noindex",
        "/sub/a.txt",
    ] {
        s.write_all(get(target).as_bytes()).unwrap();
        let (head, body) = read_response(&mut s);
        assert_eq!(status(&head), 404, "{target}: {head}");
        assert!(!body.is_empty(), "{target}: a short reason is expected");
        // A 404 is an ordinary answer: the connection stays usable.
        assert_eq!(header(&head, "Connection"), Some("keep-alive"), "{target}");
    }
}

#[test]
fn post_put_delete_get_405_with_allow_and_change_nothing_or_404_where_nothing_is() {
    let site = Site::new("405");
    let server = site.start(&[]);
    let mut s = server.connect();
    for (method, target) in [
        ("POST", "/a.txt"),
        ("PUT", "/a.txt"),
        ("DELETE", "/a.txt"),
        ("POST", "/"),
        ("PUT", "/new.txt"),
        ("PATCH", "/index.html"),
        ("OPTIONS", "/a.txt"),
    ] {
        // A body the server has to skip, then a GET in the same write.
        let mut wire = request(method, target, &["Content-Length: 5"]);
        wire.push_str("EVIL!");
        wire.push_str(&get("/a.txt"));
        s.write_all(wire.as_bytes()).unwrap();
        let (head, body) = read_response(&mut s);
        assert!(!body.is_empty());
        if target == "/new.txt" {
            // Nothing there: what a GET would get.
            assert_eq!(status(&head), 404, "{method} {target}: {head}");
        } else {
            assert_eq!(status(&head), 405, "{method} {target}: {head}");
            assert_eq!(allow_set(&head), ["GET", "HEAD"], "{method} {target}");
        }
        let (head, body) = read_response(&mut s);
        assert_eq!(status(&head), 200, "GET after {method}: {head}");
        assert_eq!(body, A_TXT, "GET after {method} {target}");
    }
    assert_eq!(fs::read(site.www().join("a.txt")).unwrap(), A_TXT);
    assert!(!site.www().join("new.txt").exists());
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let site = Site::new("keepalive");
    let server = site.start(&[]);
    let mut s = server.connect();
    let plan: [(&str, &[u8]); 6] = [
        ("/a.txt", A_TXT),
        ("/b.txt", B_TXT),
        ("/c.json", C_JSON),
        ("/a.txt", A_TXT),
        ("/", b"<h1>test index</h1>"),
        ("/b.txt", B_TXT),
    ];
    for (i, (target, want)) in plan.iter().enumerate() {
        if i == 3 {
            // A pause well under the idle timeout changes nothing.
            std::thread::sleep(Duration::from_millis(300));
        }
        s.write_all(get(target).as_bytes()).unwrap();
        let (head, body) = read_response(&mut s);
        assert_eq!(status(&head), 200, "request {i} {target}: {head}");
        assert_eq!(header(&head, "Connection"), Some("keep-alive"), "{head}");
        assert_eq!(&body, want, "request {i} {target}");
    }
}

#[test]
fn a_request_dribbled_in_small_pieces_is_answered_once() {
    let site = Site::new("dribble");
    let server = site.start(&[]);
    let mut s = server.connect();
    let wire = request("GET", "/b.txt", &["User-Agent: slow/1.0", "Accept: */*"]);
    for chunk in wire.as_bytes().chunks(5) {
        s.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(3));
    }
    let (head, body) = read_response(&mut s);
    assert_eq!((status(&head), body.as_slice()), (200, B_TXT), "{head}");
    // Exactly one response: the next thing on the wire answers the next request.
    s.write_all(get("/a.txt").as_bytes()).unwrap();
    let (head, body) = read_response(&mut s);
    assert_eq!((status(&head), body.as_slice()), (200, A_TXT), "{head}");
}

#[test]
fn three_pipelined_requests_are_answered_in_order() {
    let site = Site::new("pipeline");
    let server = site.start(&[]);
    let mut s = server.connect();
    let wire = [get("/c.json"), get("/a.txt"), get("/b.txt")].concat();
    s.write_all(wire.as_bytes()).unwrap();
    for (want, ctype) in [
        (C_JSON, "application/json"),
        (A_TXT, "text/plain"),
        (B_TXT, "text/plain"),
    ] {
        let (head, body) = read_response(&mut s);
        assert_eq!(status(&head), 200, "{head}");
        assert_eq!(media_type(&head), ctype);
        assert_eq!(body, want);
    }

    // Mixed outcomes, pipelined, still in order, with the last one closing.
    let wire = [
        get("/missing"),
        request("HEAD", "/c.json", &[]),
        request("DELETE", "/a.txt", &[]),
        request("GET", "/b.txt", &["Connection: close"]),
    ]
    .concat();
    s.write_all(wire.as_bytes()).unwrap();
    let (head, _) = read_response(&mut s);
    assert_eq!(status(&head), 404, "{head}");
    let head = read_head(&mut s);
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(content_length(&head), C_JSON.len());
    let (head, _) = read_response(&mut s);
    assert_eq!(status(&head), 405, "{head}");
    let (head, body) = split_response(&read_to_eof(&mut s));
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(body, B_TXT);
}

#[test]
fn connection_close_is_honoured() {
    let site = Site::new("close");
    let server = site.start(&[]);
    let mut s = server.connect();
    // The request after the closing one must be ignored, not answered.
    let wire = [
        request("GET", "/a.txt", &["Connection: close"]),
        get("/b.txt"),
    ]
    .concat();
    s.write_all(wire.as_bytes()).unwrap();
    let started = Instant::now();
    let (head, body) = split_response(&read_to_eof(&mut s));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "close came late"
    );
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(header(&head, "Connection"), Some("close"), "{head}");
    assert_eq!(
        body, A_TXT,
        "exactly the first response, then EOF; nothing for /b.txt"
    );

    // Also when `close` is one token of several.
    let mut s = server.connect();
    s.write_all(request("GET", "/c.json", &["Connection: TE, Close"]).as_bytes())
        .unwrap();
    let (head, body) = split_response(&read_to_eof(&mut s));
    assert_eq!((status(&head), body.as_slice()), (200, C_JSON), "{head}");
}

#[test]
fn http_1_0_closes_unless_keep_alive_is_asked() {
    let site = Site::new("http10");
    let server = site.start(&[]);
    let mut s = server.connect();
    s.write_all(b"GET /a.txt HTTP/1.0\r\n\r\n").unwrap();
    let (head, body) = split_response(&read_to_eof(&mut s));
    assert_eq!((status(&head), body.as_slice()), (200, A_TXT), "{head}");
    assert_eq!(header(&head, "Connection"), Some("close"), "{head}");

    let mut s = server.connect();
    s.write_all(b"GET /a.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut s);
    assert_eq!((status(&head), body.as_slice()), (200, A_TXT), "{head}");
    assert_eq!(header(&head, "Connection"), Some("keep-alive"), "{head}");
    s.write_all(b"GET /b.txt HTTP/1.0\r\n\r\n").unwrap();
    let (head, body) = split_response(&read_to_eof(&mut s));
    assert_eq!((status(&head), body.as_slice()), (200, B_TXT), "{head}");
}

#[test]
fn idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let site = Site::new("idle");
    let server = site.start(&["--http-idle-timeout", "300ms"]);
    let mut s = server.connect();
    s.write_all(get("/a.txt").as_bytes()).unwrap();
    let (head, _) = read_response(&mut s);
    assert_eq!(status(&head), 200);
    // Still open well inside the timeout, and a response starts the idle clock again.
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(get("/b.txt").as_bytes()).unwrap();
    let (head, body) = read_response(&mut s);
    assert_eq!((status(&head), body.as_slice()), (200, B_TXT), "{head}");
    let idle_from = Instant::now();
    assert!(
        closed_by_server(&mut s),
        "an idle keep-alive connection must be closed"
    );
    let waited = idle_from.elapsed();
    assert!(
        waited >= Duration::from_millis(200),
        "closed too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "closed too late: {waited:?}"
    );

    // Without the flag the default (15 s) keeps the connection well past 300 ms.
    let server = site.start(&[]);
    let mut s = server.connect();
    s.write_all(get("/a.txt").as_bytes()).unwrap();
    read_response(&mut s);
    std::thread::sleep(Duration::from_millis(700));
    s.write_all(get("/c.json").as_bytes()).unwrap();
    let (head, body) = read_response(&mut s);
    assert_eq!((status(&head), body.as_slice()), (200, C_JSON), "{head}");
}

#[test]
fn request_head_over_the_limit_gets_431() {
    let site = Site::new("431");
    let server = site.start(&["--max-head-size", "1024"]);

    // Just under the limit is fine.
    let pad = format!("X-Pad: {}", "p".repeat(800));
    let (head, body) = exchange(&server, request("GET", "/a.txt", &[&pad]).as_bytes());
    assert_eq!((status(&head), body.as_slice()), (200, A_TXT), "{head}");

    // A whole head over the limit.
    let pad = format!("X-Pad: {}", "p".repeat(2000));
    let mut s = server.connect();
    s.write_all(request("GET", "/a.txt", &[&pad]).as_bytes())
        .unwrap();
    let (head, _) = read_response(&mut s);
    assert_eq!(status(&head), 431, "{head}");
    assert!(closed_by_server(&mut s), "closed after 431");

    // A head that never ends: refused once it passes the limit, without waiting for more.
    let mut s = server.connect();
    let mut endless = b"GET /a.txt HTTP/1.1\r\nX-Long: ".to_vec();
    endless.extend(std::iter::repeat_n(b'q', 1500));
    s.write_all(&endless).unwrap();
    let (head, _) = read_response(&mut s);
    assert_eq!(status(&head), 431, "{head}");
    assert!(closed_by_server(&mut s), "closed after 431");

    // Too many header lines, each small.
    let many: Vec<String> = (0..100).map(|i| format!("X-{i}: v")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let (head, _) = exchange(&server, request("GET", "/a.txt", &many).as_bytes());
    assert_eq!(status(&head), 431, "{head}");
}

#[test]
fn malformed_request_lines_get_400_and_close() {
    let site = Site::new("400");
    let server = site.start(&[]);
    let cases: [&[u8]; 7] = [
        b"GET /a.txt HTTP/1.1 extra\r\n\r\n",
        b"GET /a.txt HTTX/1.1\r\n\r\n",
        b"GET /a.txt HTTP/9.9\r\n\r\n",
        b"G(T /a.txt HTTP/1.1\r\n\r\n",
        b"GET /a\x01.txt HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"GET /a.txt HTTP/1.1\r\nBad Header Name: x\r\n\r\n",
    ];
    for raw in cases {
        let mut s = server.connect();
        s.write_all(raw).unwrap();
        let (head, body) = read_response(&mut s);
        let shown = String::from_utf8_lossy(raw);
        assert_eq!(status(&head), 400, "{shown:?}: {head}");
        assert!(!body.is_empty(), "{shown:?}: a reason is expected");
        assert!(closed_by_server(&mut s), "{shown:?}: closed after 400");
    }

    // A bad request after good ones on the same connection: earlier answers stand.
    let mut s = server.connect();
    let mut wire = get("/a.txt").into_bytes();
    wire.extend_from_slice(b"NOT A REQUEST\r\n\r\n");
    s.write_all(&wire).unwrap();
    let (head, body) = read_response(&mut s);
    assert_eq!((status(&head), body.as_slice()), (200, A_TXT), "{head}");
    let (head, _) = read_response(&mut s);
    assert_eq!(status(&head), 400, "{head}");
    assert!(closed_by_server(&mut s));
}

#[test]
fn a_fifo_in_www_is_refused_without_blocking_the_loop() {
    let site = Site::new("fifo");
    let fifo = site.www().join("pipe.txt");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");
    let server = site.start(&[]);
    let mut s = server.connect();
    s.write_all(get("/pipe.txt").as_bytes()).unwrap();
    let (head, _) = read_response(&mut s);
    assert_eq!(status(&head), 404, "{head}");
    // The loop is not stuck in open(2) on the FIFO: another client is served.
    let (head, body) = exchange(&server, get("/a.txt").as_bytes());
    assert_eq!((status(&head), body.as_slice()), (200, A_TXT), "{head}");
}

const SECRET: &[u8] = b"TOP-SECRET-7f3a9c";

/// `<tmp>/secret.txt` beside the web root, `<tmp>/www2/secret.txt` in a sibling whose name
/// shares the root's prefix, and symlinks inside the root pointing out of it.
fn traversal_site() -> Site {
    let site = Site::new("traversal");
    site.tmp.write("secret.txt", SECRET);
    site.tmp.write("www2/secret.txt", SECRET);
    site.tmp.write("www/sub/ok.txt", b"inside");
    let www = site.www();
    let link = |target: &Path, name: &str| {
        std::os::unix::fs::symlink(target, www.join(name)).unwrap();
    };
    link(Path::new(".."), "link-out");
    link(&site.tmp.path.join("secret.txt"), "link-file");
    link(Path::new("../www2"), "link-www2");
    link(Path::new("/etc"), "link-etc");
    link(Path::new("/dev/zero"), "zero");
    site
}

#[test]
fn path_traversal_attempts_are_all_refused() {
    let site = traversal_site();
    let server = site.start(&[]);
    // Sanity: the setup is right and the secret is really there to be found.
    assert_eq!(fs::read(site.tmp.path.join("secret.txt")).unwrap(), SECRET);
    let (head, body) = exchange(&server, get("/sub/ok.txt").as_bytes());
    assert_eq!((status(&head), body.as_slice()), (200, &b"inside"[..]));

    let targets: &[&[u8]] = &[
        b"/../secret.txt",
        b"/%2e%2e/secret.txt",
        b"/%2E%2E%2Fsecret.txt",
        b"/%2e%2e%2fsecret.txt",
        b"/..%2fsecret.txt",
        b"/..%2Fsecret.txt",
        b"/..\\secret.txt",
        b"/%5c..%5csecret.txt",
        b"/..%5csecret.txt",
        b"/a/%00",
        b"/a.txt%00.html",
        b"//etc/passwd",
        b"/./../secret.txt",
        b"/sub/../../secret.txt",
        b"/sub/%2e%2e/%2e%2e/secret.txt",
        b"/C:/Windows/win.ini",
        b"/C:%5cWindows%5cwin.ini",
        b"/.%2e/secret.txt",
        b"/%2e./secret.txt",
        b"/%252e%252e/secret.txt",
        b"/%252e%252e%252fsecret.txt",
        b"/%c0%ae%c0%ae/secret.txt",
        b"/%c0%af../secret.txt",
        b"/%u002e%u002e/secret.txt",
        b"/..%00/secret.txt",
        b"/....//secret.txt",
        b"/..;/secret.txt",
        b"/link-out/secret.txt",
        b"/link-out/www2/secret.txt",
        b"/link-file",
        b"/link-www2/secret.txt",
        b"/link-etc/passwd",
        b"/zero",
        b"/etc/passwd",
        b"/../../../../../../etc/passwd",
        b"/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        b"etc/passwd",
        b"../secret.txt",
        b"*",
        b"http://localhost/../secret.txt",
        b"http://localhost/%2e%2e/secret.txt",
        b"http://localhost/..%2fsecret.txt",
        b"/secret.txt/..",
        b"/a.txt/../../secret.txt",
        b"/.secret.txt",
        b"/%2esecret.txt",
        b"/../www2/secret.txt",
        b"/sub/\0/../../secret.txt",
        b"/\0../secret.txt",
    ];
    assert!(targets.len() >= 15);
    for &target in targets {
        let mut s = server.connect();
        let mut wire = b"GET ".to_vec();
        wire.extend_from_slice(target);
        wire.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        s.write_all(&wire).unwrap();
        let raw = read_to_eof(&mut s);
        let shown = String::from_utf8_lossy(target);
        let (head, body) = split_response(&raw);
        let code = status(&head);
        assert!(
            code == 400 || code == 404,
            "{shown:?} must be refused with 400 or 404, got: {head}"
        );
        for needle in [SECRET, b"root:".as_slice(), b"[fonts]".as_slice()] {
            assert!(
                !body.windows(needle.len()).any(|w| w == needle),
                "{shown:?} leaked {:?}",
                String::from_utf8_lossy(needle)
            );
        }
        assert!(
            body.len() < 200,
            "{shown:?}: unexpected body of {}",
            body.len()
        );
    }

    // After all that, the server is alive and still serves the root.
    let (head, body) = exchange(&server, get("/a.txt").as_bytes());
    assert_eq!((status(&head), body.as_slice()), (200, A_TXT), "{head}");
}

#[test]
fn traversal_attempts_on_the_bundled_root_are_refused_too() {
    let server = TestServer::start(&[]);
    for target in [
        "/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/..%2fCargo.toml",
        "/../src/lib.rs",
        "//etc/passwd",
        "/etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
    ] {
        let (head, body) = exchange(&server, get(target).as_bytes());
        let code = status(&head);
        assert!(code == 400 || code == 404, "{target}: {head}");
        let body = String::from_utf8_lossy(&body);
        assert!(
            !body.contains("[package]") && !body.contains("root:"),
            "{target}"
        );
    }
}

#[test]
fn request_bodies_are_framed_by_content_length() {
    let site = Site::new("bodies");
    let server = site.start(&["--max-message-size", "100"]);

    // A body that arrives later, in pieces, is waited for and skipped; the request after it
    // is answered normally.
    let mut s = server.connect();
    s.write_all(request("POST", "/a.txt", &["Content-Length: 10"]).as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(b"01234").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut rest = b"56789".to_vec();
    rest.extend_from_slice(get("/b.txt").as_bytes());
    s.write_all(&rest).unwrap();
    let (head, _) = read_response(&mut s);
    assert_eq!(status(&head), 405, "{head}");
    let (head, body) = read_response(&mut s);
    assert_eq!((status(&head), body.as_slice()), (200, B_TXT), "{head}");

    // A body over the limit: 413, then close.
    let mut s = server.connect();
    s.write_all(request("POST", "/a.txt", &["Content-Length: 101"]).as_bytes())
        .unwrap();
    let (head, _) = read_response(&mut s);
    assert_eq!(status(&head), 413, "{head}");
    assert!(closed_by_server(&mut s));

    // A chunked body is read and skipped too; the request after it is answered.
    let mut s = server.connect();
    s.write_all(request("POST", "/a.txt", &["Transfer-Encoding: chunked"]).as_bytes())
        .unwrap();
    s.write_all(b"5\r\nhello\r\n0\r\n\r\n").unwrap();
    s.write_all(get("/b.txt").as_bytes()).unwrap();
    let (head, _) = read_response(&mut s);
    assert_eq!(status(&head), 405, "{head}");
    let (head, body) = read_response(&mut s);
    assert_eq!((status(&head), body.as_slice()), (200, B_TXT), "{head}");

    // A Content-Length that is not a number: 400, then close.
    let mut s = server.connect();
    s.write_all(request("GET", "/a.txt", &["Content-Length: ten"]).as_bytes())
        .unwrap();
    let (head, _) = read_response(&mut s);
    assert_eq!(status(&head), 400, "{head}");
    assert!(closed_by_server(&mut s));
}

// ---------------------------------------------------------------------------------------
// Regressions: server bugs found while writing these tests, each fixed, each kept.
// ---------------------------------------------------------------------------------------

#[test]
fn bug_half_closed_client_still_gets_its_response() {
    // `printf 'GET / HTTP/1.0\r\n\r\n' | nc -N host port` and similar one-shot clients
    // send the request and shut down their write side at once. The server reads the
    // request, queues the answer, then reads EOF in the same drain and drops the connection
    // before the queued answer is written: the client gets EOF and zero bytes.
    let site = Site::new("halfclose");
    let server = site.start(&[]);
    for wire in [
        "GET /a.txt HTTP/1.0\r\n\r\n".to_owned(),
        get("/a.txt"),
        request("GET", "/a.txt", &["Connection: close"]),
    ] {
        let mut s = server.connect();
        s.write_all(wire.as_bytes()).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let raw = read_to_eof(&mut s);
        assert!(
            !raw.is_empty(),
            "{wire:?} + FIN: the server closed without answering"
        );
        let (head, body) = split_response(&raw);
        assert_eq!((status(&head), body.as_slice()), (200, A_TXT), "{head}");
    }
}

#[test]
fn bug_invalid_content_length_is_rejected() {
    // RFC 9112 §6.3 (5) / RFC 9110 §8.6: Content-Length is 1*DIGIT; differing repeated values
    // or a non-digit value make the framing invalid and the server MUST answer 400 and close.
    // Today the first value wins and `+5` parses as 5 (`usize::from_str` takes a sign), so a
    // proxy in front that frames differently could have requests smuggled past it.
    let site = Site::new("badcl");
    let server = site.start(&[]);
    for wire in [
        "GET /a.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nhello",
        "GET /a.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 0\r\n\r\nhello",
        "GET /a.txt HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
    ] {
        let mut s = server.connect();
        s.write_all(wire.as_bytes()).unwrap();
        let (head, _) = read_response(&mut s);
        assert_eq!(status(&head), 400, "{wire:?}: {head}");
        assert!(closed_by_server(&mut s), "{wire:?}: must close after 400");
    }
}

#[test]
fn bug_http11_request_needs_exactly_one_host() {
    let site = Site::new("host");
    let server = site.start(&[]);
    for wire in [
        "GET /a.txt HTTP/1.1\r\n\r\n",
        "GET /a.txt HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ] {
        let (head, _) = exchange(&server, wire.as_bytes());
        assert_eq!(status(&head), 400, "{wire:?}: {head}");
    }
}

/// The server's resident memory, from /proc (Linux).
fn rss_kib(server: &TestServer) -> u64 {
    let status = fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn bug_pipelined_responses_do_not_grow_memory_without_bound() {
    // 200 pipelined GETs of a 1 MiB file are about 8 KB of requests. The server parses all
    // of them at once and queues all 200 MiB of answers, whether or not the client reads:
    // one connection can make it allocate ~25,000x what it sends (the 256 KiB read buffer
    // holds ~6,000 such requests). Reading should pause while a connection's unsent output
    // is large, and resume as it drains.
    let site = Site::new("amplify");
    let big: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    site.tmp.write("www/big.bin", &big);
    let server = site.start(&[]);
    let before = rss_kib(&server);
    let mut s = server.connect();
    s.write_all(get("/big.bin").repeat(200).as_bytes()).unwrap();
    assert!(
        server.wait_log("reading paused"),
        "reading never paused for a client that does not read its answers"
    );
    let grown = rss_kib(&server).saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "server memory grew by {} MiB for 8 KB of unread requests",
        grown / 1024
    );
    // Backpressure must not lose anything: all 200 answers arrive, in order.
    for i in 0..200 {
        let (head, body) = read_response(&mut s);
        assert_eq!(status(&head), 200, "response {i}: {head}");
        assert!(body == big, "response {i}: wrong body");
    }
}
