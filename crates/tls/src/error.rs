//! Why a TLS configuration could not be built.

use std::path::PathBuf;

/// A TLS configuration that cannot be built from its files; the message names the file and the
/// flag's problem, because an operator reads it at startup or after a bad rotation.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{}: {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was expected and not found.
        what: String,
    },
    /// rustls refused the combination (for example a key that does not match the certificate).
    #[error("{0}")]
    Rustls(String),
}
