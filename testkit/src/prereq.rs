//! Prerequisites of the tests that need root, FUSE, containerd or skopeo: a missing one fails
//! the test in CI (`CI=true`) and skips it with a printed reason elsewhere.

use std::path::Path;

use crate::bins::have;
use crate::image::BUSYBOX;

/// One thing a test needs from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Root,
    Fuse,
    /// containerd, ctr, runc and the runc shim.
    Containerd,
    Skopeo,
    /// A static busybox (the test image's only binary).
    Busybox,
}

impl Need {
    fn missing(self) -> Option<String> {
        match self {
            // SAFETY: geteuid has no preconditions.
            Need::Root => (unsafe { libc::geteuid() } != 0).then(|| "root".into()),
            Need::Fuse => (!Path::new("/dev/fuse").exists()).then(|| "/dev/fuse".into()),
            Need::Containerd => {
                let gone: Vec<&str> = ["containerd", "ctr", "runc", "containerd-shim-runc-v2"]
                    .into_iter()
                    .filter(|b| !have(b))
                    .collect();
                (!gone.is_empty()).then(|| gone.join(", "))
            }
            Need::Skopeo => (!have("skopeo")).then(|| "skopeo".into()),
            Need::Busybox => (!Path::new(BUSYBOX).exists())
                .then(|| format!("{BUSYBOX} (Debian package busybox-static)")),
        }
    }
}

/// True when everything in `needs` is there. Otherwise panics when `CI` is `true` or `1`, or
/// prints `SKIPPED: …` and returns false.
pub fn require(needs: &[Need]) -> bool {
    let missing: Vec<String> = needs.iter().filter_map(|n| n.missing()).collect();
    if missing.is_empty() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "CI=true but prerequisites are missing: {missing:?}");
    eprintln!("SKIPPED: missing prerequisites {missing:?}");
    false
}

/// What a containerd node test needs: root, FUSE, containerd, skopeo, busybox.
pub fn prerequisites() -> bool {
    require(&[
        Need::Root,
        Need::Fuse,
        Need::Containerd,
        Need::Skopeo,
        Need::Busybox,
    ])
}
