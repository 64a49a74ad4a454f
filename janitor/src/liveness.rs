//! Which workers are alive, from their heartbeats alone.
//!
//! A worker is alive from its first heartbeat until `dead_after` passes
//! without another one; [`Liveness::tick`] then declares it dead, once. A
//! heartbeat from a dead worker makes it alive again (a new process with the
//! same id, or a healed partition); the sessions it held were handed off in
//! the meantime, which the reconciler's fence rule cleans up.
//!
//! A janitor that just started, or that was cut off from NATS, has not heard
//! every heartbeat: until it has listened for `dead_after` it declares
//! nothing dead ([`Liveness::in_startup_grace`]).
//!
//! No IO and no clock reads: every method takes `now`.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bus_schema::{Heartbeat, Timestamp, WorkerId};

/// How long a dead worker is remembered (as dead rather than unknown).
pub const FORGET_DEAD_AFTER: Duration = Duration::from_secs(3600);

/// What the table knows of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerStatus {
    /// Heartbeats arrive.
    Alive,
    /// Declared dead by [`Liveness::tick`].
    Dead,
    /// No heartbeat since this janitor started listening (or forgotten).
    Unknown,
}

/// What a heartbeat changed, for the driver's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// The first heartbeat of this worker since the janitor started.
    New,
    /// A heartbeat of a worker known to be alive.
    Alive,
    /// A heartbeat of a worker that had been declared dead.
    Revived,
}

/// The latest heartbeat of a worker and when it arrived.
#[derive(Debug, Clone)]
pub struct Seen {
    pub heartbeat: Heartbeat,
    /// When this janitor received it (its own clock).
    pub received_at: Instant,
    /// How many heartbeats of this worker this janitor has received: a local
    /// counter, independent of the worker's own `seq` (which restarts with
    /// the process).
    pub beats: u64,
    /// Set when the worker was declared dead.
    pub dead_since: Option<Instant>,
}

impl Seen {
    /// Heard from within two of the worker's own heartbeat intervals.
    pub fn is_fresh(&self, now: Instant) -> bool {
        let interval = Duration::from_millis(self.heartbeat.interval_ms.max(1));
        now.saturating_duration_since(self.received_at) <= interval.saturating_mul(2)
    }
}

/// A live worker that can take sessions, with its load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub worker: WorkerId,
    pub capacity: u32,
    /// Sessions it holds (callers may raise this with what they know better).
    pub load: u32,
}

impl Candidate {
    pub fn free(&self) -> u32 {
        self.capacity.saturating_sub(self.load)
    }
}

/// The least loaded candidate with room: lowest `load / capacity`, then most
/// free slots, then the smallest id (so that two janitors given the same
/// inputs choose the same worker).
pub fn least_loaded(candidates: &[Candidate]) -> Option<&Candidate> {
    candidates
        .iter()
        .filter(|c| c.free() > 0)
        .min_by(|a, b| compare_load(a, b))
}

fn compare_load(a: &Candidate, b: &Candidate) -> Ordering {
    // a.load / a.capacity vs b.load / b.capacity without floats; capacities
    // are non-zero here because free() > 0.
    let lhs = u64::from(a.load) * u64::from(b.capacity);
    let rhs = u64::from(b.load) * u64::from(a.capacity);
    lhs.cmp(&rhs)
        .then_with(|| b.free().cmp(&a.free()))
        .then_with(|| a.worker.cmp(&b.worker))
}

/// The liveness table. One owner: the janitor's driver task.
#[derive(Debug, Clone)]
pub struct Liveness {
    dead_after: Duration,
    listening_since: Instant,
    workers: BTreeMap<WorkerId, Seen>,
}

impl Liveness {
    /// A table that starts listening at `now`.
    pub fn new(now: Instant, dead_after: Duration) -> Self {
        Self {
            dead_after,
            listening_since: now,
            workers: BTreeMap::new(),
        }
    }

    pub fn dead_after(&self) -> Duration {
        self.dead_after
    }

