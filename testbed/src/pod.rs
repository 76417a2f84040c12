//! One pod the way kubelet starts it, over CRI: image present? else PullImage (timed: the
//! "Successfully pulled image … in Ns" figure) → RunPodSandbox → CreateContainer →
//! StartContainer → the app's ready line (time-to-ready), with events as they happen.

use crate::cri::PodSpec;
use crate::error::{Error, Result};
use crate::events::{go_duration, Events};
use crate::node::Node;
use std::time::{Duration, Instant};

/// The fixture entrypoint's ready line: `TB-READY files=N bytes=B hash=sha256:… elapsed_ms=…`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReadyLine {
    pub files: u64,
    pub bytes: u64,
    pub hash: String,
    pub elapsed_ms: u64,
}

pub const READY_PREFIX: &str = "TB-READY";

impl std::str::FromStr for ReadyLine {
    type Err = Error;
    fn from_str(line: &str) -> Result<ReadyLine> {
        let bad = || Error::Invalid(format!("malformed ready line {line:?}"));
        let rest = line.strip_prefix(READY_PREFIX).ok_or_else(bad)?;
        let mut files = None;
        let mut bytes = None;
        let mut hash = None;
        let mut elapsed = None;
        for kv in rest.split_whitespace() {
            let (k, v) = kv.split_once('=').ok_or_else(bad)?;
            match k {
                "files" => files = v.parse().ok(),
                "bytes" => bytes = v.parse().ok(),
                "hash" => hash = Some(v.to_string()),
                "elapsed_ms" => elapsed = v.parse().ok(),
                _ => {}
            }
        }
        Ok(ReadyLine {
            files: files.ok_or_else(bad)?,
            bytes: bytes.ok_or_else(bad)?,
            hash: hash.ok_or_else(bad)?,
            elapsed_ms: elapsed.unwrap_or(0),
        })
    }
}

/// When an app counts as ready (`--ready`).
#[derive(Debug, Clone)]
pub enum ReadyProbe {
    /// The fixture entrypoint's `TB-READY` line, its hash checked (the default).
    Fixture,
    /// A stdout/stderr line matching the regex (`log:REGEX`).
    Log(regex::Regex),
    /// The container exits with code 0 (`exit`).
    Exit,
    /// A TCP connect to 127.0.0.1:PORT succeeds (`tcp:PORT`; pods use the host network).
    Tcp(u16),
    /// An HTTP GET of the URL answers 2xx (`http:URL`).
    Http(String),
}

impl std::str::FromStr for ReadyProbe {
    type Err = Error;
    fn from_str(s: &str) -> Result<ReadyProbe> {
        let bad = |why: String| Error::Invalid(format!("--ready {s:?}: {why}"));
        match s.split_once(':') {
            _ if s == "fixture" || s == READY_PREFIX => Ok(ReadyProbe::Fixture),
            _ if s == "exit" => Ok(ReadyProbe::Exit),
            Some(("log", re)) => regex::Regex::new(re)
                .map(ReadyProbe::Log)
                .map_err(|e| bad(e.to_string())),
            Some(("tcp", port)) => port
                .parse()
                .map(ReadyProbe::Tcp)
                .map_err(|e| bad(format!("port: {e}"))),
            Some(("http", _)) => {
                let url = &s["http:".len()..];
                let url = if url.starts_with("//") {
                    format!("http:{url}")
                } else {
                    url.to_string()
                };
                reqwest::Url::parse(&url).map_err(|e| bad(e.to_string()))?;
                Ok(ReadyProbe::Http(url))
            }
            _ => Err(bad(
                "want fixture, log:REGEX, exit, tcp:PORT or http:URL".into()
            )),
        }
    }
}

impl ReadyProbe {
    /// As given on the command line (for the report).
    pub fn label(&self) -> String {
        match self {
            ReadyProbe::Fixture => format!("{READY_PREFIX} (fixture, hash checked)"),
            ReadyProbe::Log(re) => format!("log:{}", re.as_str()),
            ReadyProbe::Exit => "exit".into(),
            ReadyProbe::Tcp(p) => format!("tcp:{p}"),
            ReadyProbe::Http(u) => format!("http:{u}"),
        }
    }
}

