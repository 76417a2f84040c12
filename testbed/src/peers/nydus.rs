//! A nydus node: containerd with `containerd-nydus-grpc` (Debian's `nydus-snapshotter`) as its
//! proxy snapshotter and `nydusd` in FUSE mode (`fs_driver = "fusedev"`), and [`convert`], which
//! turns an image into the shape nydusify / `nerdctl image convert --nydus` give it, with
//! `nydus-image` (from `cargo install nydus-rs`):
//!
//! - each layer becomes a RAFS v6 data blob (`nydus-image create --type tar-rafs
//!   --blob-inline-meta --features blob-toc`, the nydus-snapshotter converter's arguments), media
//!   type [`MT_NYDUS_BLOB`], annotated [`ANN_NYDUS_BLOB`];
//! - the layers' metadata are merged (`nydus-image merge`) into one bootstrap, shipped as a last
//!   gzip layer holding `image/image.boot`, annotated [`ANN_NYDUS_BOOTSTRAP`] and
//!   [`ANN_FS_VERSION`];
//! - the config's diff IDs are the blobs' digests and the bootstrap tar's.
//!
//! On pull the snapshotter skips the data layers (containerd downloads nothing of them), lets
//! containerd unpack the bootstrap layer, and at container creation starts one `nydusd` per
//! image over that bootstrap, which fetches chunks from the registry by HTTP Range.
//!
//! Everything the snapshotter and its nydusd write lives under the node's directory (root,
//! sockets, logs, cache, FUSE mount points): unlike SOCI, no private mount namespace is needed.
//! They reach the registry over plain HTTP on loopback (`scheme = "http"` in nydusd's config).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sha2::Digest as _;

use crate::error::{Error, Result};
use crate::mounts;
use crate::node::{self, Node, NodeConfig, NodeKind, NodePaths};
use crate::process::Daemon;

/// The snapshotter name containerd knows nydus by.
pub const SNAPSHOTTER: &str = "nydus";

/// Where `scripts/get-peers.sh nydus` puts the binaries (relative to the workspace root).
pub const PEER_DIR: &str = "out/peers/nydus";

/// A nydus data blob layer (nydus-snapshotter `converter.MediaTypeNydusBlob`).
pub const MT_NYDUS_BLOB: &str = "application/vnd.oci.image.layer.nydus.blob.v1";
/// Marks a data blob layer: the snapshotter skips its download.
pub const ANN_NYDUS_BLOB: &str = "containerd.io/snapshot/nydus-blob";
/// Marks the bootstrap (metadata) layer: unpacked by containerd, mounted by nydusd.
pub const ANN_NYDUS_BOOTSTRAP: &str = "containerd.io/snapshot/nydus-bootstrap";
/// RAFS version of the bootstrap.
pub const ANN_FS_VERSION: &str = "containerd.io/snapshot/nydus-fs-version";
/// The bootstrap's path inside its layer, where the snapshotter looks for it.
pub const BOOTSTRAP_ENTRY: &str = "image/image.boot";
/// RAFS v6: what containerd + nydus-snapshotter 0.13 expect by default.
pub const FS_VERSION: &str = "6";

const MT_OCI_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The nydus binaries.
#[derive(Debug, Clone)]
pub struct NydusBins {
    /// `containerd-nydus-grpc` (Debian's `nydus-snapshotter`).
    pub snapshotter: PathBuf,
    pub nydusd: PathBuf,
    pub nydus_image: PathBuf,
}

impl NydusBins {
    /// The binaries `get-peers.sh nydus` put under `peer_dir` (`usr/bin/containerd-nydus-grpc`
    /// from the package, `bin/nydusd` and `bin/nydus-image` from `cargo install`).
    pub fn in_peer_dir(peer_dir: &Path) -> Result<NydusBins> {
        let peer_dir = std::path::absolute(peer_dir)
            .map_err(Error::io(format!("resolve {}", peer_dir.display())))?;
        let b = NydusBins {
            snapshotter: peer_dir.join("usr/bin/containerd-nydus-grpc"),
            nydusd: peer_dir.join("bin/nydusd"),
            nydus_image: peer_dir.join("bin/nydus-image"),
        };
        for p in [&b.snapshotter, &b.nydusd, &b.nydus_image] {
            if !p.is_file() {
                return Err(Error::Prerequisites {
                    missing: p.display().to_string(),
                    hint: "run `bash scripts/get-peers.sh nydus`".into(),
                });
            }
        }
        Ok(b)
    }

