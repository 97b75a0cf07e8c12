//! The flags of `etcd` (3.4 and 3.5) that `concord serve` takes without a clap argument of its
//! own, and the checks etcd makes of `ETCD_*` variables.
//!
//! A command line or unit copied from an etcd deployment must start Concord. Each etcd flag is
//! therefore either a clap flag of [`crate::serve::ServeArgs`] (implemented, with etcd's
//! meaning) or listed in [`FLAGS`] here with what Concord makes of it:
//!
//! - nothing, because what it tunes does not exist in Concord (bbolt, WAL files, the v2 API, Go's
//!   profiler): accepted, with one warning line at start naming it;
//! - not implemented yet, and running without it would be less safe than the operator asked
//!   (etcd's v2 proxy): refused, so the member does
//!   not start weaker than configured;
//! - what Concord always does: accepted silently.
//!
//! A value that asks for nothing (`--proxy=off`, `--enable-v2=false`, etcd's defaults where
//! Concord behaves the same) is accepted silently whatever the flag. Values are checked as etcd's
//! Go flag types check them. The list is etcd's `etcdmain/config.go` of v3.4.45 and v3.5.33
//! (including the legacy names etcd ignores).

use std::collections::HashMap;

use crate::goflags::{env_name, parse_bool, Arity, CommandLine};

/// The Go type of an etcd flag, which decides how its value is checked.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// `BoolVar`: a value only after `=`, Go's spellings.
    Bool,
    /// `UintVar` and its kind.
    Uint,
    /// `IntVar`.
    Int,
    /// `DurationVar`: Go's duration syntax.
    Duration,
    /// `StringVar` and list flags.
    Text,
    /// etcd's `SelectiveStringValue`: one of these.
    Choice(&'static [&'static str]),
}

impl Kind {
    /// How the flag takes its value on a command line.
    pub fn arity(self) -> Arity {
        match self {
            Kind::Bool => Arity::Bool,
            _ => Arity::Value,
        }
    }

    /// The value checked as etcd checks it, in a normal form for [`EtcdFlag::quiet`]: booleans
    /// as `true`/`false`, numbers in decimal, a zero duration as `0`.
    fn normalize(self, value: Option<&str>) -> Result<String, String> {
        let Some(value) = value else {
            return match self {
                Kind::Bool => Ok("true".into()),
                _ => Err("flag needs an argument".into()),
            };
        };
        match self {
            Kind::Bool => parse_bool(value)
                .map(|b| b.to_string())
                .map_err(|_| "parse error".into()),
            Kind::Uint => value
                .parse::<u64>()
                .map(|n| n.to_string())
                .map_err(|_| "parse error".into()),
            Kind::Int => value
                .parse::<i64>()
                .map(|n| n.to_string())
                .map_err(|_| "parse error".into()),
            Kind::Duration => concord_server::go_duration::parse_signed(value).map(|(_, d)| {
                if d.is_zero() {
                    "0".to_string()
                } else {
                    value.to_string()
                }
            }),
            Kind::Text => Ok(value.to_string()),
            Kind::Choice(valid) if valid.contains(&value) => Ok(value.to_string()),
            Kind::Choice(valid) => Err(format!("valid values are {valid:?}")),
        }
    }
}

