//! Acknowledged puts with when they were sent and answered, for tests of revisions across
//! members and shards: who wrote what at which revision, in real-time order, and that a member
//! holds every one of them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use etcd_client::Client;

use super::{eventually, Cluster};

/// One acknowledged put: its key, revision, and when it was sent and answered.
#[derive(Debug, Clone)]
pub struct Put {
    pub key: String,
    pub revision: i64,
    pub invoked: Instant,
    pub completed: Instant,
}

/// `count` puts through member `i`, one after another, the `n`-th on key `key(n)`.
pub async fn put_through(cluster: &Cluster, i: usize, count: usize, key: impl Fn(usize) -> String) -> Vec<Put> {
    let mut client = cluster.client(i).await;
    let mut done = Vec::new();
    for n in 0..count {
        let key = key(n);
        let invoked = Instant::now();
        let answer = client.put(key.as_str(), "v", None).await.unwrap();
        done.push(Put {
            key,
            revision: answer.header().unwrap().revision(),
            invoked,
            completed: Instant::now(),
        });
    }
    done
}

/// Every put's revision is its own, and a put sent after another was answered has a higher one.
pub fn assert_real_time_order(puts: &[Put]) {
    for a in puts {
        for b in puts.iter().filter(|b| b.key != a.key) {
            assert_ne!(a.revision, b.revision, "{a:?} and {b:?} share a revision");
            if a.completed < b.invoked {
                assert!(a.revision < b.revision, "{b:?} was sent after {a:?} was answered");
            }
        }
    }
}

/// Waits until `client`'s member serves every one of `puts`, and checks each at its revision.
pub async fn assert_serves_every_put(client: &Client, puts: &[Put]) {
    for put in puts {
        let got = eventually("the member serves the write", || {
            let mut client = client.clone();
            let key = put.key.clone();
            async move {
                let got = client.get(key.as_str(), None).await?;
                match got.kvs().first().map(|kv| kv.mod_revision()) {
                    Some(revision) => Ok(revision),
                    None => Err(etcd_client::Error::InvalidArgs(format!("{key} is missing"))),
                }
            }
        })
        .await;
        assert_eq!(got, put.revision, "{put:?}");
    }
}

/// One watch response's events as `(mod revision, key)`, put or delete alike.
pub type Seen = Vec<(i64, String)>;

/// Reads `stream` until it has delivered `count` events, each response's events as one entry;
/// fails if the stream ends, cancels, or stalls for [`super::WAIT`].
pub async fn watch_responses(stream: &mut etcd_client::WatchStream, count: usize) -> Vec<Seen> {
    let mut responses = Vec::new();
    let mut seen = 0;
    while seen < count {
        let message = tokio::time::timeout(super::WAIT, stream.message())
            .await
            .unwrap_or_else(|_| panic!("the watch stalled after {seen} of {count} events: {responses:?}"))
            .expect("the watch stream stays up")
            .expect("the watch stream stays open");
        assert!(!message.canceled(), "the watch was canceled: {message:?}");
        let events: Seen = message
            .events()
            .iter()
            .map(|e| {
                let kv = e.kv().unwrap();
                (kv.mod_revision(), kv.key_str().unwrap().to_string())
            })
            .collect();
        seen += events.len();
        if !events.is_empty() {
            responses.push(events);
        }
    }
    responses
}

/// `puts` as a watch over their keys must deliver them: in revision order.
pub fn as_watched(puts: &[Put]) -> Seen {
    let mut wanted: Seen = puts.iter().map(|p| (p.revision, p.key.clone())).collect();
    wanted.sort();
    wanted
}

/// Puts through member `i`, alternating below and above "m", counting each answered: until
/// `until` is set and then `count` more.
pub async fn write_both_sides(
    cluster: &Cluster,
    i: usize,
    tag: &str,
    count: usize,
    answered: Arc<AtomicUsize>,
    until: Arc<AtomicBool>,
) -> Vec<Put> {
    let mut client = cluster.client(i).await;
    let mut done = Vec::new();
    let mut more = count;
    for n in 0usize.. {
        if until.load(Ordering::Relaxed) {
            if more == 0 {
                break;
            }
            more -= 1;
        }
        let side = if n.is_multiple_of(2) { "a" } else { "x" };
        let key = format!("{side}/{tag}/m{i}/{n}");
        let invoked = std::time::Instant::now();
        let answer = client
            .put(key.as_str(), "v", None)
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        done.push(Put {
            key,
            revision: answer.header().unwrap().revision(),
            invoked,
            completed: std::time::Instant::now(),
        });
        answered.fetch_add(1, Ordering::Relaxed);
    }
    done
}

/// Writers on every member, on both sides of "m" ([`write_both_sides`], tag "load"), while
/// `concord shard split m` runs through member 1 (with `split_flags` besides its endpoint) once
/// 30 puts are answered; each writer puts `more` after the split answers. Returns every
/// acknowledged put and the split command's output.
pub async fn split_under_writers(
    cluster: &Cluster,
    more: usize,
    split_flags: &[&str],
) -> (Vec<Put>, std::process::Output) {
    let answered = Arc::new(AtomicUsize::new(0));
    let split_done = Arc::new(AtomicBool::new(false));
    let writers = (0..3).map(|i| write_both_sides(cluster, i, "load", more, answered.clone(), split_done.clone()));
    let writing = futures::future::join_all(writers);
    let mut command: Vec<String> = ["shard", "split", "m"].iter().map(|s| s.to_string()).collect();
    command.extend(split_flags.iter().map(|s| s.to_string()));
    command.push(format!("--endpoints={}", cluster.endpoints()[1]));
    let split = async {
        eventually("the writers are under way", || {
            let answered = answered.load(Ordering::Relaxed);
            async move {
                if answered >= 30 {
                    Ok(())
                } else {
                    Err(answered)
                }
            }
        })
        .await;
        let split = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = command.iter().map(String::as_str).collect();
            super::concord(&args)
        })
        .await
        .unwrap();
        split_done.store(true, Ordering::Relaxed);
        split
    };
    let (puts, split) = tokio::join!(writing, split);
    (puts.concat(), split)
}