    /// The versions `get-peers.sh` recorded in `VERSIONS` (the Debian build of the snapshotter
    /// and a crates.io build of nydusd print "unknown"), on one line.
    pub fn versions(&self) -> String {
        let file = self
            .snapshotter
            .ancestors()
            .nth(3)
            .map(|d| d.join("VERSIONS"))
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        let mut out = Vec::new();
        let mut package = None;
        for l in file.lines() {
            if let Some(p) = l.strip_prefix("Package: ") {
                package = Some(p.trim().to_string());
            } else if let (Some(v), Some(p)) = (l.strip_prefix("Version: "), package.take()) {
                out.push(format!("{p} {}", v.trim()));
            } else if !l.trim().is_empty() {
                out.push(l.trim().to_string());
            }
        }
        out.join(", ")
    }
}

fn run_checked(what: &str, cmd: &mut Command, stdin: &[u8]) -> Result<String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::io(format!("{what}: spawn {:?}", cmd.get_program())))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin)
            .map_err(Error::io(format!("{what}: write stdin")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(Error::io(format!("{what}: wait")))?;
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What [`convert`] made of an image.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The nydus image's manifest digest (in the output layout).
    pub manifest_digest: String,
    /// Data blobs (one per source layer) and their total bytes.
    pub blobs: usize,
    pub blob_bytes: u64,
    /// The bootstrap layer (gzip) bytes.
    pub bootstrap_bytes: u64,
}

fn sha256_file(p: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(p).map_err(Error::io(format!("open {}", p.display())))?;
    let mut h = sha2::Sha256::new();
    let n = std::io::copy(&mut f, &mut h).map_err(Error::io(format!("read {}", p.display())))?;
    Ok((hex::encode(h.finalize()), n))
}

fn layout_blob(layout: &Path, hex: &str) -> PathBuf {
    layout.join("blobs/sha256").join(hex)
}

/// Write `bytes` as a blob of `layout`; returns its descriptor fields (digest, size).
fn put_blob(layout: &Path, bytes: &[u8]) -> Result<(String, u64)> {
    let hex = hex::encode(sha2::Sha256::digest(bytes));
    let p = layout_blob(layout, &hex);
    std::fs::write(&p, bytes).map_err(Error::io(format!("write {}", p.display())))?;
    Ok((format!("sha256:{hex}"), bytes.len() as u64))
}

/// The layer's tar, decompressed (gzip, zstd or plain, by its magic) into `dest`.
fn decompress_layer(src: &Path, dest: &Path) -> Result<u64> {
    let io = |what: &Path| Error::io(format!("decompress {}", what.display()));
    let f = std::fs::File::open(src).map_err(io(src))?;
    let mut r = std::io::BufReader::with_capacity(1 << 20, f);
    let head = std::io::BufRead::fill_buf(&mut r).map_err(io(src))?;
    let mut dec: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(r))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(r).map_err(io(src))?)
    } else {
        Box::new(r)
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(dest).map_err(io(dest))?);
    let n = std::io::copy(&mut dec, &mut out).map_err(io(src))?;
    out.flush().map_err(io(dest))?;
    Ok(n)
}

