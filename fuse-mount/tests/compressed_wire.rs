//! Compressed bytes on the wire, end to end: an in-process registry-mock produces and offers
//! each layer's data as zstd frames, a node reads files over real FUSE through them (right
//! bytes, far fewer wire bytes), falls back to plain ranges with `--wire-compression off` or
//! against a registry without frames, and refuses a corrupted frame with EIO (its good
//! neighbours still read right). Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use emulator::Digest;
use fuse_mount::fetch::{Client, ClientOptions, CountersSnapshot, MountInfo, MountStatus};
use fuse_mount::fs::{mount_merged, MountOptions};
use testkit::registry::TestRegistry;
use testkit::NoMountsLeft;

const REPO: &str = "apps/zwire";

/// Compressible, file-like bytes (source code with some noise), distinct per seed.
fn text(len: usize, seed: u64) -> Vec<u8> {
    let noise = testkit::image::random_bytes(len / 24 + 1, seed);
    let line = b"    return render_template('index.html', votes=redis.get(key))\n";
    (0..len)
        .map(|i| {
            if i % 24 == 0 {
                noise[i / 24]
            } else {
                line[i % line.len()]
            }
        })
        .collect()
}

fn want_main() -> Vec<u8> {
    text(900_000, 1)
}

fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("app/main.py", want_main()),
        ("app/lib/small.py", text(3_000, 2)),
        ("app/lib/other.py", text(40_000, 3)),
        ("bin/blob", testkit::image::random_bytes(200_000, 4)),
    ]
}

/// A registry (configured by `f`) holding the test image, expanded; its `/mount` answer.
fn registry_with_image(
    rt: &tokio::runtime::Runtime,
    f: impl FnOnce(&mut registry_mock::Config),
) -> (TestRegistry, MountInfo) {
    let t = rt.block_on(TestRegistry::start_with(|cfg| {
        cfg.teleport_repos = vec![REPO.into()];
        f(cfg);
    }));
    let fs = files();
    let items: Vec<(&str, &[u8])> = fs.iter().map(|(p, b)| (*p, &b[..])).collect();
    let layer = testkit::image::gzip_tar(&items);
    let c = testkit::registry::client();
    let p = rt.block_on(testkit::registry::push_image(
        &c,
        &t.url,
        REPO,
        "v1",
        &[layer],
    ));
    let client = Client::new(
        &t.url,
        None,
        t.dir.path().join("probe-cache"),
        ClientOptions::default(),
    )
    .unwrap();
    let info = wait_ready(&client, &p.manifest);
    (t, info)
}

