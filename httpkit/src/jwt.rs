//! Standard JWTs from a deployment's own backend, accepted wherever Grandstand's guest tokens
//! are: HS256 with shared secrets (several at once, so a secret rotates without downtime) and
//! RS256/ES256 with public keys from a JWKS file or URL (re-read every minute, so keys rotate
//! by replacing the file or publishing a new set; a token naming a key id not known yet asks
//! for an early re-read, at most one per [`JWKS_EARLY_REFRESH`]). `sub` is the player, `name`
//! its display name (`sub` when absent), and `exp` is required and enforced; `iss`/`aud` when
//! configured.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use protocol::{Claims, ExternalTokens, TokenError};
use serde::Deserialize;

/// How often the JWKS file and URL are re-read.
pub const JWKS_REFRESH: Duration = Duration::from_secs(60);
/// The shortest time between two re-reads asked for by tokens naming an unknown key id (a
/// flood of forged key ids costs the JWKS host one request per this interval).
pub const JWKS_EARLY_REFRESH: Duration = Duration::from_secs(10);
/// The largest JWKS document taken from a URL.
pub const JWKS_MAX_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Default)]
pub struct JwtConfig {
    /// HS256 secrets; a token verifies with any of them.
    pub secrets: Vec<String>,
    /// A JWKS document with RS256/ES256 public keys.
    pub jwks_file: Option<PathBuf>,
    /// The same, served over HTTP(S) (an identity provider's `jwks_uri`).
    pub jwks_url: Option<String>,
    /// PEM CA certificates trusted for the JWKS URL besides the system's.
    pub ca_pem: Option<Vec<u8>>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

impl JwtConfig {
    pub fn enabled(&self) -> bool {
        !self.secrets.is_empty() || self.jwks_file.is_some() || self.jwks_url.is_some()
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
    http: Option<reqwest::Client>,
    /// Wakes the refresher early: a token named a key id no key has.
    unknown_kid: tokio::sync::Notify,
    /// When the last early re-read was asked for (ms since `born`).
    last_early_ms: AtomicU64,
    born: Instant,
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
    #[error("fetching {0}: {1}")]
    Fetch(String, String),
}

fn load_jwks(path: &PathBuf) -> Result<Vec<PublicKey>, JwksError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| JwksError::Read(shown.clone(), e))?;
    parse_jwks(&shown, &text)
}

async fn fetch_jwks(http: &reqwest::Client, url: &str) -> Result<Vec<PublicKey>, JwksError> {
    let fail = |e: String| JwksError::Fetch(url.to_string(), e);
    let mut res = http
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| fail(error_chain(&e)))?;
    if !res.status().is_success() {
        return Err(fail(format!("HTTP {}", res.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(|e| fail(error_chain(&e)))? {
        if body.len() + chunk.len() > JWKS_MAX_BYTES {
            return Err(fail(format!("larger than {JWKS_MAX_BYTES} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    parse_jwks(url, &String::from_utf8_lossy(&body))
}

/// An error with its causes (reqwest's own message leaves out why a connection failed).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn parse_jwks(shown: &str, text: &str) -> Result<Vec<PublicKey>, JwksError> {
    let shown = shown.to_string();
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(text).map_err(|e| JwksError::Parse(shown.clone(), e))?;
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
    /// Builds the verifier, reading the JWKS file and URL once (an unreadable one is an error
    /// at start; later, a failed re-read keeps the keys known so far).
    pub async fn new(config: JwtConfig) -> Result<Arc<JwtVerifier>, JwksError> {
        let http = match &config.jwks_url {
            Some(url) => Some(jwks_client(url, config.ca_pem.as_deref())?),
            None => None,
        };
        let verifier = Arc::new(JwtVerifier {
            secrets: config
                .secrets
                .iter()
                .map(|s| DecodingKey::from_secret(s.as_bytes()))
                .collect(),
            keys: RwLock::new(Vec::new()),
            http,
            unknown_kid: tokio::sync::Notify::new(),
            last_early_ms: AtomicU64::new(0),
            born: Instant::now(),
            config,
        });
        *verifier.keys.write().unwrap() = verifier.load_keys().await?;
        Ok(verifier)
    }

    async fn load_keys(&self) -> Result<Vec<PublicKey>, JwksError> {
        let mut keys = match &self.config.jwks_file {
            Some(path) => load_jwks(path)?,
            None => Vec::new(),
        };
        if let (Some(url), Some(http)) = (&self.config.jwks_url, &self.http) {
            keys.extend(fetch_jwks(http, url).await?);
        }
        Ok(keys)
    }

    /// Re-reads the JWKS every [`JWKS_REFRESH`], and early when a token names an unknown key
    /// id, until `shutdown`.
    pub fn keep_fresh(self: &Arc<Self>, shutdown: crate::Shutdown) {
        if self.config.jwks_file.is_none() && self.config.jwks_url.is_none() {
            return;
        }
        let verifier = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(JWKS_REFRESH);
            every.tick().await;
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = verifier.unknown_kid.notified() => {}
                    _ = shutdown.cancelled() => return,
                }
                match verifier.load_keys().await {
                    Ok(keys) => *verifier.keys.write().unwrap() = keys,
                    Err(e) => {
                        tracing::warn!(error = %e, "re-reading the JWKS failed; keeping the last keys")
                    }
                }
            }
        });
    }

    /// Asks the refresher for an early re-read, at most once per [`JWKS_EARLY_REFRESH`].
    fn unknown_key(&self) {
        let now = self.born.elapsed().as_millis() as u64 + JWKS_EARLY_REFRESH.as_millis() as u64;
        let last = self.last_early_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= JWKS_EARLY_REFRESH.as_millis() as u64
            && self
                .last_early_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.unknown_kid.notify_one();
        }
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
                let mut candidates = keys
                    .iter()
                    .filter(|k| k.algorithm == alg && (header.kid.is_none() || k.kid == header.kid))
                    .peekable();
                if candidates.peek().is_none() && header.kid.is_some() {
                    // Maybe a key published since the last read: refuse now, look again soon.
                    self.unknown_key();
                }
                for k in candidates {
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

/// The HTTP client reading a JWKS URL: rustls with the system's roots plus `ca_pem`, short
/// timeouts (a slow identity provider must not hold a start or a refresh for long).
fn jwks_client(url: &str, ca_pem: Option<&[u8]>) -> Result<reqwest::Client, JwksError> {
    let fail = |e: String| JwksError::Fetch(url.to_string(), e);
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(fail("not an http:// or https:// URL".into()));
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    if let Some(pem) = ca_pem {
        for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(|e| fail(e.to_string()))? {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| fail(error_chain(&e)))
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
        let config = JwtConfig {
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(JwtVerifier::new(config))
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
