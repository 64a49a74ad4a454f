//! Join tokens: signed, expiring, bound to one session and one role.
//!
//! Format: `v1.<claims>.<sig>` where `<claims>` is base64url (no padding)
//! of the JSON `{"sid":"<session>","role":"control"|"view","exp":<unix s>}`
//! and `<sig>` is base64url of HMAC-SHA256(secret, "v1.<claims>"). A
//! backend that shares the secret (Helix, in Go) mints tokens itself; the
//! api also mints them at `POST /api/sessions/{id}/tokens`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use bus_schema::{ErrorCode, Role, SessionId, WireError};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sid: SessionId,
    pub role: Role,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

#[derive(Clone)]
pub struct Signer {
    secret: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<secret>)")
    }
}

fn unauthorized(msg: &str) -> WireError {
    WireError::new(ErrorCode::Unauthorized, msg)
}

impl Signer {
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self {
            secret: secret.into(),
        }
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.secret).expect("HMAC takes keys of any length")
    }

    pub fn mint(&self, sid: &SessionId, role: Role, ttl: Duration, now: SystemTime) -> String {
        let exp = (now + ttl)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            sid: sid.clone(),
            role,
            exp,
        };
        let body = format!(
            "v1.{}",
            B64.encode(serde_json::to_vec(&claims).expect("claims serialize"))
        );
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        format!("{body}.{}", B64.encode(mac.finalize().into_bytes()))
    }

    /// Checks signature, expiry and session. Errors are `unauthorized`
    /// (bad or expired token) or `forbidden` (a token for another session).
    pub fn verify(
        &self,
        token: &str,
        session: &SessionId,
        now: SystemTime,
    ) -> Result<Claims, WireError> {
        if token.len() > 1024 {
            return Err(unauthorized("token too long"));
        }
        let (body, sig) = token
            .rsplit_once('.')
            .ok_or_else(|| unauthorized("malformed token"))?;
        let claims_b64 = body
            .strip_prefix("v1.")
            .ok_or_else(|| unauthorized("unknown token version"))?;
        let sig = B64
            .decode(sig)
            .map_err(|_| unauthorized("malformed token signature"))?;
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| unauthorized("bad token signature"))?;
        let raw = B64
            .decode(claims_b64)
            .map_err(|_| unauthorized("malformed token claims"))?;
        let claims: Claims =
            serde_json::from_slice(&raw).map_err(|_| unauthorized("malformed token claims"))?;
        let now_s = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if claims.exp <= now_s {
            return Err(unauthorized("token expired"));
        }
        if &claims.sid != session {
            return Err(WireError::new(
                ErrorCode::Forbidden,
                "token is for another session",
            ));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> SessionId {
        SessionId::parse(s).unwrap()
    }

    #[test]
    fn a_minted_token_verifies_for_its_session_until_it_expires() {
        let s = Signer::new("k");
        let t0 = SystemTime::now();
        let tok = s.mint(&sid("a"), Role::Control, Duration::from_secs(60), t0);
        let c = s.verify(&tok, &sid("a"), t0).unwrap();
        assert_eq!(c.role, Role::Control);
        let e = s
            .verify(&tok, &sid("a"), t0 + Duration::from_secs(61))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized);
        let e = s.verify(&tok, &sid("b"), t0).unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
    }

    #[test]
    fn tampering_and_wrong_keys_are_refused() {
        let t0 = SystemTime::now();
        let tok = Signer::new("k").mint(&sid("a"), Role::View, Duration::from_secs(60), t0);
        assert!(Signer::new("other").verify(&tok, &sid("a"), t0).is_err());
        // Swap in claims that say control, keep the old signature.
        let (_, sig) = tok.rsplit_once('.').unwrap();
        let forged_claims = B64.encode(br#"{"sid":"a","role":"control","exp":99999999999}"#);
        let forged = format!("v1.{forged_claims}.{sig}");
        assert_eq!(
            Signer::new("k")
                .verify(&forged, &sid("a"), t0)
                .unwrap_err()
                .code,
            ErrorCode::Unauthorized
        );
        for junk in ["", "v1", "v1..", "v2.a.b", "x.y.z", &"a".repeat(5000)] {
            assert!(
                Signer::new("k").verify(junk, &sid("a"), t0).is_err(),
                "{junk}"
            );
        }
    }
}