    /// True until this janitor has listened to heartbeats for `dead_after`:
    /// it may not have heard from every live worker yet.
    pub fn in_startup_grace(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.listening_since) < self.dead_after
    }

    /// The janitor could not hear heartbeats for a while (it lost NATS):
    /// start the grace again, so that nobody is declared dead for silence
    /// that was the janitor's own.
    pub fn rebase(&mut self, now: Instant) {
        self.listening_since = now;
    }

    /// Records a heartbeat received at `now`.
    pub fn observe(&mut self, now: Instant, hb: &Heartbeat) -> Observed {
        match self.workers.get_mut(&hb.worker) {
            None => {
                self.workers.insert(
                    hb.worker.clone(),
                    Seen {
                        heartbeat: hb.clone(),
                        received_at: now,
                        beats: 1,
                        dead_since: None,
                    },
                );
                Observed::New
            }
            Some(seen) => {
                let was_dead = seen.dead_since.take().is_some();
                seen.heartbeat = hb.clone();
                seen.received_at = now;
                seen.beats += 1;
                if was_dead {
                    Observed::Revived
                } else {
                    Observed::Alive
                }
            }
        }
    }

    /// Declares dead every live worker silent for `dead_after` (never during
    /// the startup grace) and returns those newly declared, each once.
    /// Forgets workers dead for [`FORGET_DEAD_AFTER`].
    pub fn tick(&mut self, now: Instant) -> Vec<WorkerId> {
        self.workers.retain(|_, s| match s.dead_since {
            Some(since) => now.saturating_duration_since(since) < FORGET_DEAD_AFTER,
            None => true,
        });
        if self.in_startup_grace(now) {
            return Vec::new();
        }
        let mut newly_dead = Vec::new();
        for (id, seen) in &mut self.workers {
            if seen.dead_since.is_none()
                && now.saturating_duration_since(seen.received_at) >= self.dead_after
            {
                seen.dead_since = Some(now);
                newly_dead.push(id.clone());
            }
        }
        newly_dead
    }

    pub fn status(&self, worker: &WorkerId) -> WorkerStatus {
        match self.workers.get(worker) {
            None => WorkerStatus::Unknown,
            Some(s) if s.dead_since.is_some() => WorkerStatus::Dead,
            Some(_) => WorkerStatus::Alive,
        }
    }

    pub fn is_alive(&self, worker: &WorkerId) -> bool {
        self.status(worker) == WorkerStatus::Alive
    }

    /// The latest heartbeat of a worker, alive or dead.
    pub fn seen(&self, worker: &WorkerId) -> Option<&Seen> {
        self.workers.get(worker)
    }

    /// The worker's own timestamp on its latest heartbeat.
    pub fn last_seen_wall(&self, worker: &WorkerId) -> Option<Timestamp> {
        self.workers.get(worker).map(|s| s.heartbeat.sent_at)
    }

    /// Live workers with their latest heartbeat, in id order.
    pub fn alive(&self) -> impl Iterator<Item = (&WorkerId, &Seen)> {
        self.workers.iter().filter(|(_, s)| s.dead_since.is_none())
    }

    /// Live workers that take sessions (not draining), except `exclude`,
    /// with the load their heartbeat reports. Full workers are included.
    /// A worker must have been heard from within two of its heartbeat
    /// intervals: one that has gone silent but is not yet declared dead is
    /// no place to restart a session (it may be dying too).
    pub fn candidates(&self, exclude: &WorkerId, now: Instant) -> Vec<Candidate> {
        self.alive()
            .filter(|(id, s)| *id != exclude && !s.heartbeat.draining && s.is_fresh(now))
            .map(|(id, s)| Candidate {
                worker: id.clone(),
                capacity: s.heartbeat.capacity,
                load: u32::try_from(s.heartbeat.sessions.len()).unwrap_or(u32::MAX),
            })
            .collect()
    }

    /// The least loaded live worker with a free slot, except `exclude`, by
    /// heartbeats alone.
    pub fn least_loaded(&self, exclude: &WorkerId, now: Instant) -> Option<WorkerId> {
        least_loaded(&self.candidates(exclude, now)).map(|c| c.worker.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::*;

    #[test]
    fn a_silent_worker_dies_exactly_at_dead_after_and_not_before() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, secs(3));
        l.observe(t0 + secs(5), &hb("w1", 4, &[]));
        assert!(l.tick(t0 + secs(5) + secs(3) - ms(1)).is_empty());
        assert!(l.is_alive(&wid("w1")));
        assert_eq!(l.tick(t0 + secs(8)), vec![wid("w1")]);
        assert_eq!(l.status(&wid("w1")), WorkerStatus::Dead);
    }

    #[test]
    fn death_is_declared_once() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, secs(3));
        l.observe(t0 + secs(4), &hb("w1", 4, &[]));
        assert_eq!(l.tick(t0 + secs(7)).len(), 1);
        assert!(l.tick(t0 + secs(8)).is_empty());
        assert!(l.tick(t0 + secs(60)).is_empty());
    }

    #[test]
    fn regular_heartbeats_keep_a_worker_alive() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, secs(3));
        for i in 0..20 {
            let now = t0 + secs(i);
            l.observe(now, &hb("w1", 4, &[]));
            assert!(l.tick(now + ms(999)).is_empty());
        }
    }

    #[test]
    fn nothing_dies_during_the_startup_grace() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, secs(3));
        l.observe(t0, &hb("w1", 4, &[]));
        assert!(l.in_startup_grace(t0 + ms(2999)));
        assert!(l.tick(t0 + ms(2999)).is_empty());
        assert!(!l.in_startup_grace(t0 + secs(3)));
        assert_eq!(l.tick(t0 + secs(3)), vec![wid("w1")]);
    }

    #[test]
    fn rebase_restarts_the_grace_after_the_janitor_was_blind() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, secs(3));
        l.observe(t0 + secs(4), &hb("w1", 4, &[]));
        // The janitor loses NATS at t0+5 and gets it back at t0+20.
        l.rebase(t0 + secs(20));
        assert!(l.tick(t0 + secs(20)).is_empty());
        assert!(l.tick(t0 + secs(22)).is_empty());
        // Silent for a whole dead_after since the janitor could hear again.
        assert_eq!(l.tick(t0 + secs(23)), vec![wid("w1")]);
    }

    #[test]
    fn a_dead_worker_that_heartbeats_again_is_alive() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, secs(3));
        l.observe(t0 + secs(3), &hb("w1", 4, &[]));
        assert_eq!(l.tick(t0 + secs(6)), vec![wid("w1")]);
        assert_eq!(
            l.observe(t0 + secs(7), &hb("w1", 4, &[])),
            Observed::Revived
        );
        assert!(l.is_alive(&wid("w1")));
        // And it can die again later.
        assert_eq!(l.tick(t0 + secs(10)), vec![wid("w1")]);
    }

    #[test]
    fn observe_reports_new_and_known_workers() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, secs(3));
        assert_eq!(l.observe(t0, &hb("w1", 4, &[])), Observed::New);
        assert_eq!(l.observe(t0 + secs(1), &hb("w1", 4, &[])), Observed::Alive);
        assert_eq!(l.seen(&wid("w1")).unwrap().beats, 2);
        assert_eq!(l.status(&wid("nobody")), WorkerStatus::Unknown);
    }

    #[test]
    fn dead_workers_are_forgotten_after_an_hour() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, secs(3));
        l.observe(t0 + secs(3), &hb("w1", 4, &[]));
        l.tick(t0 + secs(6));
        l.tick(t0 + secs(6) + FORGET_DEAD_AFTER - ms(1));
        assert_eq!(l.status(&wid("w1")), WorkerStatus::Dead);
        l.tick(t0 + secs(6) + FORGET_DEAD_AFTER);
        assert_eq!(l.status(&wid("w1")), WorkerStatus::Unknown);
    }

    #[test]
    fn placement_picks_the_least_loaded_live_worker_and_never_the_excluded() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, secs(3));
        l.observe(t0, &hb("busy", 4, &[("a", 1), ("b", 1), ("c", 1)]));
        l.observe(t0, &hb("idle", 4, &[]));
        l.observe(t0, &hb("half", 4, &[("d", 1), ("e", 1)]));
        assert_eq!(l.least_loaded(&wid("busy"), t0), Some(wid("idle")));
        assert_eq!(l.least_loaded(&wid("idle"), t0), Some(wid("half")));
    }

    #[test]
    fn placement_skips_a_worker_gone_silent_before_it_is_declared_dead() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, secs(3));
        // Heartbeats every second (testkit's interval); "quiet" stopped
        // beating at t0, "steady" keeps going.
        l.observe(t0, &hb("quiet", 4, &[]));
        l.observe(t0, &hb("steady", 4, &[("a", 1), ("b", 1)]));
        assert_eq!(l.least_loaded(&wid("x"), t0 + secs(1)), Some(wid("quiet")));
        l.observe(t0 + ms(2500), &hb("steady", 4, &[("a", 1), ("b", 1)]));
        // 2.5 s of silence: not dead yet (3 s), but no longer a place to go.
        assert!(l.tick(t0 + ms(2500)).is_empty());
        assert!(l.is_alive(&wid("quiet")));
        assert_eq!(
            l.least_loaded(&wid("x"), t0 + ms(2500)),
            Some(wid("steady"))
        );
    }

    #[test]
    fn placement_skips_dead_full_and_draining_workers() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, secs(3));
        l.observe(t0 + secs(3), &hb("dead", 4, &[]));
        l.observe(t0 + secs(5), &hb("full", 1, &[("a", 1)]));
        let mut draining = hb("draining", 4, &[]);
        draining.draining = true;
        l.observe(t0 + secs(5), &draining);
        assert_eq!(l.tick(t0 + secs(6)), vec![wid("dead")]);
        assert_eq!(l.least_loaded(&wid("x"), t0 + secs(6)), None);
    }

    #[test]
    fn placement_compares_utilisation_then_free_slots_then_id() {
        let c = |w: &str, capacity, load| Candidate {
            worker: wid(w),
            capacity,
            load,
        };
        // 2/10 beats 1/2.
        assert_eq!(
            least_loaded(&[c("a", 2, 1), c("b", 10, 2)]).unwrap().worker,
            wid("b")
        );
        // Equal utilisation: more free slots wins.
        assert_eq!(
            least_loaded(&[c("a", 2, 0), c("b", 8, 0)]).unwrap().worker,
            wid("b")
        );
        // Full tie: smallest id.
        assert_eq!(
            least_loaded(&[c("b", 4, 1), c("a", 4, 1)]).unwrap().worker,
            wid("a")
        );
        // Zero capacity never gets anything.
        assert!(least_loaded(&[c("a", 0, 0)]).is_none());
    }
}
