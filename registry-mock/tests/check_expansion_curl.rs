//! The public check-expansion.sh flow, driven with the real `curl` binary exactly as
//! teleport-api.md describes it: token via `curl -u` (basic auth, pull scope), `HEAD` of the tag
//! with the Docker v2 Accept header and a case-sensitive grep of `Docker-Content-Digest`, then
//! `GET /mount/v1/REPO/_manifests/DIGEST` with the bearer token until 200 (409 meanwhile);
//! 404 for a repository that is not teleport-enabled.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers outside #[test] fns.

use std::time::Duration;

use reqwest::Client;
use serde_json::Value;
use testkit::registry::*;

async fn sh(script: &str) -> String {
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn have_curl() -> bool {
    let ok = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "curl is required in CI (apt-get install curl)"
        );
        eprintln!("SKIP: curl not installed");
    }
    ok
}

#[tokio::test]
async fn check_expansion_with_curl() {
    if !have_curl() {
        return;
    }
    let t = start_with(|c| {
        c.users = vec![("puller".into(), "s3cret".into())];
        c.anonymous_pull = false;
        c.teleport_repos = vec!["azure-vote-front".into()];
    })
    .await;
    let host = t.url.trim_start_matches("http://").to_string();
    let pusher = Client::builder()
        .default_headers({
            let mut h = reqwest::header::HeaderMap::new();
            // puller:s3cret
            h.insert(
                "authorization",
                "Basic cHVsbGVyOnMzY3JldA==".parse().unwrap(),
            );
            h
        })
        .build()
        .unwrap();
    let layers = [
        gzip_tar(&[("app/main.py", &random_bytes(400_000, 11))]),
        gzip_tar(&[("etc/motd", b"hi\n")]),
    ];
    let p = push_image(&pusher, &t.url, "azure-vote-front", "v1", &layers).await;
    push_image(&pusher, &t.url, "standard", "v1", &layers[1..]).await;

    for (repo, want_final) in [("azure-vote-front", "200"), ("standard", "404")] {
        // 1. Token with basic auth.
        let tok = sh(&format!(
            "curl -s -u puller:s3cret 'http://{host}/oauth2/token?service={host}&scope=repository:{repo}:pull'"
        ))
        .await;
        let v: Value = serde_json::from_str(&tok).unwrap();
        let token = v["access_token"].as_str().unwrap().to_string();

        // 2. Digest from the HEAD response headers (case-sensitive grep).
        let digest = sh(&format!(
            "curl -s -I -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
             -H 'Authorization: Bearer {token}' http://{host}/v2/{repo}/manifests/v1 \
             | grep '^Docker-Content-Digest' | grep -o 'sha256:[0-9a-f]\\{{64\\}}'"
        ))
        .await
        .trim()
        .to_string();
        assert_eq!(digest.len(), 71, "{digest:?}");
        if repo == "azure-vote-front" {
            assert_eq!(digest, p.manifest.as_str());
        }

        // 3. Poll /mount with the bearer token.
        let code = poll_until("mount status", Duration::from_secs(60), || {
            let (host, token, digest, repo) = (
                host.clone(),
                token.clone(),
                digest.clone(),
                repo.to_string(),
            );
            async move {
                let code = sh(&format!(
                    "curl -s -o /dev/null -w '%{{http_code}}' -H 'Authorization: Bearer {token}' \
                     http://{host}/mount/v1/{repo}/_manifests/{digest}"
                ))
                .await;
                assert!(
                    ["200", "404", "409"].contains(&code.as_str()),
                    "unexpected /mount status {code}"
                );
                (code != "409").then_some(code)
            }
        })
        .await;
        assert_eq!(code, want_final, "{repo}");
    }

    // Without the token, /mount refuses.
    let code = sh(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' http://{host}/mount/v1/azure-vote-front/_manifests/{}",
        p.manifest
    ))
    .await;
    assert_eq!(code, "401");
}

/// The `registry-mock check-expansion` binary against an in-process registry.
#[tokio::test]
async fn check_expansion_binary_exit_codes() {
    let t = start_with(|c| c.teleport_repos = vec!["on".into()]).await;
    let c = client();
    push_image(&c, &t.url, "on", "v1", &[gzip_tar(&[("f", b"1")])]).await;
    push_image(&c, &t.url, "off", "v1", &[gzip_tar(&[("f", b"2")])]).await;
    let bin = env!("CARGO_BIN_EXE_registry-mock");
    for (repo, code, line) in [("on", 0, "layers ready"), ("off", 2, "not enabled")] {
        let out = tokio::process::Command::new(bin)
            .args([
                "check-expansion",
                repo,
                "v1",
                "--registry",
                &t.url,
                "--interval",
                "50ms",
                "--timeout",
                "60s",
            ])
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{repo}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.lines().any(|l| l == line), "{stdout}");
    }
}
