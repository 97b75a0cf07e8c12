//! The common name in a certificate's subject: etcd's user name under `--client-cert-auth`.
//!
//! Only the few DER structures on the way to the subject are read (RFC 5280, §4.1):
//!
//! ```text
//! Certificate    ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
//! TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer,
//!                               validity, subject, ... }
//! Name           ::= SEQUENCE OF SET OF SEQUENCE { type OBJECT IDENTIFIER, value ANY }
//! ```
//!
//! The certificate has already passed rustls' verification when this runs; the reader still
//! checks every length, so malformed input yields `None`, never a panic.

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const VERSION: u8 = 0xa0;
/// 2.5.4.3, id-at-commonName.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
/// UTF8String, PrintableString, TeletexString, IA5String: the string types a CN is written in.
const STRING_TAGS: &[u8] = &[0x0c, 0x13, 0x14, 0x16];

/// The common name in the subject of a DER certificate, if it has one. A subject with several
/// has the last one, as Go's `pkix.Name` (and so etcd) reads it.
pub fn common_name(certificate: &[u8]) -> Option<String> {
    let (tag, cert, _) = read(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = read(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    if tbs.first() == Some(&VERSION) {
        tbs = read(tbs)?.2;
    }
    // serialNumber, signature, issuer, validity: skip four elements to reach the subject.
    for _ in 0..4 {
        tbs = read(tbs)?.2;
    }
    let (tag, mut rdns, _) = read(tbs)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut found = None;
    while !rdns.is_empty() {
        let (tag, mut set, rest) = read(rdns)?;
        rdns = rest;
        if tag != SET {
            return None;
        }
        while !set.is_empty() {
            let (tag, attribute, rest) = read(set)?;
            set = rest;
            if tag != SEQUENCE {
                return None;
            }
            let (tag, oid, value) = read(attribute)?;
            if tag == OID && oid == COMMON_NAME {
                let (tag, text, _) = read(value)?;
                if STRING_TAGS.contains(&tag) {
                    found = Some(String::from_utf8(text.to_vec()).ok()?);
                }
            }
        }
    }
    found
}

/// Splits one DER element off the front: `(tag, contents, the rest)`.
fn read(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // multi-byte tags never occur on this path
    }
    let (&first, mut input) = input.split_first()?;
    let length = if first < 0x80 {
        first as usize
    } else {
        let count = (first & 0x7f) as usize;
        if count == 0 || count > 4 || input.len() < count {
            return None;
        }
        let (bytes, rest) = input.split_at(count);
        input = rest;
        bytes.iter().fold(0usize, |n, &b| (n << 8) | b as usize)
    };
    if input.len() < length {
        return None;
    }
    let (contents, rest) = input.split_at(length);
    Some((tag, contents, rest))
}

#[cfg(test)]
mod tests {
    use super::common_name;

    fn certificate_for(cn: Option<&str>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Concord tests");
        if let Some(cn) = cn {
            params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_common_name_is_read_from_a_real_certificate() {
        assert_eq!(common_name(&certificate_for(Some("alice"))).as_deref(), Some("alice"));
    }

    #[test]
    fn of_several_common_names_the_last_counts_as_in_go() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, "first");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Concord tests");
        // Another key for the same OID (2.5.4.3): rcgen keeps one value per key.
        params
            .distinguished_name
            .push(rcgen::DnType::CustomDnType(vec![2, 5, 4, 3]), "last");
        let key = rcgen::KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        assert_eq!(common_name(&der).as_deref(), Some("last"));
    }

    #[test]
    fn a_certificate_without_a_common_name_has_none() {
        assert_eq!(common_name(&certificate_for(None)), None);
    }

    #[test]
    fn malformed_input_yields_none_and_never_panics() {
        let good = certificate_for(Some("bob"));
        for cut in 0..good.len() {
            let _ = common_name(&good[..cut]);
        }
        let mut flipped = good.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = common_name(&flipped);
            flipped[i] ^= 0xff;
        }
        assert_eq!(common_name(&[]), None);
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }
}
