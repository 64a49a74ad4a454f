//! The reconciler: compares the registry with what workers report and says
//! what to repair.
//!
//! [`Reconciler::plan`] takes `now`, the wall clock (only for record ages),
//! the [`Liveness`] table and a registry [`Snapshot`], and returns
//! [`Action`]s. It does no IO. Every action names the registry revision it
//! was planned from; the driver applies it as a compare-and-set, so a plan
//! made from stale data, or made by a second janitor at the same time, loses
//! the CAS and does nothing.
//!
//! The rules, in the order they are checked for each registry entry:
//!
//! 1. `Ended` for `ended_retention` → [`Action::Purge`].
//! 2. Not ended and older than `max_lifetime + max_lifetime_grace` (wall
//!    clock, a coarse backstop: the owner normally ends it itself) →
//!    [`Action::End`] `max_lifetime`.
//! 3. Owner declared dead (after the startup grace), or owner never heard of
//!    for `dead_after` since the entry was first seen (after the startup
//!    grace) → the session is lost.
//! 4. Owner alive but its heartbeats do not list the session under the
//!    entry's epoch for `missing_grace` and at least 2 heartbeats → lost.
//!
//! A lost session is restarted ([`Action::Reassign`]) when its spec says
//! `restart`, its lifetime is not over and a live worker other than the
//! owner has room, or else, for a session its live owner does not report
//! (rule 4: e.g. a janitor died between moving it and asking for the
//! adopt), that owner itself under the next epoch; otherwise it ends
//! ([`Action::End`] `worker_lost`).
//!
//! And for each live worker's latest heartbeat received before the snapshot
//! was read: a listed `(session, epoch)` that the registry does not give to
//! that worker (missing, other owner, other epoch, ended) in 2 heartbeats
//! spanning `fence_grace` → [`Action::Fence`]. A worker writes the registry
//! before it starts a session, so such a listing is stale; comparing only
//! heartbeats older than the snapshot rules out the race with a create.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime};

use bus_schema::registry::Versioned;
use bus_schema::{
    EndReason, Ended, OnWorkerLost, SessionId, SessionRecord, SessionState, Timestamp, WorkerId,
};

use crate::liveness::{least_loaded, Liveness, WorkerStatus};

/// Default slack on top of a session's max lifetime before the janitor ends
/// it itself (the owner's clock and the janitor's may differ).
pub const DEFAULT_MAX_LIFETIME_GRACE: Duration = Duration::from_secs(30);

/// The timings the rules use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The workers' heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Silence after which a worker is dead; also the startup grace.
    pub dead_after: Duration,
    /// How long ended entries stay in the registry.
    pub ended_retention: Duration,
    /// How long a heartbeat must keep listing a session the registry does
    /// not give that worker before it is fenced (and 2 heartbeats at least).
    pub fence_grace: Duration,
    /// How long a live owner may leave a session out of its heartbeats
    /// (and 2 heartbeats at least).
    pub missing_grace: Duration,
    /// Slack over a session's max lifetime before the backstop ends it.
    pub max_lifetime_grace: Duration,
}

impl Timing {
    /// Defaults for the graces: fence after one heartbeat interval, missing
    /// after three, max lifetime backstop after 30 s.
    pub fn new(
        heartbeat_interval: Duration,
        dead_after: Duration,
        ended_retention: Duration,
    ) -> Self {
        Self {
            heartbeat_interval,
            dead_after,
            ended_retention,
            fence_grace: heartbeat_interval,
            missing_grace: heartbeat_interval.saturating_mul(3),
            max_lifetime_grace: DEFAULT_MAX_LIFETIME_GRACE,
        }
    }
}

/// The registry as read by one `list()`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub entries: Vec<Versioned>,
    /// When the read started. Heartbeats received before this are compared
    /// with the entries; later ones wait for the next snapshot.
    pub read_at: Instant,
}

