//! teleportd: containerd remote snapshotter daemon. Thin wrapper over `fuse_mount::daemon`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use fuse_mount::config;
use fuse_mount::containerd_config::{self, Version};
use fuse_mount::daemon::{self, Config, MountMode};
use fuse_mount::manager::config::{ManagerConfig, MountSettings};

#[derive(Parser)]
#[command(
    version,
    about = "Teleport node agent: a containerd proxy snapshotter that mounts registry-expanded layers over FUSE",
    long_about = "Teleport node agent: a containerd proxy snapshotter.\n\nWith --registry, images the registry has expanded (its /mount API answers 200) are mounted lazily over FUSE instead of downloaded; every other image falls back to a normal overlayfs pull. Without --registry it is a plain overlayfs snapshotter.\n\nEvery flag can also be set in a TOML file (--config FILE; key = flag name, e.g. cache_dir = \"/var/cache/teleportd\"); flags on the command line override it.",
    // A flag given again (file first, then the command line) replaces the earlier value.
    args_override_self = true
)]
struct Cli {
    /// TOML settings file: one key per long flag (`mount_mode = "merged"`, `no_remote = true`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// State directory (snapshot metadata and layer directories).
    #[arg(long, default_value = daemon::DEFAULT_ROOT)]
    root: PathBuf,
    /// Unix socket containerd connects to.
    #[arg(long, default_value = daemon::DEFAULT_ADDRESS)]
    address: PathBuf,
    /// Teleport registry base URL, e.g. http://127.0.0.1:5000.
    #[arg(long)]
    registry: Option<String>,
    /// Registry user (token auth), NAME or skopeo's NAME:PASSWORD; the password is taken from
    /// --password-file, else $TELEPORTD_PASSWORD, else after the colon. Without --user the
    /// registry's entry in the docker config is used.
    #[arg(long, value_name = "NAME[:PASSWORD]")]
    user: Option<String>,
    /// File holding the registry password (trailing newline ignored).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Docker config.json with registry logins (`auths.HOST.auth`, base64 user:password)
    /// [default: $HOME/.docker/config.json if present].
    #[arg(long, value_name = "FILE")]
    docker_config: Option<PathBuf>,
    /// Extra trusted root certificate (PEM) for an https registry.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Allow a plain-http registry (http:// URL); without it only https is used.
    #[arg(long)]
    insecure_registry: bool,
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
    #[command(flatten)]
    mount: MountSettings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the containerd config teleportd needs (proxy plugin + CRI snapshotter settings)
    /// in the form the given containerd release line reads.
    ConfigSnippet {
        /// containerd release line: 1.6, 1.7 or 2 (2.x: config version 3)
        /// [default: `containerd --version` of PATH's containerd, else 1.6].
        #[arg(long)]
        containerd: Option<Version>,
    },
    /// Run the fuse manager that owns this root's FUSE mounts (teleportd starts it itself,
    /// detached, so the mounts outlive a killed teleportd). Uses --root, --registry,
    /// --cache-dir, --user and TELEPORTD_PASSWORD.
    #[command(name = "fuse-manager")]
    FuseManager,
    /// Print the fuse manager's start trace (of --root): every FUSE open and read in order,
    /// cached or a registry miss, with its wait; then the summary. Kept: the newest
    /// --trace-events of them.
    Trace {
        /// Start at this event number (a previous run's last "next" line).
        #[arg(long, default_value = "0")]
        since: u64,
        /// Keep printing new events as they come (Ctrl-C ends).
        #[arg(long)]
        follow: bool,
        /// The raw pages as JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// TLS settings for every registry client of this process, the scheme check, and the login.
fn registry_setup(cli: &Cli, registry: &str) -> anyhow::Result<Option<config::Credentials>> {
    config::init_tls(config::Tls {
        ca_file: cli.ca_file.clone(),
        insecure_registry: cli.insecure_registry,
    })?;
    config::check_scheme(registry)?;
    let sources = config::CredentialSources {
        user: cli.user.clone(),
        password_file: cli.password_file.clone(),
        password_env: std::env::var(config::PASSWORD_ENV).ok(),
        docker_config: cli.docker_config.clone(),
    };
    Ok(config::resolve_login(&sources, registry)?)
}

/// Installs the SIGTERM/SIGINT handlers now and returns the future that completes on the first
/// one. Registering eagerly matters: a handler installed only when the future is first polled
/// (after the socket is bound) leaves a window where a SIGTERM kills the process outright.
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
        tracing::info!("shutdown requested");
    }
}

