//! Test images built on the fly: the two-layer busybox image of the node tests (an OCI archive
//! for `ctr import` or skopeo), gzip tar layers, deterministic bytes.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

/// The static busybox the node tests' image carries.
pub const BUSYBOX: &str = "/bin/busybox";

/// One entry of a test layer.
pub enum Node<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Deterministic, cheap, incompressible bytes.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(raw).unwrap();
    gz.finish().unwrap()
}

/// Returns (gzip blob, uncompressed tar) for the nodes.
pub fn layer(nodes: &[Node<'_>]) -> (Vec<u8>, Vec<u8>) {
    let mut b = tar::Builder::new(Vec::new());
    for n in nodes {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match n {
            Node::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                h.set_mode(*mode);
                b.append_data(&mut h, p, *data).unwrap();
            }
            Node::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            Node::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                b.append_link(&mut h, p, target).unwrap();
            }
        }
    }
    let tar = b.into_inner().unwrap();
    (gzip(&tar), tar)
}

/// A gzip-compressed tar with the given regular files.
pub fn gzip_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let nodes: Vec<Node<'_>> = files.iter().map(|(p, d)| Node::File(p, d, 0o644)).collect();
    layer(&nodes).0
}

/// Writes an OCI image-layout tar (for `ctr images import` or skopeo) with `layers` and the
/// reference `name` (annotation `io.containerd.image.name`, tag `1`).
pub fn oci_archive(path: &Path, name: &str, layers: &[(Vec<u8>, Vec<u8>)]) {
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |bytes: Vec<u8>| -> (String, usize) {
        let d = format!("sha256:{}", sha256_hex(&bytes));
        let n = bytes.len();
        blobs.push((d.clone(), bytes));
        (d, n)
    };
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|(_, tar)| format!("sha256:{}", sha256_hex(tar)))
        .collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/busybox", "sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let (cd, cs) = add(serde_json::to_vec(&config).unwrap());
    let layer_descs: Vec<_> = layers
        .iter()
        .map(|(gz, _)| {
            let (d, s) = add(gz.clone());
            serde_json::json!({"mediaType": emulator::oci::MT_OCI_LAYER_GZIP, "digest": d, "size": s})
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": emulator::oci::MT_OCI_MANIFEST,
        "config": {"mediaType": emulator::oci::MT_OCI_CONFIG, "digest": cd, "size": cs},
        "layers": layer_descs,
    });
    let (md, ms) = add(serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": emulator::oci::MT_OCI_MANIFEST,
            "digest": md, "size": ms,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "1"},
        }],
    });
    let mut t = tar::Builder::new(File::create(path).unwrap());
    let mut put = |p: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        t.append_data(&mut h, p, data).unwrap();
    };
    put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    put("index.json", &serde_json::to_vec(&index).unwrap());
    for (d, bytes) in &blobs {
        put(
            &format!("blobs/sha256/{}", d.trim_start_matches("sha256:")),
            bytes,
        );
    }
    t.finish().unwrap();
}

/// The two-layer test image: busybox + files in layer 1; layer 2 overwrites one file, adds one,
/// whites one out and makes a directory opaque.
pub fn test_image(path: &Path, name: &str) {
    let busybox = fs::read(BUSYBOX).unwrap();
    let l1 = layer(&[
        Node::Dir("bin"),
        Node::File("bin/busybox", &busybox, 0o755),
        Node::Symlink("bin/sh", "busybox"),
        Node::Dir("etc"),
        Node::File("etc/hello.txt", b"hello from layer one\n", 0o644),
        Node::Dir("data"),
        Node::File("data/keep.txt", b"kept\n", 0o644),
        Node::File("data/gone.txt", b"should be whited out\n", 0o644),
        Node::Dir("data/opaque"),
        Node::File("data/opaque/old.txt", b"hidden by opaque\n", 0o644),
    ]);
    let l2 = layer(&[
        Node::Dir("etc"),
        Node::File("etc/hello.txt", b"hello from layer two\n", 0o644),
        Node::Dir("data"),
        Node::File("data/.wh.gone.txt", b"", 0o644),
        Node::File("data/new.txt", b"added in layer two\n", 0o644),
        Node::Dir("data/opaque"),
        Node::File("data/opaque/.wh..wh..opq", b"", 0o644),
        Node::File("data/opaque/fresh.txt", b"fresh\n", 0o644),
    ]);
    oci_archive(path, name, &[l1, l2]);
}

/// Shell command listing the image's tree and file hashes inside a container.
pub const TREE_CMD: &str = "cd / && /bin/busybox find bin etc data | /bin/busybox sort && /bin/busybox find bin etc data -type f | /bin/busybox sort | /bin/busybox xargs /bin/busybox sha256sum";

/// What [`TREE_CMD`] must print for [`test_image`]: layer 2 over layer 1 with the whiteout and
/// the opaque directory applied.
pub fn expected_tree() -> String {
    let paths = [
        "bin",
        "bin/busybox",
        "bin/sh",
        "data",
        "data/keep.txt",
        "data/new.txt",
        "data/opaque",
        "data/opaque/fresh.txt",
        "etc",
        "etc/hello.txt",
    ];
    let busybox = fs::read(BUSYBOX).unwrap();
    let files: [(&str, &[u8]); 5] = [
        ("bin/busybox", &busybox),
        ("data/keep.txt", b"kept\n"),
        ("data/new.txt", b"added in layer two\n"),
        ("data/opaque/fresh.txt", b"fresh\n"),
        ("etc/hello.txt", b"hello from layer two\n"),
    ];
    let mut out = String::new();
    for p in paths {
        out.push_str(p);
        out.push('\n');
    }
    for (p, data) in files {
        out.push_str(&format!("{}  {p}\n", sha256_hex(data)));
    }
    out
}
