//! `trex node ROLE --config FILE`: a TOML file whose keys are the role's flags.
//!
//! The file is read before the command line is parsed, and each key that is
//! neither on the command line nor in its `TREX_*` variable (`TREX_ENDPOINTS`,
//! `TREX_CLUSTER_ID`) becomes that flag, so the precedence is: flags, then
//! environment, then the file, then the defaults. Keys are the flags' long names, with `-` or `_`
//! (`data-dir`/`data_dir`); values are strings, integers, booleans (a switch:
//! `true` sets it) or arrays (joined with commas: `peers = ["a:1", "b:2"]`).
//! An unknown key is refused by the command line parser like an unknown flag.

use crate::error::{usage, CliError};
use std::ffi::{OsStr, OsString};

/// The flags a `TREX_*` variable also sets (`TREX_ENDPOINTS`,
/// `TREX_CLUSTER_ID`, `TREX_TLS_DIR`, `TREX_TLS_NAME`, `TREX_INSECURE`): the
/// variable overrides the file.
const ENV_FLAGS: [&str; 5] = ["endpoints", "cluster-id", "tls-dir", "tls-name", "insecure"];

/// The roles whose command lines take `--config`.
const ROLES: [&str; 3] = ["storage", "sequencer", "consensus"];

/// `args` (the whole command line, program first) with the config file's
/// keys inserted as flags after `trex node ROLE`; unchanged for any other
/// command or without `--config`.
pub fn expand(args: Vec<OsString>) -> Result<Vec<OsString>, CliError> {
    let is = |i: usize, s: &str| args.get(i).is_some_and(|a| a == s);
    if !is(1, "node") || !ROLES.iter().any(|r| is(2, r)) {
        return Ok(args);
    }
    let Some(path) = config_path(&args[3..]) else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        usage!(
            "cannot read the config file {}: {e}",
            path.to_string_lossy()
        )
    })?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        usage!(
            "config file {} is not valid TOML: {}",
            path.to_string_lossy(),
            e.to_string().trim()
        )
    })?;
    let mut extra: Vec<OsString> = Vec::new();
    for (key, value) in &table {
        let flag = key.replace('_', "-");
        let env_set =
            ENV_FLAGS.contains(&flag.as_str()) && std::env::var_os(env_name(&flag)).is_some();
        if given(&args[3..], &flag) || env_set {
            continue; // the command line or the environment wins
        }
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(true) => {
                extra.push(format!("--{flag}").into());
                continue;
            }
            toml::Value::Boolean(false) => continue,
            toml::Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    toml::Value::Integer(i) => Ok(i.to_string()),
                    other => Err(usage!(
                        "config file {}: key \"{key}\" holds a {} in its array; an array holds strings or integers",
                        path.to_string_lossy(),
                        other.type_str()
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            other => {
                return Err(usage!(
                    "config file {}: key \"{key}\" holds a {}; a key is a flag of `trex node {}` and holds a string, a number, a boolean or an array",
                    path.to_string_lossy(),
                    other.type_str(),
                    args[2].to_string_lossy()
                ))
            }
        };
        extra.push(format!("--{flag}").into());
        extra.push(text.into());
    }
    let mut out = args[..3].to_vec();
    out.extend(extra);
    out.extend_from_slice(&args[3..]);
    Ok(out)
}

/// The value of `--config` (`--config FILE` or `--config=FILE`).
fn config_path(args: &[OsString]) -> Option<OsString> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--config" {
            return it.next().cloned();
        }
        if let Some(v) = a.to_str().and_then(|s| s.strip_prefix("--config=")) {
            return Some(v.into());
        }
    }
    None
}

/// Whether `--flag` is on the command line (alone or as `--flag=…`).
fn given(args: &[OsString], flag: &str) -> bool {
    let long = format!("--{flag}");
    args.iter().map(OsString::as_os_str).any(|a: &OsStr| {
        a == long.as_str()
            || a.to_str()
                .is_some_and(|s| s.starts_with(&format!("{long}=")))
    })
}

/// The environment variable that overrides a key: `TREX_` and the flag in
/// capitals with `_` (`cluster-id` → `TREX_CLUSTER_ID`).
fn env_name(flag: &str) -> String {
    format!("TREX_{}", flag.to_uppercase().replace('-', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn keys_become_flags_and_the_command_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("unit.toml");
        std::fs::write(
            &f,
            "listen = \"127.0.0.1:1\"\ndata_dir = \"/d\"\nsegment-size = \"1MiB\"\nmax-connections = 64\n",
        )
        .unwrap();
        let args = os(&[
            "trex",
            "node",
            "storage",
            "--config",
            f.to_str().unwrap(),
            "--listen",
            "127.0.0.1:2",
        ]);
        let out = expand(args).unwrap();
        let s: Vec<String> = out
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(s.windows(2).any(|w| w == ["--data-dir", "/d"]), "{s:?}");
        assert!(
            s.windows(2).any(|w| w == ["--max-connections", "64"]),
            "{s:?}"
        );
        assert_eq!(
            s.iter().filter(|a| *a == "--listen").count(),
            1,
            "the command line's --listen wins: {s:?}"
        );
        assert!(s.windows(2).any(|w| w == ["--listen", "127.0.0.1:2"]));
    }

    #[test]
    fn arrays_join_and_bad_files_are_usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "peers = [\"a:1\", \"b:2\"]\nid = 1\n").unwrap();
        let out = expand(os(&[
            "trex",
            "node",
            "consensus",
            "--config",
            f.to_str().unwrap(),
        ]))
        .unwrap();
        let s: Vec<String> = out
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(s.windows(2).any(|w| w == ["--peers", "a:1,b:2"]), "{s:?}");
        std::fs::write(&f, "peers = [").unwrap();
        assert!(expand(os(&[
            "trex",
            "node",
            "consensus",
            "--config",
            f.to_str().unwrap()
        ]))
        .is_err());
        std::fs::write(&f, "[nested]\nx = 1\n").unwrap();
        assert!(expand(os(&[
            "trex",
            "node",
            "consensus",
            "--config",
            f.to_str().unwrap()
        ]))
        .is_err());
        let missing = dir.path().join("none.toml");
        assert!(expand(os(&[
            "trex",
            "node",
            "storage",
            "--config",
            missing.to_str().unwrap()
        ]))
        .is_err());
        // Other commands are untouched.
        let args = os(&["trex", "status", "--config", "x"]);
        assert_eq!(expand(args.clone()).unwrap(), args);
    }
}
