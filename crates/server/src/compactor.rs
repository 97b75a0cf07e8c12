//! Auto compaction, with etcd's meaning (`--auto-compaction-mode`, `--auto-compaction-retention`):
//! without it history grows until the quota stops writes, so every etcd deployment sets it.
//!
//! A port of etcd's `v3compactor` (periodic.go, revision.go), run on the leader only: on other
//! members it keeps its clock and samples but proposes nothing (etcd pauses its compactor on
//! followers and resumes it on the leader). Compactions are proposed through the log like a
//! client's `Compact`, on the member's own behalf.
//!
//! - **periodic** (retention a duration, or a bare number of hours): the current revision is
//!   sampled every tenth of the retention (of an hour, for retentions over an hour); once a
//!   retention has passed since the start, the store is compacted to the revision sampled one
//!   retention ago, and again every retention (at most every hour) after that. A failed
//!   compaction is retried at the next sample.
//! - **revision** (retention a number of revisions): every 5 minutes the store is compacted to
//!   the current revision minus the retention, unless that is not positive or was the last
//!   compaction.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_proto::concordpb::raft_command::Op;
use concord_proto::etcdserverpb::CompactionRequest;
use concord_raft::Role;
use concord_storage::KvError;
use tokio::sync::watch;

use crate::auth::Sender;
use crate::context::MemberContext;
use crate::router::GroupHandle;

/// How often revision mode looks at the revision (etcd's `revInterval`).
pub const REVISION_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Periodic mode never waits longer than this between compactions, nor samples the revision
/// less often than a tenth of it (etcd's compact interval cap).
const PERIODIC_CAP: Duration = Duration::from_secs(3600);

/// What is kept behind the current revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// `periodic`: the history of this length of time.
    Periodic(Duration),
    /// `revision`: this many revisions.
    Revisions(i64),
}

/// A member's auto-compaction settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutoCompaction {
    /// What to keep.
    pub retention: Retention,
    /// How often revision mode compacts: etcd's fixed 5 minutes ([`REVISION_INTERVAL`]); only
    /// tests shorten it.
    pub revision_interval: Duration,
}

impl AutoCompaction {
    /// Reads etcd's `--auto-compaction-mode` and `--auto-compaction-retention` as etcd does
    /// (`parseCompactionRetention`): a bare integer is hours in periodic mode and revisions in
    /// revision mode; anything else must be a Go duration (which revision mode, like etcd, takes
    /// as that many nanoseconds' worth of revisions). `None` when the retention is zero: auto
    /// compaction is off.
    pub fn parse(mode: &str, retention: &str) -> Result<Option<AutoCompaction>, String> {
        let retention = if retention.is_empty() { "0" } else { retention };
        let periodic = match mode {
            "periodic" => true,
            "revision" => false,
            // etcd's config check lets an empty mode through; a bare number then means nothing
            // and any other retention fails to start its compactor.
            "" if retention.parse::<i64>().is_ok_and(|n| n >= 0) => return Ok(None),
            "" => match crate::go_duration::parse(retention) {
                Ok(d) if d.is_zero() => return Ok(None),
                _ => return Err("unsupported compaction mode \"\"".into()),
            },
            other => return Err(format!("unknown auto-compaction-mode {other:?}")),
        };
        let parsed = match retention.parse::<i64>() {
            Ok(n) if n >= 0 => {
                if periodic {
                    let hours = u64::try_from(n).unwrap_or_default();
                    hours
                        .checked_mul(3600)
                        .map(|secs| Retention::Periodic(Duration::from_secs(secs)))
                        .ok_or_else(|| format!("error parsing CompactionRetention: {retention} hours is too long"))?
                } else {
                    Retention::Revisions(n)
                }
            }
            _ => {
                let d = crate::go_duration::parse(retention)
                    .map_err(|e| format!("error parsing CompactionRetention: {e}"))?;
                if periodic {
                    Retention::Periodic(d)
                } else {
                    Retention::Revisions(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
                }
            }
        };
        if matches!(parsed, Retention::Periodic(d) if d.is_zero()) || parsed == Retention::Revisions(0) {
            return Ok(None);
        }
        Ok(Some(AutoCompaction {
            retention: parsed,
            revision_interval: REVISION_INTERVAL,
        }))
    }
}

/// The periodic schedule, as etcd computes it from the retention.
#[derive(Debug, PartialEq, Eq)]
struct PeriodicSchedule {
    /// Between revision samples (and retries).
    sample_every: Duration,
    /// Between compactions once the first retention has passed.
    compact_every: Duration,
    /// How many samples cover one retention (the oldest is the one compacted to).
    samples: usize,
}

impl PeriodicSchedule {
    fn new(period: Duration) -> PeriodicSchedule {
        let compact_every = period.min(PERIODIC_CAP);
        // A floor etcd lacks: a retention of a few nanoseconds must not spin a core.
        let sample_every = (compact_every / 10).max(Duration::from_millis(1));
        let samples = usize::try_from(period.as_nanos() / sample_every.as_nanos()).unwrap_or(usize::MAX / 2) + 1;
        PeriodicSchedule {
            sample_every,
            compact_every,
            samples,
        }
    }
}

/// Runs auto compaction for `ctx`'s group until `stop` turns true; returns at once when
/// `policy` is `None`.
pub async fn run(policy: Option<AutoCompaction>, ctx: Arc<MemberContext>, stop: watch::Receiver<bool>) {
    let Some(policy) = policy else {
        return;
    };
    let group = ctx.router.default_group().clone();
    let compactor = Compactor {
        role: group.watch_role(),
        group,
        ctx,
        stop,
    };
    match policy.retention {
        Retention::Periodic(period) => compactor.periodic(period).await,
        Retention::Revisions(keep) => compactor.revisions(keep, policy.revision_interval).await,
    }
}

struct Compactor {
    ctx: Arc<MemberContext>,
    group: GroupHandle,
    role: watch::Receiver<(Role, u64)>,
    stop: watch::Receiver<bool>,
}

/// Why a compaction did not happen.
enum Failure {
    /// The member is stopping.
    Stopped,
    /// The proposal failed; retried later.
    Error(String),
}

impl Compactor {
    fn is_leader(&self) -> bool {
        self.role.borrow().0 == Role::Leader
    }