/// What Concord makes of an etcd flag.
#[derive(Clone, Copy, Debug)]
pub enum Effect {
    /// It tunes something Concord does not have; the reason says what Concord does instead.
    Ignored(&'static str),
    /// Concord does not implement it yet, and running without it would be less safe than
    /// asked: the member refuses to start.
    Refuse(&'static str),
    /// Concord always does what any value asks (or maps the flag elsewhere): silent.
    Same,
}

/// One etcd flag Concord takes outside clap.
#[derive(Debug)]
pub struct EtcdFlag {
    /// The flag's name, without dashes.
    pub name: &'static str,
    /// Its Go type.
    pub kind: Kind,
    /// What Concord makes of it.
    pub effect: Effect,
    /// Normalized values that ask for nothing Concord lacks: accepted silently.
    pub quiet: &'static [&'static str],
}

const fn flag(name: &'static str, kind: Kind, effect: Effect, quiet: &'static [&'static str]) -> EtcdFlag {
    EtcdFlag {
        name,
        kind,
        effect,
        quiet,
    }
}

use Effect::{Ignored, Refuse, Same};
use Kind::{Bool, Choice, Duration, Int, Text, Uint};

const BBOLT: &str = "Concord's store is redb, not bbolt";
const RAFT_LOG: &str =
    "Concord's Raft log (raft-engine) is truncated behind --snapshot-count, not kept as WAL and snapshot files";
const V2: &str = "Concord serves only the v3 API";
const V2_PROXY: &str = "Concord has no v2 proxy";
const LOGS: &str = "Concord logs to stderr through tracing (see --log-level and --log-format)";
const TRACING: &str = "Concord has no OpenTelemetry tracing";

/// Every etcd flag `concord serve` takes outside clap, with what it does here.
pub static FLAGS: &[EtcdFlag] = &[
    // Refused: Concord would run without what the operator relied on.
    // Read in main.rs (config_file.rs) before anything else: it stands for the whole command line.
    flag("config-file", Text, Same, &[]),
    flag("proxy", Choice(&["off", "readonly", "on"]), Refuse("Concord cannot run as etcd's v2 proxy"), &["off"]),
    // Not implemented yet: accepted with a warning.
    flag("enable-grpc-gateway", Bool, Ignored("Concord always serves etcd's JSON gateway (/v3/...) on --listen-client-urls, or on --listen-client-http-urls when given"), &["true"]),
    // No effect: what they tune does not exist in Concord.
    flag("max-snapshots", Uint, Ignored(RAFT_LOG), &[]),
    flag("max-wals", Uint, Ignored(RAFT_LOG), &[]),
    flag("backend-batch-interval", Duration, Ignored(BBOLT), &[]),
    flag("backend-batch-limit", Int, Ignored(BBOLT), &[]),
    flag("backend-bbolt-freelist-type", Text, Ignored(BBOLT), &[]),
    flag("experimental-backend-bbolt-freelist-type", Text, Ignored(BBOLT), &[]),
    flag("experimental-memory-mlock", Bool, Ignored(BBOLT), &["false"]),
    flag("experimental-compaction-batch-limit", Int, Ignored("Concord's compaction is not done in batches"), &[]),
    flag("experimental-compaction-sleep-interval", Duration, Ignored("Concord's compaction is not done in batches"), &[]),
    flag("experimental-bootstrap-defrag-threshold-megabytes", Uint, Ignored(BBOLT), &["0"]),
    flag("experimental-txn-mode-write-with-shared-buffer", Bool, Ignored(BBOLT), &["true"]),
    flag("unsafe-no-fsync", Bool, Ignored("Concord always syncs its Raft log"), &["false"]),
    flag("initial-election-tick-advance", Bool, Ignored("Concord does not fast-forward election ticks at boot"), &["false"]),
    flag("raft-read-timeout", Duration, Ignored("peer links are gRPC streams with their own timeouts"), &[]),
    flag("raft-write-timeout", Duration, Ignored("peer links are gRPC streams with their own timeouts"), &[]),
    flag("strict-reconfig-check", Bool, Ignored("Concord always refuses membership changes that would lose quorum"), &["true"]),
    flag("pre-vote", Bool, Ignored("Concord always runs Raft's pre-vote phase"), &["true"]),
    flag("experimental-peer-skip-client-san-verification", Bool, Ignored("Concord never checks the SAN of a peer's client certificate against its address"), &["true"]),
    flag("enable-v2", Bool, Ignored(V2), &["false"]),
    flag("experimental-enable-v2v3", Text, Ignored(V2), &[""]),
    flag("v2-deprecation", Choice(&["not-yet", "write-only", "write-only-drop-data", "gone"]), Ignored(V2), &["gone"]),
    flag("next-cluster-version-compatible", Bool, Ignored("Concord has no cluster version downgrade"), &["false"]),
    flag("experimental-downgrade-check-time", Duration, Ignored("Concord has no cluster version downgrade"), &[]),
    flag("proxy-failure-wait", Uint, Ignored(V2_PROXY), &[]),
    flag("proxy-refresh-interval", Uint, Ignored(V2_PROXY), &[]),
    flag("proxy-dial-timeout", Uint, Ignored(V2_PROXY), &[]),
    flag("proxy-write-timeout", Uint, Ignored(V2_PROXY), &[]),
    flag("proxy-read-timeout", Uint, Ignored(V2_PROXY), &[]),
    flag("logger", Text, Ignored(LOGS), &[]),
    flag("log-outputs", Text, Ignored(LOGS), &["default", "stderr"]),
    flag("log-output", Text, Ignored(LOGS), &["default", "stderr"]),
    flag("log-package-levels", Text, Ignored(LOGS), &[""]),
    flag("enable-log-rotation", Bool, Ignored(LOGS), &["false"]),
    flag("log-rotation-config-json", Text, Ignored(LOGS), &[]),
    flag("enable-pprof", Bool, Ignored("Concord is not a Go program: profile it with perf"), &["false"]),
    flag("experimental-enable-distributed-tracing", Bool, Ignored(TRACING), &["false"]),
    flag("experimental-distributed-tracing-address", Text, Ignored(TRACING), &[]),
    flag("experimental-distributed-tracing-service-name", Text, Ignored(TRACING), &[]),
    flag("experimental-distributed-tracing-instance-id", Text, Ignored(TRACING), &[]),
    flag("experimental-distributed-tracing-sampling-rate", Int, Ignored(TRACING), &[]),
    // Accepted silently: Concord always exports the extensive set (with gRPC histograms).
    flag("metrics", Text, Same, &[]),
    // etcd 3.4's --debug: turned into --log-level=debug by goflags.
    flag("debug", Bool, Same, &[]),
    // Names of etcd 0.4 that etcd still accepts and ignores.
    flag("cluster-active-size", Text, Ignored("etcd ignores it too"), &[]),
    flag("cluster-remove-delay", Text, Ignored("etcd ignores it too"), &[]),
    flag("cluster-sync-interval", Text, Ignored("etcd ignores it too"), &[]),
    flag("config", Text, Ignored("etcd ignores it too"), &[]),
    flag("force", Bool, Ignored("etcd ignores it too"), &[]),
    flag("max-result-buffer", Text, Ignored("etcd ignores it too"), &[]),
    flag("max-retry-attempts", Text, Ignored("etcd ignores it too"), &[]),
    flag("peer-heartbeat-interval", Text, Ignored("etcd ignores it too"), &[]),
    flag("peer-election-timeout", Text, Ignored("etcd ignores it too"), &[]),
    flag("retry-interval", Text, Ignored("etcd ignores it too"), &[]),
    flag("snapshot", Bool, Ignored("etcd ignores it too"), &[]),
    flag("v", Bool, Ignored("etcd ignores it too"), &[]),
    flag("vv", Bool, Ignored("etcd ignores it too"), &[]),
];

/// The etcd-only flag called `name`.
pub fn lookup(name: &str) -> Option<&'static EtcdFlag> {
    FLAGS.iter().find(|f| f.name == name)
}

/// What the etcd-only flags and `ETCD_*` variables of a command line come to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Review {
    /// One line per flag Concord ignores, and per variable etcd would warn about.
    pub warnings: Vec<String>,
}

