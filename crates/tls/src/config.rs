//! Building rustls configurations from etcd-style certificate flags.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::allowed::AllowedNames;
use crate::error::TlsError;
use crate::policy::TlsPolicy;

/// One side's TLS files and policy, as etcd's flags give them: `--cert-file`, `--key-file`,
/// `--trusted-ca-file`, `--client-cert-auth` (or their `--peer-` forms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The member's certificate chain (PEM), presented to whoever connects, and presented by the
    /// member when it connects out unless `client_cert_file` is set.
    pub cert_file: PathBuf,
    /// The private key of `cert_file` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates (PEM) that sign the other side's certificates: clients' (which must then
    /// present one, as etcd requires whenever its trusted CA file is set), and servers' for the
    /// member's own outgoing connections.
    pub trusted_ca_file: Option<PathBuf>,
    /// etcd's `--client-cert-auth`: connecting clients must present a certificate signed by
    /// `trusted_ca_file`, and its common name is the user of their requests.
    pub client_cert_auth: bool,
    /// Certificate revocation lists (PEM, etcd's `--client-crl-file` / `--peer-crl-file`): a
    /// client certificate, or one of its chain, whose serial a list names is refused.
    pub crl_file: Option<PathBuf>,
    /// Versions and cipher suites (`--tls-min-version`, `--tls-max-version`, `--cipher-suites`).
    pub policy: TlsPolicy,
    /// The certificate chain (PEM) the member presents when it connects out, instead of
    /// `cert_file`: etcd's `--client-cert-file` / `--peer-client-cert-file`, for deployments whose
    /// listener certificate is issued for server authentication only.
    pub client_cert_file: Option<PathBuf>,
    /// The private key of `client_cert_file` (etcd's `--client-key-file` / `--peer-client-key-file`).
    pub client_key_file: Option<PathBuf>,
    /// Whether the member's outgoing connections accept any certificate the other side presents:
    /// etcd's `--peer-auto-tls`, where every member has its own self-signed certificate that no
    /// other can verify. The link is encrypted, not authenticated.
    pub skip_server_verification: bool,
    /// Which of the certificates that pass verification the other side may present, by name:
    /// etcd's `--client-cert-allowed-hostname` (client side), `--peer-cert-allowed-cn` and
    /// `--peer-cert-allowed-hostname` (peer side). [`server_config`] checks clients'
    /// certificates against it (when `client_cert_auth` asks for them) and [`client_config`]
    /// servers' certificates, as etcd's peer links check both ways.
    pub allowed: AllowedNames,
}

impl TlsFiles {
    /// The files a change to which calls for a rebuild.
    pub fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.cert_file.as_path(), self.key_file.as_path()];
        paths.extend(self.client_cert_file.as_deref());
        paths.extend(self.client_key_file.as_deref());
        paths.extend(self.trusted_ca_file.as_deref());
        paths.extend(self.crl_file.as_deref());
        paths
    }
}

/// gRPC runs over HTTP/2, which TLS peers must agree on through ALPN (recent gRPC clients refuse
/// a server that does not).
const ALPN_H2: &[u8] = b"h2";

/// The configuration for a TLS listener: present `cert_file`; with `client_cert_auth` or a
/// `trusted_ca_file`, require a client certificate signed by `trusted_ca_file` and not revoked by
/// `crl_file` (etcd's `TLSInfo.ServerConfig` requires one when either is set; only
/// `client_cert_auth` makes its common name the user).
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let (certs, key) = identity(files)?;
    let provider = files.policy.provider()?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&files.policy.versions()?)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = if files.client_cert_auth || files.trusted_ca_file.is_some() {
        let ca = files
            .trusted_ca_file
            .as_deref()
            .ok_or_else(|| TlsError::Rustls("client certificate authentication needs a trusted CA file".into()))?;
        let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider);
        if let Some(crl_file) = files.crl_file.as_deref() {
            // As etcd's check: a certificate is refused when a list names its serial; one the
            // lists say nothing about (another issuer's) passes.
            verifier = verifier
                .with_crls(revocation_lists(crl_file)?)
                .allow_unknown_revocation_status();
        }
        let verifier = verifier
            .build()
            .map_err(|e| TlsError::Rustls(format!("{}: {e}", ca.display())))?;
        builder.with_client_cert_verifier(files.allowed.check_clients(verifier))
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Rustls(format!("{}: {e}", files.key_file.display())))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// The configuration for the member's own outgoing connections: trust `trusted_ca_file` (and
/// nothing else) and present `client_cert_file` (else `cert_file`) in case the other side asks
/// for a certificate.
pub fn client_config(files: &TlsFiles) -> Result<ClientConfig, TlsError> {
    let (certs, key) = match (&files.client_cert_file, &files.client_key_file) {
        (Some(cert_file), Some(key_file)) => pair(cert_file, key_file)?,
        (None, None) => identity(files)?,
        // Refused rather than falling back to `cert_file`: the operator named a client
        // certificate, and presenting another one would fail at the other end, less clearly.
        _ => {
            return Err(TlsError::Rustls(
                "the client certificate and its key must both be given, or neither".into(),
            ))
        }
    };
    let key_file = files.client_key_file.as_ref().unwrap_or(&files.key_file);
    let roots = match files.trusted_ca_file.as_deref() {
        Some(ca) => roots(ca)?,
        None => RootCertStore::empty(),
    };
    let provider = files.policy.provider()?;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&files.policy.versions()?)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = if files.skip_server_verification {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::unverified::AnyServer::new(provider)))
    } else if files.allowed != AllowedNames::Any && !roots.is_empty() {
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(files.allowed.check_servers(verifier))
    } else {
        // Without a trusted CA no server passes anyway: the names need no checking.
        builder.with_root_certificates(roots)
    };
    let mut config = builder
        .with_client_auth_cert(certs, key)
        .map_err(|e| TlsError::Rustls(format!("{}: {e}", key_file.display())))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

fn identity(files: &TlsFiles) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    pair(&files.cert_file, &files.key_file)
}

fn pair(cert_file: &Path, key_file: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let certs = certificates(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| pem_error(key_file, "no private key", e))?;
    Ok((certs, key))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, "no certificate", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, "no certificate", e))?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no certificate in the file".into(),
        });
    }
    Ok(certs)
}

fn revocation_lists(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let lists = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, "no certificate revocation list", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, "no certificate revocation list", e))?;
    if lists.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no certificate revocation list in the file".into(),
        });
    }
    Ok(lists)
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(path)? {
        store.add(cert).map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(store)
}

fn pem_error(path: &Path, what: &str, error: rustls_pki_types::pem::Error) -> TlsError {
    match error {
        rustls_pki_types::pem::Error::Io(source) => TlsError::Read {
            path: path.to_owned(),
            source,
        },
        other => TlsError::Pem {
            path: path.to_owned(),
            what: format!("{what}: {other:?}"),
        },
    }
}
