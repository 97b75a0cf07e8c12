//! Go's command-line syntax for `concord serve`, so that etcd's command lines run unchanged.
//!
//! etcd parses its flags with Go's `flag` package: `-name` and `--name` are the same flag; a
//! value follows `=` or comes as the next argument, whatever it looks like; and a boolean flag
//! takes a value only after `=` (`--client-cert-auth`, `--client-cert-auth=true`,
//! `-client-cert-auth=0`), spelled as Go's `strconv.ParseBool` spells it ([`parse_bool`]).
//! `--client-cert-auth true` sets the flag and leaves `true` as a stray argument, which etcd
//! refuses, and so does clap here.
//!
//! [`rewrite`] turns such a command line into one clap parses: every known flag becomes
//! `--name` or `--name=value`, and the etcd flags Concord does not take through clap (see
//! [`crate::etcd_flags`]) are taken out. [`scan`] reads the same command line for what `serve`
//! checks at start: which flags were given (an `ETCD_*` variable a flag shadows is an error, as
//! in etcd) and the values of those etcd-only flags.

use std::collections::HashMap;
use std::ffi::OsString;

use clap::CommandFactory as _;

use crate::etcd_flags;

/// Parses a boolean as Go's `strconv.ParseBool`: `1 t T TRUE true True` and
/// `0 f F FALSE false False`, nothing else.
pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("{text:?} is not a boolean (true or false, as Go reads them)")),
    }
}

/// How a flag takes its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arity {
    /// Only after `=`; alone it means true (Go's boolean flags).
    Bool,
    /// After `=`, or as the next argument.
    Value,
}

/// One etcd-only flag as the command line gives it: its name and its value (`None` for a
/// boolean given alone, or a flag missing its argument at the end of the line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Given {
    /// The flag's name, without dashes.
    pub name: String,
    /// Its value, as written.
    pub value: Option<String>,
}

/// What a command line gives, for the checks `serve` makes at start.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CommandLine {
    /// Every known flag named on the command line (clap's and etcd-only ones), without dashes.
    pub named: Vec<String>,
    /// The etcd-only flags, in order.
    pub etcd_only: Vec<Given>,
}

/// The flags clap takes for `serve` (its own and the global ones), by long name, with their
/// arity and their environment variable.
pub fn clap_flags() -> HashMap<String, (Arity, Option<String>)> {
    let root = crate::Cli::command();
    let serve = root.find_subcommand("serve").cloned();
    let mut flags = HashMap::new();
    for arg in root.get_arguments().chain(serve.iter().flat_map(|s| s.get_arguments())) {
        let Some(long) = arg.get_long() else { continue };
        let arity = if arg.get_action().takes_values() && !arg.is_require_equals_set() {
            Arity::Value
        } else {
            Arity::Bool
        };
        let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
        flags.insert(long.to_string(), (arity, env));
    }
    flags.insert("help".to_string(), (Arity::Bool, None));
    flags.insert("version".to_string(), (Arity::Bool, None));
    flags
}

/// One argument after tokenizing.
#[derive(Debug)]
enum Token {
    /// Arguments for clap, as they are or rewritten.
    Clap { name: Option<String>, args: Vec<OsString> },
    /// An etcd-only flag, taken out.
    EtcdOnly(Given),
}

