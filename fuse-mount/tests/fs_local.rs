//! Real FUSE (+ real overlayfs) over expanded layers whose data blobs are local files, read
//! through the same chunk cache and digest checks as the registry path. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fs_support;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use fs_support::*;
use fuse_mount::fetch::{Client, ClientOptions, Counters, LayerHandle};
use fuse_mount::fs::{mount_layer, mount_layer_over, mount_merged, MountOptions};

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    client: Client,
    layers: Vec<LayerHandle>,
    data_files: Vec<PathBuf>,
}

/// Expand the test layers with the emulator into `tmp/layers/N.data`, open them locally.
fn env_with(corrupt: bool) -> Env {
    env_of(&test_layers(), corrupt)
}

/// [`env_with`] for the given tar layers.
fn env_of(tars: &[Vec<u8>], corrupt: bool) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let client = Client::new(
        "http://127.0.0.1:9",
        None,
        root.join("cache"),
        ClientOptions::default(),
    )
    .unwrap();
    std::fs::create_dir_all(root.join("layers")).unwrap();
    let mut layers = Vec::new();
    let mut data_files = Vec::new();
    for (i, tar) in tars.iter().enumerate() {
        let path = root.join(format!("layers/{i}.data"));
        let mut f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let opts = emulator::ExpandOptions {
            chunk_size: CHUNK,
            ..Default::default()
        };
        let ex = emulator::expand_to_file(
            &tar[..],
            Some(emulator::oci::MT_OCI_LAYER_TAR),
            None,
            &mut f,
            &opts,
        )
        .unwrap();
        if corrupt {
            let mut b = std::fs::read(&path).unwrap();
            for x in b.iter_mut() {
                *x ^= 0x5a;
            }
            std::fs::write(&path, b).unwrap();
        }
        let f = File::open(&path).unwrap();
        layers.push(client.local_layer(ex.index, Arc::new(f)));
        data_files.push(path);
    }
    Env {
        _tmp: tmp,
        root,
        client,
        layers,
        data_files,
    }
}

fn mkdir(p: &Path) -> PathBuf {
    std::fs::create_dir_all(p).unwrap();
    p.to_path_buf()
}

fn opts() -> MountOptions {
    MountOptions {
        prefetch_on_open: false,
        // These tests count exactly what a read fetches.
        neighbour_ahead: 0,
        ..Default::default()
    }
}

