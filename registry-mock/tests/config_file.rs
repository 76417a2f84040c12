//! `registry-mock serve --config FILE`: the deploy/systemd example's keys are the flags, users
//! come from a file, and a flag on the command line overrides the file.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers outside #[test] fns.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Kills the child if the test fails before it exits.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_reads_the_example_config_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/systemd/registry-mock.toml"
    );
    let mut t: toml::Table = std::fs::read_to_string(example).unwrap().parse().unwrap();
    assert!(
        t.contains_key("users_file") && t.contains_key("listen"),
        "{t:?}"
    );
    let users = dir.path().join("users");
    std::fs::write(&users, "# logins\nu:secret\n").unwrap();
    let s = |p: &std::path::Path| toml::Value::String(p.display().to_string());
    t.insert("users_file".into(), s(&users));
    t.insert("root".into(), s(&dir.path().join("root")));
    // Port 1 would fail as non-root or be taken: the flag below must win.
    t.insert("listen".into(), "127.0.0.1:1".into());
    let conf = dir.path().join("registry.toml");
    std::fs::write(&conf, toml::to_string(&t).unwrap()).unwrap();

    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_registry-mock"))
            .arg("serve")
            .arg("--config")
            .arg(&conf)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.0.stderr.take().unwrap()).lines();
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
    std::thread::spawn(move || for _ in lines {});
    assert!(!url.ends_with(":1"), "{url}");
    let c = reqwest::blocking::Client::new();
    assert_eq!(c.get(format!("{url}/v2/")).send().unwrap().status(), 401);
    let ok = c
        .get(format!("{url}/v2/"))
        .basic_auth("u", Some("secret"))
        .send()
        .unwrap();
    assert_eq!(ok.status(), 200, "user from users_file");
    let repo = t["teleport_repos"].as_array().unwrap()[0]
        .as_str()
        .unwrap()
        .to_string();
    let attrs: serde_json::Value = c
        .get(format!("{url}/acr/v1/{repo}"))
        .basic_auth("u", Some("secret"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(attrs["changeableAttributes"]["teleportEnabled"], true);
}

#[test]
fn a_bad_config_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("r.toml");
    std::fs::write(&conf, "listen = [1, 2\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_registry-mock"))
        .args(["serve", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("r.toml"));
}