/// What the driver should do. Registry actions carry the revision they were
/// planned from and are applied as compare-and-set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Give the session to `to` under `new_epoch`, state `starting`, then ask
    /// `to` to adopt it.
    Reassign {
        id: SessionId,
        from: WorkerId,
        to: WorkerId,
        expected_revision: u64,
        new_epoch: u64,
        detail: String,
    },
    /// Write the entry `ended` with `reason`.
    End {
        id: SessionId,
        owner: WorkerId,
        epoch: u64,
        reason: EndReason,
        detail: String,
        expected_revision: u64,
    },
    /// Tell `worker` to stop its copy of `id` if it runs it under an epoch
    /// `<= epoch`.
    Fence {
        worker: WorkerId,
        id: SessionId,
        epoch: u64,
    },
    /// Delete an ended entry whose retention is over.
    Purge {
        id: SessionId,
        expected_revision: u64,
    },
    /// Publish `event.worker.<id>.lost`, listing those of `sessions` whose
    /// `End`/`Reassign` in this plan won the CAS. Published when at least
    /// one did, or when `sessions` is empty (a dead worker that held
    /// nothing). Comes after the session actions of the same plan.
    AnnounceLost {
        worker: WorkerId,
        last_seen: Timestamp,
        sessions: Vec<SessionId>,
    },
}

impl Action {
    /// The session the action is about, if any.
    pub fn session(&self) -> Option<&SessionId> {
        match self {
            Action::Reassign { id, .. }
            | Action::End { id, .. }
            | Action::Fence { id, .. }
            | Action::Purge { id, .. } => Some(id),
            Action::AnnounceLost { .. } => None,
        }
    }
}

/// Why a session is considered lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lost {
    OwnerDead,
    OwnerUnknown,
    NotReported,
}

impl Lost {
    fn describe(self, owner: &WorkerId) -> String {
        match self {
            Lost::OwnerDead => format!("worker {owner} stopped heartbeating"),
            Lost::OwnerUnknown => {
                format!("worker {owner} has not heartbeated since the janitor started")
            }
            Lost::NotReported => {
                format!("worker {owner} does not report the session in its heartbeats")
            }
        }
    }
}

/// When a condition was first seen, and how many heartbeats of the worker
/// concerned had arrived by then.
#[derive(Debug, Clone, Copy)]
struct Mark {
    since: Instant,
    beats: u64,
}

/// A heartbeat listing the registry contradicts: when it was first seen (or
/// last fenced), and whether a fence was already sent.
#[derive(Debug, Clone, Copy)]
struct StaleMark {
    mark: Mark,
    fenced: bool,
}

type EntryKey = (SessionId, WorkerId, u64);
type HeldKey = (WorkerId, SessionId, u64);

/// The rules, with the little memory they need between scans (when each
/// suspicious condition was first seen). One owner: the driver task.
#[derive(Debug, Clone)]
pub struct Reconciler {
    timing: Timing,
    /// Entries whose live owner does not list them.
    missing: BTreeMap<EntryKey, Mark>,
    /// Entries whose owner this janitor has never heard of.
    unknown: BTreeMap<EntryKey, Instant>,
    /// Heartbeat listings the registry contradicts.
    stale: BTreeMap<HeldKey, StaleMark>,
    /// Workers declared dead, not announced yet.
    to_announce: BTreeSet<WorkerId>,
    /// Workers whose loss was announced (or deliberately not).
    announced: BTreeSet<WorkerId>,
}

impl Reconciler {
    pub fn new(timing: Timing) -> Self {
        Self {
            timing,
            missing: BTreeMap::new(),
            unknown: BTreeMap::new(),
            stale: BTreeMap::new(),
            to_announce: BTreeSet::new(),
            announced: BTreeSet::new(),
        }
    }

    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// [`Liveness::tick`] declared `worker` dead: announce it in the next plan.
    pub fn worker_died(&mut self, worker: WorkerId) {
        self.announced.remove(&worker);
        self.to_announce.insert(worker);
    }