/// Convert the image tagged `tag` in the OCI layout `src` into a nydus image (RAFS v6, one data
/// blob per layer plus a bootstrap layer) in a new OCI layout `dst`, tagged `tag`, using `work`
/// for intermediates (removed afterwards). Blocking: run it off the async workers.
pub fn convert(
    nydus_image: &Path,
    src: &Path,
    tag: &str,
    dst: &Path,
    work: &Path,
) -> Result<Converted> {
    let img = fixtures::squash::read_layout(src, Some(tag))
        .map_err(|e| Error::Invalid(format!("nydus convert: {e}")))?;
    mounts::remove_tree(dst)?;
    mounts::remove_tree(work)?;
    for d in [dst.join("blobs/sha256"), work.join("blobs")] {
        std::fs::create_dir_all(&d).map_err(Error::io(format!("create {}", d.display())))?;
    }
    // 1. One RAFS blob per layer, metadata inlined (so `merge` reads it from the blob itself,
    //    named by its digest as nydus expects).
    let mut blobs: Vec<(String, u64)> = Vec::new();
    for (i, (digest, _mt, _)) in img.layers.iter().enumerate() {
        let tar = work.join(format!("layer-{i}.tar"));
        decompress_layer(&fixtures::image::blob_path(src, digest), &tar)?;
        let out = work.join(format!("blob-{i}"));
        run_checked(
            &format!("nydus-image create (layer {i}, {digest})"),
            Command::new(nydus_image)
                .args(["create", "--log-level", "warn", "--type", "tar-rafs"])
                .args(["--blob-inline-meta", "--features", "blob-toc"])
                .args(["--fs-version", FS_VERSION, "--whiteout-spec", "none"])
                .args(["--prefetch-policy", "fs", "--blob"])
                .arg(&out)
                .arg(&tar),
            // The prefetch list (read from stdin): "/", as the converter passes by default.
            b"/",
        )?;
        let _ = std::fs::remove_file(&tar);
        let (hex, size) = sha256_file(&out)?;
        let named = work.join("blobs").join(&hex);
        std::fs::rename(&out, &named).map_err(Error::io(format!("rename {}", out.display())))?;
        blobs.push((hex, size));
    }
    // 2. Merge the layers' metadata into the image's bootstrap (whiteouts applied here). Each
    //    source is a blob named by its digest; `--blob-dir` is where nydus-image finds them to
    //    extract their inlined metadata.
    let boot = work.join("image.boot");
    let merge_json = work.join("merge.json");
    let mut merge = Command::new(nydus_image);
    merge
        .args(["merge", "--log-level", "warn", "--prefetch-policy", "fs"])
        .arg("--blob-dir")
        .arg(work.join("blobs"))
        .arg("--output-json")
        .arg(&merge_json)
        .arg("--bootstrap")
        .arg(&boot);
    for (hex, _) in &blobs {
        merge.arg(work.join("blobs").join(hex));
    }
    run_checked("nydus-image merge", &mut merge, b"/")?;
    // The blobs the bootstrap refers to, in its blob table's order: the manifest's layers.
    let merged: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&merge_json).map_err(Error::io(format!("read {}", merge_json.display())))?,
    )
    .map_err(|source| Error::Json {
        what: "nydus-image merge --output-json".into(),
        source,
    })?;
    let referenced: Vec<&str> = merged["blobs"]
        .as_array()
        .map(|a| a.iter().filter_map(|b| b.as_str()).collect())
        .unwrap_or_default();
    let ours: Vec<&str> = blobs.iter().map(|(h, _)| h.as_str()).collect();
    if referenced != ours {
        return Err(Error::Invalid(format!(
            "nydus-image merge: the bootstrap refers to blobs {referenced:?}, not the layers' {ours:?}"
        )));
    }
    // 3. The bootstrap layer: a gzip tar holding image/image.boot.
    let boot_bytes = std::fs::read(&boot).map_err(Error::io(format!("read {}", boot.display())))?;
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(boot_bytes.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, BOOTSTRAP_ENTRY, boot_bytes.as_slice())
        .map_err(Error::io("bootstrap tar"))?;
    let tar = tar.into_inner().map_err(Error::io("bootstrap tar"))?;
    let diff_id = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&tar)));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).map_err(Error::io("bootstrap gzip"))?;
    let gz = gz.finish().map_err(Error::io("bootstrap gzip"))?;
    let (boot_digest, boot_size) = put_blob(dst, &gz)?;

    // 4. Blobs into the layout, then config and manifest.
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (hex, size) in &blobs {
        let from = work.join("blobs").join(hex);
        let to = layout_blob(dst, hex);
        std::fs::rename(&from, &to).map_err(Error::io(format!("move {}", from.display())))?;
        layers.push(serde_json::json!({
            "mediaType": MT_NYDUS_BLOB,
            "digest": format!("sha256:{hex}"),
            "size": size,
            "annotations": { ANN_NYDUS_BLOB: "true" },
        }));
        diff_ids.push(serde_json::Value::String(format!("sha256:{hex}")));
    }
    layers.push(serde_json::json!({
        "mediaType": MT_OCI_GZIP,
        "digest": boot_digest,
        "size": boot_size,
        "annotations": { ANN_FS_VERSION: FS_VERSION, ANN_NYDUS_BOOTSTRAP: "true" },
    }));
    diff_ids.push(serde_json::Value::String(diff_id));
    let mut config = img.config.clone();
    config["rootfs"] = serde_json::json!({ "type": "layers", "diff_ids": diff_ids });
    if let Some(h) = config.get_mut("history").and_then(|h| h.as_array_mut()) {
        h.push(serde_json::json!({
            "created_by": "Nydus Converter",
            "comment": "Nydus Bootstrap Layer",
        }));
    }
    let config_bytes = serde_json::to_vec(&config).map_err(|source| Error::Json {
        what: "nydus image config".into(),
        source,
    })?;
    let (config_digest, config_size) = put_blob(dst, &config_bytes)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": emulator::oci::MT_OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": layers,
    });
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|source| Error::Json {
        what: "nydus image manifest".into(),
        source,
    })?;
    let (manifest_digest, manifest_size) = put_blob(dst, &manifest_bytes)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": emulator::oci::MT_OCI_MANIFEST,
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    });
    let write = |name: &str, bytes: &[u8]| {
        let p = dst.join(name);
        std::fs::write(&p, bytes).map_err(Error::io(format!("write {}", p.display())))
    };
    write("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    write(
        "index.json",
        &serde_json::to_vec(&index).map_err(|source| Error::Json {
            what: "index.json".into(),
            source,
        })?,
    )?;
    mounts::remove_tree(work)?;
    Ok(Converted {
        manifest_digest,
        blobs: blobs.len(),
        blob_bytes: blobs.iter().map(|b| b.1).sum(),
        bootstrap_bytes: boot_size,
    })
}

