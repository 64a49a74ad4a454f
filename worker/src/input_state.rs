//! A session's merged input: the pure [`crate::core::input::Aggregator`] and its
//! counters. What it returns is the merged stream for the source.

use std::time::{Duration, Instant};

use bus_schema::{InputEvent, SourceEvent};

use crate::core::input::{Aggregator, Limits};

/// The viewer name under which backend-injected input is merged.
pub use crate::core::input::BACKEND as BACKEND_VIEWER;

pub struct InputState {
    agg: Aggregator,
    /// Input events accepted, and messages refused.
    pub accepted: u64,
    pub refused: u64,
}

impl Default for InputState {
    fn default() -> Self {
        Self {
            agg: Aggregator::new(Limits::default()),
            accepted: 0,
            refused: 0,
        }
    }
}

impl InputState {
    /// Applies one viewer's events; returns what the source must apply.
    pub fn apply(&mut self, now: Instant, viewer: &str, events: &[InputEvent]) -> Vec<SourceEvent> {
        self.accepted += events.len() as u64;
        let mut out = Vec::new();
        for e in events {
            out.extend(self.agg.apply(now, viewer, e));
        }
        out
    }

    /// Releases everything a viewer held.
    pub fn release(&mut self, now: Instant, viewer: &str) -> Vec<SourceEvent> {
        self.agg.release(now, viewer)
    }

    /// Releases what viewers silent for longer than `idle` still hold.
    pub fn expire(&mut self, now: Instant, idle: Duration) -> Vec<SourceEvent> {
        self.agg.expire(now, idle)
    }

    /// Keys and mouse buttons held by anyone now.
    pub fn held(&self) -> (Vec<String>, Vec<u8>) {
        let snap = self.agg.snapshot();
        (snap.keys_down.clone(), snap.buttons_down.clone())
    }
}
