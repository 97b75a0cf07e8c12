//! Back-pressure on proposals: what a group takes in is bounded, so an overload gets etcd's
//! "too many requests" rather than a member that queues without end.
//!
//! Two checks, made before a proposal reaches the driver:
//! - **Apply lag** (etcd's `maxGapBetweenApplyAndCommitIndex`): while the member's applied index
//!   trails its commit index by more than [`MAX_APPLY_LAG`] entries, new proposals are refused;
//!   what is committed must be applied first.
//! - **Bytes in flight**: the proposals this member has sent and not yet seen answered hold their
//!   bytes (in the mailbox, the driver's batch, the log entry awaiting commit); past the limit a
//!   new one is refused until some finish. A proposal's bytes are returned when its caller stops
//!   waiting, whatever the outcome.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::error::RaftError;

/// etcd's `maxGapBetweenApplyAndCommitIndex`.
pub const MAX_APPLY_LAG: u64 = 5000;

/// The default bound on proposal bytes in flight per group and member: 256 MiB, about 170
/// requests at etcd's 1.5 MiB request limit, or hundreds of thousands of small ones.
pub const DEFAULT_MAX_PENDING_PROPOSAL_BYTES: usize = 256 * 1024 * 1024;

/// One group's admission state, shared by its handles and updated by its driver.
#[derive(Debug)]
pub struct Admission {
    max_pending_bytes: usize,
    pending_bytes: AtomicUsize,
    commit_index: AtomicU64,
    applied_index: AtomicU64,
}

impl Admission {
    /// Admission with at most `max_pending_bytes` of proposals in flight.
    pub fn new(max_pending_bytes: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max_pending_bytes,
            pending_bytes: AtomicUsize::new(0),
            commit_index: AtomicU64::new(0),
            applied_index: AtomicU64::new(0),
        })
    }

    /// The driver's latest commit and applied indexes.
    pub(crate) fn publish(&self, commit_index: u64, applied_index: u64) {
        self.commit_index.store(commit_index, Ordering::Relaxed);
        self.applied_index.store(applied_index, Ordering::Relaxed);
    }

    /// Takes in a proposal of `bytes`, or refuses it with [`RaftError::TooManyRequests`]. The
    /// bytes count against the limit until the returned guard is dropped. A single proposal
    /// larger than the whole limit is taken when nothing else is in flight.
    pub fn admit(self: &Arc<Self>, bytes: usize) -> Result<Admitted, RaftError> {
        let (commit, applied) = (
            self.commit_index.load(Ordering::Relaxed),
            self.applied_index.load(Ordering::Relaxed),
        );
        if commit > applied.saturating_add(MAX_APPLY_LAG) {
            return Err(RaftError::TooManyRequests);
        }
        let mut pending = self.pending_bytes.load(Ordering::Relaxed);
        loop {
            if pending > 0 && pending.saturating_add(bytes) > self.max_pending_bytes {
                return Err(RaftError::TooManyRequests);
            }
            match self.pending_bytes.compare_exchange_weak(
                pending,
                pending + bytes,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => pending = now,
            }
        }
        Ok(Admitted {
            admission: self.clone(),
            bytes,
        })
    }

    /// Proposal bytes in flight now.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes.load(Ordering::Relaxed)
    }
}

/// A proposal's place in flight; dropping it gives its bytes back.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    bytes: usize,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.pending_bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_in_flight_are_bounded_and_given_back() {
        let admission = Admission::new(100);
        let a = admission.admit(60).unwrap();
        let b = admission.admit(40).unwrap();
        assert!(matches!(admission.admit(1), Err(RaftError::TooManyRequests)));
        drop(a);
        assert_eq!(admission.pending_bytes(), 40);
        let c = admission.admit(60).unwrap();
        drop((b, c));
        assert_eq!(admission.pending_bytes(), 0);
        // One request larger than the limit still goes through alone.
        let big = admission.admit(500).unwrap();
        assert!(matches!(admission.admit(1), Err(RaftError::TooManyRequests)));
        drop(big);
    }

    #[test]
    fn proposals_wait_out_an_apply_lag_past_etcds_gap() {
        let admission = Admission::new(usize::MAX);
        admission.publish(10_000, 10_000 - MAX_APPLY_LAG);
        assert!(admission.admit(1).is_ok(), "exactly etcd's gap is allowed");
        admission.publish(10_001, 10_000 - MAX_APPLY_LAG);
        assert!(matches!(admission.admit(1), Err(RaftError::TooManyRequests)));
        admission.publish(10_001, 10_001);
        assert!(admission.admit(1).is_ok());
    }
}
