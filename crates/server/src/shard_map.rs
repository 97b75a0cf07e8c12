//! The shards a cluster starts with (`--experimental-initial-shards`): shard `i` (group `i + 1`)
//! holds the keys from split key `i - 1` (the empty key for the first) up to split key `i` (the
//! end of the keyspace for the last). The first shard's group holds the cluster's metadata and
//! has every member; each later shard is placed on [`REPLICAS`] members, round the ring of member
//! ids, so that shards spread evenly. A member writes the map into its data directory when it
//! bootstraps and reads it from there on every later start, as etcd reads its `--initial-*` flags
//! only once. A split adds its new shard to the map ([`save`]): the members holding the split
//! shard when they apply the split, the others when group 1 tells them.

use std::path::{Path, PathBuf};

/// Replicas of each shard after the first (fewer when the cluster has fewer members).
pub const REPLICAS: usize = 3;

/// A shard after the first: where it starts and which members replicate it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardPlacement {
    /// Its group's id.
    pub group: u64,
    /// Its first key; it ends where the next one starts.
    pub start: Vec<u8>,
    /// The members holding a replica, ascending.
    pub replicas: Vec<u64>,
}

/// The file: one shard per line, ascending by start key: its start key in hex, a space, its
/// replicas' ids in hex separated by commas, a space, its group id (absent in files written before
/// splits: the line's position plus 2).
fn path(member_dir: &Path) -> PathBuf {
    member_dir.join("shards")
}