    /// Waits `d`; false when the member stops first.
    async fn wait(&mut self, d: Duration) -> bool {
        let stopped = tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = self.stop.wait_for(|s| *s) => true,
        };
        !stopped && !*self.stop.borrow()
    }

    /// The cluster's revision: group 1's store's, or with several shards the oracle's (0 when
    /// it does not answer: nothing is compacted then).
    async fn current_revision(&self) -> i64 {
        match self.ctx.router.is_sharded() {
            true => self.ctx.revisions.allocate(1).await.unwrap_or(0),
            false => self.ctx.store.current_revision(),
        }
    }

    /// Proposes a compaction to `revision`. One to a revision already compacted counts as done,
    /// as in etcd (`ErrCompacted`).
    async fn compact(&mut self, revision: i64) -> Result<(), Failure> {
        let op = Op::Compaction(CompactionRequest {
            revision,
            physical: false,
        });
        let ctx = self.ctx.clone();
        let group = self.group.clone();
        let propose = async move {
            match ctx.router.is_sharded() {
                true => crate::global_compaction::compact_all(&ctx, None, revision)
                    .await
                    .map(|_| ()),
                false => ctx.propose_write(&group, &Sender::Member, op).await.map(|_| ()),
            }
        };
        let result = tokio::select! {
            result = propose => result,
            _ = self.stop.wait_for(|s| *s) => return Err(Failure::Stopped),
        };
        match result {
            Ok(_) => Ok(()),
            Err(status) if status.message() == KvError::Compacted.to_string() => Ok(()),
            Err(status) => Err(Failure::Error(status.message().to_string())),
        }
    }

    /// etcd's `Periodic.Run`.
    async fn periodic(mut self, period: Duration) {
        let schedule = PeriodicSchedule::new(period);
        tracing::info!(retention = ?period, sample_every = ?schedule.sample_every, "auto periodic compaction on");
        let mut revisions: VecDeque<i64> = VecDeque::with_capacity(schedule.samples.min(64) + 1);
        let mut last_success = Instant::now();
        let mut wait_for = period;
        loop {
            revisions.push_back(self.current_revision().await);
            if revisions.len() > schedule.samples {
                // The front is now always the revision seen one retention ago.
                revisions.pop_front();
            }
            if !self.wait(schedule.sample_every).await {
                return;
            }
            if !self.is_leader() || last_success.elapsed() < wait_for {
                continue;
            }
            // The first compaction waits a whole retention; later ones at most an hour.
            wait_for = schedule.compact_every;
            let Some(&revision) = revisions.front() else {
                continue;
            };
            tracing::info!(revision, compact_period = ?period, "starting auto periodic compaction");
            let started = Instant::now();
            match self.compact(revision).await {
                Ok(()) => {
                    tracing::info!(revision, compact_period = ?period, took = ?started.elapsed(), "completed auto periodic compaction");
                    last_success = Instant::now();
                }
                Err(Failure::Stopped) => return,
                Err(Failure::Error(e)) => tracing::warn!(
                    revision,
                    compact_period = ?period,
                    retry_interval = ?schedule.sample_every,
                    error = %e,
                    "failed auto periodic compaction"
                ),
            }
        }
    }

