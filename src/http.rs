//! Plain-HTTP responses and static file serving, sans-I/O: callers hand in the
//! parsed request line and get back a [`Response`] to serialize.
//!
//! Security model: nothing outside the web root is ever served. Targets are
//! percent-decoded exactly once and then validated segment by segment; for
//! on-disk roots the final path is canonicalized and must stay under the
//! canonical root (so symlinks cannot escape). Refusals:
//!
//! * `400 Bad Request` — the target is malformed or *looks like an attack*:
//!   not origin-form/absolute-form, invalid `%` escape, encoded `/` or `\`
//!   (`%2f`, `%5c`), raw `\`, NUL or other control characters (raw or
//!   decoded), non-UTF-8 after decoding, `.` or `..` segments (raw or
//!   encoded), empty segments (`//`), or `:` in a segment (`C:`, NTFS streams).
//! * `404 Not Found` — the target is well-formed but names nothing servable:
//!   missing files, hidden names (segment starting with `.`), directories
//!   without `index.html`, non-regular files, and symlinks resolving outside
//!   the root.

use std::borrow::Cow;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

pub mod chunked;

/// The web root compiled in by `build.rs` from `www/`.
mod embedded {
    include!(concat!(env!("OUT_DIR"), "/www_files.rs"));
}

/// Largest on-disk file served; the whole body is read into memory on the
/// single event-loop thread, so an unbounded read would stall every client.
pub const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;

/// Where static files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebRoot {
    /// The bundled `www/` compiled into the binary.
    Embedded,
    /// A canonicalized directory on disk. A non-canonical path here fails
    /// closed: every request is refused with 404.
    Dir(PathBuf),
}

impl WebRoot {
    /// The bundled www/ compiled into the binary.
    pub fn embedded() -> WebRoot {
        WebRoot::Embedded
    }

    /// Serve a folder from disk (`--www DIR`). Canonicalized once here so the
    /// per-request containment check is a cheap prefix comparison.
    pub fn dir(path: &Path) -> io::Result<WebRoot> {
        let canonical = fs::canonicalize(path)?;
        if !fs::metadata(&canonical)?.is_dir() {
            // The caller names the path (`--www DIR: …`).
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "Not a directory",
            ));
        }
        Ok(WebRoot::Dir(canonical))
    }
}

/// An HTTP response ready to serialize with [`Response::write_to`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Extra headers (Content-Type, ETag, Allow, Cache-Control, ...).
    /// `Content-Length`, `Connection` and `Date` are added by `write_to`.
    pub headers: Vec<(&'static str, String)>,
    /// Embedded files are served zero-copy as `Cow::Borrowed`. For 304 this
    /// still holds the representation so `Content-Length` can be reported.
    pub body: Cow<'static, [u8]>,
}

impl Response {
    /// A small text/plain response whose body is `reason` plus "\n".
    pub fn text(status: u16, reason: &str) -> Response {
        let mut body = Vec::with_capacity(reason.len() + 1);
        body.extend_from_slice(reason.as_bytes());
        body.push(b'\n');
        Response {
            status,
            headers: vec![("Content-Type", "text/plain; charset=utf-8".to_owned())],
            body: Cow::Owned(body),
        }
    }

