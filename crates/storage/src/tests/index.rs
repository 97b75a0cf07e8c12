//! Tests of the in-memory key index against the `revisions` table: rebuilding it (reopen,
//! snapshot install, defragment) changes no answer, history reads after many overwrites, a
//! failed batch leaves no trace, and readers running beside the writer see consistent states.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use concord_proto::mvccpb::Event;

use super::*;

/// Everything readable at every revision the store still serves: each revision's whole key
/// space, the change log with previous versions, `hash_kv` at each revision, and `hash`.
#[derive(Debug, PartialEq)]
struct Fingerprint {
    revision: i64,
    compact_revision: i64,
    by_revision: Vec<(i64, RangeResponse)>,
    events: Vec<Event>,
    hash_kv: Vec<(u32, i64, i64)>,
    hash: u32,
}

fn fingerprint(store: &MvccStore) -> Fingerprint {
    let current = store.current_revision();
    let first = store.compact_revision().max(1);
    let by_revision = (first..=current)
        .map(|rev| {
            let req = RangeRequest {
                revision: rev,
                ..range_bytes(b"\0", b"\0")
            };
            (rev, store.range(&req).unwrap().0)
        })
        .collect();
    Fingerprint {
        revision: current,
        compact_revision: store.compact_revision(),
        by_revision,
        events: store.events(first, usize::MAX, true).unwrap().0,
        hash_kv: (first..=current).map(|rev| store.hash_kv(rev).unwrap()).collect(),
        hash: store.hash().unwrap(),
    }
}

/// Overwrites, deletes, recreations, a multi-key txn, a lease revoke and two compactions.
fn churn(h: &mut Harness) {
    for round in 0..6 {
        for i in 0..20 {
            h.put(&format!("k/{i:02}"), &format!("r{round}-{i}"));
        }
        h.delete(&format!("k/{:02}", round * 3), b"");
        if round == 2 {
            h.compact(h.store.current_revision() - 15).unwrap();
        }
    }
    h.delete("k/1", b"k/2");
    h.txn(TxnRequest {
        success: vec![op_put("k/10", "txn"), op_put("k/99", "new"), op_delete("k/05")],
        ..Default::default()
    })
    .unwrap();
    h.grant(7, 60).unwrap();
    h.put_req(PutRequest {
        lease: 7,
        ..put_req("leased", "x")
    })
    .unwrap();
    h.revoke(7).unwrap();
    h.compact(h.store.current_revision() - 20).unwrap();
    h.put("k/00", "last");
}

#[test]
fn rebuilt_index_gives_identical_reads_and_hashes() {
    let mut h = Harness::new();
    churn(&mut h);
    let before = fingerprint(&h.store);
    assert!(before.compact_revision > 0 && before.by_revision.len() > 20);

    // Reopen.
    let h = h.reopen();
    h.store.assert_index_matches_file();
    assert_eq!(fingerprint(&h.store), before);

    // Defragment (a copy installed in place).
    h.store.defragment().unwrap();
    h.store.assert_index_matches_file();
    assert_eq!(fingerprint(&h.store), before);

    // Installed as a snapshot into a store with other content.
    let path = h.dir.path().join("snap.redb");
    h.store.write_snapshot(&path).unwrap();
    let mut other = Harness::new();
    other.put("unrelated", "x");
    other.store.install_snapshot(&path).unwrap();
    other.store.assert_index_matches_file();
    assert_eq!(fingerprint(&other.store), before);
    assert!(other.get("unrelated").is_none());
}

