//! `--room-exec NAME=PATH`: one program per room, over real sockets and real processes.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Says who it is, then answers each line: `pid` with its PID, `quit N` by exiting with N,
/// anything else with the prefix given as its first argument.
const PROGRAM: &str = r#"echo "started $WSLOOP_ROOM $$"
while IFS= read -r line; do
  case "$line" in
    pid) echo "pid $$" ;;
    quit*) exit "${line#quit }" ;;
    *) echo "$1$line" ;;
  esac
done"#;

fn script(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wsloop-room-exec-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn send(s: &mut TcpStream, text: &str) {
    s.write_all(&frame(true, 1, text.as_bytes())).unwrap();
}

/// The next text message.
fn text(s: &mut TcpStream) -> String {
    let (fin, op, p) = read_frame(s).expect("a message");
    assert!(fin && op == 1, "a whole text message, got opcode {op}");
    String::from_utf8(p).unwrap()
}

/// A member's first message is the program's greeting; returns the program's PID.
fn greeting(s: &mut TcpStream, room: &str) -> u32 {
    let line = text(s);
    let pid = line
        .strip_prefix(&format!("started {room} "))
        .unwrap_or_else(|| panic!("a greeting from the {room} program, got {line:?}"));
    pid.parse().unwrap()
}

fn pid_of(s: &mut TcpStream) -> u32 {
    send(s, "pid");
    let line = text(s);
    line.strip_prefix("pid ")
        .unwrap_or_else(|| panic!("a pid answer, got {line:?}"))
        .parse()
        .unwrap()
}

fn leave(mut s: TcpStream) {
    s.write_all(&frame(true, 8, &1000u16.to_be_bytes()))
        .unwrap();
    assert_eq!(read_close_code(&mut s), Some(1000));
}

fn server(extra: &[&str]) -> TestServer {
    let program = script("program.sh", PROGRAM);
    let spec = format!("chat={}", program.display());
    let mut args = vec!["--room-exec", &spec, "--room-exec-arg", "chat=got:"];
    args.extend_from_slice(extra);
    TestServer::start(&args)
}

#[test]
fn two_members_see_each_line_once_and_their_messages_reach_stdin() {
    let server = server(&[]);
    let mut a = server.ws_raw("/room/chat");
    let pid = greeting(&mut a, "chat");
    let mut b = server.ws_raw("/room/chat");
    // A second member does not start a second program.
    assert_eq!(pid_of(&mut b), pid);
    assert_eq!(text(&mut a), "pid");
    assert_eq!(text(&mut a), format!("pid {pid}"));
    send(&mut a, "hello");
    // B hears A directly (the room), then the program's answer; A only the answer.
    assert_eq!(text(&mut b), "hello");
    assert_eq!(text(&mut b), "got:hello");
    assert_eq!(text(&mut a), "got:hello");
    send(&mut b, "again");
    assert_eq!(text(&mut a), "again");
    // Each line came once: the next thing each sees is the answer to the second message.
    assert_eq!(text(&mut a), "got:again");
    assert_eq!(text(&mut b), "got:again");
    assert_eq!(children_of(server.child.id()), vec![pid]);
}

#[test]
fn the_program_ends_a_grace_period_after_the_last_member_leaves() {
    let server = server(&["--room-exec-grace", "300ms", "--exec-grace", "200ms"]);
    let mut a = server.ws_raw("/room/chat");
    let pid = greeting(&mut a, "chat");
    let b = server.ws_raw("/room/chat");
    leave(a);
    // One member is left: the program stays.
    assert!(
        !gone_within(pid, Duration::from_millis(600)),
        "pid {pid} ended early"
    );
    leave(b);
    assert!(server.wait_log(&format!("program pid {pid} ends in")));
    assert!(
        gone_within(pid, Duration::from_secs(5)),
        "pid {pid} still there"
    );
    assert!(server.wait_log(&format!("program pid {pid}: stdin closed")));
    // The next member starts a new one.
    let mut c = server.ws_raw("/room/chat");
    let again = greeting(&mut c, "chat");
    assert_ne!(again, pid);
}

#[test]
fn a_member_joining_within_the_grace_period_keeps_the_same_program() {
    let server = server(&["--room-exec-grace", "30s"]);
    let mut a = server.ws_raw("/room/chat");
    let pid = greeting(&mut a, "chat");
    leave(a);
    assert!(server.wait_log(&format!("program pid {pid} ends in")));
    let mut b = server.ws_raw("/room/chat");
    assert!(server.wait_log(&format!("a member is back, program pid {pid} kept")));
    assert_eq!(pid_of(&mut b), pid);
    send(&mut b, "still here");
    assert_eq!(text(&mut b), "got:still here");
}

#[test]
fn a_rooms_program_hears_and_speaks_to_its_own_room_only() {
    let program = script("program.sh", PROGRAM);
    let chat = format!("chat={}", program.display());
    let news = format!("news={}", program.display());
    let server = TestServer::start(&[
        "--room-exec",
        &chat,
        "--room-exec",
        &news,
        "--room-exec-arg",
        "chat=chat:",
        "--room-exec-arg",
        "news=news:",
    ]);
    let mut c = server.ws_raw("/room/chat");
    let chat_pid = greeting(&mut c, "chat");
    let mut n = server.ws_raw("/room/news");
    let news_pid = greeting(&mut n, "news");
    assert_ne!(chat_pid, news_pid);
    // A room without a program: its members hear no program and feed none.
    let mut plain = server.ws_raw("/room/plain");
    send(&mut plain, "secret");
    send(&mut n, "headline");
    send(&mut c, "hi");
    assert_eq!(text(&mut c), "chat:hi");
    assert_eq!(text(&mut n), "news:headline");
    send(&mut plain, "ping");
    send(&mut c, "pid");
    assert_eq!(text(&mut c), format!("pid {chat_pid}"));
    plain
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        read_frame(&mut plain).is_err(),
        "the plain room heard a program"
    );
}