    /// Serializes the status line, headers and (unless suppressed) the body.
    ///
    /// * `Date` is always sent (RFC 9110 §6.6.1: servers with a clock MUST).
    /// * `Content-Length` is the body length, also for HEAD (§9.3.2) and 304
    ///   (§8.6: the length a 200 would have had); it is omitted for 1xx and
    ///   204, where §8.6 forbids it.
    /// * `Connection: keep-alive`/`close` is added unless the caller already
    ///   supplied a `Connection` header (e.g. `Upgrade` on a 101).
    /// * The body is omitted for HEAD, 1xx, 204 and 304 (RFC 9112 §6.3).
    ///
    /// A status outside 100..=999 is sent as 500 (status-code is 3DIGIT,
    /// RFC 9112 §4). CR, LF and NUL in header values are dropped so a value
    /// can never split the response.
    pub fn write_to(&self, out: &mut Vec<u8>, head_only: bool, keep_alive: bool) {
        let status = if (100..=999).contains(&self.status) {
            self.status
        } else {
            500
        };
        let informational = (100..200).contains(&status);
        let no_length = informational || status == 204;
        let no_body = head_only || no_length || status == 304;

        out.reserve(128 + self.headers.len() * 48 + if no_body { 0 } else { self.body.len() });
        out.extend_from_slice(b"HTTP/1.1 ");
        push_decimal(out, u64::from(status));
        out.push(b' ');
        out.extend_from_slice(reason_phrase(status).as_bytes());
        out.extend_from_slice(b"\r\n");

        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(http_date(SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\r\n");

        let mut has_connection = false;
        for (name, value) in &self.headers {
            has_connection |= name.eq_ignore_ascii_case("connection");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend(value.bytes().filter(|b| !matches!(b, b'\r' | b'\n' | 0)));
            out.extend_from_slice(b"\r\n");
        }
        if !no_length {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(out, self.body.len() as u64);
            out.extend_from_slice(b"\r\n");
        }
        if !has_connection {
            out.extend_from_slice(if keep_alive {
                b"Connection: keep-alive\r\n".as_slice()
            } else {
                b"Connection: close\r\n".as_slice()
            });
        }
        out.extend_from_slice(b"\r\n");
        if !no_body {
            out.extend_from_slice(&self.body);
        }
    }
}

/// Reason phrases from RFC 9110 §15 (plus 429/431 from RFC 6585). Unknown
/// codes get an empty phrase, which RFC 9112 §4 permits.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Serve a GET/HEAD for `target` (the raw request-target from the request
/// line). The response for HEAD is the GET response; the caller passes
/// `head_only` to [`Response::write_to`] (RFC 9110 §9.3.2).
/// `if_none_match` is the raw If-None-Match header value if present.
pub fn serve_static(
    root: &WebRoot,
    method: &str,
    target: &str,
    if_none_match: Option<&[u8]>,
) -> Response {
    // Method names are case-sensitive (RFC 9110 §9.1); 405 MUST carry Allow (§15.5.6).
    if method != "GET" && method != "HEAD" {
        let mut resp = Response::text(405, reason_phrase(405));
        resp.headers.push(("Allow", "GET, HEAD".to_owned()));
        return resp;
    }
    let path = match parse_target(target) {
        Ok(path) => path,
        Err(status) => return Response::text(status, reason_phrase(status)),
    };
    let found = match root {
        WebRoot::Embedded => lookup_embedded(&path),
        WebRoot::Dir(dir) => lookup_dir(dir, &path),
    };
    let (name, body, etag) = match found {
        Ok(found) => found,
        Err(status) => return Response::text(status, reason_phrase(status)),
    };

    let mut headers = vec![("ETag", etag), ("Cache-Control", "no-cache".to_owned())];
    // RFC 9110 §13.1.2: GET/HEAD with a matching If-None-Match gets 304.
    if if_none_match.is_some_and(|h| etag_matches(h, &headers[0].1)) {
        // §15.4.5: send the validators/caching headers a 200 would have had,
        // but not other representation metadata.
        return Response {
            status: 304,
            headers,
            body,
        };
    }
    headers.push(("Content-Type", content_type(&name).to_owned()));
    headers.push(("X-Content-Type-Options", "nosniff".to_owned()));
    Response {
        status: 200,
        headers,
        body,
    }
}

/// A validated request path: decoded segments plus whether it ended in `/`.
#[derive(Debug, PartialEq, Eq)]
struct ReqPath {
    segments: Vec<String>,
    trailing_slash: bool,
}

/// Extracts and validates the path of an origin-form or absolute-form target
/// (RFC 9112 §3.2.1, §3.2.2). Errors carry the status to answer with.
fn parse_target(target: &str) -> Result<ReqPath, u16> {
    // Query and fragment never select a file (RFC 9110 §4.2.1 / RFC 3986 §3).
    let end = target.find(['?', '#']).unwrap_or(target.len());
    let mut path = &target[..end];

    // Absolute-form MUST be accepted by servers (RFC 9112 §3.2.2); the
    // authority is ignored since we serve a single root.
    for scheme in ["http://", "https://"] {
        // Compare bytes: slicing the str could split a multi-byte char.
        let prefix = path.as_bytes().get(..scheme.len());
        if prefix.is_some_and(|p| p.eq_ignore_ascii_case(scheme.as_bytes())) {
            // The matched prefix is ASCII, so this index is a char boundary.
            let rest = path.get(scheme.len()..).unwrap_or_default();
            path = rest.find('/').map_or("/", |i| &rest[i..]);
            break;
        }
    }
    let Some(path) = path.strip_prefix('/') else {
        return Err(400); // not origin-form: `etc/passwd`, `*`, `C:/...`
    };
    // Raw backslashes, spaces and control characters are never valid in a
    // request-target (RFC 3986 §2) and backslash is a separator on Windows.
    if path.bytes().any(|b| b == b'\\' || b <= b' ' || b == 0x7f) {
        return Err(400);
    }

    let mut segments = Vec::new();
    let mut raw_segments = path.split('/').peekable();
    let mut trailing_slash = false;
    while let Some(raw) = raw_segments.next() {
        if raw.is_empty() {
            if raw_segments.peek().is_none() {
                trailing_slash = true; // `/` or `/dir/`: directory index
                break;
            }
            return Err(400); // `//etc/passwd`, `/a//b`
        }
        segments.push(decode_segment(raw)?);
    }
    Ok(ReqPath {
        segments,
        trailing_slash,
    })
}

/// Percent-decodes one path segment exactly once (RFC 3986 §2.1) and rejects
/// anything that could change which directory it names.
fn decode_segment(raw: &str) -> Result<String, u16> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_val);
            let lo = bytes.get(i + 2).copied().and_then(hex_val);
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                _ => return Err(400),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let segment = String::from_utf8(out).map_err(|_| 400u16)?;
    let bad_char = |c: char| c == '/' || c == '\\' || c == ':' || c.is_control();
    if segment == "." || segment == ".." || segment.chars().any(bad_char) {
        return Err(400);
    }
    if segment.starts_with('.') {
        return Err(404); // hidden files (.git, .env, ...) are never served
    }
    Ok(segment)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// What a lookup yields: file name (for the Content-Type), body, ETag.
type Found = (String, Cow<'static, [u8]>, String);

fn lookup_embedded(path: &ReqPath) -> Result<Found, u16> {
    fn find(rel: &str) -> Option<usize> {
        embedded::FILES
            .binary_search_by(|(p, _)| (*p).cmp(rel))
            .ok()
    }
    let rel = path.segments.join("/");
    let index = if path.trailing_slash || rel.is_empty() {
        let rel = if rel.is_empty() {
            "index.html".to_owned()
        } else {
            format!("{rel}/index.html")
        };
        find(&rel)
    } else {
        // A directory named without the trailing slash still gets its index.
        find(&rel).or_else(|| find(&format!("{rel}/index.html")))
    };
    let i = index.ok_or(404u16)?;
    let (name, bytes) = embedded::FILES[i];
    Ok((
        name.to_owned(),
        Cow::Borrowed(bytes),
        embedded_etags()[i].clone(),
    ))
}

/// ETags of the embedded files, same order as `FILES`; hashed once, lazily.
fn embedded_etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        embedded::FILES
            .iter()
            .map(|(_, bytes)| etag_for(bytes))
            .collect()
    })
}

