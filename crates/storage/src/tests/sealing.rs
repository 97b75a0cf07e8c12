//! Encryption at rest in the store: nothing of a sealed value reaches the file, everything reads
//! back, hashes do not change, and keys are checked at open, at snapshot install and after a
//! defragment.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use concord_crypt::{Keyring, Sealer};

use super::*;
use crate::StorageError;

const K1: &str = "k1:1111111111111111111111111111111111111111111111111111111111111111";
const K2: &str = "k2:2222222222222222222222222222222222222222222222222222222222222222";

fn sealer(key_file: &str) -> Arc<Sealer> {
    Arc::new(Sealer::new(Arc::new(Keyring::parse(key_file, "test keys").unwrap())).unwrap())
}

/// The sealer of `CONCORD_STORAGE_TEST_SEAL` runs (see `open_store`).
pub(super) fn suite_sealer() -> Arc<Sealer> {
    static SEALER: OnceLock<Arc<Sealer>> = OnceLock::new();
    SEALER
        .get_or_init(|| sealer("suite:7373737373737373737373737373737373737373737373737373737373737373"))
        .clone()
}

const CANARY: &str = "PLAINTEXT-CANARY";

fn secret(i: usize) -> String {
    format!("{CANARY}-{i:04}-a value nobody should find on disk")
}

fn file_contains(path: &Path, needle: &str) -> bool {
    std::fs::read(path)
        .unwrap()
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// A harness on a store opened with `sealer`.
fn sealed_harness(dir: tempfile::TempDir, sealer: Option<Arc<Sealer>>) -> Result<Harness, StorageError> {
    let store = MvccStore::open_with(&dir.path().join("data").join("kv.redb"), sealer)?;
    Ok(Harness {
        dir,
        store,
        next_index: 1,
    })
}

/// A harness on a plain store, even when the suite runs sealed.
fn plain_harness() -> Harness {
    sealed_harness(tempfile::tempdir().unwrap(), None).unwrap()
}

fn reopen_with(h: Harness, sealer: Option<Arc<Sealer>>) -> Result<Harness, (tempfile::TempDir, StorageError)> {
    let Harness { dir, store, next_index } = h;
    drop(store);
    match MvccStore::open_with(&dir.path().join("data").join("kv.redb"), sealer) {
        Ok(store) => Ok(Harness { dir, store, next_index }),
        Err(e) => Err((dir, e)),
    }
}

fn store_path(h: &Harness) -> std::path::PathBuf {
    h.dir.path().join("data").join("kv.redb")
}

/// A workload that reads values back in every way a write can: prev_kv on put and delete, a
/// value compare in a txn, history, events.
fn workload(h: &mut Harness) {
    for i in 0..20 {
        h.put(&format!("k/{i:02}"), &secret(i));
    }
    let resp = h
        .put_req(PutRequest {
            prev_kv: true,
            ..put_req("k/03", &secret(103))
        })
        .unwrap();
    assert_eq!(resp.prev_kv.unwrap().value, secret(3).as_bytes());
    let deleted = h.delete("k/04", b"");
    assert_eq!(deleted.prev_kvs[0].value, secret(4).as_bytes());
    let txn = h
        .txn(TxnRequest {
            compare: vec![cmp(
                "k/05",
                CompareTarget::Value,
                CompareResult::Equal,
                TargetUnion::Value(secret(5).into_bytes()),
            )],
            success: vec![op_put("k/06", &secret(106))],
            failure: vec![],
        })
        .unwrap();
    assert!(txn.succeeded);
    h.put_req(PutRequest {
        ignore_value: true,
        ..put_req("k/07", "")
    })
    .unwrap();
}

fn check_workload(h: &Harness) {
    assert_eq!(h.get("k/03").unwrap().value, secret(103).as_bytes());
    assert!(h.get("k/04").is_none());
    assert_eq!(h.get("k/06").unwrap().value, secret(106).as_bytes());
    assert_eq!(h.get("k/07").unwrap().value, secret(7).as_bytes());
    assert_eq!(h.get("k/19").unwrap().value, secret(19).as_bytes());
    // History (older rows of `revisions`) and watch events.
    assert_eq!(h.get_at("k/03", 5).unwrap().unwrap().value, secret(3).as_bytes());
    let (events, _) = h.store.events(1, 1000, true).unwrap();
    let last_put_of_3 = events.iter().rfind(|e| e.kv.as_ref().unwrap().key == b"k/03").unwrap();
    assert_eq!(last_put_of_3.kv.as_ref().unwrap().value, secret(103).as_bytes());
    assert_eq!(last_put_of_3.prev_kv.as_ref().unwrap().value, secret(3).as_bytes());
}

#[test]
fn sealed_values_never_reach_the_file_and_read_back_with_equal_hashes() {
    // Control: the same workload on a plain store leaves the values in its file.
    let mut plain = plain_harness();
    workload(&mut plain);
    plain.store.sync().unwrap();
    assert!(file_contains(&store_path(&plain), CANARY));

    let mut h = sealed_harness(tempfile::tempdir().unwrap(), Some(sealer(K1))).unwrap();
    workload(&mut h);
    check_workload(&h);
    h.store.sync().unwrap();
    assert!(!file_contains(&store_path(&h), CANARY));
    // Members agree on hashes whether and however they seal.
    assert_eq!(h.store.hash_kv(0).unwrap(), plain.store.hash_kv(0).unwrap());
    assert_eq!(h.store.hash().unwrap(), plain.store.hash().unwrap());
    // Keys-only and count-only reads do not open values.
    let resp = h
        .range(RangeRequest {
            keys_only: true,
            ..range_req("k/", "k0")
        })
        .unwrap();
    assert_eq!(resp.count, 19);
    assert!(resp.kvs.iter().all(|kv| kv.value.is_empty()));

    let h = reopen_with(h, Some(sealer(K1))).unwrap();
    check_workload(&h);
    assert_eq!(h.store.sealed_key_ids().unwrap(), vec![sealer(K1).active_id()]);
}

#[test]
fn missing_keys_are_refused_and_a_defragment_reseals_under_the_new_key() {
    let (k1, k2) = (sealer(K1), sealer(K2));
    let mut h = sealed_harness(tempfile::tempdir().unwrap(), Some(k1.clone())).unwrap();
    workload(&mut h);

    // No key file, or one without k1: refused, naming the key id.
    let (dir, err) = reopen_with(h, None).err().unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains(&k1.active_id().to_string()) && msg.contains("--encryption-key-file"),
        "{msg}"
    );
    let h = sealed_harness(dir, Some(k1.clone())).unwrap();
    let (dir, err) = reopen_with(h, Some(k2.clone())).err().unwrap();
    assert!(err.to_string().contains("does not list"), "{err}");

    // Rotation: k2 on top, k1 below. Old values read, new ones are sealed with k2.
    let both = sealer(&format!("{K2}\n{K1}"));
    let mut h = sealed_harness(dir, Some(both.clone())).unwrap();
    h.next_index = 1000;
    check_workload(&h);
    h.put("new", &secret(500));
    let mut ids = vec![k1.active_id(), k2.active_id()];
    ids.sort();
    assert_eq!(h.store.sealed_key_ids().unwrap(), ids);
    let (dir, _) = reopen_with(h, Some(k2.clone())).err().unwrap();

    // A defragment re-seals every value under k2; then k1 may go.
    let h = sealed_harness(dir, Some(both)).unwrap();
    let hash_before = h.store.hash().unwrap();
    h.store.defragment().unwrap();
    assert_eq!(h.store.sealed_key_ids().unwrap(), vec![k2.active_id()]);
    assert_eq!(h.store.hash().unwrap(), hash_before);
    assert!(!file_contains(&store_path(&h), CANARY));
    let h = reopen_with(h, Some(k2)).unwrap();
    check_workload(&h);
    assert_eq!(h.get("new").unwrap().value, secret(500).as_bytes());
}