#[test]
fn a_program_exiting_closes_its_members_1011_and_the_next_member_starts_another() {
    let server = server(&[]);
    let mut a = server.ws_raw("/room/chat");
    let pid = greeting(&mut a, "chat");
    let mut b = server.ws_raw("/room/chat");
    send(&mut a, "quit 3");
    assert_eq!(read_close_code(&mut a), Some(1011));
    assert_eq!(read_close_code(&mut b), Some(1011));
    assert!(gone_within(pid, Duration::from_secs(5)));
    let mut c = server.ws_raw("/room/chat");
    assert_ne!(greeting(&mut c, "chat"), pid);
    // A zero exit status closes with 1000.
    send(&mut c, "quit 0");
    assert_eq!(read_close_code(&mut c), Some(1000));
}

/// `yes` floods the room: with its only member not reading, stdout is left unread (the
/// program blocks), not buffered; it is read again once the member catches up.
#[test]
fn a_program_that_outpaces_every_member_is_held() {
    let server = TestServer::start(&[
        "--max-backlog",
        "256KiB",
        "--room-exec",
        "flood=/usr/bin/yes",
    ]);
    let mut s = server.ws_raw("/room/flood");
    assert!(server.wait_log("stdout paused"), "reading yes paused");
    let mut read = 0;
    while !server
        .log
        .lock()
        .unwrap()
        .contains("program stdout resumed")
    {
        let (_, op, p) = read_frame(&mut s).unwrap();
        assert_eq!((op, p.as_slice()), (1, &b"y"[..]));
        read += 1;
        assert!(read < 10_000_000, "never resumed");
    }
    assert!(!server.log.lock().unwrap().contains("slow consumer"));
}

/// A program that never reads stdin: members are paused once its stdin backlog is over the
/// limit, instead of the server buffering their messages without end.
#[test]
fn members_are_paused_while_the_program_does_not_take_its_input() {
    let sleeper = script("sleeper.sh", "exec sleep 5");
    let spec = format!("quiet={}", sleeper.display());
    let server = TestServer::start(&["--max-backlog", "256KiB", "--room-exec", &spec]);
    let mut s = server.ws_raw("/room/quiet");
    s.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let chunk = frame(true, 1, &[b'x'; 16 * 1024]);
    // The pipe (64 KiB) and the backlog (256 KiB) fill; then TCP pushes back on us.
    for _ in 0..4096 {
        if s.write_all(&chunk).is_err() {
            break;
        }
        if server
            .log
            .lock()
            .unwrap()
            .contains("for its room's program, reading paused")
        {
            break;
        }
    }
    assert!(server.wait_log("for its room's program, reading paused"));
}

