//! The private keys of `--auth-token jwt,priv-key=...`, and the public key each implies.
//!
//! etcd verifies its own tokens with the public half of `priv-key` when `pub-key` is absent
//! (`jwtOptions.Key` keeps the private key; `tokenJWT.info` verifies with its `PublicKey`), and
//! charts such as Bitnami's pass only `priv-key`. So the public key is derived here: parsed and
//! checked by ring, which jsonwebtoken already signs with.
//!
//! Accepted PEM forms, as Go's `jwt.ParseRSAPrivateKeyFromPEM` / `ParseECPrivateKeyFromPEM`
//! accept them: RSA as PKCS#1 (`RSA PRIVATE KEY`) or PKCS#8 (`PRIVATE KEY`); ECDSA P-256 and
//! P-384 as SEC1 (`EC PRIVATE KEY`, what `openssl ecparam -genkey` writes, possibly after an
//! `EC PARAMETERS` block) or PKCS#8; Ed25519 as PKCS#8.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use ring::signature::{self, KeyPair as _};

/// A private key read from `priv-key`: what signs tokens, and what verifies them.
pub struct KeyPair {
    /// Signs tokens.
    pub signing: EncodingKey,
    /// Verifies tokens: the public half of the private key.
    pub verifying: DecodingKey,
}

/// `id-ecPublicKey` (1.2.840.10045.2.1), DER-encoded.
const ID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// `prime256v1` (1.2.840.10045.3.1.7), DER-encoded.
const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// `secp384r1` (1.3.132.0.34), DER-encoded.
const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

/// Reads the private key in `pem` for `algorithm` (an asymmetric one) and derives its public
/// half. The errors name what is wrong, for `--auth-token`'s message.
pub fn load_private(pem_text: &[u8], algorithm: Algorithm) -> Result<KeyPair, String> {
    let blocks = pem::parse_many(pem_text).map_err(|e| format!("not a PEM file: {e}"))?;
    let block = blocks
        .iter()
        .find(|b| b.tag().ends_with("PRIVATE KEY"))
        .ok_or("no PRIVATE KEY block in it")?;
    let der = block.contents();
    let rejected = |e: ring::error::KeyRejected| format!("{} block rejected: {e}", block.tag());
    match algorithm {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => {
            let (pair, pkcs1) = match block.tag() {
                "RSA PRIVATE KEY" => (signature::RsaKeyPair::from_der(der).map_err(rejected)?, der.to_vec()),
                "PRIVATE KEY" => (
                    signature::RsaKeyPair::from_pkcs8(der).map_err(rejected)?,
                    pkcs8_inner_key(der)?,
                ),
                other => return Err(format!("{other} is not an RSA key")),
            };
            Ok(KeyPair {
                signing: EncodingKey::from_rsa_der(&pkcs1),
                verifying: DecodingKey::from_rsa_der(pair.public().as_ref()),
            })
        }
        Algorithm::ES256 | Algorithm::ES384 => {
            let (ring_alg, curve) = if algorithm == Algorithm::ES256 {
                (&signature::ECDSA_P256_SHA256_FIXED_SIGNING, P256)
            } else {
                (&signature::ECDSA_P384_SHA384_FIXED_SIGNING, P384)
            };
            let pkcs8 = match block.tag() {
                "EC PRIVATE KEY" => sec1_to_pkcs8(der, curve),
                "PRIVATE KEY" => der.to_vec(),
                other => return Err(format!("{other} is not an EC key")),
            };
            let rng = ring::rand::SystemRandom::new();
            let pair = signature::EcdsaKeyPair::from_pkcs8(ring_alg, &pkcs8, &rng).map_err(rejected)?;
            Ok(KeyPair {
                signing: EncodingKey::from_ec_der(&pkcs8),
                verifying: DecodingKey::from_ec_der(pair.public_key().as_ref()),
            })
        }
        Algorithm::EdDSA => {
            if block.tag() != "PRIVATE KEY" {
                return Err(format!("{} is not an Ed25519 PKCS#8 key", block.tag()));
            }
            let pair = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(rejected)?;
            Ok(KeyPair {
                signing: EncodingKey::from_ed_der(der),
                verifying: DecodingKey::from_ed_der(pair.public_key().as_ref()),
            })
        }
        other => Err(format!("{other:?} has no private key to read")),
    }
}