/// `teleportd trace`: pages from the manager's socket, printed as they come.
async fn print_trace(
    root: &std::path::Path,
    mut since: u64,
    follow: bool,
    json: bool,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use fuse_mount::trace::{Printer, Summary};
    let mut printer = Printer::default();
    let mut events = Vec::new();
    let mut mounts: Vec<String>;
    loop {
        let page = fuse_mount::manager::client::trace_at(root, since)
            .await
            .with_context(|| format!("asking the fuse manager of {}", root.display()))?;
        if page.capacity == 0 {
            anyhow::bail!("the fuse manager keeps no trace (it runs with --trace-events 0)");
        }
        since = page.next;
        if json {
            println!("{}", serde_json::to_string(&page)?);
        } else {
            print!("{}", printer.lines(&page));
        }
        let empty = page.events.is_empty();
        events.extend(page.events);
        // Every page carries the whole mount table; the last one is the newest.
        mounts = page.mounts;
        if empty && !follow {
            break;
        }
        if empty {
            // Polling a live process's ring: nothing to wait on but time.
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }
    if !json {
        for (i, m) in mounts.iter().enumerate() {
            println!("m{i} = {m}");
        }
        print!("{}", Summary::of(&events));
        println!("next {since}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let argv = emulator::settings_file::splice_config_file(std::env::args_os().collect(), 1)?;
    let cli = Cli::parse_from(argv);
    if let Some(Command::ConfigSnippet { containerd }) = cli.command {
        let v = containerd.unwrap_or_else(|| {
            Version::detect(std::path::Path::new("containerd")).unwrap_or(Version::V1_6)
        });
        print!("{}", containerd_config::snippet(v, &cli.address));
        return Ok(());
    }
    if let Some(Command::Trace {
        since,
        follow,
        json,
    }) = cli.command
    {
        return print_trace(&cli.root, since, follow, json).await;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let shutdown = shutdown_signal();
    if let Some(Command::FuseManager) = cli.command {
        let registry = cli
            .registry
            .clone()
            .ok_or_else(|| anyhow::anyhow!("fuse-manager needs --registry"))?;
        let login = registry_setup(&cli, &registry)?;
        let cfg = ManagerConfig {
            cache_dir: cli.cache_dir.unwrap_or_else(|| cli.root.join("cache")),
            root: cli.root,
            registry,
            credentials: login,
            settings: cli.mount,
        };
        fuse_mount::manager::server::run(cfg, shutdown).await?;
        return Ok(());
    }
    let remote = !cli.no_remote && cli.registry.is_some();
    let login = match &cli.registry {
        Some(r) => {
            let login = registry_setup(&cli, r)?;
            if let Some(l) = &login {
                // Once, at start: a wrong password is an ERROR and a counter, not a silent
                // fallback to standard pulls.
                config::check_login(r, l).await;
            }
            login
        }
        None => None,
    };
    let cfg = Config {
        remote,
        credentials: login,
        registry: cli.registry,
        mount_mode: cli.mount_mode,
        cache_dir: cli.cache_dir,
        metrics_addr: cli.metrics_addr,
        expansion_wait: std::time::Duration::from_secs(cli.expansion_wait),
        keep_fuse_manager: cli.keep_fuse_manager,
        mount: cli.mount,
        ..Config::new(cli.root, cli.address)
    };
    daemon::run(cfg, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuse_mount::manager::config::WireCompression;

    /// A fuse manager setting read from `--config FILE` lands in the one `MountSettings`, the
    /// command line overrides it, and a spawned manager gets the same values back.
    #[test]
    fn mount_settings_come_from_the_toml_file_and_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("teleportd.toml");
        std::fs::write(
            &file,
            "profile_window = 2.5\nno_start_profile = true\ncache_max_bytes = 4096\n\
             wire_compression = \"off\"\n",
        )
        .unwrap();
        let argv: Vec<std::ffi::OsString> = vec![
            "teleportd".into(),
            "--config".into(),
            file.clone().into(),
            "--cache-max-bytes".into(),
            "8192".into(),
        ];
        let argv = emulator::settings_file::splice_config_file(argv, 1).unwrap();
        let cli = Cli::try_parse_from(argv).unwrap();
        let want = MountSettings {
            no_start_profile: true,
            profile_window: std::time::Duration::from_millis(2500),
            prefetch_layers: false,
            cache_max_bytes: Some(8192),
            neighbour_ahead: 256 << 10,
            trace_events: 65536,
            wire_compression: WireCompression::Off,
        };
        assert_eq!(cli.mount, want);
        // The manager's command line: teleportd's own flags, parsed by the same Cli.
        let mut manager_argv: Vec<std::ffi::OsString> = vec!["teleportd".into()];
        manager_argv.extend(want.to_args());
        manager_argv.push("fuse-manager".into());
        let manager = Cli::try_parse_from(manager_argv).unwrap();
        assert_eq!(manager.mount, want);
        assert!(matches!(manager.command, Some(Command::FuseManager)));
    }
}