/// The command line split into tokens, or `None` when it does not run `serve`.
fn tokenize(args: &[OsString], clap: &HashMap<String, (Arity, Option<String>)>) -> Option<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut saw_serve = false;
    let mut i = 1;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let Some(text) = arg.to_str() else {
            tokens.push(Token::Clap {
                name: None,
                args: vec![arg.clone()],
            });
            continue;
        };
        if text == "--" {
            tokens.push(Token::Clap {
                name: None,
                args: args[i - 1..].to_vec(),
            });
            break;
        }
        let body = text
            .strip_prefix("--")
            .or_else(|| text.strip_prefix('-'))
            .filter(|b| !b.is_empty() && !b.starts_with('-'));
        let Some(body) = body else {
            // A positional argument: the first must be the subcommand.
            if !saw_serve && text != "serve" {
                return None;
            }
            saw_serve = true;
            tokens.push(Token::Clap {
                name: None,
                args: vec![arg.clone()],
            });
            continue;
        };
        let (name, inline) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (body, None),
        };
        let next_value = |i: &mut usize| -> Option<OsString> {
            let next = args.get(*i).cloned();
            if next.is_some() {
                *i += 1;
            }
            next
        };
        if let Some((arity, _)) = clap.get(name) {
            let rewritten: Vec<OsString> = match (arity, inline) {
                (_, Some(value)) => vec![format!("--{name}={}", map_value(name, &value)).into()],
                (Arity::Bool, None) => vec![format!("--{name}").into()],
                // `--name value` becomes `--name=value`, so a value starting with a dash stays one.
                (Arity::Value, None) => match next_value(&mut i) {
                    Some(value) => match value.to_str() {
                        Some(v) => vec![format!("--{name}={}", map_value(name, v)).into()],
                        None => vec![format!("--{name}").into(), value],
                    },
                    None => vec![format!("--{name}").into()],
                },
            };
            tokens.push(Token::Clap {
                name: Some(name.to_string()),
                args: rewritten,
            });
        } else if let Some(flag) = etcd_flags::lookup(name) {
            let value = match (inline, flag.kind.arity()) {
                (Some(value), _) => Some(value),
                (None, Arity::Bool) => None,
                (None, Arity::Value) => next_value(&mut i).map(|v| v.to_string_lossy().into_owned()),
            };
            tokens.push(Token::EtcdOnly(Given {
                name: name.to_string(),
                value,
            }));
        } else {
            // Unknown: clap says so.
            tokens.push(Token::Clap {
                name: None,
                args: vec![arg.clone()],
            });
        }
    }
    saw_serve.then_some(tokens)
}

/// etcd's log levels that Concord's logger names differently.
fn map_value(name: &str, value: &str) -> String {
    match (name, value) {
        ("log-level", "panic" | "dpanic" | "fatal") => "error".to_string(),
        _ => value.to_string(),
    }
}

/// Rewrites a `concord serve` command line written in Go's syntax for clap (see the module
/// docs); any other command line is returned as it is. `env` looks up environment variables:
/// etcd 3.4's `--debug` (or `ETCD_DEBUG`) turns into `--log-level=debug` unless a log level is
/// given, and `ETCD_LOG_LEVEL=fatal` (or `panic`) into `--log-level=error`.
pub fn rewrite(args: Vec<OsString>, env: &dyn Fn(&str) -> Option<String>) -> Vec<OsString> {
    let clap = clap_flags();
    let Some(tokens) = tokenize(&args, &clap) else {
        return args;
    };
    let mut out = vec![args.first().cloned().unwrap_or_else(|| OsString::from("concord"))];
    let mut debug = env("ETCD_DEBUG").is_some_and(|v| parse_bool(&v) == Ok(true));
    let mut log_level_given = false;
    for token in tokens {
        match token {
            Token::Clap { name, args } => {
                log_level_given |= name.as_deref() == Some("log-level");
                if name.as_deref() == Some("version") {
                    // `etcd --version` prints the version and exits: so does the binary's.
                    let value = args
                        .first()
                        .and_then(|a| a.to_str())
                        .and_then(|a| a.strip_prefix("--version="));
                    if value.is_none_or(|v| parse_bool(v) == Ok(true)) {
                        return vec![out.swap_remove(0), OsString::from("--version")];
                    }
                    continue;
                }
                out.extend(args);
            }
            Token::EtcdOnly(given) if given.name == "debug" => {
                debug = given.value.as_deref().is_none_or(|v| parse_bool(v) == Ok(true));
            }
            Token::EtcdOnly(_) => {}
        }
    }
    if !log_level_given {
        match env("ETCD_LOG_LEVEL") {
            Some(level) if matches!(level.as_str(), "panic" | "dpanic" | "fatal") => {
                out.push("--log-level=error".into())
            }
            None if debug => out.push("--log-level=debug".into()),
            _ => {}
        }
    }
    out
}

/// What the command line `args` gives (see [`CommandLine`]); empty when it does not run `serve`.
pub fn scan(args: &[OsString]) -> CommandLine {
    let clap = clap_flags();
    let mut line = CommandLine::default();
    for token in tokenize(args, &clap).unwrap_or_default() {
        match token {
            Token::Clap { name: Some(name), .. } => line.named.push(name),
            Token::Clap { name: None, .. } => {}
            Token::EtcdOnly(given) => {
                line.named.push(given.name.clone());
                line.etcd_only.push(given);
            }
        }
    }
    line
}

