//! Viewer input: the events, their JSON form (for `session.<id>.input` on
//! NATS) and their compact binary form (the WebRTC data channel `input`).
//!
//! # The binary form (data channel `input`)
//!
//! One data-channel message carries one or more events back to back, at
//! most [`MAX_INPUT_EVENTS`] (256) events and [`MAX_INPUT_BYTES`] (4096)
//! bytes. Every event is a one-byte type tag followed by fixed fields; all
//! integers are little-endian, `i16` is two's complement. There is no
//! padding, no length prefix (except the key code's) and no trailer.
//!
//! | tag    | event         | fields after the tag                                          | size |
//! |--------|---------------|---------------------------------------------------------------|------|
//! | `0x01` | `Key`         | `u8 flags` (bit 0 = down), `u8 len` (1..=32), `len` bytes of ASCII `code`, only `[A-Za-z0-9]` | 3 + len |
//! | `0x02` | `MouseMove`   | `i16 dx`, `i16 dy` (pixels, relative)                          | 5 |
//! | `0x03` | `MouseAbs`    | `u16 x`, `u16 y` (0..=65535 across the picture)                | 5 |
//! | `0x04` | `MouseButton` | `u8 button` (0..=15, DOM numbering), `u8 flags` (bit 0 = down) | 3 |
//! | `0x05` | `Wheel`       | `i16 dx`, `i16 dy` (1/120 notch)                               | 5 |
//! | `0x06` | `Touch`       | `u8 id`, `u8 phase` (0 start, 1 move, 2 end, 3 cancel), `u16 x`, `u16 y` | 7 |
//! | `0x07` | `PadButton`   | `u8 pad` (0..=15), `u8 button` (0..=31), `u8 value` (0..=255)  | 4 |
//! | `0x08` | `PadAxis`     | `u8 pad` (0..=15), `u8 axis` (0..=15), `i16 value`             | 5 |
//! | `0x09` | `PadPresence` | `u8 pad` (0..=15), `u8 flags` (bit 0 = connected)              | 3 |
//! | `0x0A` | `Ping`        | none                                                           | 1 |
//!
//! Flag bits other than bit 0 are reserved and must be 0. Key codes are DOM
//! `KeyboardEvent.code` values ("KeyA", "ShiftLeft", "F12", "Numpad0").
//!
//! A message is accepted whole or rejected whole. [`decode_input`] rejects:
//! - more than 4096 bytes: `too_large`;
//! - more than 256 events: `too_large`, naming the offset of event 257;
//! - an empty message, an unknown tag, a truncated event, a reserved flag
//!   bit set, a key code of length 0 or over 32 or with a byte outside
//!   `[A-Za-z0-9]`, a field out of its range: `invalid_request`, with a
//!   message naming the offset of the offending byte and the event.
//!
//! Example: `KeyA` down, then the pointer 3 px right and 1 px up, then a
//! ping: `01 01 04 4B 65 79 41  02 03 00 FF FF  0A`.
//!
//! The JSON form ([`InjectInput`]) follows the same range rules, checked by
//! [`validate_event`] and [`InjectInput::validate`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, WireError};

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
    Key {
        code: String,
        down: bool,
    },
    /// Relative pointer motion in pixels (pointer lock).
    MouseMove {
        dx: i16,
        dy: i16,
    },
    /// Absolute pointer position, normalised to 0..=65535 over the picture.
    MouseAbs {
        x: u16,
        y: u16,
    },
    MouseButton {
        button: Button,
        down: bool,
    },
    /// Scroll in 1/120 notch units (high-resolution wheels send less than 120).
    Wheel {
        dx: i16,
        dy: i16,
    },
    /// A touch point, position normalised like `MouseAbs`.
    Touch {
        id: u8,
        phase: TouchPhase,
        x: u16,
        y: u16,
    },
    /// A gamepad button or trigger, 0..=255 (digital buttons send 0 or 255).
    PadButton {
        pad: u8,
        button: u8,
        value: u8,
    },
    /// A gamepad axis, -32768..=32767.
    PadAxis {
        pad: u8,
        axis: u8,
        value: i16,
    },
    /// A gamepad was connected (true) or disconnected (false).
    PadPresence {
        pad: u8,
        connected: bool,
    },
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