    /// The actions that repair `snapshot`, in order: session actions, fences,
    /// purges, announcements. Deterministic: the same inputs give the same
    /// actions.
    pub fn plan(
        &mut self,
        now: Instant,
        wall: SystemTime,
        liveness: &Liveness,
        snapshot: &Snapshot,
    ) -> Vec<Action> {
        let in_grace = liveness.in_startup_grace(now);
        let mut owned: BTreeMap<WorkerId, u32> = BTreeMap::new();
        for v in &snapshot.entries {
            if v.record.state != SessionState::Ended {
                *owned.entry(v.record.owner.clone()).or_default() += 1;
            }
        }
        let mut placement = Placement {
            now,
            liveness,
            owned: &owned,
            placed: BTreeMap::new(),
        };

        let mut session_actions = Vec::new();
        let mut purges = Vec::new();
        let mut reaped: BTreeMap<WorkerId, Vec<SessionId>> = BTreeMap::new();
        let mut missing = BTreeMap::new();
        let mut unknown = BTreeMap::new();

        for v in &snapshot.entries {
            let r = &v.record;
            if r.state == SessionState::Ended {
                let ended_at = r.ended.as_ref().map_or(r.updated_at, |e| e.at);
                if ended_at.age(wall) >= self.timing.ended_retention {
                    purges.push(Action::Purge {
                        id: r.id.clone(),
                        expected_revision: v.revision,
                    });
                }
                continue;
            }
            let lifetime = r.spec.max_lifetime.get();
            if r.created_at.age(wall) >= lifetime.saturating_add(self.timing.max_lifetime_grace) {
                session_actions.push(end(
                    v,
                    EndReason::MaxLifetime,
                    "max lifetime exceeded (janitor backstop)".into(),
                ));
                continue;
            }
            let key = (r.id.clone(), r.owner.clone(), r.epoch);
            let lost = match liveness.status(&r.owner) {
                WorkerStatus::Alive => {
                    let Some(seen) = liveness.seen(&r.owner) else {
                        continue;
                    };
                    let reported = seen
                        .heartbeat
                        .sessions
                        .iter()
                        .any(|h| h.id == r.id && h.epoch == r.epoch);
                    if reported {
                        continue;
                    }
                    let mark = self.missing.get(&key).copied().unwrap_or(Mark {
                        since: now,
                        beats: seen.beats,
                    });
                    missing.insert(key, mark);
                    let grace = self
                        .timing
                        .missing_grace
                        .max(interval_of(&seen.heartbeat).saturating_mul(3));
                    if now.saturating_duration_since(mark.since) < grace
                        || seen.beats < mark.beats + 2
                    {
                        continue;
                    }
                    Lost::NotReported
                }
                WorkerStatus::Dead => {
                    if in_grace {
                        continue;
                    }
                    Lost::OwnerDead
                }
                WorkerStatus::Unknown => {
                    let since = self.unknown.get(&key).copied().unwrap_or(now);
                    unknown.insert(key, since);
                    if in_grace || now.saturating_duration_since(since) < self.timing.dead_after {
                        continue;
                    }
                    Lost::OwnerUnknown
                }
            };
            if lost != Lost::NotReported {
                reaped
                    .entry(r.owner.clone())
                    .or_default()
                    .push(r.id.clone());
            }
            session_actions.push(self.lose(v, lost, wall, &mut placement));
        }
        self.missing = missing;
        self.unknown = unknown;

        let fences = self.fences(now, liveness, snapshot);
        let announcements = self.announcements(liveness, snapshot, &owned, reaped);

        let mut actions = session_actions;
        actions.extend(fences);
        actions.extend(purges);
        actions.extend(announcements);
        actions
    }