#[test]
fn a_plain_store_turns_encrypted_and_a_defragment_seals_the_rest() {
    let mut h = plain_harness();
    workload(&mut h);
    // Encryption turned on: old plain values stay readable, new ones are sealed.
    let mut h = reopen_with(h, Some(sealer(K1))).unwrap();
    check_workload(&h);
    h.put("new", &secret(600));
    assert_eq!(h.get("new").unwrap().value, secret(600).as_bytes());
    h.store.sync().unwrap();
    assert!(
        file_contains(&store_path(&h), CANARY),
        "old plain values are still there"
    );
    h.store.defragment().unwrap();
    assert!(!file_contains(&store_path(&h), CANARY));
    check_workload(&h);
    // And now it cannot be opened without the key.
    assert!(reopen_with(h, None).is_err());
}

#[test]
fn a_snapshot_sealed_with_a_key_the_member_lacks_is_refused_before_anything_changes() {
    let mut source = sealed_harness(tempfile::tempdir().unwrap(), Some(sealer(K1))).unwrap();
    workload(&mut source);
    let snap = source.dir.path().join("snap.redb");
    source.store.write_snapshot(&snap).unwrap();
    assert!(!file_contains(&snap, CANARY));

    let mut plain = plain_harness();
    plain.put("mine", "x");
    let err = plain.store.install_snapshot(&snap).unwrap_err().to_string();
    assert!(
        err.contains("snapshot") && err.contains("--encryption-key-file"),
        "{err}"
    );
    assert!(snap.exists(), "a refused snapshot is left where it was");
    assert!(plain.get("mine").is_some());

    let mut other_key = sealed_harness(tempfile::tempdir().unwrap(), Some(sealer(K2))).unwrap();
    assert!(other_key.store.install_snapshot(&snap).is_err());
    other_key.put("still", "works");

    let target = sealed_harness(tempfile::tempdir().unwrap(), Some(sealer(&format!("{K2}\n{K1}")))).unwrap();
    target.store.install_snapshot(&snap).unwrap();
    check_workload(&target);
}