impl InjectInput {
    /// Checks the event count and every event's ranges, like the binary
    /// path does (the byte limit does not apply to JSON).
    pub fn validate(&self) -> Result<(), WireError> {
        if self.events.len() > MAX_INPUT_EVENTS {
            return Err(WireError::new(
                ErrorCode::TooLarge,
                format!(
                    "{} events in one injection; the limit is {MAX_INPUT_EVENTS}",
                    self.events.len()
                ),
            ));
        }
        for (i, e) in self.events.iter().enumerate() {
            check_event(e).map_err(|v| {
                WireError::new(ErrorCode::InvalidRequest, format!("event {i}: {}", v.what))
            })?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Binary codec
// ---------------------------------------------------------------------------

/// The largest data-channel input message accepted, in bytes.
pub const MAX_INPUT_BYTES: usize = 4096;
/// The most events one message (or one injection) may carry.
pub const MAX_INPUT_EVENTS: usize = 256;
/// The longest key code, in bytes.
pub const MAX_KEY_CODE_LEN: usize = 32;
/// The highest mouse button number.
pub const MAX_MOUSE_BUTTON: u8 = 15;
/// The highest gamepad index (per viewer).
pub const MAX_PAD: u8 = 15;
/// The highest gamepad button number.
pub const MAX_PAD_BUTTON: u8 = 31;
/// The highest gamepad axis number.
pub const MAX_PAD_AXIS: u8 = 15;

/// The type tags of the binary form.
pub mod tag {
    pub const KEY: u8 = 0x01;
    pub const MOUSE_MOVE: u8 = 0x02;
    pub const MOUSE_ABS: u8 = 0x03;
    pub const MOUSE_BUTTON: u8 = 0x04;
    pub const WHEEL: u8 = 0x05;
    pub const TOUCH: u8 = 0x06;
    pub const PAD_BUTTON: u8 = 0x07;
    pub const PAD_AXIS: u8 = 0x08;
    pub const PAD_PRESENCE: u8 = 0x09;
    pub const PING: u8 = 0x0A;
}

const FLAG_ON: u8 = 0x01;

impl TouchPhase {
    /// The phase's number in the binary form.
    pub fn to_wire(self) -> u8 {
        match self {
            TouchPhase::Start => 0,
            TouchPhase::Move => 1,
            TouchPhase::End => 2,
            TouchPhase::Cancel => 3,
        }
    }

    pub fn from_wire(b: u8) -> Option<TouchPhase> {
        match b {
            0 => Some(TouchPhase::Start),
            1 => Some(TouchPhase::Move),
            2 => Some(TouchPhase::End),
            3 => Some(TouchPhase::Cancel),
            _ => None,
        }
    }
}

impl InputEvent {
    /// The event's name, as in its JSON `type` (for messages and logs).
    pub fn kind(&self) -> &'static str {
        match self {
            InputEvent::Key { .. } => "key",
            InputEvent::MouseMove { .. } => "mouse_move",
            InputEvent::MouseAbs { .. } => "mouse_abs",
            InputEvent::MouseButton { .. } => "mouse_button",
            InputEvent::Wheel { .. } => "wheel",
            InputEvent::Touch { .. } => "touch",
            InputEvent::PadButton { .. } => "pad_button",
            InputEvent::PadAxis { .. } => "pad_axis",
            InputEvent::PadPresence { .. } => "pad_presence",
            InputEvent::Ping => "ping",
        }
    }

    /// The event's size in the binary form (assuming it is valid).
    pub fn wire_len(&self) -> usize {
        match self {
            InputEvent::Key { code, .. } => 3 + code.len(),
            InputEvent::MouseMove { .. }
            | InputEvent::MouseAbs { .. }
            | InputEvent::Wheel { .. }
            | InputEvent::PadAxis { .. } => 5,
            InputEvent::MouseButton { .. } | InputEvent::PadPresence { .. } => 3,
            InputEvent::Touch { .. } => 7,
            InputEvent::PadButton { .. } => 4,
            InputEvent::Ping => 1,
        }
    }
}

/// A broken range rule: where (offset from the event's tag, in the binary
/// form) and what.
#[derive(Debug)]
struct Violation {
    at: usize,
    what: String,
}

fn violation(at: usize, what: impl Into<String>) -> Result<(), Violation> {
    Err(Violation {
        at,
        what: what.into(),
    })
}

/// Length and alphabet of a key code; offsets as in the binary form
/// (length byte at 2, code from 3).
fn check_code(code: &[u8]) -> Result<(), Violation> {
    if code.is_empty() || code.len() > MAX_KEY_CODE_LEN {
        return violation(
            2,
            format!(
                "key code length {} is out of range 1..={MAX_KEY_CODE_LEN}",
                code.len()
            ),
        );
    }
    match code.iter().position(|b| !b.is_ascii_alphanumeric()) {
        Some(i) => violation(
            3 + i,
            format!(
                "key code byte 0x{:02X} at index {i} is not in [A-Za-z0-9]",
                code[i]
            ),
        ),
        None => Ok(()),
    }
}

fn check_range(at: usize, what: &str, value: u8, max: u8) -> Result<(), Violation> {
    if value > max {
        violation(at, format!("{what} {value} is out of range 0..={max}"))
    } else {
        Ok(())
    }
}

/// The range rules every event obeys, on either path.
fn check_event(e: &InputEvent) -> Result<(), Violation> {
    match e {
        InputEvent::Key { code, .. } => check_code(code.as_bytes()),
        InputEvent::MouseButton { button, .. } => {
            check_range(1, "mouse button", *button, MAX_MOUSE_BUTTON)
        }
        InputEvent::PadButton { pad, button, .. } => {
            check_range(1, "pad", *pad, MAX_PAD)?;
            check_range(2, "pad button", *button, MAX_PAD_BUTTON)
        }
        InputEvent::PadAxis { pad, axis, .. } => {
            check_range(1, "pad", *pad, MAX_PAD)?;
            check_range(2, "pad axis", *axis, MAX_PAD_AXIS)
        }
        InputEvent::PadPresence { pad, .. } => check_range(1, "pad", *pad, MAX_PAD),
        InputEvent::MouseMove { .. }
        | InputEvent::MouseAbs { .. }
        | InputEvent::Wheel { .. }
        | InputEvent::Touch { .. }
        | InputEvent::Ping => Ok(()),
    }
}

/// Checks one event's ranges (the JSON path: `InjectInput`). The rules are
/// those of the binary form: key code 1..=32 bytes of `[A-Za-z0-9]`, mouse
/// button 0..=15, pad 0..=15, pad button 0..=31, pad axis 0..=15.
pub fn validate_event(e: &InputEvent) -> Result<(), WireError> {
    check_event(e).map_err(|v| WireError::new(ErrorCode::InvalidRequest, v.what))
}

/// Encodes events into one data-channel message (the inverse of
/// [`decode_input`]). Fails on an empty list, an event out of range
/// (`invalid_request`), or more than 256 events or 4096 bytes (`too_large`).
pub fn encode_input(events: &[InputEvent]) -> Result<Vec<u8>, WireError> {
    if events.is_empty() {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            "no events to encode",
        ));
    }
    if events.len() > MAX_INPUT_EVENTS {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!(
                "{} events; one message carries at most {MAX_INPUT_EVENTS}",
                events.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(events.iter().map(InputEvent::wire_len).sum());
    for (i, e) in events.iter().enumerate() {
        check_event(e).map_err(|v| {
            WireError::new(
                ErrorCode::InvalidRequest,
                format!("event {i} ({}): {}", e.kind(), v.what),
            )
        })?;
        encode_one(e, &mut out);
        if out.len() > MAX_INPUT_BYTES {
            return Err(WireError::new(
                ErrorCode::TooLarge,
                format!("event {i} ends past byte {MAX_INPUT_BYTES}, the message size limit"),
            ));
        }
    }
    Ok(out)
}

fn flag(on: bool) -> u8 {
    if on {
        FLAG_ON
    } else {
        0
    }
}

/// Appends one (already checked) event.
fn encode_one(e: &InputEvent, out: &mut Vec<u8>) {
    match e {
        InputEvent::Key { code, down } => {
            out.extend_from_slice(&[tag::KEY, flag(*down), code.len() as u8]);
            out.extend_from_slice(code.as_bytes());
        }
        InputEvent::MouseMove { dx, dy } => {
            out.push(tag::MOUSE_MOVE);
            out.extend_from_slice(&dx.to_le_bytes());
            out.extend_from_slice(&dy.to_le_bytes());
        }
        InputEvent::MouseAbs { x, y } => {
            out.push(tag::MOUSE_ABS);
            out.extend_from_slice(&x.to_le_bytes());
            out.extend_from_slice(&y.to_le_bytes());
        }
        InputEvent::MouseButton { button, down } => {
            out.extend_from_slice(&[tag::MOUSE_BUTTON, *button, flag(*down)]);
        }
        InputEvent::Wheel { dx, dy } => {
            out.push(tag::WHEEL);
            out.extend_from_slice(&dx.to_le_bytes());
            out.extend_from_slice(&dy.to_le_bytes());
        }
        InputEvent::Touch { id, phase, x, y } => {
            out.extend_from_slice(&[tag::TOUCH, *id, phase.to_wire()]);
            out.extend_from_slice(&x.to_le_bytes());
            out.extend_from_slice(&y.to_le_bytes());
        }
        InputEvent::PadButton { pad, button, value } => {
            out.extend_from_slice(&[tag::PAD_BUTTON, *pad, *button, *value]);
        }
        InputEvent::PadAxis { pad, axis, value } => {
            out.extend_from_slice(&[tag::PAD_AXIS, *pad, *axis]);
            out.extend_from_slice(&value.to_le_bytes());
        }
        InputEvent::PadPresence { pad, connected } => {
            out.extend_from_slice(&[tag::PAD_PRESENCE, *pad, flag(*connected)]);
        }
        InputEvent::Ping => out.push(tag::PING),
    }
}

/// Decodes one data-channel message into its events. Never panics; any
/// defect rejects the whole message with an error naming the byte offset
/// (see the module documentation for the format and the rules).
pub fn decode_input(bytes: &[u8]) -> Result<Vec<InputEvent>, WireError> {
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!(
                "input message is {} bytes; the limit is {MAX_INPUT_BYTES}",
                bytes.len()
            ),
        ));
    }
    if bytes.is_empty() {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            "byte 0: empty input message; at least one event expected",
        ));
    }
    let mut events = Vec::new();
    let mut start = 0;
    while start < bytes.len() {
        let index = events.len();
        if index == MAX_INPUT_EVENTS {
            return Err(WireError::new(
                ErrorCode::TooLarge,
                format!("byte {start}: more than {MAX_INPUT_EVENTS} events in one input message"),
            ));
        }
        let (event, len) = decode_one(&bytes[start..]).map_err(|v| {
            WireError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "byte {}: {} (event {index}, starting at byte {start})",
                    start + v.at,
                    v.what
                ),
            )
        })?;
        events.push(event);
        start += len;
    }
    Ok(events)
}

