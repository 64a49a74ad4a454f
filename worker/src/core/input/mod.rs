//! Merging the input of every viewer allowed to control into one stream for
//! the source.
//!
//! [`Aggregator`] is a pure state machine: it is told who sent what and when
//! ([`Aggregator::apply`]), who left ([`Aggregator::release`]) and what time
//! it is ([`Aggregator::expire`]), and each time returns the [`SourceEvent`]s to
//! feed to the source, in order. It does no IO and reads no clock.
//!
//! Union semantics:
//! - A key or mouse button is down while *any* viewer holds it: the source
//!   sees `down` on the first holder's press and `up` on the last holder's
//!   release. A viewer's repeated down (key repeat) is idempotent and an up
//!   for something the viewer does not hold is ignored.
//! - Relative motion and the wheel pass through (they add up at the source);
//!   the absolute pointer is last writer wins.
//! - Each viewer's touch ids are mapped to global ids, so two viewers' touch
//!   0 never collide.
//! - Each (viewer, pad index) gets its own controller slot on first use;
//!   with no free slot its events are dropped.
//! - A viewer that leaves (or is expired after going silent while holding
//!   something) releases all it held: keys and buttons no one else holds go
//!   up, touches end, its pads return to rest and disconnect.
//!
//! The state is bounded by [`Limits`]: viewers tracked (only those holding
//! something are), keys per viewer, touches per viewer and overall, pad
//! slots. Input over a limit is dropped, never queued. Events outside the
//! ranges of [`bus_schema::input::validate_event`] are dropped too.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bus_schema::input::{validate_event, MAX_MOUSE_BUTTON};
use bus_schema::{InputEvent, SourceEvent, TouchPhase};

#[cfg(test)]
mod tests;

/// Who sent an event: a peer id, or `"backend"` for injected input.
pub type ViewerKey = String;

/// The viewer key of input injected over NATS (`session.<id>.input`).
pub const BACKEND: &str = "backend";

/// Caps that keep the aggregator's state bounded whatever viewers send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Controller slots at the source (0..max_pads).
    pub max_pads: u8,
    /// Keys one viewer may hold down at once; further presses are dropped.
    pub max_keys_per_viewer: usize,
    /// Touches one viewer may have active at once.
    pub max_touches_per_viewer: usize,
    /// Touches active at once over all viewers (global ids 0..max_touches).
    pub max_touches: u8,
    /// Viewers holding something at once; a press from one more is dropped.
    pub max_viewers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_pads: 4,
            max_keys_per_viewer: 64,
            max_touches_per_viewer: 10,
            max_touches: 32,
            max_viewers: 64,
        }
    }
}

