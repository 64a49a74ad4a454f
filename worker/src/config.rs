//! Worker settings, from flags and environment.

use std::time::Duration;

use bus_schema::{CreateSession, SessionSpec, Subjects, WireError, WorkerId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StorageKind {
    File,
    Memory,
}

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "worker", about = "Hosts live streaming sessions and fans them out to viewers")]
pub struct Config {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Prefix of every subject (and of the registry bucket's name).
    #[arg(long, env = "SUBJECT_PREFIX", default_value = bus_schema::subjects::DEFAULT_PREFIX)]
    pub subject_prefix: String,
    /// This worker's id; random when absent.
    #[arg(long, env = "WORKER_ID")]
    pub worker_id: Option<String>,
    /// The most sessions this worker runs at once.
    #[arg(long, env = "WORKER_CAPACITY", default_value_t = 8)]
    pub capacity: u32,
    /// How often the worker publishes its heartbeat.
    #[arg(long, env = "HEARTBEAT_INTERVAL", default_value = "1s")]
    pub heartbeat_interval: humantime::Duration,
    /// How long the worker keeps streaming without hearing its own heartbeat
    /// back from NATS. Must be shorter than the janitor's DEAD_AFTER.
    #[arg(long, env = "LEASE", default_value = "2s")]
    pub lease: humantime::Duration,
    /// Idle TTL for sessions created without one.
    #[arg(long, env = "DEFAULT_IDLE_TTL", default_value = "5m")]
    pub default_idle_ttl: humantime::Duration,
    /// Maximum lifetime for sessions created without one.
    #[arg(long, env = "DEFAULT_MAX_LIFETIME", default_value = "24h")]
    pub default_max_lifetime: humantime::Duration,
    /// Where the registry bucket keeps its data when this worker creates it.
    #[arg(long, env = "REGISTRY_STORAGE", value_enum, default_value = "file")]
    pub registry_storage: StorageKind,
}

impl Config {
    /// Defaults suited to tests: short intervals, memory storage.
    pub fn for_tests(nats_url: &str) -> Self {
        use clap::Parser;
        let mut c = Config::parse_from(["worker"]);
        c.nats_url = nats_url.to_string();
        c.heartbeat_interval = Duration::from_millis(250).into();
        c.lease = Duration::from_millis(600).into();
        c.registry_storage = StorageKind::Memory;
        c
    }

    pub fn validate(&self) -> Result<(Subjects, WorkerId), WireError> {
        let subjects = Subjects::new(&self.subject_prefix)?;
        let id = match &self.worker_id {
            Some(s) => WorkerId::parse(s.as_str())?,
            None => WorkerId::generate(),
        };
        if self.capacity == 0 {
            return Err(WireError::new(bus_schema::ErrorCode::InvalidRequest, "capacity must be at least 1"));
        }
        if *self.lease <= *self.heartbeat_interval {
            return Err(WireError::new(
                bus_schema::ErrorCode::InvalidDuration,
                "lease must be longer than the heartbeat interval",
            ));
        }
        bus_schema::HumanDuration::new(*self.default_idle_ttl)?;
        bus_schema::HumanDuration::new(*self.default_max_lifetime)?;
        Ok((subjects, id))
    }

    /// The spec of a create, every default filled in.
    pub fn resolve(&self, req: &CreateSession) -> SessionSpec {
        let dur = |d: Duration| bus_schema::HumanDuration::new(d).expect("validated at startup");
        SessionSpec {
            source: req.source.clone(),
            idle_ttl: req.idle_ttl.unwrap_or_else(|| dur(*self.default_idle_ttl)),
            max_lifetime: req.max_lifetime.unwrap_or_else(|| dur(*self.default_max_lifetime)),
            on_worker_lost: req.on_worker_lost,
            labels: req.labels.clone(),
        }
    }
}
