//! A session's merged input: the pure [`crate::input::Aggregator`] plus
//! what the synthetic source draws of it (the round trip made visible).

use std::time::Instant;

use bus_schema::InputEvent;

use crate::input::{Aggregator, Limits, Output};
use crate::source::Overlay;

/// The viewer name under which backend-injected input is merged.
pub use crate::input::BACKEND as BACKEND_VIEWER;

pub struct InputState {
    agg: Aggregator,
    size: (u32, u32),
    cursor: Option<(u32, u32)>,
    /// Every output so far, for tests and metrics.
    pub outputs: u64,
    /// Input events accepted, and messages refused.
    pub accepted: u64,
    pub refused: u64,
}

impl InputState {
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            agg: Aggregator::new(Limits::default()),
            size: (width.max(1), height.max(1)),
            cursor: None,
            outputs: 0,
            accepted: 0,
            refused: 0,
        }
    }

    /// Applies one viewer's events; returns the new overlay if anything changed.
    pub fn apply(&mut self, now: Instant, viewer: &str, events: &[InputEvent]) -> Option<Overlay> {
        let mut out = Vec::new();
        self.accepted += events.len() as u64;
        for e in events {
            out.extend(self.agg.apply(now, viewer, e));
        }
        self.absorb(&out)
    }

    /// Releases everything a viewer held.
    pub fn release(&mut self, now: Instant, viewer: &str) -> Option<Overlay> {
        let out = self.agg.release(now, viewer);
        self.absorb(&out)
    }

    /// Releases what viewers silent for longer than `idle` still hold.
    pub fn expire(&mut self, now: Instant, idle: std::time::Duration) -> Option<Overlay> {
        let out = self.agg.expire(now, idle);
        self.absorb(&out)
    }

    /// Keys and mouse buttons held by anyone now.
    pub fn held(&self) -> (Vec<String>, Vec<u8>) {
        let snap = self.agg.snapshot();
        (snap.keys_down.clone(), snap.buttons_down.clone())
    }

    fn absorb(&mut self, out: &[Output]) -> Option<Overlay> {
        if out.is_empty() {
            return None;
        }
        self.outputs += out.len() as u64;
        let (w, h) = self.size;
        for o in out {
            match o {
                Output::MouseAbs { x, y } => {
                    self.cursor = Some((*x as u32 * (w - 1) / 65535, *y as u32 * (h - 1) / 65535));
                }
                Output::MouseMove { dx, dy } => {
                    let (cx, cy) = self.cursor.unwrap_or((w / 2, h / 2));
                    let nx = (cx as i64 + *dx as i64).clamp(0, w as i64 - 1) as u32;
                    let ny = (cy as i64 + *dy as i64).clamp(0, h as i64 - 1) as u32;
                    self.cursor = Some((nx, ny));
                }
                _ => {}
            }
        }
        let snap = self.agg.snapshot();
        Some(Overlay {
            cursor: self.cursor,
            keys_down: snap.keys_down.clone(),
            buttons_down: snap
                .buttons_down
                .iter()
                .map(|b| format!("mouse{b}"))
                .collect(),
            pads: snap
                .pads
                .iter()
                .map(|p| format!("pad{}:{:?}", p.slot, p.buttons))
                .collect(),
            text: None,
        })
    }
}
