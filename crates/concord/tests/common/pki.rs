//! Certificates for TLS tests, made on the spot with rcgen: a CA, and certificates it signs for
//! members (valid for 127.0.0.1 and localhost) and for clients (whose common name is the user).

use std::path::{Path, PathBuf};

use etcd_client::{Certificate, Identity, TlsOptions};
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};

use super::Secure;

/// A certificate authority whose files live in a test's temporary directory.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    dir: PathBuf,
    name: String,
}

/// A certificate and its key, as PEM files.
pub struct Issued {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The certificate's serial number, which a revocation list names.
    pub serial: u64,
}

impl Issued {
    /// The pair as an identity for etcd-client.
    pub fn identity(&self) -> Identity {
        Identity::from_pem(read(&self.cert_file), read(&self.key_file))
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("certificate file")
}

impl TestCa {
    /// A new CA named `name`, writing its certificate to `<dir>/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-signed CA");
        let ca = TestCa {
            cert,
            key,
            dir: dir.to_owned(),
            name: name.to_string(),
        };
        std::fs::write(ca.ca_file(), ca.cert.pem()).expect("write CA");
        ca
    }

    /// The CA certificate file, for `--trusted-ca-file` and `--cacert`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// The CA certificate, for etcd-client.
    pub fn certificate(&self) -> Certificate {
        Certificate::from_pem(self.cert.pem())
    }

    /// Signs a certificate with common name `common_name`, usable by a server (on 127.0.0.1 and
    /// localhost) and by a client, and writes it to `<dir>/<stem>.pem` and `<stem>-key.pem`.
    pub fn issue(&self, stem: &str, common_name: &str) -> Issued {
        self.issue_for(
            stem,
            common_name,
            &[ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        )
    }

    /// As [`TestCa::issue`], but usable only as `usages` say (one of them alone, for a server-only
    /// or client-only certificate).
    pub fn issue_for(&self, stem: &str, common_name: &str, usages: &[ExtendedKeyUsagePurpose]) -> Issued {
        self.issue_with(stem, common_name, usages, &["localhost", "127.0.0.1"])
    }

    /// As [`TestCa::issue`], but valid for `names` (DNS names, or IP addresses) instead of
    /// localhost and 127.0.0.1: for tests of the certificate name checks.
    pub fn issue_named(&self, stem: &str, common_name: &str, names: &[&str]) -> Issued {
        let usages = [ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.issue_with(stem, common_name, &usages, names)
    }

    fn issue_with(&self, stem: &str, common_name: &str, usages: &[ExtendedKeyUsagePurpose], names: &[&str]) -> Issued {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        for name in names {
            params.subject_alt_names.push(match name.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.to_string().try_into().expect("a DNS name")),
            });
        }
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.extended_key_usages = usages.to_vec();
        // Distinct per stem, so a revocation list can name one certificate.
        let serial = stem
            .bytes()
            .fold(1u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
            >> 2;
        params.serial_number = Some(SerialNumber::from(serial));
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign");
        let issued = Issued {
            cert_file: self.dir.join(format!("{stem}.pem")),
            key_file: self.dir.join(format!("{stem}-key.pem")),
            serial,
        };
        write_atomically(&issued.cert_file, &cert.pem());
        write_atomically(&issued.key_file, &key.serialize_pem());
        issued
    }

    /// Writes a certificate revocation list signed by the CA, naming `revoked`, to `file` (PEM).
    pub fn revoke(&self, revoked: &[&Issued], file: &Path) {
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|issued| RevokedCertParams {
                    serial_number: SerialNumber::from(issued.serial),
                    revocation_time: date_time_ymd(2024, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.cert, &self.key).expect("sign the CRL");
        write_atomically(file, &crl.pem().expect("CRL PEM"));
    }

    /// Member flags for TLS with client certificate authentication on both client and peer
    /// links, with `member` as every member's certificate, and a client presenting `client`.
    pub fn secure(&self, member: &Issued, client: &Issued) -> Secure {
        let (cert, key, ca) = (path(&member.cert_file), path(&member.key_file), path(&self.ca_file()));
        let member_args = [
            ("--cert-file", &cert),
            ("--key-file", &key),
            ("--trusted-ca-file", &ca),
            ("--peer-cert-file", &cert),
            ("--peer-key-file", &key),
            ("--peer-trusted-ca-file", &ca),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_string(), value.clone()])
        .chain(["--client-cert-auth".to_string(), "--peer-client-cert-auth".to_string()])
        .collect();
        Secure {
            member_args,
            client_tls: TlsOptions::new()
                .ca_certificate(self.certificate())
                .identity(client.identity()),
        }
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Replaces a file in one step, as a careful operator rotating certificates does, so a member
/// reloading at that moment never reads half a file.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}
