//! Identifiers that travel on the bus. Each one is also a NATS subject token
//! and a JetStream key, so the alphabet is deliberately narrow.

use std::borrow::Cow;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, WireError};

/// Longest identifier accepted anywhere on the bus.
pub const MAX_ID_LEN: usize = 64;

fn check_token(kind: &str, s: &str) -> Result<(), WireError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(WireError::new(
            ErrorCode::InvalidId,
            format!("{kind} must be 1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 - _"),
        ))
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `s` as this kind of identifier.
            pub fn parse(s: impl Into<String>) -> Result<Self, WireError> {
                let s = s.into();
                check_token($kind, &s)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = WireError;
            fn try_from(s: String) -> Result<Self, WireError> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = WireError;
            fn from_str(s: &str) -> Result<Self, WireError> {
                Self::parse(s)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": "string",
                    "pattern": "^[A-Za-z0-9_-]{1,64}$",
                    "description": $kind,
                })
            }
        }
    };
}

id_type!(
    /// A streaming session. Callers may choose it (Helix uses its own ids);
    /// otherwise the worker that creates the session generates one.
    SessionId,
    "session id"
);
id_type!(
    /// A worker process; unique for the process's lifetime.
    WorkerId,
    "worker id"
);
id_type!(
    /// One browser viewer (one RTCPeerConnection) of a session.
    PeerId,
    "peer id"
);

impl SessionId {
    /// A fresh random id (UUID v4, simple form).
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }
}

impl WorkerId {
    /// A fresh random id with a readable prefix.
    pub fn generate() -> Self {
        let u = uuid::Uuid::new_v4().simple().to_string();
        Self(format!("w-{}", &u[..12]))
    }
}

impl PeerId {
    /// A fresh random id.
    pub fn generate() -> Self {
        let u = uuid::Uuid::new_v4().simple().to_string();
        Self(format!("p-{}", &u[..12]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_tokens_and_rejects_everything_else() {
        assert!(SessionId::parse("helix-ses_01").is_ok());
        assert!(SessionId::parse("a".repeat(64)).is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>", "ü", &"a".repeat(65)] {
            let err = SessionId::parse(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidId, "{bad:?}");
        }
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = SessionId::generate();
        let b = SessionId::generate();
        assert_ne!(a, b);
        assert!(SessionId::parse(a.as_str()).is_ok());
        assert!(WorkerId::parse(WorkerId::generate().as_str()).is_ok());
        assert!(PeerId::parse(PeerId::generate().as_str()).is_ok());
    }
}
