//! Where the programs under test are: the workspace's own binaries (built by cargo) and
//! containerd's (`TB_CONTAINERD_BIN=DIR` or PATH).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The package that owns each workspace binary a test may start.
const OWNERS: &[(&str, &str)] = &[
    ("teleportd", "fuse-mount"),
    ("registry-mock", "registry-mock"),
    ("testbed", "testbed"),
];

/// A workspace binary built from this checkout, from the target directory of the running test.
/// Cargo builds a package's binaries before its own integration tests; a test of another
/// package (the test kit's corpus) gets it built here, once per test process, so a stale
/// binary left by an earlier build is never tested.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let owner = OWNERS
        .iter()
        .find(|(b, _)| *b == name)
        .map(|(_, p)| *p)
        .unwrap_or_else(|| panic!("unknown workspace binary {name}"));
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary under target/<profile>/deps");
    let path = dir.join(name);
    let running = std::env::var("CARGO_PKG_NAME").unwrap_or_default();
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if running != owner && !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "-p", owner, "--bin", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("run cargo build");
        assert!(st.success(), "cargo build -p {owner} --bin {name} failed");
        built.push(name.to_owned());
    }
    assert!(path.is_file(), "{} missing", path.display());
    path
}

/// `TB_CONTAINERD_BIN=DIR` (e.g. from `scripts/get-containerd.sh 2.1`): the containerd under
/// test — `containerd`, `ctr` and its shim from DIR — instead of PATH's.
pub fn containerd_dir() -> Option<PathBuf> {
    std::env::var_os("TB_CONTAINERD_BIN")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

/// `containerd` or `ctr` of the containerd under test.
pub fn containerd_bin(name: &str) -> PathBuf {
    containerd_dir().map_or_else(|| PathBuf::from(name), |d| d.join(name))
}

/// PATH with the containerd under test first (containerd finds its shim through PATH).
pub fn path_with_containerd_dir() -> std::ffi::OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = containerd_dir()
        .into_iter()
        .chain(std::env::split_paths(&path));
    std::env::join_paths(dirs).expect("PATH entries")
}

/// Whether `bin` is a program of the containerd under test or in PATH.
pub fn have(bin: &str) -> bool {
    containerd_dir().is_some_and(|d| d.join(bin).is_file()) || which::which(bin).is_ok()
}
