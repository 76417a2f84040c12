//! containerd configuration in the form each release line needs (1.6 / 1.7: config version 2,
//! CRI under `io.containerd.grpc.v1.cri`; 2.x: version 3, CRI split into
//! `io.containerd.cri.v1.images` / `io.containerd.cri.v1.runtime`), for teleportd as a proxy
//! snapshotter. One renderer for `teleportd config-snippet`, the testbed's nodes and the tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use toml::{Table, Value};

/// A containerd release line (`major.minor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("running {bin} --version: {source}")]
    Run { bin: String, source: std::io::Error },
    #[error("unrecognised containerd version {0:?} (expected e.g. 1.6, 1.7, 2 or 2.1)")]
    Unrecognised(String),
}

impl Version {
    pub const V1_6: Version = Version { major: 1, minor: 6 };
    pub const V1_7: Version = Version { major: 1, minor: 7 };
    pub const V2_0: Version = Version { major: 2, minor: 0 };
    pub const V2_1: Version = Version { major: 2, minor: 1 };

    /// From `containerd --version` output, e.g.
    /// `containerd github.com/containerd/containerd/v2 2.1.9+unknown` or
    /// `containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3`.
    pub fn from_version_output(out: &str) -> Result<Version, VersionError> {
        out.split_whitespace()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| VersionError::Unrecognised(out.trim().to_string()))
    }

    /// Runs `BIN --version`.
    pub fn detect(bin: &Path) -> Result<Version, VersionError> {
        let out = Command::new(bin)
            .arg("--version")
            .output()
            .map_err(|source| VersionError::Run {
                bin: bin.display().to_string(),
                source,
            })?;
        Version::from_version_output(&String::from_utf8_lossy(&out.stdout))
    }

    /// The `version =` header this line reads.
    pub fn config_version(self) -> i64 {
        if self.major >= 2 {
            3
        } else {
            2
        }
    }

    /// 2.1 made CRI pull through the Transfer Service; `use_local_image_pull` exists from then.
    fn has_transfer_cri_pull(self) -> bool {
        self >= Version::V2_1
    }
}

