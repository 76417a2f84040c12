//! A small CRI client (k8s-cri `runtime.v1`) over a node's containerd unix socket: the calls
//! kubelet makes to start a pod, plus following a container's CRI log file for a line.

use crate::error::{Error, Result};
use hyper_util::rt::TokioIo;
use node_api::cri;
use node_api::cri::image_service_client::ImageServiceClient;
use node_api::cri::runtime_service_client::RuntimeServiceClient;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncSeekExt};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// CRI clients for one node.
#[derive(Clone, Debug)]
pub struct Cri {
    node: String,
    runtime: RuntimeServiceClient<Channel>,
    image: ImageServiceClient<Channel>,
}

/// What to run in a pod: one container from `image`.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub image: String,
    pub env: Vec<(String, String)>,
    /// Directory where CRI writes the container log (`<log_dir>/<name>.log`).
    pub log_dir: PathBuf,
    /// Parent cgroup for the pod (cgroupfs path), so a recycle can clean it up.
    pub cgroup_parent: String,
    /// Override the image's entrypoint (CRI `command`) and command (CRI `args`).
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
}

impl PodSpec {
    pub fn log_file(&self) -> PathBuf {
        self.log_dir.join(format!("{}.log", self.name))
    }
}

fn host_namespaces() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

impl Cri {
    /// Connect (lazily: the first call dials) to the CRI service on `socket`.
    pub fn connect(node: &str, socket: &Path) -> Result<Cri> {
        let path = socket.to_path_buf();
        // The URI is a placeholder: the connector ignores it and dials the unix socket.
        let endpoint = Endpoint::from_static("http://[::]:50051")
            .connect_timeout(Duration::from_secs(5))
            // Generous per-call limit: a full-size pull over an emulated slow link is one call.
            .timeout(Duration::from_secs(1800));
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }));
        Ok(Cri {
            node: node.to_string(),
            runtime: RuntimeServiceClient::new(channel.clone()),
            image: ImageServiceClient::new(channel),
        })
    }

    fn err(&self, call: &'static str) -> impl FnOnce(tonic::Status) -> Error + '_ {
        move |status| Error::Cri {
            node: self.node.clone(),
            call,
            status: Box::new(status),
        }
    }

    pub async fn version(&self) -> Result<cri::VersionResponse> {
        let mut c = self.runtime.clone();
        let r = c
            .version(cri::VersionRequest {
                version: "v1".into(),
            })
            .await
            .map_err(self.err("Version"))?;
        Ok(r.into_inner())
    }

    pub async fn status(&self) -> Result<cri::StatusResponse> {
        let mut c = self.runtime.clone();
        let r = c
            .status(cri::StatusRequest { verbose: false })
            .await
            .map_err(self.err("Status"))?;
        Ok(r.into_inner())
    }

    /// PullImage; returns the image ID (config digest) containerd reports.
    pub async fn pull_image(&self, image: &str) -> Result<String> {
        let mut c = self.image.clone();
        let r = c
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .map_err(self.err("PullImage"))?;
        Ok(r.into_inner().image_ref)
    }

    /// `Some(id)` when the image is present on the node (kubelet's "already present" check).
    pub async fn image_status(&self, image: &str) -> Result<Option<String>> {
        let mut c = self.image.clone();
        let r = c
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .map_err(self.err("ImageStatus"))?;
        Ok(r.into_inner().image.map(|i| i.id))
    }

    pub async fn list_images(&self) -> Result<Vec<cri::Image>> {
        let mut c = self.image.clone();
        let r = c
            .list_images(cri::ListImagesRequest { filter: None })
            .await
            .map_err(self.err("ListImages"))?;
        Ok(r.into_inner().images)
    }

    pub async fn remove_image(&self, image: &str) -> Result<()> {
        let mut c = self.image.clone();
        c.remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
        })
        .await
        .map_err(self.err("RemoveImage"))?;
        Ok(())
    }

    fn sandbox_config(spec: &PodSpec) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: spec.name.clone(),
                uid: format!("uid-{}", spec.name),
                namespace: "default".into(),
                attempt: 0,
            }),
            log_directory: spec.log_dir.to_string_lossy().into_owned(),
            labels: HashMap::from([("app".to_string(), spec.name.clone())]),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: spec.cgroup_parent.clone(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(host_namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox with host networking (no CNI needed).
    pub async fn run_pod_sandbox(&self, spec: &PodSpec) -> Result<String> {
        std::fs::create_dir_all(&spec.log_dir)
            .map_err(Error::io(format!("create {}", spec.log_dir.display())))?;
        let mut c = self.runtime.clone();
        let r = c
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(Self::sandbox_config(spec)),
                runtime_handler: String::new(),
            })
            .await
            .map_err(self.err("RunPodSandbox"))?;
        Ok(r.into_inner().pod_sandbox_id)
    }

    pub async fn create_container(&self, sandbox_id: &str, spec: &PodSpec) -> Result<String> {
        let mut c = self.runtime.clone();
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: spec.name.clone(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: spec.image.clone(),
                ..Default::default()
            }),
            envs: spec
                .env
                .iter()
                .map(|(k, v)| cri::KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            command: spec.command.clone().unwrap_or_default(),
            args: spec.args.clone().unwrap_or_default(),
            log_path: format!("{}.log", spec.name),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(host_namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = c
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sandbox_id.into(),
                config: Some(config),
                sandbox_config: Some(Self::sandbox_config(spec)),
            })
            .await
            .map_err(self.err("CreateContainer"))?;
        Ok(r.into_inner().container_id)
    }

    pub async fn start_container(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        c.start_container(cri::StartContainerRequest {
            container_id: id.into(),
        })
        .await
        .map_err(self.err("StartContainer"))?;
        Ok(())
    }

    pub async fn container_status(&self, id: &str) -> Result<cri::ContainerStatus> {
        let mut c = self.runtime.clone();
        let r = c
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .map_err(self.err("ContainerStatus"))?;
        r.into_inner().status.ok_or_else(|| Error::Container {
            node: self.node.clone(),
            container: id.into(),
            reason: "ContainerStatus returned no status".into(),
        })
    }

    /// Stop and remove a sandbox and its containers (best effort on each step's errors
    /// except the final removal).
    pub async fn teardown_pod(&self, sandbox_id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let containers = c
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    pod_sandbox_id: sandbox_id.into(),
                    ..Default::default()
                }),
            })
            .await
            .map_err(self.err("ListContainers"))?
            .into_inner()
            .containers;
        for ctr in containers {
            if let Err(e) = c
                .stop_container(cri::StopContainerRequest {
                    container_id: ctr.id.clone(),
                    timeout: 2,
                })
                .await
            {
                // A container that exited on its own races the stop ("ttrpc: closed"): harmless.
                let running = matches!(
                    self.container_status(&ctr.id).await,
                    Ok(st) if st.state == cri::ContainerState::ContainerRunning as i32
                );
                if running {
                    tracing::warn!(node = %self.node, container = %ctr.id, error = %e, "StopContainer");
                } else {
                    tracing::debug!(node = %self.node, container = %ctr.id, error = %e, "StopContainer after exit");
                }
            }
            // containerd 1.6 can answer StopContainer before it has processed the task's exit;
            // RemoveContainer then refuses. Wait (bounded) for the EXITED state.
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                match self.container_status(&ctr.id).await {
                    Ok(st) if st.state != cri::ContainerState::ContainerRunning as i32 => break,
                    Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await, // poll interval
                    Err(_) => break,
                }
            }
            c.remove_container(cri::RemoveContainerRequest {
                container_id: ctr.id.clone(),
            })
            .await
            .map_err(self.err("RemoveContainer"))?;
        }
        c.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: sandbox_id.into(),
        })
        .await
        .map_err(self.err("StopPodSandbox"))?;
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: sandbox_id.into(),
        })
        .await
        .map_err(self.err("RemovePodSandbox"))?;
        Ok(())
    }

    /// Every sandbox on the node (for cleanup before a recycle).
    pub async fn list_sandboxes(&self) -> Result<Vec<String>> {
        let mut c = self.runtime.clone();
        let r = c
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .map_err(self.err("ListPodSandbox"))?;
        Ok(r.into_inner().items.into_iter().map(|s| s.id).collect())
    }

    /// Follow the container's CRI log file until a stdout/stderr line whose message starts
    /// with `prefix` appears; returns that message. Fails when the container exits without
    /// printing it or the deadline passes.
    pub async fn wait_for_log_line(
        &self,
        container_id: &str,
        log_file: &Path,
        prefix: &str,
        timeout: Duration,
    ) -> Result<String> {
        self.wait_for_log(
            container_id,
            log_file,
            prefix,
            |m| m.starts_with(prefix),
            timeout,
        )
        .await
    }

    /// Follow the container's CRI log file until a stdout/stderr message satisfies `wanted`
    /// (`what` names it in errors); returns that message.
    pub async fn wait_for_log(
        &self,
        container_id: &str,
        log_file: &Path,
        what: &str,
        wanted: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String> {
        let prefix = what;
        let deadline = Instant::now() + timeout;
        let mut follower = LogFollower::new(log_file);
        let mut last_status_check = Instant::now();
        loop {
            for line in follower.read_new().await? {
                if let Some(msg) = parse_cri_log_line(&line) {
                    if wanted(msg) {
                        return Ok(msg.to_string());
                    }
                }
            }
            if last_status_check.elapsed() > Duration::from_millis(200) {
                last_status_check = Instant::now();
                let st = self.container_status(container_id).await?;
                if st.state == cri::ContainerState::ContainerExited as i32 {
                    // Read once more: the line may have landed just before exit.
                    for line in follower.read_new().await? {
                        if let Some(msg) = parse_cri_log_line(&line) {
                            if wanted(msg) {
                                return Ok(msg.to_string());
                            }
                        }
                    }
                    return Err(Error::Container {
                        node: self.node.clone(),
                        container: container_id.into(),
                        reason: format!(
                            "exited with code {} ({}) before printing {prefix:?}{}",
                            st.exit_code,
                            st.reason,
                            crate::process::log_tail(log_file, 10)
                        ),
                    });
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    node: self.node.clone(),
                    what: format!("{prefix:?} in {}", log_file.display()),
                    timeout,
                    log: crate::process::log_tail(log_file, 10),
                });
            }
            // Poll interval while following the file; the loop checks the condition.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Parse one CRI log line: `<RFC3339 ts> <stdout|stderr> <P|F> <message>`.
pub fn parse_cri_log_line(line: &str) -> Option<&str> {
    let mut it = line.splitn(4, ' ');
    let _ts = it.next()?;
    let stream = it.next()?;
    let tag = it.next()?;
    if !matches!(stream, "stdout" | "stderr") || tag.is_empty() {
        return None;
    }
    Some(it.next().unwrap_or("").trim_end_matches('\n'))
}

/// Reads complete new lines appended to a file that may not exist yet.
struct LogFollower {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl LogFollower {
    fn new(path: &Path) -> Self {
        LogFollower {
            path: path.to_path_buf(),
            offset: 0,
            partial: String::new(),
        }
    }

    async fn read_new(&mut self) -> Result<Vec<String>> {
        let mut f = match tokio::fs::File::open(&self.path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::Io {
                    what: format!("open {}", self.path.display()),
                    source: e,
                })
            }
        };
        f.seek(std::io::SeekFrom::Start(self.offset))
            .await
            .map_err(Error::io("seek log"))?;
        let mut reader = tokio::io::BufReader::new(f);
        let mut lines = Vec::new();
        loop {
            let mut buf = String::new();
            let n = reader
                .read_line(&mut buf)
                .await
                .map_err(Error::io("read log"))?;
            if n == 0 {
                break;
            }
            self.offset = self.offset.saturating_add(n as u64);
            if buf.ends_with('\n') {
                let mut full = std::mem::take(&mut self.partial);
                full.push_str(&buf);
                lines.push(full);
            } else {
                self.partial.push_str(&buf);
            }
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cri_log_lines() {
        assert_eq!(
            parse_cri_log_line("2026-11-28T04:00:00.1Z stdout F TB-READY files=3\n"),
            Some("TB-READY files=3")
        );
        assert_eq!(parse_cri_log_line("2026 stderr P part"), Some("part"));
        assert_eq!(parse_cri_log_line("garbage"), None);
        assert_eq!(parse_cri_log_line("ts nope F x"), None);
    }
}