/// The shards after the first this member's keyspace has: those of its data directory if it has
/// any, else, when it is bootstrapping a new cluster of `members`, those starting at `initial`
/// (which it records), else none.
pub fn load_or_create(
    member_dir: &Path,
    initial: &[Vec<u8>],
    members: &[u64],
    bootstrapping: bool,
) -> Result<Vec<ShardPlacement>, String> {
    let file = path(member_dir);
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let shards = text
                .lines()
                .filter(|l| !l.is_empty())
                .enumerate()
                .map(|(i, l)| {
                    parse_line(l, i as u64 + 2).ok_or_else(|| format!("{}: cannot read {l:?}", file.display()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            check(&shards.iter().map(|s| s.start.clone()).collect::<Vec<_>>())?;
            Ok(shards)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !bootstrapping || initial.is_empty() {
                return Ok(Vec::new());
            }
            check(initial)?;
            let shards = place(initial, members);
            save(member_dir, &shards)?;
            Ok(shards)
        }
        Err(e) => Err(format!("{}: {e}", file.display())),
    }
}

/// Replaces the map in `member_dir` with `shards` (sorted by start key here), durably: a new file
/// renamed over the old one.
pub fn save(member_dir: &Path, shards: &[ShardPlacement]) -> Result<(), String> {
    let file = path(member_dir);
    let mut sorted = shards.to_vec();
    sorted.sort_by(|a, b| a.start.cmp(&b.start));
    let text: String = sorted.iter().map(format_line).collect();
    let temporary = file.with_extension("tmp");
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::File::open(&temporary)?.sync_all())
        .and_then(|()| std::fs::rename(&temporary, &file))
        .and_then(|()| std::fs::File::open(member_dir)?.sync_all())
        .map_err(|e| format!("{}: {e}", file.display()))
}

/// Places the shard starting at each of `starts` on [`REPLICAS`] of `members`: the `i`-th on the
/// members from position `i` on, round the ring of ids in ascending order.
pub fn place(starts: &[Vec<u8>], members: &[u64]) -> Vec<ShardPlacement> {
    let mut ring = members.to_vec();
    ring.sort_unstable();
    let count = REPLICAS.min(ring.len());
    starts
        .iter()
        .enumerate()
        .map(|(i, start)| {
            let mut replicas: Vec<u64> = (0..count).map(|k| ring[(i + k) % ring.len()]).collect();
            replicas.sort_unstable();
            ShardPlacement {
                group: i as u64 + 2,
                start: start.clone(),
                replicas,
            }
        })
        .collect()
}

fn format_line(shard: &ShardPlacement) -> String {
    let replicas: Vec<String> = shard.replicas.iter().map(|id| format!("{id:x}")).collect();
    format!("{} {} {}\n", to_hex(&shard.start), replicas.join(","), shard.group)
}

fn parse_line(line: &str, default_group: u64) -> Option<ShardPlacement> {
    let mut fields = line.split(' ');
    let (start, replicas) = (fields.next()?, fields.next()?);
    let group = match fields.next() {
        Some(group) => group.parse().ok()?,
        None => default_group,
    };
    let replicas = replicas
        .split(',')
        .map(|id| u64::from_str_radix(id, 16).ok())
        .collect::<Option<Vec<_>>>()?;
    Some(ShardPlacement {
        group,
        start: from_hex(start)?,
        replicas,
    })
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// Split keys must be non-empty and strictly ascending.
pub fn check(keys: &[Vec<u8>]) -> Result<(), String> {
    if keys.iter().any(Vec::is_empty) {
        return Err("a shard cannot start at the empty key: the first shard does".into());
    }
    if keys.windows(2).any(|w| w[0] >= w[1]) {
        return Err("split keys must be strictly ascending".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_is_recorded_at_bootstrap_and_read_back_later() {
        let dir = tempfile::tempdir().unwrap();
        let keys = vec![b"g".to_vec(), b"p\xff".to_vec()];
        let members = [30, 10, 20];
        let shards = load_or_create(dir.path(), &keys, &members, true).unwrap();
        assert_eq!(shards.len(), 2);
        assert_eq!(shards[1].start, b"p\xff");
        // Later starts read the file, whatever the flag and the members say now.
        assert_eq!(load_or_create(dir.path(), &[], &[], false).unwrap(), shards);
        assert_eq!(
            load_or_create(dir.path(), &[b"x".to_vec()], &[1], true).unwrap(),
            shards
        );
    }

    #[test]
    fn a_split_is_saved_with_its_group_and_old_files_number_their_lines() {
        let dir = tempfile::tempdir().unwrap();
        // A file written before splits: no group ids, so line i is group i + 2.
        std::fs::write(path(dir.path()), "67 1,2,3\n70 2,3,4\n").unwrap();
        let mut shards = load_or_create(dir.path(), &[], &[], false).unwrap();
        assert_eq!(shards.iter().map(|s| s.group).collect::<Vec<_>>(), vec![2, 3]);
        shards.push(ShardPlacement {
            group: 9,
            start: b"h".to_vec(),
            replicas: vec![1, 2, 3],
        });
        save(dir.path(), &shards).unwrap();
        let read = load_or_create(dir.path(), &[], &[], false).unwrap();
        let order: Vec<(u64, &[u8])> = read.iter().map(|s| (s.group, s.start.as_slice())).collect();
        assert_eq!(order, vec![(2, &b"g"[..]), (9, &b"h"[..]), (3, &b"p"[..])]);
    }

    #[test]
    fn a_member_that_is_not_bootstrapping_has_one_shard_unless_recorded() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_or_create(dir.path(), &[b"g".to_vec()], &[1, 2, 3], false)
            .unwrap()
            .is_empty());
        assert!(!path(dir.path()).exists());
    }

    #[test]
    fn shards_spread_round_the_ring_of_members() {
        let starts: Vec<Vec<u8>> = ["b", "c", "d", "e", "f", "g"]
            .iter()
            .map(|k| k.as_bytes().to_vec())
            .collect();
        let shards = place(&starts, &[6, 5, 4, 3, 2, 1]);
        let replicas: Vec<Vec<u64>> = shards.iter().map(|s| s.replicas.clone()).collect();
        assert_eq!(
            replicas,
            vec![
                vec![1, 2, 3],
                vec![2, 3, 4],
                vec![3, 4, 5],
                vec![4, 5, 6],
                vec![1, 5, 6],
                vec![1, 2, 6]
            ]
        );
        // Every member holds as many replicas as every other.
        for id in 1..=6 {
            assert_eq!(replicas.iter().filter(|r| r.contains(&id)).count(), 3);
        }
        // Fewer members than replicas: each shard on all of them.
        assert_eq!(place(&starts[..1], &[9, 8])[0].replicas, vec![8, 9]);
    }

    #[test]
    fn split_keys_must_be_ascending_and_not_empty() {
        assert!(check(&[b"b".to_vec(), b"a".to_vec()]).is_err());
        assert!(check(&[b"a".to_vec(), b"a".to_vec()]).is_err());
        assert!(check(&[Vec::new()]).is_err());
        assert!(check(&[b"a".to_vec(), b"b".to_vec()]).is_ok());
    }
}
