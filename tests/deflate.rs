//! permessage-deflate (RFC 7692) over real sockets: the negotiation answers, RSV1 misuse, a
//! decompression bomb, broadcasts compressed once, and interop with clients that compress
//! (Python `websockets`, `wsloop client --deflate`).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use wsloop::deflate::{Compressor, DeflateConfig, DeflateMode, Inflater};

/// The 101's `Sec-WebSocket-Extensions` for an upgrade with these offer lines.
fn answer(server: &TestServer, offers: &[&str]) -> Option<String> {
    let mut s = server.connect();
    let lines: Vec<String> = offers
        .iter()
        .map(|o| format!("Sec-WebSocket-Extensions: {o}"))
        .collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    s.write_all(upgrade_request("/", &lines).as_bytes())
        .unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    header(&head, "Sec-WebSocket-Extensions").map(str::to_string)
}

#[test]
fn negotiation_answers_state_exactly_what_was_agreed() {
    let pmd = "permessage-deflate";
    let shared = TestServer::start(&["--deflate", "shared"]);
    let nct = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
    for (offers, expected) in [
        (vec![pmd], Some(nct.to_string())),
        // What browsers send.
        (
            vec!["permessage-deflate; client_max_window_bits"],
            Some(nct.into()),
        ),
        (
            vec!["permessage-deflate; server_max_window_bits=10"],
            Some(format!("{nct}; server_max_window_bits=10")),
        ),
        // zlib cannot make an 8-bit window: that offer is declined, the next one taken.
        (
            vec!["permessage-deflate; server_max_window_bits=8, permessage-deflate"],
            Some(nct.into()),
        ),
        // Unknown, repeated or invalid parameters decline the offer, not the handshake.
        (vec!["permessage-deflate; foo"], None),
        (
            vec!["permessage-deflate; server_no_context_takeover; server_no_context_takeover"],
            None,
        ),
        (vec!["permessage-deflate; client_max_window_bits=16"], None),
        (vec!["permessage-deflate; server_max_window_bits"], None),
        (
            vec!["x-webkit-deflate-frame", "permessage-deflate"],
            Some(nct.into()),
        ),
        (vec![], None),
    ] {
        assert_eq!(answer(&shared, &offers), expected, "{offers:?}");
    }
    let dedicated = TestServer::start(&["--deflate", "dedicated"]);
    for (offer, expected) in [
        (pmd, Some(pmd.to_string())),
        (
            "permessage-deflate; client_max_window_bits",
            Some("permessage-deflate; client_max_window_bits=13".into()),
        ),
        (
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=9",
            Some("permessage-deflate; client_no_context_takeover; server_max_window_bits=9".into()),
        ),
    ] {
        assert_eq!(answer(&dedicated, &[offer]), expected, "{offer}");
    }
    let off = TestServer::start(&["--deflate", "off"]);
    assert_eq!(answer(&off, &[pmd]), None);
}

fn cfg(window_bits: u8, level: u8) -> DeflateConfig {
    DeflateConfig {
        mode: DeflateMode::Shared,
        window_bits,
        client_window_bits: window_bits,
        level,
        mem_level: 8,
        threshold: 0,
    }
}

/// A masked frame with RSV1 set carrying `data` compressed alone.
fn compressed_frame(opcode: u8, data: &[u8], level: u8) -> Vec<u8> {
    let mut body = Vec::new();
    assert!(Compressor::new(15, false, &cfg(15, level))
        .compress(data, &mut body)
        .unwrap());
    let mut f = frame(true, opcode, &body);
    f[0] |= 0x40;
    f
}

fn ws_deflate(server: &TestServer, path: &str, offer: &str) -> std::net::TcpStream {
    let mut s = server.connect();
    let line = format!("Sec-WebSocket-Extensions: {offer}");
    s.write_all(upgrade_request(path, &[&line]).as_bytes())
        .unwrap();
    let head = read_head(&mut s);
    assert!(
        header(&head, "Sec-WebSocket-Extensions").is_some(),
        "{head}"
    );
    s
}

fn inflate(payload: &[u8], window: u8) -> Vec<u8> {
    let mut out = Vec::new();
    Inflater::new(window, false)
        .inflate(payload, true, &mut out, 1 << 30)
        .unwrap();
    out
}

