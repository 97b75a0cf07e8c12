//! What reading a key file, sealing or opening can fail with.

use crate::keyfile::KeyId;

/// A failure of this crate. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    /// The key file could not be read.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// A line of the key file is not a valid key.
    #[error("{origin}:{line}: {reason}")]
    KeyFile {
        origin: String,
        line: usize,
        reason: String,
    },
    /// The key file holds no key.
    #[error("{origin}: no key (expected lines of the form name:64-hex-digits)")]
    NoKey { origin: String },
    /// Sealed data names a key this keyring (or process) does not have.
    #[error("sealed with key id {0}, which is not in the encryption key file")]
    UnknownKey(KeyId),
    /// The bytes are not sealed data of a known format.
    #[error("not sealed data: {0}")]
    Malformed(&'static str),
    /// The tag does not verify: the bytes or their associated data were altered, or a different
    /// key was given the same id.
    #[error("sealed data under key id {0} failed authentication (altered, moved, or opened with the wrong key)")]
    Tampered(KeyId),
    /// The operating system's random source failed.
    #[error("the system's random source failed")]
    Random,
}
