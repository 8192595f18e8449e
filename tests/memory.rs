//! The idle-connection layout over real sockets (issue #10: an idle connection costs at most
//! 0.25 KiB). State a connection only needs while a message is in flight is given back by the
//! quiet-connection sweep; these tests check that it comes back whenever it is needed again,
//! even in the middle of a frame, and that what is no longer stored per connection (the
//! upgrade's path) still reaches the access log.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// Sweeps so far in which some connection was quiet (the server logs them at debug level).
fn sweeps(server: &TestServer) -> usize {
    server
        .log
        .lock()
        .unwrap()
        .matches("quiet connections gave back their spare buffers")
        .count()
}

/// Waits (bounded) until two more sweeps have found a quiet connection: at least one of them
/// ran after everything sent so far was read, with the connection quiet.
fn two_more_sweeps(server: &TestServer) {
    let want = sweeps(server) + 2;
    let end = Instant::now() + Duration::from_secs(5);
    while sweeps(server) < want {
        assert!(
            Instant::now() < end,
            "no sweep; log:\n{}",
            server.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn echoes(ws: &mut TcpStream, opcode: u8, payload: &[u8]) {
    let (fin, op, got) = read_frame(ws).unwrap();
    assert!(fin);
    assert_eq!(op, opcode);
    assert_eq!(got, payload);
}

#[test]
fn state_given_back_by_the_sweep_comes_back_mid_frame_and_between_messages() {
    let server = TestServer::start(&["--shrink-after", "50ms"]);
    let mut ws = server.ws_raw("/echo");
    ws.write_all(&frame(true, 1, b"before")).unwrap();
    echoes(&mut ws, 1, b"before");

    // Half a frame: what has arrived of it must survive a sweep.
    let big = vec![7u8; 3000];
    let f = frame(true, 2, &big);
    ws.write_all(&f[..1000]).unwrap();
    two_more_sweeps(&server);
    ws.write_all(&f[1000..]).unwrap();
    echoes(&mut ws, 2, &big);

    // Part of a header, then the rest after a sweep.
    let f = frame(true, 1, b"split header");
    ws.write_all(&f[..1]).unwrap();
    two_more_sweeps(&server);
    ws.write_all(&f[1..]).unwrap();
    echoes(&mut ws, 1, b"split header");

    // Quiet between messages: everything was given back; a fragmented message, a ping and
    // a plain one work as before.
    two_more_sweeps(&server);
    ws.write_all(&frame(false, 1, b"frag")).unwrap();
    two_more_sweeps(&server);
    ws.write_all(&frame(true, 0, b"ment")).unwrap();
    echoes(&mut ws, 1, b"fragment");
    ws.write_all(&frame(true, 9, b"p")).unwrap();
    echoes(&mut ws, 10, b"p");
    ws.write_all(&frame(true, 1, b"after")).unwrap();
    echoes(&mut ws, 1, b"after");

    ws.write_all(&frame(true, 8, &1000u16.to_be_bytes()))
        .unwrap();
    assert_eq!(read_close_code(&mut ws), Some(1000));
    assert!(server.wait_log("\"WebSocket /echo\" 1000"));
}

#[test]
fn the_access_line_names_the_path_of_each_route() {
    let server = TestServer::start(&["--access-log", "on"]);
    for path in ["/", "/echo", "/room/lobby"] {
        let mut ws = server.ws_raw(path);
        ws.write_all(&frame(true, 8, &1000u16.to_be_bytes()))
            .unwrap();
        assert_eq!(read_close_code(&mut ws), Some(1000));
        let line = format!("\"WebSocket {path}\" 1000 ");
        assert!(
            server.wait_log(&line),
            "{line} in\n{}",
            server.log.lock().unwrap()
        );
    }
    let server = TestServer::start(&["--root-room", "hall"]);
    let mut ws = server.ws_raw("/");
    ws.write_all(&frame(true, 8, &1000u16.to_be_bytes()))
        .unwrap();
    assert_eq!(read_close_code(&mut ws), Some(1000));
    assert!(server.wait_log("\"WebSocket /\" 1000 "));
}
