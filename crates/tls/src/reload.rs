//! Configurations that follow their files: rebuilt when a file changes, or on SIGHUP.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crate::config::TlsFiles;
use crate::error::TlsError;

/// How often the reloader looks at the files' modification times.
const POLL_EVERY: Duration = Duration::from_secs(2);

/// A TLS configuration built from files, swapped for a fresh one when they change.
///
/// A rebuild that fails (a half-written key, a certificate that does not match) keeps the
/// previous configuration and logs why, so a bad rotation never takes a member off the network.
pub struct Reloadable<T> {
    what: String,
    files: TlsFiles,
    build: fn(&TlsFiles) -> Result<T, TlsError>,
    current: RwLock<Arc<T>>,
    stamps: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl<T> Reloadable<T> {
    /// Builds the first configuration; `what` names it in logs ("client TLS", "peer TLS").
    pub fn new(
        what: impl Into<String>,
        files: TlsFiles,
        build: fn(&TlsFiles) -> Result<T, TlsError>,
    ) -> Result<Arc<Self>, TlsError> {
        let stamps = stamps(&files);
        let config = build(&files)?;
        Ok(Arc::new(Reloadable {
            what: what.into(),
            files,
            build,
            current: RwLock::new(Arc::new(config)),
            stamps: Mutex::new(stamps),
        }))
    }

    /// The configuration new handshakes should use.
    pub fn current(&self) -> Arc<T> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The files this configuration is built from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

/// Something [`spawn_reloader`] can refresh; lets one task serve configurations of different
/// types.
pub trait Reload: Send + Sync {
    /// Rebuilds from the files if any changed since the last build (or always, with `force`).
    /// Returns whether a new configuration is now in use.
    fn reload(&self, force: bool) -> bool;
}

impl<T: Send + Sync> Reload for Reloadable<T> {
    fn reload(&self, force: bool) -> bool {
        let now = stamps(&self.files);
        {
            let mut last = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
            if !force && *last == now {
                return false;
            }
            *last = now;
        }
        match (self.build)(&self.files) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
                tracing::info!(what = %self.what, "reloaded TLS certificates");
                true
            }
            Err(e) => {
                tracing::warn!(what = %self.what, "keeping the previous TLS certificates: {e}");
                false
            }
        }
    }
}

fn stamps(files: &TlsFiles) -> Vec<Option<(SystemTime, u64)>> {
    files
        .paths()
        .into_iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// Keeps `configs` current for as long as the runtime runs: every few seconds each is rebuilt if
/// its files changed, and SIGHUP rebuilds them all.
pub fn spawn_reloader(configs: Vec<Arc<dyn Reload>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut poll = tokio::time::interval(POLL_EVERY);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let force = match hangup.as_mut() {
                Some(signal) => tokio::select! {
                    _ = poll.tick() => false,
                    _ = signal.recv() => true,
                },
                None => {
                    poll.tick().await;
                    false
                }
            };
            #[cfg(not(unix))]
            let force = {
                poll.tick().await;
                false
            };
            if force {
                tracing::info!("SIGHUP: reloading TLS certificates");
            }
            for config in &configs {
                config.reload(force);
            }
        }
    })
}
