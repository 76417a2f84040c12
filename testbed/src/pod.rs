//! One pod the way kubelet starts it, over CRI: image present? else PullImage (timed: the
//! "Successfully pulled image … in Ns" figure) → RunPodSandbox → CreateContainer →
//! StartContainer → the app's ready line (time-to-ready), with events as they happen.

use crate::cri::PodSpec;
use crate::error::{Error, Result};
use crate::events::{go_duration, Events};
use crate::node::Node;
use std::time::{Duration, Instant};

/// The fixture entrypoint's ready line: `TB-READY files=N bytes=B hash=sha256:… elapsed_ms=…`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// How to run the pod.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Expected `hash=` of the ready line; a mismatch fails the run.
    pub expected_hash: Option<String>,
    pub ready_timeout: Duration,
    /// Remove the pod after the ready line (the measured runs do; `nodes up` pokes may not).
    pub teardown: bool,
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
    pub ready: ReadyLine,
    pub image_id: String,
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

        let line = cri
            .wait_for_log_line(
                &container,
                &spec.log_file(),
                READY_PREFIX,
                opts.ready_timeout,
            )
            .await?;
        let ready_seconds = t0.elapsed().as_secs_f64();
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
                    container,
                    reason: format!("wrong content: hash {} != expected {want}", ready.hash),
                });
            }
        }
        events.normal(
            "Ready",
            "testbed",
            &format!(
                "{} in {} ({} files, {} bytes read, hash ok)",
                READY_PREFIX,
                go_duration(Duration::from_secs_f64(ready_seconds)),
                ready.files,
                ready.bytes
            ),
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
}
