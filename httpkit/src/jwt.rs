//! Standard JWTs from a deployment's own backend, accepted wherever Grandstand's guest tokens
//! are: HS256 with shared secrets (several at once, so a secret rotates without downtime) and
//! RS256/ES256 with public keys from a JWKS file (re-read every minute, so keys rotate by
//! replacing the file). `sub` is the player, `name` its display name (`sub` when absent), and
//! `exp` is required and enforced; `iss`/`aud` when configured.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use protocol::{Claims, ExternalTokens, TokenError};
use serde::Deserialize;

/// How often the JWKS file is re-read.
pub const JWKS_REFRESH: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Default)]
pub struct JwtConfig {
    /// HS256 secrets; a token verifies with any of them.
    pub secrets: Vec<String>,
    /// A JWKS document with RS256/ES256 public keys.
    pub jwks_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

impl JwtConfig {
    pub fn enabled(&self) -> bool {
        !self.secrets.is_empty() || self.jwks_file.is_some()
    }
}

/// A public key from the JWKS, with what it verifies.
struct PublicKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

pub struct JwtVerifier {
    config: JwtConfig,
    secrets: Vec<DecodingKey>,
    keys: RwLock<Vec<PublicKey>>,
}

#[derive(Deserialize)]
struct JwtClaims {
    sub: String,
    exp: u64,
    name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: not a JWKS document: {1}")]
    Parse(String, serde_json::Error),
    #[error("{0}: key {1:?}: {2}")]
    Key(String, Option<String>, String),
}

fn load_jwks(path: &PathBuf) -> Result<Vec<PublicKey>, JwksError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| JwksError::Read(shown.clone(), e))?;
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(&text).map_err(|e| JwksError::Parse(shown.clone(), e))?;
    set.keys
        .iter()
        .map(|jwk| {
            let kid = jwk.common.key_id.clone();
            let algorithm = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                _ => {
                    return Err(JwksError::Key(
                        shown.clone(),
                        kid,
                        "only RSA (RS256) and EC P-256 (ES256) keys are taken".into(),
                    ))
                }
            };
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| JwksError::Key(shown.clone(), kid.clone(), e.to_string()))?;
            Ok(PublicKey {
                kid,
                algorithm,
                key,
            })
        })
        .collect()
}

impl JwtVerifier {
    /// Builds the verifier, reading the JWKS file once (an unreadable file is an error at
    /// start; later, a failed re-read keeps the keys known so far).
    pub fn new(config: JwtConfig) -> Result<Arc<JwtVerifier>, JwksError> {
        let keys = match &config.jwks_file {
            Some(path) => load_jwks(path)?,
            None => Vec::new(),
        };
        Ok(Arc::new(JwtVerifier {
            secrets: config
                .secrets
                .iter()
                .map(|s| DecodingKey::from_secret(s.as_bytes()))
                .collect(),
            keys: RwLock::new(keys),
            config,
        }))
    }

    /// Re-reads the JWKS file every [`JWKS_REFRESH`] until `shutdown`.
    pub fn keep_fresh(self: &Arc<Self>, shutdown: crate::Shutdown) {
        let Some(path) = self.config.jwks_file.clone() else {
            return;
        };
        let verifier = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(JWKS_REFRESH);
            every.tick().await;
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                match load_jwks(&path) {
                    Ok(keys) => *verifier.keys.write().unwrap() = keys,
                    Err(e) => {
                        tracing::warn!(error = %e, "re-reading the JWKS failed; keeping the last keys")
                    }
                }
            }
        });
    }

    fn validation(&self, algorithm: Algorithm, now_secs: u64) -> Validation {
        let _ = now_secs;
        let mut v = Validation::new(algorithm);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp", "sub"]);
        if let Some(iss) = &self.config.issuer {
            v.set_issuer(&[iss]);
        }
        match &self.config.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        v
    }

    fn claims(
        &self,
        token: &str,
        key: &DecodingKey,
        algorithm: Algorithm,
        now_secs: u64,
    ) -> Result<Claims, TokenError> {
        let data = decode::<JwtClaims>(token, key, &self.validation(algorithm, now_secs)).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
                _ => TokenError::Malformed,
            },
        )?;
        let c = data.claims;
        // jsonwebtoken checks `exp` against the system clock; the caller's clock decides too.
        if c.exp <= now_secs {
            return Err(TokenError::Expired);
        }
        if c.sub.is_empty() || c.sub.len() > 128 {
            return Err(TokenError::Malformed);
        }
        Ok(Claims {
            name: c.name.unwrap_or_else(|| c.sub.clone()),
            sub: c.sub,
            exp: c.exp,
        })
    }
}

