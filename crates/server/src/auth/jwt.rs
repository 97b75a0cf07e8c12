//! etcd's JWT tokens (`--auth-token jwt,pub-key=<path>,priv-key=<path>,sign-method=<alg>,ttl=<d>`).
//!
//! A token is signed with the claims etcd puts in it: `username`, `revision` (the auth revision
//! when it was issued) and `exp`. Any member with the key verifies it without asking anyone; an
//! expired token, a bad signature or another algorithm is "invalid auth token".
//!
//! Algorithms: RS256/384/512, PS256/384/512 and ES256/384 (PEM keys; the private one signs, the
//! public one verifies, so a member given only `pub-key` verifies but cannot issue tokens, as
//! etcd's verify-only mode), EdDSA (PEM), HS256/384/512 (the raw bytes of `priv-key` are the
//! shared secret). `ttl` is a Go duration (`5m`, `300s`, `1h30m`); etcd's default is 5m.
//! As in etcd, `pub-key` may be left out when `priv-key` is given: tokens are then verified with
//! the private key's public half ([`keys`]).

mod keys;

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// etcd's default JWT lifetime.
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(5 * 60);

/// The claims of an etcd JWT.
#[derive(Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// The keys and settings JWTs are issued and verified with.
pub struct JwtKeys {
    algorithm: Algorithm,
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
    ttl: Duration,
}

impl JwtKeys {
    /// Reads the keys named by etcd's JWT options (see the module docs).
    pub fn from_options(options: &HashMap<String, String>) -> Result<JwtKeys, String> {
        let unknown: Vec<&String> = options
            .keys()
            .filter(|key| !matches!(key.as_str(), "pub-key" | "priv-key" | "sign-method" | "ttl"))
            .collect();
        if !unknown.is_empty() {
            // etcd warns and goes on.
            tracing::warn!(keys = ?unknown, "unknown JWT options");
        }
        let method = options
            .get("sign-method")
            .ok_or("--auth-token: jwt needs sign-method")?;
        let algorithm =
            Algorithm::from_str(method).map_err(|_| format!("--auth-token: unknown JWT sign-method {method:?}"))?;
        let ttl = match options.get("ttl") {
            Some(text) => parse_go_duration(text).ok_or_else(|| format!("--auth-token: bad JWT ttl {text:?}"))?,
            None => DEFAULT_JWT_TTL,
        };
        let read = |option: &str| -> Result<Option<Vec<u8>>, String> {
            options
                .get(option)
                .map(|path| std::fs::read(path).map_err(|e| format!("--auth-token: {option} {path}: {e}")))
                .transpose()
        };
        let (public, private) = (read("pub-key")?, read("priv-key")?);
        let bad =
            |what: &str, e: jsonwebtoken::errors::Error| format!("--auth-token: {what} is not a {method} key: {e}");
        let (signing, verifying) = match algorithm {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let secret = private.ok_or("--auth-token: HMAC signing needs priv-key (the shared secret)")?;
                (
                    Some(EncodingKey::from_secret(&secret)),
                    DecodingKey::from_secret(&secret),
                )
            }
            _ => {
                let pair = private
                    .map(|pem| keys::load_private(&pem, algorithm))
                    .transpose()
                    .map_err(|e| format!("--auth-token: priv-key is not a {method} key: {e}"))?;
                let (signing, derived) = match pair {
                    Some(pair) => (Some(pair.signing), Some(pair.verifying)),
                    None => (None, None),
                };
                let verifying = match (public, derived) {
                    (Some(public), _) => match algorithm {
                        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&public),
                        Algorithm::EdDSA => DecodingKey::from_ed_pem(&public),
                        _ => DecodingKey::from_rsa_pem(&public),
                    }
                    .map_err(|e| bad("pub-key", e))?,
                    // etcd verifies with the private key's public half when pub-key is absent.
                    (None, Some(derived)) => derived,
                    (None, None) => return Err(format!("--auth-token: {method} needs priv-key or pub-key")),
                };
                (signing, verifying)
            }
        };
        let keys = JwtKeys {
            algorithm,
            signing,
            verifying,
            ttl,
        };
        // A key pair that does not match would issue tokens no member accepts: refuse it now.
        if keys.signing.is_some() {
            let probe = keys
                .sign("probe", 1)
                .map_err(|e| format!("--auth-token: cannot sign: {e}"))?;
            if keys.verify(&probe).is_none() {
                return Err("--auth-token: pub-key and priv-key do not match".into());
            }
        }
        Ok(keys)
    }

    /// A token for `username` at auth revision `revision`, valid for the configured TTL.
    pub fn sign(&self, username: &str, revision: u64) -> Result<String, String> {
        let key = self.signing.as_ref().ok_or(crate::errors::VERIFY_ONLY)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let claims = Claims {
            username: username.to_string(),
            revision,
            exp: (now + self.ttl).as_secs(),
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key).map_err(|e| e.to_string())
    }

    /// The user and auth revision of a token signed with this key, not yet expired.
    pub fn verify(&self, token: &str) -> Option<(String, u64)> {
        let mut validation = Validation::new(self.algorithm);
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Claims>(token, &self.verifying, &validation).ok()?;
        Some((data.claims.username, data.claims.revision))
    }
}

