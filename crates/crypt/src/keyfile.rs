//! Key files: parsing, key ids, and the keyring they make.

use std::fmt;
use std::path::Path;

use ring::aead::{LessSafeKey, UnboundKey, AES_256_GCM};
use ring::digest::{digest, SHA256};

use crate::error::CryptError;

/// The 32-bit id that sealed data names its key by: a fingerprint of the key (see the crate
/// docs). Shown as 8 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u32);

impl KeyId {
    /// The id of a 32-byte key.
    pub fn of(key: &[u8; 32]) -> KeyId {
        let mut input = Vec::with_capacity(24 + 32);
        input.extend_from_slice(b"concord-crypt key id v1\0");
        input.extend_from_slice(key);
        let hash = digest(&SHA256, &input);
        KeyId(u32::from_be_bytes(hash.as_ref()[..4].try_into().unwrap()))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// One key of a key file.
pub(crate) struct Key {
    pub name: String,
    pub id: KeyId,
    pub aead: LessSafeKey,
}

/// The keys of one key file, the first of which seals new data. Its `Debug` shows names and ids
/// only.
pub struct Keyring {
    keys: Vec<Key>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keyring[{}]", self.describe())
    }
}

/// Longest key name accepted.
const MAX_NAME: usize = 64;

impl Keyring {
    /// Reads and parses the key file at `path`; logs a warning if other users may read or write
    /// it.
    pub fn load(path: &Path) -> Result<Keyring, CryptError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CryptError::Io {
            path: origin.clone(),
            source,
        })?;
        if let Some(warning) = permission_warning(path) {
            tracing::warn!("{warning}");
        }
        Keyring::parse(&text, &origin)
    }

    /// Parses a key file's text; `origin` names it in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Keyring, CryptError> {
        let mut keys: Vec<Key> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: String| CryptError::KeyFile {
                origin: origin.to_string(),
                line: i + 1,
                reason,
            };
            let Some((name, hex)) = line.split_once(':') else {
                return Err(bad("expected name:64-hex-digits".into()));
            };
            let (name, hex) = (name.trim(), hex.trim());
            if name.is_empty() || name.len() > MAX_NAME {
                return Err(bad(format!("a key name has 1 to {MAX_NAME} characters")));
            }
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                return Err(bad(format!(
                    "key name {name:?} may only use letters, digits, '.', '_' and '-'"
                )));
            }
            let material = parse_key_hex(hex).map_err(|reason| bad(format!("key {name:?}: {reason}")))?;
            if material == [0u8; 32] {
                return Err(bad(format!("key {name:?} is all zeros, not a random key")));
            }
            let id = KeyId::of(&material);
            if let Some(other) = keys.iter().find(|k| k.name == name) {
                return Err(bad(format!("key name {:?} is used twice", other.name)));
            }
            if let Some(other) = keys.iter().find(|k| k.id == id) {
                return Err(bad(format!(
                    "key {name:?} has the same id {id} as key {:?} (the same key twice?)",
                    other.name
                )));
            }
            let unbound = UnboundKey::new(&AES_256_GCM, &material).expect("a 32-byte key is valid for AES-256-GCM");
            keys.push(Key {
                name: name.to_string(),
                id,
                aead: LessSafeKey::new(unbound),
            });
        }
        if keys.is_empty() {
            return Err(CryptError::NoKey {
                origin: origin.to_string(),
            });
        }
        Ok(Keyring { keys })
    }

    /// The id of the key that seals new data (the file's first).
    pub fn active_id(&self) -> KeyId {
        self.keys[0].id
    }

    /// The name of the key that seals new data.
    pub fn active_name(&self) -> &str {
        &self.keys[0].name
    }

    /// Whether this keyring can open data sealed with `id`.
    pub fn contains(&self, id: KeyId) -> bool {
        self.key(id).is_some()
    }

    /// The name the key file gives the key `id`.
    pub fn name_of(&self, id: KeyId) -> Option<&str> {
        self.key(id).map(|k| k.name.as_str())
    }

    /// Every key id, in file order (the active one first).
    pub fn ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(|k| k.id).collect()
    }

    /// The keys as `name (id)`, in file order, for messages.
    pub fn describe(&self) -> String {
        self.keys
            .iter()
            .map(|k| format!("{} (id {})", k.name, k.id))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub(crate) fn key(&self, id: KeyId) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id)
    }

    pub(crate) fn active(&self) -> &Key {
        &self.keys[0]
    }

    /// Opens data sealed by a [`Sealer`](crate::Sealer) with any key of this keyring; `aad` must
    /// be the associated data it was sealed with.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptError> {
        let id = crate::seal::sealed_key_id(sealed)?;
        let key = self.key(id).ok_or(CryptError::UnknownKey(id))?;
        crate::seal::open_with(key, sealed, aad)
    }
}

