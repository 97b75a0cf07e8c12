//! The tokens a member hands out and accepts (etcd's `--auth-token`).
//!
//! **simple** (the default): a random string. The member that checked the password proposes the
//! token's SHA-256 through Raft, so every member learns it (only the digest is in the log and in
//! memory; a digest cannot be replayed as a token). Each member forgets a token after
//! `--auth-token-ttl` without use, and all of a user's tokens when the user is deleted or its
//! password changes, all tokens when auth is disabled, and every token on restart, as etcd.
//!
//! **jwt**: signed tokens carrying the user, the auth revision they were issued at and an expiry
//! (see [`super::jwt`]). Any member holding the key verifies them; nothing is replicated. A JWT
//! issued before an auth change is refused as stale, so clients authenticate again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::jwt::JwtKeys;
use super::Identity;

/// Which kind of token a member issues, from `--auth-token`.
pub enum TokenKind {
    /// etcd's `simple` tokens.
    Simple,
    /// etcd's `jwt` tokens, with their keys.
    Jwt(JwtKeys),
}

impl TokenKind {
    /// Parses etcd's `--auth-token` value: `simple`, or `jwt,` followed by `key=value` options
    /// (`pub-key`, `priv-key`, `sign-method`, `ttl`).
    pub fn parse(spec: &str) -> Result<TokenKind, String> {
        let mut parts = spec.split(',');
        let kind = parts.next().unwrap_or_default();
        let mut options = HashMap::new();
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("--auth-token: invalid option {part:?} (want key=value)"))?;
            if options.insert(key.to_string(), value.to_string()).is_some() {
                return Err(format!("--auth-token: option {key:?} given twice"));
            }
        }
        match kind {
            "simple" => {
                if !options.is_empty() {
                    // etcd ignores them too; a copied command line must still start.
                    tracing::warn!(
                        "--auth-token: simple tokens take no options; ignoring {:?}",
                        options.keys()
                    );
                }
                Ok(TokenKind::Simple)
            }
            "jwt" => Ok(TokenKind::Jwt(JwtKeys::from_options(&options)?)),
            other => Err(format!(
                "--auth-token: unknown token type {other:?} (want simple or jwt)"
            )),
        }
    }
}

/// A simple token known to this member.
struct Known {
    user: String,
    last_used: Instant,
}

/// The simple tokens a member accepts, by SHA-256 digest.
struct SimpleTokens {
    ttl: Duration,
    known: Mutex<SimpleState>,
}

struct SimpleState {
    tokens: HashMap<[u8; 32], Known>,
    last_sweep: Instant,
}

impl SimpleTokens {
    fn state(&self) -> std::sync::MutexGuard<'_, SimpleState> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Accepts the token with this digest for `user` from now on; forgets expired tokens now
    /// and then so memory stays bounded by what clients use.
    fn remember(&self, digest: &[u8], user: &str) {
        let Ok(digest) = <[u8; 32]>::try_from(digest) else {
            return;
        };
        let now = Instant::now();
        let mut state = self.state();
        if now.duration_since(state.last_sweep) >= self.ttl / 2 {
            let ttl = self.ttl;
            state.tokens.retain(|_, k| now.duration_since(k.last_used) < ttl);
            state.last_sweep = now;
        }
        state.tokens.insert(
            digest,
            Known {
                user: user.to_string(),
                last_used: now,
            },
        );
    }

    /// The user of a live token, whose clock starts again (etcd's `resetSimpleToken`).
    fn resolve(&self, token: &str) -> Option<String> {
        let digest = digest(token);
        let now = Instant::now();
        let mut state = self.state();
        let known = state.tokens.get_mut(&digest)?;
        if now.duration_since(known.last_used) >= self.ttl {
            state.tokens.remove(&digest);
            return None;
        }
        known.last_used = now;
        Some(known.user.clone())
    }
}

/// The tokens of one member: issuing, accepting, forgetting.
pub struct Tokens {
    simple: Option<SimpleTokens>,
    jwt: Option<JwtKeys>,
}

/// SHA-256 of a token: what the log and a member's memory hold instead of the token.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new simple token: 24 random bytes from the OS, URL-safe base64 (valid gRPC metadata).
pub fn new_simple_token() -> Result<String, String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a token: {e}"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

