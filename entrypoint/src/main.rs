//! tb-entrypoint: the process every fixture image runs.
//!
//! * `tb-entrypoint pause`: sleep until SIGTERM/SIGINT, exit 0 (the pod sandbox "pause" process).
//! * `tb-entrypoint [run] [--readers N] [--seed S] [--overlap F] [--working-set F]` (default):
//!   read `/etc/tb/manifest.tsv`, pick the working set (`TB_WORKING_SET`, default 0.06; seed
//!   `TB_SEED`, default 0 = the learning set; `TB_OVERLAP`, default 0.8, the share kept from the
//!   learning set for any other seed), read those files fully with N readers (`TB_READERS` or
//!   `TB_THREADS`, default 8; `1` reads them one after another in manifest order, like a
//!   program importing its modules), verify each sha256, print
//!   `TB-READY files=N bytes=B hash=sha256:… elapsed_ms=…`, then exit 0, or keep running until
//!   SIGTERM when `TB_SERVE=1`. Flags win over the environment.
//!
//! std + sha2 only; built static so it runs in any image, even one with no libc.

mod select;

use std::io::Read;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use sha2::{Digest as _, Sha256};

const MANIFEST: &str = "/etc/tb/manifest.tsv";

extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
    fn pause() -> i32;
    fn _exit(code: i32) -> !;
}

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

extern "C" fn on_stop(_sig: i32) {
    // SAFETY: _exit is async-signal-safe; nothing needs flushing in the waiting state.
    unsafe { _exit(0) }
}

/// PID 1 ignores SIGTERM unless it installs a handler, so install one and wait for it.
fn wait_for_stop() -> ! {
    // SAFETY: installing a plain C handler that only calls _exit.
    unsafe {
        signal(SIGTERM, on_stop as *const () as usize);
        signal(SIGINT, on_stop as *const () as usize);
    }
    loop {
        // SAFETY: pause(2) just blocks until a signal arrives.
        unsafe {
            pause();
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().cloned().unwrap_or_default();
    match mode.as_str() {
        "pause" => wait_for_stop(),
        "-h" | "--help" | "help" => {
            println!("usage: tb-entrypoint [pause|run] [--readers N] [--seed S] [--overlap F] [--working-set F]\n  env TB_WORKING_SET (0.06), TB_READERS/TB_THREADS (8), TB_SEED (0), TB_OVERLAP (0.8), TB_SERVE=1, TB_MANIFEST");
            ExitCode::SUCCESS
        }
        "run" => match Settings::parse(&args[1..]) {
            Ok(s) => run(&s),
            Err(e) => usage_error(&e),
        },
        m if m.is_empty() || m.starts_with("--") => match Settings::parse(&args) {
            Ok(s) => run(&s),
            Err(e) => usage_error(&e),
        },
        other => {
            eprintln!("tb-entrypoint: unknown mode {other:?} (want pause or run)");
            ExitCode::from(2)
        }
    }
}

fn usage_error(e: &str) -> ExitCode {
    eprintln!("tb-entrypoint: {e}");
    ExitCode::from(2)
}

/// How a run picks and reads its working set (flags over environment over defaults).
struct Settings {
    fraction: f64,
    readers: usize,
    seed: u64,
    overlap: f64,
}

impl Settings {
    fn parse(args: &[String]) -> Result<Settings, String> {
        let mut s = Settings {
            fraction: env_or("TB_WORKING_SET", select::DEFAULT_WORKING_SET),
            readers: env_or("TB_READERS", env_or("TB_THREADS", 8usize)),
            seed: env_or("TB_SEED", 0u64),
            overlap: env_or("TB_OVERLAP", 0.8f64),
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .ok_or_else(|| format!("{flag} wants a value"))?
                .trim();
            let bad = || format!("bad value {value:?} for {flag}");
            match flag.as_str() {
                "--readers" => s.readers = value.parse().map_err(|_| bad())?,
                "--seed" => s.seed = value.parse().map_err(|_| bad())?,
                "--overlap" => s.overlap = value.parse().map_err(|_| bad())?,
                "--working-set" => s.fraction = value.parse().map_err(|_| bad())?,
                other => return Err(format!("unknown flag {other:?}")),
            }
        }
        s.readers = s.readers.clamp(1, 256);
        Ok(s)
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn run(settings: &Settings) -> ExitCode {
    let start = Instant::now();
    let manifest_path = std::env::var("TB_MANIFEST").unwrap_or_else(|_| MANIFEST.to_string());
    let text = match std::fs::read_to_string(&manifest_path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tb-entrypoint: read {manifest_path}: {e}");
            return ExitCode::from(1);
        }
    };
    let files = match select::parse_manifest(&text) {
        Ok(f) => f,
        Err(line) => {
            eprintln!("tb-entrypoint: {manifest_path}: bad line {line}");
            return ExitCode::from(1);
        }
    };
    let threads = settings.readers;
    let set = select::select_varied(&files, settings.fraction, settings.seed, settings.overlap);
    // Read order: one reader goes through the files in manifest order (import order); the
    // aggregate hash is over the path-sorted set either way.
    let mut read_order: Vec<&select::ManifestLine> = set.iter().collect();
    if threads == 1 {
        let index: std::collections::HashMap<&str, usize> = files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.path.as_str(), i))
            .collect();
        read_order.sort_by_key(|f| index.get(f.path.as_str()).copied().unwrap_or(usize::MAX));
    }

    let next = AtomicUsize::new(0);
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let bytes = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.min(set.len().max(1)) {
            s.spawn(|| {
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(f) = read_order.get(i) else { break };
                    match hash_file(&f.path, &mut buf) {
                        Ok((n, hex)) if hex == f.sha256 && n == f.size => {
                            bytes.fetch_add(n as usize, Ordering::Relaxed);
                        }
                        Ok((n, hex)) => push_err(
                            &errors,
                            format!(
                                "{}: got size {n} sha256 {hex}, want size {} sha256 {}",
                                f.path, f.size, f.sha256
                            ),
                        ),
                        Err(e) => push_err(&errors, format!("{}: {e}", f.path)),
                    }
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap_or_else(|p| p.into_inner());
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("tb-entrypoint: MISMATCH {e}");
        }
        println!("TB-FAILED errors={}", errors.len());
        return ExitCode::from(1);
    }
    println!(
        "TB-READY files={} bytes={} hash={} elapsed_ms={}",
        set.len(),
        bytes.load(Ordering::Relaxed),
        select::aggregate_hash(&set),
        start.elapsed().as_millis()
    );
    if std::env::var("TB_SERVE").is_ok_and(|v| v == "1") {
        wait_for_stop();
    }
    ExitCode::SUCCESS
}

fn push_err(errors: &Mutex<Vec<String>>, e: String) {
    errors.lock().unwrap_or_else(|p| p.into_inner()).push(e);
}

fn hash_file(path: &str, buf: &mut [u8]) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut n = 0u64;
    loop {
        let k = f.read(buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, select::hex_lower(&h.finalize())))
}
