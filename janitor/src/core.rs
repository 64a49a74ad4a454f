//! The janitor's whole state machine: the liveness table and the reconciler
//! behind one owner. Heartbeats go in through [`Core::observe`]; every scan
//! hands a registry snapshot to [`Core::plan`], which ticks the liveness
//! table and returns what to do. No IO, no clock reads.

use std::time::{Instant, SystemTime};

use bus_schema::{Heartbeat, WorkerId};

use crate::liveness::{Liveness, Observed};
use crate::reconcile::{Action, Reconciler, Snapshot, Timing};

/// The outcome of one scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Workers declared dead by this scan.
    pub newly_dead: Vec<WorkerId>,
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone)]
pub struct Core {
    liveness: Liveness,
    reconciler: Reconciler,
}

impl Core {
    /// A core that starts listening at `now` (the startup grace runs from here).
    pub fn new(now: Instant, timing: Timing) -> Self {
        Self {
            liveness: Liveness::new(now, timing.dead_after),
            reconciler: Reconciler::new(timing),
        }
    }

    pub fn observe(&mut self, now: Instant, hb: &Heartbeat) -> Observed {
        self.liveness.observe(now, hb)
    }

    /// The janitor was cut off from NATS: listen for `dead_after` again
    /// before declaring anyone dead.
    pub fn rebase(&mut self, now: Instant) {
        self.liveness.rebase(now);
    }

    pub fn plan(&mut self, now: Instant, wall: SystemTime, snapshot: &Snapshot) -> Plan {
        let newly_dead = self.liveness.tick(now);
        for w in &newly_dead {
            self.reconciler.worker_died(w.clone());
        }
        let actions = self.reconciler.plan(now, wall, &self.liveness, snapshot);
        Plan {
            newly_dead,
            actions,
        }
    }

    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    pub fn timing(&self) -> &Timing {
        self.reconciler.timing()
    }
}

#[cfg(test)]
mod tests;
