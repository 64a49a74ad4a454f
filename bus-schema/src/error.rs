//! Stable error codes and the one error type that crosses the bus.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Every error a reply can carry. The snake_case spelling is the contract:
/// clients match on it, so codes are only ever added, never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The payload is not JSON (or not UTF-8, or too deeply nested).
    Malformed,
    /// JSON, but not the message the subject expects: wrong type, missing
    /// field, unknown field.
    InvalidRequest,
    /// A session, worker or peer id outside the allowed alphabet or length.
    InvalidId,
    /// A duration that humantime cannot parse, or out of the allowed range.
    InvalidDuration,
    /// The payload is larger than the subject allows.
    TooLarge,
    /// No such session (or it belongs to no live worker).
    NotFound,
    /// The session has ended; the reply carries its end reason.
    Ended,
    /// Every live worker is at its configured maximum.
    NoCapacity,
    /// The session's source could not start or failed.
    SourceFailed,
    /// The command lost a race it cannot win (for example an ownership change).
    Conflict,
    /// No worker answered in time, or NATS is unreachable.
    Unavailable,
    /// Missing or wrong credentials.
    Unauthorized,
    /// Credentials valid, but not for this.
    Forbidden,
    /// A bug or an unexpected failure; details are in the server's log only.
    Internal,
    /// The sender is over a rate limit (signalling messages, input); slow down.
    RateLimited,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidId => "invalid_id",
            ErrorCode::InvalidDuration => "invalid_duration",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Ended => "ended",
            ErrorCode::NoCapacity => "no_capacity",
            ErrorCode::SourceFailed => "source_failed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Internal => "internal",
            ErrorCode::RateLimited => "rate_limited",
        }
    }

    /// Every code, for documentation and exhaustive tests.
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::Malformed,
        ErrorCode::InvalidRequest,
        ErrorCode::InvalidId,
        ErrorCode::InvalidDuration,
        ErrorCode::TooLarge,
        ErrorCode::NotFound,
        ErrorCode::Ended,
        ErrorCode::NoCapacity,
        ErrorCode::SourceFailed,
        ErrorCode::Conflict,
        ErrorCode::Unavailable,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::Internal,
        ErrorCode::RateLimited,
    ];

    fn from_prefix(msg: &str) -> Option<ErrorCode> {
        Self::ALL
            .into_iter()
            .find(|c| msg.starts_with(c.as_str()) && msg[c.as_str().len()..].starts_with(':'))
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as it travels in a reply: a stable code and a message that is
/// safe to show to a client (never internals).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    pub fn internal() -> Self {
        Self::new(ErrorCode::Internal, "internal error; see the server log")
    }

    /// Recovers a [`WireError`] from a serde error. Validation inside
    /// deserialization (ids, durations) formats its errors as `code: message`,
    /// so the code survives serde's wrapping; anything else is a schema
    /// mismatch or a syntax error.
    pub(crate) fn from_json(err: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        let text = err.to_string();
        match err.classify() {
            Category::Data => match ErrorCode::from_prefix(&text) {
                Some(code) => {
                    let msg = text[code.as_str().len() + 1..].trim().to_string();
                    Self::new(code, msg)
                }
                None => Self::new(ErrorCode::InvalidRequest, text),
            },
            Category::Syntax | Category::Eof | Category::Io => Self::new(
                ErrorCode::Malformed,
                format!("payload is not valid JSON: {text}"),
            ),
        }
    }
}