#[test]
fn compressed_messages_are_echoed_compressed() {
    for mode in ["shared", "dedicated"] {
        let server = TestServer::start(&["--deflate", mode]);
        let mut s = ws_deflate(&server, "/echo", "permessage-deflate");
        let text = "{\"user\":\"ada\",\"text\":\"hello\"} ".repeat(40);
        s.write_all(&compressed_frame(1, text.as_bytes(), 6))
            .unwrap();
        let (fin, op, payload) = read_frame_rsv(&mut s);
        assert!(fin);
        assert_eq!(op, 0x40 | 1, "{mode}: RSV1 and text");
        assert!(payload.len() < text.len() / 4);
        assert_eq!(inflate(&payload, 15), text.as_bytes(), "{mode}");
        // A short message goes back uncompressed (below --deflate-threshold).
        s.write_all(&frame(true, 1, b"hi")).unwrap();
        assert_eq!(read_frame_rsv(&mut s), (true, 1, b"hi".to_vec()));
    }
}

/// Like `read_frame`, with the RSV bits kept in the opcode byte.
fn read_frame_rsv(s: &mut std::net::TcpStream) -> (bool, u8, Vec<u8>) {
    use std::io::Read;
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0; len];
    s.read_exact(&mut p).unwrap();
    (h[0] & 0x80 != 0, h[0] & 0x7f, p)
}