/// Push a layout [`convert`] wrote to `host/repo:tag` (plain HTTP); returns the reference.
pub async fn push(layout: &Path, host: &str, repo: &str, tag: &str) -> Result<String> {
    let reference = format!("{host}/{repo}:{tag}");
    let target = reference
        .parse()
        .map_err(|e| Error::Invalid(format!("reference {reference}: {e}")))?;
    fixtures::push(&fixtures::PushOptions::new(layout, target))
        .await
        .map_err(|e| Error::Registry {
            url: host.into(),
            reason: format!("push {reference}: {e}"),
        })?;
    Ok(reference)
}

/// Everything needed to start a nydus node.
#[derive(Debug, Clone)]
pub struct NydusConfig {
    pub name: String,
    /// The node's own directory (containerd in `containerd/`, nydus in `nydus/`).
    pub dir: PathBuf,
    pub bins: NydusBins,
    /// `host:port` of the registry's plain-HTTP listener (loopback).
    pub registry: String,
    /// CRI `sandbox_image`.
    pub sandbox_image: String,
    pub containerd_bin: PathBuf,
    pub start_timeout: Duration,
    /// nydusd's background prefetch of the whole image after the mount (`fs_prefetch` with
    /// `prefetch_all`, on in nydus-snapshotter's shipped `nydusd-config.fusedev.json`).
    pub prefetch: bool,
    /// As the bed's own nodes ([`NodeConfig::fresh_fs_bytes`]): nydus's root and containerd's
    /// volatile directories on a new loop-backed ext4 at each start and recycle.
    pub fresh_fs_bytes: Option<u64>,
}

impl NydusConfig {
    pub fn new(name: &str, dir: &Path, bins: NydusBins, registry: &str) -> NydusConfig {
        NydusConfig {
            name: name.into(),
            dir: std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()),
            bins,
            registry: registry.into(),
            sandbox_image: String::new(),
            containerd_bin: PathBuf::from("containerd"),
            start_timeout: Duration::from_secs(30),
            prefetch: true,
            fresh_fs_bytes: None,
        }
    }

    fn nydus_dir(&self) -> PathBuf {
        self.dir.join("nydus")
    }
    fn root(&self) -> PathBuf {
        self.dir.join("nydus/root")
    }
    fn socket(&self) -> PathBuf {
        self.dir.join("nydus/s.sock")
    }
}