/// The environment variable etcd reads for flag `name` (`ETCD_` and the name in capitals, dashes
/// as underscores), as `pkg/flags.FlagToEnv`.
pub fn env_name(name: &str) -> String {
    format!("ETCD_{}", name.to_ascii_uppercase().replace('-', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn rewritten(args: &[&str]) -> Vec<String> {
        rewrite(os(args), &|_| None)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn booleans_read_as_go_reads_them() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_bool(t), Ok(true), "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool(f), Ok(false), "{f}");
        }
        for bad in ["yes", "on", "tRUE", "", "2", " true"] {
            assert!(parse_bool(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn go_forms_become_clap_forms() {
        assert_eq!(
            rewritten(&[
                "concord",
                "serve",
                "-name",
                "m1",
                "--client-cert-auth=true",
                "-peer-client-cert-auth",
                "--data-dir",
                "/d",
                "-snapshot-count=10000",
                "--initial-cluster-token",
                "-odd-token",
            ]),
            [
                "concord",
                "serve",
                "--name=m1",
                "--client-cert-auth=true",
                "--peer-client-cert-auth",
                "--data-dir=/d",
                "--snapshot-count=10000",
                "--initial-cluster-token=-odd-token",
            ]
        );
        // A boolean takes no separate value: `true` stays a stray argument for clap to refuse.
        assert_eq!(
            rewritten(&["c", "serve", "--client-cert-auth", "true"]),
            ["c", "serve", "--client-cert-auth", "true"]
        );
        // Global flags before the subcommand, and unknown flags, pass through.
        assert_eq!(
            rewritten(&["c", "--log-level", "debug", "serve", "-bogus"]),
            ["c", "--log-level=debug", "serve", "-bogus"]
        );
        // Other subcommands are left alone.
        assert_eq!(
            rewritten(&["c", "kv", "-w", "json", "get", "k"]),
            ["c", "kv", "-w", "json", "get", "k"]
        );
    }

    #[test]
    fn etcd_only_flags_are_taken_out_with_their_values() {
        let args = [
            "c",
            "serve",
            "--max-wals",
            "5",
            "-experimental-memory-mlock=true",
            "--enable-pprof",
            "--name",
            "x",
            "--logger=zap",
        ];
        assert_eq!(rewritten(&args), ["c", "serve", "--name=x"]);
        let line = scan(&os(&args));
        assert_eq!(
            line.etcd_only,
            [
                Given {
                    name: "max-wals".into(),
                    value: Some("5".into())
                },
                Given {
                    name: "experimental-memory-mlock".into(),
                    value: Some("true".into())
                },
                Given {
                    name: "enable-pprof".into(),
                    value: None
                },
                Given {
                    name: "logger".into(),
                    value: Some("zap".into())
                },
            ]
        );
        assert!(line.named.contains(&"name".to_string()));
        assert!(line.named.contains(&"max-wals".to_string()));
        assert_eq!(
            scan(&os(&["c", "kv", "get", "--max-wals", "k"])),
            CommandLine::default()
        );
    }

    #[test]
    fn log_levels_and_debug_map_onto_concords() {
        assert_eq!(
            rewritten(&["c", "serve", "--log-level=fatal"]),
            ["c", "serve", "--log-level=error"]
        );
        assert_eq!(
            rewritten(&["c", "serve", "--debug"]),
            ["c", "serve", "--log-level=debug"]
        );
        assert_eq!(rewritten(&["c", "serve", "--debug=false"]), ["c", "serve"]);
        assert_eq!(
            rewritten(&["c", "serve", "--debug", "--log-level", "warn"]),
            ["c", "serve", "--log-level=warn"]
        );
        let env = |k: &str| (k == "ETCD_LOG_LEVEL").then(|| "fatal".to_string());
        let out: Vec<String> = rewrite(os(&["c", "serve"]), &env)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(out, ["c", "serve", "--log-level=error"]);
        assert_eq!(rewritten(&["c", "serve", "-version"]), ["c", "--version"]);
    }

    #[test]
    fn every_clap_flag_is_known_with_its_variable() {
        let flags = clap_flags();
        assert_eq!(
            flags["client-cert-auth"],
            (Arity::Bool, Some("ETCD_CLIENT_CERT_AUTH".to_string()))
        );
        assert_eq!(flags["name"], (Arity::Value, Some("ETCD_NAME".to_string())));
        assert_eq!(flags["log-level"].1.as_deref(), Some("ETCD_LOG_LEVEL"));
        for (name, (_, env)) in &flags {
            assert!(
                etcd_flags::lookup(name).is_none(),
                "--{name} is both clap's and etcd-only"
            );
            if let Some(env) = env.as_deref().filter(|e| e.starts_with("ETCD_")) {
                assert_eq!(env, env_name(name), "--{name}");
            }
        }
    }
}
