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
