//! Running as a service: `/healthz` through shutdown.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn get(s: &mut TcpStream, path: &str) -> (String, String) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let (head, body) = read_response(s);
    (head, String::from_utf8_lossy(&body).into_owned())
}

/// SIGTERM by the PID this test started.
fn sigterm(server: &TestServer) {
    let pid = server.child.id() as i32;
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

fn wait_exit(server: &mut TestServer, within: Duration) {
    let end = Instant::now() + within;
    while server.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "the server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn healthz_turns_503_when_shutdown_begins_on_keep_alive_and_new_connections() {
    let mut server = TestServer::start(&["--close-timeout", "3s"]);
    let mut keep = server.connect();
    let (head, body) = get(&mut keep, "/healthz");
    assert_eq!((status(&head), body.as_str()), (200, "ok\n"), "{head}");
    assert_eq!(header(&head, "Connection"), Some("keep-alive"));
    // A WebSocket that does not answer the close keeps the drain going for --close-timeout.
    let mut ws = server.ws_raw("/echo");
    sigterm(&server);
    assert_eq!(read_close_code(&mut ws), Some(1001));
    // The keep-alive connection is answered, and closed after the answer.
    let (head, body) = get(&mut keep, "/healthz");
    assert_eq!((status(&head), body.as_str()), (503, "shutting down\n"));
    assert_eq!(header(&head, "Connection"), Some("close"));
    assert!(closed_by_server(&mut keep));
    // A new connection (the usual health check) gets 503 too, not a hang.
    let mut fresh = server.connect();
    fresh
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(status(&read_head(&mut fresh)), 503);
    wait_exit(&mut server, Duration::from_secs(10));
    assert!(server.wait_log("stopped"));
}

#[test]
fn shutdown_delay_keeps_serving_with_healthz_503_then_closes() {
    let mut server = TestServer::start(&["--shutdown-delay", "1500ms"]);
    let mut ws = server.ws_raw("/echo");
    sigterm(&server);
    assert!(server.wait_log("shutting down in"));
    let t0 = Instant::now();
    // During the delay: health is 503, everything else still served, new clients too.
    let mut fresh = server.connect();
    let (head, _) = get(&mut fresh, "/healthz");
    assert_eq!(status(&head), 503, "{head}");
    let (head, _) = get(&mut fresh, "/stats");
    assert_eq!(status(&head), 200, "{head}");
    ws.write_all(&frame(true, 1, b"still here")).unwrap();
    assert_eq!(read_frame(&mut ws).unwrap().2, b"still here");
    let mut late = server.ws_raw("/echo");
    // Then the close: 1001 for every WebSocket, after the delay.
    assert_eq!(read_close_code(&mut ws), Some(1001));
    assert_eq!(read_close_code(&mut late), Some(1001));
    assert!(
        t0.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        t0.elapsed()
    );
    for s in [&mut ws, &mut late] {
        s.write_all(&frame(true, 8, &1001u16.to_be_bytes()))
            .unwrap();
    }
    wait_exit(&mut server, Duration::from_secs(10));
}

/// A file in a scratch folder of this test process.
fn scratch_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wsloop-service-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn wsloop(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_wsloop"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn a_config_file_sets_flags_and_the_command_line_wins() {
    let path = scratch_file(
        "run.toml",
        "# a service's settings\nroom-echo = true\nmax_message_size = \"1KiB\"\n\
         publish-token = \"sekrit\"\n",
    );
    let path = path.to_str().unwrap();
    let server = TestServer::start(&["--config", path, "--max-message-size", "2KiB"]);
    // room-echo from the file: the sender gets its own message back.
    let mut a = server.ws_raw("/room/cfg");
    let payload = vec![b'x'; 1536];
    a.write_all(&frame(true, 2, &payload)).unwrap();
    assert_eq!(
        read_frame(&mut a).unwrap().2,
        payload,
        "echoed: 2KiB won over 1KiB"
    );
    a.write_all(&frame(true, 2, &vec![b'y'; 3000])).unwrap();
    assert_eq!(read_close_code(&mut a), Some(1009));
    // publish-token from the file.
    let mut s = server.connect();
    s.write_all(b"POST /publish/cfg HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz")
        .unwrap();
    assert_eq!(status(&read_head(&mut s)), 401);
}

#[test]
fn a_bad_key_or_value_in_the_config_file_is_an_error_naming_both() {
    for (text, key) in [
        ("max-mesage-size = \"1KiB\"\n", "max-mesage-size"),
        ("ping-interval = \"soon\"\n", "ping-interval"),
    ] {
        let path = scratch_file("bad.toml", text);
        let path = path.to_str().unwrap();
        let out = wsloop(&["--config", path, "--port", "0"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(path) && err.contains(&format!("key `{key}`")),
            "{err}"
        );
    }
}

#[test]
fn print_config_shows_the_effective_settings_with_secrets_masked() {
    let path = scratch_file("print.toml", "publish-token = \"sekrit\"\nport = 9555\n");
    let out = wsloop(&[
        "--config",
        path.to_str().unwrap(),
        "--print-config",
        "--room-echo",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let table: toml::Table = text.parse().expect("TOML");
    assert_eq!(table["port"].as_integer(), Some(9555));
    assert_eq!(table["room-echo"].as_bool(), Some(true));
    assert_eq!(table["max-message-size"].as_str(), Some("16MiB"));
    assert_eq!(table["publish-token"].as_str(), Some("********"));
    assert!(!text.contains("sekrit"));
}

/// Every stderr line so far, parsed as JSON (each must be).
fn json_lines(server: &TestServer) -> Vec<serde_json::Value> {
    let log = server.log.lock().unwrap().clone();
    log.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn json_logs_parse_back_with_access_lines_for_requests_and_sessions() {
    let server = TestServer::start(&["--log-format", "json"]);
    let mut s = server.connect();
    get(&mut s, "/healthz?probe=\"1\"");
    let mut ws = server.ws_raw("/echo");
    ws.write_all(&frame(true, 1, b"hi")).unwrap();
    read_frame(&mut ws).unwrap();
    ws.write_all(&frame(true, 8, &1000u16.to_be_bytes()))
        .unwrap();
    assert_eq!(read_close_code(&mut ws), Some(1000));
    assert!(server.wait_log("\"close_code\":1000"));
    let lines = json_lines(&server);
    for l in &lines {
        for field in ["time", "level", "target", "message"] {
            assert!(l[field].is_string(), "{field} in {l}");
        }
    }
    let http = lines
        .iter()
        .find(|l| l["target"] == "wsloop::access" && l["status"] == 200)
        .expect("an access line for the request");
    assert_eq!(http["path"], "/healthz?probe=\"1\"");
    assert_eq!(http["method"], "GET");
    assert!(http["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(http["bytes_in"].as_u64().unwrap() > 20);
    assert!(http["bytes_out"].as_u64().unwrap() > 20);
    assert!(http["duration_ms"].is_u64());
    let session = lines
        .iter()
        .find(|l| l["target"] == "wsloop::access" && l["websocket"] == true)
        .expect("an access line for the session");
    assert_eq!(session["path"], "/echo");
    assert_eq!(session["close_code"], 1000);
    assert!(session["bytes_in"].as_u64().unwrap() > 150);
    // Other lines have their peer split off into its own field.
    assert!(lines
        .iter()
        .any(|l| l["target"] != "wsloop::access" && l["peer"].is_string()));
}

#[test]
fn access_log_off_leaves_requests_unlogged() {
    let server = TestServer::start(&["--access-log", "off"]);
    let mut s = server.connect();
    get(&mut s, "/healthz");
    // The debug line of the same request shows it was served.
    assert!(server.wait_log("GET /healthz -> 200"));
    assert!(!server.log.lock().unwrap().contains("wsloop::access"));
    let on = TestServer::start(&[]);
    get(&mut on.connect(), "/healthz");
    assert!(on.wait_log("\"GET /healthz\" 200"));
}

#[test]
fn stats_lists_the_top_rooms_largest_first_and_keeps_its_keys() {
    let server = TestServer::start(&[]);
    let mut members = Vec::new();
    for (room, n) in [("small", 1), ("big", 3), ("mid", 2)] {
        for _ in 0..n {
            members.push(server.ws_raw(&format!("/room/{room}")));
        }
    }
    let mut s = server.connect();
    let (_, body) = get(&mut s, "/stats");
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        stats["top_rooms"],
        serde_json::json!([["big", 3], ["mid", 2], ["small", 1]])
    );
    assert_eq!(stats["room_count"], 3);
    assert_eq!(stats["rooms"]["mid"], 2);
    for key in [
        "connections",
        "websockets",
        "http",
        "closing",
        "messages_in",
        "bytes_out",
        "refused",
        "refused_total",
    ] {
        assert!(!stats[key].is_null(), "{key} in {body}");
    }
}
