//! A session's merged input as its source applies it.
//!
//! The owner merges the input of every controlling viewer and of the
//! backend (union semantics, docs/protocol.md 6.3) into one ordered stream
//! of [`SourceEvent`]s. A source that reads its input itself (synthetic,
//! GameStream, desktop) gets them from the worker; for a source whose media
//! is pushed to the worker from elsewhere (`rtp`), the owner publishes them
//! as [`SourceInput`] on `source.<id>.input`, so whatever pushes the media
//! (a desktop bridge, say) can apply them: any producer that can send RTP
//! and read NATS is then a complete controllable source.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::SessionId;
use crate::input::TouchPhase;

/// One event of the merged input. Presses and releases balance: a key or
/// button goes down once however many viewers hold it, and up when the last
/// holder lets go or leaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceEvent {
    /// A key by its DOM `KeyboardEvent.code` ("KeyA", "ShiftLeft").
    Key { code: String, down: bool },
    /// Relative pointer motion in pixels (several viewers' motion adds up).
    MouseMove { dx: i32, dy: i32 },
    /// Absolute pointer position, normalised to 0..=65535 over the picture.
    MouseAbs { x: u16, y: u16 },
    /// A mouse button, numbered as DOM `MouseEvent.button` (0..=15).
    MouseButton { button: u8, down: bool },
    /// Scroll in 1/120 notch units.
    Wheel { dx: i32, dy: i32 },
    /// A touch point; `id` is the session-wide touch id (two viewers' touch
    /// 0 get different ids), the position normalised like `mouse_abs`.
    Touch {
        id: u8,
        phase: TouchPhase,
        x: u16,
        y: u16,
    },
    /// A gamepad button or trigger (0..=255) of controller `slot`.
    PadButton { slot: u8, button: u8, value: u8 },
    /// A gamepad axis (-32768..=32767) of controller `slot`.
    PadAxis { slot: u8, axis: u8, value: i16 },
    /// Controller `slot` appears, at rest.
    PadConnected { slot: u8 },
    /// Controller `slot` leaves; its buttons and axes went back to 0 just
    /// before.
    PadDisconnected { slot: u8 },
    /// A type this reader does not know (a newer owner's): skip it.
    #[serde(other)]
    Unknown,
}

impl SourceEvent {
    /// The `type` tag of the event's JSON form.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceEvent::Key { .. } => "key",
            SourceEvent::MouseMove { .. } => "mouse_move",
            SourceEvent::MouseAbs { .. } => "mouse_abs",
            SourceEvent::MouseButton { .. } => "mouse_button",
            SourceEvent::Wheel { .. } => "wheel",
            SourceEvent::Touch { .. } => "touch",
            SourceEvent::PadButton { .. } => "pad_button",
            SourceEvent::PadAxis { .. } => "pad_axis",
            SourceEvent::PadConnected { .. } => "pad_connected",
            SourceEvent::PadDisconnected { .. } => "pad_disconnected",
            SourceEvent::Unknown => "unknown",
        }
    }
}

/// `source.<id>.input`: the merged input of a session whose source reads it
/// from the bus (an `rtp` source), published by the session's owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SourceInput {
    pub session: SessionId,
    /// The owner's epoch (docs/protocol.md 3.3): a new owner after a
    /// takeover numbers from 1 again.
    pub epoch: u64,
    /// 1, 2, 3… per epoch: a gap means messages were lost (NATS core
    /// publishes at most once), and a reader should release what it holds.
    pub seq: u64,
    /// In the order the owner merged them; never empty.
    pub events: Vec<SourceEvent>,
}

/// Where a session's merged input goes, as `session.<id>.stats` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InputRoute {
    /// The source takes no input: it is merged and counted, nothing more.
    None,
    /// The source applies it itself (draws it, sends it to a host, injects
    /// it into a desktop).
    Source,
    /// Published on `source.<id>.input` for the media's producer.
    Bus,
}
