//! Provisioning: make sure this machine can run real nodes (containerd, runc, ctr, fusermount3,
//! /dev/fuse, overlayfs, root). Missing Debian/Ubuntu packages are installed by the repo's
//! `scripts/setup.sh` when we are root with apt; otherwise one message names what is missing.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One prerequisite and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
struct Need {
    what: &'static str,
    package: &'static str,
}

const COMMANDS: &[Need] = &[
    Need {
        what: "containerd",
        package: "containerd",
    },
    Need {
        what: "containerd-shim-runc-v2",
        package: "containerd",
    },
    Need {
        what: "ctr",
        package: "containerd",
    },
    Need {
        what: "runc",
        package: "runc",
    },
    Need {
        what: "fusermount3",
        package: "fuse3",
    },
];

/// What `check` found missing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Missing {
    pub packages: Vec<String>,
    pub other: Vec<String>,
}

impl Missing {
    pub fn is_empty(&self) -> bool {
        self.packages.is_empty() && self.other.is_empty()
    }

    fn to_error(&self) -> Error {
        let mut missing: Vec<String> = self
            .packages
            .iter()
            .map(|p| format!("package {p}"))
            .collect();
        missing.extend(self.other.iter().cloned());
        let mut hint = String::new();
        if !self.packages.is_empty() {
            hint.push_str(&format!(
                "Install with: sudo apt-get install -y {} (or run scripts/setup.sh as root).",
                self.packages.join(" ")
            ));
        }
        if self.other.iter().any(|o| o.contains("root")) {
            hint.push_str(" Nodes run real containerd: run the testbed as root (sudo).");
        }
        if self
            .other
            .iter()
            .any(|o| o.contains("fuse") || o.contains("overlay"))
        {
            hint.push_str(" Load kernel modules with: sudo modprobe fuse overlay.");
        }
        Error::Prerequisites {
            missing: missing.join(", "),
            hint: hint.trim().to_string(),
        }
    }
}

pub fn in_path(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn overlay_available() -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|t| {
            t.lines()
                .any(|l| l.split_whitespace().last() == Some("overlay"))
        })
        .unwrap_or(false)
}

/// Check every prerequisite without changing anything.
pub fn check() -> Missing {
    let mut m = Missing::default();
    for need in COMMANDS {
        if in_path(need.what).is_none() && !m.packages.iter().any(|p| p == need.package) {
            m.packages.push(need.package.to_string());
        }
    }
    if !Path::new("/dev/fuse").exists() {
        m.other.push("/dev/fuse (fuse kernel module)".into());
    }
    if !overlay_available() {
        m.other
            .push("overlayfs (overlay kernel module, see /proc/filesystems)".into());
    }
    if !is_root() {
        m.other.push("root privileges".into());
    }
    m
}

/// The repo's setup script, when the testbed runs from a checkout.
fn setup_script() -> Option<PathBuf> {
    let mut candidates = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/setup.sh")];
    if let Ok(cwd) = std::env::current_dir() {
        candidates.push(cwd.join("scripts/setup.sh"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// Make the machine ready or say exactly why it cannot be. Installs missing packages (via
/// `scripts/setup.sh` when present, else apt-get directly) only when root with apt.
pub fn ensure() -> Result<()> {
    let missing = check();
    if missing.is_empty() {
        return Ok(());
    }
    let can_install = is_root() && in_path("apt-get").is_some();
    if can_install {
        if let Some(script) = setup_script() {
            tracing::info!(script = %script.display(), "provisioning with setup script");
            let st = Command::new("bash")
                .arg(&script)
                .status()
                .map_err(Error::io(format!("run {}", script.display())))?;
            if !st.success() {
                tracing::warn!(status = %st, "setup script failed");
            }
        } else if !missing.packages.is_empty() {
            tracing::info!(packages = ?missing.packages, "installing with apt-get");
            let ok = Command::new("apt-get")
                .args(["update", "-qq"])
                .status()
                .is_ok_and(|s| s.success())
                && Command::new("apt-get")
                    .args(["install", "-y", "-qq", "--no-install-recommends"])
                    .args(&missing.packages)
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .status()
                    .is_ok_and(|s| s.success());
            if !ok {
                tracing::warn!("apt-get install failed");
            }
        }
        if !Path::new("/dev/fuse").exists() || !overlay_available() {
            let _ = Command::new("modprobe")
                .args(["-a", "fuse", "overlay"])
                .status();
        }
    }
    let still = check();
    if still.is_empty() {
        Ok(())
    } else {
        Err(still.to_error())
    }
}

/// For tests: `Ok(true)` = ready; `Ok(false)` = skip (printed reason, only allowed off CI and
/// when not root); `Err` = CI run with something missing: the test must fail loudly.
pub fn ensure_for_tests() -> Result<bool> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    match ensure() {
        Ok(()) => Ok(true),
        Err(e) if !ci && !is_root() => {
            eprintln!("SKIP: {e}");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_packages_and_how() {
        let m = Missing {
            packages: vec!["containerd".into(), "fuse3".into()],
            other: vec!["root privileges".into()],
        };
        let msg = m.to_error().to_string();
        assert!(msg.contains("package containerd"), "{msg}");
        assert!(msg.contains("apt-get install -y containerd fuse3"), "{msg}");
        assert!(msg.contains("as root"), "{msg}");
    }
}
