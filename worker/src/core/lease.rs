//! The worker's lease on its sessions.
//!
//! The worker renews its lease each time it receives its own heartbeat back
//! from NATS: that proves the server (and so the janitor) heard from it. If
//! the lease runs out the worker stops every session by itself. The lease is
//! shorter than the janitor's `dead_after`, so by the time the janitor hands
//! a session to another worker the old one has stopped streaming it.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    Held,
    /// Ran out at this check; the caller stops its sessions now.
    JustExpired,
    /// Ran out earlier and has not been renewed.
    Expired,
}

#[derive(Debug, Clone)]
pub struct Lease {
    duration: Duration,
    renewed_at: Instant,
    expired: bool,
}

impl Lease {
    pub fn new(now: Instant, duration: Duration) -> Self {
        Self {
            duration,
            renewed_at: now,
            expired: false,
        }
    }

    /// Returns true when this renewal ends an expiry (the link healed).
    pub fn renew(&mut self, now: Instant) -> bool {
        self.renewed_at = self.renewed_at.max(now);
        std::mem::replace(&mut self.expired, false)
    }

    pub fn check(&mut self, now: Instant) -> LeaseStatus {
        if now < self.renewed_at + self.duration {
            return LeaseStatus::Held;
        }
        if std::mem::replace(&mut self.expired, true) {
            LeaseStatus::Expired
        } else {
            LeaseStatus::JustExpired
        }
    }

    pub fn is_held(&self, now: Instant) -> bool {
        now < self.renewed_at + self.duration
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn expires_once_after_its_duration_without_renewal() {
        let t0 = Instant::now();
        let mut l = Lease::new(t0, 2 * S);
        assert_eq!(l.check(t0 + S), LeaseStatus::Held);
        assert_eq!(l.check(t0 + 2 * S), LeaseStatus::JustExpired);
        assert_eq!(l.check(t0 + 3 * S), LeaseStatus::Expired);
        assert!(!l.is_held(t0 + 3 * S));
    }

    #[test]
    fn renewal_extends_and_reports_healing() {
        let t0 = Instant::now();
        let mut l = Lease::new(t0, 2 * S);
        assert!(!l.renew(t0 + S));
        assert_eq!(l.check(t0 + 2 * S), LeaseStatus::Held);
        assert_eq!(l.check(t0 + 3 * S), LeaseStatus::JustExpired);
        assert!(l.renew(t0 + 4 * S), "renewal after expiry is a heal");
        assert_eq!(l.check(t0 + 5 * S), LeaseStatus::Held);
    }

    #[test]
    fn a_late_echo_never_moves_the_lease_backwards() {
        let t0 = Instant::now();
        let mut l = Lease::new(t0 + 5 * S, 2 * S);
        l.renew(t0);
        assert_eq!(l.check(t0 + 6 * S), LeaseStatus::Held);
    }
}

/// The lease's deadline, readable without a lock by every media writer, so
/// that a worker waking from a freeze sends nothing past its lease even
/// before the lease watch has run.
#[derive(Debug)]
pub struct LeaseGate {
    base: Instant,
    /// Milliseconds after `base` until which media may be sent.
    until_ms: std::sync::atomic::AtomicU64,
}

impl LeaseGate {
    pub fn new(base: Instant, first_deadline: Instant) -> Self {
        let g = Self {
            base,
            until_ms: std::sync::atomic::AtomicU64::new(0),
        };
        g.extend_to(first_deadline);
        g
    }

    /// Moves the deadline forward (never back).
    pub fn extend_to(&self, deadline: Instant) {
        let ms = deadline.saturating_duration_since(self.base).as_millis() as u64;
        self.until_ms
            .fetch_max(ms, std::sync::atomic::Ordering::AcqRel);
    }

    pub fn held(&self, now: Instant) -> bool {
        let now_ms = now.saturating_duration_since(self.base).as_millis() as u64;
        now_ms < self.until_ms.load(std::sync::atomic::Ordering::Acquire)
    }
}

#[cfg(test)]
mod gate_tests {
    use super::*;

    #[test]
    fn the_gate_closes_at_the_deadline_and_only_moves_forward() {
        let t0 = Instant::now();
        let g = LeaseGate::new(t0, t0 + Duration::from_secs(2));
        assert!(g.held(t0 + Duration::from_millis(1999)));
        assert!(!g.held(t0 + Duration::from_secs(2)));
        g.extend_to(t0 + Duration::from_secs(1));
        assert!(!g.held(t0 + Duration::from_secs(2)), "never moves back");
        g.extend_to(t0 + Duration::from_secs(5));
        assert!(g.held(t0 + Duration::from_secs(4)));
    }
}
