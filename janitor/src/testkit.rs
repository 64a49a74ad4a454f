//! Builders for the unit tests of the pure core.

use std::time::{Duration, SystemTime};

use bus_schema::registry::Versioned;
use bus_schema::{
    Heartbeat, HeldSession, HumanDuration, OnWorkerLost, SessionId, SessionRecord, SessionSpec,
    SessionState, SourceSpec, Timestamp, WorkerId,
};

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn wid(s: &str) -> WorkerId {
    WorkerId::parse(s).expect("test worker id")
}

pub fn sid(s: &str) -> SessionId {
    SessionId::parse(s).expect("test session id")
}

/// A fixed wall clock for records: 2026-01-01T00:00:00Z.
pub fn wall0() -> SystemTime {
    humantime::parse_rfc3339("2026-01-01T00:00:00Z").expect("test timestamp")
}

/// A heartbeat of `worker` (interval 1s) holding `(session, epoch)` pairs.
pub fn hb(worker: &str, capacity: u32, sessions: &[(&str, u64)]) -> Heartbeat {
    Heartbeat {
        worker: wid(worker),
        seq: 1,
        interval_ms: 1000,
        capacity,
        sessions: sessions
            .iter()
            .map(|(id, epoch)| HeldSession {
                id: sid(id),
                epoch: *epoch,
                viewers: 0,
                suspended: false,
            })
            .collect(),
        draining: false,
        sent_at: Timestamp::from_system(wall0()),
    }
}

/// A record created at [`wall0`], max lifetime 24h.
pub fn record(id: &str, owner: &str, epoch: u64, state: SessionState) -> SessionRecord {
    SessionRecord {
        id: sid(id),
        owner: wid(owner),
        epoch,
        state,
        spec: SessionSpec {
            source: SourceSpec::default(),
            idle_ttl: HumanDuration::new(secs(300)).expect("ttl"),
            max_lifetime: HumanDuration::new(secs(24 * 3600)).expect("lifetime"),
            on_worker_lost: OnWorkerLost::End,
            labels: Default::default(),
        },
        created_at: Timestamp::from_system(wall0()),
        updated_at: Timestamp::from_system(wall0()),
        live_at: None,
        ended: None,
        viewers: 0,
    }
}

pub fn restartable(mut r: SessionRecord) -> SessionRecord {
    r.spec.on_worker_lost = OnWorkerLost::Restart;
    r
}

/// An in-memory registry with the real one's compare-and-set semantics, to
/// play plans the way the driver does.
#[derive(Debug, Clone, Default)]
pub struct FakeRegistry {
    pub entries: std::collections::BTreeMap<SessionId, Versioned>,
    pub last_revision: u64,
}

/// What applying one action to a [`FakeRegistry`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Won,
    LostRace,
    NotAWrite,
}

impl FakeRegistry {
    pub fn with(records: Vec<SessionRecord>) -> Self {
        let mut r = Self::default();
        for rec in records {
            r.put(rec);
        }
        r
    }

    /// Writes unconditionally (a worker's write, in a test).
    pub fn put(&mut self, record: SessionRecord) -> u64 {
        self.last_revision += 1;
        let revision = self.last_revision;
        self.entries
            .insert(record.id.clone(), Versioned { record, revision });
        revision
    }

    pub fn get(&self, id: &str) -> &SessionRecord {
        &self.entries[&sid(id)].record
    }

    pub fn list(&self) -> Vec<Versioned> {
        self.entries.values().cloned().collect()
    }

    fn cas(&self, id: &SessionId, expected: u64) -> Option<&SessionRecord> {
        self.entries
            .get(id)
            .filter(|v| v.revision == expected)
            .map(|v| &v.record)
    }

    pub fn apply(&mut self, action: &crate::reconcile::Action, wall: SystemTime) -> Applied {
        use crate::reconcile::{ended_record, reassigned_record, Action};
        match action {
            Action::Reassign {
                id,
                to,
                expected_revision,
                new_epoch,
                ..
            } => match self.cas(id, *expected_revision) {
                Some(r) => {
                    let moved = reassigned_record(r, to, *new_epoch, wall);
                    self.put(moved);
                    Applied::Won
                }
                None => Applied::LostRace,
            },
            Action::End {
                id,
                reason,
                detail,
                expected_revision,
                ..
            } => match self.cas(id, *expected_revision) {
                Some(r) => {
                    let ended = ended_record(r, *reason, detail, wall);
                    self.put(ended);
                    Applied::Won
                }
                None => Applied::LostRace,
            },
            Action::Purge {
                id,
                expected_revision,
            } => match self.cas(id, *expected_revision) {
                Some(_) => {
                    self.entries.remove(id);
                    Applied::Won
                }
                None => Applied::LostRace,
            },
            Action::Fence { .. } | Action::AnnounceLost { .. } => Applied::NotAWrite,
        }
    }
}
