//! Worker settings, from flags and environment.

use std::time::Duration;

use bus_schema::{CreateSession, SessionSpec, Subjects, WireError, WorkerId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StorageKind {
    File,
    Memory,
}

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "worker",
    about = "Hosts live streaming sessions and fans them out to viewers"
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
    /// How long a session stays suspended (no media sent) after the worker
    /// lost NATS before it is stopped for good.
    #[arg(long, env = "MAX_SUSPENSION", default_value = "5m")]
    pub max_suspension: humantime::Duration,
    /// The most viewers one session takes.
    #[arg(long, env = "MAX_VIEWERS", default_value_t = 32)]
    pub max_viewers: u32,
    /// STUN/TURN servers handed to both sides, comma separated. TURN
    /// credentials go in the URL's user part: `turn:user:pass@host:3478`.
    #[arg(
        long,
        env = "ICE_SERVERS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub ice_servers: Vec<String>,
    /// Public IPs to advertise for this host (NAT 1:1), comma separated.
    #[arg(long, env = "PUBLIC_IPS", value_delimiter = ',')]
    pub public_ips: Vec<String>,
    /// One UDP port for every viewer (ICE UDP mux).
    #[arg(long, env = "UDP_PORT")]
    pub udp_port: Option<u16>,
    /// A UDP port range for viewers, `min-max`.
    #[arg(long, env = "UDP_PORT_RANGE")]
    pub udp_port_range: Option<String>,
    /// Threads sending on the one UDP port (`UDP_PORT`), each for its own
    /// share of the viewers; default: one per core, at most 4.
    #[arg(long, env = "UDP_SEND_THREADS")]
    pub udp_send_threads: Option<usize>,
    /// From how many viewers of a session an RTP source's video is held
    /// back until its frame ends, to send each viewer a frame in fewer,
    /// longer sends (`UDP_PORT` only; 0: never). Less CPU per viewer, up
    /// to 2 ms more delay for a frame's first packets.
    #[arg(long, env = "FANOUT_HOLD_FROM", default_value_t = crate::fanout::HOLD_FROM)]
    pub fanout_hold_from: usize,
    /// Threads the sessions' fan-outs run on (`UDP_PORT` only), a new
    /// session on the least loaded (fan-outs and viewers counted); default:
    /// one per core, at most 4.
    #[arg(long, env = "FANOUT_THREADS")]
    pub fanout_threads: Option<usize>,
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
            return Err(WireError::new(
                bus_schema::ErrorCode::InvalidRequest,
                "capacity must be at least 1",
            ));
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

    /// ICE settings for the WebRTC engine.
    pub fn rtc_settings(&self) -> Result<crate::rtc::RtcSettings, WireError> {
        let bad = |m: String| WireError::new(bus_schema::ErrorCode::InvalidRequest, m);
        let udp_port_range = match &self.udp_port_range {
            None => None,
            Some(r) => {
                let (lo, hi) = r
                    .split_once('-')
                    .and_then(|(a, b)| {
                        Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?))
                    })
                    .filter(|(a, b)| a <= b && *a > 0)
                    .ok_or_else(|| bad(format!("UDP_PORT_RANGE {r:?} is not min-max")))?;
                Some((lo, hi))
            }
        };
        // A thread count: 1 to `max`, by default one per core, at most 4.
        let threads = |name: &str, value: Option<usize>, max: usize| match value {
            Some(n) if (1..=max).contains(&n) => Ok(n),
            Some(n) => Err(bad(format!("{name} {n} is not 1 to {max}"))),
            None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get().min(4))),
        };
        let udp_send_threads = threads(
            "UDP_SEND_THREADS",
            self.udp_send_threads,
            crate::udp::MAX_SEND_THREADS,
        )?;
        let fanout_threads = threads(
            "FANOUT_THREADS",
            self.fanout_threads,
            crate::fanout::MAX_FANOUT_THREADS,
        )?;
        let ice_servers = self
            .ice_servers
            .iter()
            .filter(|u| !u.trim().is_empty())
            .map(|u| {
                parse_ice_server(u.trim())
                    .ok_or_else(|| bad(format!("ICE server {u:?} is not stun:/turn:/turns:")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(crate::rtc::RtcSettings {
            ice_servers,
            nat_1to1_ips: self
                .public_ips
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            udp_port: self.udp_port,
            udp_port_range,
            udp_send_threads,
            fanout_hold_from: self.fanout_hold_from,
            fanout_threads,
        })
    }

    /// The spec of a create, every default filled in.
    pub fn resolve(&self, req: &CreateSession) -> SessionSpec {
        let dur = |d: Duration| bus_schema::HumanDuration::new(d).expect("validated at startup");
        SessionSpec {
            source: req.source.clone(),
            idle_ttl: req.idle_ttl.unwrap_or_else(|| dur(*self.default_idle_ttl)),
            max_lifetime: req
                .max_lifetime
                .unwrap_or_else(|| dur(*self.default_max_lifetime)),
            on_worker_lost: req.on_worker_lost,
            labels: req.labels.clone(),
        }
    }
}

/// `stun:host:port`, or `turn:user:pass@host:port` with credentials.
fn parse_ice_server(u: &str) -> Option<bus_schema::IceServer> {
    let (scheme, rest) = u.split_once(':')?;
    if !matches!(scheme, "stun" | "turn" | "turns") || rest.is_empty() {
        return None;
    }
    match rest.rsplit_once('@') {
        Some((cred, host)) if scheme != "stun" => {
            let (user, pass) = cred.split_once(':')?;
            Some(bus_schema::IceServer {
                urls: vec![format!("{scheme}:{host}")],
                username: Some(user.to_string()),
                credential: Some(pass.to_string()),
            })
        }
        _ => Some(bus_schema::IceServer {
            urls: vec![u.to_string()],
            username: None,
            credential: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_servers_parse_with_and_without_credentials() {
        let s = parse_ice_server("turn:alice:s3cret@turn.example.com:3478").unwrap();
        assert_eq!(s.urls, ["turn:turn.example.com:3478"]);
        assert_eq!(s.username.as_deref(), Some("alice"));
        assert_eq!(s.credential.as_deref(), Some("s3cret"));
        let s = parse_ice_server("stun:stun.example.com:19302").unwrap();
        assert_eq!(s.username, None);
        assert!(parse_ice_server("http://x").is_none());
    }

    #[test]
    fn udp_port_range_is_checked() {
        let mut c = Config::for_tests("nats://x");
        c.udp_port_range = Some("40000-40100".into());
        assert_eq!(
            c.rtc_settings().unwrap().udp_port_range,
            Some((40000, 40100))
        );
        c.udp_port_range = Some("5-1".into());
        assert!(c.rtc_settings().is_err());
    }

    #[test]
    fn thread_counts_default_to_the_cores_and_bad_counts_are_refused() {
        type Set = fn(&mut Config, Option<usize>);
        type Get = fn(&crate::rtc::RtcSettings) -> usize;
        let settings: [(&str, Set, Get, usize); 2] = [
            (
                "UDP_SEND_THREADS",
                |c, n| c.udp_send_threads = n,
                |s| s.udp_send_threads,
                crate::udp::MAX_SEND_THREADS,
            ),
            (
                "FANOUT_THREADS",
                |c, n| c.fanout_threads = n,
                |s| s.fanout_threads,
                crate::fanout::MAX_FANOUT_THREADS,
            ),
        ];
        for (name, set, get, max) in settings {
            let mut c = Config::for_tests("nats://x");
            let n = get(&c.rtc_settings().unwrap());
            assert!((1..=4).contains(&n), "{name} {n}");
            set(&mut c, Some(3));
            assert_eq!(get(&c.rtc_settings().unwrap()), 3, "{name}");
            for bad in [0, max + 1] {
                set(&mut c, Some(bad));
                let e = c.rtc_settings().unwrap_err();
                assert!(e.message.contains(name), "{e:?}");
            }
        }
    }
}
