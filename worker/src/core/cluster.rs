//! What this worker knows of the others, from their heartbeats, and where a
//! new session should go.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bus_schema::{Heartbeat, WorkerId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Start it here.
    Local,
    /// Hand the create to this worker.
    Forward(WorkerId),
    /// Every live worker is full or draining.
    NoCapacity,
}

#[derive(Debug)]
pub struct Cluster {
    me: WorkerId,
    stale_after: Duration,
    peers: HashMap<WorkerId, (Heartbeat, Instant)>,
}

impl Cluster {
    pub fn new(me: WorkerId, stale_after: Duration) -> Self {
        Self {
            me,
            stale_after,
            peers: HashMap::new(),
        }
    }

    /// Records a heartbeat (ours included; ours is ignored for placement,
    /// where exact local numbers are used instead).
    pub fn observe(&mut self, now: Instant, hb: Heartbeat) {
        if hb.worker == self.me {
            return;
        }
        match self.peers.get(&hb.worker) {
            // A reordered older heartbeat of the same process changes nothing.
            Some((old, _)) if old.seq > hb.seq && old.sent_at >= hb.sent_at => {}
            _ => {
                self.peers.insert(hb.worker.clone(), (hb, now));
            }
        }
    }

    /// Forgets peers silent for longer than the stale bound.
    pub fn prune(&mut self, now: Instant) {
        let stale = self.stale_after;
        self.peers
            .retain(|_, (_, seen)| now.duration_since(*seen) < stale);
    }

    /// Live peers (not this worker) with their last heartbeat.
    pub fn live_peers(&self, now: Instant) -> impl Iterator<Item = &Heartbeat> {
        self.peers
            .values()
            .filter(move |(_, seen)| now.duration_since(*seen) < self.stale_after)
            .map(|(hb, _)| hb)
    }

    /// Least loaded (by fraction of capacity used) worker with a free slot;
    /// this worker wins ties, so a lone worker never forwards.
    pub fn place(
        &self,
        now: Instant,
        my_used: u32,
        my_capacity: u32,
        my_draining: bool,
    ) -> Placement {
        let load = |used: u32, cap: u32| used as f64 / cap.max(1) as f64;
        let mut best: Option<(f64, Placement)> = None;
        if !my_draining && my_used < my_capacity {
            best = Some((load(my_used, my_capacity), Placement::Local));
        }
        let mut peers: Vec<&Heartbeat> = self.live_peers(now).filter(|hb| hb.free() > 0).collect();
        peers.sort_by(|a, b| a.worker.cmp(&b.worker));
        for hb in peers {
            let l = load(hb.sessions.len() as u32, hb.capacity);
            if best.as_ref().is_none_or(|(b, _)| l < *b) {
                best = Some((l, Placement::Forward(hb.worker.clone())));
            }
        }
        best.map(|(_, p)| p).unwrap_or(Placement::NoCapacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus_schema::{HeldSession, SessionId, Timestamp};

    const S: Duration = Duration::from_secs(1);

    fn w(s: &str) -> WorkerId {
        WorkerId::parse(s).unwrap()
    }

    fn hb(worker: &str, capacity: u32, running: usize, seq: u64) -> Heartbeat {
        Heartbeat {
            worker: w(worker),
            seq,
            interval_ms: 1000,
            capacity,
            sessions: (0..running)
                .map(|i| HeldSession {
                    id: SessionId::parse(format!("s{i}")).unwrap(),
                    epoch: 1,
                    viewers: 0,
                    suspended: false,
                })
                .collect(),
            draining: false,
            sent_at: Timestamp::now(),
        }
    }

    #[test]
    fn a_lone_worker_places_locally_until_full() {
        let t0 = Instant::now();
        let c = Cluster::new(w("me"), 3 * S);
        assert_eq!(c.place(t0, 0, 2, false), Placement::Local);
        assert_eq!(c.place(t0, 2, 2, false), Placement::NoCapacity);
        assert_eq!(
            c.place(t0, 0, 2, true),
            Placement::NoCapacity,
            "draining takes nothing"
        );
    }

    #[test]
    fn picks_the_least_loaded_and_prefers_itself_on_ties() {
        let t0 = Instant::now();
        let mut c = Cluster::new(w("me"), 3 * S);
        c.observe(t0, hb("a", 4, 1, 1));
        c.observe(t0, hb("b", 4, 3, 1));
        assert_eq!(c.place(t0, 2, 4, false), Placement::Forward(w("a")));
        assert_eq!(c.place(t0, 1, 4, false), Placement::Local);
        assert_eq!(c.place(t0, 4, 4, false), Placement::Forward(w("a")));
    }

    #[test]
    fn silent_and_full_peers_are_not_candidates() {
        let t0 = Instant::now();
        let mut c = Cluster::new(w("me"), 3 * S);
        c.observe(t0, hb("a", 4, 0, 1));
        c.observe(t0 + 2 * S, hb("b", 2, 2, 1));
        assert_eq!(c.place(t0 + 3 * S, 4, 4, false), Placement::NoCapacity);
        c.prune(t0 + 3 * S);
        assert_eq!(c.live_peers(t0 + 3 * S).count(), 1);
    }

    #[test]
    fn own_heartbeats_and_reordered_ones_are_ignored() {
        let t0 = Instant::now();
        let mut c = Cluster::new(w("me"), 3 * S);
        c.observe(t0, hb("me", 4, 0, 1));
        assert_eq!(c.live_peers(t0).count(), 0);
        let mut newer = hb("a", 4, 4, 5);
        newer.sent_at = Timestamp::now();
        c.observe(t0, newer);
        let mut older = hb("a", 4, 0, 4);
        older.sent_at = Timestamp::from_system(std::time::UNIX_EPOCH);
        c.observe(t0, older);
        assert_eq!(
            c.place(t0, 4, 4, false),
            Placement::NoCapacity,
            "the newer, full heartbeat stands"
        );
    }
}
