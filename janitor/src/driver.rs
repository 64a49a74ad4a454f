//! The async shell around [`Core`]: heartbeats in, registry snapshots in,
//! actions out.
//!
//! One task owns the core. It listens to heartbeats, polls the connection
//! state, and runs at most one piece of IO at a time (open the registry,
//! list it, or apply a plan) as a future it polls alongside the heartbeat
//! subscription, so heartbeats are timestamped as they arrive and shutdown
//! is never stuck behind a slow request: the in-flight work is dropped.
//! Dropping an apply half-way is safe: every registry write is a CAS, and
//! the next janitor scan repairs whatever is left.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use async_nats::connection::State;
use async_nats::jetstream;
use bus_schema::registry::{Registry, RegistryError, Storage, Versioned};
use bus_schema::{
    decode_record, AdoptSession, Bus, Fence, Heartbeat, SessionEvent, SessionEventKind, SessionId,
    SessionRecord, Subjects, Timestamp, WorkerLost,
};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::core::Core;
use crate::error::JanitorError;
use crate::liveness::Observed;
use crate::reconcile::{ended_record, reassigned_record, Action, Snapshot, Timing};

/// The longest a registry listing may take before the scan gives up.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one attempt to open the registry retries inside.
const OPEN_DEADLINE: Duration = Duration::from_secs(10);
/// How often the connection state is polled (at most).
const STATE_POLL: Duration = Duration::from_millis(250);
/// Actions applied at once.
const APPLY_CONCURRENCY: usize = 8;

/// Runs the janitor until `shutdown` resolves.
///
/// Subscribes to every worker's heartbeat, opens (or creates) the registry
/// bucket, and every `scan_interval` lists the registry, plans with the core
/// and applies the plan. NATS outages are survived: the client reconnects,
/// the janitor pauses reaping while disconnected and then listens for
/// `dead_after` again before it declares anyone dead.
pub async fn run(
    config: Config,
    client: async_nats::Client,
    shutdown: impl Future<Output = ()>,
) -> Result<(), JanitorError> {
    let subjects = config.validate()?;
    let timing = config.timing();
    let scan_interval = *config.scan_interval;
    let bus = Bus::new(client.clone(), subjects.clone()).with_timeout(*config.request_timeout);
    let mut heartbeats = client
        .subscribe(subjects.heartbeat_any())
        .await
        .map_err(JanitorError::Subscribe)?;
    let mut core = Core::new(Instant::now(), timing);
    info!(
        prefix = subjects.prefix(),
        dead_after = %humantime::format_duration(timing.dead_after),
        scan_interval = %humantime::format_duration(scan_interval),
        ended_retention = %humantime::format_duration(timing.ended_retention),
        "janitor listening to heartbeats"
    );

    tokio::pin!(shutdown);
    let mut scan = tokio::time::interval(scan_interval);
    scan.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut state_poll = tokio::time::interval(scan_interval.min(STATE_POLL));
    state_poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sight = Sight::default();
    let mut registry: Option<Registry> = None;
    let mut work: Option<BoxFuture<'static, Done>> = None;
    let mut open_streak = Streak::new("open the registry");
    let mut list_streak = Streak::new("list the registry");
    let mut apply_streak = Streak::new("apply actions to the registry");

    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            msg = heartbeats.next() => {
                let Some(msg) = msg else {
                    return Err(JanitorError::SubscriptionClosed);
                };
                on_heartbeat(&mut core, &subjects, &timing, &msg);
            }
            done = poll_work(&mut work) => {
                work = None;
                match done {
                    Done::Opened(opened) => match *opened {
                        Ok(r) => {
                            open_streak.ok();
                            info!(bucket = %subjects.registry_bucket(), "registry open");
                            registry = Some(r);
                        }
                        Err(e) => open_streak.fail(&e),
                    },
                    Done::Listed { read_at, result: Ok(entries) } => {
                        list_streak.ok();
                        // Silence heard while cut off from NATS means nothing.
                        let connected = client.connection_state() == State::Connected;
                        if !sight.update(connected, Instant::now(), &mut core) {
                            continue;
                        }
                        let snapshot = Snapshot { entries, read_at };
                        let plan = core.plan(Instant::now(), SystemTime::now(), &snapshot);
                        for w in &plan.newly_dead {
                            warn!(worker_id = %w, "worker declared dead: no heartbeat for dead_after");
                        }
                        if let (false, Some(reg)) = (plan.actions.is_empty(), &registry) {
                            debug!(actions = plan.actions.len(), "applying plan");
                            let applier = Applier {
                                registry: reg.clone(),
                                bus: bus.clone(),
                                records: snapshot
                                    .entries
                                    .into_iter()
                                    .map(|v| (v.record.id.clone(), v.record))
                                    .collect(),
                            };
                            work = Some(applier.apply(plan.actions).map(Done::Applied).boxed());
                        }
                    }
                    Done::Listed { result: Err(e), .. } => list_streak.fail(&e),
                    Done::Applied(report) => {
                        if report.failed > 0 {
                            apply_streak.fail(&report.first_failure.unwrap_or_default());
                        } else {
                            apply_streak.ok();
                        }
                        if report.won + report.lost_races > 0 {
                            debug!(won = report.won, lost_races = report.lost_races, "plan applied");
                        }
                    }
                }
            }
            _ = state_poll.tick() => {
                sight.update(client.connection_state() == State::Connected, Instant::now(), &mut core);
            }
            _ = scan.tick() => {
                let connected = sight.update(client.connection_state() == State::Connected, Instant::now(), &mut core);
                if !connected || work.is_some() {
                    continue;
                }
                work = Some(match &registry {
                    None => open(client.clone(), subjects.clone()).map(|r| Done::Opened(Box::new(r))).boxed(),
                    Some(reg) => list(reg.clone()).boxed(),
                });
            }
        }
    }
    info!("janitor stopped");
    Ok(())
}

