//! Sealing and opening: the version-1 format and the nonce sequence (see the crate docs).

use std::fmt;
use std::sync::{Arc, Mutex};

use ring::aead::{Aad, Nonce, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::CryptError;
use crate::keyfile::{Key, KeyId, Keyring};

/// The first byte of every sealed item of this format.
pub const FORMAT_V1: u8 = 0x01;
/// Version byte and key id: authenticated along with the caller's associated data.
const PREFIX_LEN: usize = 1 + 4;
/// Where the ciphertext starts.
const BODY_START: usize = PREFIX_LEN + NONCE_LEN;
/// GCM's tag.
const TAG_LEN: usize = 16;
/// Bytes a sealed item has beyond its plaintext.
pub const OVERHEAD: usize = BODY_START + TAG_LEN;

/// The key id a sealed item names, without opening it.
pub fn sealed_key_id(sealed: &[u8]) -> Result<KeyId, CryptError> {
    if sealed.len() < OVERHEAD {
        return Err(CryptError::Malformed("shorter than the sealed format's overhead"));
    }
    if sealed[0] != FORMAT_V1 {
        return Err(CryptError::Malformed("unknown format version"));
    }
    Ok(KeyId(u32::from_be_bytes(sealed[1..5].try_into().unwrap())))
}

/// The associated data GCM authenticates: the version and key id, then the caller's. Small ones
/// stay on the stack.
fn with_prefix<R>(prefix: &[u8], aad: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    const INLINE: usize = 64;
    if aad.len() <= INLINE {
        let mut buf = [0u8; PREFIX_LEN + INLINE];
        buf[..PREFIX_LEN].copy_from_slice(prefix);
        buf[PREFIX_LEN..PREFIX_LEN + aad.len()].copy_from_slice(aad);
        f(&buf[..PREFIX_LEN + aad.len()])
    } else {
        let mut buf = Vec::with_capacity(PREFIX_LEN + aad.len());
        buf.extend_from_slice(prefix);
        buf.extend_from_slice(aad);
        f(&buf)
    }
}

/// Opens `sealed` (whose key id is `key`'s).
pub(crate) fn open_with(key: &Key, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptError> {
    let nonce: [u8; NONCE_LEN] = sealed[PREFIX_LEN..BODY_START].try_into().unwrap();
    let mut body = sealed[BODY_START..].to_vec();
    let len = with_prefix(&sealed[..PREFIX_LEN], aad, |aad| {
        key.aead
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut body)
            .map(|plain| plain.len())
    })
    .map_err(|_| CryptError::Tampered(key.id))?;
    body.truncate(len);
    Ok(body)
}

/// The nonces of one sealer: a random 64-bit prefix and a 32-bit counter; a fresh prefix when
/// the counter is used up.
pub(crate) struct NonceSeq {
    prefix: [u8; 8],
    counter: u32,
    rng: SystemRandom,
}

impl NonceSeq {
    pub(crate) fn new() -> Result<NonceSeq, CryptError> {
        let rng = SystemRandom::new();
        let mut prefix = [0u8; 8];
        rng.fill(&mut prefix).map_err(|_| CryptError::Random)?;
        Ok(NonceSeq {
            prefix,
            counter: 0,
            rng,
        })
    }

    pub(crate) fn next(&mut self) -> [u8; NONCE_LEN] {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..8].copy_from_slice(&self.prefix);
        nonce[8..].copy_from_slice(&self.counter.to_be_bytes());
        if self.counter == u32::MAX {
            // Only after 2^32 seals by one sealer; the OS random source failing then is fatal.
            self.rng
                .fill(&mut self.prefix)
                .expect("the system's random source failed");
            self.counter = 0;
        } else {
            self.counter += 1;
        }
        nonce
    }
}

/// Seals with the first key of a keyring and opens with any of its keys. Shared by the threads
/// that write (it is `Sync`); every [`seal`](Self::seal) takes a nonce of its own.
pub struct Sealer {
    keyring: Arc<Keyring>,
    nonces: Mutex<NonceSeq>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealer({:?})", self.keyring)
    }
}