/// Decodes exactly 64 hex digits into a key.
fn parse_key_hex(hex: &str) -> Result<[u8; 32], String> {
    if hex.len() != 64 {
        return Err(format!(
            "a key is 64 hex digits (32 bytes), this one has {} characters",
            hex.chars().count()
        ));
    }
    let digit = |c: u8| -> Result<u8, String> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err("a key may only hold hex digits".to_string()),
        }
    };
    let bytes = hex.as_bytes();
    let mut key = [0u8; 32];
    for (i, out) in key.iter_mut().enumerate() {
        *out = digit(bytes[2 * i])? << 4 | digit(bytes[2 * i + 1])?;
    }
    Ok(key)
}

/// A warning when users other than the owner may read or write the key file (Unix modes).
pub fn permission_warning(path: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode();
        if mode & 0o077 != 0 {
            return Some(format!(
                "encryption key file {} has mode {:o}: other users may read or change it; chmod 600 it",
                path.display(),
                mode & 0o777
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "F0E1D2C3B4A5968778695A4B3C2D1E0F00112233445566778899AABBCCDDEEFF";

    fn err(text: &str) -> String {
        Keyring::parse(text, "keys").unwrap_err().to_string()
    }

    #[test]
    fn parses_names_order_comments_and_ids() {
        let ring = Keyring::parse(&format!("# newest first\n\nnew:{K2}\n  old : {K1}  \n"), "keys").unwrap();
        assert_eq!(ring.active_name(), "new");
        assert_eq!(ring.ids().len(), 2);
        let old = ring.ids()[1];
        assert_eq!(ring.name_of(old), Some("old"));
        // Ids depend on the key only: upper- and lower-case hex give the same id, names don't count.
        let again = Keyring::parse(&format!("renamed:{}", K2.to_lowercase()), "keys").unwrap();
        assert_eq!(again.active_id(), ring.active_id());
        assert_ne!(ring.active_id(), old);
        assert!(format!("{ring:?}").contains("new (id "));
        assert!(!format!("{ring:?}").to_lowercase().contains(&K1[..16]));
    }

    #[test]
    fn malformed_files_are_refused_with_line_and_reason() {
        assert!(err("").contains("no key"));
        assert!(err("# only a comment\n").contains("no key"));
        assert!(err(&format!("ok:{K1}\njunk\n")).starts_with("keys:2: expected name:64-hex-digits"));
        assert!(err(&format!("k:{}", &K1[..62])).contains("has 62 characters"));
        assert!(err(&format!("k:{K1}00")).contains("has 66 characters"));
        assert!(err(&format!("k:{}zz", &K1[..62])).contains("hex digits"));
        assert!(err(&format!(":{K1}")).contains("1 to 64 characters"));
        assert!(err(&format!("a b:{K1}")).contains("may only use"));
        assert!(err(&format!("k:{K1}\nk:{K2}")).contains("used twice"));
        assert!(err(&format!("a:{K1}\nb:{K1}")).contains("same id"));
        assert!(err(&format!("z:{}", "0".repeat(64))).contains("all zeros"));
        // Key material never appears in a message.
        let msg = err(&format!("a:{K1}\nb:{K1}"));
        assert!(!msg.contains(&K1[..16]), "{msg}");
    }

    #[test]
    fn loads_from_a_file_and_warns_about_open_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, format!("k1:{K1}\n")).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(permission_warning(&path).unwrap().contains("chmod 600"));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert_eq!(permission_warning(&path), None);
        }
        assert_eq!(Keyring::load(&path).unwrap().active_name(), "k1");
        let missing = Keyring::load(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(missing.contains("nope"), "{missing}");
    }
}
