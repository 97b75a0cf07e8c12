//! etcd's `--config-file` (or `ETCD_CONFIG_FILE`): a YAML file holding the member's settings.
//!
//! As with etcd, when a configuration file is given, the other command-line flags and the
//! `ETCD_*` variables are ignored. The file's keys are etcd's flag names, with two nested maps for
//! TLS (`client-transport-security`, `peer-transport-security`, whose keys name the client and
//! peer TLS flags); lists (`log-outputs: [stderr]`, `cipher-suites: [...]`) stand for
//! comma-separated values, durations may be integer nanoseconds (as etcd's YAML decoder takes
//! them), empty values are left unset, and keys that name no flag are ignored with a warning, as
//! etcd ignores them. [`expand`] turns the file into the command line it stands for, so every
//! setting goes through the same parsing and checks as a flag would.

use std::ffi::OsString;

use yaml_rust2::{Yaml, YamlLoader};

use crate::etcd_flags::Kind;

/// A `serve` command line read from a configuration file.
#[derive(Debug)]
pub struct FromFile {
    /// The command line: the program, what preceded `serve`, `serve`, and one `--flag=value`
    /// per setting of the file.
    pub args: Vec<OsString>,
    /// The file it was read from.
    pub path: String,
    /// Keys of the file that name no flag (ignored).
    pub unknown: Vec<String>,
}

/// Where the keys of `client-transport-security` go.
const CLIENT_TLS: &[(&str, &str)] = &[
    ("cert-file", "cert-file"),
    ("key-file", "key-file"),
    ("client-cert-auth", "client-cert-auth"),
    ("trusted-ca-file", "trusted-ca-file"),
    ("auto-tls", "auto-tls"),
    ("crl-file", "client-crl-file"),
    ("allowed-hostname", "client-cert-allowed-hostname"),
    ("client-cert-file", "client-cert-file"),
    ("client-key-file", "client-key-file"),
];

/// Where the keys of `peer-transport-security` go.
const PEER_TLS: &[(&str, &str)] = &[
    ("cert-file", "peer-cert-file"),
    ("key-file", "peer-key-file"),
    ("client-cert-auth", "peer-client-cert-auth"),
    ("trusted-ca-file", "peer-trusted-ca-file"),
    ("auto-tls", "peer-auto-tls"),
    ("crl-file", "peer-crl-file"),
    ("allowed-cn", "peer-cert-allowed-cn"),
    ("allowed-hostname", "peer-cert-allowed-hostname"),
    ("client-cert-file", "peer-client-cert-file"),
    ("client-key-file", "peer-client-key-file"),
    (
        "skip-client-san-verification",
        "experimental-peer-skip-client-san-verification",
    ),
];

/// Flags of `concord serve` (clap's) that take a Go duration, for integer nanoseconds in a file.
const CLAP_DURATIONS: &[&str] = &[
    "experimental-corrupt-check-time",
    "experimental-warning-apply-duration",
    "experimental-watch-progress-notify-interval",
    "grpc-keepalive-interval",
    "grpc-keepalive-timeout",
];

/// The command line `args` stands for once its configuration file (if it names one, by
/// `--config-file` or `ETCD_CONFIG_FILE`) is read; `None` when it runs no `serve` with a file.
pub fn expand(args: &[OsString], env: &dyn Fn(&str) -> Option<String>) -> Result<Option<FromFile>, String> {
    let Some(serve_at) = args.iter().position(|a| a == "serve") else {
        return Ok(None);
    };
    let line = crate::goflags::scan(args);
    let given = line
        .etcd_only
        .iter()
        .rev()
        .find(|g| g.name == "config-file")
        .and_then(|g| g.value.clone());
    let Some(path) = given.or_else(|| env("ETCD_CONFIG_FILE")).filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read config file {path:?}: {e}"))?;
    let (flags, unknown) = flags_of(&text).map_err(|e| format!("config file {path:?}: {e}"))?;
    let mut expanded: Vec<OsString> = args[..=serve_at].to_vec();
    expanded.extend(
        flags
            .into_iter()
            .map(|(name, value)| OsString::from(format!("--{name}={value}"))),
    );
    Ok(Some(FromFile {
        args: expanded,
        path,
        unknown,
    }))
}

/// Flag names and values, in the file's order.
type Settings = Vec<(String, String)>;