/// `containerd-nydus-grpc`'s config.toml: every path under `root` (its sockets, nydusd's API
/// sockets, FUSE mount points, logs and blob cache are all derived from it), FUSE mode, one
/// nydusd per image, no system controller, metrics or cgroup (nodes must not share a port or
/// a cgroup), and nydusd not restarted behind our back (a recycle stops it on purpose).
pub fn render_snapshotter_config(
    root: &Path,
    address: &Path,
    nydusd: &Path,
    nydus_image: &Path,
    nydusd_config: &Path,
) -> String {
    let q = |p: &Path| toml_string(&p.to_string_lossy());
    format!(
        "version = 1\n\
         root = {root}\n\
         address = {address}\n\
         daemon_mode = \"dedicated\"\n\
         cleanup_on_close = true\n\
         [system]\n\
         enable = false\n\
         [metrics]\n\
         address = \"\"\n\
         [daemon]\n\
         nydusd_config = {nydusd_config}\n\
         nydusd_path = {nydusd}\n\
         nydusimage_path = {nydus_image}\n\
         fs_driver = \"fusedev\"\n\
         recover_policy = \"none\"\n\
         threads_number = 4\n\
         [cgroup]\n\
         enable = false\n\
         [log]\n\
         level = \"info\"\n\
         log_to_stdout = true\n\
         [snapshot]\n\
         enable_nydus_overlayfs = false\n\
         sync_remove = true\n\
         [cache_manager]\n\
         disable = false\n\
         gc_period = \"24h\"\n",
        root = q(root),
        address = q(address),
        nydusd_config = q(nydusd_config),
        nydusd = q(nydusd),
        nydus_image = q(nydus_image),
    )
}

/// A TOML basic string (paths here carry no control characters; quotes and backslashes are
/// escaped).
fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// nydusd's config template (`--nydusd-config`): the snapshotter fills in the registry host and
/// repository from the image reference. Plain HTTP (the registry's loopback listener); the
/// rest as nydus-snapshotter's `nydusd-config.fusedev.json` ships, `prefetch` switching its
/// `fs_prefetch`.
pub fn render_nydusd_config(prefetch: bool) -> String {
    let v = serde_json::json!({
        "device": {
            "backend": {
                "type": "registry",
                "config": {
                    "scheme": "http",
                    "timeout": 5,
                    "connect_timeout": 5,
                    "retry_limit": 2,
                },
            },
            "cache": { "type": "blobcache" },
        },
        "mode": "direct",
        "digest_validate": false,
        "iostats_files": false,
        "enable_xattr": true,
        "fs_prefetch": {
            "enable": prefetch,
            "threads_count": 8,
            "merging_size": 1_048_576,
            "prefetch_all": prefetch,
        },
    });
    v.to_string()
}

/// `dir/bin/nydusd`: a script that runs `real` with `--rlimit-nofile 0`. nydusd raises its
/// descriptor limit to 1,000,000 by default, which fails with EPERM ("Operation not
/// permitted", nydusd exits at once) where the hard limit is lower and the process lacks
/// CAP_SYS_RESOURCE (sandboxed runners, this machine); the snapshotter builds nydusd's command
/// line itself, so the flag goes through this wrapper. 0 keeps the node's limit.
fn write_nydusd_wrapper(dir: &Path, real: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).map_err(Error::io(format!("create {}", bin.display())))?;
    let p = bin.join("nydusd");
    let real = real.to_string_lossy().replace('\'', "'\\''");
    std::fs::write(
        &p,
        format!("#!/bin/sh\nexec '{real}' \"$@\" --rlimit-nofile 0\n"),
    )
    .map_err(Error::io(format!("write {}", p.display())))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
        .map_err(Error::io(format!("chmod {}", p.display())))?;
    Ok(p)
}

