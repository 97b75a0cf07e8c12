//! A brake on password guessing: failed authentications are counted per user name, and after a
//! few of them the name is locked for a while, longer after each further failure.
//!
//! Policy ([`Policy::default`]): the first [`FREE_FAILURES`] consecutive failures for a name are
//! answered as usual. Each failure from then on locks the name for 1 s, then 2 s, 4 s, …, at most
//! 5 minutes. While a name is locked, Authenticate is refused at once with etcd's usual
//! "authentication failed" error, without checking the password, so a guess made during the lock
//! learns nothing and costs no bcrypt work. A success clears the name's record; a record is
//! forgotten 15 minutes after its last failure. Names that do not exist are counted like the
//! others, so the answers do not tell which names exist.
//!
//! The count is per member (each member checks the passwords it receives), kept in memory, and
//! bounded: beyond [`Policy::capacity`] names, the oldest records are dropped first. A record is
//! keyed by the SHA-256 of the name, so a record's size does not depend on the name's length
//! (a name may be as long as a request).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Failures allowed before a name is locked.
pub const FREE_FAILURES: u32 = 5;

/// The limiter's settings.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Consecutive failures answered normally.
    pub free_failures: u32,
    /// The first lock; each further failure doubles it.
    pub first_lock: Duration,
    /// The longest lock.
    pub max_lock: Duration,
    /// A record is dropped this long after its last failure.
    pub forget_after: Duration,
    /// The most names tracked at once.
    pub capacity: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            free_failures: FREE_FAILURES,
            first_lock: Duration::from_secs(1),
            max_lock: Duration::from_secs(300),
            forget_after: Duration::from_secs(900),
            capacity: 10_000,
        }
    }
}

#[derive(Debug)]
struct Record {
    failures: u32,
    locked_until: Option<Instant>,
    last_failure: Instant,
}

/// Failed authentications per user name (see the module docs).
pub struct FailedLogins {
    policy: Policy,
    records: Mutex<HashMap<NameKey, Record>>,
}

/// A user name as the limiter keys it: its SHA-256.
type NameKey = [u8; 32];

fn name_key(user: &str) -> NameKey {
    Sha256::digest(user.as_bytes()).into()
}

impl Default for FailedLogins {
    fn default() -> Self {
        FailedLogins::new(Policy::default())
    }
}

impl FailedLogins {
    /// A limiter with `policy`.
    pub fn new(policy: Policy) -> FailedLogins {
        FailedLogins {
            policy,
            records: Mutex::new(HashMap::new()),
        }
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<NameKey, Record>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err(remaining)` while `user` is locked at `now`.
    pub fn check(&self, user: &str, now: Instant) -> Result<(), Duration> {
        match self.records().get(&name_key(user)).and_then(|r| r.locked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Records a failed attempt for `user` at `now`; returns the lock it starts, if any.
    pub fn failed(&self, user: &str, now: Instant) -> Option<Duration> {
        let key = name_key(user);
        let mut records = self.records();
        if !records.contains_key(&key) && records.len() >= self.policy.capacity {
            self.make_room(&mut records, now);
        }
        let record = records.entry(key).or_insert(Record {
            failures: 0,
            locked_until: None,
            last_failure: now,
        });
        if now.duration_since(record.last_failure) >= self.policy.forget_after {
            record.failures = 0;
        }
        record.failures = record.failures.saturating_add(1);
        record.last_failure = now;
        let over = record.failures.checked_sub(self.policy.free_failures + 1)?;
        let lock = self
            .policy
            .first_lock
            .saturating_mul(1u32 << over.min(20))
            .min(self.policy.max_lock);
        record.locked_until = Some(now + lock);
        Some(lock)
    }

    /// Records a successful authentication: `user` starts afresh.
    pub fn succeeded(&self, user: &str) {
        self.records().remove(&name_key(user));
    }

    /// Drops forgotten records, then, if still full, the records whose last failure is oldest.
    fn make_room(&self, records: &mut HashMap<NameKey, Record>, now: Instant) {
        let forget = self.policy.forget_after;
        records.retain(|_, r| now.duration_since(r.last_failure) < forget);
        while records.len() >= self.policy.capacity {
            let oldest = records
                .iter()
                .min_by_key(|(_, r)| r.last_failure)
                .map(|(name, _)| *name);
            match oldest {
                Some(name) => records.remove(&name),
                None => break,
            };
        }
    }

    /// How many names are tracked (for tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.records().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            free_failures: 3,
            first_lock: Duration::from_secs(1),
            max_lock: Duration::from_secs(8),
            forget_after: Duration::from_secs(60),
            capacity: 4,
        }
    }

    #[test]
    fn a_name_as_long_as_a_request_is_tracked_in_a_fixed_size_record() {
        let limiter = FailedLogins::new(policy());
        let long = "n".repeat(1536 * 1024);
        let t0 = Instant::now();
        for _ in 0..4 {
            limiter.failed(&long, t0);
        }
        assert!(limiter.check(&long, t0).is_err());
        assert!(limiter.check(&long[1..], t0).is_ok());
        assert_eq!(std::mem::size_of::<NameKey>(), 32);
    }

    #[test]
    fn locks_grow_after_the_free_failures_and_cap() {
        let limiter = FailedLogins::new(policy());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.failed("eve", t0), None);
        }
        assert!(limiter.check("eve", t0).is_ok());
        assert_eq!(limiter.failed("eve", t0), Some(Duration::from_secs(1)));
        assert_eq!(limiter.check("eve", t0), Err(Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert!(limiter.check("eve", t1).is_ok(), "the lock ends");
        let locks: Vec<_> = (0..5).map(|_| limiter.failed("eve", t1).unwrap()).collect();
        assert_eq!(
            locks.iter().map(|d| d.as_secs()).collect::<Vec<_>>(),
            vec![2, 4, 8, 8, 8]
        );
        // Other names are not affected.
        assert!(limiter.check("alice", t1).is_ok());
    }

    #[test]
    fn success_and_time_clear_the_record() {
        let limiter = FailedLogins::new(policy());
        let t0 = Instant::now();
        for _ in 0..4 {
            limiter.failed("bob", t0);
        }
        assert!(limiter.check("bob", t0).is_err());
        limiter.succeeded("bob");
        assert!(limiter.check("bob", t0).is_ok());
        assert_eq!(limiter.failed("bob", t0), None, "counting starts again");
        // A failure long after the last one starts a new count.
        limiter.failed("bob", t0);
        let later = t0 + Duration::from_secs(61);
        assert_eq!(limiter.failed("bob", later), None);
    }

    #[test]
    fn memory_stays_bounded() {
        let limiter = FailedLogins::new(policy());
        let t0 = Instant::now();
        for i in 0..100u64 {
            limiter.failed(&format!("user{i}"), t0 + Duration::from_millis(i));
        }
        assert!(limiter.tracked() <= 4);
        // The newest names are the ones kept.
        assert!(limiter.records().contains_key(&name_key("user99")));
    }
}