#[test]
fn fs_merged_view_equals_overlay_of_per_layer_mounts() {
    if !testkit::require(&[testkit::Need::Root, testkit::Need::Fuse]) {
        return;
    }
    let env = env_with(false);
    let _guard = NoMountsLeft(env.root.clone());
    let m = mkdir(&env.root.join("mnt/merged"));
    let merged = mount_merged(&m, env.layers.clone(), &opts()).unwrap();
    let mut per_layer = Vec::new();
    let mut dirs = Vec::new();
    for (i, l) in env.layers.iter().enumerate() {
        let d = mkdir(&env.root.join(format!("mnt/l{i}")));
        let lowers = &env.layers[..i];
        per_layer.push(mount_layer_over(&d, l.clone(), lowers, &opts()).unwrap());
        dirs.push(d);
    }
    let ovl = mkdir(&env.root.join("mnt/ovl"));
    let top_first: Vec<&Path> = dirs.iter().rev().map(PathBuf::as_path).collect();
    let overlay = KernelMount::overlay(&ovl, &top_first);

    let a = walk(&m);
    let b = walk(&ovl);
    for (k, v) in &a {
        assert_eq!(Some(v), b.get(k), "path {k} differs (merged vs overlay)");
    }
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());

    // The expected merged view, independently of the emulator.
    for gone in ["gone.txt", "gonedir", "opq/x", "opq/y", "etc/conf/a.conf"] {
        assert!(!a.contains_key(gone), "{gone} should be deleted");
    }
    assert_eq!(a["opq"].mode, 0o711);
    assert!(a.contains_key("opq/z"));
    assert_eq!(a["etc"].mode, 0o700);
    assert_eq!(a["etc/conf"].mode, 0o750);
    assert_eq!(a["etc/conf/b.conf"].sha, Some(sha(b"b=2\n")));
    assert_eq!(a["etc/conf/c.conf"].sha, Some(sha(b"c=3\n")));
    assert_eq!(
        a["etc/passwd"].sha,
        Some(sha(b"root:x:0:0\nuser:x:1000:1000\n"))
    );
    assert_eq!(a["data/big.bin"].sha, Some(sha(&big_file())));
    assert_eq!(a["data/big.bin"].size, big_file().len() as u64);
    assert_eq!(
        a["data/big.bin"].blocks,
        (big_file().len() as u64).div_ceil(4096) * 8
    );
    assert_eq!(a["data/lonely.bin"].sha, Some(sha(&lonely_file())));
    assert_eq!(a["data/new.bin"].sha, Some(sha(&bytes(3, 200_000))));
    assert_eq!(a["data/dup.txt"].sha, a["data/small.txt"].sha);
    assert_eq!(
        a["data/small.txt"].xattrs,
        vec![("user.note".to_string(), b"hi\0there".to_vec())]
    );
    let tool = &a["usr/bin/tool"];
    assert_eq!(
        (tool.mode, tool.uid, tool.gid, tool.nlink),
        (0o4755, 1000, 1000, 2)
    );
    assert_eq!(tool.sha, Some(sha(&bytes(2, 5000))));
    assert_eq!(tool.inode_group.as_deref(), Some("usr/bin/tool"));
    assert_eq!(
        a["usr/bin/tool2"].inode_group.as_deref(),
        Some("usr/bin/tool")
    );
    assert_eq!(a["bin"].kind, "symlink");
    assert_eq!(a["bin"].link.as_deref(), Some("usr/bin"));
    assert_eq!(a["dev/null"].kind, "char");
    assert_eq!(a["dev/null"].rdev, libc::makedev(1, 3));
    assert_eq!(a["dev/fifo"].kind, "fifo");
    assert_eq!(a["etc/passwd"].mtime, 1_700_000_000);

    // Per-layer form: whiteouts are 0/0 char devices, opaque dirs carry the overlay xattr.
    let wh = std::fs::symlink_metadata(dirs[1].join("gone.txt")).unwrap();
    assert_eq!((wh.mode() & libc::S_IFMT, wh.rdev()), (libc::S_IFCHR, 0));
    let mut v = [0u8; 8];
    let p = std::ffi::CString::new(dirs[1].join("opq").to_str().unwrap()).unwrap();
    let name = std::ffi::CString::new("trusted.overlay.opaque").unwrap();
    // SAFETY: valid strings and buffer.
    let n = unsafe { libc::lgetxattr(p.as_ptr(), name.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
    assert_eq!(&v[..n.max(0) as usize], b"y");
    // Misses (cached negative entries) stay misses, in both views; a file is not a dir.
    for _ in 0..2 {
        for root in [&m, &ovl] {
            let e = std::fs::metadata(root.join("etc/nope")).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        }
        let e = std::fs::metadata(m.join("etc/passwd/x")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR));
    }
    // statfs: a read-only filesystem sized like its contents.
    let c = std::ffi::CString::new(m.to_str().unwrap()).unwrap();
    // SAFETY: zeroed statvfs is a valid out-parameter; `c` is a valid path.
    let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut sv) }, 0);
    assert_eq!(sv.f_bsize, 4096);
    assert!(sv.f_blocks * 4096 >= big_file().len() as u64);
    assert!(sv.f_files >= a.len() as u64);
    assert_eq!(sv.f_bfree, 0);
    assert_ne!(sv.f_flag & libc::ST_RDONLY, 0);
    // Directory link counts: 2 + subdirectories.
    let st = std::fs::metadata(m.join("etc")).unwrap();
    assert_eq!(st.nlink(), 3);

    drop(overlay);
    for h in per_layer {
        h.unmount().unwrap();
    }
    merged.unmount().unwrap();
}