/// Parses a JWT `ttl`: a positive Go duration (`300ms`, `5m`, `1h30m`, `1.5s`).
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    crate::go_duration::parse(text).ok().filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs256(ttl: &str) -> JwtKeys {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"a shared secret of some length").unwrap();
        let options = HashMap::from([
            ("sign-method".to_string(), "HS256".to_string()),
            ("priv-key".to_string(), secret.display().to_string()),
            ("ttl".to_string(), ttl.to_string()),
        ]);
        JwtKeys::from_options(&options).unwrap()
    }

    #[test]
    fn tokens_carry_user_and_revision_and_expire() {
        let keys = hs256("1s");
        let token = keys.sign("alice", 7).unwrap();
        assert_eq!(keys.verify(&token), Some(("alice".into(), 7)));
        assert_eq!(keys.verify("garbage"), None);
        let mut tampered = token.clone();
        tampered.pop();
        assert_eq!(keys.verify(&tampered), None);
        let other = hs256("1s");
        assert!(other.verify(&token).is_some(), "same secret, same verdict");
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(keys.verify(&token), None, "expired");
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("1500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("10m0s"), Some(Duration::from_secs(600)));
        assert_eq!(parse_go_duration("5"), None);
        assert_eq!(parse_go_duration(""), None);
        assert_eq!(parse_go_duration("0s"), None);
    }

    /// etcd's Bitnami-style configuration: only `priv-key`; the public half verifies.
    #[test]
    fn a_private_key_alone_signs_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let pkcs8_p256 = keys::tests::generate_pem(Algorithm::ES256);
        let cases = [
            ("ES256", pkcs8_p256.clone()),
            ("ES256", keys::tests::as_sec1(&pkcs8_p256)),
            ("ES384", keys::tests::generate_pem(Algorithm::ES384)),
            ("EdDSA", keys::tests::generate_pem(Algorithm::EdDSA)),
        ];
        for (i, (method, pem)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("key{i}.pem"));
            std::fs::write(&path, pem).unwrap();
            let options = HashMap::from([
                ("sign-method".to_string(), method.to_string()),
                ("priv-key".to_string(), path.display().to_string()),
                ("ttl".to_string(), "10m".to_string()),
            ]);
            let keys = JwtKeys::from_options(&options).unwrap_or_else(|e| panic!("{method} #{i}: {e}"));
            let token = keys.sign("root", 3).unwrap();
            assert_eq!(keys.verify(&token), Some(("root".into(), 3)), "{method} #{i}");
        }
        // A key of another kind than the sign method is refused at start.
        let path = dir.path().join("key0.pem");
        let options = HashMap::from([
            ("sign-method".to_string(), "RS256".to_string()),
            ("priv-key".to_string(), path.display().to_string()),
        ]);
        assert!(JwtKeys::from_options(&options).is_err());
    }

    #[test]
    fn bad_options_are_refused() {
        let opts = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert!(JwtKeys::from_options(&opts(&[("sign-method", "XX999")])).is_err());
        assert!(JwtKeys::from_options(&opts(&[("sign-method", "RS256"), ("bogus", "1")])).is_err());
        assert!(JwtKeys::from_options(&opts(&[("sign-method", "RS256"), ("pub-key", "/nonexistent")])).is_err());
    }
}