/// PIDs of `nydusd` processes whose arguments name a path under `dir` (the ones a node's
/// snapshotter started: their API sockets and mount points are under its root).
pub fn nydusd_pids_under(dir: &Path) -> Vec<u32> {
    let want = dir.to_string_lossy().into_owned();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_nydusd = args
                .first()
                .is_some_and(|a| a.rsplit('/').next() == Some("nydusd"));
            is_nydusd && args.iter().any(|a| a.starts_with(&want))
        })
        .collect()
}

/// A running nydus node. Dropping it stops containerd, the snapshotter, its nydusd processes,
/// and unmounts what they left.
#[derive(Debug)]
pub struct NydusNode {
    cfg: NydusConfig,
    // Field order is drop order: containerd first, the snapshotter second.
    node: Option<Node>,
    snapshotter: Option<Daemon>,
}

impl NydusNode {
    /// Start the snapshotter, then containerd; returns once CRI answers.
    pub async fn start(cfg: NydusConfig) -> Result<NydusNode> {
        let mut n = NydusNode {
            cfg,
            node: None,
            snapshotter: None,
        };
        n.boot().await?;
        Ok(n)
    }

    /// The containerd node (CRI, paths, cgroup parent) for pods and pulls.
    pub fn node(&self) -> &Node {
        // invariant: set by boot(), which every constructor runs.
        #[allow(clippy::expect_used)]
        self.node.as_ref().expect("nydus node booted")
    }

    pub fn sandbox_image(&self) -> &str {
        &self.cfg.sandbox_image
    }

    pub fn snapshotter_pid(&self) -> Option<u32> {
        self.snapshotter.as_ref().map(Daemon::pid)
    }

    /// The snapshotter's and nydusd's config texts, for the report.
    pub fn config_text(&self) -> String {
        let d = self.cfg.nydus_dir();
        let read = |n: &str| std::fs::read_to_string(d.join(n)).unwrap_or_default();
        format!(
            "# config.toml\n{}\n# nydusd-config.json\n{}\n",
            read("config.toml"),
            read("nydusd-config.json")
        )
    }

    /// The snapshotter's log (with nydusd's, under its root's `logs/`).
    pub fn log(&self) -> PathBuf {
        self.cfg.nydus_dir().join("snapshotter.log")
    }