#[test]
fn rsv1_where_it_does_not_belong_is_1002() {
    let server = TestServer::start(&["--deflate", "shared"]);
    // Without the extension.
    let mut s = server.ws_raw("/");
    s.write_all(&compressed_frame(1, &[b'a'; 100], 6)).unwrap();
    assert_eq!(read_close_code(&mut s), Some(1002));
    // On a continuation frame.
    let mut s = ws_deflate(&server, "/", "permessage-deflate");
    let mut wire = frame(false, 1, b"plain start ");
    let mut cont = frame(true, 0, b"x");
    cont[0] |= 0x40;
    wire.extend(cont);
    s.write_all(&wire).unwrap();
    assert_eq!(read_close_code(&mut s), Some(1002));
    // On a ping.
    let mut s = ws_deflate(&server, "/", "permessage-deflate");
    let mut ping = frame(true, 9, b"");
    ping[0] |= 0x40;
    s.write_all(&ping).unwrap();
    assert_eq!(read_close_code(&mut s), Some(1002));
    // Not DEFLATE at all: 1007.
    let mut s = ws_deflate(&server, "/", "permessage-deflate");
    let mut junk = frame(true, 2, &[0xff; 40]);
    junk[0] |= 0x40;
    s.write_all(&junk).unwrap();
    assert_eq!(read_close_code(&mut s), Some(1007));
    assert!(server.wait_log("RSV1 on a control or continuation frame"));
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_bomb_is_closed_with_1009_and_costs_no_memory() {
    // 32 MiB of zeros in a ~32 KiB frame; the limit is 1 MiB.
    let bomb = compressed_frame(2, &vec![0; 32 << 20], 9);
    assert!(bomb.len() < 40 << 10, "{}", bomb.len());
    for mode in ["shared", "dedicated"] {
        let server = TestServer::start(&["--deflate", mode, "--max-message-size", "1MiB"]);
        let mut bystander = ws_deflate(&server, "/echo", "permessage-deflate");
        let before = rss_kib(server.child.id());
        for _ in 0..4 {
            let mut s = ws_deflate(&server, "/", "permessage-deflate");
            s.write_all(&bomb).unwrap();
            assert_eq!(read_close_code(&mut s), Some(1009), "{mode}");
        }
        let grew = rss_kib(server.child.id()).saturating_sub(before);
        eprintln!("{mode}: four bombs grew the server by {grew} KiB");
        assert!(grew < 8 * 1024, "{mode}: grew {grew} KiB");
        assert!(
            server.wait_log("compressed message inflates past the size limit")
                || server.wait_log("message over the size limit")
        );
        // Others are not affected.
        bystander
            .write_all(&compressed_frame(1, &[b'z'; 500], 6))
            .unwrap();
        let (_, op, p) = read_frame_rsv(&mut bystander);
        assert_eq!((op, inflate(&p, 15)), (0x41, vec![b'z'; 500]));
    }
}

#[test]
fn a_room_message_is_compressed_once_per_window_and_plain_for_others() {
    let server = TestServer::start(&["--deflate", "dedicated"]);
    let mut a = ws_deflate(&server, "/room/r", "permessage-deflate");
    let mut b = ws_deflate(&server, "/room/r", "permessage-deflate");
    let mut small = ws_deflate(
        &server,
        "/room/r",
        "permessage-deflate; server_max_window_bits=9",
    );
    let mut plain = server.ws_raw("/room/r");
    let mut sender = ws_deflate(&server, "/room/r", "permessage-deflate");
    assert!(
        server.wait_log("WebSocket open") && {
            let stats = |s: &TestServer| {
                let mut c = s.connect();
                c.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
                    .unwrap();
                String::from_utf8(read_response(&mut c).1).unwrap()
            };
            let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !stats(&server).contains("\"r\":5") && std::time::Instant::now() < end {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            stats(&server).contains("\"r\":5")
        }
    );
    let text = "{\"event\":\"price\",\"symbol\":\"ACME\",\"value\":42} ".repeat(30);
    sender
        .write_all(&compressed_frame(1, text.as_bytes(), 6))
        .unwrap();
    let fa = read_frame_rsv(&mut a);
    let fb = read_frame_rsv(&mut b);
    assert_eq!(fa.1, 0x41);
    assert_eq!(fa, fb, "one frame, compressed once, for both");
    assert_eq!(inflate(&fa.2, 13), text.as_bytes());
    let fs = read_frame_rsv(&mut small);
    assert_eq!(fs.1, 0x41);
    assert_eq!(
        inflate(&fs.2, 9),
        text.as_bytes(),
        "made with a 512-byte window"
    );
    assert_eq!(read_frame_rsv(&mut plain), (true, 1, text.into_bytes()));
}

/// Whether python3 with `websockets` is here; CI (`.ci/run`) installs it.
fn python_websockets() -> bool {
    have_tool(
        Command::new("python3").args(["-c", "import websockets"]),
        "python3 with `websockets`",
        "pip install websockets",
    )
}

const PY_CLIENT: &str = r#"
import asyncio, sys, websockets
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
url, bits = sys.argv[1], int(sys.argv[2])
async def main():
    factory = ClientPerMessageDeflateFactory(
        server_max_window_bits=bits, client_max_window_bits=bits)
    async with websockets.connect(url, extensions=[factory], compression=None,
                                  max_size=None) as ws:
        print("EXT", ws.response.headers.get("Sec-WebSocket-Extensions"))
        for n in (10, 200, 5000, 200000):
            msg = ('{"n":%d,"text":"chat message"} ' % n) * (n // 30 + 1)
            await ws.send(msg)
            assert await ws.recv() == msg, n
            await ws.send(msg.encode())
            assert await ws.recv() == msg.encode(), n
        print("OK")
asyncio.run(main())
"#;

#[test]
fn python_websockets_compresses_with_every_window_in_both_modes() {
    if !python_websockets() {
        return;
    }
    for mode in ["shared", "dedicated"] {
        let server = TestServer::start(&["--deflate", mode, "--deflate-window-bits", "15"]);
        for bits in 9..=15 {
            let out = Command::new("python3")
                .args(["-c", PY_CLIENT, &server.url("/echo"), &bits.to_string()])
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                stdout.contains("OK"),
                "{mode} {bits}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                stdout.contains(&format!("server_max_window_bits={bits}")),
                "{stdout}"
            );
        }
    }
}

#[test]
fn wsloop_client_deflate_round_trips() {
    for mode in ["shared", "dedicated"] {
        let server = TestServer::start(&["--deflate", mode]);
        let line = "{\"kind\":\"chat\",\"text\":\"the same words again\"} ".repeat(20);
        let input = format!("{line}\nshort\n{line}\n");
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsloop"))
            .args(["client", "--deflate", "-v", "--timeout", "10s"])
            .arg(server.url("/echo"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{mode}: {stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), input, "{mode}");
        assert!(
            stderr.contains("extensions: permessage-deflate"),
            "{stderr}"
        );
    }
}