/// The flags a configuration file sets, in its order, and the keys that name no flag.
fn flags_of(text: &str) -> Result<(Settings, Vec<String>), String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    let mut flags = Vec::new();
    let mut unknown = Vec::new();
    let Some(root) = docs.into_iter().next() else {
        return Ok((flags, unknown));
    };
    let Yaml::Hash(root) = root else {
        return Err("the file is not a map of settings".into());
    };
    let known = crate::goflags::clap_flags();
    let is_flag = |name: &str| known.contains_key(name) || crate::etcd_flags::lookup(name).is_some();
    for (key, value) in root {
        let key = scalar(&key).ok_or("a key is not a plain name")?;
        let nested = match key.as_str() {
            "client-transport-security" => Some(CLIENT_TLS),
            "peer-transport-security" => Some(PEER_TLS),
            _ => None,
        };
        if let Some(names) = nested {
            let Yaml::Hash(inner) = value else {
                if !matches!(value, Yaml::Null) {
                    return Err(format!("{key} is not a map"));
                }
                continue;
            };
            for (inner_key, inner_value) in inner {
                let inner_key = scalar(&inner_key).ok_or("a key is not a plain name")?;
                match names.iter().find(|(k, _)| *k == inner_key) {
                    Some((_, flag)) => push(&mut flags, flag, &inner_value)?,
                    None => unknown.push(format!("{key}.{inner_key}")),
                }
            }
        } else if key == "config-file" {
            // etcd reads one file; a file naming another is not followed.
        } else if is_flag(&key) {
            push(&mut flags, &key, &value)?;
        } else {
            unknown.push(key);
        }
    }
    Ok((flags, unknown))
}

/// Adds `--name=value` for a setting, unless it is empty.
fn push(flags: &mut Settings, name: &str, value: &Yaml) -> Result<(), String> {
    let text = match value {
        Yaml::Null => return Ok(()),
        Yaml::Array(items) => items
            .iter()
            .map(|item| scalar(item).ok_or_else(|| format!("{name}: a list of plain values is expected")))
            .collect::<Result<Vec<_>, _>>()?
            .join(","),
        Yaml::Integer(n) if takes_duration(name) => format!("{n}ns"),
        other => scalar(other).ok_or_else(|| format!("{name}: a plain value is expected"))?,
    };
    flags.push((name.to_string(), text));
    Ok(())
}

/// Whether flag `name` takes a Go duration.
fn takes_duration(name: &str) -> bool {
    CLAP_DURATIONS.contains(&name) || crate::etcd_flags::lookup(name).is_some_and(|f| matches!(f.kind, Kind::Duration))
}

/// A scalar's text as a flag takes it.
fn scalar(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(n) => Some(n.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_reads_as_the_flags_it_sets() {
        let text = "
name: 'etcd01'
data-dir: /data/etcd
heartbeat-interval: 250
listen-client-urls: https://10.0.0.1:2379,https://127.0.0.1:2379
initial-cluster-state: 'new'
enable-v2: false
cors:
client-transport-security:
  cert-file: /pki/server.pem
  client-cert-auth: true
  auto-tls: false
peer-transport-security:
  trusted-ca-file: /pki/ca.pem
  allowed-cn:
  peer-client-cert-auth: true
log-outputs: [stderr]
experimental-watch-progress-notify-interval: 5000000000
auto-compaction-retention: \"1\"
no-such-setting: 3
";
        let (flags, unknown) = flags_of(text).unwrap();
        let flags: Vec<String> = flags.into_iter().map(|(k, v)| format!("--{k}={v}")).collect();
        assert_eq!(
            flags,
            [
                "--name=etcd01",
                "--data-dir=/data/etcd",
                "--heartbeat-interval=250",
                "--listen-client-urls=https://10.0.0.1:2379,https://127.0.0.1:2379",
                "--initial-cluster-state=new",
                "--enable-v2=false",
                "--cert-file=/pki/server.pem",
                "--client-cert-auth=true",
                "--auto-tls=false",
                "--peer-trusted-ca-file=/pki/ca.pem",
                "--log-outputs=stderr",
                "--experimental-watch-progress-notify-interval=5000000000ns",
                "--auto-compaction-retention=1",
            ]
        );
        assert_eq!(
            unknown,
            ["peer-transport-security.peer-client-cert-auth", "no-such-setting"]
        );
    }

    #[test]
    fn the_file_replaces_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etcd.conf.yml");
        std::fs::write(&path, "name: from-file\n").unwrap();
        let args: Vec<OsString> = ["concord", "--log-format", "json", "serve", "--name", "from-flag"]
            .iter()
            .map(OsString::from)
            .chain([OsString::from(format!("--config-file={}", path.display()))])
            .collect();
        let expanded = expand(&args, &|_| None).unwrap().expect("a file is named");
        assert_eq!(
            expanded.args,
            ["concord", "--log-format", "json", "serve", "--name=from-file"]
        );
        // Named by the environment instead.
        let plain: Vec<OsString> = ["concord", "serve"].iter().map(OsString::from).collect();
        let file = path.display().to_string();
        let expanded = expand(&plain, &|k| (k == "ETCD_CONFIG_FILE").then(|| file.clone())).unwrap();
        assert_eq!(expanded.expect("named by ETCD_CONFIG_FILE").args.len(), 3);
        assert!(expand(&plain, &|_| None).unwrap().is_none());
        let missing = format!("--config-file={}", dir.path().join("none.yml").display());
        let err = expand(&[plain[0].clone(), plain[1].clone(), missing.into()], &|_| None).unwrap_err();
        assert!(err.starts_with("cannot read config file"), "{err}");
        std::fs::write(&path, "- a\n- b\n").unwrap();
        assert!(expand(&args, &|_| None).unwrap_err().contains("not a map"));
    }
}