/// Wraps a SEC1 `ECPrivateKey` in PKCS#8 (RFC 5208 `PrivateKeyInfo`, version 0, algorithm
/// id-ecPublicKey on `curve`): the form ring reads.
fn sec1_to_pkcs8(sec1: &[u8], curve: &[u8]) -> Vec<u8> {
    let algorithm = der(0x30, &[ID_EC_PUBLIC_KEY, curve].concat());
    let body = [&[0x02, 0x01, 0x00][..], &algorithm, &der(0x04, sec1)].concat();
    der(0x30, &body)
}

/// The `privateKey` OCTET STRING of a PKCS#8 `PrivateKeyInfo` (for RSA: the PKCS#1 key).
fn pkcs8_inner_key(pkcs8: &[u8]) -> Result<Vec<u8>, String> {
    let bad = || "malformed PKCS#8 key".to_string();
    let (tag, info, _) = read_tlv(pkcs8).ok_or_else(bad)?;
    if tag != 0x30 {
        return Err(bad());
    }
    let (_version, _, rest) = read_tlv(info).ok_or_else(bad)?;
    let (_algorithm, _, rest) = read_tlv(rest).ok_or_else(bad)?;
    match read_tlv(rest) {
        Some((0x04, key, _)) => Ok(key.to_vec()),
        _ => Err(bad()),
    }
}

/// One DER element: `(tag, contents, what follows)`.
fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A DER element with `tag` around `contents`.
fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
    let len = contents.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(contents);
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A PKCS#8 PEM of a new key for `algorithm` (ECDSA or Ed25519; ring makes no RSA keys).
    pub fn generate_pem(algorithm: Algorithm) -> String {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = match algorithm {
            Algorithm::ES256 => {
                signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap()
            }
            Algorithm::ES384 => {
                signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap()
            }
            Algorithm::EdDSA => signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap(),
            other => panic!("no generator for {other:?}"),
        };
        pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()))
    }

    /// The same EC key as SEC1 (`EC PRIVATE KEY`), after an `EC PARAMETERS` block as
    /// `openssl ecparam -genkey` writes it.
    pub fn as_sec1(pkcs8_pem: &str) -> String {
        let pkcs8 = pem::parse(pkcs8_pem).unwrap();
        let sec1 = pkcs8_inner_key(pkcs8.contents()).unwrap();
        let params = pem::encode(&pem::Pem::new("EC PARAMETERS", P256.to_vec()));
        params + &pem::encode(&pem::Pem::new("EC PRIVATE KEY", sec1))
    }

    #[test]
    fn der_round_trips() {
        for len in [0usize, 5, 127, 128, 255, 256, 70_000] {
            let contents = vec![7u8; len];
            let encoded = der(0x04, &contents);
            let (tag, inner, rest) = read_tlv(&encoded).unwrap();
            assert_eq!((tag, inner.len(), rest.len()), (0x04, len, 0));
        }
        assert!(read_tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
        assert!(read_tlv(&[0x30, 0x05, 1]).is_none());
    }

    #[test]
    fn sec1_keys_are_rewrapped_for_ring() {
        let pkcs8_pem = generate_pem(Algorithm::ES256);
        let sec1_pem = as_sec1(&pkcs8_pem);
        assert!(load_private(sec1_pem.as_bytes(), Algorithm::ES256).is_ok());
        assert!(
            load_private(sec1_pem.as_bytes(), Algorithm::ES384).is_err(),
            "wrong curve"
        );
        assert!(load_private(pkcs8_pem.as_bytes(), Algorithm::RS256).is_err(), "not RSA");
        assert!(load_private(b"garbage", Algorithm::ES256).is_err());
    }
}
