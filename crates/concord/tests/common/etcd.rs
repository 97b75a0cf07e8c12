//! A real etcd process beside Concord's, for tests that compare the two answers to the same
//! requests. The `etcd` binary is Debian's etcd-server (3.4); tests skip the comparison, with a
//! message, where it is not installed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::free_port;

/// Whether etcd and etcdctl can run here; says why `test` is skipped when they cannot.
pub fn tools_present(test: &str) -> bool {
    for (tool, arg) in [("etcd", "--version"), ("etcdctl", "version")] {
        let ok = Command::new(tool)
            .arg(arg)
            .env("ETCDCTL_API", "3")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            eprintln!(
                "SKIPPED {test}: `{tool}` is not installed (Debian packages etcd-server and etcd-client; see scripts/setup.sh)"
            );
            return false;
        }
    }
    true
}

/// One etcd member on loopback ports, killed when dropped.
pub struct Etcd {
    child: Child,
    /// Its client URL (`http://` or `https://`, as started).
    pub client_url: String,
    dir: tempfile::TempDir,
}

/// The `etcd` binary on `PATH`, if installed.
pub fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
}

impl Etcd {
    /// Starts a one-member etcd whose client URL has `scheme`, with `extra_args`; `None` when no
    /// etcd is installed. It may not serve yet: callers wait for it as for a Concord member.
    pub fn start(scheme: &str, extra_args: &[String]) -> Option<Etcd> {
        let Some(binary) = binary() else {
            eprintln!("no etcd binary on PATH: skipping the comparison with etcd");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let client_url = format!("{scheme}://127.0.0.1:{}", free_port());
        let peer_url = format!("http://127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log file");
        let child = Command::new(binary)
            .args(["--name", "e0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("e0={peer_url}")])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        Some(Etcd { child, client_url, dir })
    }

    /// What etcd has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// The client URL's `host:port`.
    pub fn address(&self) -> &str {
        self.client_url.split_once("://").map_or(&self.client_url, |(_, a)| a)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