/// How to run the pod.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Expected `hash=` of the ready line; a mismatch fails the run.
    pub expected_hash: Option<String>,
    pub ready_timeout: Duration,
    /// Remove the pod after the ready line (the measured runs do; `nodes up` pokes may not).
    pub teardown: bool,
    /// When the app counts as ready.
    pub probe: ReadyProbe,
}

/// Timings of one pod start, all measured by the testbed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PodTimings {
    /// `None` when the image was already present (warm).
    pub pull_seconds: Option<f64>,
    pub sandbox_seconds: f64,
    pub create_seconds: f64,
    pub start_seconds: f64,
    /// Scheduled → ready line seen.
    pub ready_seconds: f64,
    /// The fixture's ready line (`None` for other probes).
    pub ready: Option<ReadyLine>,
    pub image_id: String,
}

/// Wait until `opts.probe` says the app is ready; the fixture probe's line is parsed and its
/// hash checked.
async fn wait_ready(
    node: &Node,
    container: &str,
    spec: &PodSpec,
    opts: &RunOptions,
    events: &Events,
) -> Result<Option<ReadyLine>> {
    let cri = node.cri();
    let log = spec.log_file();
    let timeout = opts.ready_timeout;
    match &opts.probe {
        ReadyProbe::Fixture => {
            let line = cri
                .wait_for_log_line(container, &log, READY_PREFIX, timeout)
                .await?;
            let ready: ReadyLine = line.parse()?;
            if let Some(want) = &opts.expected_hash {
                if &ready.hash != want {
                    events.warning(
                        "Unhealthy",
                        "testbed",
                        &format!("ready line hash {} != expected {want}", ready.hash),
                    );
                    return Err(Error::Container {
                        node: node.name().into(),
                        container: container.into(),
                        reason: format!("wrong content: hash {} != expected {want}", ready.hash),
                    });
                }
            }
            Ok(Some(ready))
        }
        ReadyProbe::Log(re) => {
            cri.wait_for_log(container, &log, re.as_str(), |m| re.is_match(m), timeout)
                .await?;
            Ok(None)
        }
        ReadyProbe::Exit | ReadyProbe::Tcp(_) | ReadyProbe::Http(_) => {
            let deadline = Instant::now() + timeout;
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .map_err(|e| Error::Invalid(format!("http client: {e}")))?;
            loop {
                let st = cri.container_status(container).await?;
                let exited = st.state == node_api::cri::ContainerState::ContainerExited as i32;
                let up = match &opts.probe {
                    ReadyProbe::Exit => exited && st.exit_code == 0,
                    ReadyProbe::Tcp(p) => tokio::net::TcpStream::connect(("127.0.0.1", *p))
                        .await
                        .is_ok(),
                    ReadyProbe::Http(u) => http
                        .get(u)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success()),
                    _ => false,
                };
                if up {
                    return Ok(None);
                }
                if exited {
                    return Err(Error::Container {
                        node: node.name().into(),
                        container: container.into(),
                        reason: format!(
                            "exited with code {} ({}) before {}{}",
                            st.exit_code,
                            st.reason,
                            opts.probe.label(),
                            crate::process::log_tail(&log, 10)
                        ),
                    });
                }
                if Instant::now() >= deadline {
                    return Err(Error::Timeout {
                        node: node.name().into(),
                        what: opts.probe.label(),
                        timeout,
                        log: crate::process::log_tail(&log, 10),
                    });
                }
                // Poll interval of the probe; the loop checks the condition.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Start `spec` on `node` like kubelet with `imagePullPolicy: IfNotPresent`.
pub async fn run_pod(
    node: &Node,
    spec: &PodSpec,
    opts: &RunOptions,
    events: &Events,
) -> Result<PodTimings> {
    let cri = node.cri();
    let t0 = events.start();
    events.normal(
        "Scheduled",
        "default-scheduler",
        &format!(
            "Successfully assigned default/{} to {}",
            spec.name,
            node.name()
        ),
    );

    let (pull_seconds, image_id) = match cri.image_status(&spec.image).await? {
        Some(id) => {
            events.normal(
                "Pulled",
                "kubelet",
                &format!(
                    "Container image \"{}\" already present on machine",
                    spec.image
                ),
            );
            (None, id)
        }
        None => {
            events.normal(
                "Pulling",
                "kubelet",
                &format!("Pulling image \"{}\"", spec.image),
            );
            let t = Instant::now();
            let id = cri.pull_image(&spec.image).await?;
            let took = t.elapsed();
            events.normal(
                "Pulled",
                "kubelet",
                &format!(
                    "Successfully pulled image \"{}\" in {}",
                    spec.image,
                    go_duration(took)
                ),
            );
            (Some(took.as_secs_f64()), id)
        }
    };

    let t = Instant::now();
    let sandbox = cri.run_pod_sandbox(spec).await?;
    let sandbox_seconds = t.elapsed().as_secs_f64();

    let result = async {
        let t = Instant::now();
        let container = cri.create_container(&sandbox, spec).await?;
        let create_seconds = t.elapsed().as_secs_f64();
        events.normal(
            "Created",
            "kubelet",
            &format!("Created container {}", spec.name),
        );
        let t = Instant::now();
        cri.start_container(&container).await?;
        let start_seconds = t.elapsed().as_secs_f64();
        events.normal(
            "Started",
            "kubelet",
            &format!("Started container {}", spec.name),
        );

        let ready = wait_ready(node, &container, spec, opts, events).await?;
        let ready_seconds = t0.elapsed().as_secs_f64();
        events.normal(
            "Ready",
            "testbed",
            &match &ready {
                Some(r) => format!(
                    "{} in {} ({} files, {} bytes read, hash ok)",
                    READY_PREFIX,
                    go_duration(Duration::from_secs_f64(ready_seconds)),
                    r.files,
                    r.bytes
                ),
                None => format!(
                    "{} in {}",
                    opts.probe.label(),
                    go_duration(Duration::from_secs_f64(ready_seconds))
                ),
            },
        );
        Ok(PodTimings {
            pull_seconds,
            sandbox_seconds,
            create_seconds,
            start_seconds,
            ready_seconds,
            ready,
            image_id: image_id.clone(),
        })
    }
    .await;

    if opts.teardown || result.is_err() {
        if let Err(e) = cri.teardown_pod(&sandbox).await {
            tracing::warn!(node = node.name(), error = %e, "pod teardown");
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ready_line() {
        let r: ReadyLine = "TB-READY files=12 bytes=3456 hash=sha256:ab elapsed_ms=7"
            .parse()
            .unwrap();
        assert_eq!(r.files, 12);
        assert_eq!(r.bytes, 3456);
        assert_eq!(r.hash, "sha256:ab");
        assert_eq!(r.elapsed_ms, 7);
        assert!("TB-READY files=x".parse::<ReadyLine>().is_err());
        assert!("nope".parse::<ReadyLine>().is_err());
    }

    #[test]
    fn parses_ready_probes() {
        assert!(matches!(
            "fixture".parse::<ReadyProbe>(),
            Ok(ReadyProbe::Fixture)
        ));
        assert!(matches!("exit".parse::<ReadyProbe>(), Ok(ReadyProbe::Exit)));
        assert!(matches!(
            "tcp:6379".parse::<ReadyProbe>(),
            Ok(ReadyProbe::Tcp(6379))
        ));
        match "log:^READY( |$)".parse::<ReadyProbe>().unwrap() {
            ReadyProbe::Log(re) => {
                assert!(re.is_match("READY flask redis"));
                assert!(!re.is_match("NOT READY"));
            }
            other => panic!("{other:?}"),
        }
        match "http://127.0.0.1:8080/healthz"
            .parse::<ReadyProbe>()
            .unwrap()
        {
            ReadyProbe::Http(u) => assert_eq!(u, "http://127.0.0.1:8080/healthz"),
            other => panic!("{other:?}"),
        }
        for bad in ["log:(", "tcp:x", "tcp:70000", "http:not a url", "ready"] {
            assert!(bad.parse::<ReadyProbe>().is_err(), "{bad}");
        }
    }
}
