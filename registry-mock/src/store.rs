//! On-disk storage: content-addressed blobs plus per-repository links, tags and attributes.
//!
//! Layout under the root:
//! ```text
//! blobs/sha256/ab/abcd…                 blob bytes (layers, configs, manifests)
//! uploads/<uuid>                        upload in progress
//! tmp/                                  staging for atomic writes (same filesystem)
//! repos/<name…>/_blobs/<hex>            blob linked to the repository (pushed or mounted)
//! repos/<name…>/_manifests/<hex>        manifest in the repository; content = its media type
//! repos/<name…>/_tags/<tag>             content = manifest digest
//! repos/<name…>/_attrs.json             ACR attributes (created time, teleportEnabled)
//! repos/<name…>/_expansion/<hex>.json   per-image expansion record
//! repos/<name…>/_profiles/<hex>.json    learned start profile of a layer, per repository
//!                                       (see `profile.rs`)
//! expanded/sha256/<layer-hex>/          expansion output: index, data, state.json
//! ```
//! Repository components never start with `_` (spec regex), so the `_` entries cannot collide.
//! Every write is atomic (temp file, fsync, rename, fsync dir). The store never sees HTTP types.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use emulator::Digest;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::names::RepoName;

#[derive(Clone, Debug)]
pub struct Store {
    root: Arc<PathBuf>,
}

/// ACR repository attributes we persist.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RepoAttrs {
    pub created_time: u64,
    pub last_update_time: u64,
    pub teleport_enabled: bool,
}

/// An image (manifest digest) requested for expansion in a repository.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    pub requested_time: u64,
    pub media_type: String,
    /// Layers of an image manifest (empty for an index).
    pub layers: Vec<LayerRef>,
    /// Child manifests of an index (empty for an image manifest).
    #[serde(default)]
    pub children: Vec<ChildRef>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LayerRef {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChildRef {
    pub digest: Digest,
    pub media_type: String,
    #[serde(default)]
    pub platform: serde_json::Value,
}

fn read_opt(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path)(e)),
    }
}

fn remove_opt(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path)(e)),
    }
}

fn list_dir(path: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(path) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path)(e)),
    };
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(Error::io(path))?;
        if let Some(n) = ent.file_name().to_str() {
            out.push(n.to_string());
        }
    }
    out.sort();
    Ok(out)
}

/// fsync a directory so a rename into it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(Error::io(dir))
}

pub fn random_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

