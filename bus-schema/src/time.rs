//! Durations as humans write them (`"90s"`, `"5m"`, `"24h"`) and wall-clock
//! timestamps as RFC 3339 strings.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, SystemTime};

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, WireError};

/// The shortest duration accepted for a TTL.
pub const MIN_DURATION: Duration = Duration::from_millis(100);
/// The longest duration accepted for a TTL (one year).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration written with humantime, such as `"90s"` or `"1h 30m"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HumanDuration(Duration);

impl HumanDuration {
    pub fn parse(s: &str) -> Result<Self, WireError> {
        let d = humantime::parse_duration(s.trim()).map_err(|e| {
            WireError::new(
                ErrorCode::InvalidDuration,
                format!("{s:?} is not a duration like \"90s\", \"5m\" or \"24h\": {e}"),
            )
        })?;
        Self::new(d)
    }

    pub fn new(d: Duration) -> Result<Self, WireError> {
        if d < MIN_DURATION || d > MAX_DURATION {
            return Err(WireError::new(
                ErrorCode::InvalidDuration,
                format!(
                    "duration {} is outside {}..={}",
                    humantime::format_duration(d),
                    humantime::format_duration(MIN_DURATION),
                    humantime::format_duration(MAX_DURATION)
                ),
            ));
        }
        Ok(Self(d))
    }

    pub fn get(self) -> Duration {
        self.0
    }
}

impl TryFrom<String> for HumanDuration {
    type Error = WireError;
    fn try_from(s: String) -> Result<Self, WireError> {
        Self::parse(&s)
    }
}

impl From<HumanDuration> for String {
    fn from(d: HumanDuration) -> String {
        humantime::format_duration(d.0).to_string()
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = WireError;
    fn from_str(s: &str) -> Result<Self, WireError> {
        Self::parse(s)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HumanDuration({self})")
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "HumanDuration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "a humantime duration such as \"90s\", \"5m\", \"24h\" or \"1h 30m\"; 100ms to 365d",
            "examples": ["90s", "5m", "24h"],
        })
    }
}

/// A wall-clock instant, RFC 3339 in UTC with milliseconds. Timestamps are
/// for people and for coarse reaping only; no decision that fences a worker
/// compares wall clocks of two machines.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Timestamp(SystemTime);

impl Timestamp {
    pub fn now() -> Self {
        Self(SystemTime::now())
    }

    pub fn from_system(t: SystemTime) -> Self {
        Self(t)
    }

    pub fn system(self) -> SystemTime {
        self.0
    }

    /// How long ago this was, relative to `now`; zero if it is in the future.
    pub fn age(self, now: SystemTime) -> Duration {
        now.duration_since(self.0).unwrap_or_default()
    }
}

impl TryFrom<String> for Timestamp {
    type Error = WireError;
    fn try_from(s: String) -> Result<Self, WireError> {
        humantime::parse_rfc3339_weak(&s).map(Self).map_err(|e| {
            WireError::new(
                ErrorCode::InvalidRequest,
                format!("bad timestamp {s:?}: {e}"),
            )
        })
    }
}

impl From<Timestamp> for String {
    fn from(t: Timestamp) -> String {
        humantime::format_rfc3339_millis(t.0).to_string()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_millis(self.0))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl JsonSchema for Timestamp {
    fn schema_name() -> Cow<'static, str> {
        "Timestamp".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339, UTC, milliseconds",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_human_durations() {
        assert_eq!(
            HumanDuration::parse("90s").unwrap().get(),
            Duration::from_secs(90)
        );
        assert_eq!(
            HumanDuration::parse("5m").unwrap().get(),
            Duration::from_secs(300)
        );
        assert_eq!(
            HumanDuration::parse("24h").unwrap().get(),
            Duration::from_secs(86400)
        );
        assert_eq!(
            HumanDuration::parse("1h 30m").unwrap().get(),
            Duration::from_secs(5400)
        );
    }

    #[test]
    fn rejects_bad_durations_with_a_stable_code() {
        for bad in ["", "soon", "-5s", "5", "0s", "10ms", "400d"] {
            let e = HumanDuration::parse(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidDuration, "{bad}");
        }
    }

    #[test]
    fn timestamps_round_trip() {
        let t = Timestamp::try_from("2026-11-25T12:00:00.250Z".to_string()).unwrap();
        assert_eq!(String::from(t), "2026-11-25T12:00:00.250Z");
    }
}