impl ExternalTokens for JwtVerifier {
    fn verify(&self, token: &str, now_secs: u64) -> Result<Claims, TokenError> {
        let header = decode_header(token).map_err(|_| TokenError::Malformed)?;
        match header.alg {
            Algorithm::HS256 => {
                let mut last = TokenError::BadSignature;
                for key in &self.secrets {
                    match self.claims(token, key, Algorithm::HS256, now_secs) {
                        Err(TokenError::BadSignature) => continue,
                        Err(e) => last = e,
                        ok => return ok,
                    }
                    break;
                }
                Err(last)
            }
            alg @ (Algorithm::RS256 | Algorithm::ES256) => {
                let keys = self.keys.read().unwrap();
                let mut last = TokenError::BadSignature;
                for k in keys
                    .iter()
                    .filter(|k| k.algorithm == alg && (header.kid.is_none() || k.kid == header.kid))
                {
                    match self.claims(token, &k.key, alg, now_secs) {
                        Err(TokenError::BadSignature) => continue,
                        Err(e) => last = e,
                        ok => return ok,
                    }
                    break;
                }
                Err(last)
            }
            // `none` and every other algorithm: never.
            _ => Err(TokenError::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn now() -> u64 {
        protocol::now_secs()
    }

    fn hs(secret: &str, sub: &str, exp: u64) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": sub, "exp": exp, "name": "Ada"}),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn verifier(secrets: &[&str]) -> Arc<JwtVerifier> {
        JwtVerifier::new(JwtConfig {
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn hs256_with_any_of_the_rotating_secrets() {
        let v = verifier(&["old-secret-old-secret", "new-secret-new-secret"]);
        for secret in ["old-secret-old-secret", "new-secret-new-secret"] {
            let claims = v
                .verify(&hs(secret, "player-7", now() + 60), now())
                .unwrap();
            assert_eq!(
                (claims.sub.as_str(), claims.name.as_str()),
                ("player-7", "Ada")
            );
        }
        assert_eq!(
            v.verify(&hs("someone-elses-secret", "p", now() + 60), now()),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            v.verify(&hs("new-secret-new-secret", "p", now() - 1), now()),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn exp_and_sub_are_required_and_none_is_refused() {
        let v = verifier(&["a-secret-a-secret"]);
        let no_exp = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "p"}),
            &EncodingKey::from_secret(b"a-secret-a-secret"),
        )
        .unwrap();
        assert!(v.verify(&no_exp, now()).is_err());
        // alg=none: header {"alg":"none"}, any payload, empty signature.
        let none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJwIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert!(v.verify(none, now()).is_err());
    }

    #[test]
    fn a_signer_hands_jwts_to_its_verifier_and_keeps_its_own_tokens() {
        let signer = protocol::TokenSigner::new(b"grandstand-secret-123")
            .with_external(verifier(&["a-secret-a-secret"]));
        let jwt = hs("a-secret-a-secret", "player-9", now() + 60);
        assert_eq!(signer.verify(&jwt, now()).unwrap().sub, "player-9");
        let own = signer.sign(&Claims {
            sub: "guest-1".into(),
            name: "Guest".into(),
            exp: now() + 60,
        });
        assert_eq!(signer.verify(&own, now()).unwrap().sub, "guest-1");
        // A signer without a verifier refuses JWTs, and derived signers never take them.
        let plain = protocol::TokenSigner::new(b"grandstand-secret-123");
        assert_eq!(plain.verify(&jwt, now()), Err(TokenError::Malformed));
        assert!(signer.derive("connect").verify(&jwt, now()).is_err());
    }
}
