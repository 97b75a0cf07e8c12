//! Which certificates the other side of a link may present beyond one that chains to the trusted
//! CA: etcd's `--client-cert-allowed-hostname`, `--peer-cert-allowed-cn` and
//! `--peer-cert-allowed-hostname`.
//!
//! etcd (its `transport.TLSInfo` `AllowedCNs` / `AllowedHostnames`, checked in Go's
//! `VerifyPeerCertificate`) accepts a verified certificate only when its subject's common name is
//! one of the allowed names, or when it is valid for one of the allowed hostnames as Go's
//! `x509.Certificate.VerifyHostname` decides: an IP address (bare or in brackets) against the
//! certificate's IP address SANs, any other name against its DNS SANs (case-insensitively, with
//! a wildcard standing for the leftmost label), never against the common name. The two kinds
//! are mutually exclusive, as in etcd.
//!
//! The names are checked wherever etcd builds its TLS configuration from that side's flags: on
//! the certificates clients present to a listener that asks for them, and, for
//! [`crate::client_config`], on the certificates of the servers the member connects to (etcd's
//! peer links check both ways). A refused certificate fails the handshake with the alert Go
//! sends, `bad_certificate`, and the member logs etcd's words for it, `client certificate
//! authentication failed`.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The certificates one side accepts from the other, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AllowedNames {
    /// Any certificate that chains to the trusted CA (etcd's default).
    #[default]
    Any,
    /// Only those whose subject's common name is one of these, exactly (`--peer-cert-allowed-cn`).
    CommonNames(Vec<String>),
    /// Only those valid for one of these hostnames or IP addresses
    /// (`--client-cert-allowed-hostname`, `--peer-cert-allowed-hostname`).
    Hostnames(Vec<String>),
}

impl AllowedNames {
    /// The names of one side's flags, each a comma-separated list as etcd 3.5 reads them (3.4's
    /// single name is a list of one). Empty entries ask for nothing, as etcd 3.4's empty default
    /// does. Giving both kinds is refused with etcd's message.
    pub fn from_flags(common_names: &[String], hostnames: &[String]) -> Result<AllowedNames, String> {
        let given = |names: &[String]| -> Vec<String> { names.iter().filter(|n| !n.is_empty()).cloned().collect() };
        let (common_names, hostnames) = (given(common_names), given(hostnames));
        match (common_names.is_empty(), hostnames.is_empty()) {
            (true, true) => Ok(AllowedNames::Any),
            (false, true) => Ok(AllowedNames::CommonNames(common_names)),
            (true, false) => Ok(AllowedNames::Hostnames(hostnames)),
            (false, false) => Err(format!(
                "AllowedCNs and AllowedHostnames are mutually exclusive (cns={}, hostnames={})",
                go_quoted(&common_names),
                go_quoted(&hostnames)
            )),
        }
    }

    /// Whether a certificate (DER, already verified) is one this side accepts.
    pub fn permits(&self, certificate: &CertificateDer<'_>) -> bool {
        match self {
            AllowedNames::Any => true,
            AllowedNames::CommonNames(names) => {
                // Go's `Subject.CommonName`: empty when the subject has none.
                let common_name = crate::subject::common_name(certificate).unwrap_or_default();
                names.contains(&common_name)
            }
            AllowedNames::Hostnames(hosts) => match webpki::EndEntityCert::try_from(certificate) {
                Ok(parsed) => hosts.iter().any(|host| valid_for(&parsed, host)),
                Err(_) => false,
            },
        }
    }

    /// Refuses `certificate` unless it is permitted, logging why (`side` names whose it is).
    fn check(&self, certificate: &CertificateDer<'_>, side: &str) -> Result<(), rustls::Error> {
        if self.permits(certificate) {
            return Ok(());
        }
        let common_name = crate::subject::common_name(certificate).unwrap_or_default();
        tracing::warn!(
            %side,
            common_name = %common_name,
            allowed = %self,
            "client certificate authentication failed"
        );
        // Go's TLS stack answers a VerifyPeerCertificate failure with bad_certificate; rustls
        // sends that alert for this error.
        Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
    }

    /// `verifier`, refusing also the certificates these names do not permit.
    pub(crate) fn check_clients(&self, verifier: Arc<dyn ClientCertVerifier>) -> Arc<dyn ClientCertVerifier> {
        match self {
            AllowedNames::Any => verifier,
            _ => Arc::new(AllowedClients {
                inner: verifier,
                allowed: self.clone(),
            }),
        }
    }

    /// `verifier`, refusing also the certificates these names do not permit.
    pub(crate) fn check_servers(&self, verifier: Arc<dyn ServerCertVerifier>) -> Arc<dyn ServerCertVerifier> {
        match self {
            AllowedNames::Any => verifier,
            _ => Arc::new(AllowedServers {
                inner: verifier,
                allowed: self.clone(),
            }),
        }
    }
}

impl fmt::Display for AllowedNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowedNames::Any => write!(f, "any"),
            AllowedNames::CommonNames(names) => write!(f, "common names {}", go_quoted(names)),
            AllowedNames::Hostnames(names) => write!(f, "hostnames {}", go_quoted(names)),
        }
    }
}

