//! Janitor settings, from flags and environment.

use std::time::Duration;

use bus_schema::Subjects;

use crate::error::JanitorError;
use crate::reconcile::{Timing, DEFAULT_MAX_LIFETIME_GRACE};

#[derive(Debug, Clone, PartialEq, Eq, clap::Parser)]
#[command(
    name = "janitor",
    about = "Reaps sessions of dead workers and stale registry entries"
)]
pub struct Config {
    /// NATS server URL.
    #[arg(
        long,
        env = "NATS_URL",
        hide_env_values = true,
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// Prefix of every subject (and of the registry bucket's name).
    #[arg(long, env = "SUBJECT_PREFIX", default_value = bus_schema::subjects::DEFAULT_PREFIX)]
    pub subject_prefix: String,
    /// The workers' heartbeat interval.
    #[arg(long, env = "HEARTBEAT_INTERVAL", default_value = "1s")]
    pub heartbeat_interval: humantime::Duration,
    /// Silence after which a worker is declared dead. Must be longer than
    /// the workers' lease.
    #[arg(long, env = "DEAD_AFTER", default_value = "3s")]
    pub dead_after: humantime::Duration,
    /// How long ended sessions stay in the registry before they are purged.
    #[arg(long, env = "ENDED_RETENTION", default_value = "10m")]
    pub ended_retention: humantime::Duration,
    /// How often the registry is scanned.
    #[arg(long, env = "SCAN_INTERVAL", default_value = "1s")]
    pub scan_interval: humantime::Duration,
    /// Slack over a session's max lifetime before the janitor ends it (the
    /// owner normally does).
    #[arg(long, env = "MAX_LIFETIME_GRACE", default_value = "30s")]
    pub max_lifetime_grace: humantime::Duration,
    /// Timeout of adopt and fence requests to workers.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "2s")]
    pub request_timeout: humantime::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".into(),
            subject_prefix: bus_schema::subjects::DEFAULT_PREFIX.into(),
            heartbeat_interval: Duration::from_secs(1).into(),
            dead_after: Duration::from_secs(3).into(),
            ended_retention: Duration::from_secs(600).into(),
            scan_interval: Duration::from_secs(1).into(),
            max_lifetime_grace: DEFAULT_MAX_LIFETIME_GRACE.into(),
            request_timeout: Duration::from_secs(2).into(),
        }
    }
}

impl Config {
    /// Short timings that match `worker::Config::for_tests` (heartbeat
    /// 250 ms, lease 600 ms): dead after 1 s, scans every 250 ms, ended
    /// entries kept 5 s.
    pub fn for_tests(nats_url: &str, subject_prefix: &str) -> Self {
        Self {
            nats_url: nats_url.into(),
            subject_prefix: subject_prefix.into(),
            heartbeat_interval: Duration::from_millis(250).into(),
            dead_after: Duration::from_secs(1).into(),
            ended_retention: Duration::from_secs(5).into(),
            scan_interval: Duration::from_millis(250).into(),
            max_lifetime_grace: Duration::from_secs(2).into(),
            request_timeout: Duration::from_secs(1).into(),
        }
    }

    /// Checks the settings and builds the subjects.
    pub fn validate(&self) -> Result<Subjects, JanitorError> {
        let subjects =
            Subjects::new(&self.subject_prefix).map_err(|e| JanitorError::Config(e.message))?;
        let nonzero = [
            ("heartbeat_interval", *self.heartbeat_interval),
            ("dead_after", *self.dead_after),
            ("scan_interval", *self.scan_interval),
            ("request_timeout", *self.request_timeout),
        ];
        for (name, d) in nonzero {
            if d.is_zero() {
                return Err(JanitorError::Config(format!(
                    "{name} must be longer than zero"
                )));
            }
        }
        if *self.dead_after <= *self.heartbeat_interval {
            return Err(JanitorError::Config(
                "dead_after must be longer than the heartbeat interval".into(),
            ));
        }
        Ok(subjects)
    }

    /// The timings of the pure core.
    pub fn timing(&self) -> Timing {
        Timing {
            max_lifetime_grace: *self.max_lifetime_grace,
            ..Timing::new(
                *self.heartbeat_interval,
                *self.dead_after,
                *self.ended_retention,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn clap_defaults_match_default() {
        let parsed = Config::try_parse_from(["janitor"]).unwrap();
        // The test process's environment could override; compare only
        // when none of the variables is set.
        const VARS: [&str; 8] = [
            "NATS_URL",
            "SUBJECT_PREFIX",
            "HEARTBEAT_INTERVAL",
            "DEAD_AFTER",
            "ENDED_RETENTION",
            "SCAN_INTERVAL",
            "MAX_LIFETIME_GRACE",
            "REQUEST_TIMEOUT",
        ];
        if VARS.iter().all(|v| std::env::var_os(v).is_none()) {
            assert_eq!(parsed, Config::default());
        }
    }

    #[test]
    fn durations_parse_with_humantime() {
        let c = Config::try_parse_from([
            "janitor",
            "--dead-after",
            "1500ms",
            "--ended-retention",
            "1h 5m",
        ])
        .unwrap();
        assert_eq!(*c.dead_after, Duration::from_millis(1500));
        assert_eq!(*c.ended_retention, Duration::from_secs(3900));
        assert!(Config::try_parse_from(["janitor", "--scan-interval", "soon"]).is_err());
    }

    #[test]
    fn validation_refuses_bad_settings() {
        assert!(Config::default().validate().is_ok());
        assert!(Config::for_tests("nats://x:1", "t1").validate().is_ok());
        let bad_prefix = Config {
            subject_prefix: "a..b".into(),
            ..Config::default()
        };
        assert!(matches!(
            bad_prefix.validate(),
            Err(JanitorError::Config(_))
        ));
        let too_eager = Config {
            dead_after: Duration::from_secs(1).into(),
            ..Config::default()
        };
        assert!(too_eager.validate().is_err());
        let zero_scan = Config {
            scan_interval: Duration::ZERO.into(),
            ..Config::default()
        };
        assert!(zero_scan.validate().is_err());
    }

    #[test]
    fn timing_derives_the_graces_from_the_heartbeat_interval() {
        let t = Config::default().timing();
        assert_eq!(t.fence_grace, Duration::from_secs(1));
        assert_eq!(t.missing_grace, Duration::from_secs(3));
        assert_eq!(t.max_lifetime_grace, Duration::from_secs(30));
        assert_eq!(t.dead_after, Duration::from_secs(3));
    }
}
