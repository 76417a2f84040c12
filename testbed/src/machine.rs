//! What machine and software a report was measured on.

use crate::process::output_of;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MachineInfo {
    pub cpu_model: String,
    pub cores: usize,
    pub mem_bytes: u64,
    pub kernel: String,
    pub os: String,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Versions {
    pub containerd: String,
    pub runc: String,
    pub testbed: String,
    /// `soci-snapshotter-grpc --version` when SOCI nodes ran; empty otherwise.
    #[serde(default)]
    pub soci: String,
    /// nydus-snapshotter's package and nydusd's versions when a nydus node ran.
    #[serde(default)]
    pub nydus: String,
}

impl MachineInfo {
    pub fn detect() -> MachineInfo {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_bytes = meminfo
            .lines()
            .find_map(|l| {
                let rest = l.strip_prefix("MemTotal:")?;
                let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
                kb.checked_mul(1024)
            })
            .unwrap_or(0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let os = std::fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
            .unwrap_or_default();
        MachineInfo {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mem_bytes,
            kernel,
            os,
        }
    }
}

impl Versions {
    pub fn detect() -> Versions {
        let first = |s: Option<String>| {
            s.and_then(|s| s.lines().next().map(str::to_string))
                .unwrap_or_else(|| "unknown".into())
        };
        Versions {
            containerd: first(output_of("containerd", &["--version"])),
            runc: first(output_of("runc", &["--version"])),
            testbed: env!("CARGO_PKG_VERSION").to_string(),
            soci: String::new(),
            nydus: String::new(),
        }
    }
}
