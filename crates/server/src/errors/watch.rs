//! The reasons a watch stream gives, in `cancel_reason`, for a watch it refuses to create: etcd's
//! mvcc errors, as text (the stream itself goes on).

use tonic::Status;

/// etcd's `mvcc.ErrEmptyWatcherRange`: a watch whose range holds no key (`key` at or past
/// `range_end`).
pub const WATCHER_RANGE_EMPTY: &str = "mvcc: watcher range is empty";

/// etcd's `mvcc.ErrWatcherDuplicateID`: a watch with an id (or a negative id) already in use on
/// the stream.
pub const WATCHER_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// A refusal as the text of a Go gRPC error, as etcd puts a status into a cancel reason (e.g.
/// "rpc error: code = PermissionDenied desc = etcdserver: permission denied").
pub fn as_cancel_reason(status: &Status) -> String {
    format!("rpc error: code = {:?} desc = {}", status.code(), status.message())
}
