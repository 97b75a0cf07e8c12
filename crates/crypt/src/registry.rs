//! The keys this process can open sealed data with.
//!
//! Readers that decode stored records deep inside a storage engine have no handle on the
//! member's configuration; they call [`open_registered`]. A member is one process with one key
//! file, which it registers when it opens its storage. Key ids are fingerprints of the keys, so
//! keyrings registered side by side (several stores in one test process) cannot be confused:
//! an id names the same key wherever it is registered. Keys are only ever added.

use std::sync::{Arc, RwLock};

use crate::error::CryptError;
use crate::keyfile::{KeyId, Keyring};

static REGISTRY: RwLock<Vec<Arc<Keyring>>> = RwLock::new(Vec::new());

/// Lets [`open_registered`] use every key of `keyring` from now on.
pub fn register(keyring: &Arc<Keyring>) {
    let mut all = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    if !all.iter().any(|k| Arc::ptr_eq(k, keyring)) {
        all.push(keyring.clone());
    }
}

/// Whether some registered keyring holds the key `id`.
pub fn is_registered(id: KeyId) -> bool {
    let all = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    all.iter().any(|k| k.contains(id))
}

/// Opens `sealed` with whichever registered key it names.
pub fn open_registered(sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptError> {
    let id = crate::seal::sealed_key_id(sealed)?;
    let all = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    match all.iter().find(|k| k.contains(id)) {
        Some(keyring) => keyring.open(sealed, aad),
        None => Err(CryptError::UnknownKey(id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Sealer;

    #[test]
    fn registered_keys_open_and_others_do_not() {
        let ring = Arc::new(
            Keyring::parse(
                "reg:4242424242424242424242424242424242424242424242424242424242424201",
                "t",
            )
            .unwrap(),
        );
        let sealer = Sealer::new(ring.clone()).unwrap();
        let sealed = sealer.seal(b"hello", b"aad");
        assert!(matches!(open_registered(&sealed, b"aad"), Err(CryptError::UnknownKey(id)) if id == ring.active_id()));
        register(&ring);
        register(&ring);
        assert!(is_registered(ring.active_id()));
        assert_eq!(open_registered(&sealed, b"aad").unwrap(), b"hello");
    }
}
