//! teleportd as the systemd unit in deploy/systemd/ runs it: the unit's ExecStart line with the
//! example TOML (paths moved to a temp dir, the registry a local one), a password from a file,
//! the login checked at start (a wrong one is an ERROR and `teleportd_auth_failures_total`), and
//! flags overriding the file. Needs root and FUSE (teleportd's fuse manager).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers outside #[test] fns.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use testkit::{ManagerGuard, Teleportd, TestDir};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/systemd");

/// `ExecStart=` of a unit file, split into words (the units use no quoting).
fn exec_start(unit: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("unit has ExecStart=");
    line.split_whitespace().map(String::from).collect()
}

fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

fn metrics(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// The example TOML with node paths under `dir`, the registry at `registry`, and `password`
/// in a file.
fn adapted_config(dir: &Path, registry: &str, password: &str, metrics_addr: &str) -> PathBuf {
    let text = std::fs::read_to_string(Path::new(DEPLOY).join("teleportd.toml")).unwrap();
    let mut t: toml::Table = text.parse().unwrap();
    for key in [
        "root",
        "address",
        "cache_dir",
        "registry",
        "password_file",
        "user",
    ] {
        assert!(t.contains_key(key), "example teleportd.toml lacks {key}");
    }
    let pw = dir.join("password");
    std::fs::write(&pw, format!("{password}\n")).unwrap();
    let path = |p: PathBuf| toml::Value::String(p.display().to_string());
    t.insert("root".into(), path(dir.join("root")));
    t.insert("address".into(), path(dir.join("t.sock")));
    t.insert("cache_dir".into(), path(dir.join("cache")));
    t.insert("registry".into(), registry.into());
    t.insert("insecure_registry".into(), true.into());
    t.insert("password_file".into(), path(pw));
    t.insert("metrics_addr".into(), metrics_addr.into());
    let f = dir.join("teleportd.toml");
    std::fs::write(&f, toml::to_string(&t).unwrap()).unwrap();
    f
}

/// The unit's command line with the binary and config path replaced.
fn unit_command(config: &Path, extra: &[&str]) -> Command {
    let unit = std::fs::read_to_string(Path::new(DEPLOY).join("teleportd.service")).unwrap();
    assert!(
        unit.lines().any(|l| l.trim() == "KillMode=process"),
        "the fuse manager must outlive a restart: KillMode=process"
    );
    let argv = exec_start(&unit);
    assert_eq!(argv[0], "/usr/local/bin/teleportd", "{argv:?}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_teleportd"));
    let mut it = argv[1..].iter();
    while let Some(a) = it.next() {
        if a == "--config" {
            it.next();
            cmd.arg("--config").arg(config);
        } else {
            cmd.arg(a);
        }
    }
    cmd.args(extra);
    cmd
}

#[test]
fn unit_runs_teleportd_from_the_example_toml_and_checks_the_login() {
    if !testkit::prerequisites() {
        return;
    }
    let t = TestDir::new();
    let dir = t.path();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cfg = registry_mock::Config::new(dir.join("reg"));
    cfg.users = vec![("puller".into(), "right-password".into())];
    let reg = rt.block_on(registry_mock::start(cfg)).unwrap();

    // The right password, from the file: serves its socket, no auth failure.
    let good = dir.join("good");
    std::fs::create_dir_all(&good).unwrap();
    let _g1 = ManagerGuard(good.join("root"));
    let m1 = free_port();
    let conf = adapted_config(&good, &reg.url(), "right-password", &m1);
    let td = Teleportd::spawn(
        unit_command(&conf, &[]),
        &good.join("root"),
        &good.join("t.sock"),
        &good.join("log"),
    );
    let text = metrics(&m1);
    assert_eq!(
        metric(&text, "teleportd_auth_failures_total"),
        Some(0),
        "{text}"
    );
    assert!(
        td.log_text().contains("registry login ok"),
        "{}",
        td.log_text()
    );
    drop(td);

    // A wrong password: still serves (local pulls work), but an ERROR and a counter say so.
    // The metrics address comes from a flag, overriding the file's.
    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let _g2 = ManagerGuard(bad.join("root"));
    let in_file = free_port();
    let m2 = free_port();
    let conf = adapted_config(&bad, &reg.url(), "wrong-password", &in_file);
    let td = Teleportd::spawn(
        unit_command(&conf, &["--metrics-addr", &m2]),
        &bad.join("root"),
        &bad.join("t.sock"),
        &bad.join("log"),
    );
    let text = metrics(&m2);
    assert_eq!(
        metric(&text, "teleportd_auth_failures_total"),
        Some(1),
        "{text}"
    );
    let log = td.log_text();
    assert!(
        log.contains("ERROR") && log.contains("registry refused the login"),
        "{log}"
    );
    assert!(!log.contains("wrong-password"), "secret in the log: {log}");
    assert!(
        std::net::TcpStream::connect(&in_file).is_err(),
        "file's metrics_addr overridden"
    );
    drop(td);
}

#[test]
fn plain_http_registry_needs_insecure_registry() {
    let t = TestDir::new();
    let out = Command::new(env!("CARGO_BIN_EXE_teleportd"))
        .arg("--root")
        .arg(t.path().join("root"))
        .arg("--address")
        .arg(t.path().join("t.sock"))
        .args(["--registry", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--insecure-registry"), "{err}");
    assert!(!t.path().join("t.sock").exists());
}

#[test]
fn a_bad_config_file_is_a_clear_error() {
    let t = TestDir::new();
    let f = t.path().join("c.toml");
    std::fs::write(&f, "no_such_flag = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_teleportd"))
        .arg("--config")
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--no-such-flag"), "{err}");
    std::fs::write(&f, "[table]\nx = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_teleportd"))
        .arg("--config")
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("c.toml"));
}
