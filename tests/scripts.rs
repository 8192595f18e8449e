//! Runs every example script in scripts/ against this build; each must exit 0. One test per
//! script so that a failure names it.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longer than any script's own bounds (each wait in them is bounded by `timeout`).
const LIMIT: Duration = Duration::from_secs(120);

fn run_script(name: &str) {
    let root = env!("CARGO_MANIFEST_DIR");
    let path = format!("{root}/scripts/{name}");
    let mut child = Command::new("bash")
        .arg(&path)
        .current_dir(root)
        .env("WSLOOP", env!("CARGO_BIN_EXE_wsloop"))
        .env_remove("WSLOOP_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a script over time is stopped with all it started.
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {path}: {e}"));
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the script") {
            break Some(status);
        }
        if Instant::now() >= end {
            // SIGTERM to the group lets the script's trap stop its server; then make sure.
            let pgid = child.id() as i32;
            unsafe { libc::kill(-pgid, libc::SIGTERM) };
            std::thread::sleep(Duration::from_millis(500));
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("scripts/{name} failed ({s})\n--- stdout:\n{out}\n--- stderr:\n{err}"),
        None => panic!(
            "scripts/{name} ran over {}s\n--- stdout:\n{out}\n--- stderr:\n{err}",
            LIMIT.as_secs()
        ),
    }
}

#[test]
fn every_script_has_a_test() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts");
    let tested = [
        "echo.sh",
        "chat.sh",
        "publish.sh",
        "push.sh",
        "counter.sh",
        "load.sh",
        "config-example.sh",
    ];
    let skipped = [
        "lib.sh",
        "autobahn.sh",
        "fuzz.sh",
        "bench-keepalive.sh",
        "bench-workers.sh",
        "bench-cluster.sh",
    ];
    for entry in std::fs::read_dir(dir).expect("scripts/") {
        let name = entry.expect("a dir entry").file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".sh") && !skipped.contains(&name.as_ref()) {
            assert!(
                tested.contains(&name.as_ref()),
                "scripts/{name} has no test in tests/scripts.rs"
            );
        }
    }
}

#[test]
fn echo() {
    run_script("echo.sh");
}

#[test]
fn chat() {
    run_script("chat.sh");
}

#[test]
fn publish() {
    run_script("publish.sh");
}

#[test]
fn push() {
    run_script("push.sh");
}

#[test]
fn counter() {
    run_script("counter.sh");
}

#[test]
fn load() {
    run_script("load.sh");
}

#[test]
fn config_example() {
    run_script("config-example.sh");
}
