//! # worker: hosts live sessions
//!
//! A worker registers as a NATS micro service, answers session commands
//! (any worker answers cluster-wide commands through a queue group and
//! forwards to the owner when needed), runs one task per session
//! ([`session::Session`]) and publishes heartbeats that double as its lease.
//! The logic with state lives in [`core`] as plain structs.

pub mod config;
pub mod core;
pub mod fanout;
pub mod heartbeat;
pub mod input_state;
pub mod rtc;
pub mod service;
pub mod session;
pub mod source;
pub mod srtp_out;
pub mod udp;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_schema::registry::{Registry, Storage};
use bus_schema::{Bus, SessionId, Subjects, WorkerId};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

use crate::core::{Cluster, Directory, Lease};
use crate::session::SessionHandle;
use crate::source::SourceFactory;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid configuration: {0}")]
    Config(#[from] bus_schema::WireError),
    #[error("registry: {0}")]
    Registry(#[from] bus_schema::registry::RegistryError),
    /// The NATS URL is invalid (an unreachable server is retried, not an
    /// error).
    #[error("NATS: {0}")]
    Connect(#[from] bus_schema::connect::ConnectError),
    /// The NATS micro service or one of its endpoints could not start.
    #[error("NATS service: {0}")]
    Service(#[source] async_nats::Error),
    #[error("NATS subscribe: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error("WebRTC: {0}")]
    Rtc(#[from] rtc::RtcError),
}

/// What every task of the worker shares. The pure cores sit behind short
/// synchronous locks that are never held across an `.await`.
pub struct Ctx {
    pub me: WorkerId,
    pub config: Config,
    pub bus: Bus,
    pub registry: Registry,
    pub factory: Arc<dyn SourceFactory>,
    pub engine: rtc::Engine,
    pub dir: Mutex<Directory<SessionHandle>>,
    pub cluster: Mutex<Cluster>,
    pub lease: Mutex<Lease>,
    /// The lease's deadline for media writers.
    pub lease_gate: Arc<crate::core::LeaseGate>,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
    /// How long a session stays suspended after the lease ran out.
    pub lease_lost_retry: Duration,
    /// The last heartbeat's sequence number.
    pub heartbeat_seq: std::sync::atomic::AtomicU64,
}

impl Ctx {
    pub fn remove(&self, id: &SessionId, epoch: u64) {
        self.dir.lock().expect("directory lock").remove(id, epoch);
    }
}

/// Connects to NATS (credentials in the URL are honoured, never logged).
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, WorkerError> {
    bus_schema::connect::connect(url, name)
        .await
        .map_err(WorkerError::Connect)
}

/// Runs a worker until `shutdown` resolves, then ends its sessions with
/// `worker_shutdown` and returns.
pub async fn run(
    config: Config,
    client: async_nats::Client,
    factory: Arc<dyn SourceFactory>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let (subjects, me) = config.validate()?;
    let js = async_nats::jetstream::new(client.clone());
    let storage = match config.registry_storage {
        config::StorageKind::File => Storage::File,
        config::StorageKind::Memory => Storage::Memory,
    };
    let registry =
        Registry::open_with_retry(&js, &subjects, storage, Duration::from_secs(30)).await?;
    let interval = *config.heartbeat_interval;
    let engine = rtc::Engine::new(&config.rtc_settings()?).await?;
    let now = Instant::now();
    let ctx = Arc::new(Ctx {
        me: me.clone(),
        bus: Bus::new(client.clone(), subjects.clone()),
        registry,
        factory,
        engine,
        dir: Mutex::new(Directory::new(config.capacity)),
        cluster: Mutex::new(Cluster::new(me.clone(), interval * 3)),
        lease: Mutex::new(Lease::new(now, *config.lease)),
        lease_gate: Arc::new(crate::core::LeaseGate::new(now, now + *config.lease)),
        cancel: CancellationToken::new(),
        tracker: TaskTracker::new(),
        lease_lost_retry: *config.max_suspension,
        heartbeat_seq: std::sync::atomic::AtomicU64::new(0),
        config,
    });
    tracing::info!(worker_id = %me, capacity = ctx.config.capacity, prefix = subjects.prefix(), "worker starting");

    let service = service::start(ctx.clone()).await?;
    heartbeat::start(ctx.clone()).await?;
    tracing::info!(worker_id = %me, "worker ready");

    shutdown.await;
    tracing::info!(worker_id = %me, "worker shutting down");
    drain(&ctx).await;
    let _ = service.stop().await;
    ctx.cancel.cancel();
    ctx.tracker.close();
    if tokio::time::timeout(Duration::from_secs(3), ctx.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(worker_id = %me, "tasks still running at exit");
    }
    // With NATS unreachable these would wait forever; the exit must not.
    let last_words = async {
        heartbeat::publish_final(&ctx).await;
        let _ = client.flush().await;
    };
    if tokio::time::timeout(Duration::from_secs(1), last_words)
        .await
        .is_err()
    {
        tracing::warn!(worker_id = %me, "final heartbeat not delivered: NATS unreachable");
    }
    tracing::info!(worker_id = %me, "worker stopped");
    Ok(())
}

/// Stops taking sessions and ends every running one with `worker_shutdown`.
async fn drain(ctx: &Arc<Ctx>) {
    let running = {
        let mut dir = ctx.dir.lock().expect("directory lock");
        dir.start_draining();
        dir.running()
    };
    let ends = running.into_iter().map(|(_, _, h)| async move {
        let _ = h.ask(session::Cmd::Shutdown).await;
    });
    if tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(ends))
        .await
        .is_err()
    {
        tracing::warn!("some sessions did not end within 5 s");
    }
}

/// The subjects of a config, for tests and tools.
pub fn subjects(config: &Config) -> Result<Subjects, WorkerError> {
    Ok(config.validate()?.0)
}
