//! Expand one layer blob from disk and print what came out, with throughput.
//!
//! `cargo run --release -p emulator --example expand_file -- LAYER_BLOB DATA_OUT [INDEX_OUT]`
use std::fs::File;
use std::io::BufReader;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(blob), Some(data_out)) = (args.get(1), args.get(2)) else {
        anyhow::bail!("usage: expand_file LAYER_BLOB DATA_OUT [INDEX_OUT]");
    };
    let start = Instant::now();
    let mut data = File::create(data_out)?;
    let out = emulator::expand_to_file(
        BufReader::with_capacity(1 << 20, File::open(blob)?),
        None,
        None,
        &mut data,
        &emulator::ExpandOptions::default(),
    )?;
    let secs = start.elapsed().as_secs_f64();
    if let Some(p) = args.get(3) {
        std::fs::write(p, &out.index_bytes)?;
    }
    println!(
        "entries {} compressed {} uncompressed {} data {} index {} chunks {} diff_id {}",
        out.index.entries.len(),
        out.compressed_size,
        out.uncompressed_size,
        out.index.data_size,
        out.index_bytes.len(),
        out.index.chunks.len(),
        out.index.diff_id
    );
    println!(
        "{secs:.3}s  {:.1} MB/s uncompressed",
        out.uncompressed_size as f64 / secs / 1e6
    );
    Ok(())
}