fn lookup_dir(root: &Path, path: &ReqPath) -> Result<Found, u16> {
    let mut joined = root.to_path_buf();
    joined.extend(&path.segments);
    let mut file = contained(root, &joined)?;
    // Content-Type follows the requested name, not a symlink target's name.
    let mut name = path.segments.last().cloned().unwrap_or_default();
    if fs::metadata(&file).map_err(|e| io_status(&e))?.is_dir() {
        file = contained(root, &file.join("index.html"))?;
        name = "index.html".to_owned();
    } else if path.trailing_slash {
        return Err(404); // `/file.txt/` names a directory that isn't one
    }
    // Only regular files: opening a FIFO would block the event loop, and
    // devices/sockets are not content.
    let meta = fs::metadata(&file).map_err(|e| io_status(&e))?;
    if !meta.is_file() {
        return Err(404);
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(500);
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    fs::File::open(&file)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| io_status(&e))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(500); // grew since the metadata check
    }
    let etag = etag_for(&bytes);
    Ok((name, Cow::Owned(bytes), etag))
}

/// Canonicalizes `path` (resolving every symlink) and requires the result to
/// stay under the canonical `root`; `Path::starts_with` compares whole
/// components, so `/srv/www2` is not under `/srv/www`.
fn contained(root: &Path, path: &Path) -> Result<PathBuf, u16> {
    let canonical = fs::canonicalize(path).map_err(|e| io_status(&e))?;
    if canonical.starts_with(root) {
        Ok(canonical)
    } else {
        Err(404)
    }
}

fn io_status(e: &io::Error) -> u16 {
    match e.kind() {
        io::ErrorKind::PermissionDenied => 403,
        _ => 404,
    }
}

/// Content-Type by file extension (case-insensitive). Text types carry a
/// charset so browsers never have to guess (RFC 9110 §8.3).
fn content_type(name: &str) -> &'static str {
    let ext = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => ext.to_ascii_lowercase(),
        _ => return "application/octet-stream",
    };
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        "wasm" => "application/wasm",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// A strong validator (RFC 9110 §8.8.3) derived only from the bytes, so it is
/// stable across restarts and identical for embedded and on-disk copies.
fn etag_for(bytes: &[u8]) -> String {
    format!("\"{:016x}-{:x}\"", fnv1a64(bytes), bytes.len())
}