    /// etcd's `Revision.Run`.
    async fn revisions(mut self, keep: i64, every: Duration) {
        tracing::info!(retention = keep, interval = ?every, "auto revision compaction on");
        let mut previous = 0;
        loop {
            if !self.wait(every).await {
                return;
            }
            if !self.is_leader() {
                continue;
            }
            let revision = self.current_revision().await.saturating_sub(keep);
            if revision <= 0 || revision == previous {
                continue;
            }
            tracing::info!(
                revision,
                revision_compaction_retention = keep,
                "starting auto revision compaction"
            );
            let started = Instant::now();
            match self.compact(revision).await {
                Ok(()) => {
                    previous = revision;
                    tracing::info!(
                        revision,
                        revision_compaction_retention = keep,
                        took = ?started.elapsed(),
                        "completed auto revision compaction"
                    );
                }
                Err(Failure::Stopped) => return,
                Err(Failure::Error(e)) => tracing::warn!(
                    revision,
                    revision_compaction_retention = keep,
                    retry_interval = ?every,
                    error = %e,
                    "failed auto revision compaction"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(mode: &str, retention: &str) -> Option<Retention> {
        AutoCompaction::parse(mode, retention).unwrap().map(|p| p.retention)
    }

    #[test]
    fn retention_reads_as_etcd_reads_it() {
        assert_eq!(parsed("periodic", "0"), None);
        assert_eq!(parsed("periodic", ""), None);
        assert_eq!(parsed("periodic", "0s"), None);
        assert_eq!(parsed("revision", "0"), None);
        assert_eq!(
            parsed("periodic", "1"),
            Some(Retention::Periodic(Duration::from_secs(3600)))
        );
        assert_eq!(
            parsed("periodic", "72"),
            Some(Retention::Periodic(Duration::from_secs(72 * 3600)))
        );
        assert_eq!(
            parsed("periodic", "5m"),
            Some(Retention::Periodic(Duration::from_secs(300)))
        );
        assert_eq!(
            parsed("periodic", "1h30m"),
            Some(Retention::Periodic(Duration::from_secs(5400)))
        );
        assert_eq!(
            parsed("periodic", "2.5s"),
            Some(Retention::Periodic(Duration::from_millis(2500)))
        );
        assert_eq!(parsed("revision", "1000"), Some(Retention::Revisions(1000)));
        // etcd takes a duration in revision mode as its count of nanoseconds.
        assert_eq!(parsed("revision", "1us"), Some(Retention::Revisions(1000)));
        assert!(AutoCompaction::parse("periodic", "1.5").is_err(), "no unit");
        assert!(AutoCompaction::parse("periodic", "-1").is_err());
        assert!(AutoCompaction::parse("periodic", "-5m").is_err());
        assert!(AutoCompaction::parse("periodic", "abc").is_err());
        assert!(AutoCompaction::parse("daily", "1").is_err());
        assert_eq!(
            AutoCompaction::parse("daily", "1").unwrap_err(),
            "unknown auto-compaction-mode \"daily\""
        );
        assert_eq!(
            AutoCompaction::parse("revision", "10")
                .unwrap()
                .map(|p| p.revision_interval),
            Some(REVISION_INTERVAL)
        );
    }

    #[test]
    fn periodic_schedule_is_etcds() {
        // 1 hour: sample every 6 minutes, 11 samples, compact every hour.
        let hour = PeriodicSchedule::new(Duration::from_secs(3600));
        assert_eq!(hour.sample_every, Duration::from_secs(360));
        assert_eq!(hour.compact_every, Duration::from_secs(3600));
        assert_eq!(hour.samples, 11);
        // 24 hours: still every 6 minutes and hourly, keeping a day of samples.
        let day = PeriodicSchedule::new(Duration::from_secs(24 * 3600));
        assert_eq!(day.sample_every, Duration::from_secs(360));
        assert_eq!(day.compact_every, Duration::from_secs(3600));
        assert_eq!(day.samples, 241);
        // 5 seconds: every half second, compacting every 5 s.
        let short = PeriodicSchedule::new(Duration::from_secs(5));
        assert_eq!(short.sample_every, Duration::from_millis(500));
        assert_eq!(short.compact_every, Duration::from_secs(5));
        assert_eq!(short.samples, 11);
    }
}
