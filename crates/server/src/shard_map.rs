//! The keys the keyspace is split at, when a cluster starts with several shards
//! (`--experimental-initial-shards`): shard `i` (group `i + 1`) holds the keys from split key
//! `i - 1` (the empty key for the first) up to split key `i` (the end of the keyspace for the
//! last). A member writes them into its data directory when it bootstraps and reads them from
//! there on every later start, as etcd reads its `--initial-*` flags only once.

use std::path::{Path, PathBuf};

/// The file, one split key per line in hex.
fn path(member_dir: &Path) -> PathBuf {
    member_dir.join("shards")
}

/// The split keys this member's keyspace uses: those of its data directory if it has any, else
/// `initial` when it is bootstrapping a new cluster (which it records), else none.
pub fn load_or_create(member_dir: &Path, initial: &[Vec<u8>], bootstrapping: bool) -> Result<Vec<Vec<u8>>, String> {
    let file = path(member_dir);
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let keys = text
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| from_hex(l).ok_or_else(|| format!("{}: not hex: {l:?}", file.display())))
                .collect::<Result<Vec<_>, _>>()?;
            check(&keys)?;
            Ok(keys)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !bootstrapping || initial.is_empty() {
                return Ok(Vec::new());
            }
            check(initial)?;
            let text: String = initial.iter().map(|k| format!("{}\n", to_hex(k))).collect();
            let temporary = file.with_extension("tmp");
            std::fs::write(&temporary, text)
                .and_then(|()| std::fs::File::open(&temporary)?.sync_all())
                .and_then(|()| std::fs::rename(&temporary, &file))
                .map_err(|e| format!("{}: {e}", file.display()))?;
            Ok(initial.to_vec())
        }
        Err(e) => Err(format!("{}: {e}", file.display())),
    }
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
    fn keys_are_recorded_at_bootstrap_and_read_back_later() {
        let dir = tempfile::tempdir().unwrap();
        let keys = vec![b"g".to_vec(), b"p\xff".to_vec()];
        assert_eq!(load_or_create(dir.path(), &keys, true).unwrap(), keys);
        // Later starts read the file, whatever the flag says now.
        assert_eq!(load_or_create(dir.path(), &[], false).unwrap(), keys);
        assert_eq!(load_or_create(dir.path(), &[b"x".to_vec()], true).unwrap(), keys);
    }

    #[test]
    fn a_member_that_is_not_bootstrapping_has_one_shard_unless_recorded() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_or_create(dir.path(), &[b"g".to_vec()], false).unwrap().is_empty());
        assert!(!path(dir.path()).exists());
    }

    #[test]
    fn split_keys_must_be_ascending_and_not_empty() {
        assert!(check(&[b"b".to_vec(), b"a".to_vec()]).is_err());
        assert!(check(&[b"a".to_vec(), b"a".to_vec()]).is_err());
        assert!(check(&[Vec::new()]).is_err());
        assert!(check(&[b"a".to_vec(), b"b".to_vec()]).is_ok());
    }
}
