//! A session's TTL clocks.
//!
//! The idle clock runs while no viewer is attached (from creation for a
//! headless session); a keepalive resets it; while viewers are attached it
//! is stopped, and it restarts when the last one leaves. The lifetime clock
//! runs from creation and nothing resets it.

use std::time::{Duration, Instant};

use bus_schema::EndReason;

#[derive(Debug, Clone)]
pub struct SessionClock {
    created: Instant,
    idle_ttl: Duration,
    max_lifetime: Duration,
    /// `Some(t)`: idle since `t`. `None`: viewers attached.
    idle_since: Option<Instant>,
    viewers: u32,
}

impl SessionClock {
    pub fn new(now: Instant, idle_ttl: Duration, max_lifetime: Duration) -> Self {
        Self {
            created: now,
            idle_ttl,
            max_lifetime,
            idle_since: Some(now),
            viewers: 0,
        }
    }

    pub fn keepalive(&mut self, now: Instant) {
        if let Some(since) = &mut self.idle_since {
            *since = now;
        }
    }

    pub fn viewer_joined(&mut self, _now: Instant) {
        self.viewers += 1;
        self.idle_since = None;
    }

    pub fn viewer_left(&mut self, now: Instant) {
        self.viewers = self.viewers.saturating_sub(1);
        if self.viewers == 0 && self.idle_since.is_none() {
            self.idle_since = Some(now);
        }
    }

    pub fn viewers(&self) -> u32 {
        self.viewers
    }

    /// The next instant at which [`Self::expired`] may change its answer.
    pub fn deadline(&self) -> Instant {
        let lifetime = self.created + self.max_lifetime;
        match self.idle_since {
            Some(since) => lifetime.min(since + self.idle_ttl),
            None => lifetime,
        }
    }

    /// Why the session must end now, if it must. The lifetime wins a tie.
    pub fn expired(&self, now: Instant) -> Option<EndReason> {
        if now >= self.created + self.max_lifetime {
            return Some(EndReason::MaxLifetime);
        }
        match self.idle_since {
            Some(since) if now >= since + self.idle_ttl => Some(EndReason::IdleTimeout),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn clock() -> (Instant, SessionClock) {
        let t0 = Instant::now();
        (t0, SessionClock::new(t0, 10 * S, 100 * S))
    }

    #[test]
    fn headless_session_idles_out_from_creation() {
        let (t0, c) = clock();
        assert_eq!(c.expired(t0 + 9 * S), None);
        assert_eq!(c.deadline(), t0 + 10 * S);
        assert_eq!(c.expired(t0 + 10 * S), Some(EndReason::IdleTimeout));
    }

    #[test]
    fn keepalive_resets_the_idle_clock() {
        let (t0, mut c) = clock();
        c.keepalive(t0 + 8 * S);
        assert_eq!(c.expired(t0 + 17 * S), None);
        assert_eq!(c.expired(t0 + 18 * S), Some(EndReason::IdleTimeout));
    }

    #[test]
    fn viewers_stop_the_idle_clock_until_the_last_leaves() {
        let (t0, mut c) = clock();
        c.viewer_joined(t0 + S);
        c.viewer_joined(t0 + 2 * S);
        assert_eq!(c.expired(t0 + 50 * S), None);
        c.viewer_left(t0 + 50 * S);
        assert_eq!(c.expired(t0 + 70 * S), None, "one viewer still attached");
        c.viewer_left(t0 + 70 * S);
        assert_eq!(c.viewers(), 0);
        assert_eq!(c.expired(t0 + 79 * S), None);
        assert_eq!(c.expired(t0 + 80 * S), Some(EndReason::IdleTimeout));
    }

    #[test]
    fn max_lifetime_ends_even_a_watched_session() {
        let (t0, mut c) = clock();
        c.viewer_joined(t0);
        assert_eq!(c.deadline(), t0 + 100 * S);
        assert_eq!(c.expired(t0 + 100 * S), Some(EndReason::MaxLifetime));
    }

    #[test]
    fn lifetime_wins_a_tie_with_idle() {
        let t0 = Instant::now();
        let c = SessionClock::new(t0, 5 * S, 5 * S);
        assert_eq!(c.expired(t0 + 5 * S), Some(EndReason::MaxLifetime));
    }

    #[test]
    fn extra_leaves_do_not_underflow() {
        let (t0, mut c) = clock();
        c.viewer_left(t0 + S);
        assert_eq!(c.viewers(), 0);
        assert_eq!(
            c.expired(t0 + 10 * S),
            Some(EndReason::IdleTimeout),
            "idle clock not reset by a spurious leave"
        );
    }
}