/// The outcome of the one piece of IO in flight.
enum Done {
    /// Boxed: a registry handle is much larger than the other outcomes.
    Opened(Box<Result<Registry, RegistryError>>),
    Listed {
        read_at: Instant,
        result: Result<Vec<Versioned>, RegistryError>,
    },
    Applied(Report),
}

async fn poll_work(work: &mut Option<BoxFuture<'static, Done>>) -> Done {
    match work {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn open(client: async_nats::Client, subjects: Subjects) -> Result<Registry, RegistryError> {
    Registry::open_with_retry(
        &jetstream::new(client),
        &subjects,
        Storage::File,
        OPEN_DEADLINE,
    )
    .await
}

async fn list(registry: Registry) -> Done {
    let read_at = Instant::now();
    let result = match tokio::time::timeout(LIST_TIMEOUT, registry.list()).await {
        Ok(r) => r,
        Err(_) => Err(RegistryError::Unavailable("listing timed out".into())),
    };
    Done::Listed { read_at, result }
}

fn on_heartbeat(core: &mut Core, subjects: &Subjects, timing: &Timing, msg: &async_nats::Message) {
    let hb: Heartbeat = match decode_record(&msg.payload) {
        Ok(hb) => hb,
        Err(e) => {
            debug!(subject = %msg.subject, error = %e, "unreadable heartbeat ignored");
            return;
        }
    };
    if msg.subject.as_str() != subjects.heartbeat(&hb.worker).as_str() {
        debug!(subject = %msg.subject, worker_id = %hb.worker, "heartbeat on another worker's subject ignored");
        return;
    }
    match core.observe(Instant::now(), &hb) {
        Observed::New => {
            info!(
                worker_id = %hb.worker,
                capacity = hb.capacity,
                sessions = hb.sessions.len(),
                "worker seen"
            );
            if Duration::from_millis(hb.interval_ms).saturating_mul(2) > timing.dead_after {
                warn!(
                    worker_id = %hb.worker,
                    interval_ms = hb.interval_ms,
                    dead_after_ms = timing.dead_after.as_millis() as u64,
                    "worker heartbeat interval is too long for dead_after; it may be declared dead between heartbeats"
                );
            }
        }
        Observed::Revived => warn!(
            worker_id = %hb.worker,
            sessions = hb.sessions.len(),
            "worker declared dead heartbeats again; sessions handed off meanwhile will be fenced"
        ),
        Observed::Alive => {}
    }
}

/// Whether the janitor can hear heartbeats. While NATS is unreachable it
/// cannot, so silence means nothing: when the connection is back, the core
/// listens for `dead_after` again before it declares anyone dead.
#[derive(Debug, Default)]
struct Sight {
    blind: bool,
}

impl Sight {
    /// Records the connection state; returns whether it is connected.
    fn update(&mut self, connected: bool, now: Instant, core: &mut Core) -> bool {
        match (connected, self.blind) {
            (false, false) => {
                warn!("lost NATS; reaping paused until it is back");
                self.blind = true;
            }
            (true, true) => {
                self.blind = false;
                core.rebase(now);
                info!(
                    dead_after = %humantime::format_duration(core.timing().dead_after),
                    "NATS is back; listening to heartbeats for dead_after before declaring anyone dead"
                );
            }
            _ => {}
        }
        connected
    }
}

/// Logs a failing operation once per failure streak, and its recovery.
struct Streak {
    what: &'static str,
    failures: u64,
}

impl Streak {
    fn new(what: &'static str) -> Self {
        Self { what, failures: 0 }
    }

    fn fail(&mut self, error: &dyn Display) {
        self.failures += 1;
        if self.failures == 1 {
            warn!(operation = self.what, error = %error, "failed; retrying every scan");
        } else {
            debug!(operation = self.what, error = %error, failures = self.failures, "still failing");
        }
    }

    fn ok(&mut self) {
        if self.failures > 0 {
            info!(operation = self.what, failures = self.failures, "recovered");
        }
        self.failures = 0;
    }
}

/// What applying one plan did.
#[derive(Debug, Default)]
struct Report {
    /// Registry writes this janitor won.
    won: usize,
    /// Registry writes another writer got to first (skipped).
    lost_races: usize,
    /// Registry writes that failed for another reason (retried next scan).
    failed: usize,
    first_failure: Option<String>,
}

enum Outcome {
    /// This janitor's CAS won for this session.
    Won(SessionId),
    LostRace,
    Failed(String),
    /// Not a registry write (fence).
    Sent,
}

/// Everything one plan's application needs; owned, so the future is
/// `'static` and can be dropped at shutdown.
struct Applier {
    registry: Registry,
    bus: Bus,
    /// The snapshot the plan was made from.
    records: HashMap<SessionId, SessionRecord>,
}

impl Applier {
    async fn apply(self, actions: Vec<Action>) -> Report {
        let (announcements, actions): (Vec<_>, Vec<_>) = actions
            .into_iter()
            .partition(|a| matches!(a, Action::AnnounceLost { .. }));
        let outcomes: Vec<Outcome> = futures::stream::iter(actions)
            .map(|a| self.apply_one(a))
            .buffer_unordered(APPLY_CONCURRENCY)
            .collect()
            .await;

        let mut report = Report::default();
        let mut won = BTreeSet::new();
        for o in outcomes {
            match o {
                Outcome::Won(id) => {
                    report.won += 1;
                    won.insert(id);
                }
                Outcome::LostRace => report.lost_races += 1,
                Outcome::Failed(e) => {
                    report.failed += 1;
                    report.first_failure.get_or_insert(e);
                }
                Outcome::Sent => {}
            }
        }
        for a in announcements {
            if let Action::AnnounceLost {
                worker,
                last_seen,
                sessions,
            } = a
            {
                let reaped: Vec<SessionId> = sessions
                    .iter()
                    .filter(|id| won.contains(*id))
                    .cloned()
                    .collect();
                // Several janitors: only one that won a CAS for this worker
                // announces it (or any, for a worker that held nothing).
                if !sessions.is_empty() && reaped.is_empty() {
                    continue;
                }
                warn!(worker_id = %worker, sessions = reaped.len(), "worker lost");
                let event = WorkerLost {
                    worker: worker.clone(),
                    last_seen,
                    sessions: reaped,
                    at: Timestamp::from_system(SystemTime::now()),
                };
                if let Err(e) = self
                    .bus
                    .publish(&self.bus.subjects.event_worker_lost(&worker), &event)
                    .await
                {
                    warn!(worker_id = %worker, error = %e, "worker lost event not published");
                }
            }
        }
        report
    }

    async fn apply_one(&self, action: Action) -> Outcome {
        match action {
            Action::Reassign {
                id,
                from,
                to,
                expected_revision,
                new_epoch,
                detail,
            } => {
                let Some(record) = self.records.get(&id) else {
                    return Outcome::Failed(format!("session {id} is not in the snapshot"));
                };
                let wall = SystemTime::now();
                let moved = reassigned_record(record, &to, new_epoch, wall);
                match self.registry.update(&moved, expected_revision).await {
                    Ok(_) => {}
                    Err(e) => return self.write_failed(&id, e),
                }
                info!(session_id = %id, from = %from, worker_id = %to, epoch = new_epoch, %detail, "session moved");
                let event = SessionEvent {
                    id: id.clone(),
                    kind: SessionEventKind::Moved,
                    worker: to.clone(),
                    epoch: new_epoch,
                    at: Timestamp::from_system(wall),
                    reason: None,
                    detail: Some(detail),
                    peer: None,
                    viewers: None,
                };
                self.publish_event(&event).await;
                let subject = self.bus.subjects.worker_adopt(&to, &id);
                match self
                    .bus
                    .request(&subject, &AdoptSession { epoch: new_epoch })
                    .await
                {
                    Ok(info) => {
                        info!(session_id = %id, worker_id = %to, epoch = new_epoch, state = ?info.record.state, "session adopted")
                    }
                    Err(e) => warn!(
                        session_id = %id,
                        worker_id = %to,
                        epoch = new_epoch,
                        error = %e,
                        "adopt failed; later scans restart or end the session"
                    ),
                }
                Outcome::Won(id)
            }
            Action::End {
                id,
                owner,
                epoch,
                reason,
                detail,
                expected_revision,
            } => {
                let Some(record) = self.records.get(&id) else {
                    return Outcome::Failed(format!("session {id} is not in the snapshot"));
                };
                let wall = SystemTime::now();
                let ended = ended_record(record, reason, &detail, wall);
                if let Err(e) = self.registry.update(&ended, expected_revision).await {
                    return self.write_failed(&id, e);
                }
                info!(session_id = %id, worker_id = %owner, epoch, reason = reason.as_str(), %detail, "session ended");
                let event = SessionEvent {
                    id: id.clone(),
                    kind: SessionEventKind::Ended,
                    worker: owner,
                    epoch,
                    at: Timestamp::from_system(wall),
                    reason: Some(reason),
                    detail: Some(detail),
                    peer: None,
                    viewers: None,
                };
                self.publish_event(&event).await;
                Outcome::Won(id)
            }
            Action::Fence { worker, id, epoch } => {
                let subject = self.bus.subjects.worker_fence(&worker, &id);
                match self.bus.request(&subject, &Fence { epoch }).await {
                    Ok(_) => {
                        info!(session_id = %id, worker_id = %worker, epoch, "stale copy fenced")
                    }
                    Err(e) => {
                        warn!(session_id = %id, worker_id = %worker, epoch, error = %e, "fence failed; retried while the worker still lists the session")
                    }
                }
                Outcome::Sent
            }
            Action::Purge {
                id,
                expected_revision,
            } => match self.registry.delete(&id, expected_revision).await {
                Ok(()) => {
                    debug!(session_id = %id, "ended session purged");
                    Outcome::Won(id)
                }
                Err(e) => self.write_failed(&id, e),
            },
            Action::AnnounceLost { .. } => Outcome::Sent,
        }
    }

    fn write_failed(&self, id: &SessionId, e: RegistryError) -> Outcome {
        match e {
            RegistryError::Conflict => {
                debug!(session_id = %id, "registry entry changed since the scan; skipped");
                Outcome::LostRace
            }
            e => {
                debug!(session_id = %id, error = %e, "registry write failed; retried next scan");
                Outcome::Failed(e.to_string())
            }
        }
    }

    async fn publish_event(&self, event: &SessionEvent) {
        let subject = self.bus.subjects.event_session(&event.id, event.kind);
        if let Err(e) = self.bus.publish(&subject, event).await {
            warn!(session_id = %event.id, error = %e, "session event not published");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::Timing;
    use crate::testkit::*;

    #[test]
    fn losing_nats_pauses_and_regaining_it_restarts_the_grace() {
        let t0 = Instant::now();
        let mut core = Core::new(t0, Timing::new(secs(1), secs(3), secs(60)));
        let mut sight = Sight::default();
        assert!(sight.update(true, t0 + secs(5), &mut core));
        assert!(!core.liveness().in_startup_grace(t0 + secs(5)));
        assert!(!sight.update(false, t0 + secs(6), &mut core));
        assert!(!sight.update(false, t0 + secs(7), &mut core));
        assert!(sight.update(true, t0 + secs(20), &mut core));
        assert!(core.liveness().in_startup_grace(t0 + secs(22)));
        assert!(!core.liveness().in_startup_grace(t0 + secs(23)));
        // Staying connected does not rebase again.
        assert!(sight.update(true, t0 + secs(30), &mut core));
        assert!(!core.liveness().in_startup_grace(t0 + secs(30)));
    }

    #[test]
    fn a_streak_counts_failures_until_success() {
        let mut s = Streak::new("test");
        s.fail(&"boom");
        s.fail(&"boom");
        assert_eq!(s.failures, 2);
        s.ok();
        assert_eq!(s.failures, 0);
    }
}