impl Tokens {
    /// Tokens of `kind`; simple tokens expire after `ttl` without use.
    pub fn new(kind: TokenKind, ttl: Duration) -> Tokens {
        match kind {
            TokenKind::Simple => Tokens {
                simple: Some(SimpleTokens {
                    ttl: ttl.max(Duration::from_secs(1)),
                    known: Mutex::new(SimpleState {
                        tokens: HashMap::new(),
                        last_sweep: Instant::now(),
                    }),
                }),
                jwt: None,
            },
            TokenKind::Jwt(keys) => Tokens {
                simple: None,
                jwt: Some(keys),
            },
        }
    }

    /// The JWT keys, when the member issues JWTs.
    pub fn jwt(&self) -> Option<&JwtKeys> {
        self.jwt.as_ref()
    }

    /// The identity a token stands for, if this member accepts it. Simple tokens hold for the
    /// current auth `revision` (the user is looked up at each use); JWTs for the revision they
    /// were signed at.
    pub fn resolve(&self, token: &str, revision: u64) -> Option<Identity> {
        if let Some(simple) = &self.simple {
            return simple.resolve(token).map(|username| Identity { username, revision });
        }
        let (username, revision) = self.jwt.as_ref()?.verify(token)?;
        Some(Identity { username, revision })
    }

    /// Whether a token this member does not know may be one it has not applied yet (simple
    /// tokens are learnt through the log; a JWT either verifies or never will).
    pub fn may_be_unapplied(&self) -> bool {
        self.simple.is_some()
    }

    /// Accepts the simple token with SHA-256 `digest` for `user` (an applied authentication).
    pub fn remember(&self, digest: &[u8], user: &str) {
        if let Some(simple) = &self.simple {
            simple.remember(digest, user);
        }
    }

    /// Forgets every simple token of `user` (deleted, or its password changed). JWTs cannot be
    /// recalled, but the change moved the auth revision, which makes them stale.
    pub fn forget_user(&self, user: &str) {
        if let Some(simple) = &self.simple {
            simple.state().tokens.retain(|_, k| k.user != user);
        }
    }

    /// Forgets every simple token (auth was disabled).
    pub fn forget_all(&self) {
        if let Some(simple) = &self.simple {
            simple.state().tokens.clear();
        }
    }

    /// Keeps only the simple tokens whose user passes `exists`.
    pub fn retain_users(&self, mut exists: impl FnMut(&str) -> bool) {
        if let Some(simple) = &self.simple {
            simple.state().tokens.retain(|_, k| exists(&k.user));
        }
    }

    /// How many simple tokens this member holds (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.simple.as_ref().map_or(0, |s| s.state().tokens.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_tokens_resolve_expire_and_are_forgotten() {
        let tokens = Tokens::new(TokenKind::Simple, Duration::from_secs(1));
        let (a, b) = (new_simple_token().unwrap(), new_simple_token().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(tokens.resolve(&a, 3).is_none());
        tokens.remember(&digest(&a), "alice");
        tokens.remember(&digest(&b), "bob");
        assert_eq!(
            tokens.resolve(&a, 3),
            Some(Identity {
                username: "alice".into(),
                revision: 3
            })
        );
        tokens.forget_user("alice");
        assert!(tokens.resolve(&a, 3).is_none());
        assert!(tokens.resolve(&b, 3).is_some());
        std::thread::sleep(Duration::from_millis(1100));
        assert!(tokens.resolve(&b, 3).is_none(), "expired after the TTL without use");
        assert_eq!(tokens.len(), 0);
    }

    #[test]
    fn use_keeps_a_simple_token_alive() {
        let tokens = Tokens::new(TokenKind::Simple, Duration::from_secs(1));
        let t = new_simple_token().unwrap();
        tokens.remember(&digest(&t), "u");
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(400));
            assert!(tokens.resolve(&t, 1).is_some());
        }
    }

    #[test]
    fn token_specs_parse_like_etcd() {
        assert!(matches!(TokenKind::parse("simple"), Ok(TokenKind::Simple)));
        assert!(
            matches!(TokenKind::parse("simple,ttl=5m"), Ok(TokenKind::Simple)),
            "ignored, as etcd"
        );
        assert!(TokenKind::parse("bogus").is_err());
        assert!(TokenKind::parse("jwt,sign-method").is_err());
        assert!(TokenKind::parse("jwt,sign-method=RS256,sign-method=RS256").is_err());
        assert!(TokenKind::parse("jwt,sign-method=RS256").is_err(), "no key");
    }
}
