//! Viewer input: the events, their JSON form (for `session.<id>.input` on
//! NATS) and their compact binary form (the WebRTC data channel `input`).
//! The binary codec is specified in docs/protocol.md, "Input".

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Mouse buttons, numbered as DOM `MouseEvent.button`.
pub type Button = u8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TouchPhase {
    Start,
    Move,
    End,
    Cancel,
}

/// One input event from one viewer (or from the backend).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum InputEvent {
    /// A key by its DOM `KeyboardEvent.code` ("KeyA", "ShiftLeft").
    Key { code: String, down: bool },
    /// Relative pointer motion in pixels (pointer lock).
    MouseMove { dx: i16, dy: i16 },
    /// Absolute pointer position, normalised to 0..=65535 over the picture.
    MouseAbs { x: u16, y: u16 },
    MouseButton { button: Button, down: bool },
    /// Scroll in 1/120 notch units (high-resolution wheels send less than 120).
    Wheel { dx: i16, dy: i16 },
    /// A touch point, position normalised like `MouseAbs`.
    Touch { id: u8, phase: TouchPhase, x: u16, y: u16 },
    /// A gamepad button or trigger, 0..=255 (digital buttons send 0 or 255).
    PadButton { pad: u8, button: u8, value: u8 },
    /// A gamepad axis, -32768..=32767.
    PadAxis { pad: u8, axis: u8, value: i16 },
    /// A gamepad was connected (true) or disconnected (false).
    PadPresence { pad: u8, connected: bool },
    /// Nothing happened, but the viewer is alive and may control.
    Ping,
}

/// `session.<id>.input`: the backend injects input (an agent typing into
/// its own desktop). It is merged like one more viewer's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InjectInput {
    pub events: Vec<InputEvent>,
}
