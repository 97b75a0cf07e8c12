//! The nemesis: a schedule of faults drawn from a seed, and the code that injects and heals them.
//!
//! The whole schedule (which fault, when, for how long, and the random numbers that pick its
//! targets) is drawn from the seed before the run starts and printed, so a failing seed replays
//! the same schedule. Targets that depend on the cluster's state (the leader at that moment) are
//! resolved when the fault starts and printed then. One fault is active at a time and each is
//! healed before the next, so the cluster always has a quorum once a fault ends.

use std::fmt;
use std::time::{Duration, Instant};

use clap::ValueEnum;

use super::cluster::ChaosCluster;
use crate::bench::SplitMix64;

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FaultKind {
    /// kill -9 a member (the leader half of the time), restart it when the fault ends.
    Kill,
    /// SIGSTOP a member (the leader half of the time), SIGCONT when the fault ends.
    Pause,
    /// Cut the leader off from every other member.
    PartitionLeader,
    /// Split the members into a random minority and majority.
    PartitionMinority,
    /// Two halves that cannot see each other, both connected to one bridge member.
    PartitionBridge,
    /// Slow and lossy links (netem), or flapping links where the kernel has no netem.
    Lossy,
    /// Move leadership to another member.
    MoveLeader,
    /// Remove a follower, wipe its data directory, and add it back as a new member.
    WipeRejoin,
    /// Split the register keys' shard online at one of the register keys (`--shards` only).
    SplitShard,
    /// Move a replica of a shard holding register keys to a member that holds none
    /// (`--shards` only).
    MoveShard,
}

impl FaultKind {
    /// Every kind.
    pub fn all() -> Vec<FaultKind> {
        FaultKind::value_variants().to_vec()
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.to_possible_value().expect("no skipped variants");
        f.write_str(name.get_name())
    }
}

/// One scheduled fault.
#[derive(Clone, Debug)]
pub struct Step {
    /// When it starts, from the start of the run.
    pub at: Duration,
    /// What it is.
    pub kind: FaultKind,
    /// How long it lasts before it is healed.
    pub hold: Duration,
    /// Random bits that pick its targets.
    pub pick: u64,
}

/// Draws the schedule for a run of `length` with the given fault kinds.
pub fn schedule(seed: u64, length: Duration, kinds: &[FaultKind]) -> Vec<Step> {
    let mut rng = SplitMix64::new(seed);
    let mut steps = Vec::new();
    let mut at = Duration::from_millis(1000 + rng.below(2000));
    if kinds.is_empty() {
        return steps;
    }
    while at < length {
        let kind = kinds[rng.below(kinds.len() as u64) as usize];
        let hold = match kind {
            FaultKind::MoveLeader | FaultKind::SplitShard | FaultKind::MoveShard => Duration::ZERO,
            _ => Duration::from_millis(1500 + rng.below(4500)),
        };
        let pick = rng.next_u64();
        if at + hold > length {
            break;
        }
        steps.push(Step { at, kind, hold, pick });
        at += hold + Duration::from_millis(1000 + rng.below(2500));
    }
    steps
}

/// The printed form of a schedule.
pub fn describe(steps: &[Step]) -> String {
    steps
        .iter()
        .map(|s| {
            format!(
                "  {:>6.1}s  {} for {:.1}s\n",
                s.at.as_secs_f64(),
                s.kind,
                s.hold.as_secs_f64()
            )
        })
        .collect()
}

/// What a fault in force must undo when it ends.
enum Active {
    Killed(usize),
    Paused(usize),
    Partitioned,
    Degraded,
    Flapping,
    Wiped(usize),
    Nothing,
}

