//! The registry's expansion path (registry-mock `expand_layer`), replayed on local files: read the
//! blob through a 1 MiB buffer, expand into a data file on disk, cut it to the data size, fsync,
//! and store the index beside it. Sequential, or with one worker per layer up to N threads.

use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use emulator::{Digest, ExpandOptions};
use serde::Serialize;

use crate::error::{Error, Result};

/// One layer to expand.
#[derive(Clone, Debug)]
pub struct LayerJob {
    pub blob: PathBuf,
    pub digest: Digest,
    pub media_type: String,
}

/// What expanding one layer cost.
#[derive(Clone, Debug, Serialize)]
pub struct LayerTiming {
    pub digest: String,
    pub compressed_bytes: u64,
    pub uncompressed_bytes: u64,
    pub data_bytes: u64,
    pub entries: usize,
    pub seconds: f64,
}

/// Expand `job` into `out_dir/<hex>.data` + `<hex>.index`; `fsync` both as the registry does.
pub fn expand_layer(job: &LayerJob, out_dir: &Path, fsync: bool) -> Result<LayerTiming> {
    let t0 = Instant::now();
    let expand_err = |source| Error::Expand {
        layer: job.digest.to_string(),
        source,
    };
    let f = std::fs::File::open(&job.blob).map_err(Error::io(&job.blob))?;
    let data_path = out_dir.join(format!("{}.data", job.digest.hex()));
    let data = std::fs::File::create(&data_path).map_err(Error::io(&data_path))?;
    let mut w = BufWriter::with_capacity(1 << 20, data);
    let ex = emulator::expand(
        BufReader::with_capacity(1 << 20, f),
        Some(&job.media_type),
        Some(&job.digest),
        &mut w,
        &ExpandOptions::default(),
    )
    .map_err(expand_err)?;
    let data = w
        .into_inner()
        .map_err(|e| Error::io(&data_path)(e.into_error()))?;
    data.set_len(ex.index.data_size)
        .map_err(Error::io(&data_path))?;
    let index_path = out_dir.join(format!("{}.index", job.digest.hex()));
    let mut index = std::fs::File::create(&index_path).map_err(Error::io(&index_path))?;
    index
        .write_all(&ex.index_bytes)
        .map_err(Error::io(&index_path))?;
    if fsync {
        data.sync_all().map_err(Error::io(&data_path))?;
        index.sync_all().map_err(Error::io(&index_path))?;
    }
    Ok(LayerTiming {
        digest: job.digest.to_string(),
        compressed_bytes: ex.compressed_size,
        uncompressed_bytes: ex.uncompressed_size,
        data_bytes: ex.index.data_size,
        entries: ex.index.entries.len(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Expand every job with `threads` workers taking layers in order (the registry's dispatch: one
/// blocking task per layer, at most `threads` at a time). Returns wall-clock seconds and the
/// per-layer timings in job order.
pub fn expand_all(
    jobs: &[LayerJob],
    out_dir: &Path,
    threads: usize,
    fsync: bool,
) -> Result<(f64, Vec<LayerTiming>)> {
    let t0 = Instant::now();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<LayerTiming>>>> =
        Mutex::new((0..jobs.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, jobs.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                let r = expand_layer(job, out_dir, fsync);
                let failed = r.is_err();
                if let Ok(mut v) = results.lock() {
                    if let Some(slot) = v.get_mut(i) {
                        *slot = Some(r);
                    }
                }
                if failed {
                    // Stop handing out work: the run is void anyway.
                    next.store(jobs.len(), Ordering::Relaxed);
                }
            });
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    let results = results
        .into_inner()
        .map_err(|_| Error::Invalid("an expansion worker panicked".into()))?;
    let mut out = Vec::with_capacity(jobs.len());
    let mut missing = None;
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Some(r) => out.push(r?),
            None => {
                missing.get_or_insert(i);
            }
        }
    }
    match missing {
        Some(i) => Err(Error::Invalid(format!("layer {i} was not expanded"))),
        None => Ok((secs, out)),
    }
}