/// 64-bit FNV-1a: not cryptographic, but plenty to detect a changed file.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Evaluates If-None-Match (RFC 9110 §13.1.2): `*` or a comma list of
/// entity-tags compared with the weak comparison function (§8.8.3.2), i.e.
/// ignoring `W/`. A malformed list never matches (the header is ignored).
fn etag_matches(header: &[u8], etag: &str) -> bool {
    let ours = etag.strip_prefix("W/").unwrap_or(etag).as_bytes();
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let mut rest = header;
    while rest.first().is_some_and(is_ows) {
        rest = &rest[1..];
    }
    while rest.last().is_some_and(is_ows) {
        rest = &rest[..rest.len() - 1];
    }
    if rest == b"*" {
        return true;
    }
    loop {
        // Skip OWS and empty list elements (RFC 9110 §5.6.1).
        while rest.first().is_some_and(|b| is_ows(b) || *b == b',') {
            rest = &rest[1..];
        }
        if rest.is_empty() {
            return false;
        }
        if let Some(strong) = rest.strip_prefix(b"W/") {
            rest = strong;
        }
        // entity-tag = [ weak ] DQUOTE *etagc DQUOTE; etagc may include ','.
        if rest.first() != Some(&b'"') {
            return false;
        }
        let Some(close) = rest[1..].iter().position(|&b| b == b'"') else {
            return false;
        };
        let (tag, after) = rest.split_at(close + 2);
        if tag == ours {
            return true;
        }
        rest = after;
        while rest.first().is_some_and(is_ows) {
            rest = &rest[1..];
        }
        if !rest.is_empty() && rest[0] != b',' {
            return false;
        }
    }
}

