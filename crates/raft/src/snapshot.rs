//! Raft snapshots of a group: built from the state machine on a builder
//! thread, offered to raft-rs through the log store, and carried to peers as
//! files (see the transport) rather than inside Raft messages.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use raft::eraftpb::Snapshot;

/// The latest snapshot ready to send, and what raft-rs has asked for.
#[derive(Default)]
pub struct SnapshotSlot {
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    ready: Option<Snapshot>,
    /// The highest index raft-rs asked for that no ready snapshot covers.
    wanted: Option<u64>,
}

impl SnapshotSlot {
    fn state(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ready snapshot if it covers `request_index`; otherwise records the
    /// request so the driver builds a newer one.
    pub fn take_ready(&self, request_index: u64, _to: u64) -> Option<Snapshot> {
        let mut state = self.state();
        match &state.ready {
            Some(snap) if snap.get_metadata().index >= request_index => Some(snap.clone()),
            _ => {
                state.wanted = Some(state.wanted.unwrap_or(0).max(request_index));
                None
            }
        }
    }

    /// Whether raft-rs is waiting for a snapshot.
    pub(crate) fn is_wanted(&self) -> bool {
        self.state().wanted.is_some()
    }

    /// Withdraws the ready snapshot (its configuration is out of date);
    /// returns it so its file can go.
    pub(crate) fn invalidate(&self) -> Option<Snapshot> {
        self.state().ready.take()
    }

    /// Offers a newly built snapshot; returns the one it replaces.
    pub(crate) fn set_ready(&self, snap: Snapshot) -> Option<Snapshot> {
        let mut state = self.state();
        if state.wanted.is_some_and(|w| w <= snap.get_metadata().index) {
            state.wanted = None;
        }
        state.ready.replace(snap)
    }
}

/// What a state machine's snapshot build produced.
pub struct BuiltSnapshot {
    /// The last log index whose effects the snapshot holds.
    pub applied_index: u64,
    /// The snapshot file.
    pub path: PathBuf,
    /// Application state that travels with the file (small).
    pub app_data: Vec<u8>,
}

/// A snapshot build to run off the driver thread, writing to the given path.
pub type SnapshotJob = Box<dyn FnOnce(&Path) -> Result<BuiltSnapshot, Box<dyn std::error::Error + Send + Sync>> + Send>;