/// The merged state, for drawing it (the synthetic source) or inspecting it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The last absolute position anyone sent (relative motion does not
    /// move it: its scale is the source's business).
    pub cursor: Option<(u16, u16)>,
    /// Sorted.
    pub keys_down: Vec<String>,
    /// Sorted.
    pub buttons_down: Vec<u8>,
    /// By global id.
    pub touches: Vec<TouchState>,
    /// By slot.
    pub pads: Vec<PadState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TouchState {
    /// The global touch id.
    pub id: u8,
    pub owner: ViewerKey,
    pub x: u16,
    pub y: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PadState {
    pub slot: u8,
    pub owner: ViewerKey,
    /// The owner's pad index.
    pub pad: u8,
    /// Buttons with a non-zero value, by button: (button, value).
    pub buttons: Vec<(u8, u8)>,
    /// Axes off centre, by axis: (axis, value).
    pub axes: Vec<(u8, i16)>,
}

/// What one viewer holds. A viewer holding nothing is not tracked.
#[derive(Debug)]
struct Viewer {
    last_seen: Instant,
    keys: BTreeSet<String>,
    /// Bit n: mouse button n (0..=15).
    buttons: u16,
    /// The viewer's touch id → global id.
    touches: BTreeMap<u8, u8>,
    /// The viewer's pad index → slot.
    pads: BTreeMap<u8, u8>,
}

impl Viewer {
    fn new(now: Instant) -> Self {
        Self {
            last_seen: now,
            keys: BTreeSet::new(),
            buttons: 0,
            touches: BTreeMap::new(),
            pads: BTreeMap::new(),
        }
    }

    fn holds_nothing(&self) -> bool {
        self.keys.is_empty() && self.buttons == 0 && self.touches.is_empty() && self.pads.is_empty()
    }
}

#[derive(Debug)]
struct Touch {
    owner: ViewerKey,
    x: u16,
    y: u16,
}

#[derive(Debug)]
struct Slot {
    owner: ViewerKey,
    pad: u8,
    /// Non-zero values only.
    buttons: BTreeMap<u8, u8>,
    /// Non-zero values only.
    axes: BTreeMap<u8, i16>,
}

/// Merges many viewers' input; see the module documentation.
#[derive(Debug)]
pub struct Aggregator {
    limits: Limits,
    viewers: BTreeMap<ViewerKey, Viewer>,
    /// Key → how many viewers hold it (never 0).
    keys: BTreeMap<String, usize>,
    /// Mouse button → how many viewers hold it.
    buttons: [usize; MAX_MOUSE_BUTTON as usize + 1],
    /// By global touch id.
    touches: Vec<Option<Touch>>,
    /// By slot.
    slots: Vec<Option<Slot>>,
    cursor: Option<(u16, u16)>,
}

impl Aggregator {
    pub fn new(limits: Limits) -> Self {
        Self {
            touches: (0..limits.max_touches).map(|_| None).collect(),
            slots: (0..limits.max_pads).map(|_| None).collect(),
            limits,
            viewers: BTreeMap::new(),
            keys: BTreeMap::new(),
            buttons: [0; MAX_MOUSE_BUTTON as usize + 1],
            cursor: None,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// How many viewers hold something (and so are tracked).
    pub fn holders(&self) -> usize {
        self.viewers.len()
    }

    /// Merges one event from `viewer`; returns what to send to the source.
    pub fn apply(&mut self, now: Instant, viewer: &str, ev: &InputEvent) -> Vec<SourceEvent> {
        if let Some(v) = self.viewers.get_mut(viewer) {
            v.last_seen = v.last_seen.max(now);
        }
        if validate_event(ev).is_err() {
            return Vec::new();
        }
        let mut out = Vec::new();
        match ev {
            InputEvent::MouseMove { dx, dy } => out.push(SourceEvent::MouseMove {
                dx: i32::from(*dx),
                dy: i32::from(*dy),
            }),
            InputEvent::MouseAbs { x, y } => {
                self.cursor = Some((*x, *y));
                out.push(SourceEvent::MouseAbs { x: *x, y: *y });
            }
            InputEvent::Wheel { dx, dy } => out.push(SourceEvent::Wheel {
                dx: i32::from(*dx),
                dy: i32::from(*dy),
            }),
            InputEvent::Ping => {}
            InputEvent::Key { code, down } => self.key(now, viewer, code, *down, &mut out),
            InputEvent::MouseButton { button, down } => {
                self.button(now, viewer, *button, *down, &mut out)
            }
            InputEvent::Touch { id, phase, x, y } => {
                self.touch(now, viewer, *id, *phase, (*x, *y), &mut out)
            }
            InputEvent::PadPresence {
                pad,
                connected: false,
            } => {
                if let Some(v) = self.viewers.get_mut(viewer) {
                    if let Some(slot) = v.pads.remove(pad) {
                        free_slot(&mut self.slots, slot, &mut out);
                    }
                }
            }
            InputEvent::PadPresence {
                pad,
                connected: true,
            } => {
                self.pad_slot(now, viewer, *pad, &mut out);
            }
            InputEvent::PadButton { pad, button, value } => {
                if let Some(slot) = self.pad_slot(now, viewer, *pad, &mut out) {
                    if let Some(Some(s)) = self.slots.get_mut(usize::from(slot)) {
                        set_or_clear(&mut s.buttons, *button, *value, 0);
                    }
                    out.push(SourceEvent::PadButton {
                        slot,
                        button: *button,
                        value: *value,
                    });
                }
            }
            InputEvent::PadAxis { pad, axis, value } => {
                if let Some(slot) = self.pad_slot(now, viewer, *pad, &mut out) {
                    if let Some(Some(s)) = self.slots.get_mut(usize::from(slot)) {
                        set_or_clear(&mut s.axes, *axis, *value, 0);
                    }
                    out.push(SourceEvent::PadAxis {
                        slot,
                        axis: *axis,
                        value: *value,
                    });
                }
            }
        }
        self.forget_if_empty(viewer);
        out
    }

    /// `viewer` left, crashed or timed out: releases all it held. An unknown
    /// viewer (or one holding nothing) gives nothing.
    pub fn release(&mut self, _now: Instant, viewer: &str) -> Vec<SourceEvent> {
        let mut out = Vec::new();
        let Some(v) = self.viewers.remove(viewer) else {
            return out;
        };
        for code in v.keys {
            if let Some(up) = unhold(&mut self.keys, code) {
                out.push(SourceEvent::Key {
                    code: up,
                    down: false,
                });
            }
        }
        for button in 0..=MAX_MOUSE_BUTTON {
            if v.buttons & (1 << button) != 0 {
                let count = &mut self.buttons[usize::from(button)];
                *count -= 1;
                if *count == 0 {
                    out.push(SourceEvent::MouseButton {
                        button,
                        down: false,
                    });
                }
            }
        }
        for global in v.touches.into_values() {
            if let Some(t) = self.touches[usize::from(global)].take() {
                out.push(SourceEvent::Touch {
                    id: global,
                    phase: TouchPhase::End,
                    x: t.x,
                    y: t.y,
                });
            }
        }
        let mut slots: Vec<u8> = v.pads.into_values().collect();
        slots.sort_unstable();
        for slot in slots {
            free_slot(&mut self.slots, slot, &mut out);
        }
        out
    }

    /// Releases every viewer that holds something and has sent nothing (not
    /// even a ping) for longer than `idle`, in viewer order.
    pub fn expire(&mut self, now: Instant, idle: Duration) -> Vec<SourceEvent> {
        let silent: Vec<ViewerKey> = self
            .viewers
            .iter()
            .filter(|(_, v)| now.saturating_duration_since(v.last_seen) > idle)
            .map(|(k, _)| k.clone())
            .collect();
        silent
            .into_iter()
            .flat_map(|k| self.release(now, &k))
            .collect()
    }

    /// The merged state.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            cursor: self.cursor,
            keys_down: self.keys.keys().cloned().collect(),
            buttons_down: (0..=MAX_MOUSE_BUTTON)
                .filter(|&b| self.buttons[usize::from(b)] > 0)
                .collect(),
            touches: self
                .touches
                .iter()
                .zip(0u8..)
                .filter_map(|(t, id)| {
                    t.as_ref().map(|t| TouchState {
                        id,
                        owner: t.owner.clone(),
                        x: t.x,
                        y: t.y,
                    })
                })
                .collect(),
            pads: self
                .slots
                .iter()
                .zip(0u8..)
                .filter_map(|(s, slot)| {
                    s.as_ref().map(|s| PadState {
                        slot,
                        owner: s.owner.clone(),
                        pad: s.pad,
                        buttons: s.buttons.iter().map(|(&b, &v)| (b, v)).collect(),
                        axes: s.axes.iter().map(|(&a, &v)| (a, v)).collect(),
                    })
                })
                .collect(),
        }
    }

    fn forget_if_empty(&mut self, viewer: &str) {
        if self.viewers.get(viewer).is_some_and(Viewer::holds_nothing) {
            self.viewers.remove(viewer);
        }
    }

    fn key(
        &mut self,
        now: Instant,
        viewer: &str,
        code: &str,
        down: bool,
        out: &mut Vec<SourceEvent>,
    ) {
        let max_keys = self.limits.max_keys_per_viewer;
        let Some(v) = viewer_state(
            &mut self.viewers,
            self.limits.max_viewers,
            now,
            viewer,
            down,
        ) else {
            return;
        };
        if down {
            if v.keys.contains(code) || v.keys.len() >= max_keys {
                return;
            }
            v.keys.insert(code.to_owned());
            let count = self.keys.entry(code.to_owned()).or_insert(0);
            *count += 1;
            if *count == 1 {
                out.push(SourceEvent::Key {
                    code: code.to_owned(),
                    down: true,
                });
            }
        } else if let Some(held) = v.keys.take(code) {
            if let Some(code) = unhold(&mut self.keys, held) {
                out.push(SourceEvent::Key { code, down: false });
            }
        }
    }

    fn button(
        &mut self,
        now: Instant,
        viewer: &str,
        button: u8,
        down: bool,
        out: &mut Vec<SourceEvent>,
    ) {
        let Some(v) = viewer_state(
            &mut self.viewers,
            self.limits.max_viewers,
            now,
            viewer,
            down,
        ) else {
            return;
        };
        let bit = 1u16 << button;
        let held = v.buttons & bit != 0;
        let count = &mut self.buttons[usize::from(button)];
        if down && !held {
            v.buttons |= bit;
            *count += 1;
            if *count == 1 {
                out.push(SourceEvent::MouseButton { button, down });
            }
        } else if !down && held {
            v.buttons &= !bit;
            *count -= 1;
            if *count == 0 {
                out.push(SourceEvent::MouseButton { button, down });
            }
        }
    }

    fn touch(
        &mut self,
        now: Instant,
        viewer: &str,
        id: u8,
        phase: TouchPhase,
        (x, y): (u16, u16),
        out: &mut Vec<SourceEvent>,
    ) {
        let per_viewer = self.limits.max_touches_per_viewer;
        let start = phase == TouchPhase::Start;
        let Some(v) = viewer_state(
            &mut self.viewers,
            self.limits.max_viewers,
            now,
            viewer,
            start,
        ) else {
            return;
        };
        let touches = &mut self.touches;
        match (phase, v.touches.get(&id).copied()) {
            (TouchPhase::Start, Some(global)) => {
                // The viewer's end of the previous touch with this id was
                // lost: end it, then start again under the same global id.
                if let Some(t) = touches[usize::from(global)].as_mut() {
                    out.push(SourceEvent::Touch {
                        id: global,
                        phase: TouchPhase::End,
                        x: t.x,
                        y: t.y,
                    });
                    (t.x, t.y) = (x, y);
                }
                out.push(SourceEvent::Touch {
                    id: global,
                    phase,
                    x,
                    y,
                });
            }
            (TouchPhase::Start, None) => {
                if v.touches.len() >= per_viewer {
                    return;
                }
                let Some(global) = touches.iter().position(Option::is_none) else {
                    return;
                };
                touches[global] = Some(Touch {
                    owner: viewer.to_owned(),
                    x,
                    y,
                });
                // `touches` has at most u8::MAX entries.
                let global = global as u8;
                v.touches.insert(id, global);
                out.push(SourceEvent::Touch {
                    id: global,
                    phase,
                    x,
                    y,
                });
            }
            (TouchPhase::Move, Some(global)) => {
                if let Some(t) = touches[usize::from(global)].as_mut() {
                    (t.x, t.y) = (x, y);
                }
                out.push(SourceEvent::Touch {
                    id: global,
                    phase,
                    x,
                    y,
                });
            }
            (TouchPhase::End | TouchPhase::Cancel, Some(global)) => {
                v.touches.remove(&id);
                touches[usize::from(global)] = None;
                out.push(SourceEvent::Touch {
                    id: global,
                    phase,
                    x,
                    y,
                });
            }
            // Motion or end of a touch the viewer does not have (never
            // started, or dropped at a limit).
            (_, None) => {}
        }
    }

    /// The slot of the viewer's pad, assigned now (with `PadConnected`) if
    /// it had none; `None` when every slot is taken.
    fn pad_slot(
        &mut self,
        now: Instant,
        viewer: &str,
        pad: u8,
        out: &mut Vec<SourceEvent>,
    ) -> Option<u8> {
        let v = viewer_state(
            &mut self.viewers,
            self.limits.max_viewers,
            now,
            viewer,
            true,
        )?;
        if let Some(&slot) = v.pads.get(&pad) {
            return Some(slot);
        }
        let free = self.slots.iter().position(Option::is_none)?;
        self.slots[free] = Some(Slot {
            owner: viewer.to_owned(),
            pad,
            buttons: BTreeMap::new(),
            axes: BTreeMap::new(),
        });
        // `slots` has at most u8::MAX entries.
        let slot = free as u8;
        v.pads.insert(pad, slot);
        out.push(SourceEvent::PadConnected { slot });
        Some(slot)
    }
}

/// The viewer's state, created if `create` and fewer than `max` viewers
/// are tracked. (A free function so that it borrows only `viewers`.)
fn viewer_state<'a>(
    viewers: &'a mut BTreeMap<ViewerKey, Viewer>,
    max: usize,
    now: Instant,
    viewer: &str,
    create: bool,
) -> Option<&'a mut Viewer> {
    if !viewers.contains_key(viewer) {
        if !create || viewers.len() >= max {
            return None;
        }
        viewers.insert(viewer.to_owned(), Viewer::new(now));
    }
    viewers.get_mut(viewer)
}

/// One holder fewer for `code`; returns it when that was the last one.
fn unhold(keys: &mut BTreeMap<String, usize>, code: String) -> Option<String> {
    let count = keys.get_mut(&code)?;
    *count -= 1;
    if *count == 0 {
        keys.remove(&code);
        Some(code)
    } else {
        None
    }
}

fn set_or_clear<V: PartialEq>(map: &mut BTreeMap<u8, V>, k: u8, v: V, rest: V) {
    if v == rest {
        map.remove(&k);
    } else {
        map.insert(k, v);
    }
}

/// Brings the slot's pad to rest, disconnects it and frees the slot.
fn free_slot(slots: &mut [Option<Slot>], slot: u8, out: &mut Vec<SourceEvent>) {
    let Some(s) = slots.get_mut(usize::from(slot)).and_then(Option::take) else {
        return;
    };
    for button in s.buttons.into_keys() {
        out.push(SourceEvent::PadButton {
            slot,
            button,
            value: 0,
        });
    }
    for axis in s.axes.into_keys() {
        out.push(SourceEvent::PadAxis {
            slot,
            axis,
            value: 0,
        });
    }
    out.push(SourceEvent::PadDisconnected { slot });
}
