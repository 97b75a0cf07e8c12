//! [`IndexKey`]: a user key as the key index stores it.
//!
//! Finding a key in the index compares it with a dozen or more of the map's keys. Were every
//! key a separate allocation, each of those comparisons would first fetch a cache line from
//! somewhere else in the heap, and with many keys that miss is most of the cost of a lookup.
//! Short keys (the common case: etcd's benchmark uses 8 bytes, and many real keys fit too) are
//! therefore kept inline in the map's nodes; longer ones go to the heap as before.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// The longest key kept inline: the inline form then takes 24 bytes, 8 more than a boxed slice.
const INLINE_MAX: usize = 22;

/// A user key, inline when short (see the module docs). It compares, hashes and borrows exactly
/// as the `[u8]` it holds, so maps keyed by it are searched with plain `&[u8]`.
#[derive(Clone)]
pub(crate) enum IndexKey {
    Inline { len: u8, bytes: [u8; INLINE_MAX] },
    Heap(Box<[u8]>),
}

impl From<&[u8]> for IndexKey {
    fn from(key: &[u8]) -> IndexKey {
        if key.len() <= INLINE_MAX {
            let mut bytes = [0u8; INLINE_MAX];
            bytes[..key.len()].copy_from_slice(key);
            IndexKey::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            IndexKey::Heap(key.into())
        }
    }
}

impl Deref for IndexKey {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            IndexKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            IndexKey::Heap(key) => key,
        }
    }
}

impl Borrow<[u8]> for IndexKey {
    fn borrow(&self) -> &[u8] {
        self
    }
}

impl PartialEq for IndexKey {
    fn eq(&self, other: &IndexKey) -> bool {
        **self == **other
    }
}

impl Eq for IndexKey {}

impl PartialOrd for IndexKey {
    fn partial_cmp(&self, other: &IndexKey) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IndexKey {
    fn cmp(&self, other: &IndexKey) -> Ordering {
        (**self).cmp(&**other)
    }
}

impl Hash for IndexKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self).hash(state)
    }
}

impl fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn short_and_long_keys_order_and_borrow_like_their_bytes() {
        let long = vec![b'k'; INLINE_MAX + 1];
        let keys: Vec<&[u8]> = vec![b"", b"a", b"a\0", b"ab", &long, &long[..INLINE_MAX], b"b"];
        let mut map = BTreeMap::new();
        for key in &keys {
            map.insert(IndexKey::from(*key), key.to_vec());
        }
        let mut sorted: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
        sorted.sort();
        assert_eq!(map.keys().map(|k| k.to_vec()).collect::<Vec<_>>(), sorted);
        for key in &keys {
            assert_eq!(map.get(*key), Some(&key.to_vec()));
        }
        assert!(matches!(IndexKey::from(&long[..INLINE_MAX]), IndexKey::Inline { .. }));
        assert!(matches!(IndexKey::from(&long[..]), IndexKey::Heap(_)));
        assert_eq!(std::mem::size_of::<IndexKey>(), 24);
    }
}
