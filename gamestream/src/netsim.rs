//! A seeded lossy datagram link in simulated time, for tests and the emulator.
//!
//! Each datagram sent is dropped with probability `loss`, otherwise
//! delivered after `delay` plus, with probability `reorder`, up to
//! `reorder_delay` more (so later datagrams overtake it), and with
//! probability `duplicate` delivered twice. The same seed gives the same
//! fate to the same sequence of datagrams.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// splitmix64: small, seedable, good enough to pick packet fates.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// How a link mistreats datagrams.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkProfile {
    pub loss: f64,
    pub reorder: f64,
    pub duplicate: f64,
    pub delay: Duration,
    pub reorder_delay: Duration,
}

impl LinkProfile {
    pub fn perfect() -> Self {
        Self {
            loss: 0.0,
            reorder: 0.0,
            duplicate: 0.0,
            delay: Duration::from_millis(1),
            reorder_delay: Duration::from_millis(3),
        }
    }
    pub fn lossy(loss: f64) -> Self {
        Self {
            loss,
            ..Self::perfect()
        }
    }
}

/// Counters of what the link did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub sent: u64,
    pub dropped: u64,
    pub reordered: u64,
    pub duplicated: u64,
}

/// One direction of a seeded lossy link.
#[derive(Debug)]
pub struct Link {
    profile: LinkProfile,
    rng: SimRng,
    order: u64,
    queue: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>>,
    stats: LinkStats,
}

impl Link {
    pub fn new(seed: u64, profile: LinkProfile) -> Self {
        Self {
            profile,
            rng: SimRng::new(seed),
            order: 0,
            queue: BinaryHeap::new(),
            stats: LinkStats::default(),
        }
    }

    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    pub fn send(&mut self, now: Instant, datagram: Vec<u8>) {
        self.stats.sent += 1;
        if self.rng.chance(self.profile.loss) {
            self.stats.dropped += 1;
            return;
        }
        let copies = if self.rng.chance(self.profile.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut at = now + self.profile.delay;
            if self.rng.chance(self.profile.reorder) {
                self.stats.reordered += 1;
                at += self.profile.reorder_delay.mul_f64(self.rng.unit());
            }
            self.order += 1;
            self.queue.push(Reverse((at, self.order, datagram.clone())));
        }
    }

    /// When the next datagram arrives, if one is in flight.
    pub fn deadline(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((at, _, _))| *at)
    }

    /// The next datagram due by `now`.
    pub fn poll(&mut self, now: Instant) -> Option<(Instant, Vec<u8>)> {
        if self.deadline()? > now {
            return None;
        }
        self.queue.pop().map(|Reverse((at, _, d))| (at, d))
    }
}