/// Formats an IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110 §5.6.7).
fn http_date(now: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // A clock before 1970 is not a "reasonable approximation"; clamp to the epoch.
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let tod = secs % 86_400;
    // Civil-from-days (H. Hinnant), unsigned since days >= 0.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A throwaway web root on disk, removed on drop.
    struct TempRoot {
        path: PathBuf,
    }

    impl TempRoot {
        fn new() -> TempRoot {
            static N: AtomicUsize = AtomicUsize::new(0);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let path = std::env::temp_dir().join(format!(
                "wsloop-http-{}-{}-{nanos}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(path.join("www/sub/deeper")).unwrap();
            fs::create_dir_all(path.join("www/noindex")).unwrap();
            fs::create_dir_all(path.join("www/.git")).unwrap();
            fs::write(path.join("www/index.html"), "<h1>root</h1>").unwrap();
            fs::write(path.join("www/style.css"), "body{}").unwrap();
            fs::write(path.join("www/sub/index.html"), "<h1>sub</h1>").unwrap();
            fs::write(path.join("www/sub/deeper/data.json"), "{}").unwrap();
            fs::write(path.join("www/noindex/a.txt"), "a").unwrap();
            fs::write(path.join("www/with space.txt"), "spaced").unwrap();
            fs::write(path.join("www/.env"), "SECRET=1").unwrap();
            fs::write(path.join("www/.git/config"), "secret").unwrap();
            fs::write(path.join("secret.txt"), "outside the root").unwrap();
            fs::create_dir_all(path.join("www2")).unwrap();
            fs::write(path.join("www2/x.txt"), "sibling with common prefix").unwrap();
            TempRoot { path }
        }

        fn root(&self) -> WebRoot {
            WebRoot::dir(&self.path.join("www")).unwrap()
        }
    }

    impl Drop for TempRoot {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.path);
        }
    }

    fn get(root: &WebRoot, target: &str) -> Response {
        serve_static(root, "GET", target, None)
    }

    fn header<'a>(resp: &'a Response, name: &str) -> Option<&'a str> {
        resp.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn serialize(resp: &Response, head_only: bool, keep_alive: bool) -> String {
        let mut out = Vec::new();
        resp.write_to(&mut out, head_only, keep_alive);
        String::from_utf8(out).unwrap()
    }

    /// Targets that must be refused with the given status on every root.
    const REFUSED: &[(&str, u16)] = &[
        ("/../etc/passwd", 400),
        ("/..", 400),
        ("/a/../../etc/passwd", 400),
        ("/%2e%2e/etc/passwd", 400),
        ("/%2E%2E/etc/passwd", 400),
        ("/%2E./etc/passwd", 400),
        ("/.%2e/x", 400),
        ("/%2E%2E%2Fetc%2Fpasswd", 400),
        ("/..%2f..%2fetc/passwd", 400),
        ("/a%2fb", 400),
        ("/a%2Fb", 400),
        ("/..\\..\\windows", 400),
        ("/a\\b", 400),
        ("/%5c..%5c", 400),
        ("/%5C..%5Cwin.ini", 400),
        ("/a/%00", 400),
        ("/index.html%00.png", 400),
        ("/a\0b", 400),
        ("/a%0d%0aSet-Cookie:x", 400),
        ("/a b", 400),
        ("//etc/passwd", 400),
        ("/a//b", 400),
        ("///", 400),
        ("/./../x", 400),
        ("/./index.html", 400),
        ("/%2e/index.html", 400),
        ("/C:/Windows/win.ini", 400),
        ("/c%3a/Windows/win.ini", 400),
        ("/index.html::$DATA", 400),
        ("etc/passwd", 400),
        ("", 400),
        ("*", 400),
        ("C:/Windows/win.ini", 400),
        ("ééééé/../x", 400),
        ("http:/é", 400),
        ("/%", 400),
        ("/%2", 400),
        ("/%zz", 400),
        ("/%2g", 400),
        ("/%ff%fe", 400),
        ("/%c0%ae%c0%ae/etc/passwd", 400),
        ("http://host/../etc/passwd", 400),
        ("/%252e%252e/x", 404),
        ("/%252e%252e%252fetc%252fpasswd", 404),
        ("/...", 404),
        ("/.../etc/passwd", 404),
        ("/.env", 404),
        ("/.git/config", 404),
        ("/%2egit/config", 404),
        ("/../www2/x.txt", 400),
        ("/nope.html", 404),
    ];

    #[test]
    fn traversal_and_malformed_targets_are_refused_on_dir_root() {
        let tmp = TempRoot::new();
        let root = tmp.root();
        for &(target, status) in REFUSED {
            let resp = get(&root, target);
            assert_eq!(resp.status, status, "target {target:?}");
            assert!(
                !resp
                    .body
                    .windows(6)
                    .any(|w| w == b"outside" || w == b"SECRET"),
                "{target:?}"
            );
        }
    }

    #[test]
    fn traversal_and_malformed_targets_are_refused_on_embedded_root() {
        for &(target, status) in REFUSED {
            assert_eq!(
                get(&WebRoot::Embedded, target).status,
                status,
                "target {target:?}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_leaving_the_root_are_refused() {
        use std::os::unix::fs::symlink;
        let tmp = TempRoot::new();
        let www = tmp.path.join("www");
        symlink("/etc", www.join("symlink-out")).unwrap();
        symlink(tmp.path.join("secret.txt"), www.join("secret-link.txt")).unwrap();
        symlink("../www2", www.join("sibling")).unwrap();
        symlink("style.css", www.join("alias.css")).unwrap();
        let root = tmp.root();
        for target in [
            "/symlink-out",
            "/symlink-out/passwd",
            "/symlink-out/",
            "/secret-link.txt",
            "/sibling/x.txt",
        ] {
            assert_eq!(get(&root, target).status, 404, "target {target:?}");
        }
        // A symlink that stays inside the root is fine; its own name picks the type.
        symlink("style.css", www.join("alias.txt")).unwrap();
        let resp = get(&root, "/alias.css");
        assert_eq!((resp.status, &*resp.body), (200, &b"body{}"[..]));
        let resp = get(&root, "/alias.txt");
        assert_eq!(
            header(&resp, "Content-Type"),
            Some("text/plain; charset=utf-8")
        );
    }

    #[cfg(unix)]
    #[test]
    fn symlinked_index_leaving_the_root_is_refused() {
        use std::os::unix::fs::symlink;
        let tmp = TempRoot::new();
        symlink(
            tmp.path.join("secret.txt"),
            tmp.path.join("www/noindex/index.html"),
        )
        .unwrap();
        assert_eq!(get(&tmp.root(), "/noindex/").status, 404);
    }

    #[cfg(unix)]
    #[test]
    fn non_regular_files_are_not_served() {
        let tmp = TempRoot::new();
        let _sock = std::os::unix::net::UnixListener::bind(tmp.path.join("www/sock.txt")).unwrap();
        assert_eq!(get(&tmp.root(), "/sock.txt").status, 404);
    }

    #[test]
    fn dir_root_serves_files_and_indexes() {
        let tmp = TempRoot::new();
        let root = tmp.root();
        let cases: &[(&str, u16, &[u8])] = &[
            ("/", 200, b"<h1>root</h1>"),
            ("/index.html", 200, b"<h1>root</h1>"),
            ("/?x=1", 200, b"<h1>root</h1>"),
            ("/#frag", 200, b"<h1>root</h1>"),
            ("/style.css?v=2#top", 200, b"body{}"),
            ("/sub", 200, b"<h1>sub</h1>"),
            ("/sub/", 200, b"<h1>sub</h1>"),
            ("/%73ub/", 200, b"<h1>sub</h1>"),
            ("/sub/deeper/data.json", 200, b"{}"),
            ("/with%20space.txt", 200, b"spaced"),
            ("http://example.com/style.css", 200, b"body{}"),
            ("HTTP://example.com", 200, b"<h1>root</h1>"),
            ("/noindex", 404, b"Not Found\n"),
            ("/noindex/", 404, b"Not Found\n"),
            ("/style.css/", 404, b"Not Found\n"),
            ("/sub/deeper/", 404, b"Not Found\n"),
        ];
        for &(target, status, body) in cases {
            let resp = get(&root, target);
            assert_eq!(
                (resp.status, &*resp.body),
                (status, body),
                "target {target:?}"
            );
        }
    }

    #[test]
    fn dir_constructor_canonicalizes_and_rejects_files() {
        let tmp = TempRoot::new();
        let root = WebRoot::dir(&tmp.path.join("www/sub/..")).unwrap();
        assert_eq!(
            root,
            WebRoot::Dir(fs::canonicalize(tmp.path.join("www")).unwrap())
        );
        assert!(WebRoot::dir(&tmp.path.join("secret.txt")).is_err());
        assert!(WebRoot::dir(&tmp.path.join("missing")).is_err());
    }

    #[test]
    fn non_canonical_dir_root_fails_closed() {
        let tmp = TempRoot::new();
        let root = WebRoot::Dir(tmp.path.join("www/sub/.."));
        assert_eq!(get(&root, "/index.html").status, 404);
    }

    #[test]
    fn content_types_by_extension() {
        let cases = [
            ("index.html", "text/html; charset=utf-8"),
            ("INDEX.HTML", "text/html; charset=utf-8"),
            ("a.css", "text/css; charset=utf-8"),
            ("a.js", "text/javascript; charset=utf-8"),
            ("a.json", "application/json"),
            ("a.svg", "image/svg+xml"),
            ("a.png", "image/png"),
            ("favicon.ico", "image/x-icon"),
            ("a.txt", "text/plain; charset=utf-8"),
            ("a.wasm", "application/wasm"),
            ("a.tar.gz", "application/octet-stream"),
            ("Makefile", "application/octet-stream"),
            ("html", "application/octet-stream"),
            ("a.", "application/octet-stream"),
        ];
        for (name, ct) in cases {
            assert_eq!(content_type(name), ct, "{name}");
        }
    }

    #[test]
    fn served_file_headers() {
        let tmp = TempRoot::new();
        let resp = get(&tmp.root(), "/sub/deeper/data.json");
        assert_eq!(resp.status, 200);
        assert_eq!(header(&resp, "Content-Type"), Some("application/json"));
        assert_eq!(header(&resp, "Cache-Control"), Some("no-cache"));
        assert_eq!(header(&resp, "ETag"), Some(etag_for(b"{}").as_str()));
        assert!(matches!(resp.body, Cow::Owned(_)));
    }

    #[test]
    fn etag_is_strong_quoted_and_content_derived() {
        let tag = etag_for(b"hello");
        assert!(tag.starts_with('"') && tag.ends_with('"') && !tag.starts_with("W/"));
        assert!(tag.ends_with("-5\""));
        assert_ne!(tag, etag_for(b"hellp"));
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn if_none_match_evaluation() {
        let ours = "\"abc-1\"";
        let cases: &[(&[u8], bool)] = &[
            (b"\"abc-1\"", true),
            (b"W/\"abc-1\"", true),
            (b"*", true),
            (b"  *  ", true),
            (b"\"x\", \"abc-1\"", true),
            (b"\"x\",W/\"abc-1\" ,\"y\"", true),
            (b", ,\"abc-1\"", true),
            (b"\"a,b\", \"abc-1\"", true),
            (b"\"abc-2\"", false),
            (b"abc-1", false),
            (b"\"abc-1", false),
            (b"", false),
            (b"\"x\" \"abc-1\"", false),
            (b"w/\"abc-1\"", false),
            (b"\"x\", *", false),
            (b"\"\"", false),
            (b"\xff\"abc-1\"", false),
        ];
        for &(header, expected) in cases {
            assert_eq!(
                etag_matches(header, ours),
                expected,
                "{:?}",
                String::from_utf8_lossy(header)
            );
        }
    }

    #[test]
    fn conditional_get_yields_304_with_etag_and_length() {
        let tmp = TempRoot::new();
        let root = tmp.root();
        let etag = etag_for(b"body{}");
        for inm in [
            etag.clone(),
            format!("W/{etag}"),
            "*".to_owned(),
            format!("\"nope\", {etag}"),
        ] {
            for method in ["GET", "HEAD"] {
                let resp = serve_static(&root, method, "/style.css", Some(inm.as_bytes()));
                assert_eq!(resp.status, 304, "{inm} {method}");
                assert_eq!(header(&resp, "ETag"), Some(etag.as_str()));
                assert_eq!(header(&resp, "Cache-Control"), Some("no-cache"));
                assert_eq!(header(&resp, "Content-Type"), None);
                let wire = serialize(&resp, false, true);
                assert!(wire.starts_with("HTTP/1.1 304 Not Modified\r\n"));
                assert!(wire.contains("\r\nContent-Length: 6\r\n"), "{wire}");
                assert!(
                    wire.ends_with("\r\n\r\n"),
                    "304 must not carry a body: {wire:?}"
                );
            }
        }
        let resp = serve_static(&root, "GET", "/style.css", Some(b"\"stale-1\""));
        assert_eq!(resp.status, 200);
        // A missing file is still 404 even with If-None-Match: *.
        assert_eq!(
            serve_static(&root, "GET", "/gone.css", Some(b"*")).status,
            404
        );
    }

    #[test]
    fn other_methods_get_405_with_allow() {
        for method in [
            "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE", "get", "head", "",
        ] {
            let resp = serve_static(&WebRoot::Embedded, method, "/", None);
            assert_eq!(resp.status, 405, "{method:?}");
            assert_eq!(header(&resp, "Allow"), Some("GET, HEAD"));
            // Method is checked before the target.
            assert_eq!(
                serve_static(&WebRoot::Embedded, method, "/../x", None).status,
                405
            );
        }
    }

    #[test]
    fn head_omits_body_but_keeps_length() {
        let tmp = TempRoot::new();
        let resp = serve_static(&tmp.root(), "HEAD", "/", None);
        assert_eq!(resp.status, 200);
        assert_eq!(
            header(&resp, "Content-Type"),
            Some("text/html; charset=utf-8")
        );
        let wire = serialize(&resp, true, true);
        assert!(wire.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(wire.contains("\r\nContent-Length: 13\r\n"), "{wire}");
        assert!(
            wire.ends_with("\r\nConnection: keep-alive\r\n\r\n"),
            "{wire:?}"
        );
        let full = serialize(&resp, false, false);
        assert!(
            full.ends_with("\r\nConnection: close\r\n\r\n<h1>root</h1>"),
            "{full:?}"
        );
    }

    #[test]
    fn write_to_layout() {
        let mut resp = Response::text(404, "Not Found");
        resp.headers
            .push(("X-Evil", "a\r\nSet-Cookie: b\0".to_owned()));
        let wire = serialize(&resp, false, true);
        let (head, body) = wire.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, "Not Found\n");
        let lines: Vec<&str> = head.split("\r\n").collect();
        assert_eq!(lines[0], "HTTP/1.1 404 Not Found");
        assert!(lines[1].starts_with("Date: ") && lines[1].ends_with(" GMT"));
        assert_eq!(
            &lines[2..],
            [
                "Content-Type: text/plain; charset=utf-8",
                "X-Evil: aSet-Cookie: b",
                "Content-Length: 10",
                "Connection: keep-alive"
            ]
        );
    }

    #[test]
    fn write_to_status_special_cases() {
        let mut resp = Response::text(204, "No Content");
        let wire = serialize(&resp, false, true);
        assert!(wire.starts_with("HTTP/1.1 204 No Content\r\n"));
        assert!(
            !wire.contains("Content-Length") && wire.ends_with("\r\n\r\n"),
            "{wire:?}"
        );

        resp.status = 101;
        resp.headers = vec![
            ("Upgrade", "websocket".to_owned()),
            ("Connection", "Upgrade".to_owned()),
        ];
        let wire = serialize(&resp, false, true);
        assert!(wire.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(
            !wire.contains("Content-Length") && !wire.contains("keep-alive"),
            "{wire:?}"
        );
        assert!(
            wire.ends_with("\r\nConnection: Upgrade\r\n\r\n"),
            "{wire:?}"
        );

        resp.status = 0;
        assert!(serialize(&resp, false, true).starts_with("HTTP/1.1 500 Internal Server Error\r\n"));
        resp.status = 1000;
        assert!(serialize(&resp, false, true).starts_with("HTTP/1.1 500 Internal Server Error\r\n"));
        resp.status = 599;
        assert!(serialize(&resp, false, true).starts_with("HTTP/1.1 599 \r\n"));
    }

    #[test]
    fn text_response() {
        let resp = Response::text(413, "Content Too Large");
        assert_eq!(resp.status, 413);
        assert_eq!(&*resp.body, b"Content Too Large\n");
        assert_eq!(
            header(&resp, "Content-Type"),
            Some("text/plain; charset=utf-8")
        );
    }

    #[test]
    fn reason_phrases() {
        let cases = [
            (101, "Switching Protocols"),
            (200, "OK"),
            (204, "No Content"),
            (304, "Not Modified"),
            (400, "Bad Request"),
            (401, "Unauthorized"),
            (403, "Forbidden"),
            (404, "Not Found"),
            (405, "Method Not Allowed"),
            (413, "Content Too Large"),
            (426, "Upgrade Required"),
            (431, "Request Header Fields Too Large"),
            (500, "Internal Server Error"),
            (503, "Service Unavailable"),
            (799, ""),
        ];
        for (status, phrase) in cases {
            assert_eq!(reason_phrase(status), phrase);
        }
    }

    #[test]
    fn http_date_format() {
        let at = |secs| http_date(UNIX_EPOCH + std::time::Duration::from_secs(secs));
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(at(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(at(4_107_542_399), "Sun, 28 Feb 2100 23:59:59 GMT");
        assert_eq!(at(4_107_542_400), "Mon, 01 Mar 2100 00:00:00 GMT");
        assert_eq!(at(4_133_980_799), "Fri, 31 Dec 2100 23:59:59 GMT");
    }

    #[test]
    fn push_decimal_values() {
        for n in [0u64, 7, 10, 12_345, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    #[test]
    fn embedded_table_is_sorted_and_unique() {
        assert!(embedded::FILES.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(embedded::FILES
            .iter()
            .all(|(p, _)| !p.is_empty() && !p.starts_with('/')));
        assert_eq!(embedded_etags().len(), embedded::FILES.len());
    }

    /// Percent-encodes everything but unreserved characters and `/`.
    fn encode_path(rel: &str) -> String {
        let mut out = String::from("/");
        for b in rel.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    #[test]
    fn every_embedded_file_is_served_zero_copy() {
        for (i, &(rel, bytes)) in embedded::FILES.iter().enumerate() {
            let resp = get(&WebRoot::Embedded, &encode_path(rel));
            assert_eq!(resp.status, 200, "{rel}");
            assert!(
                matches!(resp.body, Cow::Borrowed(b) if std::ptr::eq(b, bytes)),
                "{rel}"
            );
            assert_eq!(header(&resp, "ETag"), Some(embedded_etags()[i].as_str()));
            let etag = embedded_etags()[i].as_bytes();
            assert_eq!(
                serve_static(&WebRoot::Embedded, "GET", &encode_path(rel), Some(etag)).status,
                304
            );
        }
        let has_index = embedded::FILES.iter().any(|(p, _)| *p == "index.html");
        assert_eq!(
            get(&WebRoot::Embedded, "/").status,
            if has_index { 200 } else { 404 }
        );
    }

    #[test]
    fn embedded_missing_file_is_404() {
        let resp = get(&WebRoot::Embedded, "/definitely/not/here.html");
        assert_eq!((resp.status, &*resp.body), (404, &b"Not Found\n"[..]));
    }

    /// Deterministic fuzz: arbitrary targets never panic, and a 200 from the
    /// on-disk root only ever returns content that lives inside the root.
    #[test]
    fn fuzzed_targets_never_escape_or_panic() {
        let tmp = TempRoot::new();
        let root = tmp.root();
        let inside: Vec<&[u8]> = vec![
            b"<h1>root</h1>",
            b"body{}",
            b"<h1>sub</h1>",
            b"{}",
            b"a",
            b"spaced",
        ];
        let atoms = [
            "/",
            "..",
            ".",
            "%2e",
            "%2E",
            "%2f",
            "%5c",
            "%00",
            "%",
            "%2",
            "\\",
            "\0",
            "a",
            "sub",
            "index.html",
            "style.css",
            "www2",
            "secret.txt",
            "?",
            "#",
            ":",
            "C:",
            "%25",
            "%c0%af",
            "é",
            "http://",
            "HTTPS://h",
            " ",
            "//",
            "%20",
            "noindex",
            ".env",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let mut target = String::new();
            let len = (state % 8) as usize + 1;
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                target.push_str(atoms[(state % atoms.len() as u64) as usize]);
            }
            for root in [&root, &WebRoot::Embedded] {
                let resp = get(root, &target);
                assert!(
                    [200, 400, 403, 404].contains(&resp.status),
                    "{target:?} -> {}",
                    resp.status
                );
                if resp.status == 200 && *root != WebRoot::Embedded {
                    assert!(inside.contains(&&*resp.body), "{target:?} escaped");
                }
                let mut out = Vec::new();
                resp.write_to(&mut out, false, true);
            }
        }
    }
}
