//! The server against `tungstenite`, a client nobody here wrote.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::*;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

fn client(
    server: &TestServer,
    path: &str,
    protocol: Option<&str>,
) -> (
    WebSocket<TcpStream>,
    tungstenite::handshake::client::Response,
) {
    let mut req = server.url(path).into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    let stream = server.connect();
    let (ws, resp) = tungstenite::client(req, stream)
        .unwrap_or_else(|e| panic!("handshake on {path} offering {protocol:?}: {e}"));
    (ws, resp)
}

#[test]
fn echoes_text_and_binary_of_every_size_on_both_paths() {
    let server = TestServer::start(&[]);
    for path in ["/", "/echo"] {
        let (mut ws, resp) = client(&server, path, None);
        assert_eq!(resp.status(), 101);
        assert!(resp.headers().get("Sec-WebSocket-Protocol").is_none());
        assert!(resp.headers().get("Sec-WebSocket-Extensions").is_none());
        for size in [0usize, 1, 125, 126, 127, 65535, 65536, 1 << 20] {
            let text: String = (0..size).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            ws.send(Message::text(text.clone())).unwrap();
            assert_eq!(
                ws.read().unwrap(),
                Message::text(text),
                "text {size} on {path}"
            );
            let bin: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
            ws.send(Message::binary(bin.clone())).unwrap();
            assert_eq!(
                ws.read().unwrap(),
                Message::binary(bin),
                "binary {size} on {path}"
            );
        }
        ws.send(Message::text("κόσμε 🎉")).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text("κόσμε 🎉"));
        ws.close(None).unwrap();
    }
}

#[test]
fn echoes_a_message_at_the_size_limit_and_refuses_one_over() {
    let server = TestServer::start(&["--max-message-size", "1000"]);
    let (mut ws, _) = client(&server, "/", None);
    ws.send(Message::binary(vec![7u8; 1000])).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(vec![7u8; 1000]));
    ws.send(Message::binary(vec![7u8; 1001])).unwrap();
    match ws.read().unwrap() {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Size),
        other => panic!("expected close 1009, got {other:?}"),
    }
}

#[test]
fn ping_gets_pong_with_the_same_payload() {
    let server = TestServer::start(&[]);
    let (mut ws, _) = client(&server, "/echo", None);
    ws.send(Message::Ping(b"are you there".to_vec())).unwrap();
    match ws.read().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"are you there"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn subprotocol_is_the_first_of_the_servers_list_the_client_offered() {
    let server = TestServer::start(&["--protocol", "chat,superchat"]);
    let (_, resp) = client(&server, "/", Some("superchat,chat"));
    assert_eq!(
        resp.headers().get("Sec-WebSocket-Protocol").unwrap(),
        "chat"
    );
    let (_, resp) = client(&server, "/", Some("superchat"));
    assert_eq!(
        resp.headers().get("Sec-WebSocket-Protocol").unwrap(),
        "superchat"
    );
    let (_, resp) = client(&server, "/", None);
    assert!(resp.headers().get("Sec-WebSocket-Protocol").is_none());
    // No match: the upgrade still succeeds, without the header (tungstenite would refuse
    // that answer itself, so this one is checked on raw bytes).
    use std::io::Write;
    let mut s = server.connect();
    let req = upgrade_request("/", &["Sec-WebSocket-Protocol: mqtt, wamp"]);
    s.write_all(req.as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert_eq!(status(&head), 101);
    assert_eq!(header(&head, "Sec-WebSocket-Protocol"), None);
    // Offers split over two header lines count as one list (RFC 9110 §5.3).
    let mut s = server.connect();
    let req = upgrade_request(
        "/",
        &[
            "Sec-WebSocket-Protocol: mqtt",
            "Sec-WebSocket-Protocol: superchat",
        ],
    );
    s.write_all(req.as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert_eq!(header(&head, "Sec-WebSocket-Protocol"), Some("superchat"));
}

#[test]
fn close_code_and_reason_are_echoed_and_the_server_closes_tcp() {
    let server = TestServer::start(&[]);
    let (mut ws, _) = client(&server, "/", None);
    ws.close(Some(CloseFrame {
        code: CloseCode::Library(4000),
        reason: "done here".into(),
    }))
    .unwrap();
    match ws.read() {
        Ok(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::Library(4000)),
        other => panic!("expected the close echo, got {other:?}"),
    }
    // tungstenite reports the end of the connection once the server has closed TCP.
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    match ws.read() {
        Err(tungstenite::Error::ConnectionClosed) => {}
        other => panic!("expected the connection to end, got {other:?}"),
    }
}

#[test]
fn many_clients_at_once_each_get_their_own_echo() {
    let server = TestServer::start(&[]);
    let mut clients: Vec<_> = (0..50).map(|_| client(&server, "/", None).0).collect();
    for (i, ws) in clients.iter_mut().enumerate() {
        ws.send(Message::text(format!("client {i}"))).unwrap();
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_eq!(ws.read().unwrap(), Message::text(format!("client {i}")));
    }
}

#[test]
fn ipv6_loopback_works() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback on this machine; skipped");
        return;
    }
    let server = TestServer::start(&["--bind", "::1"]);
    assert!(server.addr.is_ipv6());
    let (mut ws, _) = client(&server, "/", None);
    ws.send(Message::text("over v6")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("over v6"));
}