#[test]
fn fs_reads_fetch_only_what_is_read_and_the_cache_serves_later_mounts() {
    if !testkit::require(&[testkit::Need::Root, testkit::Need::Fuse]) {
        return;
    }
    let env = env_with(false);
    let _guard = NoMountsLeft(env.root.clone());
    let m = mkdir(&env.root.join("mnt/m"));
    let total: u64 = env.layers.iter().map(|l| l.index().data_size).sum();

    let h = mount_merged(&m, env.layers.clone(), &opts()).unwrap();
    assert_eq!(
        h.counters().snapshot().bytes_fetched,
        0,
        "mount fetches nothing"
    );
    let got = std::fs::read(m.join("data/lonely.bin")).unwrap();
    assert_eq!(got, lonely_file());
    let s = h.counters().snapshot();
    let len = lonely_file().len() as u64;
    assert!(s.bytes_fetched >= len, "{s:?}");
    assert!(
        s.bytes_fetched < len + 2 * u64::from(CHUNK),
        "fetched more than the file: {s:?}"
    );
    assert!(s.bytes_fetched * 4 < total, "{s:?} vs layer total {total}");
    assert_eq!(s.chunks_fetched, len.div_ceil(u64::from(CHUNK)));
    assert_eq!(s.fetch_errors, 0);
    h.unmount().unwrap();

    // A new mount (fresh counters, same node cache): served without fetching.
    let h = mount_merged(&m, env.layers.clone(), &opts()).unwrap();
    let got = std::fs::read(m.join("data/lonely.bin")).unwrap();
    assert_eq!(got, lonely_file());
    let s = h.counters().snapshot();
    assert_eq!(s.bytes_fetched, 0, "{s:?}");
    assert!(s.cache_hits >= len.div_ceil(u64::from(CHUNK)), "{s:?}");
    h.unmount().unwrap();

    // With prefetch on open, opening and reading one byte pulls the whole file in: the first
    // read's read-ahead (one chunk here) plus a background fetch of the rest.
    let h = mount_merged(
        &m,
        env.layers.clone(),
        &MountOptions {
            prefetch_on_open: true,
            read_ahead: u64::from(CHUNK),
            ..Default::default()
        },
    )
    .unwrap();
    let mut f = File::open(m.join("data/big.bin")).unwrap();
    let mut one = [0u8; 1];
    f.read_exact(&mut one).unwrap();
    let want = (big_file().len() as u64).div_ceil(u64::from(CHUNK));
    let c = h.counters();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while c.snapshot().chunks_fetched < want {
        assert!(
            std::time::Instant::now() < deadline,
            "prefetch incomplete: {:?}",
            c.snapshot()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(c.snapshot().chunks_fetched, want);
    drop(f);
    drop(h);
}

#[test]
fn fs_concurrent_reads_of_one_chunk_fetch_it_once() {
    if !testkit::require(&[testkit::Need::Root, testkit::Need::Fuse]) {
        return;
    }
    let env = env_with(false);
    let _guard = NoMountsLeft(env.root.clone());
    // Library level: 8 threads read the same range at once.
    let layer = env.layers[0].clone();
    let counters = Arc::new(Counters::default());
    let n = 8;
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (layer, counters, barrier) = (layer.clone(), counters.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 3 * CHUNK as usize];
                barrier.wait();
                layer.read_data(0, &mut buf, &counters).unwrap();
                buf
            })
        })
        .collect();
    let bufs: Vec<Vec<u8>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(bufs.windows(2).all(|w| w[0] == w[1]));
    let s = counters.snapshot();
    assert_eq!(s.chunks_fetched, 3, "{s:?}");
    assert_eq!(s.bytes_fetched, 3 * u64::from(CHUNK));
    assert_eq!(s.cache_hits, 3 * (n as u64 - 1), "{s:?}");

    // Through FUSE: parallel readers of one file on a fresh mount.
    let m = mkdir(&env.root.join("mnt/m"));
    let h = mount_merged(&m, env.layers.clone(), &opts()).unwrap();
    let barrier = Arc::new(Barrier::new(n));
    let p = m.join("data/new.bin");
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (p, barrier) = (p.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                std::fs::read(p).unwrap()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), bytes(3, 200_000));
    }
    let s = h.counters().snapshot();
    assert_eq!(
        s.chunks_fetched,
        200_000u64.div_ceil(u64::from(CHUNK)),
        "{s:?}"
    );
    h.unmount().unwrap();
}