impl Store {
    pub fn open(root: &Path) -> Result<Store> {
        for d in ["blobs/sha256", "uploads", "tmp", "repos", "expanded/sha256"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(Error::io(&p))?;
        }
        // Leftover partial uploads and staging files from an earlier run are garbage.
        for d in ["uploads", "tmp"] {
            let p = root.join(d);
            for n in list_dir(&p)? {
                let _ = fs::remove_file(p.join(n));
            }
        }
        Ok(Store {
            root: Arc::new(root.to_path_buf()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh path in the staging directory.
    pub fn tmp_path(&self) -> PathBuf {
        self.root.join("tmp").join(random_id())
    }

    /// Write `bytes` to `dest` atomically and durably.
    pub fn atomic_write(&self, dest: &Path, bytes: &[u8]) -> Result<()> {
        let parent = dest.parent().unwrap_or(&self.root);
        fs::create_dir_all(parent).map_err(Error::io(parent))?;
        let tmp = self.tmp_path();
        let mut f = fs::File::create(&tmp).map_err(Error::io(&tmp))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(Error::io(&tmp))?;
        drop(f);
        fs::rename(&tmp, dest).map_err(Error::io(dest))?;
        sync_dir(parent)
    }

    // ---- blobs -------------------------------------------------------------------------------

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root.join("blobs/sha256").join(&hex[..2]).join(hex)
    }

    pub fn blob_size(&self, d: &Digest) -> Option<u64> {
        fs::metadata(self.blob_path(d))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    pub fn upload_path(&self, uuid: &str) -> PathBuf {
        self.root.join("uploads").join(uuid)
    }

    /// Move a finished, fsynced upload into the blob store. Concurrent commits of the same
    /// digest are safe: the content is identical and rename replaces atomically.
    pub fn commit_blob(&self, staged: &Path, d: &Digest) -> Result<()> {
        let dest = self.blob_path(d);
        if dest.is_file() {
            let _ = fs::remove_file(staged);
            return Ok(());
        }
        let parent = dest.parent().unwrap_or(&self.root);
        fs::create_dir_all(parent).map_err(Error::io(parent))?;
        fs::rename(staged, &dest).map_err(Error::io(&dest))?;
        sync_dir(parent)
    }

    /// Store bytes as a blob (manifests); returns its digest.
    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let d = Digest::sha256_of(bytes);
        if self.blob_path(&d).is_file() {
            return Ok(d);
        }
        let tmp = self.tmp_path();
        let mut f = fs::File::create(&tmp).map_err(Error::io(&tmp))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(Error::io(&tmp))?;
        drop(f);
        self.commit_blob(&tmp, &d)?;
        Ok(d)
    }

    // ---- repositories ------------------------------------------------------------------------

    pub fn repo_dir(&self, name: &RepoName) -> PathBuf {
        let mut p = self.root.join("repos");
        for c in name.components() {
            p.push(c);
        }
        p
    }

    /// A repository exists once it holds a blob link, a manifest or attributes.
    pub fn repo_exists(&self, name: &RepoName) -> bool {
        let d = self.repo_dir(name);
        ["_blobs", "_manifests", "_attrs.json"]
            .iter()
            .any(|s| d.join(s).exists())
    }

    fn blob_link(&self, name: &RepoName, d: &Digest) -> PathBuf {
        self.repo_dir(name).join("_blobs").join(d.hex())
    }

    fn manifest_link(&self, name: &RepoName, d: &Digest) -> PathBuf {
        self.repo_dir(name).join("_manifests").join(d.hex())
    }

    fn tag_path(&self, name: &RepoName, tag: &str) -> PathBuf {
        self.repo_dir(name).join("_tags").join(tag)
    }

    pub fn link_blob(&self, name: &RepoName, d: &Digest) -> Result<()> {
        let p = self.blob_link(name, d);
        if p.is_file() {
            return Ok(());
        }
        self.atomic_write(&p, b"")
    }

    pub fn unlink_blob(&self, name: &RepoName, d: &Digest) -> Result<bool> {
        remove_opt(&self.blob_link(name, d))
    }

    /// Size of a blob readable through this repository (linked as a blob or as a manifest).
    pub fn repo_blob_size(&self, name: &RepoName, d: &Digest) -> Option<u64> {
        if self.blob_link(name, d).is_file() || self.manifest_link(name, d).is_file() {
            self.blob_size(d)
        } else {
            None
        }
    }

    pub fn blob_linked(&self, name: &RepoName, d: &Digest) -> bool {
        self.blob_link(name, d).is_file() && self.blob_path(d).is_file()
    }

    // ---- manifests and tags ------------------------------------------------------------------

    pub fn put_manifest(&self, name: &RepoName, media_type: &str, bytes: &[u8]) -> Result<Digest> {
        let d = self.put_blob_bytes(bytes)?;
        self.atomic_write(&self.manifest_link(name, &d), media_type.as_bytes())?;
        Ok(d)
    }

    /// Media type of a manifest in this repository.
    pub fn manifest_media_type(&self, name: &RepoName, d: &Digest) -> Result<Option<String>> {
        Ok(read_opt(&self.manifest_link(name, d))?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// A manifest's media type and bytes.
    pub fn read_manifest(&self, name: &RepoName, d: &Digest) -> Result<Option<(String, Vec<u8>)>> {
        let Some(mt) = self.manifest_media_type(name, d)? else {
            return Ok(None);
        };
        Ok(read_opt(&self.blob_path(d))?.map(|b| (mt, b)))
    }

    pub fn set_tag(&self, name: &RepoName, tag: &str, d: &Digest) -> Result<()> {
        self.atomic_write(&self.tag_path(name, tag), d.as_str().as_bytes())
    }

    pub fn resolve_tag(&self, name: &RepoName, tag: &str) -> Result<Option<Digest>> {
        Ok(read_opt(&self.tag_path(name, tag))?
            .and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok()))
    }

    pub fn delete_tag(&self, name: &RepoName, tag: &str) -> Result<bool> {
        remove_opt(&self.tag_path(name, tag))
    }

    /// Remove a manifest from the repository with every tag pointing at it, and its expansion
    /// record (so `/mount` stops answering for it; the expanded layers stay, shared by content).
    pub fn delete_manifest(&self, name: &RepoName, d: &Digest) -> Result<bool> {
        if !remove_opt(&self.manifest_link(name, d))? {
            return Ok(false);
        }
        remove_opt(&self.record_path(name, d))?;
        for t in self.tags(name)? {
            if self.resolve_tag(name, &t)?.as_ref() == Some(d) {
                self.delete_tag(name, &t)?;
            }
        }
        Ok(true)
    }

    pub fn tags(&self, name: &RepoName) -> Result<Vec<String>> {
        list_dir(&self.repo_dir(name).join("_tags"))
    }

    pub fn manifests(&self, name: &RepoName) -> Result<Vec<Digest>> {
        Ok(list_dir(&self.repo_dir(name).join("_manifests"))?
            .into_iter()
            .filter_map(|h| format!("sha256:{h}").parse().ok())
            .collect())
    }

    /// Every repository holding blobs or manifests, sorted.
    pub fn repositories(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        walk_repos(&self.root.join("repos"), String::new(), &mut out)?;
        out.sort();
        Ok(out)
    }

    /// Every repository with attributes or content (for the expansion queue at start).
    pub fn all_repo_names(&self) -> Result<Vec<RepoName>> {
        let mut out = Vec::new();
        walk_all(&self.root.join("repos"), String::new(), &mut out)?;
        Ok(out.iter().filter_map(|s| RepoName::parse(s)).collect())
    }

    // ---- ACR attributes and expansion records --------------------------------------------------

    pub fn read_attrs(&self, name: &RepoName) -> Result<Option<RepoAttrs>> {
        let p = self.repo_dir(name).join("_attrs.json");
        match read_opt(&p)? {
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| Error::Json { path: p, source }),
            None => Ok(None),
        }
    }

    pub fn write_attrs(&self, name: &RepoName, a: &RepoAttrs) -> Result<()> {
        let p = self.repo_dir(name).join("_attrs.json");
        let b = serde_json::to_vec_pretty(a).map_err(|source| Error::Json {
            path: p.clone(),
            source,
        })?;
        self.atomic_write(&p, &b)
    }

    fn record_path(&self, name: &RepoName, d: &Digest) -> PathBuf {
        self.repo_dir(name)
            .join("_expansion")
            .join(format!("{}.json", d.hex()))
    }

    pub fn read_image_record(&self, name: &RepoName, d: &Digest) -> Result<Option<ImageRecord>> {
        let p = self.record_path(name, d);
        match read_opt(&p)? {
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| Error::Json { path: p, source }),
            None => Ok(None),
        }
    }

    pub fn write_image_record(&self, name: &RepoName, d: &Digest, r: &ImageRecord) -> Result<()> {
        let p = self.record_path(name, d);
        let b = serde_json::to_vec_pretty(r).map_err(|source| Error::Json {
            path: p.clone(),
            source,
        })?;
        self.atomic_write(&p, &b)
    }

    pub fn image_records(&self, name: &RepoName) -> Result<Vec<(Digest, ImageRecord)>> {
        let mut out = Vec::new();
        for f in list_dir(&self.repo_dir(name).join("_expansion"))? {
            let Some(hex) = f.strip_suffix(".json") else {
                continue;
            };
            let Ok(d) = format!("sha256:{hex}").parse::<Digest>() else {
                continue;
            };
            if let Some(r) = self.read_image_record(name, &d)? {
                out.push((d, r));
            }
        }
        Ok(out)
    }

    pub fn expanded_dir(&self, layer: &Digest) -> PathBuf {
        self.root.join("expanded/sha256").join(layer.hex())
    }

    /// Every layer directory under `expanded/` (for re-queueing at start).
    pub fn expanded_layers(&self) -> Result<Vec<Digest>> {
        Ok(list_dir(&self.root.join("expanded/sha256"))?
            .into_iter()
            .filter_map(|h| format!("sha256:{h}").parse().ok())
            .collect())
    }
}

fn is_repo(dir: &Path) -> bool {
    let nonempty = |p: PathBuf| {
        fs::read_dir(p)
            .map(|mut r| r.next().is_some())
            .unwrap_or(false)
    };
    nonempty(dir.join("_manifests")) || nonempty(dir.join("_blobs"))
}

fn walk_repos(dir: &Path, prefix: String, out: &mut Vec<String>) -> Result<()> {
    for n in list_dir(dir)? {
        if n.starts_with('_') {
            continue;
        }
        let p = dir.join(&n);
        if !p.is_dir() {
            continue;
        }
        let name = if prefix.is_empty() {
            n
        } else {
            format!("{prefix}/{n}")
        };
        if is_repo(&p) {
            out.push(name.clone());
        }
        walk_repos(&p, name, out)?;
    }
    Ok(())
}

fn walk_all(dir: &Path, prefix: String, out: &mut Vec<String>) -> Result<()> {
    for n in list_dir(dir)? {
        if n.starts_with('_') {
            continue;
        }
        let p = dir.join(&n);
        if !p.is_dir() {
            continue;
        }
        let name = if prefix.is_empty() {
            n
        } else {
            format!("{prefix}/{n}")
        };
        if ["_blobs", "_manifests", "_attrs.json"]
            .iter()
            .any(|s| p.join(s).exists())
        {
            out.push(name.clone());
        }
        walk_all(&p, name, out)?;
    }
    Ok(())
}