#[test]
fn reads_at_old_revisions_after_many_overwrites() {
    let mut h = Harness::new();
    // Interleaved writes of 40 keys, so the versions of one key are spread over the table and
    // neighbouring keys' current versions are far apart (and sometimes close) in it.
    let mut expected: Vec<Vec<(i64, String)>> = vec![Vec::new(); 40];
    let mut step = 0u64;
    for _ in 0..400 {
        step = (step * 7 + 13) % 40;
        let value = format!("v{}", h.store.current_revision());
        let rev = h.put(&format!("key/{step:02}"), &value);
        expected[step as usize].push((rev, value));
    }
    let current = h.store.current_revision();
    for rev in (1..=current).step_by(7).chain([current]) {
        let resp = h
            .range(RangeRequest {
                revision: rev,
                ..range_bytes(b"key/", b"key0")
            })
            .unwrap();
        let want: Vec<(String, String, i64)> = expected
            .iter()
            .enumerate()
            .filter_map(|(i, versions)| {
                let (mod_rev, value) = versions.iter().rev().find(|(r, _)| *r <= rev)?;
                Some((format!("key/{i:02}"), value.clone(), *mod_rev))
            })
            .collect();
        let got: Vec<(String, String, i64)> = resp
            .kvs
            .iter()
            .map(|kv| {
                (
                    String::from_utf8(kv.key.clone()).unwrap(),
                    String::from_utf8(kv.value.clone()).unwrap(),
                    kv.mod_revision,
                )
            })
            .collect();
        assert_eq!(got, want, "revision {rev}");
        assert_eq!(resp.count as usize, want.len());
        // Versions count up from the key's creation.
        for kv in &resp.kvs {
            let i: usize = String::from_utf8(kv.key[4..].to_vec()).unwrap().parse().unwrap();
            let n = expected[i].iter().filter(|(r, _)| *r <= kv.mod_revision).count();
            assert_eq!(kv.version, n as i64);
            assert_eq!(kv.create_revision, expected[i][0].0);
        }
        // A point read agrees with the range.
        if let Some((key, value, _)) = want.first() {
            assert_eq!(h.get_at(key, rev).unwrap().unwrap().value, value.as_bytes());
        }
    }
}

#[test]
fn compaction_then_reopen() {
    let mut h = Harness::new();
    for round in 0..5 {
        for i in 0..10 {
            h.put(&format!("c/{i}"), &format!("{round}"));
        }
    }
    h.delete("c/3", b"");
    let c = h.store.current_revision();
    h.compact(c).unwrap();
    h.put("c/4", "after");
    let before = fingerprint(&h.store);
    let rows = h.store.kv_rows();
    // One version per live key, c/3's deletion (at exactly the compaction point), c/4's new one.
    assert_eq!(rows.len(), 9 + 1 + 1);

    let mut h = h.reopen();
    assert_eq!(fingerprint(&h.store), before);
    assert_eq!(h.store.kv_rows(), rows);
    assert_eq!(h.get_at("c/1", c - 1).unwrap_err(), KvError::Compacted);
    assert_eq!(h.get_at("c/1", c).unwrap().unwrap().value, b"4");
    assert!(h.get("c/3").is_none());
    // Writing and compacting again after the reopen works from the rebuilt index.
    assert_eq!(h.put("c/3", "back"), c + 2);
    assert_eq!(h.get("c/3").unwrap().version, 1);
    assert_eq!(h.get("c/4").unwrap().version, 6);
    h.compact(c + 2).unwrap();
    assert_eq!(h.store.kv_rows().len(), 10);
    let h = h.reopen();
    h.store.assert_index_matches_file();
    assert_eq!(h.get("c/3").unwrap().value, b"back");
}

#[test]
fn a_failed_batch_leaves_the_index_as_it_was() {
    let mut h = Harness::new();
    h.put("a", "1");
    h.put("b", "1");
    let before = fingerprint(&h.store);

    let commands: Vec<RaftCommand> = [
        Op::Put(put_req("a", "2")),
        Op::Put(put_req("new", "x")),
        Op::DeleteRange(DeleteRangeRequest {
            key: b"b".to_vec(),
            ..Default::default()
        }),
        Op::Compaction(CompactionRequest {
            revision: 3,
            physical: true,
        }),
    ]
    .into_iter()
    .map(|op| RaftCommand { op: Some(op) })
    .collect();
    let entries: Vec<ApplyEntry<'_>> = commands
        .iter()
        .enumerate()
        .map(|(i, command)| ApplyEntry {
            index: h.next_index + i as u64,
            command: Some(command),
            stamp: None,
        })
        .collect();
    h.store.fail_next_batch.store(true, Ordering::SeqCst);
    assert!(h.store.apply(&entries).is_err());
    h.store.assert_index_matches_file();
    assert_eq!(fingerprint(&h.store), before);

    // The same batch applies cleanly afterwards.
    let results = h.store.apply(&entries).unwrap();
    assert!(results.iter().all(|(_, r)| r.is_ok()));
    h.store.assert_index_matches_file();
    assert_eq!(h.get("a").unwrap().value, b"2");
    assert!(h.get("b").is_none());
    assert_eq!(h.store.compact_revision(), 3);
}