/// Runs the schedule against `cluster` from `start`, printing each action; stops early (healing
/// what is in force) when `stop` fires. Returns the number of faults injected.
pub async fn run(
    cluster: &mut ChaosCluster,
    steps: &[Step],
    start: Instant,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> usize {
    let mut injected = 0;
    for step in steps {
        let wait = (start + step.at).saturating_duration_since(Instant::now());
        if tokio::time::timeout(wait, stop.wait_for(|s| *s)).await.is_ok() {
            break;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let mut rng = SplitMix64::new(step.pick);
        let active = match inject(cluster, step.kind, &mut rng).await {
            Ok((active, what)) => {
                println!("chaos: {elapsed:>6.1}s  {what}");
                injected += 1;
                active
            }
            Err(e) => {
                println!("chaos: {elapsed:>6.1}s  {} skipped: {e}", step.kind);
                Active::Nothing
            }
        };
        let end = Instant::now() + step.hold;
        if let Active::Flapping = active {
            flap(cluster, &mut rng, end, &mut stop).await;
        } else {
            let _ = tokio::time::timeout(end.saturating_duration_since(Instant::now()), stop.wait_for(|s| *s)).await;
        }
        match heal(cluster, active).await {
            Ok(Some(what)) => println!("chaos: {:>6.1}s  {what}", start.elapsed().as_secs_f64()),
            Ok(None) => {}
            Err(e) => println!("chaos: {:>6.1}s  healing failed: {e}", start.elapsed().as_secs_f64()),
        }
    }
    injected
}

fn pick(rng: &mut SplitMix64, candidates: &[usize]) -> Option<usize> {
    (!candidates.is_empty()).then(|| candidates[rng.below(candidates.len() as u64) as usize])
}

/// The leader half of the time, otherwise any serving member.
async fn leader_or_any(cluster: &mut ChaosCluster, rng: &mut SplitMix64) -> Result<(usize, &'static str), String> {
    let prefer_leader = rng.below(2) == 0;
    let leader = cluster.leader().await;
    if let (true, Some(l)) = (prefer_leader, leader) {
        return Ok((l, " (leader)"));
    }
    let serving: Vec<usize> = (0..cluster.len()).filter(|i| cluster.is_serving(*i)).collect();
    let i = pick(rng, &serving).ok_or("no member is serving")?;
    Ok((i, if Some(i) == leader { " (leader)" } else { "" }))
}

fn shuffled(rng: &mut SplitMix64, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.below(i as u64 + 1) as usize);
    }
    v
}

fn cross_pairs(a: &[usize], b: &[usize]) -> Vec<(usize, usize)> {
    a.iter().flat_map(|x| b.iter().map(move |y| (*x, *y))).collect()
}

fn names(cluster: &ChaosCluster, members: &[usize]) -> String {
    let mut members = members.to_vec();
    members.sort_unstable();
    let names: Vec<&str> = members.iter().map(|i| cluster.name(*i)).collect();
    format!("{{{}}}", names.join(","))
}

async fn inject(cluster: &mut ChaosCluster, kind: FaultKind, rng: &mut SplitMix64) -> Result<(Active, String), String> {
    let n = cluster.len();
    match kind {
        FaultKind::Kill => {
            let (i, role) = leader_or_any(cluster, rng).await?;
            cluster.kill(i);
            Ok((Active::Killed(i), format!("kill -9 {}{role}", cluster.name(i))))
        }
        FaultKind::Pause => {
            let (i, role) = leader_or_any(cluster, rng).await?;
            cluster.pause(i)?;
            Ok((Active::Paused(i), format!("SIGSTOP {}{role}", cluster.name(i))))
        }
        FaultKind::PartitionLeader => {
            let leader = cluster.leader().await.ok_or("no leader")?;
            let others: Vec<usize> = (0..n).filter(|i| *i != leader).collect();
            cluster.net().cut(&cross_pairs(&[leader], &others))?;
            Ok((Active::Partitioned, format!("isolate leader {}", cluster.name(leader))))
        }
        FaultKind::PartitionMinority => {
            let order = shuffled(rng, n);
            let minority = 1 + rng.below(((n - 1) / 2) as u64) as usize;
            let (small, large) = order.split_at(minority);
            cluster.net().cut(&cross_pairs(small, large))?;
            let what = format!("partition {} | {}", names(cluster, small), names(cluster, large));
            Ok((Active::Partitioned, what))
        }
        FaultKind::PartitionBridge => {
            let order = shuffled(rng, n);
            let bridge = order[0];
            let (left, right) = order[1..].split_at((n - 1) / 2);
            cluster.net().cut(&cross_pairs(left, right))?;
            let what = format!(
                "partition {} | {} bridged by {}",
                names(cluster, left),
                names(cluster, right),
                cluster.name(bridge)
            );
            Ok((Active::Partitioned, what))
        }
        FaultKind::Lossy => {
            let order = shuffled(rng, n);
            let count = 1 + rng.below(n as u64) as usize;
            let mut degraded = Vec::new();
            for &i in &order[..count] {
                if !cluster.net().degrade(i)? {
                    return Ok((Active::Flapping, "flapping links (no netem in this kernel)".into()));
                }
                degraded.push(i);
            }
            let what = format!("{} on {}", cluster.network().degradation(), names(cluster, &degraded));
            Ok((Active::Degraded, what))
        }
        FaultKind::MoveLeader => {
            let leader = cluster.leader().await.ok_or("no leader")?;
            let others: Vec<usize> = (0..n).filter(|i| *i != leader && cluster.is_serving(*i)).collect();
            let to = pick(rng, &others).ok_or("no other serving member")?;
            cluster.move_leader(to).await?;
            let what = format!("move leader {} -> {}", cluster.name(leader), cluster.name(to));
            Ok((Active::Nothing, what))
        }
        FaultKind::SplitShard => {
            let at = cluster.split_register_shard(rng).await?;
            Ok((Active::Nothing, format!("split the shard holding {at}")))
        }
        FaultKind::MoveShard => {
            let (shard, from, to) = cluster.move_register_shard(rng).await?;
            let what = format!("move shard {shard} from {} to {}", cluster.name(from), cluster.name(to));
            Ok((Active::Nothing, what))
        }
        FaultKind::WipeRejoin => {
            let leader = cluster.leader().await.ok_or("no leader")?;
            let followers: Vec<usize> = (0..n).filter(|i| *i != leader && cluster.is_serving(*i)).collect();
            let i = pick(rng, &followers).ok_or("no serving follower")?;
            cluster.wipe(i).await?;
            Ok((
                Active::Wiped(i),
                format!("kill -9, remove and wipe {}", cluster.name(i)),
            ))
        }
    }
}

