//! What TLS a member agrees to speak, from etcd's `--tls-min-version`, `--tls-max-version` and
//! `--cipher-suites`.
//!
//! etcd takes Go's names for versions (`TLS1.2`, `TLS1.3`) and cipher suites
//! (`TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`, ...). As in Go, `--cipher-suites` chooses among the
//! TLS 1.2 suites only (TLS 1.3's are always offered), and naming suites while allowing TLS 1.3
//! alone is refused. rustls offers only AEAD suites with forward secrecy; a Go name for a suite
//! it lacks (CBC, RC4, 3DES, RSA key exchange) is refused with the list of those it has, rather
//! than silently dropped.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};

use crate::error::TlsError;

/// A TLS version by etcd's name for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// `TLS1.2`
    Tls12,
    /// `TLS1.3`
    Tls13,
}

impl TlsVersion {
    /// Parses etcd's spelling (`TLS1.2`, `TLS1.3`); the empty string is `None` (the default).
    pub fn parse(text: &str) -> Result<Option<TlsVersion>, String> {
        match text {
            "" => Ok(None),
            "TLS1.2" => Ok(Some(TlsVersion::Tls12)),
            "TLS1.3" => Ok(Some(TlsVersion::Tls13)),
            // etcd refuses TLS1.0 and TLS1.1 too: they are not safe.
            other => Err(format!(
                "unexpected TLS version {other:?} (must be one of: TLS1.2, TLS1.3)"
            )),
        }
    }
}

/// The versions and cipher suites of one member's TLS (both sides, as etcd applies them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsPolicy {
    /// The oldest version accepted; `None` is TLS 1.2.
    pub min_version: Option<TlsVersion>,
    /// The newest version accepted; `None` is TLS 1.3.
    pub max_version: Option<TlsVersion>,
    /// TLS 1.2 cipher suites by Go's names, in order of preference; empty offers rustls' own.
    pub cipher_suites: Vec<String>,
}

impl TlsPolicy {
    /// Checks the policy as etcd checks its flags, so a member refuses to start on a bad one.
    pub fn check(&self) -> Result<(), TlsError> {
        self.versions()?;
        self.provider().map(|_| ())
    }

    /// The protocol versions to offer.
    pub(crate) fn versions(&self) -> Result<Vec<&'static SupportedProtocolVersion>, TlsError> {
        let min = self.min_version.unwrap_or(TlsVersion::Tls12);
        let max = self.max_version.unwrap_or(TlsVersion::Tls13);
        if min > max {
            return Err(TlsError::Rustls(
                "--tls-min-version is newer than --tls-max-version".to_string(),
            ));
        }
        if min == TlsVersion::Tls13 && !self.cipher_suites.is_empty() {
            return Err(TlsError::Rustls(
                "cipher suites cannot be configured when only TLS1.3 is enabled".to_string(),
            ));
        }
        let mut versions = Vec::new();
        if min == TlsVersion::Tls12 {
            versions.push(&rustls::version::TLS12);
        }
        if max == TlsVersion::Tls13 {
            versions.push(&rustls::version::TLS13);
        }
        Ok(versions)
    }

    /// The crypto provider with the chosen cipher suites: every TLS 1.3 suite, then the named
    /// TLS 1.2 suites in their order (all of rustls' when none are named).
    pub(crate) fn provider(&self) -> Result<Arc<CryptoProvider>, TlsError> {
        let mut provider = rustls::crypto::ring::default_provider();
        if self.cipher_suites.is_empty() {
            return Ok(Arc::new(provider));
        }
        let all = std::mem::take(&mut provider.cipher_suites);
        let mut chosen: Vec<SupportedCipherSuite> = all
            .iter()
            .copied()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
            .collect();
        for name in &self.cipher_suites {
            let suite = all
                .iter()
                .copied()
                .find(|s| matches!(s, SupportedCipherSuite::Tls12(_)) && go_name_matches(name, s))
                .ok_or_else(|| {
                    let offered: Vec<String> = all
                        .iter()
                        .filter(|s| matches!(s, SupportedCipherSuite::Tls12(_)))
                        .map(|s| format!("{:?}", s.suite()))
                        .collect();
                    TlsError::Rustls(format!(
                        "unsupported cipher suite {name:?} (Concord offers: {})",
                        offered.join(", ")
                    ))
                })?;
            if !chosen.contains(&suite) {
                chosen.push(suite);
            }
        }
        provider.cipher_suites = chosen;
        Ok(Arc::new(provider))
    }
}

/// Whether Go's name for a suite names `suite`. Go calls the ChaCha20 suites both
/// `..._CHACHA20_POLY1305` and `..._CHACHA20_POLY1305_SHA256`; the IANA name (rustls') is the
/// latter.
fn go_name_matches(go_name: &str, suite: &SupportedCipherSuite) -> bool {
    let iana = format!("{:?}", suite.suite());
    iana == go_name || iana == format!("{go_name}_SHA256")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_follow_the_flags() {
        let policy = |min, max| TlsPolicy {
            min_version: min,
            max_version: max,
            cipher_suites: vec![],
        };
        assert_eq!(policy(None, None).versions().unwrap().len(), 2);
        let only13 = policy(Some(TlsVersion::Tls13), None).versions().unwrap();
        assert_eq!(only13, [&rustls::version::TLS13]);
        let only12 = policy(None, Some(TlsVersion::Tls12)).versions().unwrap();
        assert_eq!(only12, [&rustls::version::TLS12]);
        assert!(policy(Some(TlsVersion::Tls13), Some(TlsVersion::Tls12))
            .check()
            .is_err());
        assert_eq!(TlsVersion::parse("TLS1.3"), Ok(Some(TlsVersion::Tls13)));
        assert!(TlsVersion::parse("TLS1.1").is_err());
    }

    #[test]
    fn cipher_suites_by_gos_names() {
        let policy = TlsPolicy {
            cipher_suites: vec![
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305".into(),
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into(),
            ],
            ..Default::default()
        };
        let suites: Vec<String> = policy
            .provider()
            .unwrap()
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        let tls12: Vec<&String> = suites.iter().filter(|s| !s.starts_with("TLS13")).collect();
        assert_eq!(
            tls12,
            [
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
            ]
        );
        assert_eq!(
            suites.iter().filter(|s| s.starts_with("TLS13")).count(),
            3,
            "TLS 1.3's stay"
        );

        let cbc = TlsPolicy {
            cipher_suites: vec!["TLS_RSA_WITH_AES_128_CBC_SHA".into()],
            ..Default::default()
        };
        let err = cbc.check().unwrap_err().to_string();
        assert!(
            err.contains("unsupported cipher suite \"TLS_RSA_WITH_AES_128_CBC_SHA\""),
            "{err}"
        );
        let only13 = TlsPolicy {
            min_version: Some(TlsVersion::Tls13),
            ..policy
        };
        assert!(only13.check().unwrap_err().to_string().contains("only TLS1.3"));
    }
}