/// Reads the fixed fields of one event whose length was checked first.
struct Reader<'a> {
    b: &'a [u8],
}

impl Reader<'_> {
    fn u8(&self, at: usize) -> u8 {
        self.b[at]
    }
    fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.b[at], self.b[at + 1]])
    }
    fn i16(&self, at: usize) -> i16 {
        i16::from_le_bytes([self.b[at], self.b[at + 1]])
    }
    /// Field `at` holding flags: bit 0, with the reserved bits checked.
    fn flag(&self, at: usize) -> Result<bool, Violation> {
        let f = self.u8(at);
        if f & !FLAG_ON != 0 {
            return Err(Violation {
                at,
                what: format!("flags 0x{f:02X} set reserved bits (only bit 0 is defined)"),
            });
        }
        Ok(f & FLAG_ON != 0)
    }
}

/// Decodes the event at the start of `b` (which is not empty); returns it
/// with its length. Offsets in a violation are relative to `b`.
fn decode_one(b: &[u8]) -> Result<(InputEvent, usize), Violation> {
    let t = b[0];
    let (name, need) = match t {
        tag::KEY => ("key", 3),
        tag::MOUSE_MOVE => ("mouse_move", 5),
        tag::MOUSE_ABS => ("mouse_abs", 5),
        tag::MOUSE_BUTTON => ("mouse_button", 3),
        tag::WHEEL => ("wheel", 5),
        tag::TOUCH => ("touch", 7),
        tag::PAD_BUTTON => ("pad_button", 4),
        tag::PAD_AXIS => ("pad_axis", 5),
        tag::PAD_PRESENCE => ("pad_presence", 3),
        tag::PING => ("ping", 1),
        _ => {
            return Err(Violation {
                at: 0,
                what: format!("unknown event type 0x{t:02X}"),
            })
        }
    };
    let truncated = |need: usize| Violation {
        at: 0,
        what: format!(
            "truncated {name} event: needs {need} bytes, {} left",
            b.len()
        ),
    };
    if b.len() < need {
        return Err(truncated(need));
    }
    let r = Reader { b };
    let event = match t {
        tag::KEY => {
            let down = r.flag(1)?;
            let len = usize::from(r.u8(2));
            if len == 0 || len > MAX_KEY_CODE_LEN {
                return Err(Violation {
                    at: 2,
                    what: format!("key code length {len} is out of range 1..={MAX_KEY_CODE_LEN}"),
                });
            }
            let need = 3 + len;
            if b.len() < need {
                return Err(truncated(need));
            }
            let code = &b[3..need];
            check_code(code)?;
            // Only ASCII alphanumerics remain, so this is valid UTF-8.
            let code = code.iter().map(|&c| char::from(c)).collect();
            return Ok((InputEvent::Key { code, down }, need));
        }
        tag::MOUSE_MOVE => InputEvent::MouseMove {
            dx: r.i16(1),
            dy: r.i16(3),
        },
        tag::MOUSE_ABS => InputEvent::MouseAbs {
            x: r.u16(1),
            y: r.u16(3),
        },
        tag::MOUSE_BUTTON => {
            let button = r.u8(1);
            check_range(1, "mouse button", button, MAX_MOUSE_BUTTON)?;
            InputEvent::MouseButton {
                button,
                down: r.flag(2)?,
            }
        }
        tag::WHEEL => InputEvent::Wheel {
            dx: r.i16(1),
            dy: r.i16(3),
        },
        tag::TOUCH => {
            let p = r.u8(2);
            let phase = TouchPhase::from_wire(p).ok_or_else(|| Violation {
                at: 2,
                what: format!("touch phase {p} is out of range 0..=3"),
            })?;
            InputEvent::Touch {
                id: r.u8(1),
                phase,
                x: r.u16(3),
                y: r.u16(5),
            }
        }
        tag::PAD_BUTTON => InputEvent::PadButton {
            pad: r.u8(1),
            button: r.u8(2),
            value: r.u8(3),
        },
        tag::PAD_AXIS => InputEvent::PadAxis {
            pad: r.u8(1),
            axis: r.u8(2),
            value: r.i16(3),
        },
        tag::PAD_PRESENCE => {
            let pad = r.u8(1);
            check_range(1, "pad", pad, MAX_PAD)?;
            InputEvent::PadPresence {
                pad,
                connected: r.flag(2)?,
            }
        }
        // tag::PING; unknown tags were rejected above.
        _ => InputEvent::Ping,
    };
    // The range rules shared with the JSON path (fields are checked in
    // offset order, so the first bad byte is the one reported).
    check_event(&event)?;
    Ok((event, need))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(code: &str, down: bool) -> InputEvent {
        InputEvent::Key {
            code: code.into(),
            down,
        }
    }

    /// One of every variant, with values at their edges.
    fn every_variant() -> Vec<InputEvent> {
        vec![
            key("KeyA", true),
            key("ShiftLeft", false),
            key("F12", true),
            key("Numpad0", false),
            key(&"Z".repeat(32), true),
            InputEvent::MouseMove { dx: 3, dy: -1 },
            InputEvent::MouseMove {
                dx: i16::MIN,
                dy: i16::MAX,
            },
            InputEvent::MouseAbs { x: 0, y: 65535 },
            InputEvent::MouseButton {
                button: 0,
                down: true,
            },
            InputEvent::MouseButton {
                button: 15,
                down: false,
            },
            InputEvent::Wheel { dx: -120, dy: 40 },
            InputEvent::Touch {
                id: 0,
                phase: TouchPhase::Start,
                x: 1,
                y: 2,
            },
            InputEvent::Touch {
                id: 255,
                phase: TouchPhase::Move,
                x: 65535,
                y: 0,
            },
            InputEvent::Touch {
                id: 7,
                phase: TouchPhase::End,
                x: 300,
                y: 400,
            },
            InputEvent::Touch {
                id: 7,
                phase: TouchPhase::Cancel,
                x: 0,
                y: 0,
            },
            InputEvent::PadButton {
                pad: 15,
                button: 31,
                value: 255,
            },
            InputEvent::PadButton {
                pad: 0,
                button: 0,
                value: 0,
            },
            InputEvent::PadAxis {
                pad: 3,
                axis: 15,
                value: -32768,
            },
            InputEvent::PadAxis {
                pad: 0,
                axis: 0,
                value: 32767,
            },
            InputEvent::PadPresence {
                pad: 15,
                connected: true,
            },
            InputEvent::PadPresence {
                pad: 0,
                connected: false,
            },
            InputEvent::Ping,
        ]
    }

    fn err(bytes: &[u8]) -> WireError {
        decode_input(bytes).expect_err("must be rejected")
    }

    fn invalid(bytes: &[u8], message: &str) {
        let e = err(bytes);
        assert_eq!(e.code, ErrorCode::InvalidRequest, "{e}");
        assert_eq!(e.message, message);
    }

    #[test]
    fn every_variant_round_trips_alone_and_together() {
        let all = every_variant();
        for e in &all {
            let bytes = encode_input(std::slice::from_ref(e)).unwrap();
            assert_eq!(bytes.len(), e.wire_len(), "{e:?}");
            assert_eq!(decode_input(&bytes).unwrap(), vec![e.clone()], "{e:?}");
            validate_event(e).unwrap();
        }
        let bytes = encode_input(&all).unwrap();
        assert_eq!(decode_input(&bytes).unwrap(), all);
    }

    #[test]
    fn documented_example_bytes() {
        let events = vec![
            key("KeyA", true),
            InputEvent::MouseMove { dx: 3, dy: -1 },
            InputEvent::Ping,
        ];
        let bytes = encode_input(&events).unwrap();
        assert_eq!(
            bytes,
            [0x01, 0x01, 0x04, b'K', b'e', b'y', b'A', 0x02, 0x03, 0x00, 0xFF, 0xFF, 0x0A]
        );
        assert_eq!(decode_input(&bytes).unwrap(), events);
    }

    #[test]
    fn exact_layout_of_each_event() {
        let cases: Vec<(InputEvent, Vec<u8>)> = vec![
            (
                InputEvent::MouseAbs {
                    x: 0x1234,
                    y: 0xABCD,
                },
                vec![0x03, 0x34, 0x12, 0xCD, 0xAB],
            ),
            (
                InputEvent::MouseButton {
                    button: 2,
                    down: true,
                },
                vec![0x04, 0x02, 0x01],
            ),
            (
                InputEvent::Wheel { dx: 0, dy: -120 },
                vec![0x05, 0x00, 0x00, 0x88, 0xFF],
            ),
            (
                InputEvent::Touch {
                    id: 9,
                    phase: TouchPhase::Cancel,
                    x: 0x0102,
                    y: 0x0304,
                },
                vec![0x06, 0x09, 0x03, 0x02, 0x01, 0x04, 0x03],
            ),
            (
                InputEvent::PadButton {
                    pad: 1,
                    button: 5,
                    value: 200,
                },
                vec![0x07, 0x01, 0x05, 200],
            ),
            (
                InputEvent::PadAxis {
                    pad: 2,
                    axis: 3,
                    value: -2,
                },
                vec![0x08, 0x02, 0x03, 0xFE, 0xFF],
            ),
            (
                InputEvent::PadPresence {
                    pad: 4,
                    connected: true,
                },
                vec![0x09, 0x04, 0x01],
            ),
            (
                key("Enter", false),
                vec![0x01, 0x00, 0x05, b'E', b'n', b't', b'e', b'r'],
            ),
        ];
        for (event, bytes) in cases {
            assert_eq!(
                encode_input(std::slice::from_ref(&event)).unwrap(),
                bytes,
                "{event:?}"
            );
            assert_eq!(decode_input(&bytes).unwrap(), vec![event]);
        }
    }

    #[test]
    fn the_limits_themselves_are_accepted() {
        let pings = vec![InputEvent::Ping; MAX_INPUT_EVENTS];
        let bytes = encode_input(&pings).unwrap();
        assert_eq!(decode_input(&bytes).unwrap().len(), MAX_INPUT_EVENTS);
        // 117 events of 35 bytes = 4095, plus a ping: exactly 4096 bytes.
        let mut big = vec![key(&"A".repeat(32), true); 117];
        big.push(InputEvent::Ping);
        let bytes = encode_input(&big).unwrap();
        assert_eq!(bytes.len(), MAX_INPUT_BYTES);
        assert_eq!(decode_input(&bytes).unwrap(), big);
    }

    #[test]
    fn too_large_messages() {
        let e = err(&[tag::PING; MAX_INPUT_BYTES + 1]);
        assert_eq!(e.code, ErrorCode::TooLarge);
        assert_eq!(e.message, "input message is 4097 bytes; the limit is 4096");

        let e = err(&[tag::PING; MAX_INPUT_EVENTS + 1]);
        assert_eq!(e.code, ErrorCode::TooLarge);
        assert_eq!(
            e.message,
            "byte 256: more than 256 events in one input message"
        );

        // With 3-byte events, event 257 starts at byte 768.
        let mut bytes = Vec::new();
        for _ in 0..=MAX_INPUT_EVENTS {
            bytes.extend_from_slice(&[tag::MOUSE_BUTTON, 1, 0]);
        }
        let e = err(&bytes);
        assert_eq!(e.code, ErrorCode::TooLarge);
        assert!(e.message.starts_with("byte 768: "), "{e}");
    }

    #[test]
    fn empty_message_is_rejected() {
        invalid(
            &[],
            "byte 0: empty input message; at least one event expected",
        );
    }

    #[test]
    fn unknown_tags_name_their_offset() {
        invalid(
            &[0x00],
            "byte 0: unknown event type 0x00 (event 0, starting at byte 0)",
        );
        invalid(
            &[0x0A, 0x0A, 0x0B],
            "byte 2: unknown event type 0x0B (event 2, starting at byte 2)",
        );
        invalid(
            &[0x02, 1, 0, 1, 0, 0xFF],
            "byte 5: unknown event type 0xFF (event 1, starting at byte 5)",
        );
    }

    #[test]
    fn truncated_events_name_their_start() {
        invalid(&[0x02, 1, 0, 1], "byte 0: truncated mouse_move event: needs 5 bytes, 4 left (event 0, starting at byte 0)");
        invalid(
            &[0x0A, 0x06, 0, 0, 0, 0, 0],
            "byte 1: truncated touch event: needs 7 bytes, 6 left (event 1, starting at byte 1)",
        );
        invalid(
            &[0x0A, 0x01, 0x01],
            "byte 1: truncated key event: needs 3 bytes, 2 left (event 1, starting at byte 1)",
        );
        invalid(
            &[0x01, 0x01, 0x04, b'K', b'e', b'y'],
            "byte 0: truncated key event: needs 7 bytes, 6 left (event 0, starting at byte 0)",
        );
        invalid(&[0x07, 0, 0], "byte 0: truncated pad_button event: needs 4 bytes, 3 left (event 0, starting at byte 0)");
        invalid(
            &[0x08, 0, 0, 0],
            "byte 0: truncated pad_axis event: needs 5 bytes, 4 left (event 0, starting at byte 0)",
        );
        invalid(&[0x09, 0], "byte 0: truncated pad_presence event: needs 3 bytes, 2 left (event 0, starting at byte 0)");
        invalid(&[0x04, 0], "byte 0: truncated mouse_button event: needs 3 bytes, 2 left (event 0, starting at byte 0)");
        invalid(&[0x03, 0, 0, 0], "byte 0: truncated mouse_abs event: needs 5 bytes, 4 left (event 0, starting at byte 0)");
        invalid(
            &[0x05],
            "byte 0: truncated wheel event: needs 5 bytes, 1 left (event 0, starting at byte 0)",
        );
    }

    #[test]
    fn bad_key_codes_name_the_byte() {
        invalid(
            &[0x01, 0x01, 0x00],
            "byte 2: key code length 0 is out of range 1..=32 (event 0, starting at byte 0)",
        );
        let mut long = vec![0x0A, 0x01, 0x00, 33];
        long.extend_from_slice(&[b'A'; 33]);
        invalid(
            &long,
            "byte 3: key code length 33 is out of range 1..=32 (event 1, starting at byte 1)",
        );
        invalid(&[0x01, 0x01, 0x04, b'K', b'e', b'-', b'A'], "byte 5: key code byte 0x2D at index 2 is not in [A-Za-z0-9] (event 0, starting at byte 0)");
        invalid(&[0x01, 0x00, 0x02, 0xC3, 0xA9], "byte 3: key code byte 0xC3 at index 0 is not in [A-Za-z0-9] (event 0, starting at byte 0)");
        invalid(&[0x01, 0x00, 0x01, 0x00], "byte 3: key code byte 0x00 at index 0 is not in [A-Za-z0-9] (event 0, starting at byte 0)");
    }

    #[test]
    fn reserved_flag_bits_are_rejected() {
        invalid(&[0x01, 0x03, 0x01, b'A'], "byte 1: flags 0x03 set reserved bits (only bit 0 is defined) (event 0, starting at byte 0)");
        invalid(&[0x0A, 0x04, 0x01, 0x80], "byte 3: flags 0x80 set reserved bits (only bit 0 is defined) (event 1, starting at byte 1)");
        invalid(&[0x09, 0x00, 0x02], "byte 2: flags 0x02 set reserved bits (only bit 0 is defined) (event 0, starting at byte 0)");
    }

    #[test]
    fn out_of_range_fields_name_the_byte() {
        invalid(
            &[0x04, 16, 1],
            "byte 1: mouse button 16 is out of range 0..=15 (event 0, starting at byte 0)",
        );
        // The first bad byte wins when two are bad.
        invalid(
            &[0x04, 16, 0xFF],
            "byte 1: mouse button 16 is out of range 0..=15 (event 0, starting at byte 0)",
        );
        invalid(
            &[0x0A, 0x06, 0, 4, 0, 0, 0, 0],
            "byte 3: touch phase 4 is out of range 0..=3 (event 1, starting at byte 1)",
        );
        invalid(
            &[0x07, 16, 0, 0],
            "byte 1: pad 16 is out of range 0..=15 (event 0, starting at byte 0)",
        );
        invalid(
            &[0x07, 0, 32, 0],
            "byte 2: pad button 32 is out of range 0..=31 (event 0, starting at byte 0)",
        );
        invalid(
            &[0x08, 200, 0, 0, 0],
            "byte 1: pad 200 is out of range 0..=15 (event 0, starting at byte 0)",
        );
        invalid(
            &[0x08, 0, 16, 0, 0],
            "byte 2: pad axis 16 is out of range 0..=15 (event 0, starting at byte 0)",
        );
        invalid(
            &[0x0A, 0x0A, 0x09, 16, 1],
            "byte 3: pad 16 is out of range 0..=15 (event 2, starting at byte 2)",
        );
    }

    #[test]
    fn one_bad_event_rejects_the_whole_message() {
        let mut bytes = encode_input(&[key("KeyA", true), InputEvent::Ping]).unwrap();
        bytes.push(0x42);
        let e = err(&bytes);
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert_eq!(
            e.message,
            "byte 8: unknown event type 0x42 (event 2, starting at byte 8)"
        );
    }

    #[test]
    fn encode_rejects_what_decode_would() {
        let e = encode_input(&[]).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);

        let e = encode_input(&[InputEvent::Ping, key(&"A".repeat(33), true)]).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert_eq!(
            e.message,
            "event 1 (key): key code length 33 is out of range 1..=32"
        );

        let e = encode_input(&[key("", true)]).unwrap_err();
        assert_eq!(
            e.message,
            "event 0 (key): key code length 0 is out of range 1..=32"
        );

        let e = encode_input(&[key("Key A", true)]).unwrap_err();
        assert_eq!(
            e.message,
            "event 0 (key): key code byte 0x20 at index 3 is not in [A-Za-z0-9]"
        );

        let e = encode_input(&[key("Ä", true)]).unwrap_err();
        assert_eq!(
            e.message,
            "event 0 (key): key code byte 0xC3 at index 0 is not in [A-Za-z0-9]"
        );

        let e = encode_input(&[InputEvent::MouseButton {
            button: 16,
            down: true,
        }])
        .unwrap_err();
        assert_eq!(
            e.message,
            "event 0 (mouse_button): mouse button 16 is out of range 0..=15"
        );

        let e = encode_input(&vec![InputEvent::Ping; MAX_INPUT_EVENTS + 1]).unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);

        let e = encode_input(&vec![key(&"A".repeat(32), true); 118]).unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);
        assert_eq!(
            e.message,
            "event 117 ends past byte 4096, the message size limit"
        );
    }

    #[test]
    fn validate_event_applies_the_binary_ranges() {
        for e in every_variant() {
            validate_event(&e).unwrap();
        }
        let bad = [
            (key("", true), "key code length 0 is out of range 1..=32"),
            (
                key(&"a".repeat(33), true),
                "key code length 33 is out of range 1..=32",
            ),
            (
                key("Key_A", false),
                "key code byte 0x5F at index 3 is not in [A-Za-z0-9]",
            ),
            (
                InputEvent::MouseButton {
                    button: 200,
                    down: false,
                },
                "mouse button 200 is out of range 0..=15",
            ),
            (
                InputEvent::PadButton {
                    pad: 16,
                    button: 0,
                    value: 1,
                },
                "pad 16 is out of range 0..=15",
            ),
            (
                InputEvent::PadButton {
                    pad: 0,
                    button: 32,
                    value: 1,
                },
                "pad button 32 is out of range 0..=31",
            ),
            (
                InputEvent::PadAxis {
                    pad: 0,
                    axis: 16,
                    value: 1,
                },
                "pad axis 16 is out of range 0..=15",
            ),
            (
                InputEvent::PadPresence {
                    pad: 99,
                    connected: true,
                },
                "pad 99 is out of range 0..=15",
            ),
        ];
        for (e, msg) in bad {
            let err = validate_event(&e).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidRequest);
            assert_eq!(err.message, msg, "{e:?}");
        }
    }

    #[test]
    fn inject_input_validation() {
        let ok = InjectInput {
            events: every_variant(),
        };
        ok.validate().unwrap();
        let bad = InjectInput {
            events: vec![InputEvent::Ping, key("Shift Left", true)],
        };
        let e = bad.validate().unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert_eq!(
            e.message,
            "event 1: key code byte 0x20 at index 5 is not in [A-Za-z0-9]"
        );
        let many = InjectInput {
            events: vec![InputEvent::Ping; MAX_INPUT_EVENTS + 1],
        };
        assert_eq!(many.validate().unwrap_err().code, ErrorCode::TooLarge);
        // The JSON form still parses as before.
        let json = r#"{"events":[{"type":"key","code":"KeyA","down":true},{"type":"touch","id":1,"phase":"start","x":5,"y":6},{"type":"ping"}]}"#;
        let parsed: InjectInput = serde_json::from_str(json).unwrap();
        parsed.validate().unwrap();
        assert_eq!(parsed.events.len(), 3);
    }

    #[test]
    fn touch_phase_wire_numbers() {
        for (n, p) in [
            TouchPhase::Start,
            TouchPhase::Move,
            TouchPhase::End,
            TouchPhase::Cancel,
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(usize::from(p.to_wire()), n);
            assert_eq!(TouchPhase::from_wire(n as u8), Some(p));
        }
        assert_eq!(TouchPhase::from_wire(4), None);
    }

    fn touch_phase() -> impl Strategy<Value = TouchPhase> {
        prop_oneof![
            Just(TouchPhase::Start),
            Just(TouchPhase::Move),
            Just(TouchPhase::End),
            Just(TouchPhase::Cancel),
        ]
    }

    /// Any event that obeys the range rules.
    fn valid_event() -> impl Strategy<Value = InputEvent> {
        prop_oneof![
            ("[A-Za-z0-9]{1,32}", any::<bool>())
                .prop_map(|(code, down)| InputEvent::Key { code, down }),
            (any::<i16>(), any::<i16>()).prop_map(|(dx, dy)| InputEvent::MouseMove { dx, dy }),
            (any::<u16>(), any::<u16>()).prop_map(|(x, y)| InputEvent::MouseAbs { x, y }),
            (0..=MAX_MOUSE_BUTTON, any::<bool>())
                .prop_map(|(button, down)| InputEvent::MouseButton { button, down }),
            (any::<i16>(), any::<i16>()).prop_map(|(dx, dy)| InputEvent::Wheel { dx, dy }),
            (any::<u8>(), touch_phase(), any::<u16>(), any::<u16>())
                .prop_map(|(id, phase, x, y)| InputEvent::Touch { id, phase, x, y }),
            (0..=MAX_PAD, 0..=MAX_PAD_BUTTON, any::<u8>())
                .prop_map(|(pad, button, value)| InputEvent::PadButton { pad, button, value }),
            (0..=MAX_PAD, 0..=MAX_PAD_AXIS, any::<i16>())
                .prop_map(|(pad, axis, value)| InputEvent::PadAxis { pad, axis, value }),
            (0..=MAX_PAD, any::<bool>())
                .prop_map(|(pad, connected)| InputEvent::PadPresence { pad, connected }),
            Just(InputEvent::Ping),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn prop_round_trip(events in prop::collection::vec(valid_event(), 1..=100)) {
            // 100 events of at most 35 bytes always fit in 4096.
            let bytes = encode_input(&events).unwrap();
            prop_assert_eq!(bytes.len(), events.iter().map(InputEvent::wire_len).sum::<usize>());
            prop_assert_eq!(decode_input(&bytes).unwrap(), events);
        }

        #[test]
        fn prop_valid_events_validate_and_survive_json(e in valid_event()) {
            prop_assert!(validate_event(&e).is_ok());
            let json = serde_json::to_string(&e).unwrap();
            let back: InputEvent = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back, e);
        }

        #[test]
        fn prop_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            check_arbitrary(&bytes)?;
        }

        /// Bytes that look more like input (mostly known tags), so the
        /// decoder gets deep into events before failing.
        #[test]
        fn prop_decode_never_panics_on_near_misses(
            bytes in prop::collection::vec(
                prop_oneof![4 => 0u8..=0x0B, 1 => any::<u8>(), 1 => Just(b'A')],
                0..400,
            )
        ) {
            check_arbitrary(&bytes)?;
        }

        #[test]
        fn prop_encode_and_validate_agree(e in any_event()) {
            prop_assert_eq!(validate_event(&e).is_ok(), encode_input(std::slice::from_ref(&e)).is_ok());
        }
    }

    /// Whatever `decode_input` accepts, `encode_input` turns back into the
    /// very same bytes (the encoding is canonical); whatever it rejects gets
    /// an offset inside the message.
    fn check_arbitrary(bytes: &[u8]) -> Result<(), TestCaseError> {
        match decode_input(bytes) {
            Ok(events) => {
                prop_assert!(!events.is_empty() && events.len() <= MAX_INPUT_EVENTS);
                prop_assert_eq!(encode_input(&events).unwrap(), bytes.to_vec());
            }
            Err(e) => {
                if e.code == ErrorCode::InvalidRequest {
                    let offset: usize = e
                        .message
                        .strip_prefix("byte ")
                        .and_then(|m| m.split(':').next())
                        .and_then(|n| n.parse().ok())
                        .ok_or_else(|| TestCaseError::fail(format!("no offset in {e}")))?;
                    prop_assert!(offset < bytes.len().max(1), "{}", e);
                } else {
                    prop_assert_eq!(e.code, ErrorCode::TooLarge);
                }
            }
        }
        Ok(())
    }

    /// Any event at all, valid or not.
    fn any_event() -> impl Strategy<Value = InputEvent> {
        prop_oneof![
            (".{0,40}", any::<bool>()).prop_map(|(code, down)| InputEvent::Key { code, down }),
            (any::<u8>(), any::<bool>())
                .prop_map(|(button, down)| InputEvent::MouseButton { button, down }),
            (any::<u8>(), any::<u8>(), any::<u8>())
                .prop_map(|(pad, button, value)| InputEvent::PadButton { pad, button, value }),
            (any::<u8>(), any::<u8>(), any::<i16>())
                .prop_map(|(pad, axis, value)| InputEvent::PadAxis { pad, axis, value }),
            (any::<u8>(), any::<bool>())
                .prop_map(|(pad, connected)| InputEvent::PadPresence { pad, connected }),
            valid_event(),
        ]
    }
}