    /// Restart elsewhere or end.
    fn lose(
        &self,
        v: &Versioned,
        lost: Lost,
        wall: SystemTime,
        placement: &mut Placement<'_>,
    ) -> Action {
        let r = &v.record;
        let cause = lost.describe(&r.owner);
        if r.spec.on_worker_lost == OnWorkerLost::Restart {
            if r.created_at.age(wall) >= r.spec.max_lifetime.get() {
                return end(
                    v,
                    EndReason::MaxLifetime,
                    format!("{cause}; max lifetime reached, not restarted"),
                );
            }
            let to = placement.place(&r.owner).or_else(|| {
                (lost == Lost::NotReported)
                    .then(|| placement.place_on_owner(&r.owner))
                    .flatten()
            });
            match to {
                Some(to) => {
                    return Action::Reassign {
                        id: r.id.clone(),
                        from: r.owner.clone(),
                        detail: format!("{cause}; restarted on {to}"),
                        to,
                        expected_revision: v.revision,
                        new_epoch: r.epoch.saturating_add(1),
                    }
                }
                None => {
                    return end(
                        v,
                        EndReason::WorkerLost,
                        format!("{cause}; no live worker has room to restart it"),
                    );
                }
            }
        }
        end(v, EndReason::WorkerLost, cause)
    }

    fn fences(&mut self, now: Instant, liveness: &Liveness, snapshot: &Snapshot) -> Vec<Action> {
        let records: HashMap<&SessionId, &SessionRecord> = snapshot
            .entries
            .iter()
            .map(|v| (&v.record.id, &v.record))
            .collect();
        let mut fences = Vec::new();
        let mut stale = BTreeMap::new();
        for (worker, seen) in liveness.alive() {
            if seen.received_at >= snapshot.read_at {
                // Newer than the snapshot: judged next time; keep its marks.
                stale.extend(
                    self.stale
                        .iter()
                        .filter(|((w, _, _), _)| w == worker)
                        .map(|(k, m)| (k.clone(), *m)),
                );
                continue;
            }
            for held in &seen.heartbeat.sessions {
                let contradicted = match records.get(&held.id) {
                    None => true,
                    Some(r) => {
                        r.owner != *worker
                            || r.epoch != held.epoch
                            || r.state == SessionState::Ended
                    }
                };
                if !contradicted {
                    continue;
                }
                let key = (worker.clone(), held.id.clone(), held.epoch);
                let entry = self.stale.get(&key).copied().unwrap_or(StaleMark {
                    mark: Mark {
                        since: now,
                        beats: seen.beats,
                    },
                    fenced: false,
                });
                let grace = self.timing.fence_grace.max(interval_of(&seen.heartbeat));
                // A second heartbeat that lists it; after a fence, a heartbeat
                // sent after the fence arrived (the one in flight does not count).
                let beats_needed = if entry.fenced { 2 } else { 1 };
                if now.saturating_duration_since(entry.mark.since) >= grace
                    && seen.beats >= entry.mark.beats + beats_needed
                {
                    fences.push(Action::Fence {
                        worker: worker.clone(),
                        id: held.id.clone(),
                        epoch: held.epoch,
                    });
                    stale.insert(
                        key,
                        StaleMark {
                            mark: Mark {
                                since: now,
                                beats: seen.beats,
                            },
                            fenced: true,
                        },
                    );
                } else {
                    stale.insert(key, entry);
                }
            }
        }
        self.stale = stale;
        fences
    }

    /// One `AnnounceLost` per worker death, from the janitor that reaps its
    /// sessions (the driver publishes only if it won a CAS), or, for a dead
    /// worker that held nothing, from whichever janitor declares it.
    fn announcements(
        &mut self,
        liveness: &Liveness,
        snapshot: &Snapshot,
        owned: &BTreeMap<WorkerId, u32>,
        mut reaped: BTreeMap<WorkerId, Vec<SessionId>>,
    ) -> Vec<Action> {
        // Forget announcements of workers that came back or left no trace,
        // so that the memory stays bounded and a second death is announced.
        self.announced
            .retain(|w| liveness.status(w) == WorkerStatus::Dead || owned.contains_key(w));
        let mut candidates: BTreeSet<WorkerId> = std::mem::take(&mut self.to_announce);
        candidates.extend(reaped.keys().cloned());
        let mut out = Vec::new();
        for worker in candidates {
            if liveness.is_alive(&worker) || self.announced.contains(&worker) {
                continue;
            }
            self.announced.insert(worker.clone());
            let sessions = reaped.remove(&worker).unwrap_or_default();
            let seen = liveness.seen(&worker);
            if sessions.is_empty() {
                // Nothing of it left in the registry. Announce only if its
                // last heartbeat held nothing either and it was not leaving:
                // otherwise another janitor reaped its sessions (and
                // announced), or it shut down cleanly.
                match seen {
                    Some(s) if s.heartbeat.sessions.is_empty() && !s.heartbeat.draining => {}
                    _ => continue,
                }
            }
            let last_seen = match seen {
                Some(s) => s.heartbeat.sent_at,
                // Never heard: its newest registry write is the best guess.
                None => snapshot
                    .entries
                    .iter()
                    .filter(|v| v.record.owner == worker)
                    .map(|v| v.record.updated_at)
                    .max()
                    .unwrap_or_else(|| Timestamp::from_system(SystemTime::UNIX_EPOCH)),
            };
            out.push(Action::AnnounceLost {
                worker,
                last_seen,
                sessions,
            });
        }
        out
    }
}