fn wait_ready(client: &Client, digest: &Digest) -> MountInfo {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match client.resolve_blocking(REPO, digest).unwrap() {
            MountStatus::Ready(info) => return std::sync::Arc::unwrap_or_clone(info),
            MountStatus::Expanding => {}
            other => panic!("/mount: {other}"),
        }
        assert!(Instant::now() < deadline, "expansion did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Mount the image with a fresh node cache under `root/name`, read every file through FUSE and
/// compare; returns the mount's counters and the registry's served bytes of `kind`s deltas.
fn read_all(
    rt: &tokio::runtime::Runtime,
    t: &TestRegistry,
    info: &MountInfo,
    root: &Path,
    name: &str,
    opts: ClientOptions,
) -> (CountersSnapshot, u64, u64) {
    let c = testkit::registry::client();
    let served = |kind: &str| {
        rt.block_on(testkit::registry::metric(
            &c,
            &t.url,
            &format!("registry_bytes_served_total{{kind=\"{kind}\"}}"),
        ))
    };
    let (frames0, data0) = (served("expanded_frames"), served("expanded_data"));
    let client = Client::new(&t.url, None, root.join(name).join("cache"), opts).unwrap();
    let layers: Vec<_> = info
        .layers
        .iter()
        .map(|l| client.open_layer_blocking(REPO, l).unwrap())
        .collect();
    let mnt = root.join(name).join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mopts = MountOptions {
        prefetch_on_open: false,
        ..Default::default()
    };
    let m = mount_merged(&mnt, layers, &mopts).unwrap();
    for (path, want) in files() {
        let got = std::fs::read(mnt.join(path)).unwrap();
        assert!(got == want, "{name}: {path} differs");
    }
    let s = m.counters().snapshot();
    m.unmount().unwrap();
    (
        s,
        served("expanded_frames") - frames0,
        served("expanded_data") - data0,
    )
}

fn root_dir(tmp: &tempfile::TempDir) -> PathBuf {
    tmp.path().to_path_buf()
}

#[test]
fn node_reads_through_compressed_frames_and_falls_back_to_plain_ranges() {
    if !testkit::require(&[testkit::Need::Root, testkit::Need::Fuse]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = root_dir(&tmp);
    let _guard = NoMountsLeft(root.clone());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (t, info) = registry_with_image(&rt, |_| {});
    let frames = info.layers[0].frames.as_ref().expect("frames offered");
    assert!(frames.data.size < info.layers[0].data.size);

    // Default node: frames on the wire, far fewer bytes than it delivers.
    let (z, z_frames, z_data) = read_all(&rt, &t, &info, &root, "zstd", ClientOptions::default());
    assert!(z.frames_fetched > 0 && z.fetch_errors == 0, "{z:?}");
    assert!(
        z.wire_bytes * 2 < z.bytes_fetched,
        "wire {} vs delivered {}",
        z.wire_bytes,
        z.bytes_fetched
    );
    // The registry's counters say the same: frame bytes, no plain expanded data.
    assert_eq!(z_frames, z.wire_bytes);
    assert_eq!(z_data, 0);

    // `--wire-compression off`: plain ranges, wire bytes = delivered bytes.
    let off = ClientOptions {
        compressed_wire: false,
        ..Default::default()
    };
    let (p, p_frames, p_data) = read_all(&rt, &t, &info, &root, "off", off);
    assert_eq!(p.frames_fetched, 0, "{p:?}");
    assert_eq!(p.wire_bytes, p.bytes_fetched);
    assert_eq!((p_frames, p_data), (0, p.wire_bytes));
    assert!(z.wire_bytes * 2 < p.wire_bytes, "{z:?} vs {p:?}");
    assert_eq!(z.bytes_read, p.bytes_read);
}

#[test]
fn a_registry_without_frames_is_read_by_plain_ranges() {
    if !testkit::require(&[testkit::Need::Root, testkit::Need::Fuse]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = root_dir(&tmp);
    let _guard = NoMountsLeft(root.clone());
    let rt = tokio::runtime::Runtime::new().unwrap();
    // An older registry (or one with `--wire-compression off`): no `frames` in /mount.
    let (t, info) = registry_with_image(&rt, |cfg| cfg.wire_frame_size = None);
    assert!(info.layers[0].frames.is_none());
    let (s, frames, data) = read_all(&rt, &t, &info, &root, "old", ClientOptions::default());
    assert_eq!(s.frames_fetched, 0, "{s:?}");
    assert_eq!(s.wire_bytes, s.bytes_fetched);
    assert_eq!((frames, data), (0, s.wire_bytes));
}

#[test]
fn a_corrupted_frame_fails_the_read_with_eio_and_no_bad_bytes() {
    if !testkit::require(&[testkit::Need::Root, testkit::Need::Fuse]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = root_dir(&tmp);
    let _guard = NoMountsLeft(root.clone());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (t, info) = registry_with_image(&rt, |_| {});
    // Rot the registry's compressed blob on disk: every frame from the second one on.
    let layer = &info.layers[0];
    let zpath = t
        .dir
        .path()
        .join("expanded/sha256")
        .join(layer.digest.hex())
        .join("data.zst");
    let mut z = std::fs::read(&zpath).unwrap();
    let client = Client::new(
        &t.url,
        None,
        root.join("cache"),
        ClientOptions {
            read_deadline: Duration::from_secs(3),
            ..Default::default()
        },
    )
    .unwrap();
    let handle = client.open_layer_blocking(REPO, layer).unwrap();
    let main = handle
        .index()
        .entries
        .iter()
        .find(|e| e.path == "app/main.py")
        .unwrap()
        .clone();
    // The frames holding main.py's second half.
    let table_url = format!("{}{}", t.url, layer.frames.as_ref().unwrap().table.url);
    let table_bytes = rt.block_on(async {
        let c = testkit::registry::client();
        c.get(table_url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    });
    let table = emulator::frames::FrameTable::decode(&table_bytes).unwrap();
    let (first, last) = table
        .covering(
            main.data_offset + main.size / 2,
            main.data_offset + main.size,
        )
        .unwrap();
    for f in &table.frames[first..=last] {
        let a = f.compressed_offset as usize + 16;
        for b in &mut z[a..(f.compressed_end() as usize).min(a + 64)] {
            *b ^= 0xa5;
        }
    }
    std::fs::write(&zpath, &z).unwrap();
    let blob = handle
        .index()
        .entries
        .iter()
        .find(|e| e.path == "bin/blob")
        .unwrap();
    let (blob_first, _) = table
        .covering(blob.data_offset, blob.data_offset + blob.size)
        .unwrap();
    assert!(
        blob_first > last,
        "bin/blob shares no frame with the damage"
    );

    let mnt = root.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mopts = MountOptions {
        prefetch_on_open: false,
        ..Default::default()
    };
    let m = mount_merged(&mnt, vec![handle], &mopts).unwrap();
    let err = std::fs::read(mnt.join("app/main.py")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(m.counters().snapshot().fetch_errors >= 1);
    // The file's first half (frames untouched) reads right; the damaged part never does.
    let f = std::fs::File::open(mnt.join("app/main.py")).unwrap();
    let mut head = vec![0u8; (main.size / 4) as usize];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0).unwrap();
    assert!(head == want_main()[..head.len()]);
    let mut tail = vec![0u8; 4096];
    let r = std::os::unix::fs::FileExt::read_exact_at(&f, &mut tail, main.size - 4096);
    assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EIO));
    drop(f);
    // Other files (frames untouched) read fine.
    let want = files();
    assert_eq!(std::fs::read(mnt.join("bin/blob")).unwrap(), want[3].1);
    m.unmount().unwrap();
}
