//! The `--config FILE` form shared by the workspace's daemons (teleportd, registry-mock): a flat
//! TOML file whose keys are the daemon's long flags (`cache_dir` or `cache-dir`), turned into
//! the flags themselves so the one command-line parser reads both and every flag has a key.
//! Placed ahead of the real command line, so flags given there override the file.

use std::ffi::OsString;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SettingsFileError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// Flags from the TOML `text`: `key = "v"` / number → `--key=v`; `key = true` → `--key`
/// (`false`: left out); `key = ["a", "b"]` → `--key=a --key=b`. Nested tables are refused.
pub fn toml_to_args(text: &str, path: &str) -> Result<Vec<String>, SettingsFileError> {
    let invalid = |message: String| SettingsFileError::Invalid {
        path: path.to_string(),
        message,
    };
    let table: toml::Table = text.parse().map_err(|e| invalid(format!("{e}")))?;
    let mut args = Vec::new();
    for (key, value) in &table {
        if key == "config" || key.is_empty() || key.starts_with('-') {
            return Err(invalid(format!("key {key:?} is not allowed")));
        }
        let flag = format!("--{}", key.replace('_', "-"));
        let scalar = |v: &toml::Value| -> Result<String, SettingsFileError> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                other => Err(invalid(format!(
                    "key {key:?}: expected a string or number, found {}",
                    other.type_str()
                ))),
            }
        };
        match value {
            toml::Value::Boolean(true) => args.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for v in items {
                    args.push(format!("{flag}={}", scalar(v)?));
                }
            }
            v => args.push(format!("{flag}={}", scalar(v)?)),
        }
    }
    Ok(args)
}

/// `argv` with the flags of its `--config FILE` (looked for after index `at`, e.g. after a
/// subcommand's name) inserted at `at`, ahead of the command line's own flags.
pub fn splice_config_file(
    argv: Vec<OsString>,
    at: usize,
) -> Result<Vec<OsString>, SettingsFileError> {
    let mut file: Option<OsString> = None;
    let mut it = argv.iter().skip(at);
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        if a == "--config" {
            file = it.next().cloned();
        } else if let Some(v) = a.to_str().and_then(|s| s.strip_prefix("--config=")) {
            file = Some(v.into());
        }
    }
    let Some(file) = file else {
        return Ok(argv);
    };
    let path = Path::new(&file);
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SettingsFileError::Read {
        path: shown.clone(),
        source,
    })?;
    let extra = toml_to_args(&text, &shown)?;
    let at = at.min(argv.len());
    let mut out = argv[..at].to_vec();
    out.extend(extra.into_iter().map(OsString::from));
    out.extend_from_slice(&argv[at..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_flags() {
        let a = toml_to_args(
            "registry = \"http://r:5000\"\ncache_dir = \"/c\"\nexpansion-wait = 5\n\
             keep_fuse_manager = true\nno_remote = false\nteleport_repos = [\"a\", \"b\"]\n\
             profile_window = 2.5\n",
            "t.toml",
        )
        .unwrap_or_default();
        assert_eq!(
            a,
            [
                "--registry=http://r:5000",
                "--cache-dir=/c",
                "--expansion-wait=5",
                "--keep-fuse-manager",
                "--teleport-repos=a",
                "--teleport-repos=b",
                "--profile-window=2.5",
            ]
        );
    }

    #[test]
    fn bad_files_are_named_errors() {
        for bad in [
            "x = {a = 1}",
            "[t]\na = 1",
            "config = \"/x\"",
            "a = [[1]]",
            "not toml",
        ] {
            let e = toml_to_args(bad, "f.toml").err().map(|e| e.to_string());
            assert!(
                e.as_deref().is_some_and(|e| e.starts_with("f.toml")),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn splice_puts_file_flags_ahead_of_the_command_line() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "listen = \"0.0.0.0:80\"\n").unwrap_or_else(|e| panic!("{e}"));
        let argv: Vec<OsString> = [
            "bin",
            "serve",
            "--config",
            f.to_str().unwrap_or(""),
            "--listen=1:2",
        ]
        .map(OsString::from)
        .to_vec();
        let out = splice_config_file(argv, 2).unwrap_or_default();
        let out: Vec<String> = out
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            out,
            [
                "bin",
                "serve",
                "--listen=0.0.0.0:80",
                "--config",
                f.to_str().unwrap_or(""),
                "--listen=1:2"
            ]
        );
        let none: Vec<OsString> = ["bin", "serve"].map(OsString::from).to_vec();
        assert_eq!(splice_config_file(none.clone(), 2).ok(), Some(none));
        let missing: Vec<OsString> = ["bin", "--config=/nonexistent/x.toml"]
            .map(OsString::from)
            .to_vec();
        assert!(matches!(
            splice_config_file(missing, 1),
            Err(SettingsFileError::Read { .. })
        ));
    }
}
