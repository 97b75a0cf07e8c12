//! Routes raft-rs's slog records into `tracing`, so one subscriber sees all logs.

use slog::{o, Drain, Level, Never, OwnedKVList, Record};

struct TracingDrain;

impl Drain for TracingDrain {
    type Ok = ();
    type Err = Never;

    fn log(&self, record: &Record<'_>, _values: &OwnedKVList) -> Result<(), Never> {
        let msg = record.msg();
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: "raft", "{msg}"),
            Level::Warning => tracing::warn!(target: "raft", "{msg}"),
            Level::Info => tracing::info!(target: "raft", "{msg}"),
            Level::Debug => tracing::debug!(target: "raft", "{msg}"),
            Level::Trace => tracing::trace!(target: "raft", "{msg}"),
        }
        Ok(())
    }
}

/// A slog logger for one group's `RawNode`, tagged with group and member ids.
pub fn raft_logger(group_id: u64, member_id: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain.fuse(), o!("group" => group_id, "member" => member_id))
}
