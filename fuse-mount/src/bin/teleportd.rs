//! teleportd: containerd remote snapshotter daemon. Thin wrapper over `fuse_mount::daemon`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use fuse_mount::daemon::{self, Config, MountMode};
use fuse_mount::manager::server::ManagerConfig;
use fuse_mount::remote::http::Credentials;

#[derive(Parser)]
#[command(
    version,
    about = "Teleport node agent: a containerd proxy snapshotter that mounts registry-expanded layers over FUSE",
    long_about = "Teleport node agent: a containerd proxy snapshotter.\n\nWith --registry, images the registry has expanded (its /mount API answers 200) are mounted lazily over FUSE instead of downloaded; every other image falls back to a normal overlayfs pull. Without --registry it is a plain overlayfs snapshotter."
)]
struct Cli {
    /// State directory (snapshot metadata and layer directories).
    #[arg(long, default_value = daemon::DEFAULT_ROOT)]
    root: PathBuf,
    /// Unix socket containerd connects to.
    #[arg(long, default_value = daemon::DEFAULT_ADDRESS)]
    address: PathBuf,
    /// Teleport registry base URL, e.g. http://127.0.0.1:5000.
    #[arg(long)]
    registry: Option<String>,
    /// Registry user (token auth); password from TELEPORTD_PASSWORD.
    #[arg(long)]
    user: Option<String>,
    #[arg(long, env = "TELEPORTD_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// How expanded layers are presented: one FUSE mount per layer stacked by overlayfs
    /// (Teleport's way), or one merged FUSE mount per image.
    #[arg(long, value_enum, default_value = "per-layer")]
    mount_mode: MountMode,
    /// Node-wide chunk cache for lazily fetched layer bytes (default ROOT/cache).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9101).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Never mount remote layers: behave as a plain overlayfs snapshotter even with --registry.
    #[arg(long)]
    no_remote: bool,
    /// Longest a layer's Prepare waits for an image the registry is still expanding.
    #[arg(long, default_value = "30", value_name = "SECONDS")]
    expansion_wait: u64,
    /// On SIGTERM/SIGINT leave the fuse manager and its mounts running for the next teleportd
    /// (running containers keep reading). By default a clean stop unmounts everything.
    #[arg(long)]
    keep_fuse_manager: bool,
    /// Do not use learned start profiles: neither replay a layer's stored profile at mount nor
    /// record and upload one.
    #[arg(long)]
    no_start_profile: bool,
    /// How long after a layer's first read its start profile keeps recording.
    #[arg(long, default_value = "10", value_name = "SECONDS")]
    profile_window: f64,
    /// Also fetch every mounted layer's whole data in the background, at low priority, so the
    /// node ends up with the full image (off by default: a start needs a few percent of it).
    #[arg(long)]
    prefetch_layers: bool,
    /// Size cap of the chunk cache (least recently used packs are evicted); default unbounded.
    #[arg(long, value_name = "BYTES")]
    cache_max_bytes: Option<u64>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the containerd config teleportd needs.
    ConfigSnippet,
    /// Run the fuse manager that owns this root's FUSE mounts (teleportd starts it itself,
    /// detached, so the mounts outlive a killed teleportd). Uses --root, --registry,
    /// --cache-dir, --user and TELEPORTD_PASSWORD.
    #[command(name = "fuse-manager")]
    FuseManager,
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown requested");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let profile_window = std::time::Duration::try_from_secs_f64(cli.profile_window)
        .map_err(|e| anyhow::anyhow!("--profile-window {}: {e}", cli.profile_window))?;
    if let Some(Command::ConfigSnippet) = cli.command {
        print!("{}", daemon::config_snippet(&cli.address));
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    if let Some(Command::FuseManager) = cli.command {
        let registry = cli
            .registry
            .ok_or_else(|| anyhow::anyhow!("fuse-manager needs --registry"))?;
        let cfg = ManagerConfig {
            cache_dir: cli.cache_dir.unwrap_or_else(|| cli.root.join("cache")),
            root: cli.root,
            registry,
            credentials: cli.user.map(|username| fuse_mount::fetch::Credentials {
                username,
                password: cli.password.unwrap_or_default(),
            }),
            start_profile: !cli.no_start_profile,
            profile_window,
            prefetch_layers: cli.prefetch_layers,
            cache_max_bytes: cli.cache_max_bytes,
        };
        fuse_mount::manager::server::run(cfg, shutdown_signal()).await?;
        return Ok(());
    }
    let remote = !cli.no_remote && cli.registry.is_some();
    let cfg = Config {
        remote,
        credentials: cli.user.map(|user| Credentials {
            user,
            password: cli.password.unwrap_or_default(),
        }),
        registry: cli.registry,
        mount_mode: cli.mount_mode,
        cache_dir: cli.cache_dir,
        metrics_addr: cli.metrics_addr,
        expansion_wait: std::time::Duration::from_secs(cli.expansion_wait),
        keep_fuse_manager: cli.keep_fuse_manager,
        start_profile: !cli.no_start_profile,
        profile_window,
        prefetch_layers: cli.prefetch_layers,
        cache_max_bytes: cli.cache_max_bytes,
        ..Config::new(cli.root, cli.address)
    };
    daemon::run(cfg, shutdown_signal()).await?;
    Ok(())
}