    /// The last lines of every nydusd log under the node's root (`logs/<daemon>/`), for
    /// errors: nydusd reports there, not to the snapshotter's log.
    pub fn nydusd_log_tails(&self) -> String {
        let mut out = String::new();
        let Ok(daemons) = std::fs::read_dir(self.cfg.root().join("logs")) else {
            return out;
        };
        for d in daemons.flatten() {
            for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                out.push_str(&crate::process::log_tail(&f.path(), 20));
            }
        }
        out
    }

    /// The node's running nydusd processes.
    pub fn nydusd_pids(&self) -> Vec<u32> {
        nydusd_pids_under(&self.cfg.dir)
    }

    /// Where the node's directory is (everything it writes is below).
    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }

    async fn boot(&mut self) -> Result<()> {
        let nd = self.cfg.nydus_dir();
        let root = self.cfg.root();
        if let Some(bytes) = self.cfg.fresh_fs_bytes {
            let containerd = NodePaths::new(&self.cfg.dir.join("containerd"));
            let mut targets: Vec<&Path> = vec![&root];
            targets.extend(containerd.volatile());
            node::fresh_filesystem(&self.cfg.dir, bytes, &targets)?;
        }
        std::fs::create_dir_all(&root).map_err(Error::io(format!("create {}", root.display())))?;
        let nydusd = write_nydusd_wrapper(&nd, &self.cfg.bins.nydusd)?;
        let nydusd_config = nd.join("nydusd-config.json");
        std::fs::write(&nydusd_config, render_nydusd_config(self.cfg.prefetch))
            .map_err(Error::io(format!("write {}", nydusd_config.display())))?;
        let socket = self.cfg.socket();
        let _ = std::fs::remove_file(&socket);
        let config = nd.join("config.toml");
        std::fs::write(
            &config,
            render_snapshotter_config(
                &root,
                &socket,
                &nydusd,
                &self.cfg.bins.nydus_image,
                &nydusd_config,
            ),
        )
        .map_err(Error::io(format!("write {}", config.display())))?;
        let mut cmd = Command::new(&self.cfg.bins.snapshotter);
        cmd.arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(&root)
            .arg("--address")
            .arg(&socket)
            .arg("--nydusd-config")
            .arg(&nydusd_config)
            .arg("--log-to-stdout");
        let mut d = Daemon::spawn("containerd-nydus-grpc", cmd, &self.log())?;
        tracing::info!(node = %self.cfg.name, pid = d.pid(), "containerd-nydus-grpc started");
        d.wait_for_socket(&socket, &self.cfg.name, self.cfg.start_timeout)
            .await?;
        let mut nc = NodeConfig::new(
            &self.cfg.name,
            &self.cfg.dir.join("containerd"),
            NodeKind::Shuttle,
        );
        nc.sandbox_image = self.cfg.sandbox_image.clone();
        nc.registries = vec![self.cfg.registry.clone()];
        nc.proxy_snapshotter = Some((SNAPSHOTTER.into(), socket));
        nc.containerd_bin = self.cfg.containerd_bin.clone();
        nc.start_timeout = self.cfg.start_timeout;
        self.snapshotter = Some(d);
        self.node = Some(Node::start(nc).await?);
        Ok(())
    }

    /// Stop containerd (pods drained), the snapshotter, its nydusd processes; unmount.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(n) = self.node.as_mut() {
            n.stop().await?;
        }
        self.halt_nydus();
        Ok(())
    }

    fn halt_nydus(&mut self) {
        if let Some(mut d) = self.snapshotter.take() {
            d.stop(Duration::from_secs(10));
        }
        // nydusd outlives its snapshotter by design (for live upgrades): ours are found by
        // their arguments (paths under this node's directory) and killed.
        crate::process::kill_trees(&nydusd_pids_under(&self.cfg.dir));
        if let Err(e) = mounts::unmount_all_under(&self.cfg.dir) {
            tracing::warn!(node = %self.cfg.name, error = %e, "nydus node unmount");
        }
    }

    /// Stop, wipe everything the node learned (containerd's and nydus's), start again.
    pub async fn recycle(&mut self) -> Result<()> {
        self.stop().await?;
        mounts::remove_tree(&self.cfg.root())?;
        if let Some(n) = self.node.take() {
            n.destroy().await?;
        }
        self.boot().await
    }

    /// Stop the node and delete its directory.
    pub async fn destroy(mut self) -> Result<()> {
        if let Some(n) = self.node.take() {
            n.destroy().await?;
        }
        self.halt_nydus();
        mounts::remove_tree(&self.cfg.dir)
    }
}

impl Drop for NydusNode {
    fn drop(&mut self) {
        self.node = None;
        self.halt_nydus();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshotter_config_keeps_every_path_under_the_root() {
        let t = render_snapshotter_config(
            Path::new("/tmp/n/root"),
            Path::new("/tmp/n/s.sock"),
            Path::new("/p/bin/nydusd"),
            Path::new("/p/bin/nydus-image"),
            Path::new("/tmp/n/nydusd-config.json"),
        );
        let v: toml::Value = toml::from_str(&t).unwrap();
        assert_eq!(v["root"].as_str(), Some("/tmp/n/root"));
        assert_eq!(v["address"].as_str(), Some("/tmp/n/s.sock"));
        assert_eq!(v["daemon"]["fs_driver"].as_str(), Some("fusedev"));
        assert_eq!(v["daemon"]["nydusd_path"].as_str(), Some("/p/bin/nydusd"));
        assert_eq!(v["system"]["enable"].as_bool(), Some(false));
        assert_eq!(v["cgroup"]["enable"].as_bool(), Some(false));
        assert_eq!(v["metrics"]["address"].as_str(), Some(""));
    }

    #[test]
    fn nydusd_config_is_plain_http_registry_with_prefetch_switch() {
        for prefetch in [true, false] {
            let v: serde_json::Value =
                serde_json::from_str(&render_nydusd_config(prefetch)).unwrap();
            assert_eq!(v["device"]["backend"]["type"], "registry");
            assert_eq!(v["device"]["backend"]["config"]["scheme"], "http");
            assert_eq!(v["fs_prefetch"]["enable"], prefetch);
            assert_eq!(v["fs_prefetch"]["prefetch_all"], prefetch);
        }
    }
}
