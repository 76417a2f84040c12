//! benches: benchmarks of the testbed's hot paths. Measures; never asserts correctness (tests do).
//!
//! Owns the criterion benches (`benches/expand.rs`, `benches/index.rs`, `benches/fuse_read.rs`), the `unpack-compare`
//! binary (our expansion vs containerd's own unpack of the same image, on this machine) and the
//! small support library both use: a fixture cache ([`fixture`]), the registry's expansion path
//! replayed on local files ([`expansion`]) and a private containerd with its cleanup guard
//! ([`containerd`]). The library may use `emulator` and `fixtures`; the FUSE bench also mounts
//! through `fuse-mount` (a dev-dependency: nothing depends on benches).
//!
//! See `benches/README.md` for what each bench models and how to run it.

pub mod containerd;
pub mod error;
pub mod expansion;
pub mod fixture;

pub use error::{Error, Result};

/// Drop the kernel's page cache (clean pages, dentries, inodes) after a `sync`, so the next
/// measurement reads from disk. Needs root.
pub fn drop_caches() -> Result<()> {
    // Dirty pages are not dropped: write them back first.
    error::run(std::process::Command::new("sync"))?;
    let p = std::path::Path::new("/proc/sys/vm/drop_caches");
    std::fs::write(p, b"3\n").map_err(Error::io(p))
}

/// Read `paths` once so they sit in the page cache ("warm" mode). A file that vanished since it
/// was listed is skipped: containerd's garbage collector removes unreferenced blobs on its own.
pub fn warm_files<'a>(paths: impl IntoIterator<Item = &'a std::path::Path>) -> Result<u64> {
    let mut n = 0u64;
    for p in paths {
        let mut f = match std::fs::File::open(p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(p)(e)),
        };
        n = n.saturating_add(std::io::copy(&mut f, &mut std::io::sink()).map_err(Error::io(p))?);
    }
    Ok(n)
}
