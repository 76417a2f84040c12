//! `registry-mock`: a thin CLI over the library (`serve` and `check-expansion`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use registry_client::{Credentials, MountStatus, RegistryClient};
use registry_mock::{Config, LinkConfig};

#[derive(Parser)]
#[command(
    name = "registry-mock",
    version,
    about = "OCI registry with ACR Teleport's extras (expansion on push, /mount API)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
// Parsed once per process: the size of the serve flags does not matter.
#[allow(clippy::large_enum_variant)]
enum Cmd {
    /// Serve the registry until SIGINT/SIGTERM. Every flag can also be set in a TOML file
    /// (--config FILE; key = flag name, e.g. users_file = "/etc/registry-mock/users"); flags on
    /// the command line override it (lists such as teleport_repos are joined).
    #[command(args_override_self = true)]
    Serve {
        /// TOML settings file: one key per flag (`listen = "0.0.0.0:5000"`).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:5000")]
        listen: SocketAddr,
        /// Storage root (default: a fresh temporary directory, printed at start and kept).
        #[arg(long)]
        root: Option<PathBuf>,
        /// A user allowed to log in, NAME:PASSWORD (repeatable). Without users, auth is off.
        #[arg(long = "user", value_name = "NAME:PASSWORD")]
        users: Vec<String>,
        /// File with one NAME:PASSWORD per line (# comments allowed).
        #[arg(long)]
        users_file: Option<PathBuf>,
        /// Allow pulls without credentials when users are configured.
        #[arg(long)]
        anonymous_pull: bool,
        /// Emulated egress bandwidth shared by all responses, e.g. 1Gbit, 100Mbit/s, 200MiB/s.
        #[arg(long)]
        bandwidth: Option<String>,
        /// Emulated latency added to every request, e.g. 20ms.
        #[arg(long, value_parser = humantime::parse_duration)]
        latency: Option<Duration>,
        /// Repositories teleport-enabled at start (comma-separated).
        #[arg(long, value_delimiter = ',')]
        teleport_repos: Vec<String>,
        /// Parallel layer expansions (default: number of CPUs).
        #[arg(long)]
        expansion_workers: Option<usize>,
        /// Chunk size of expanded layers: bytes or with a KiB / MiB suffix, a power of two in
        /// 16KiB ..= 16MiB (default 16KiB).
        #[arg(long, value_parser = parse_chunk_size)]
        chunk_size: Option<u32>,
        /// Also encode each expanded data blob as independent zstd frames and advertise them in
        /// `/mount`, so nodes can fetch compressed bytes (`off`: plain ranges only, as a
        /// registry without it).
        #[arg(long, value_enum, default_value = "zstd")]
        wire_compression: WireCompression,
        /// Data bytes per zstd frame of that encoding: bytes or with a KiB / MiB suffix, a power
        /// of two in 4KiB ..= 4MiB (default 16KiB).
        #[arg(long, value_parser = parse_frame_size)]
        wire_frame_size: Option<u32>,
        #[command(flatten)]
        limits: registry_mock::Limits,
        #[command(flatten)]
        tls: registry_mock::tls::TlsArgs,
    },
    /// Wait for an image's layers to be expanded, like ACR's check-expansion.sh.
    /// Exit codes: 0 ready, 1 error or expansion failed, 2 not teleport-enabled, 3 timeout.
    CheckExpansion {
        repo: String,
        tag: String,
        /// Registry base URL, e.g. http://127.0.0.1:5000
        #[arg(long)]
        registry: String,
        /// Credentials, NAME:PASSWORD.
        #[arg(long, value_name = "NAME:PASSWORD")]
        user: Option<String>,
        #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
}

/// Installs the SIGTERM/SIGINT handlers now and returns the future that completes on the first
/// one. Registering eagerly matters: a handler installed only when the future is first polled
/// (after the listener is bound) leaves a window where a SIGTERM kills the process outright.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        match signals {
            (Ok(mut t), Ok(mut i)) => {
                tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    registry_mock::raise_nofile_limit();
    // `serve --config FILE`: the file's settings go ahead of the command line's own flags.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let at = if argv.get(1).is_some_and(|a| a == "serve") {
        2
    } else {
        argv.len()
    };
    let argv = match emulator::settings_file::splice_config_file(argv, at) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("registry-mock: {e}");
            return ExitCode::from(2);
        }
    };
    match run(Cli::parse_from(argv)).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("registry-mock: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.cmd {
        Cmd::Serve {
            config: _,
            listen,
            root,
            users,
            users_file,
            anonymous_pull,
            bandwidth,
            latency,
            teleport_repos,
            expansion_workers,
            chunk_size,
            wire_compression,
            wire_frame_size,
            limits,
            tls,
        } => {
            // A temporary root is made only once the flags are known good (below).
            let mut cfg = Config::new(root.clone().unwrap_or_default());
            cfg.listen = listen;
            cfg.limits = limits;
            cfg.tls = tls.load().context("TLS")?;
            for u in &users {
                cfg.users.push(registry_mock::parse_user(u)?);
            }
            if let Some(f) = users_file {
                cfg.users.extend(registry_mock::read_users_file(&f)?);
            }
            // Without users everything is open anyway; with users, pulls need credentials
            // unless --anonymous-pull.
            cfg.anonymous_pull = anonymous_pull || cfg.users.is_empty();
            cfg.link = LinkConfig {
                bandwidth_bytes_per_sec: bandwidth
                    .as_deref()
                    .map(registry_mock::parse_bandwidth)
                    .transpose()?,
                latency: latency.unwrap_or_default(),
            };
            cfg.teleport_repos = teleport_repos
                .into_iter()
                .filter(|r| !r.is_empty())
                .collect();
            if let Some(n) = expansion_workers {
                cfg.expansion_workers = n.max(1);
            }
            if let Some(cs) = chunk_size {
                cfg.expansion_chunk_size = cs;
            }
            cfg.wire_frame_size = match wire_compression {
                WireCompression::Zstd => Some(
                    wire_frame_size.unwrap_or(registry_mock::expansion::DEFAULT_WIRE_FRAME_SIZE),
                ),
                WireCompression::Off => None,
            };
            let made = match root {
                Some(_) => None,
                None => {
                    let d = tempfile::Builder::new()
                        .prefix("registry-mock-")
                        .tempdir()?
                        .keep();
                    println!("storage root: {}", d.display());
                    cfg.root = d.clone();
                    Some(d)
                }
            };
            let served = registry_mock::serve(cfg, shutdown_signal()).await;
            if let (Err(_), Some(d)) = (&served, made) {
                // Failed before storing anything (e.g. the port is taken): leave no empty
                // directory behind. `remove_dir` refuses a non-empty one.
                let _ = std::fs::remove_dir(d);
            }
            served.context("serving")?;
            Ok(0)
        }
        Cmd::CheckExpansion {
            repo,
            tag,
            registry,
            user,
            timeout,
            interval,
        } => {
            let creds = user
                .as_deref()
                .map(registry_mock::parse_user)
                .transpose()?
                .map(|(u, p)| Credentials::new(u, p));
            let client = RegistryClient::new(&registry, creds, Default::default())
                .with_context(|| format!("registry {registry}"))?;
            let (_, status) = client
                .check_expansion(&repo, &tag, interval, timeout, |line| println!("{line}"))
                .await?;
            Ok(match status {
                MountStatus::Ready(_) => 0,
                MountStatus::Failed { .. } => 1,
                MountStatus::NotEnabled => 2,
                MountStatus::Expanding => 3,
            })
        }
    }
}

/// Whether expanded data is also produced (and offered) as compressed frames.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum WireCompression {
    Zstd,
    Off,
}

/// `65536`, `64KiB` → bytes, checked against what the frame table allows.
fn parse_frame_size(s: &str) -> Result<u32, String> {
    let n = registry_mock::parse_size(s)?;
    let bytes = u32::try_from(n).map_err(|_| format!("frame size {s:?} too large"))?;
    if !emulator::frames::valid_frame_size(bytes) {
        return Err(format!(
            "frame size {s:?}: want a power of two in 4KiB ..= 4MiB"
        ));
    }
    Ok(bytes)
}

/// `16384`, `64KiB`, `1MiB` → bytes, checked against what the expander accepts.
fn parse_chunk_size(s: &str) -> Result<u32, String> {
    let n = registry_mock::parse_size(s)?;
    let bytes = u32::try_from(n).map_err(|_| format!("chunk size {s:?} too large"))?;
    if !registry_mock::expansion::valid_chunk_size(bytes) {
        return Err(format!(
            "chunk size {s:?}: want a power of two in 16KiB ..= 16MiB"
        ));
    }
    Ok(bytes)
}