impl std::str::FromStr for Version {
    type Err = VersionError;
    /// `1.6`, `1.7.24~ds1`, `v2.1.9+unknown`, `2` (= 2.1, the current 2.x).
    fn from_str(s: &str) -> Result<Version, VersionError> {
        let bad = || VersionError::Unrecognised(s.to_string());
        let t = s.trim().trim_start_matches('v');
        let mut parts = t.split(|c: char| !c.is_ascii_digit());
        let major: u32 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let minor: Option<u32> = parts.next().and_then(|p| p.parse().ok());
        let v = match (major, minor) {
            (2, None) => Version::V2_1,
            (m, Some(n)) => Version { major: m, minor: n },
            _ => return Err(bad()),
        };
        if v.major == 0 || v < Version::V1_6 {
            return Err(bad());
        }
        Ok(v)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The name containerd knows teleportd by (`[proxy_plugins.teleportd]`, CRI `snapshotter`).
pub const SNAPSHOTTER: &str = "teleportd";

/// CRI plugin settings of a node.
#[derive(Debug, Clone, Default)]
pub struct CriSettings {
    pub sandbox_image: String,
    /// `overlayfs` (standard) or [`SNAPSHOTTER`] (remote: snapshot annotations on, local pull).
    pub snapshotter: String,
    /// Directory of `HOST/hosts.toml` files (`config_path`; `registry.mirrors` is gone in 2.x).
    pub registry_config_path: Option<PathBuf>,
    /// One directory for CNI configs and plugins (empty: host-network pods only).
    pub cni_dir: Option<PathBuf>,
    /// runc's state root.
    pub runc_root: Option<PathBuf>,
    /// runc binary (`BinaryName`); None = `runc` from PATH.
    pub runc_binary: Option<PathBuf>,
    /// Never ask for a lower oom_score_adj than containerd's (no CAP_SYS_RESOURCE needed).
    pub restrict_oom_score_adj: bool,
    pub disable_apparmor: bool,
    /// Streaming server on 127.0.0.1 and a free port (many nodes on one machine).
    pub stream_server_local: bool,
}

/// A whole containerd config for a private node (own root, state, sockets).
#[derive(Debug, Clone, Default)]
pub struct NodeSettings {
    pub root: PathBuf,
    pub state: PathBuf,
    /// gRPC socket; ttrpc goes to `ADDRESS.ttrpc`.
    pub address: PathBuf,
    pub debug_address: Option<PathBuf>,
    pub log_level: String,
    /// `io.containerd.internal.v1.opt` path.
    pub opt_dir: Option<PathBuf>,
    pub disabled_plugins: Vec<String>,
    pub cri: Option<CriSettings>,
    /// A proxy snapshotter to register (teleportd, or a peer such as SOCI).
    pub proxy_snapshotter: Option<ProxySnapshotter>,
}

/// A proxy snapshotter: `[proxy_plugins.NAME]` at a gRPC socket.
#[derive(Debug, Clone)]
pub struct ProxySnapshotter {
    pub name: String,
    pub socket: PathBuf,
}

impl ProxySnapshotter {
    /// teleportd at `socket`, known to containerd as [`SNAPSHOTTER`].
    pub fn teleportd(socket: impl Into<PathBuf>) -> ProxySnapshotter {
        ProxySnapshotter {
            name: SNAPSHOTTER.into(),
            socket: socket.into(),
        }
    }
}

fn p(x: &Path) -> Value {
    Value::String(x.to_string_lossy().into_owned())
}

/// The table at `path` under `t`, created (empty) as needed.
fn table<'a>(t: &'a mut Table, path: &[&str]) -> &'a mut Table {
    let mut cur = t;
    for k in path {
        let v = cur
            .entry(k.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        if !v.is_table() {
            *v = Value::Table(Table::new());
        }
        cur = match v {
            Value::Table(t) => t,
            _ => unreachable!("replaced by a table just above"),
        };
    }
    cur
}

const CRI_V2: &str = "io.containerd.grpc.v1.cri";
const CRI_IMAGES: &str = "io.containerd.cri.v1.images";
const CRI_RUNTIME: &str = "io.containerd.cri.v1.runtime";

fn proxy_plugin(doc: &mut Table, name: &str, socket: &Path) {
    let t = table(doc, &["proxy_plugins", name]);
    t.insert("type".into(), "snapshot".into());
    t.insert("address".into(), p(socket));
}

/// Settings that make a remote snapshotter see the image's layers: snapshot annotations (the
/// labels teleportd reads), and — 2.1+ — CRI's own local pull instead of the Transfer Service.
fn snapshotter_settings(v: Version, t: &mut Table, snapshotter: &str) {
    t.insert("snapshotter".into(), snapshotter.into());
    let remote = snapshotter != "overlayfs";
    t.insert("disable_snapshot_annotations".into(), (!remote).into());
    if remote && v.has_transfer_cri_pull() {
        t.insert("use_local_image_pull".into(), true.into());
    }
}

fn cri_tables(v: Version, doc: &mut Table, c: &CriSettings) {
    let plugins = ["plugins"];
    let (images, runtime): (Vec<&str>, Vec<&str>) = if v.major >= 2 {
        (
            [&plugins[..], &[CRI_IMAGES]].concat(),
            [&plugins[..], &[CRI_RUNTIME]].concat(),
        )
    } else {
        (
            [&plugins[..], &[CRI_V2, "containerd"]].concat(),
            [&plugins[..], &[CRI_V2]].concat(),
        )
    };
    // Images: snapshotter, annotations, sandbox image, registry hosts.
    snapshotter_settings(v, table(doc, &images), &c.snapshotter);
    if v.major >= 2 {
        table(doc, &[&images[..], &["pinned_images"]].concat())
            .insert("sandbox".into(), c.sandbox_image.clone().into());
    } else {
        table(doc, &runtime).insert("sandbox_image".into(), c.sandbox_image.clone().into());
    }
    if let Some(cp) = &c.registry_config_path {
        let reg = if v.major >= 2 {
            [&images[..], &["registry"]].concat()
        } else {
            [&runtime[..], &["registry"]].concat()
        };
        table(doc, &reg).insert("config_path".into(), p(cp));
    }
    // Runtime: runc, CNI, security knobs.
    let rt = table(doc, &runtime);
    if c.restrict_oom_score_adj {
        rt.insert("restrict_oom_score_adj".into(), true.into());
    }
    if c.disable_apparmor {
        rt.insert("disable_apparmor".into(), true.into());
    }
    if let Some(cni) = &c.cni_dir {
        let t = table(doc, &[&runtime[..], &["cni"]].concat());
        t.insert("conf_dir".into(), p(cni));
        if v >= Version::V2_1 {
            t.insert("bin_dirs".into(), Value::Array(vec![p(cni)]));
        } else {
            t.insert("bin_dir".into(), p(cni));
        }
    }
    table(doc, &[&runtime[..], &["containerd"]].concat())
        .insert("default_runtime_name".into(), "runc".into());
    let runc = [&runtime[..], &["containerd", "runtimes", "runc"]].concat();
    table(doc, &runc).insert("runtime_type".into(), "io.containerd.runc.v2".into());
    let opts = table(doc, &[&runc[..], &["options"]].concat());
    if let Some(root) = &c.runc_root {
        opts.insert("Root".into(), p(root));
    }
    if let Some(bin) = &c.runc_binary {
        opts.insert("BinaryName".into(), p(bin));
    }
    // The streaming server stays in the grpc CRI plugin in 2.x.
    if c.stream_server_local {
        let t = table(doc, &["plugins", CRI_V2]);
        t.insert("stream_server_address".into(), "127.0.0.1".into());
        t.insert("stream_server_port".into(), "0".into());
    }
}

fn render(doc: &Table) -> String {
    // Serialising a Table of plain values cannot fail.
    toml::to_string(doc).unwrap_or_default()
}

/// A full config.toml for a private node.
pub fn node_config(v: Version, s: &NodeSettings) -> String {
    let mut doc = Table::new();
    doc.insert("version".into(), v.config_version().into());
    doc.insert("root".into(), p(&s.root));
    doc.insert("state".into(), p(&s.state));
    if !s.disabled_plugins.is_empty() {
        doc.insert(
            "disabled_plugins".into(),
            Value::Array(
                s.disabled_plugins
                    .iter()
                    .map(|x| x.as_str().into())
                    .collect(),
            ),
        );
    }
    table(&mut doc, &["grpc"]).insert("address".into(), p(&s.address));
    table(&mut doc, &["ttrpc"]).insert(
        "address".into(),
        format!("{}.ttrpc", s.address.display()).into(),
    );
    let debug = table(&mut doc, &["debug"]);
    if let Some(d) = &s.debug_address {
        debug.insert("address".into(), p(d));
    }
    if !s.log_level.is_empty() {
        debug.insert("level".into(), s.log_level.clone().into());
    }
    // No metrics listener: nodes must not fight over a TCP port.
    table(&mut doc, &["metrics"]).insert("address".into(), "".into());
    if let Some(opt) = &s.opt_dir {
        table(&mut doc, &["plugins", "io.containerd.internal.v1.opt"])
            .insert("path".into(), p(opt));
    }
    if v >= Version::V1_7 {
        // NRI listens on one host-wide socket (/var/run/nri/nri.sock): off unless asked.
        table(&mut doc, &["plugins", "io.containerd.nri.v1.nri"])
            .insert("disable".into(), true.into());
    }
    if let Some(c) = &s.cri {
        cri_tables(v, &mut doc, c);
    }
    if let Some(proxy) = &s.proxy_snapshotter {
        proxy_plugin(&mut doc, &proxy.name, &proxy.socket);
        if v.major >= 2 {
            transfer_unpack(
                &mut doc,
                &proxy.name,
                s.cri
                    .as_ref()
                    .and_then(|c| c.registry_config_path.as_deref()),
            );
        }
    }
    render(&doc)
}

/// 2.x `ctr` pulls and imports through the Transfer Service, which unpacks only into the
/// snapshotters listed here (and reads registry hosts from its own config_path).
fn transfer_unpack(doc: &mut Table, snapshotter: &str, config_path: Option<&Path>) {
    let t = table(doc, &["plugins", "io.containerd.transfer.v1.local"]);
    let unpack = |snap: &str| {
        let mut u = Table::new();
        u.insert("platform".into(), "linux".into());
        u.insert("snapshotter".into(), snap.into());
        Value::Table(u)
    };
    t.insert(
        "unpack_config".into(),
        Value::Array(vec![unpack(snapshotter), unpack("overlayfs")]),
    );
    if let Some(cp) = config_path {
        t.insert("config_path".into(), p(cp));
    }
}

/// What to add to a node's existing containerd config so CRI uses teleportd at `socket`:
/// the proxy plugin and the CRI snapshotter settings, with the registry hosts directory.
pub fn snippet(v: Version, socket: &Path) -> String {
    let mut doc = Table::new();
    doc.insert("version".into(), v.config_version().into());
    proxy_plugin(&mut doc, SNAPSHOTTER, socket);
    let images: &[&str] = if v.major >= 2 {
        &["plugins", CRI_IMAGES]
    } else {
        &["plugins", CRI_V2, "containerd"]
    };
    snapshotter_settings(v, table(&mut doc, images), SNAPSHOTTER);
    let reg: &[&str] = if v.major >= 2 {
        &["plugins", CRI_IMAGES, "registry"]
    } else {
        &["plugins", CRI_V2, "registry"]
    };
    table(&mut doc, reg).insert("config_path".into(), "/etc/containerd/certs.d".into());
    let mut head = format!(
        "# containerd {v}: teleportd as CRI's snapshotter (merge into /etc/containerd/config.toml;\n\
         # registry hosts go to /etc/containerd/certs.d/HOST/hosts.toml).\n"
    );
    if v.has_transfer_cri_pull() {
        head.push_str(
            "# containerd 2.1+ pulls CRI images through the Transfer Service unless\n\
             # use_local_image_pull = true (disable_snapshot_annotations = false also turns it\n\
             # off): teleportd is tested with CRI's own pull, which hands it the layer labels.\n",
        );
    }
    head + &render(&doc)
}

/// `hosts.toml` telling containerd to reach `host` over plain HTTP, or over HTTPS trusting
/// `ca` when given.
pub fn hosts_toml(host: &str, ca: Option<&Path>) -> String {
    match ca {
        None => format!(
            "server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n  skip_verify = true\n"
        ),
        Some(ca) => {
            let mut t = Table::new();
            t.insert("ca".into(), p(ca));
            format!(
                "server = \"https://{host}\"\n\n[host.\"https://{host}\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n  {}",
                render(&t)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Table {
        s.parse::<Table>()
            .unwrap_or_else(|e| panic!("invalid TOML: {e}\n{s}"))
    }

    fn get<'a>(t: &'a Table, path: &[&str]) -> Option<&'a Value> {
        let (last, head) = path.split_last()?;
        let mut cur = t;
        for k in head {
            cur = cur.get(*k)?.as_table()?;
        }
        cur.get(*last)
    }

    #[test]
    fn versions_parse_from_version_output_and_names() {
        let v16 = "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n";
        assert_eq!(Version::from_version_output(v16).ok(), Some(Version::V1_6));
        let v21 = "containerd github.com/containerd/containerd/v2 2.1.9+unknown \n";
        assert_eq!(Version::from_version_output(v21).ok(), Some(Version::V2_1));
        assert_eq!("1.7".parse::<Version>().ok(), Some(Version::V1_7));
        assert_eq!("2".parse::<Version>().ok(), Some(Version::V2_1));
        assert_eq!("v2.0.3".parse::<Version>().ok(), Some(Version::V2_0));
        assert!("1.5".parse::<Version>().is_err());
        assert!("banana".parse::<Version>().is_err());
        assert!(Version::from_version_output("containerd").is_err());
    }

    fn teleporter(v: Version) -> Table {
        parse(&node_config(
            v,
            &NodeSettings {
                root: "/n/root".into(),
                state: "/n/state".into(),
                address: "/n/c.sock".into(),
                cri: Some(CriSettings {
                    sandbox_image: "127.0.0.1:5000/pause:1".into(),
                    snapshotter: SNAPSHOTTER.into(),
                    registry_config_path: Some("/n/certs.d".into()),
                    cni_dir: Some("/n/cni".into()),
                    runc_root: Some("/n/state/runc".into()),
                    runc_binary: Some("/usr/bin/runc".into()),
                    ..Default::default()
                }),
                proxy_snapshotter: Some(ProxySnapshotter::teleportd("/n/t.sock")),
                ..Default::default()
            },
        ))
    }

    #[test]
    fn containerd_1x_node_config_is_version_2_with_grpc_cri() {
        for v in [Version::V1_6, Version::V1_7] {
            let t = teleporter(v);
            assert_eq!(get(&t, &["version"]).and_then(Value::as_integer), Some(2));
            let ctd = ["plugins", CRI_V2, "containerd"];
            let at = |k: &str| get(&t, &[&ctd[..], &[k]].concat()).cloned();
            assert_eq!(at("snapshotter"), Some("teleportd".into()));
            assert_eq!(at("disable_snapshot_annotations"), Some(false.into()));
            assert_eq!(at("use_local_image_pull"), None);
            assert_eq!(
                get(&t, &["plugins", CRI_V2, "registry", "config_path"]),
                Some(&"/n/certs.d".into())
            );
            assert_eq!(
                get(&t, &["plugins", CRI_V2, "sandbox_image"]),
                Some(&"127.0.0.1:5000/pause:1".into())
            );
            let bin = [&ctd[..], &["runtimes", "runc", "options", "BinaryName"]].concat();
            assert_eq!(get(&t, &bin), Some(&"/usr/bin/runc".into()));
            assert_eq!(
                get(&t, &["proxy_plugins", "teleportd", "address"]),
                Some(&"/n/t.sock".into())
            );
            assert!(get(&t, &["plugins", CRI_IMAGES]).is_none());
        }
        assert!(get(
            &teleporter(Version::V1_6),
            &["plugins", "io.containerd.nri.v1.nri"]
        )
        .is_none());
        assert_eq!(
            get(
                &teleporter(Version::V1_7),
                &["plugins", "io.containerd.nri.v1.nri", "disable"]
            ),
            Some(&true.into())
        );
    }

    #[test]
    fn containerd_2x_node_config_is_version_3_with_split_cri_plugins() {
        let t = teleporter(Version::V2_1);
        assert_eq!(get(&t, &["version"]).and_then(Value::as_integer), Some(3));
        let img = |k: &[&str]| get(&t, &[&["plugins", CRI_IMAGES][..], k].concat()).cloned();
        assert_eq!(img(&["snapshotter"]), Some("teleportd".into()));
        assert_eq!(img(&["disable_snapshot_annotations"]), Some(false.into()));
        assert_eq!(img(&["use_local_image_pull"]), Some(true.into()));
        assert_eq!(
            img(&["pinned_images", "sandbox"]),
            Some("127.0.0.1:5000/pause:1".into())
        );
        assert_eq!(img(&["registry", "config_path"]), Some("/n/certs.d".into()));
        let rt = [
            "plugins",
            CRI_RUNTIME,
            "containerd",
            "runtimes",
            "runc",
            "options",
        ];
        assert_eq!(
            get(&t, &[&rt[..], &["BinaryName"]].concat()),
            Some(&"/usr/bin/runc".into())
        );
        assert_eq!(
            get(&t, &["plugins", CRI_RUNTIME, "cni", "bin_dirs"]),
            Some(&Value::Array(vec!["/n/cni".into()]))
        );
        assert_eq!(
            get(&t, &["plugins", "io.containerd.nri.v1.nri", "disable"]),
            Some(&true.into())
        );
        // Nothing left in the 1.x places 2.x ignores or rejects.
        assert!(get(&t, &["plugins", CRI_V2, "containerd"]).is_none());
        assert!(get(&t, &["plugins", CRI_V2, "registry"]).is_none());
        // 2.0 has no Transfer Service CRI pull, so no use_local_image_pull.
        let t20 = teleporter(Version::V2_0);
        assert!(get(&t20, &["plugins", CRI_IMAGES, "use_local_image_pull"]).is_none());
    }

    #[test]
    fn shuttle_keeps_annotations_off_and_overlayfs() {
        let s = NodeSettings {
            cri: Some(CriSettings {
                snapshotter: "overlayfs".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        for v in [Version::V1_6, Version::V2_1] {
            let t = parse(&node_config(v, &s));
            let text = node_config(v, &s);
            assert!(!text.contains("proxy_plugins"), "{text}");
            assert!(
                text.contains("disable_snapshot_annotations = true"),
                "{text}"
            );
            assert!(!text.contains("use_local_image_pull"), "{text}");
            assert!(get(&t, &["version"]).is_some());
        }
    }

    #[test]
    fn snippets_name_the_plugins_each_line_reads() {
        let s16 = snippet(Version::V1_6, Path::new("/run/teleportd/teleportd.sock"));
        let s2 = snippet(Version::V2_1, Path::new("/run/teleportd/teleportd.sock"));
        for s in [&s16, &s2] {
            let t = parse(s);
            assert_eq!(
                get(&t, &["proxy_plugins", "teleportd", "type"]),
                Some(&"snapshot".into())
            );
        }
        assert!(
            s16.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd]"),
            "{s16}"
        );
        assert!(
            s2.contains("[plugins.\"io.containerd.cri.v1.images\"]"),
            "{s2}"
        );
        assert!(s2.contains("use_local_image_pull = true"), "{s2}");
        assert!(s2.contains("Transfer Service"), "{s2}");
        assert!(!s16.contains("use_local_image_pull"), "{s16}");
    }

    #[test]
    fn hosts_toml_is_plain_http() {
        let t = parse(&hosts_toml("127.0.0.1:5000", None));
        assert_eq!(get(&t, &["server"]), Some(&"http://127.0.0.1:5000".into()));
    }
}