/// Readers running beside a writer that puts, deletes and compacts always see exactly the state
/// at the revision they read at.
#[test]
fn concurrent_readers_see_consistent_states() {
    const KEYS: u64 = 16;
    // Command `n` (revision n + 2) puts key n % KEYS with value n, except every 7th once all
    // keys exist, which deletes that key instead (never one deleted already: 16 is not a
    // multiple of 7). So every command changes exactly one key.
    fn deletes(n: u64) -> bool {
        n >= KEYS && n % 7 == 6
    }
    fn expected_at(rev: i64, key: u64) -> Option<u64> {
        let last = (0..rev - 1).rev().find(|n| *n as u64 % KEYS == key)? as u64;
        (!deletes(last)).then_some(last)
    }

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(super::open_store(&dir.path().join("kv.redb")));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let store = Arc::clone(&store);
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut index = 1;
            for n in 0..1500u64 {
                let key = format!("k/{:02}", n % KEYS).into_bytes();
                let op = if deletes(n) {
                    Op::DeleteRange(DeleteRangeRequest {
                        key,
                        ..Default::default()
                    })
                } else {
                    Op::Put(PutRequest {
                        key,
                        value: n.to_string().into_bytes(),
                        ..Default::default()
                    })
                };
                let mut commands = vec![RaftCommand { op: Some(op) }];
                if n % 50 == 49 {
                    commands.push(RaftCommand {
                        op: Some(Op::Compaction(CompactionRequest {
                            revision: n as i64 - 20,
                            physical: true,
                        })),
                    });
                }
                let entries: Vec<ApplyEntry<'_>> = commands
                    .iter()
                    .map(|command| {
                        index += 1;
                        ApplyEntry {
                            index,
                            command: Some(command),
                            stamp: None,
                        }
                    })
                    .collect();
                for (_, result) in store.apply(&entries).unwrap() {
                    result.unwrap();
                }
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let readers: Vec<_> = (0..3)
        .map(|reader| {
            let store = Arc::clone(&store);
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut reads = 0;
                while !done.load(Ordering::SeqCst) || reads < 50 {
                    reads += 1;
                    let current = store.current_revision();
                    // Alternate between the current revision and an older one.
                    let rev = if reads % 2 == 0 {
                        0
                    } else {
                        (current - 30).max(store.compact_revision()).max(1)
                    };
                    let req = RangeRequest {
                        revision: rev,
                        ..range_bytes(b"k/", b"k0")
                    };
                    let (resp, at) = match store.range(&req) {
                        Ok(answer) => answer,
                        // Compacted between choosing the revision and reading.
                        Err(KvError::Compacted) => continue,
                        Err(err) => panic!("reader {reader}: {err}"),
                    };
                    let rev = if rev == 0 { at } else { rev };
                    let got: Vec<(u64, u64)> = resp
                        .kvs
                        .iter()
                        .map(|kv| {
                            let key: u64 = std::str::from_utf8(&kv.key[2..]).unwrap().parse().unwrap();
                            let value = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                            (key, value)
                        })
                        .collect();
                    let want: Vec<(u64, u64)> = (0..KEYS)
                        .filter_map(|key| Some((key, expected_at(rev, key)?)))
                        .collect();
                    assert_eq!(got, want, "reader {reader} at revision {rev}");
                    // The change log agrees with the writes, previous versions included.
                    if let Ok((events, _)) = store.events(rev.max(2) - 1, 20, true) {
                        for event in &events {
                            let kv = event.kv.as_ref().unwrap();
                            let n = kv.mod_revision as u64 - 2;
                            let prev_n = (0..n).rev().find(|m| m % KEYS == n % KEYS);
                            if let (Some(prev), Some(prev_n)) = (&event.prev_kv, prev_n) {
                                assert_eq!(prev.value, prev_n.to_string().into_bytes());
                            }
                        }
                    }
                }
                reads
            })
        })
        .collect();
    writer.join().unwrap();
    for reader in readers {
        assert!(reader.join().unwrap() >= 50);
    }
    store.assert_index_matches_file();
}