#[test]
fn fs_corrupt_data_is_an_error_not_served() {
    if !testkit::require(&[testkit::Need::Root, testkit::Need::Fuse]) {
        return;
    }
    let env = env_with(true);
    let _guard = NoMountsLeft(env.root.clone());
    let m = mkdir(&env.root.join("mnt/m"));
    let h = mount_merged(&m, env.layers.clone(), &opts()).unwrap();
    let err = std::fs::read(m.join("data/lonely.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(h.counters().snapshot().fetch_errors >= 1);
    assert_eq!(h.counters().snapshot().chunks_fetched, 0);
    // Metadata needs no data: still fine.
    assert_eq!(
        std::fs::metadata(m.join("data/lonely.bin")).unwrap().len(),
        lonely_file().len() as u64
    );
    assert!(env.data_files.iter().all(|p| p.exists()));
    h.unmount().unwrap();
    let _ = &env.client;
}

#[test]
fn fs_busy_mount_is_detached_and_open_files_keep_reading() {
    if !testkit::require(&[testkit::Need::Root, testkit::Need::Fuse]) {
        return;
    }
    let env = env_with(false);
    let _guard = NoMountsLeft(env.root.clone());
    let m = mkdir(&env.root.join("mnt/m"));
    let h = mount_merged(&m, env.layers.clone(), &opts()).unwrap();
    let mut f = File::open(m.join("data/big.bin")).unwrap();
    h.unmount().unwrap();
    assert!(mounts_under(&m).is_empty(), "mount still visible");
    let mut got = Vec::new();
    f.read_to_end(&mut got).unwrap();
    assert_eq!(got, big_file());
}

/// A 29-layer image with ~60k entries (the size class of the published 944 MB, 29-layer
/// comparison): mounting builds the inode table from the indexes only. Prints the time taken
/// (no timed assertion); asserts nothing was fetched and the tree is complete.
#[test]
fn fs_mount_of_many_layers_reads_no_data() {
    if !testkit::require(&[testkit::Need::Root, testkit::Need::Fuse]) {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter("fuse_mount=debug")
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let _guard = NoMountsLeft(root.clone());
    let client = Client::new(
        "http://127.0.0.1:9",
        None,
        root.join("cache"),
        ClientOptions::default(),
    )
    .unwrap();
    let digest = emulator::Digest::sha256_of(b"");
    let layers: Vec<LayerHandle> = (0..29)
        .map(|l| {
            let mut entries = Vec::new();
            for d in 0..40 {
                entries.push(emulator::Entry {
                    path: format!("usr/l{l}/d{d}"),
                    kind: emulator::EntryKind::Dir,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: 1,
                    size: 0,
                    link: None,
                    rdev_major: 0,
                    rdev_minor: 0,
                    xattrs: vec![],
                    data_offset: 0,
                });
                for f in 0..50 {
                    entries.push(emulator::Entry {
                        path: format!("usr/l{l}/d{d}/f{f}"),
                        kind: emulator::EntryKind::File,
                        mode: 0o644,
                        size: 10,
                        ..entries[entries.len() - 1 - f].clone()
                    });
                }
            }
            let index = emulator::Index {
                layer_digest: None,
                diff_id: digest.clone(),
                chunk_size: 1 << 20,
                data_size: 0,
                data_digest: digest.clone(),
                entries,
                chunks: vec![],
            };
            client.local_layer(index, Arc::new(File::open("/dev/null").unwrap()))
        })
        .collect();
    let m = mkdir(&root.join("mnt/m"));
    let t = std::time::Instant::now();
    let h = mount_merged(&m, layers.clone(), &opts()).unwrap();
    let took = t.elapsed();
    eprintln!(
        "mount_merged of 29 layers / {} entries: {:?} ({:?} per layer)",
        29 * 40 * 51,
        took,
        took / 29
    );
    let n = std::fs::read_dir(m.join("usr")).unwrap().count();
    assert_eq!(n, 29);
    let st = std::fs::metadata(m.join("usr/l28/d39/f49")).unwrap();
    assert_eq!(st.len(), 10);
    assert_eq!(h.counters().snapshot().bytes_fetched, 0);
    h.unmount().unwrap();
    let d = mkdir(&root.join("mnt/l"));
    let t = std::time::Instant::now();
    let h = mount_layer(&d, layers[0].clone(), &opts()).unwrap();
    eprintln!(
        "mount_layer of one layer / {} entries: {:?}",
        40 * 51,
        t.elapsed()
    );
    h.unmount().unwrap();
}

#[test]
fn fs_background_layer_prefetch_fills_the_cache() {
    if !testkit::require(&[testkit::Need::Root, testkit::Need::Fuse]) {
        return;
    }
    let env = env_with(false);
    let _guard = NoMountsLeft(env.root.clone());
    let m = mkdir(&env.root.join("mnt/m"));
    // Identical chunks (same digest) across layers are fetched once.
    let distinct: std::collections::BTreeSet<String> = env
        .layers
        .iter()
        .flat_map(|l| l.index().chunks.iter().map(|c| c.digest.to_string()))
        .collect();
    let h = mount_merged(
        &m,
        env.layers.clone(),
        &MountOptions {
            prefetch_layers: true,
            prefetch_on_open: false,
            ..Default::default()
        },
    )
    .unwrap();
    let c = h.counters();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while c.snapshot().chunks_fetched < distinct.len() as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "prefetch incomplete: {:?} of {}",
            c.snapshot(),
            distinct.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let before = c.snapshot();
    assert_eq!(before.chunks_fetched, distinct.len() as u64);
    assert_eq!(before.cache_hits, 0, "prefetch does not count as hits");
    // Everything now reads without another fetch.
    let a = walk(&m);
    assert_eq!(a["data/big.bin"].sha, Some(sha(&big_file())));
    let after = c.snapshot();
    assert_eq!(after.bytes_fetched, before.bytes_fetched);
    assert!(after.cache_hits > 0);
    h.unmount().unwrap();
}

#[test]
fn fs_first_read_fetches_the_rest_of_the_file_in_one_request() {
    if !testkit::require(&[testkit::Need::Root, testkit::Need::Fuse]) {
        return;
    }
    let env = env_with(false);
    let _guard = NoMountsLeft(env.root.clone());
    let m = mkdir(&env.root.join("mnt/m"));
    let h = mount_merged(&m, env.layers.clone(), &opts()).unwrap();
    // One byte of a 13-chunk file (below the default read-ahead): the whole file, one request.
    let mut f = File::open(m.join("data/big.bin")).unwrap();
    let mut one = [0u8; 1];
    f.read_exact(&mut one).unwrap();
    let want = (big_file().len() as u64).div_ceil(u64::from(CHUNK));
    let s = h.counters().snapshot();
    assert_eq!(s.chunks_fetched, want, "{s:?}");
    assert_eq!(s.fetches, 1, "{s:?}");
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).unwrap();
    assert_eq!(one[0], big_file()[0]);
    assert_eq!(rest, big_file()[1..]);
    assert_eq!(
        h.counters().snapshot().fetches,
        1,
        "the rest came from the cache"
    );
    drop(f);
    h.unmount().unwrap();

    // Without read-ahead the same one-byte read fetches only what the kernel asked for.
    let h = mount_merged(
        &m,
        env.layers.clone(),
        &MountOptions {
            read_ahead: 0,
            ..opts()
        },
    )
    .unwrap();
    let mut f = File::open(m.join("data/new.bin")).unwrap();
    f.read_exact(&mut one).unwrap();
    let s = h.counters().snapshot();
    assert!(s.chunks_fetched >= 1, "{s:?}");
    assert!(
        s.chunks_fetched < 200_000u64.div_ceil(u64::from(CHUNK)),
        "{s:?}"
    );
    drop(f);
    h.unmount().unwrap();
}

#[test]
fn fs_read_ahead_around_cached_chunks_fetches_only_the_missing_runs() {
    if !testkit::require(&[testkit::Need::Root, testkit::Need::Fuse]) {
        return;
    }
    let env = env_with(false);
    let layer = env.layers[0].clone();
    let big = layer.index().find("data/big.bin").unwrap().clone();
    let cs = u64::from(CHUNK);
    assert_eq!(
        big.data_offset % cs,
        0,
        "a multi-chunk file starts on a boundary"
    );
    let c = Counters::default();
    // Chunk 2 of the file is cached first.
    let mut b = [0u8; 1];
    layer
        .read_data(big.data_offset + 2 * cs, &mut b, &c)
        .unwrap();
    assert_eq!(c.snapshot().chunks_fetched, 1);
    // Read 1 byte with read-ahead over chunks 0..=3: runs [0,1] and [3], chunk 2 a hit.
    let c = Arc::new(Counters::default());
    layer
        .read_data_ahead(big.data_offset, &mut b, big.data_offset + 4 * cs, &c)
        .unwrap();
    let s = c.snapshot();
    assert_eq!((s.chunks_fetched, s.fetches), (3, 2), "{s:?}");
    assert_eq!(s.bytes_fetched, 3 * cs);
    assert_eq!(s.cache_hits, 1, "{s:?}");
    assert_eq!(b[0], big_file()[0]);
    // Everything read-ahead brought is served from the cache, right.
    let mut buf = vec![0u8; 4 * cs as usize];
    layer.read_data(big.data_offset, &mut buf, &c).unwrap();
    assert_eq!(buf, big_file()[..buf.len()]);
    assert_eq!(c.snapshot().fetches, 2);
    // Read-ahead past the data blob is clamped, not an error.
    let end = layer.index().data_size;
    layer
        .read_data_ahead(end - 1, &mut b, u64::MAX, &c)
        .unwrap();
}

/// Runs `cmd` as `nobody` (util-linux `setpriv`); its stdout, or None when it failed.
fn as_nobody(cmd: &[&str]) -> Option<String> {
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(cmd)
        .output()
        .expect("setpriv (util-linux)");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn fs_mounts_are_nosuid_but_a_containers_setuid_binary_still_works() {
    if !testkit::require(&[testkit::Need::Root, testkit::Need::Fuse]) {
        return;
    }
    // `id -u` prints the effective uid: 0 when its setuid bit takes effect.
    let id = std::fs::read("/usr/bin/id").unwrap();
    let env = env_of(
        &[
            tar_layer(&[
                Item::Dir("bin", 0o755, 0),
                Item::File("bin/id", 0o4755, 0, id),
            ]),
            tar_layer(&[Item::File("other", 0o644, 0, b"x".to_vec())]),
        ],
        false,
    );
    let _guard = NoMountsLeft(env.root.clone());
    // Only the mounts' own flags are under test: let nobody walk to them.
    std::fs::set_permissions(&env.root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut mounts = Vec::new();
    let mut dirs = Vec::new();
    for (i, l) in env.layers.iter().enumerate() {
        let d = mkdir(&env.root.join(format!("mnt/l{i}")));
        mounts.push(mount_layer_over(&d, l.clone(), &env.layers[..i], &opts()).unwrap());
        dirs.push(d);
    }
    let direct = dirs[0].join("bin/id");
    assert_eq!(mode(&direct), 0o4755);
    assert_eq!(
        as_nobody(&[direct.to_str().unwrap(), "-u"]).as_deref(),
        Some("65534"),
        "the FUSE mount itself is nosuid"
    );
    // The container's view: overlayfs over the layers, as containerd mounts it.
    let ovl = mkdir(&env.root.join("mnt/ovl"));
    let top_first: Vec<&Path> = dirs.iter().rev().map(PathBuf::as_path).collect();
    let _overlay = KernelMount::overlay(&ovl, &top_first);
    assert_eq!(
        as_nobody(&[ovl.join("bin/id").to_str().unwrap(), "-u"]).as_deref(),
        Some("0"),
        "setuid inside the container still works"
    );
    let m = fuse_mount::mountinfo::under(&dirs[0])
        .into_iter()
        .find(|m| m.mount_point == dirs[0])
        .unwrap();
    let opts: Vec<&str> = m.options.split(',').collect();
    assert!(opts.contains(&"nosuid") && opts.contains(&"nodev"), "{m:?}");
}

#[test]
fn fs_node_state_is_private_to_root_and_fixed_at_start() {
    if !testkit::require(&[testkit::Need::Root, testkit::Need::Fuse]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = tmp.path().join("root");
    let cache = tmp.path().join("cache");
    // State an older teleportd left with the umask's modes.
    for d in [root.join("snapshots"), cache.join("packs")] {
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in ["1.dat", "1.idx"] {
        std::fs::write(cache.join("packs").join(f), b"").unwrap();
        std::fs::set_permissions(
            cache.join("packs").join(f),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }
    assert!(as_nobody(&["ls", root.join("snapshots").to_str().unwrap()]).is_some());

    let snap = fuse_mount::snapshot::overlay::OverlaySnapshotter::open(&root, None).unwrap();
    let _client =
        Client::new("http://127.0.0.1:9", None, &cache, ClientOptions::default()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let m = rt
        .block_on(fuse_mount::snapshot::Snapshotter::prepare(
            &snap,
            "k".into(),
            String::new(),
            Default::default(),
        ))
        .unwrap();
    for d in [
        root.clone(),
        root.join("snapshots"),
        root.join("merged"),
        root.join("snapshots/1"),
    ] {
        assert_eq!(mode(&d), 0o700, "{d:?}");
    }
    for d in [
        cache.clone(),
        cache.join("packs"),
        cache.join("index"),
        cache.join("tmp"),
    ] {
        assert_eq!(mode(&d), 0o700, "{d:?}");
    }
    for f in ["1.dat", "1.idx"] {
        assert_eq!(mode(&cache.join("packs").join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&root.join("metadata.json")), 0o600);
    // The container's `/` keeps the usual mode; nobody reaches it except through a mount.
    assert_eq!(mode(Path::new(&m[0].source)), 0o755);
    for p in [
        root.join("snapshots"),
        root.join("snapshots/1/fs"),
        cache.join("packs"),
    ] {
        assert!(as_nobody(&["ls", p.to_str().unwrap()]).is_none(), "{p:?}");
    }
}

/// Makes one layer of `names` holding `files`, mounts it merged with `neighbour_ahead`, reads
/// the files at `picks` in order (checking their bytes) and returns the mount's counters.
fn read_picked(
    names: &[&'static str],
    files: &[Vec<u8>],
    picks: &[usize],
    neighbour_ahead: u64,
) -> fuse_mount::fetch::CountersSnapshot {
    let mut items = vec![Item::Dir("lib", 0o755, 0)];
    for (name, data) in names.iter().zip(files) {
        items.push(Item::File(name, 0o644, 0, data.clone()));
    }
    let env = env_of(&[tar_layer(&items)], false);
    let _guard = NoMountsLeft(env.root.clone());
    let m = mkdir(&env.root.join("mnt/m"));
    let o = MountOptions {
        neighbour_ahead,
        ..opts()
    };
    let h = mount_merged(&m, env.layers.clone(), &o).unwrap();
    for &i in picks {
        assert_eq!(
            std::fs::read(m.join(names[i])).unwrap(),
            files[i],
            "{}",
            names[i]
        );
    }
    let s = h.counters().snapshot();
    h.unmount().unwrap();
    s
}

/// A first start without a profile reads a directory's small files one after another (an
/// interpreter's imports): the first miss brings its tar neighbours in the same request.
#[test]
fn fs_a_small_files_first_miss_fetches_its_neighbours_in_one_request() {
    if !testkit::require(&[testkit::Need::Root, testkit::Need::Fuse]) {
        return;
    }
    const NAMES: [&str; 8] = [
        "lib/m0.py",
        "lib/m1.py",
        "lib/m2.py",
        "lib/m3.py",
        "lib/m4.py",
        "lib/m5.py",
        "lib/m6.py",
        "lib/m7.py",
    ];
    let files: Vec<Vec<u8>> = (0..NAMES.len())
        .map(|i| bytes(40 + i as u64, 40_000))
        .collect();
    let all: Vec<usize> = (0..NAMES.len()).collect();
    let read_all = |neighbour_ahead| read_picked(&NAMES, &files, &all, neighbour_ahead);
    let alone = read_all(0);
    let with = read_all(512 << 10);
    assert!(
        alone.demand_fetches >= 4,
        "one request per file or two: {alone:?}"
    );
    assert_eq!(
        with.demand_fetches, 1,
        "neighbours came with the first miss: {with:?}"
    );
    assert_eq!(with.fetch_errors, 0);
    // Nothing past the layer's end, and no chunk twice.
    assert!(
        with.bytes_fetched <= alone.bytes_fetched,
        "{with:?} vs {alone:?}"
    );
}

/// The start trace lists a mount's opens (with paths) and reads in order, with each read's
/// wait and whether it was cached; neighbour-ahead turns later files' misses into hits.
#[test]
fn fs_trace_lists_opens_and_reads_in_order_with_misses_and_waits() {
    if !testkit::require(&[testkit::Need::Root, testkit::Need::Fuse]) {
        return;
    }
    use fuse_mount::trace::{self, Op, Summary};
    const NAMES: [&str; 8] = [
        "lib/t0.py",
        "lib/t1.py",
        "lib/t2.py",
        "lib/t3.py",
        "lib/t4.py",
        "lib/t5.py",
        "lib/t6.py",
        "lib/t7.py",
    ];
    let names = NAMES;
    let files: Vec<Vec<u8>> = (0..8).map(|i| bytes(70 + i, 40_000)).collect();
    let mut items = vec![Item::Dir("lib", 0o755, 0)];
    for (name, data) in names.iter().zip(&files) {
        items.push(Item::File(name, 0o644, 0, data.clone()));
    }
    let layer = tar_layer(&items);
    // Process-wide ring: other tests' mounts may record too; each run reads only its mount's.
    trace::set_capacity(1 << 20);
    let run = |neighbour_ahead: u64| {
        let env = env_of(std::slice::from_ref(&layer), false);
        let _guard = NoMountsLeft(env.root.clone());
        let m = mkdir(&env.root.join("mnt/m"));
        let o = MountOptions {
            neighbour_ahead,
            ..opts()
        };
        let cursor = trace::cursor();
        let h = mount_merged(&m, env.layers.clone(), &o).unwrap();
        for (name, want) in names.iter().zip(&files) {
            assert_eq!(&std::fs::read(m.join(name)).unwrap(), want, "{name}");
        }
        h.unmount().unwrap();
        let id = trace::mount_id(&m.to_string_lossy());
        let mine: Vec<trace::Event> = trace::page(cursor, usize::MAX)
            .events
            .into_iter()
            .filter(|e| e.mount == id)
            .collect();
        mine
    };
    let alone = run(0);
    let opens: Vec<&str> = alone
        .iter()
        .filter(|e| e.op == Op::Open)
        .filter_map(|e| e.path.as_deref())
        .collect();
    let want: Vec<String> = names.iter().map(|n| format!("/{n}")).collect();
    assert_eq!(
        opens, want,
        "one open per file, in the order they were read"
    );
    assert!(alone.windows(2).all(|w| w[0].seq < w[1].seq));
    // Each open says where its file lies: one layer, in tar order.
    let at: Vec<trace::DataAt> = alone
        .iter()
        .filter(|e| e.op == Op::Open)
        .filter_map(|e| e.data)
        .collect();
    assert_eq!(at.len(), 8);
    assert!(at.iter().all(|d| d.layer == 0));
    assert!(
        at.windows(2).all(|w| w[1].offset >= w[0].offset + 40_000),
        "{at:?}"
    );
    let s = Summary::of(&alone);
    assert_eq!(s.read_bytes, 8 * 40_000, "{s:?}");
    assert!(s.miss_reads >= 4 && s.miss_wait_s > 0.0, "{s:?}");
    assert_eq!(s.failed, 0);
    let with = Summary::of(&run(512 << 10));
    assert!(with.miss_reads < s.miss_reads, "{with:?} vs {s:?}");
    assert!(with.cached_reads > s.cached_reads, "{with:?} vs {s:?}");
}
