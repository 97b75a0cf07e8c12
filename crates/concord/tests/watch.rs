//! etcd's Watch API on a real cluster: live events, history replay,
//! compaction, filters, and no lost or duplicated event across a leader kill.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, Cluster, WAIT};
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchFilterType, WatchOptions, WatchStream};

/// The next response on `stream`, within [`WAIT`].
async fn next_response(stream: &mut WatchStream) -> etcd_client::WatchResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("no watch response in time")
        .expect("watch stream failed")
        .expect("watch stream ended")
}

/// Receives the next response that carries events (or a cancellation), each within [`WAIT`].
async fn next_events(stream: &mut WatchStream) -> etcd_client::WatchResponse {
    loop {
        let resp = next_response(stream).await;
        if !resp.events().is_empty() || resp.canceled() {
            return resp;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_sees_puts_from_another_client() {
    let cluster = Cluster::start(3).await;
    let endpoint = cluster.members[1].client_url.trim_start_matches("http://").to_string();
    let mut watcher = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([&format!("--endpoints={endpoint}"), "watch", "svc/", "--prefix"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl is installed");
    let stdout = watcher.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        // etcdctl prints: PUT, key, value for each event.
        BufReader::new(stdout)
            .lines()
            .take(6)
            .map(|l| l.unwrap())
            .collect::<Vec<_>>()
    });
    let mut c = cluster.client(0).await;
    // The watch starts when etcdctl has connected; write until both events arrive.
    let deadline = std::time::Instant::now() + WAIT;
    let mut n = 0;
    while !lines.is_finished() {
        assert!(std::time::Instant::now() < deadline, "etcdctl saw no events");
        c.put(format!("svc/{}", n % 2), format!("addr-{n}"), None)
            .await
            .unwrap();
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
    let lines = lines.join().unwrap();
    assert_eq!(lines[0], "PUT");
    assert!(lines[1].starts_with("svc/"), "{lines:?}");
    assert!(lines[2].starts_with("addr-"), "{lines:?}");
    assert_eq!(lines[3], "PUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_past_revision_replays_history_then_follows() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client(0).await;
    c.put("h/a", "1", None).await.unwrap(); // rev 2
    c.put("h/b", "1", None).await.unwrap(); // rev 3
    c.put("h/a", "2", None).await.unwrap(); // rev 4
    c.delete("h/b", None).await.unwrap(); // rev 5
    c.put("other", "x", None).await.unwrap(); // rev 6

    let mut w = cluster.client(2).await;
    let mut stream = w
        .watch(
            "h/",
            Some(WatchOptions::new().with_prefix().with_start_revision(2).with_prev_key()),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let resp = next_events(&mut stream).await;
        for e in resp.events() {
            let kv = e.kv().unwrap();
            seen.push((
                e.event_type(),
                kv.key_str().unwrap().to_string(),
                kv.mod_revision(),
                e.prev_kv().map(|p| p.value().to_vec()),
            ));
        }
    }
    assert_eq!(
        seen,
        vec![
            (EventType::Put, "h/a".into(), 2, None),
            (EventType::Put, "h/b".into(), 3, None),
            (EventType::Put, "h/a".into(), 4, Some(b"1".to_vec())),
            (EventType::Delete, "h/b".into(), 5, Some(b"1".to_vec())),
        ]
    );
    // Then it follows live writes.
    c.put("h/c", "live", None).await.unwrap();
    let resp = next_events(&mut stream).await;
    assert_eq!(resp.events()[0].kv().unwrap().key(), b"h/c");
    assert_eq!(resp.events()[0].kv().unwrap().mod_revision(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_a_compacted_revision_is_canceled_with_etcds_response() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client(0).await;
    for i in 0..5 {
        c.put("k", format!("{i}"), None).await.unwrap();
    }
    c.compact(5, None).await.unwrap();
    let mut stream = c
        .watch("k", Some(WatchOptions::new().with_start_revision(2)))
        .await
        .unwrap();
    let resp = next_events(&mut stream).await;
    assert!(resp.canceled());
    assert_eq!(resp.compact_revision(), 5);
    // etcd gives no reason here: clients tell compaction by compact_revision.
    assert_eq!(resp.cancel_reason(), "");

    // At the compaction revision itself, history is still there.
    let mut stream = c
        .watch("k", Some(WatchOptions::new().with_start_revision(5)))
        .await
        .unwrap();
    let resp = next_events(&mut stream).await;
    assert!(!resp.canceled());
    assert_eq!(resp.events()[0].kv().unwrap().mod_revision(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_that_cannot_be_made_are_refused_as_etcd_refuses_them() {
    let cluster = Cluster::start(1).await;
    let mut c = cluster.client(0).await;
    let mut stream = c.watch("a", Some(WatchOptions::new().with_watch_id(7))).await.unwrap();
    let created = next_response(&mut stream).await;
    assert!(created.created() && !created.canceled());
    assert_eq!(created.watch_id(), 7);

    // A range with no key in it (key at or past range_end): created, canceled, no watch id.
    for (key, end) in [("b", "a"), ("b", "b")] {
        stream
            .watch(key, Some(WatchOptions::new().with_range(end)))
            .await
            .unwrap();
        let resp = next_response(&mut stream).await;
        assert!(resp.created() && resp.canceled(), "[{key}, {end}): {resp:?}");
        assert_eq!(resp.watch_id(), -1);
        assert_eq!(resp.cancel_reason(), "mvcc: watcher range is empty");
    }
    // An id already in use on the stream: the same shape, with mvcc's reason.
    stream
        .watch("c", Some(WatchOptions::new().with_watch_id(7)))
        .await
        .unwrap();
    let resp = next_response(&mut stream).await;
    assert!(resp.created() && resp.canceled(), "{resp:?}");
    assert_eq!(resp.watch_id(), -1);
    assert_eq!(
        resp.cancel_reason(),
        "mvcc: duplicate watch ID provided on the WatchStream"
    );

    // "\0" as range_end means every key from `key` on, which is not empty; and the refusals
    // left watch 7 in place.
    stream
        .watch("b", Some(WatchOptions::new().with_from_key()))
        .await
        .unwrap();
    let created = next_response(&mut stream).await;
    assert!(created.created() && !created.canceled(), "{created:?}");
    let from_b = created.watch_id();
    c.put("a", "1", None).await.unwrap();
    c.put("z", "1", None).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let resp = next_events(&mut stream).await;
        for e in resp.events() {
            got.push((resp.watch_id(), e.kv().unwrap().key_str().unwrap().to_string()));
        }
    }
    assert_eq!(got, vec![(7, "a".to_string()), (from_b, "z".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_cancel_work_on_one_stream() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client(0).await;
    let mut stream = c
        .watch("f", Some(WatchOptions::new().with_filters([WatchFilterType::NoPut])))
        .await
        .unwrap();
    let created = stream.message().await.unwrap().unwrap();
    assert!(created.created());
    let first_id = created.watch_id();
    stream.watch("g", None).await.unwrap();
    let created = stream.message().await.unwrap().unwrap();
    assert!(created.created());
    assert_ne!(created.watch_id(), first_id);
    let second_id = created.watch_id();

    c.put("f", "1", None).await.unwrap();
    c.delete("f", None).await.unwrap();
    c.put("g", "1", None).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let resp = next_events(&mut stream).await;
        for e in resp.events() {
            got.push((resp.watch_id(), e.event_type()));
        }
    }
    assert!(got.contains(&(first_id, EventType::Delete)), "{got:?}");
    assert!(got.contains(&(second_id, EventType::Put)), "{got:?}");
    assert!(
        !got.contains(&(first_id, EventType::Put)),
        "NOPUT filter let a put through: {got:?}"
    );

    stream.cancel(second_id).await.unwrap();
    loop {
        let resp = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if resp.canceled() {
            assert_eq!(resp.watch_id(), second_id);
            break;
        }
    }
}

/// Waits until member `i` holds at least `n` keys under `load/`.
async fn wait_for_count(cluster: &Cluster, i: usize, n: usize) {
    eventually("writes land", || async move {
        let mut c = cluster.client(i).await;
        let got = c
            .get("load/", Some(GetOptions::new().with_prefix().with_count_only()))
            .await
            .map_err(|e| e.to_string())?;
        if got.count() as usize >= n {
            Ok(())
        } else {
            Err(got.count().to_string())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_is_lost_or_duplicated_when_the_leader_dies_under_load() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let watch_member = (leader + 1) % 3;
    let write_member = (leader + 2) % 3;

    let mut w = cluster.client(watch_member).await;
    let mut stream = w.watch("load/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    assert!(stream.message().await.unwrap().unwrap().created());

    let stop = Arc::new(AtomicBool::new(false));
    let endpoints = [
        cluster.members[write_member].client_url.clone(),
        cluster.members[watch_member].client_url.clone(),
    ];
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let opts = ConnectOptions::new().with_timeout(Duration::from_secs(3));
            let mut acked = 0u64;
            for seq in 0..10_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let ep = &endpoints[(seq % 2) as usize];
                if let Ok(mut c) = Client::connect([ep.as_str()], Some(opts.clone())).await {
                    if c.put(format!("load/{seq:06}"), "v", None).await.is_ok() {
                        acked += 1;
                    }
                }
            }
            acked
        })
    };
    wait_for_count(&cluster, write_member, 100).await;
    cluster.kill(leader);
    let now = {
        let c = cluster.client(write_member).await;
        eventually("count after kill", || {
            let mut c = c.clone();
            async move {
                c.get("load/", Some(GetOptions::new().with_prefix().with_count_only()))
                    .await
            }
        })
        .await
        .count() as usize
    };
    wait_for_count(&cluster, write_member, now + 100).await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    assert!(acked >= 200);

    // Every committed write under the prefix, as the survivors see it.
    let mut c = cluster.client(write_member).await;
    let stored = c.get("load/", Some(GetOptions::new().with_prefix())).await.unwrap();
    let mut expected: Vec<(String, i64)> = stored
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.mod_revision()))
        .collect();
    expected.sort_by_key(|(_, rev)| *rev);

    let mut seen: Vec<(String, i64)> = Vec::new();
    while seen.len() < expected.len() {
        let resp = next_events(&mut stream).await;
        assert!(!resp.canceled(), "watch canceled: {}", resp.cancel_reason());
        for e in resp.events() {
            let kv = e.kv().unwrap();
            seen.push((kv.key_str().unwrap().to_string(), kv.mod_revision()));
        }
    }
    assert!(
        seen.windows(2).all(|p| p[0].1 < p[1].1),
        "events out of order or duplicated"
    );
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_blocks_neither_writes_nor_other_watchers() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client(0).await;
    // A watcher whose client does not read: its responses pile up.
    let mut slow = cluster
        .client(0)
        .await
        .watch("big/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let mut fast = cluster
        .client(0)
        .await
        .watch("big/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(fast.message().await.unwrap().unwrap().created());

    // Far more than the stream's queue and HTTP/2 window hold: 1000 x 16 KiB.
    let value = vec![b'v'; 16 * 1024];
    let writes = 1000;
    let mut fast_seen = 0;
    for i in 0..writes {
        c.put(format!("big/{i:05}"), value.clone(), None).await.unwrap();
        // Drain the fast watcher as we go, so only the slow one falls behind.
        while let Ok(Some(Ok(Some(resp)))) =
            tokio::time::timeout(Duration::from_millis(1), async { Some(fast.message().await) }).await
        {
            fast_seen += resp.events().len();
        }
    }
    while fast_seen < writes {
        let resp = next_events(&mut fast).await;
        fast_seen += resp.events().len();
    }
    assert_eq!(fast_seen, writes);

    // The slow watcher, once it reads, gets every event in order, none twice.
    let mut revisions = Vec::new();
    while revisions.len() < writes {
        let resp = next_events(&mut slow).await;
        assert!(!resp.canceled(), "{}", resp.cancel_reason());
        revisions.extend(resp.events().iter().map(|e| e.kv().unwrap().mod_revision()));
    }
    let expected: Vec<i64> = (2..2 + writes as i64).collect();
    assert_eq!(revisions, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_watchers_over_one_hundred_streams_stay_correct() {
    const STREAMS: usize = 100;
    const KEYS: usize = 100;
    let cluster = Cluster::start(3).await;
    let member = 1;
    let rss_before = cluster.rss_kib(member).unwrap();
    let mut client = cluster.client(member).await;
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let mut stream = client.watch("fan/0", None).await.unwrap();
        assert!(stream.message().await.unwrap().unwrap().created());
        for k in 1..KEYS {
            stream.watch(format!("fan/{k}"), None).await.unwrap();
        }
        let mut created = 1;
        while created < KEYS {
            let resp = tokio::time::timeout(WAIT, stream.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert!(resp.created());
            created += 1;
        }
        streams.push(stream);
    }
    let rss_watching = cluster.rss_kib(member).unwrap();

    let mut writer = cluster.client(0).await;
    for k in 0..KEYS {
        writer.put(format!("fan/{k}"), "x", None).await.unwrap();
    }
    // Every stream sees every key's put exactly once, from the watcher on that key.
    for stream in streams.iter_mut() {
        let mut keys = Vec::new();
        while keys.len() < KEYS {
            let resp = next_events(stream).await;
            for e in resp.events() {
                keys.push(e.kv().unwrap().key_str().unwrap().to_string());
            }
        }
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), KEYS);
    }
    let rss_after = cluster.rss_kib(member).unwrap();
    println!(
        "watch memory: member RSS {rss_before} KiB idle, {rss_watching} KiB with {} watchers on {STREAMS} streams, {rss_after} KiB after {} events delivered",
        STREAMS * KEYS,
        STREAMS * KEYS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_without_gaps_after_its_member_restarts() {
    let mut cluster = Cluster::start(3).await;
    let holder = 0;
    let mut writer = cluster.client(1).await;
    let mut stream = cluster
        .client(holder)
        .await
        .watch("r/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(stream.message().await.unwrap().unwrap().created());

    let mut seen: Vec<i64> = Vec::new();
    for i in 0..50 {
        writer.put(format!("r/{i:03}"), "v", None).await.unwrap();
    }
    while seen.len() < 20 {
        let resp = next_events(&mut stream).await;
        seen.extend(resp.events().iter().map(|e| e.kv().unwrap().mod_revision()));
    }
    // The member holding the stream dies; the client resumes elsewhere from
    // the revision after the last one it saw.
    cluster.kill(holder);
    drop(stream);
    for i in 50..100 {
        eventually("write while a member is down", || {
            let mut w = writer.clone();
            async move { w.put(format!("r/{i:03}"), "v", None).await }
        })
        .await;
    }
    let resume_from = seen.last().unwrap() + 1;
    let mut other = cluster.client(2).await;
    let mut stream = other
        .watch(
            "r/",
            Some(WatchOptions::new().with_prefix().with_start_revision(resume_from)),
        )
        .await
        .unwrap();
    while seen.len() < 100 {
        let resp = next_events(&mut stream).await;
        seen.extend(resp.events().iter().map(|e| e.kv().unwrap().mod_revision()));
    }
    let expected: Vec<i64> = (2..102).collect();
    assert_eq!(
        seen, expected,
        "events lost, duplicated or out of order across the restart"
    );

    // And the restarted member serves the same history to a new watcher.
    cluster.restart(holder);
    let mut back = cluster.client(holder).await;
    let mut stream = eventually("watch on the restarted member", || {
        let mut back = back.clone();
        async move {
            back.watch("r/", Some(WatchOptions::new().with_prefix().with_start_revision(2)))
                .await
        }
    })
    .await;
    let mut replay = Vec::new();
    while replay.len() < 100 {
        let resp = next_events(&mut stream).await;
        replay.extend(resp.events().iter().map(|e| e.kv().unwrap().mod_revision()));
    }
    assert_eq!(replay, expected);
    let _ = &mut back;
}
