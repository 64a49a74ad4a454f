//! Bytes to messages and back, with the reply envelope.
//!
//! Every reply is `{"ok":true,"result":…}` or
//! `{"ok":false,"error":{"code":…,"message":…}}`.

use bytes::Bytes;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, WireError};
use crate::messages::*;

/// The largest command payload accepted (64 KiB).
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// A request on a subject whose reply type is fixed.
pub trait Command: Serialize + DeserializeOwned + Send + Sync + 'static {
    type Reply: Serialize + DeserializeOwned + Send + 'static;
}

impl Command for CreateSession {
    type Reply = SessionInfo;
}
impl Command for ListSessions {
    type Reply = SessionList;
}
impl Command for GetSession {
    type Reply = SessionInfo;
}
impl Command for Keepalive {
    type Reply = SessionInfo;
}
impl Command for StopSession {
    type Reply = SessionInfo;
}
impl Command for AdoptSession {
    type Reply = SessionInfo;
}
impl Command for Fence {
    type Reply = Ack;
}
impl Command for GetStats {
    type Reply = SessionStats;
}
impl Command for JoinPeer {
    type Reply = Joined;
}
impl Command for PeerSignal {
    type Reply = Ack;
}
impl Command for crate::input::InjectInput {
    type Reply = Ack;
}

/// The reply envelope, as it is on the wire.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Envelope<T> {
    pub ok: bool,
    #[serde(default = "none::<T>", skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
}

/// The deepest JSON nesting a command may have.
pub const MAX_DEPTH: usize = 32;

/// The deepest bracket nesting in `text`, ignoring brackets inside strings.
fn nesting_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn none<T>() -> Option<T> {
    None
}

/// Decodes a command payload. An empty payload means `{}` so that
/// `nats req <subject> ''` works for commands without fields.
pub fn decode<M: DeserializeOwned>(payload: &[u8]) -> Result<M, WireError> {
    if payload.len() > MAX_COMMAND_BYTES {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!(
                "payload is {} bytes; the limit is {MAX_COMMAND_BYTES}",
                payload.len()
            ),
        ));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|_| WireError::new(ErrorCode::Malformed, "payload is not UTF-8"))?;
    let text = if text.trim().is_empty() { "{}" } else { text };
    if nesting_depth(text) > MAX_DEPTH {
        return Err(WireError::new(
            ErrorCode::Malformed,
            format!("JSON nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    if !text.trim_start().starts_with('{') {
        // serde would read a struct from an array too; commands are objects.
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Err(e) => WireError::from_json(&e),
            Ok(_) => WireError::new(ErrorCode::InvalidRequest, "a command must be a JSON object"),
        });
    }
    serde_json::from_str(text).map_err(|e| WireError::from_json(&e))
}

/// Decodes a message that is not a command (records, events, heartbeats).
pub fn decode_record<M: DeserializeOwned>(payload: &[u8]) -> Result<M, WireError> {
    serde_json::from_slice(payload).map_err(|e| WireError::from_json(&e))
}

pub fn encode<M: Serialize>(msg: &M) -> Bytes {
    // Serializing our own types to JSON cannot fail: no maps with non-string
    // keys, no custom serializers that error.
    Bytes::from(serde_json::to_vec(msg).expect("wire types always serialize"))
}

pub fn encode_reply<T: Serialize>(reply: &Result<T, WireError>) -> Bytes {
    let env = match reply {
        Ok(v) => serde_json::json!({"ok": true, "result": v}),
        Err(e) => serde_json::json!({"ok": false, "error": e}),
    };
    Bytes::from(env.to_string())
}

pub fn decode_reply<T: DeserializeOwned>(payload: &[u8]) -> Result<T, WireError> {
    let env: Envelope<T> = serde_json::from_slice(payload).map_err(|e| {
        WireError::new(
            ErrorCode::Internal,
            format!("unreadable reply from the bus: {e}"),
        )
    })?;
    match (env.ok, env.result, env.error) {
        (true, Some(v), _) => Ok(v),
        (false, _, Some(e)) => Err(e),
        _ => Err(WireError::new(
            ErrorCode::Internal,
            "reply envelope without result or error",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_bad_payloads() {
        let code = |p: &[u8]| decode::<CreateSession>(p).unwrap_err().code;
        assert_eq!(code(b"{"), ErrorCode::Malformed);
        assert_eq!(code(b"\xff\xfe"), ErrorCode::Malformed);
        assert_eq!(code(b"[1,2]"), ErrorCode::InvalidRequest);
        assert_eq!(
            code(b"[]"),
            ErrorCode::InvalidRequest,
            "arrays never stand in for commands"
        );
        assert_eq!(code(b"null"), ErrorCode::InvalidRequest);
        assert_eq!(code(br#"{"idd":"x"}"#), ErrorCode::InvalidRequest);
        assert_eq!(code(br#"{"id":5}"#), ErrorCode::InvalidRequest);
        assert_eq!(code(br#"{"id":"a.b"}"#), ErrorCode::InvalidId);
        assert_eq!(code(br#"{"idle_ttl":"soon"}"#), ErrorCode::InvalidDuration);
        assert_eq!(
            code(br#"{"source":{"kind":"webcam"}}"#),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(br#"{"source":{"kind":"synthetic","colour":1}}"#),
            ErrorCode::InvalidRequest
        );
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(code(deep.as_bytes()), ErrorCode::Malformed);
        let nested_label = format!(
            r#"{{"labels":{{"a":"{}{}"}}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        assert!(
            decode::<CreateSession>(nested_label.as_bytes()).is_ok(),
            "brackets in strings are text"
        );
        let big = vec![b' '; MAX_COMMAND_BYTES + 1];
        assert_eq!(code(&big), ErrorCode::TooLarge);
    }

    #[test]
    fn empty_payload_is_an_empty_command() {
        assert_eq!(decode::<Keepalive>(b"").unwrap(), Keepalive {});
        assert_eq!(
            decode::<CreateSession>(b" ").unwrap(),
            CreateSession::default()
        );
    }

    #[test]
    fn replies_round_trip() {
        let ok: Result<Ack, WireError> = Ok(Ack {});
        assert_eq!(decode_reply::<Ack>(&encode_reply(&ok)).unwrap(), Ack {});
        let err: Result<Ack, WireError> = Err(WireError::new(ErrorCode::NoCapacity, "full"));
        let back = decode_reply::<Ack>(&encode_reply(&err)).unwrap_err();
        assert_eq!(back.code, ErrorCode::NoCapacity);
        assert_eq!(
            String::from_utf8(encode_reply(&err).to_vec()).unwrap(),
            r#"{"error":{"code":"no_capacity","message":"full"},"ok":false}"#
        );
    }
}
