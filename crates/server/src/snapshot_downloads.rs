//! What the member's snapshot downloads (Maintenance.Snapshot) may take of its disk.
//!
//! Each download streams a copy of the store from a file in the member's snapshot directory
//! (etcd streams from a read transaction; a file lets the copy be made once, in etcd's format,
//! without holding the store). Copies are as large as the store, so clients that open many
//! downloads and read them slowly could fill the member's disk and stop it: the number of
//! downloads in progress is bounded, copies are made one at a time, and a copy is made only
//! when the disk keeps as much free again afterwards for the member's own writes.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use crate::errors;

/// Downloads a member serves at once; a further one is refused until one ends.
pub const MAX_DOWNLOADS: usize = 2;

/// The member's budget of snapshot downloads, shared by its gRPC and JSON gateway services.
#[derive(Debug)]
pub struct SnapshotDownloads {
    downloads: Arc<Semaphore>,
    copies: Arc<Semaphore>,
}

impl Default for SnapshotDownloads {
    fn default() -> Self {
        SnapshotDownloads {
            downloads: Arc::new(Semaphore::new(MAX_DOWNLOADS)),
            copies: Arc::new(Semaphore::new(1)),
        }
    }
}

/// A download's place: held until its file is removed.
#[derive(Debug)]
pub struct DownloadSlot {
    _slot: OwnedSemaphorePermit,
}

impl SnapshotDownloads {
    /// A place for one more download, or etcd's "too many requests" error with the reason.
    pub fn start(&self) -> Result<DownloadSlot, Status> {
        let slot = self.downloads.clone().try_acquire_owned().map_err(|_| {
            errors::too_many_requests(format_args!(
                "{MAX_DOWNLOADS} snapshot downloads are in progress on this member"
            ))
        })?;
        Ok(DownloadSlot { _slot: slot })
    }

    /// Waits for the turn to copy a store of `store_bytes` into `dir`, and checks the disk has
    /// room for the copy and as much again.
    pub async fn copy_turn(&self, dir: &Path, store_bytes: u64) -> Result<OwnedSemaphorePermit, Status> {
        let turn = self
            .copies
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        ensure_free(
            dir,
            store_bytes.saturating_mul(2),
            "a snapshot (the copy and as much again for the member's own writes)",
        )?;
        Ok(turn)
    }
}

/// Refuses, with ResourceExhausted, work that would write `needed` bytes into `dir` when its
/// filesystem has less free: a copy of the store must not fill the disk the member writes to.
pub fn ensure_free(dir: &Path, needed: u64, what: &str) -> Result<(), Status> {
    match available_bytes(dir) {
        Some(free) if free < needed => Err(errors::not_enough_disk(what, free, needed)),
        _ => Ok(()),
    }
}

/// Bytes an unprivileged process may still write on the filesystem of `dir`.
#[cfg(unix)]
fn available_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is a valid C string and `stats` a writable statvfs, as statvfs(3) asks.
    let status = unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) };
    if status != 0 {
        return None;
    }
    // SAFETY: statvfs filled the structure (it returned 0).
    let stats = unsafe { stats.assume_init() };
    // The field types are 64-bit here, 32-bit on some other platforms.
    #[allow(clippy::useless_conversion)]
    Some(u64::from(stats.f_bavail).saturating_mul(u64::from(stats.f_frsize)))
}

#[cfg(not(unix))]
fn available_bytes(_dir: &Path) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downloads_past_the_bound_are_refused_until_one_ends() {
        let downloads = SnapshotDownloads::default();
        let held: Vec<DownloadSlot> = (0..MAX_DOWNLOADS).map(|_| downloads.start().unwrap()).collect();
        let refused = downloads.start().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().starts_with("etcdserver: too many requests"),
            "{}",
            refused.message()
        );
        drop(held);
        assert!(downloads.start().is_ok());
    }

    #[tokio::test]
    async fn a_copy_needs_room_for_itself_and_as_much_again() {
        let dir = tempfile::tempdir().unwrap();
        let free = available_bytes(dir.path()).expect("statvfs works here");
        let downloads = SnapshotDownloads::default();
        assert!(downloads.copy_turn(dir.path(), 1024).await.is_ok());
        let refused = downloads.copy_turn(dir.path(), free).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    }
}