#[test]
fn bad_room_exec_flags_fail_at_start() {
    for args in [
        &["--room-exec", "bad/name=/bin/cat"][..],
        &["--room-exec", "chat="],
        &[
            "--room-exec",
            "chat=/bin/cat",
            "--room-exec",
            "chat=/bin/cat",
        ],
        &["--room-exec-arg", "chat=x"],
        &["--room-exec", "chat=/nonexistent/program"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_wsloop"))
            .args(["--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("room-exec"), "{args:?}: {err}");
    }
}

/// A stop signal: the members get their 1001, the server exits, and no room program is left.
#[test]
fn no_room_program_outlives_the_server() {
    let mut server = server(&["--room-exec-grace", "30s"]);
    let mut a = server.ws_raw("/room/chat");
    let pid = greeting(&mut a, "chat");
    // SIGTERM by the PID we started.
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    assert_eq!(read_close_code(&mut a), Some(1001));
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while server.child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < end, "the server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        gone_within(pid, Duration::from_secs(2)),
        "pid {pid} left behind"
    );
}

// --- `--workers N`: one program per room, on its owner worker ---

fn stats(server: &TestServer) -> serde_json::Value {
    let (status, _, body) = exchange(
        server,
        "GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Per worker: `key` as a number.
fn per_worker(s: &serde_json::Value, key: &str) -> Vec<u64> {
    s["workers"]
        .as_array()
        .expect("a workers list")
        .iter()
        .map(|w| w[key].as_u64().unwrap())
        .collect()
}

/// Polls `/stats` (other workers' figures are up to 50 ms old) until `ok` holds; the last
/// answer either way.
fn stats_until(
    server: &TestServer,
    limit: Duration,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let end = std::time::Instant::now() + limit;
    loop {
        let s = stats(server);
        if ok(&s) || std::time::Instant::now() >= end {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens `n` members of `path` one by one (more, up to 64, until every worker has some),
/// learning from `/stats` which worker each landed on.
fn members_by_worker(server: &TestServer, path: &str, n: usize) -> Vec<(TcpStream, usize)> {
    let mut before = per_worker(&stats(server), "websockets");
    let mut members = Vec::new();
    while members.len() < n || before.contains(&0) {
        assert!(
            members.len() < 64,
            "64 members and still a worker without any"
        );
        let s = server.ws_raw(path);
        let total = members.len() as u64 + 1;
        let now = per_worker(
            &stats_until(server, Duration::from_secs(5), |s| {
                per_worker(s, "websockets").iter().sum::<u64>() == total
            }),
            "websockets",
        );
        let worker = (0..now.len())
            .find(|&i| now[i] == before[i] + 1)
            .expect("one worker's count went up by one");
        members.push((s, worker));
        before = now;
    }
    members
}

/// Per worker, the room programs (and other children) it runs, once every one of the
/// `workers` knows that all the others have members of the room.
fn programs_per_worker(server: &TestServer, members: usize, workers: u64) -> Vec<u64> {
    let s = stats_until(server, Duration::from_secs(10), |s| {
        per_worker(s, "websockets").iter().sum::<u64>() == members as u64
            && per_worker(s, "room_replicas")
                .iter()
                .all(|&r| r == workers - 1)
            && per_worker(s, "children").iter().sum::<u64>() == 1
    });
    assert_eq!(
        per_worker(&s, "room_replicas"),
        vec![workers - 1; workers as usize],
        "{s}"
    );
    per_worker(&s, "children")
}

#[test]
fn one_program_serves_a_room_spanning_four_workers_and_ends_after_the_last_member_anywhere() {
    let server = server(&[
        "--workers",
        "4",
        "--room-exec-grace",
        "300ms",
        "--exec-grace",
        "200ms",
    ]);
    let mut members = members_by_worker(&server, "/room/chat", 40);
    let n = members.len();
    let programs = programs_per_worker(&server, n, 4);
    assert_eq!(
        programs.iter().filter(|&&c| c == 1).count(),
        1,
        "{programs:?}"
    );
    let owner = programs.iter().position(|&c| c == 1).unwrap();
    let kids = children_of(server.child.id());
    assert_eq!(kids.len(), 1, "one program process, got {kids:?}");
    let pid = kids[0];

    for (i, (m, _)) in members.iter_mut().enumerate() {
        send(m, &format!("m{i}"));
    }
    for (i, (m, worker)) in members.iter_mut().enumerate() {
        m.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut heard = vec![0u32; n];
        let mut answers = vec![0u32; n];
        let mut greetings = 0;
        // Every other member's message (no --room-echo), and every member's answer.
        while heard.iter().sum::<u32>() < n as u32 - 1 || answers.iter().sum::<u32>() < n as u32 {
            let line = text(m);
            if let Some(j) = line.strip_prefix("got:m") {
                let j: usize = j.parse().unwrap();
                answers[j] += 1;
                assert_eq!(
                    answers[j], 1,
                    "member {i} (worker {worker}): {line:?} twice"
                );
            } else if let Some(j) = line.strip_prefix('m') {
                let j: usize = j.parse().unwrap();
                assert_ne!(j, i, "member {i} heard itself");
                heard[j] += 1;
                assert_eq!(heard[j], 1, "member {i}: {line:?} twice");
            } else {
                // Members that joined before the program started saw its greeting.
                assert_eq!(line, format!("started chat {pid}"), "member {i}");
                greetings += 1;
                assert_eq!(greetings, 1, "member {i}: two greetings");
            }
        }
    }
    // Nothing more came for anyone: the next thing each member sees is the answer to a
    // marker (and, on other members, the marker itself).
    send(&mut members[0].0, "pid");
    for (i, (m, _)) in members.iter_mut().enumerate() {
        let mut got = vec![text(m)];
        if i > 0 {
            got.push(text(m));
            got.sort();
        }
        let want: Vec<String> = if i > 0 {
            vec!["pid".into(), format!("pid {pid}")]
        } else {
            vec![format!("pid {pid}")]
        };
        assert_eq!(got, want, "member {i}");
    }
    assert_eq!(stats(&server)["inbox_dropped"], 0);

    // The owner's members leave: the others keep the program, and their input still reaches it.
    let (here, mut elsewhere): (Vec<_>, Vec<_>) =
        members.into_iter().partition(|(_, w)| *w == owner);
    for (m, _) in here {
        leave(m);
    }
    assert!(
        !gone_within(pid, Duration::from_millis(900)),
        "pid {pid} ended while members on other workers remain"
    );
    let (last, _) = elsewhere.pop().unwrap();
    for (m, _) in elsewhere {
        leave(m);
    }
    let mut last = last;
    send(&mut last, "still here");
    assert_eq!(text(&mut last), "got:still here");
    assert_eq!(children_of(server.child.id()), vec![pid]);
    // The last member anywhere leaves: the grace period, then the program ends.
    leave(last);
    assert!(server.wait_log(&format!("program pid {pid} ends in")));
    assert!(
        gone_within(pid, Duration::from_secs(5)),
        "pid {pid} still there"
    );
    assert!(children_of(server.child.id()).is_empty());
}

#[test]
fn a_program_exiting_closes_its_members_on_every_worker() {
    let server = server(&["--workers", "4"]);
    let mut members = members_by_worker(&server, "/room/chat", 8);
    let n = members.len();
    programs_per_worker(&server, n, 4);
    let pid = children_of(server.child.id())[0];
    send(&mut members[0].0, "quit 3");
    for (i, (m, worker)) in members.iter_mut().enumerate() {
        assert_eq!(
            read_close_code(m),
            Some(1011),
            "member {i} on worker {worker}"
        );
    }
    assert!(gone_within(pid, Duration::from_secs(5)));
    // A new member on any worker gets a new program, even while the old members close.
    let mut again = server.ws_raw("/room/chat");
    let new = loop {
        send(&mut again, "pid");
        again
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let line = text(&mut again);
        if let Some(p) = line.strip_prefix("pid ") {
            break p.parse::<u32>().unwrap();
        }
    };
    assert_ne!(new, pid);
    assert_eq!(children_of(server.child.id()), vec![new]);
}

/// The program cannot start (removed after the server started): an upgrade on its owner is
/// refused with 500 as with one worker; one on another worker, accepted before the owner
/// tried, is closed with 1011.
#[test]
fn a_program_the_owner_cannot_start_closes_members_on_other_workers_1011() {
    let doomed = script("doomed.sh", "exec cat");
    let spec = format!("gone={}", doomed.display());
    let server = TestServer::start(&["--workers", "4", "--room-exec", &spec]);
    // Every worker checks the path as it starts: removed once all are up.
    for i in 1..4 {
        assert!(server.wait_log(&format!("worker {i}: listening on")));
    }
    std::fs::remove_file(&doomed).unwrap();
    let (mut refused, mut closed) = (0, 0);
    for _ in 0..64 {
        let mut s = server.connect();
        s.write_all(upgrade_request("/room/gone", &[]).as_bytes())
            .unwrap();
        let head = read_head(&mut s);
        match status(&head) {
            500 => refused += 1,
            101 => {
                assert_eq!(read_close_code(&mut s), Some(1011));
                closed += 1;
            }
            other => panic!(
                "unexpected answer {other}: {head}\n{}",
                server.log.lock().unwrap()
            ),
        }
        if refused > 0 && closed > 0 {
            break;
        }
    }
    assert!(
        refused > 0 && closed > 0,
        "{refused} refused, {closed} closed"
    );
    assert!(server.wait_log("room gone: room program cannot start; closing its members"));
    assert!(children_of(server.child.id()).is_empty());
}

/// A program that never reads stdin, fed by a member on another worker (which cannot be
/// paused from the owner): the owner drops lines beyond `--max-backlog` and counts them;
/// the member carries on.
#[test]
fn lines_from_other_workers_for_a_program_that_does_not_read_are_dropped_and_counted() {
    let sleeper = script("sleeper.sh", "exec sleep 10");
    let spec = format!("quiet={}", sleeper.display());
    let server = TestServer::start(&[
        "--workers",
        "2",
        "--max-backlog",
        "64KiB",
        "--room-exec",
        &spec,
    ]);
    let mut members = members_by_worker(&server, "/room/quiet", 2);
    let n = members.len();
    let programs = programs_per_worker(&server, n, 2);
    let owner = programs.iter().position(|&c| c == 1).unwrap();
    let pid = children_of(server.child.id())[0];
    let (s, _) = members.iter_mut().find(|(_, w)| *w != owner).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    // 2 MiB against a 64 KiB pipe and a 64 KiB backlog.
    let chunk = frame(true, 1, &[b'x'; 16 * 1024]);
    for _ in 0..128 {
        s.write_all(&chunk).unwrap();
    }
    assert!(server.wait_log("program stdin over the limit, a line from another worker dropped"));
    let st = stats_until(&server, Duration::from_secs(2), |st| {
        st["inbox_dropped"].as_u64().unwrap() > 0
    });
    assert!(st["inbox_dropped"].as_u64().unwrap() > 0, "{st}");
    // The sender is still served: a ping gets its pong.
    s.write_all(&frame(true, 9, b"still")).unwrap();
    loop {
        let (_, op, p) = read_frame(s).expect("a pong");
        if op == 10 {
            assert_eq!(p, b"still");
            break;
        }
    }
    assert_eq!(children_of(server.child.id()), vec![pid]);
}

/// A program that writes as fast as it can, to members on four workers with small inboxes:
/// the owner reads no faster than the other workers' inboxes take the lines, so every member
/// gets every line, in order, and nothing is dropped.
#[test]
fn a_fast_program_is_paced_by_the_other_workers_inboxes_and_no_line_is_lost() {
    const LINES: usize = 5000;
    let server = TestServer::start(&[
        "--workers",
        "4",
        "--worker-inbox",
        "64",
        "--room-exec",
        "fast=/bin/sh",
        "--room-exec-arg",
        "fast=-c",
        "--room-exec-arg",
        &format!("fast=read go; seq 1 {LINES}; exec cat"),
    ]);
    let mut members = members_by_worker(&server, "/room/fast", 8);
    let n = members.len();
    programs_per_worker(&server, n, 4);
    send(&mut members[0].0, "go");
    for (i, (m, worker)) in members.iter_mut().enumerate() {
        m.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut next = 1;
        while next <= LINES {
            let line = text(m);
            if line == "go" {
                continue;
            }
            assert_eq!(
                line,
                next.to_string(),
                "member {i} on worker {worker}: a line lost or out of order"
            );
            next += 1;
        }
    }
    assert_eq!(stats(&server)["inbox_dropped"], 0);
}
