//! The `registry-mock serve` binary: starts, serves, honours --user, exits cleanly on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers outside #[test] fns.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the child if the test fails before it exits.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_binary_starts_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_registry-mock"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--user",
                "u:p",
                "--teleport-repos",
                "a,b/c",
            ])
            .arg("--root")
            .arg(dir.path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("registry-mock exited before listening")
            .unwrap();
        if let Some(i) = line.find("listening on http://") {
            let rest = &line[i + "listening on ".len()..];
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});

    let c = reqwest::blocking::Client::new();
    assert_eq!(
        c.get(format!("{url}/v2/")).send().unwrap().status(),
        401,
        "users configured: /v2/ challenges"
    );
    assert_eq!(
        c.get(format!("{url}/v2/"))
            .basic_auth("u", Some("p"))
            .send()
            .unwrap()
            .status(),
        200
    );
    let attrs: serde_json::Value = c
        .get(format!("{url}/acr/v1/b/c"))
        .basic_auth("u", Some("p"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(attrs["changeableAttributes"]["teleportEnabled"], true);

    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "registry-mock did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn bad_arguments_fail_with_a_message_and_leave_no_storage_root() {
    // Without --root, serve makes a temporary storage root: not when its flags are wrong.
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_registry-mock"))
        .args(["serve", "--listen", "127.0.0.1:0", "--bandwidth", "lots"])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid bandwidth"));
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn a_taken_port_fails_and_leaves_no_storage_root() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_registry-mock"))
        .args(["serve", "--listen"])
        .arg(taken.local_addr().unwrap().to_string())
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bind"),
        "{out:?}"
    );
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}
