//! Fixture images built once and reused: building the full-size image takes minutes, measuring it
//! seconds.

use std::io::Read;
use std::path::{Path, PathBuf};

use fixtures::{BuildOptions, ImageInfo, LayerInfo};

use crate::error::{Error, Result};

/// Where fixtures are cached: `$TELEPORT_BENCH_CACHE`, else `<tmp>/teleport-bench`.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("TELEPORT_BENCH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("teleport-bench"))
}

/// The OCI layout of `profile` at `scale` (default seed) under `cache_dir`, built when missing or
/// incomplete. Returns the layout directory and its image info.
pub fn cached_layout(
    cache_dir: &Path,
    profile: &str,
    scale: f64,
    progress: bool,
) -> Result<(PathBuf, ImageInfo)> {
    let dir = cache_dir.join(format!("{profile}-scale{scale}"));
    if let Some(info) = usable(&dir, profile, scale) {
        tracing::info!(layout = %dir.display(), "reusing cached fixture");
        return Ok((dir, info));
    }
    let prof = fixtures::profile::by_name(profile)
        .ok_or_else(|| Error::Invalid(format!("unknown fixture profile {profile:?}")))?;
    let mut opts = BuildOptions::new(prof);
    opts.scale = scale;
    opts.progress = progress;
    // Build beside the final place and rename, so an interrupted build is never reused.
    let tmp = cache_dir.join(format!(".{profile}-scale{scale}.building"));
    for d in [&tmp, &dir] {
        if d.exists() {
            std::fs::remove_dir_all(d).map_err(Error::io(d))?;
        }
    }
    std::fs::create_dir_all(cache_dir).map_err(Error::io(cache_dir))?;
    tracing::info!(layout = %dir.display(), scale, "building fixture");
    fixtures::build(&opts, &tmp)?;
    std::fs::rename(&tmp, &dir).map_err(Error::io(&dir))?;
    let info = ImageInfo::load(&dir)?;
    Ok((dir, info))
}

/// `dir`'s image info when it is the wanted image and every layer blob is there at full size.
fn usable(dir: &Path, profile: &str, scale: f64) -> Option<ImageInfo> {
    let info = ImageInfo::load(dir).ok()?;
    let complete = info.profile == profile
        && info.scale == scale
        && !info.squashed
        && info
            .layers
            .iter()
            .all(|l| std::fs::metadata(layer_path(dir, l)).is_ok_and(|m| m.len() == l.size));
    complete.then_some(info)
}

/// Path of a layer's blob in a layout.
pub fn layer_path(layout: &Path, layer: &LayerInfo) -> PathBuf {
    fixtures::image::blob_path(layout, &layer.digest)
}

/// A layer blob's uncompressed tar (the fixtures write gzip layers).
pub fn gunzip_layer(layout: &Path, layer: &LayerInfo) -> Result<Vec<u8>> {
    let p = layer_path(layout, layer);
    let f = std::fs::File::open(&p).map_err(Error::io(&p))?;
    let mut out = Vec::with_capacity(usize::try_from(layer.uncompressed_size).unwrap_or(0));
    flate2::read::MultiGzDecoder::new(std::io::BufReader::new(f))
        .read_to_end(&mut out)
        .map_err(Error::io(&p))?;
    Ok(out)
}

/// `tar` compressed with zstd at `level` (3 is containerd's and skopeo's default).
pub fn zstd_compress(tar: &[u8], level: i32) -> Result<Vec<u8>> {
    zstd::stream::encode_all(tar, level).map_err(Error::io("<zstd encoder>"))
}

/// A `docker save`-style OCI archive (a tar of the layout: `oci-layout`, `index.json`, the blobs)
/// at `out`, as `ctr images import` takes. Reused when it exists and is newer than `index.json`.
pub fn oci_archive(layout: &Path, out: &Path) -> Result<()> {
    let index = layout.join("index.json");
    let fresh = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(a), Some(i)) = (fresh(out), fresh(&index)) {
        if a >= i {
            return Ok(());
        }
    }
    let tmp = out.with_extension("partial");
    let f = std::fs::File::create(&tmp).map_err(Error::io(&tmp))?;
    let mut b = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, f));
    let mut add = |name: &str| -> Result<()> {
        let p = layout.join(name);
        b.append_path_with_name(&p, name).map_err(Error::io(&p))
    };
    add("oci-layout")?;
    add("index.json")?;
    let blobs = layout.join("blobs/sha256");
    let mut names: Vec<String> = std::fs::read_dir(&blobs)
        .map_err(Error::io(&blobs))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in names {
        add(&format!("blobs/sha256/{n}"))?;
    }
    let w = b.into_inner().map_err(Error::io(&tmp))?;
    w.into_inner()
        .map_err(|e| Error::io(&tmp)(e.into_error()))?
        .sync_all()
        .map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, out).map_err(Error::io(out))
}