/// A list as Go's `%q` prints a `[]string`: `["a" "b"]`.
fn go_quoted(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    format!("[{}]", quoted.join(" "))
}

/// Whether `certificate` is valid for `host`, as Go's `VerifyHostname` decides it.
fn valid_for(certificate: &webpki::EndEntityCert<'_>, host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .filter(|h| !h.is_empty())
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        // Go compares addresses, not their encodings: 10.0.0.1 is ::ffff:10.0.0.1.
        let forms: Vec<IpAddr> = match ip {
            IpAddr::V4(v4) => vec![ip, IpAddr::V6(v4.to_ipv6_mapped())],
            IpAddr::V6(v6) => std::iter::once(ip).chain(v6.to_ipv4_mapped().map(IpAddr::V4)).collect(),
        };
        return forms.into_iter().any(|ip| {
            certificate
                .verify_is_valid_for_subject_name(&ServerName::IpAddress(ip.into()))
                .is_ok()
        });
    }
    // A name webpki cannot take as a DNS name (spaces, an empty label) matches no SAN.
    match ServerName::try_from(host.to_ascii_lowercase()) {
        Ok(name) => certificate.verify_is_valid_for_subject_name(&name).is_ok(),
        Err(_) => false,
    }
}

/// Verifies client certificates as `inner` does, then by name.
#[derive(Debug)]
struct AllowedClients {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: AllowedNames,
}

impl ClientCertVerifier for AllowedClients {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        self.allowed.check(end_entity, "client")?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Verifies server certificates as `inner` does, then by name.
#[derive(Debug)]
struct AllowedServers {
    inner: Arc<dyn ServerCertVerifier>,
    allowed: AllowedNames,
}

impl ServerCertVerifier for AllowedServers {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        self.allowed.check(end_entity, "server")?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate with these subject alternative names and common names.
    fn certificate(sans: &[&str], common_names: &[&str]) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        for san in sans {
            params.subject_alt_names.push(match san.parse::<IpAddr>() {
                Ok(ip) => rcgen::SanType::IpAddress(ip),
                Err(_) => rcgen::SanType::DnsName(san.to_string().try_into().unwrap()),
            });
        }
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (i, cn) in common_names.iter().enumerate() {
            // rcgen keeps one value per key: a second common name goes in under its OID.
            let key = match i {
                0 => rcgen::DnType::CommonName,
                _ => rcgen::DnType::CustomDnType(vec![2, 5, 4, 3]),
            };
            params.distinguished_name.push(key, *cn);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn hostnames(names: &[&str]) -> AllowedNames {
        AllowedNames::Hostnames(names.iter().map(|n| n.to_string()).collect())
    }

    #[test]
    fn flags_choose_one_kind_and_refuse_both_as_etcd() {
        let list = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(AllowedNames::from_flags(&[], &[]), Ok(AllowedNames::Any));
        assert_eq!(
            AllowedNames::from_flags(&list(&[""]), &list(&[""])),
            Ok(AllowedNames::Any)
        );
        assert_eq!(
            AllowedNames::from_flags(&list(&["a", "", "b"]), &[]),
            Ok(AllowedNames::CommonNames(list(&["a", "b"])))
        );
        assert_eq!(
            AllowedNames::from_flags(&list(&["a", "b"]), &list(&["h"])),
            Err(r#"AllowedCNs and AllowedHostnames are mutually exclusive (cns=["a" "b"], hostnames=["h"])"#.into())
        );
    }

    #[test]
    fn common_names_match_exactly_and_the_last_one_counts() {
        let allowed = AllowedNames::CommonNames(vec!["etcd peer".into(), "other".into()]);
        assert!(allowed.permits(&certificate(&["localhost"], &["etcd peer"])));
        assert!(!allowed.permits(&certificate(&["localhost"], &["etcd Peer"])));
        assert!(!allowed.permits(&certificate(&["localhost"], &["etcd peer2"])));
        assert!(
            !allowed.permits(&certificate(&["etcd peer"], &[])),
            "a SAN is no common name"
        );
        // Go's pkix.Name keeps the last common name of the subject.
        assert!(allowed.permits(&certificate(&[], &["intruder", "other"])));
        assert!(!allowed.permits(&certificate(&[], &["other", "intruder"])));
    }

    #[test]
    fn hostnames_match_as_gos_verify_hostname() {
        let cert = certificate(
            &["member.example.com", "*.peers.example.com", "10.0.0.7", "fd00::7"],
            &["cn.example.com"],
        );
        for host in [
            "member.example.com",
            "MEMBER.Example.com",
            "m1.peers.example.com",
            "10.0.0.7",
            "::ffff:10.0.0.7",
            "fd00::7",
            "[fd00::7]",
        ] {
            assert!(hostnames(&[host]).permits(&cert), "{host}");
        }
        for host in [
            "example.com",
            "a.m1.peers.example.com",
            "peers.example.com",
            "10.0.0.8",
            "cn.example.com",
            "not a name",
            "",
        ] {
            assert!(!hostnames(&[host]).permits(&cert), "{host}");
        }
        assert!(
            hostnames(&["nope.example.com", "10.0.0.7"]).permits(&cert),
            "any one of them"
        );
        assert!(AllowedNames::Any.permits(&cert));
    }
}