/// Cuts and mends random member pairs every few hundred milliseconds until `end`.
async fn flap(
    cluster: &mut ChaosCluster,
    rng: &mut SplitMix64,
    end: Instant,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) {
    let n = cluster.len();
    while Instant::now() < end && !*stop.borrow() {
        let a = rng.below(n as u64) as usize;
        let b = (a + 1 + rng.below(n as u64 - 1) as usize) % n;
        let cut = cluster.net().cut_pairs().contains(&(a.min(b), a.max(b)));
        let _ = if cut {
            cluster.net().mend(a, b)
        } else {
            cluster.net().cut(&[(a, b)])
        };
        tokio::time::sleep(Duration::from_millis(100 + rng.below(300))).await;
    }
}

async fn heal(cluster: &mut ChaosCluster, active: Active) -> Result<Option<String>, String> {
    match active {
        Active::Killed(i) => {
            cluster.restart(i)?;
            Ok(Some(format!("restart {}", cluster.name(i))))
        }
        Active::Paused(i) => {
            cluster.resume(i)?;
            Ok(Some(format!("SIGCONT {}", cluster.name(i))))
        }
        Active::Partitioned | Active::Degraded | Active::Flapping => {
            cluster.net().heal()?;
            Ok(Some("heal the network".into()))
        }
        Active::Wiped(i) => {
            cluster.rejoin(i).await?;
            Ok(Some(format!(
                "add {} back as a new member and start it empty",
                cluster.name(i)
            )))
        }
        Active::Nothing => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_replay_from_their_seed() {
        let kinds = FaultKind::all();
        let a = describe(&schedule(7, Duration::from_secs(60), &kinds));
        let b = describe(&schedule(7, Duration::from_secs(60), &kinds));
        let c = describe(&schedule(8, Duration::from_secs(60), &kinds));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn schedules_fit_the_run_and_do_not_overlap() {
        let steps = schedule(3, Duration::from_secs(30), &FaultKind::all());
        assert!(!steps.is_empty());
        for pair in steps.windows(2) {
            assert!(pair[0].at + pair[0].hold < pair[1].at, "{pair:?}");
        }
        let last = steps.last().unwrap();
        assert!(last.at + last.hold <= Duration::from_secs(30));
    }

    #[test]
    fn only_the_chosen_kinds_are_drawn() {
        let steps = schedule(5, Duration::from_secs(120), &[FaultKind::Kill, FaultKind::Pause]);
        assert!(steps
            .iter()
            .all(|s| matches!(s.kind, FaultKind::Kill | FaultKind::Pause)));
        assert!(schedule(5, Duration::from_secs(120), &[]).is_empty());
    }
}