fn interval_of(hb: &bus_schema::Heartbeat) -> Duration {
    Duration::from_millis(hb.interval_ms)
}

fn end(v: &Versioned, reason: EndReason, detail: String) -> Action {
    Action::End {
        id: v.record.id.clone(),
        owner: v.record.owner.clone(),
        epoch: v.record.epoch,
        reason,
        detail,
        expected_revision: v.revision,
    }
}

/// Restart placement within one plan: heartbeats, corrected by what the
/// registry says each worker owns and by what this plan already placed.
struct Placement<'a> {
    now: Instant,
    liveness: &'a Liveness,
    owned: &'a BTreeMap<WorkerId, u32>,
    placed: BTreeMap<WorkerId, u32>,
}

impl Placement<'_> {
    fn place(&mut self, exclude: &WorkerId) -> Option<WorkerId> {
        let mut candidates = self.liveness.candidates(exclude, self.now);
        for c in &mut candidates {
            let owned = self.owned.get(&c.worker).copied().unwrap_or(0);
            let placed = self.placed.get(&c.worker).copied().unwrap_or(0);
            c.load = c.load.max(owned).saturating_add(placed);
        }
        let to = least_loaded(&candidates)?.worker.clone();
        *self.placed.entry(to.clone()).or_default() += 1;
        Some(to)
    }

    /// The live, not draining owner of a session it does not run, if it
    /// has room. The registry's count of what it owns includes that
    /// session, which takes no slot there.
    fn place_on_owner(&mut self, owner: &WorkerId) -> Option<WorkerId> {
        let (_, seen) = self.liveness.alive().find(|(w, _)| *w == owner)?;
        if seen.heartbeat.draining {
            return None;
        }
        let owned = self.owned.get(owner).copied().unwrap_or(0);
        let placed = self.placed.get(owner).copied().unwrap_or(0);
        let reported = u32::try_from(seen.heartbeat.sessions.len()).unwrap_or(u32::MAX);
        let load = reported.max(owned.saturating_sub(1)).saturating_add(placed);
        if load >= seen.heartbeat.capacity {
            return None;
        }
        *self.placed.entry(owner.clone()).or_default() += 1;
        Some(owner.clone())
    }
}

/// The record a `Reassign` writes: owner `to`, `new_epoch`, state starting.
pub fn reassigned_record(
    r: &SessionRecord,
    to: &WorkerId,
    new_epoch: u64,
    wall: SystemTime,
) -> SessionRecord {
    SessionRecord {
        owner: to.clone(),
        epoch: new_epoch,
        state: SessionState::Starting,
        updated_at: Timestamp::from_system(wall),
        live_at: None,
        ended: None,
        viewers: 0,
        ..r.clone()
    }
}

/// The record an `End` writes.
pub fn ended_record(
    r: &SessionRecord,
    reason: EndReason,
    detail: &str,
    wall: SystemTime,
) -> SessionRecord {
    let at = Timestamp::from_system(wall);
    SessionRecord {
        state: SessionState::Ended,
        updated_at: at,
        ended: Some(Ended {
            reason,
            at,
            detail: Some(detail.to_string()),
        }),
        viewers: 0,
        ..r.clone()
    }
}
