//! Signed bearer tokens: `base64url(claims JSON) "." base64url(HMAC-SHA256(claims))`.
//!
//! The same token authenticates REST calls and viewer streams. Verification is constant-time
//! on the signature and rejects expired tokens.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The longest token we will even try to decode; anything longer is rejected unread.
pub const MAX_TOKEN_LEN: usize = 1024;
/// Longer for JWTs: an RS256 signature alone is 342 characters.
pub const MAX_JWT_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The player id.
    pub sub: String,
    pub name: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// A connect token: lets one player into one match on one game server, once, until `exp`.
/// Issued by the matchmaker, checked in the UDP handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectClaims {
    pub sub: String,
    pub name: String,
    #[serde(rename = "match")]
    pub match_id: String,
    /// The game server's UDP address the token is for.
    pub server: String,
    pub exp: u64,
    /// Unique per token: a used nonce is not accepted again from another address.
    pub nonce: u64,
}

/// Claims with an expiry.
pub trait Expiring {
    fn exp(&self) -> u64;
}

impl Expiring for Claims {
    fn exp(&self) -> u64 {
        self.exp
    }
}

impl Expiring for ConnectClaims {
    fn exp(&self) -> u64 {
        self.exp
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
}

/// Bearer tokens minted by someone else (a deployment's own backend, as JWTs), checked
/// wherever a Grandstand token is.
pub trait ExternalTokens: Send + Sync {
    fn verify(&self, token: &str, now_secs: u64) -> Result<Claims, TokenError>;
}

#[derive(Clone)]
pub struct TokenSigner {
    key: Vec<u8>,
    /// Accepts three-part tokens (JWTs) for REST claims; never for derived purposes.
    external: Option<std::sync::Arc<dyn ExternalTokens>>,
}

impl TokenSigner {
    pub fn new(secret: &[u8]) -> Self {
        TokenSigner {
            key: secret.to_vec(),
            external: None,
        }
    }

    /// Also accepts the bearer tokens `external` vouches for (see [`TokenSigner::verify`]).
    pub fn with_external(mut self, external: std::sync::Arc<dyn ExternalTokens>) -> Self {
        self.external = Some(external);
        self
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length")
    }

    /// A signer for another purpose, keyed from this one: a token made for one purpose (say a
    /// connect token) never verifies for another (a REST bearer token).
    pub fn derive(&self, purpose: &str) -> TokenSigner {
        let mut mac = self.mac();
        mac.update(b"grandstand-purpose:");
        mac.update(purpose.as_bytes());
        TokenSigner {
            key: mac.finalize().into_bytes().to_vec(),
            external: None,
        }
    }

    pub fn sign(&self, claims: &impl Serialize) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{body}.{sig}")
    }

    /// Verifies `token` at time `now_secs`.
    /// A JWT (three parts) goes to the external verifier when one is set; Grandstand's own
    /// tokens have two parts.
    pub fn verify(&self, token: &str, now_secs: u64) -> Result<Claims, TokenError> {
        if token.len() <= MAX_JWT_LEN && token.split('.').count() == 3 {
            return match &self.external {
                Some(external) => external.verify(token, now_secs),
                None => Err(TokenError::Malformed),
            };
        }
        self.verify_as(token, now_secs)
    }

    /// Verifies `token` and decodes its claims as `T`.
    pub fn verify_as<T: DeserializeOwned + Expiring>(
        &self,
        token: &str,
        now_secs: u64,
    ) -> Result<T, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let (body, sig) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed)?;
        let claims: T = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if claims.exp() <= now_secs {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "p-1".into(),
            name: "Ann".into(),
            exp,
        }
    }

    #[test]
    fn signed_tokens_verify_until_they_expire() {
        let s = TokenSigner::new(b"secret");
        let t = s.sign(&claims(100));
        assert_eq!(s.verify(&t, 99), Ok(claims(100)));
        assert_eq!(s.verify(&t, 100), Err(TokenError::Expired));
    }

    #[test]
    fn tokens_of_one_purpose_never_verify_for_another() {
        let s = TokenSigner::new(b"secret");
        let connect = s.derive("connect");
        let rest = s.sign(&claims(100));
        assert_eq!(connect.verify(&rest, 1), Err(TokenError::BadSignature));
        let c = ConnectClaims {
            sub: "p-1".into(),
            name: "Ann".into(),
            match_id: "eu-1".into(),
            server: "127.0.0.1:7777".into(),
            exp: 100,
            nonce: 9,
        };
        let t = connect.sign(&c);
        assert_eq!(s.verify(&t, 1), Err(TokenError::BadSignature));
        assert_eq!(connect.verify_as::<ConnectClaims>(&t, 1), Ok(c));
    }

    #[test]
    fn forged_and_garbage_tokens_are_rejected() {
        let s = TokenSigner::new(b"secret");
        let other = TokenSigner::new(b"other").sign(&claims(100));
        assert_eq!(s.verify(&other, 1), Err(TokenError::BadSignature));
        // Same signature, claims edited to another player.
        let t = s.sign(&claims(100));
        let (_, sig) = t.split_once('.').unwrap();
        let forged_body = URL_SAFE_NO_PAD.encode(br#"{"sub":"p-2","name":"Bob","exp":100}"#);
        assert_eq!(
            s.verify(&format!("{forged_body}.{sig}"), 1),
            Err(TokenError::BadSignature)
        );
        for junk in [
            "",
            ".",
            "abc",
            "a.b",
            "!!!.???",
            &"a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(s.verify(junk, 1).is_err(), "{junk:?}");
        }
    }
}
