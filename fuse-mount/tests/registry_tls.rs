//! teleportd talks https to a registry: a server with a self-signed certificate is trusted
//! with `--ca-file` and refused without it (the start-up login check shows which). The server
//! is `openssl s_server -www` (answers every GET with 200), started and stopped by PID here.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers outside #[test] fns.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use testkit::{Teleportd, TestDir};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(dir: &Path) -> Option<(Server, String)> {
    let gen = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .ok()?;
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("openssl")
        .args(["s_server", "-www", "-quiet", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(dir.join("cert.pem"))
        .arg("-key")
        .arg(dir.join("key.pem"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server(child);
    testkit::wait_for("openssl s_server", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    Some((server, format!("https://127.0.0.1:{port}")))
}

#[test]
fn https_registry_is_trusted_with_ca_file_only() {
    let t = TestDir::new();
    let dir = t.path();
    let Some((_server, url)) = openssl(dir) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI: openssl missing"
        );
        eprintln!("SKIPPED: no openssl");
        return;
    };
    std::fs::write(dir.join("pw"), "pw\n").unwrap();
    let run = |name: &str, ca: bool| -> String {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_teleportd"));
        let root = dir.join(name);
        let socket = dir.join(format!("{name}.sock"));
        cmd.arg("--root")
            .arg(&root)
            .arg("--address")
            .arg(&socket)
            .args(["--registry", &url, "--no-remote", "--user", "puller"])
            .arg("--password-file")
            .arg(dir.join("pw"));
        if ca {
            cmd.arg("--ca-file").arg(dir.join("cert.pem"));
        }
        // The login check runs before the socket is served: its line is in the log by then.
        let td = Teleportd::spawn(cmd, &root, &socket, &dir.join(format!("{name}.log")));
        td.log_text()
    };
    let trusted = run("trusted", true);
    assert!(trusted.contains("registry login ok"), "{trusted}");
    let untrusted = run("untrusted", false);
    assert!(
        untrusted.contains("login not verified") && !untrusted.contains("registry login ok"),
        "{untrusted}"
    );
}
