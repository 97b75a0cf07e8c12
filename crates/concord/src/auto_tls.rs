//! etcd's `--auto-tls` and `--peer-auto-tls`: TLS with certificates the member makes itself.
//!
//! As etcd's `transport.SelfCert`: a self-signed certificate (organisation `etcd`, valid for
//! `--self-signed-cert-validity` years) for the hosts of the member's listen URLs, written as
//! `cert.pem` and `key.pem` under `<data-dir>/fixtures/client` or `fixtures/peer`, and kept for
//! later starts once written. Nobody can verify such a certificate, so the member's own outgoing
//! links that use one accept whatever the other side presents (etcd's `InsecureSkipVerify`):
//! the traffic is encrypted, not authenticated.

use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType};

/// A generated certificate and its key.
#[derive(Debug)]
pub struct SelfCert {
    /// `cert.pem`
    pub cert_file: PathBuf,
    /// `key.pem`
    pub key_file: PathBuf,
}

/// The certificate in `dir`, made for the hosts of `urls` unless it was made before.
pub fn self_cert(dir: &Path, urls: &[String], validity_years: u32) -> Result<SelfCert, String> {
    if validity_years == 0 {
        return Err("selfSignedCertValidity is invalid,it should be greater than 0".into());
    }
    let cert = SelfCert {
        cert_file: dir.join("cert.pem"),
        key_file: dir.join("key.pem"),
    };
    if cert.cert_file.is_file() && cert.key_file.is_file() {
        return Ok(cert);
    }
    let io = |path: &Path, e: std::io::Error| format!("cannot write the generated certificate {}: {e}", path.display());
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    restrict(dir, 0o700).map_err(|e| io(dir, e))?;

    let key = KeyPair::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.distinguished_name.push(DnType::OrganizationName, "etcd");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + std::time::Duration::from_secs(365 * 24 * 3600 * u64::from(validity_years));
    params.key_usages = vec![KeyUsagePurpose::KeyEncipherment, KeyUsagePurpose::DigitalSignature];
    // Peer certificates are presented when connecting out too.
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    for host in hosts(urls) {
        let san = match host.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.try_into().map_err(|e| format!("{e}"))?),
        };
        if !params.subject_alt_names.contains(&san) {
            params.subject_alt_names.push(san);
        }
    }
    let signed = params
        .self_signed(&key)
        .map_err(|e| format!("cannot sign the certificate: {e}"))?;
    write_private(&cert.key_file, &key.serialize_pem()).map_err(|e| io(&cert.key_file, e))?;
    write_private(&cert.cert_file, &signed.pem()).map_err(|e| io(&cert.cert_file, e))?;
    tracing::info!(path = %cert.cert_file.display(), "generated a self-signed certificate");
    Ok(cert)
}

/// The hosts of `urls`, without brackets or ports.
fn hosts(urls: &[String]) -> Vec<String> {
    urls.iter()
        .filter_map(|url| url.parse::<http::Uri>().ok())
        .filter_map(|uri| {
            uri.host()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        })
        .collect()
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)?;
    restrict(path, 0o600)
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn restrict(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}