impl Sealer {
    /// A sealer with a fresh random nonce prefix.
    pub fn new(keyring: Arc<Keyring>) -> Result<Sealer, CryptError> {
        Ok(Sealer {
            keyring,
            nonces: Mutex::new(NonceSeq::new()?),
        })
    }

    /// The keys it seals and opens with.
    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// The id of the key it seals with.
    pub fn active_id(&self) -> KeyId {
        self.keyring.active_id()
    }

    /// Appends to `out` the sealed form of `plaintext`, bound to `aad` (which is not stored:
    /// the opener must supply the same bytes).
    pub fn seal_into(&self, out: &mut Vec<u8>, plaintext: &[u8], aad: &[u8]) {
        let key = self.keyring.active();
        let nonce = self.nonces.lock().unwrap_or_else(|e| e.into_inner()).next();
        let start = out.len();
        out.reserve(OVERHEAD + plaintext.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&key.id.0.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let (head, body) = out[start..].split_at_mut(BODY_START);
        let tag = with_prefix(&head[..PREFIX_LEN], aad, |aad| {
            key.aead
                .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), body)
        })
        .expect("AES-GCM seals any message shorter than 64 GiB");
        out.extend_from_slice(tag.as_ref());
    }

    /// The sealed form of `plaintext`, bound to `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.seal_into(&mut out, plaintext, aad);
        out
    }

    /// Opens `sealed` with whichever key of the keyring it names.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptError> {
        self.keyring.open(sealed, aad)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    const K1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const K2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn ring(text: &str) -> Arc<Keyring> {
        Arc::new(Keyring::parse(text, "test").unwrap())
    }

    #[test]
    fn round_trip_and_format() {
        let sealer = Sealer::new(ring(&format!("k1:{K1}"))).unwrap();
        for plain in [&b""[..], b"x", b"a value that is longer than one AES block, by a bit"] {
            let sealed = sealer.seal(plain, b"header");
            assert_eq!(sealed.len(), plain.len() + OVERHEAD);
            assert_eq!(sealed[0], FORMAT_V1);
            assert_eq!(sealed_key_id(&sealed).unwrap(), sealer.active_id());
            if plain.len() > 4 {
                assert!(!sealed.windows(plain.len()).any(|w| w == plain), "plaintext shows");
            }
            assert_eq!(sealer.open(&sealed, b"header").unwrap(), plain);
        }
        // seal_into appends after what is there.
        let mut buf = b"prefix".to_vec();
        sealer.seal_into(&mut buf, b"value", b"");
        assert_eq!(&buf[..6], b"prefix");
        assert_eq!(sealer.open(&buf[6..], b"").unwrap(), b"value");
    }

    #[test]
    fn the_same_plaintext_seals_differently_each_time() {
        let sealer = Sealer::new(ring(&format!("k1:{K1}"))).unwrap();
        assert_ne!(sealer.seal(b"same", b""), sealer.seal(b"same", b""));
    }

    #[test]
    fn unknown_key_ids_are_refused() {
        let old = Sealer::new(ring(&format!("old:{K1}"))).unwrap();
        let new_only = ring(&format!("new:{K2}"));
        let sealed = old.seal(b"secret", b"");
        match new_only.open(&sealed, b"") {
            Err(CryptError::UnknownKey(id)) => assert_eq!(id, old.active_id()),
            other => panic!("expected UnknownKey, got {other:?}"),
        }
        let msg = new_only.open(&sealed, b"").unwrap_err().to_string();
        assert!(msg.contains(&old.active_id().to_string()), "{msg}");
    }

    #[test]
    fn rotation_seals_with_the_first_key_and_opens_with_all() {
        let before = Sealer::new(ring(&format!("k1:{K1}"))).unwrap();
        let old_value = before.seal(b"old", b"");
        let after = Sealer::new(ring(&format!("k2:{K2}\nk1:{K1}"))).unwrap();
        let new_value = after.seal(b"new", b"");
        assert_eq!(sealed_key_id(&new_value).unwrap(), after.active_id());
        assert_ne!(after.active_id(), before.active_id());
        assert_eq!(after.open(&old_value, b"").unwrap(), b"old");
        assert_eq!(after.open(&new_value, b"").unwrap(), b"new");
        assert!(matches!(before.open(&new_value, b""), Err(CryptError::UnknownKey(_))));
    }

    #[test]
    fn tampering_is_detected() {
        let sealer = Sealer::new(ring(&format!("k1:{K1}"))).unwrap();
        let sealed = sealer.seal(b"some secret value", b"aad");
        // Every single bit flip past the version byte fails (or, in the key id, names a key we lack).
        for byte in 1..sealed.len() {
            let mut bad = sealed.clone();
            bad[byte] ^= 0x10;
            assert!(sealer.open(&bad, b"aad").is_err(), "flip in byte {byte} went unnoticed");
        }
        // Other associated data (the value moved elsewhere) fails.
        assert!(matches!(sealer.open(&sealed, b"aae"), Err(CryptError::Tampered(_))));
        // Truncated, empty, or of another version.
        assert!(sealer.open(&sealed[..sealed.len() - 1], b"aad").is_err());
        assert!(matches!(
            sealer.open(&sealed[..OVERHEAD - 1], b"aad"),
            Err(CryptError::Malformed(_))
        ));
        let mut other = sealed.clone();
        other[0] = 2;
        assert!(matches!(sealer.open(&other, b"aad"), Err(CryptError::Malformed(_))));
        // A different key under the same id (a forged id) fails authentication.
        let imposter_ring = ring(&format!("k2:{K2}"));
        let imposter = Sealer::new(imposter_ring).unwrap();
        let mut forged = imposter.seal(b"some secret value", b"aad");
        forged[1..5].copy_from_slice(&sealer.active_id().0.to_be_bytes());
        assert!(matches!(sealer.open(&forged, b"aad"), Err(CryptError::Tampered(_))));
    }

    #[test]
    fn nonces_never_repeat_within_a_sealer_and_prefixes_differ_between_sealers() {
        let sealer = Sealer::new(ring(&format!("k1:{K1}"))).unwrap();
        let nonce_of = |sealed: &[u8]| sealed[PREFIX_LEN..BODY_START].to_vec();
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(nonce_of(&sealer.seal(b"v", b""))));
        }
        // Consecutive counters under one prefix.
        let a = nonce_of(&sealer.seal(b"v", b""));
        let b = nonce_of(&sealer.seal(b"v", b""));
        assert_eq!(a[..8], b[..8]);
        assert_eq!(
            u32::from_be_bytes(b[8..].try_into().unwrap()),
            u32::from_be_bytes(a[8..].try_into().unwrap()) + 1
        );
        // Another sealer (another process, a restart) draws another prefix.
        let other = Sealer::new(sealer.keyring().clone()).unwrap();
        assert_ne!(nonce_of(&other.seal(b"v", b""))[..8], a[..8]);
    }

    #[test]
    fn an_exhausted_counter_draws_a_fresh_prefix() {
        let mut seq = NonceSeq::new().unwrap();
        seq.counter = u32::MAX - 1;
        let first_prefix = seq.prefix;
        let a = seq.next();
        let b = seq.next();
        let c = seq.next();
        assert_eq!(a[..8], first_prefix);
        assert_eq!(b[..8], first_prefix);
        assert_eq!(b[8..], u32::MAX.to_be_bytes());
        assert_ne!(c[..8], first_prefix, "a used-up prefix was kept");
        assert_eq!(c[8..], 0u32.to_be_bytes());
        assert!(a != b && b != c && a != c);
    }

    #[test]
    fn sealers_are_shared_between_threads_without_repeating_nonces() {
        let sealer = Arc::new(Sealer::new(ring(&format!("k1:{K1}"))).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let sealer = sealer.clone();
                std::thread::spawn(move || {
                    (0..2000)
                        .map(|_| sealer.seal(b"v", b"")[PREFIX_LEN..BODY_START].to_vec())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for t in threads {
            for nonce in t.join().unwrap() {
                assert!(seen.insert(nonce));
            }
        }
        assert_eq!(seen.len(), 8000);
    }
}