/// Where a value came from, for messages.
#[derive(Clone, Copy)]
enum Source {
    Flag,
    Env,
}

/// Reviews `line` and the environment `env` (all variables, in order) as etcd's flag parsing
/// would, against `clap_flags` (see [`crate::goflags::clap_flags`]): an `ETCD_*` variable
/// shadowed by a flag on the command line is an error, an unknown one a warning (etcd's
/// `pkg/flags` words both); etcd-only flags given by either are checked and their effect
/// reported (see the module docs). An error means the member must not start.
pub fn review(
    line: &CommandLine,
    env: &[(String, String)],
    clap_flags: &HashMap<String, (Arity, Option<String>)>,
) -> Result<Review, String> {
    let mut review = Review::default();
    let clap_env: HashMap<&str, &str> = clap_flags
        .iter()
        .filter_map(|(name, (_, env))| Some((env.as_deref()?, name.as_str())))
        .collect();
    // Command line first, then the environment: each flag once, its last value.
    let mut given: Vec<(&'static EtcdFlag, Option<String>, Source)> = Vec::new();
    let mut set = |flag: &'static EtcdFlag, value: Option<String>, source: Source| {
        given.retain(|(f, _, _)| f.name != flag.name);
        given.push((flag, value, source));
    };
    for g in &line.etcd_only {
        if let Some(flag) = lookup(&g.name) {
            set(flag, g.value.clone(), Source::Flag);
        }
    }
    let mut from_env = Vec::new();
    for (key, value) in env {
        if key == "ETCD_VERSION" {
            review
                .warnings
                .push(format!("cannot set special environment variable {key}={value}"));
            continue;
        }
        if !key.starts_with("ETCD_") {
            continue;
        }
        let name = clap_env
            .get(key.as_str())
            .copied()
            .or_else(|| FLAGS.iter().find(|f| env_name(f.name) == *key).map(|f| f.name));
        let Some(name) = name else {
            review
                .warnings
                .push(format!("unrecognized environment variable {key}={value}"));
            continue;
        };
        if line.named.iter().any(|n| n == name) {
            return Err(format!(
                "conflicting environment variable {key:?} is shadowed by corresponding command-line flag \
                 (either unset environment variable or disable flag)"
            ));
        }
        if let (Some(flag), false) = (lookup(name), value.is_empty()) {
            from_env.push((flag, value.clone()));
        }
    }
    for (flag, value) in from_env {
        set(flag, Some(value), Source::Env);
    }
    for (flag, value, source) in given {
        let env_key = env_name(flag.name);
        let (label, invalid) = match source {
            Source::Flag => (format!("flag --{}", flag.name), format!("flag -{}", flag.name)),
            Source::Env => (format!("{env_key} (--{})", flag.name), env_key.clone()),
        };
        let normal = flag.kind.normalize(value.as_deref()).map_err(|e| match &value {
            None => format!("{e}: -{}", flag.name),
            Some(v) => format!("invalid value {v:?} for {invalid}: {e}"),
        })?;
        if flag.quiet.contains(&normal.as_str()) {
            continue;
        }
        match flag.effect {
            Ignored(reason) => review
                .warnings
                .push(format!("{label} has no effect in Concord: {reason}")),
            Refuse(reason) => {
                return Err(format!(
                    "{label} is not implemented in Concord yet: {reason}; refusing to start rather than run without it"
                ))
            }
            Same => {}
        }
    }
    Ok(review)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goflags::{clap_flags, scan};
    use std::ffi::OsString;

    fn line(args: &[&str]) -> CommandLine {
        let args: Vec<OsString> = ["concord", "serve"].iter().chain(args).map(OsString::from).collect();
        scan(&args)
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn run(args: &[&str], vars: &[(&str, &str)]) -> Result<Review, String> {
        review(&line(args), &env(vars), &clap_flags())
    }

    /// Every flag of `etcd --help` 3.4 and 3.5 (and of their `etcdmain/config.go`) is known.
    #[test]
    fn every_etcd_flag_is_known() {
        let clap = clap_flags();
        let etcd = "name data-dir wal-dir snapshot-count heartbeat-interval election-timeout \
            initial-election-tick-advance listen-peer-urls listen-client-urls listen-client-http-urls \
            max-snapshots max-wals quota-backend-bytes backend-batch-interval backend-batch-limit \
            backend-bbolt-freelist-type max-txn-ops max-request-bytes max-concurrent-streams \
            grpc-keepalive-min-time grpc-keepalive-interval grpc-keepalive-timeout socket-reuse-port \
            socket-reuse-address raft-read-timeout raft-write-timeout initial-advertise-peer-urls \
            initial-cluster initial-cluster-state initial-cluster-token advertise-client-urls discovery \
            discovery-fallback discovery-proxy discovery-srv discovery-srv-name strict-reconfig-check \
            pre-vote auto-compaction-retention auto-compaction-mode enable-v2 experimental-enable-v2v3 \
            v2-deprecation cert-file key-file client-cert-file client-key-file client-cert-auth \
            client-crl-file client-cert-allowed-hostname trusted-ca-file auto-tls peer-cert-file \
            peer-key-file peer-client-cert-file peer-client-key-file peer-client-cert-auth \
            peer-trusted-ca-file peer-auto-tls self-signed-cert-validity peer-crl-file \
            peer-cert-allowed-cn peer-cert-allowed-hostname cipher-suites tls-min-version \
            tls-max-version cors host-whitelist auth-token bcrypt-cost auth-token-ttl enable-pprof \
            metrics listen-metrics-urls logger log-outputs log-output log-level log-package-levels \
            enable-log-rotation log-rotation-config-json debug proxy proxy-failure-wait \
            proxy-refresh-interval proxy-dial-timeout proxy-write-timeout proxy-read-timeout \
            experimental-initial-corrupt-check experimental-corrupt-check-time \
            experimental-compact-hash-check-enabled experimental-compact-hash-check-time \
            experimental-enable-lease-checkpoint experimental-enable-lease-checkpoint-persist \
            experimental-compaction-batch-limit experimental-compaction-sleep-interval \
            experimental-watch-progress-notify-interval experimental-downgrade-check-time \
            experimental-warning-apply-duration experimental-memory-mlock \
            experimental-txn-mode-write-with-shared-buffer experimental-stop-grpc-service-on-defrag \
            experimental-bootstrap-defrag-threshold-megabytes experimental-snapshot-catchup-entries \
            experimental-backend-bbolt-freelist-type experimental-peer-skip-client-san-verification \
            experimental-enable-distributed-tracing experimental-distributed-tracing-address \
            experimental-distributed-tracing-service-name experimental-distributed-tracing-instance-id \
            experimental-distributed-tracing-sampling-rate enable-grpc-gateway unsafe-no-fsync \
            force-new-cluster next-cluster-version-compatible config-file version";
        for name in etcd.split_whitespace() {
            assert!(
                clap.contains_key(name) || lookup(name).is_some(),
                "--{name} is not taken"
            );
        }
    }

    #[test]
    fn ignored_flags_warn_once_each() {
        let review = run(
            &[
                "--max-wals",
                "5",
                "--max-wals=7",
                "--enable-pprof",
                "--pre-vote=true",
                "--metrics=basic",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(
            review.warnings,
            [
                format!("flag --max-wals has no effect in Concord: {RAFT_LOG}"),
                "flag --enable-pprof has no effect in Concord: Concord is not a Go program: profile it with perf"
                    .to_string(),
            ]
        );
        let review = run(&["--pre-vote=false"], &[]).unwrap();
        assert!(review.warnings[0].contains("always runs Raft's pre-vote"));
        // Implemented: clap takes them, so they are not warned about.
        let implemented = [
            "--experimental-initial-corrupt-check=true",
            "--experimental-compact-hash-check-enabled=true",
            "--experimental-enable-lease-checkpoint=true",
            "--experimental-stop-grpc-service-on-defrag=true",
            "--grpc-keepalive-min-time=10s",
        ];
        let review = run(&implemented, &[]).unwrap();
        assert_eq!(review.warnings, Vec::<String>::new());
    }

    #[test]
    fn values_are_checked_as_go_checks_them() {
        assert_eq!(
            run(&["--max-wals=x"], &[]).unwrap_err(),
            "invalid value \"x\" for flag -max-wals: parse error"
        );
        assert_eq!(run(&["--logger"], &[]).unwrap_err(), "flag needs an argument: -logger");
        assert!(run(&["--backend-batch-interval=2h30m"], &[]).is_ok());
        assert!(run(&["--backend-batch-interval=2"], &[]).is_err());
        assert!(run(&["--enable-v2=yes"], &[]).is_err());
        assert!(run(&["--proxy=sideways"], &[]).is_err());
        assert_eq!(
            run(&[], &[("ETCD_MAX_WALS", "many")]).unwrap_err(),
            "invalid value \"many\" for ETCD_MAX_WALS: parse error"
        );
    }

    #[test]
    fn weakening_flags_refuse_unless_they_ask_for_nothing() {
        let err = run(&["--proxy=on"], &[]).unwrap_err();
        assert!(err.contains("refusing to start"), "{err}");
        let quiet = run(
            &[
                "--auto-tls=false",
                "--cipher-suites=",
                "--tls-min-version=TLS1.2",
                "--proxy=off",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(quiet, Review::default());
        assert!(run(&[], &[("ETCD_PROXY", "on")])
            .unwrap_err()
            .starts_with("ETCD_PROXY (--proxy)"));
    }

    #[test]
    fn environment_is_checked_as_etcd_checks_it() {
        let err = run(&["--name", "a"], &[("ETCD_NAME", "b")]).unwrap_err();
        assert_eq!(
            err,
            "conflicting environment variable \"ETCD_NAME\" is shadowed by corresponding command-line flag \
             (either unset environment variable or disable flag)"
        );
        assert!(run(&["-max-wals=3"], &[("ETCD_MAX_WALS", "5")]).is_err());
        assert!(run(&["--log-level=info"], &[("ETCD_LOG_LEVEL", "debug")]).is_err());
        let review = run(
            &[],
            &[
                ("ETCD_BOGUS", "1"),
                ("ETCD_NAME", "b"),
                ("ETCDCTL_API", "3"),
                ("HOME", "/"),
            ],
        )
        .unwrap();
        assert_eq!(review.warnings, ["unrecognized environment variable ETCD_BOGUS=1"]);
        // Discovery's variables are serve's own (clap's) now: no warning.
        let review = run(&[], &[("ETCD_MAX_WALS", "5"), ("ETCD_DISCOVERY_SRV", "example.com")]).unwrap();
        assert_eq!(
            review.warnings,
            [format!(
                "ETCD_MAX_WALS (--max-wals) has no effect in Concord: {RAFT_LOG}"
            )]
        );
        assert_eq!(
            run(&[], &[("ETCD_MAX_WALS", "")]).unwrap(),
            Review::default(),
            "empty: unused, as etcd"
        );
    }
}
