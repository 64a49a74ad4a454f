//! Input packets, as Sunshine-era clients send them inside control-stream
//! messages of type 0x0206 ([`crate::control::ControlMessage::Input`]).
//!
//! Every packet starts with `size` (u32, big-endian: bytes after this field)
//! and `magic` (u32, little-endian: the packet type). Field byte orders differ
//! per packet and follow moonlight-common-c's InputStream.c: mouse positions,
//! relative moves and scroll amounts are big-endian, key codes, controller
//! state, touch and arrival fields little-endian, floats little-endian IEEE.
//!
//! [`InputEvent::encode`] builds a packet; [`InputEvent::decode`] reads one back
//! (the host side, used by the emulator to record what it received).

use thiserror::Error;

pub const MAGIC_KEY_DOWN: u32 = 0x03;
pub const MAGIC_KEY_UP: u32 = 0x04;
pub const MAGIC_MOUSE_ABS: u32 = 0x05;
pub const MAGIC_MOUSE_REL: u32 = 0x07;
pub const MAGIC_MOUSE_BUTTON_DOWN: u32 = 0x08;
pub const MAGIC_MOUSE_BUTTON_UP: u32 = 0x09;
pub const MAGIC_SCROLL: u32 = 0x0a;
pub const MAGIC_MULTI_CONTROLLER: u32 = 0x0c;
pub const MAGIC_UTF8_TEXT: u32 = 0x17;
pub const MAGIC_HSCROLL: u32 = 0x5500_0001;
pub const MAGIC_TOUCH: u32 = 0x5500_0002;
pub const MAGIC_CONTROLLER_ARRIVAL: u32 = 0x5500_0004;

/// Most UTF-8 bytes one text packet carries.
pub const UTF8_TEXT_MAX: usize = 32;

pub const MODIFIER_SHIFT: u8 = 0x01;
pub const MODIFIER_CTRL: u8 = 0x02;
pub const MODIFIER_ALT: u8 = 0x04;
pub const MODIFIER_META: u8 = 0x08;

/// Mouse buttons as numbered on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MouseButton {
    Left = 1,
    Middle = 2,
    Right = 3,
    X1 = 4,
    X2 = 5,
}

impl MouseButton {
    pub fn from_wire(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Left,
            2 => Self::Middle,
            3 => Self::Right,
            4 => Self::X1,
            5 => Self::X2,
            _ => return None,
        })
    }
    /// From a browser `MouseEvent.button` (0 left, 1 middle, 2 right, 3 back, 4 forward).
    pub fn from_browser(b: u8) -> Option<Self> {
        Self::from_wire(b + 1)
    }
}

/// The state of one controller (buttons as moonlight-common-c's flags; the
/// upper 16 bits are Sunshine's extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ControllerState {
    pub number: u16,
    /// Bit `n` set when controller `n` is connected.
    pub active_mask: u16,
    pub buttons: u32,
    pub left_trigger: u8,
    pub right_trigger: u8,
    pub left_stick: (i16, i16),
    pub right_stick: (i16, i16),
}

/// Button flags of [`ControllerState::buttons`].
pub mod buttons {
    pub const UP: u32 = 0x0001;
    pub const DOWN: u32 = 0x0002;
    pub const LEFT: u32 = 0x0004;
    pub const RIGHT: u32 = 0x0008;
    pub const PLAY: u32 = 0x0010;
    pub const BACK: u32 = 0x0020;
    pub const LS_CLK: u32 = 0x0040;
    pub const RS_CLK: u32 = 0x0080;
    pub const LB: u32 = 0x0100;
    pub const RB: u32 = 0x0200;
    pub const SPECIAL: u32 = 0x0400;
    pub const A: u32 = 0x1000;
    pub const B: u32 = 0x2000;
    pub const X: u32 = 0x4000;
    pub const Y: u32 = 0x8000;
}

/// One input event, as the host sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum InputEvent {
    Key {
        down: bool,
        /// Windows virtual-key code (the low byte is what hosts use).
        vk: u16,
        modifiers: u8,
        /// Sunshine extension flags (0x01: not normalized to US layout).
        flags: u8,
    },
    MouseMove {
        dx: i16,
        dy: i16,
    },
    MousePosition {
        x: i16,
        y: i16,
        /// Reference size the position is relative to.
        width: i16,
        height: i16,
    },
    MouseButton {
        down: bool,
        button: MouseButton,
    },
    /// Vertical scroll; 120 is one notch, positive is up.
    Scroll {
        amount: i16,
    },
    /// Horizontal scroll; 120 is one notch, positive is right.
    HScroll {
        amount: i16,
    },
    Touch {
        event_type: u8,
        pointer_id: u32,
        /// Normalized 0.0..=1.0.
        x: f32,
        y: f32,
        pressure: f32,
        contact_major: f32,
        contact_minor: f32,
        rotation: u16,
    },
    ControllerArrival {
        number: u8,
        controller_type: u8,
        capabilities: u16,
        supported_buttons: u32,
    },
    Controller(ControllerState),
    /// UTF-8 text, at most [`UTF8_TEXT_MAX`] bytes per packet.
    Text(String),
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum InputError {
    #[error("input packet of {0} bytes is too short")]
    TooShort(usize),
    #[error("input packet size field {declared} disagrees with {actual} bytes")]
    BadSize { declared: usize, actual: usize },
    #[error("unknown input packet magic {0:#010x}")]
    UnknownMagic(u32),
    #[error("invalid field in input packet: {0}")]
    BadField(&'static str),
}

fn packet(magic: u32, body: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + body.len());
    p.extend_from_slice(&((4 + body.len()) as u32).to_be_bytes());
    p.extend_from_slice(&magic.to_le_bytes());
    p.extend_from_slice(body);
    p
}

impl InputEvent {
    /// Text split into packets of at most [`UTF8_TEXT_MAX`] bytes, never
    /// inside a character.
    pub fn text(s: &str) -> Vec<InputEvent> {
        let mut out = Vec::new();
        let mut cur = String::new();
        for ch in s.chars() {
            if cur.len() + ch.len_utf8() > UTF8_TEXT_MAX {
                out.push(InputEvent::Text(std::mem::take(&mut cur)));
            }
            cur.push(ch);
        }
        if !cur.is_empty() {
            out.push(InputEvent::Text(cur));
        }
        out
    }

    /// The packet bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            InputEvent::Key {
                down,
                vk,
                modifiers,
                flags,
            } => {
                let magic = if *down { MAGIC_KEY_DOWN } else { MAGIC_KEY_UP };
                let k = vk.to_le_bytes();
                packet(magic, &[*flags, k[0], k[1], *modifiers, 0, 0])
            }
            InputEvent::MouseMove { dx, dy } => {
                let mut b = Vec::with_capacity(4);
                b.extend_from_slice(&dx.to_be_bytes());
                b.extend_from_slice(&dy.to_be_bytes());
                packet(MAGIC_MOUSE_REL, &b)
            }
            InputEvent::MousePosition {
                x,
                y,
                width,
                height,
            } => {
                let mut b = Vec::with_capacity(10);
                for v in [*x, *y, 0, *width, *height] {
                    b.extend_from_slice(&v.to_be_bytes());
                }
                packet(MAGIC_MOUSE_ABS, &b)
            }
            InputEvent::MouseButton { down, button } => {
                let magic = if *down {
                    MAGIC_MOUSE_BUTTON_DOWN
                } else {
                    MAGIC_MOUSE_BUTTON_UP
                };
                packet(magic, &[*button as u8])
            }
            InputEvent::Scroll { amount } => {
                let a = amount.to_be_bytes();
                packet(MAGIC_SCROLL, &[a[0], a[1], a[0], a[1], 0, 0])
            }
            InputEvent::HScroll { amount } => packet(MAGIC_HSCROLL, &amount.to_be_bytes()),
            InputEvent::Touch {
                event_type,
                pointer_id,
                x,
                y,
                pressure,
                contact_major,
                contact_minor,
                rotation,
            } => {
                let mut b = Vec::with_capacity(28);
                b.push(*event_type);
                b.push(0);
                b.extend_from_slice(&rotation.to_le_bytes());
                b.extend_from_slice(&pointer_id.to_le_bytes());
                for f in [*x, *y, *pressure, *contact_major, *contact_minor] {
                    b.extend_from_slice(&f.to_le_bytes());
                }
                packet(MAGIC_TOUCH, &b)
            }
            InputEvent::ControllerArrival {
                number,
                controller_type,
                capabilities,
                supported_buttons,
            } => {
                let mut b = vec![*number, *controller_type];
                b.extend_from_slice(&capabilities.to_le_bytes());
                b.extend_from_slice(&supported_buttons.to_le_bytes());
                packet(MAGIC_CONTROLLER_ARRIVAL, &b)
            }
            InputEvent::Controller(c) => {
                let mut b = Vec::with_capacity(26);
                let mut put = |v: i16| b.extend_from_slice(&v.to_le_bytes());
                put(0x001a);
                put(c.number as i16);
                put(c.active_mask as i16);
                put(0x0014);
                put(c.buttons as u16 as i16);
                let triggers = i16::from_le_bytes([c.left_trigger, c.right_trigger]);
                put(triggers);
                put(c.left_stick.0);
                put(c.left_stick.1);
                put(c.right_stick.0);
                put(c.right_stick.1);
                put(0x009c);
                put((c.buttons >> 16) as u16 as i16);
                put(0x0055);
                packet(MAGIC_MULTI_CONTROLLER, &b)
            }
            InputEvent::Text(s) => packet(MAGIC_UTF8_TEXT, s.as_bytes()),
        }
    }

    /// Reads one packet (host side).
    pub fn decode(p: &[u8]) -> Result<InputEvent, InputError> {
        if p.len() < 8 {
            return Err(InputError::TooShort(p.len()));
        }
        let size = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
        if size != p.len() - 4 {
            return Err(InputError::BadSize {
                declared: size,
                actual: p.len() - 4,
            });
        }
        let magic = u32::from_le_bytes([p[4], p[5], p[6], p[7]]);
        let b = &p[8..];
        let need = |n: usize| {
            if b.len() < n {
                Err(InputError::TooShort(p.len()))
            } else {
                Ok(())
            }
        };
        let be16 = |i: usize| i16::from_be_bytes([b[i], b[i + 1]]);
        let le16 = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let le32 = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let lef = |i: usize| f32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Ok(match magic {
            MAGIC_KEY_DOWN | MAGIC_KEY_UP => {
                need(6)?;
                InputEvent::Key {
                    down: magic == MAGIC_KEY_DOWN,
                    flags: b[0],
                    vk: le16(1),
                    modifiers: b[3],
                }
            }
            MAGIC_MOUSE_REL => {
                need(4)?;
                InputEvent::MouseMove {
                    dx: be16(0),
                    dy: be16(2),
                }
            }
            MAGIC_MOUSE_ABS => {
                need(10)?;
                InputEvent::MousePosition {
                    x: be16(0),
                    y: be16(2),
                    width: be16(6),
                    height: be16(8),
                }
            }
            MAGIC_MOUSE_BUTTON_DOWN | MAGIC_MOUSE_BUTTON_UP => {
                need(1)?;
                InputEvent::MouseButton {
                    down: magic == MAGIC_MOUSE_BUTTON_DOWN,
                    button: MouseButton::from_wire(b[0])
                        .ok_or(InputError::BadField("mouse button"))?,
                }
            }
            MAGIC_SCROLL => {
                need(6)?;
                InputEvent::Scroll { amount: be16(0) }
            }
            MAGIC_HSCROLL => {
                need(2)?;
                InputEvent::HScroll { amount: be16(0) }
            }
            MAGIC_TOUCH => {
                need(28)?;
                InputEvent::Touch {
                    event_type: b[0],
                    rotation: le16(2),
                    pointer_id: le32(4),
                    x: lef(8),
                    y: lef(12),
                    pressure: lef(16),
                    contact_major: lef(20),
                    contact_minor: lef(24),
                }
            }
            MAGIC_CONTROLLER_ARRIVAL => {
                need(8)?;
                InputEvent::ControllerArrival {
                    number: b[0],
                    controller_type: b[1],
                    capabilities: le16(2),
                    supported_buttons: le32(4),
                }
            }
            MAGIC_MULTI_CONTROLLER => {
                need(26)?;
                InputEvent::Controller(ControllerState {
                    number: le16(2),
                    active_mask: le16(4),
                    buttons: u32::from(le16(8)) | (u32::from(le16(22)) << 16),
                    left_trigger: b[10],
                    right_trigger: b[11],
                    left_stick: (le16(12) as i16, le16(14) as i16),
                    right_stick: (le16(16) as i16, le16(18) as i16),
                })
            }
            MAGIC_UTF8_TEXT => InputEvent::Text(
                String::from_utf8(b.to_vec()).map_err(|_| InputError::BadField("UTF-8 text"))?,
            ),
            other => return Err(InputError::UnknownMagic(other)),
        })
    }
}

/// Modifier flags from a browser event's modifier state.
pub fn modifiers(shift: bool, ctrl: bool, alt: bool, meta: bool) -> u8 {
    (if shift { MODIFIER_SHIFT } else { 0 })
        | (if ctrl { MODIFIER_CTRL } else { 0 })
        | (if alt { MODIFIER_ALT } else { 0 })
        | (if meta { MODIFIER_META } else { 0 })
}

/// A browser key event as GameStream clients send it: the virtual-key code
/// with the 0x8000 bit moonlight clients set, or `None` for a `code` with no
/// Windows virtual key.
pub fn key_event(code: &str, down: bool, modifiers: u8) -> Option<InputEvent> {
    Some(InputEvent::Key {
        down,
        vk: 0x8000 | u16::from(vk_from_code(code)?),
        modifiers,
        flags: 0,
    })
}

/// Windows virtual-key code for a browser `KeyboardEvent.code` (the
/// physical key, US layout), as listed in the UI Events KeyboardEvent code
/// values and Microsoft's virtual-key code table.
pub fn vk_from_code(code: &str) -> Option<u8> {
    if let Some(l) = code.strip_prefix("Key") {
        let c = l.as_bytes();
        if c.len() == 1 && c[0].is_ascii_uppercase() {
            return Some(c[0]);
        }
    }
    if let Some(d) = code.strip_prefix("Digit") {
        let c = d.as_bytes();
        if c.len() == 1 && c[0].is_ascii_digit() {
            return Some(c[0]);
        }
    }
    if let Some(d) = code.strip_prefix("Numpad") {
        let c = d.as_bytes();
        if c.len() == 1 && c[0].is_ascii_digit() {
            return Some(0x60 + (c[0] - b'0'));
        }
    }
    if let Some(n) = code.strip_prefix('F').and_then(|n| n.parse::<u8>().ok()) {
        if (1..=24).contains(&n) {
            return Some(0x70 + n - 1);
        }
    }
    Some(match code {
        "Backspace" => 0x08,
        "Tab" => 0x09,
        "NumpadEnter" | "Enter" => 0x0d,
        "ShiftLeft" => 0xa0,
        "ShiftRight" => 0xa1,
        "ControlLeft" => 0xa2,
        "ControlRight" => 0xa3,
        "AltLeft" => 0xa4,
        "AltRight" => 0xa5,
        "Pause" => 0x13,
        "CapsLock" => 0x14,
        "Escape" => 0x1b,
        "Space" => 0x20,
        "PageUp" => 0x21,
        "PageDown" => 0x22,
        "End" => 0x23,
        "Home" => 0x24,
        "ArrowLeft" => 0x25,
        "ArrowUp" => 0x26,
        "ArrowRight" => 0x27,
        "ArrowDown" => 0x28,
        "PrintScreen" => 0x2c,
        "Insert" => 0x2d,
        "Delete" => 0x2e,
        "MetaLeft" | "OSLeft" => 0x5b,
        "MetaRight" | "OSRight" => 0x5c,
        "ContextMenu" => 0x5d,
        "NumpadMultiply" => 0x6a,
        "NumpadAdd" => 0x6b,
        "NumpadSubtract" => 0x6d,
        "NumpadDecimal" => 0x6e,
        "NumpadDivide" => 0x6f,
        "NumLock" => 0x90,
        "ScrollLock" => 0x91,
        "Semicolon" => 0xba,
        "Equal" => 0xbb,
        "Comma" => 0xbc,
        "Minus" => 0xbd,
        "Period" => 0xbe,
        "Slash" => 0xbf,
        "Backquote" => 0xc0,
        "BracketLeft" => 0xdb,
        "Backslash" => 0xdc,
        "BracketRight" => 0xdd,
        "Quote" => 0xde,
        "IntlBackslash" => 0xe2,
        "AudioVolumeMute" => 0xad,
        "AudioVolumeDown" => 0xae,
        "AudioVolumeUp" => 0xaf,
        "MediaTrackNext" => 0xb0,
        "MediaTrackPrevious" => 0xb1,
        "MediaStop" => 0xb2,
        "MediaPlayPause" => 0xb3,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(e: &InputEvent) -> String {
        hex::encode(e.encode())
    }

    #[test]
    fn absolute_mouse_matches_wolf_captured_packet() {
        // Wolf (games-on-whales/wolf, MIT) tests/testControl.cpp, "46 bytes":
        // the decrypted control payload 0x0206 carries this input packet.
        let wire = "0000000e05000000033400c00000059f0329";
        let e = InputEvent::decode(&hex::decode(wire).unwrap()).unwrap();
        assert_eq!(
            e,
            InputEvent::MousePosition {
                x: 820,
                y: 192,
                width: 1439,
                height: 809
            }
        );
        assert_eq!(hex(&e), wire);
    }

    #[test]
    fn multi_controller_matches_wolf_captured_packet() {
        // Wolf tests/testControl.cpp, "control joypad input packets": A pressed
        // on controller 0, the only active one.
        let wire = "0000001e0c0000001a000000010014000010000000000000000000009c0000005500";
        let e = InputEvent::decode(&hex::decode(wire).unwrap()).unwrap();
        let InputEvent::Controller(c) = &e else {
            panic!("{e:?}")
        };
        assert_eq!(c.active_mask, 1);
        assert_eq!(c.buttons, buttons::A);
        assert_eq!(hex(&e), wire);
    }

    #[test]
    fn byte_layouts_follow_the_packed_structs() {
        // NV_KEYBOARD_PACKET: flags, keyCode LE, modifiers, zero2.
        let k = key_event("KeyA", true, MODIFIER_SHIFT).unwrap();
        assert_eq!(
            hex(&k),
            "0000000a03000000".to_string() + "0041800100" + "00"
        );
        // NV_REL_MOUSE_MOVE_PACKET, gen 5+ magic 7, deltas BE.
        assert_eq!(
            hex(&InputEvent::MouseMove { dx: -2, dy: 300 }),
            "0000000807000000fffe012c"
        );
        // NV_MOUSE_BUTTON_PACKET: magic 8 down / 9 up.
        assert_eq!(
            hex(&InputEvent::MouseButton {
                down: false,
                button: MouseButton::Right
            }),
            "000000050900000003"
        );
        // NV_SCROLL_PACKET: amount BE twice, zero.
        assert_eq!(
            hex(&InputEvent::Scroll { amount: -120 }),
            "0000000a0a000000ff88ff880000"
        );
        // SS_HSCROLL_PACKET.
        assert_eq!(
            hex(&InputEvent::HScroll { amount: 120 }),
            "0000000601000055".to_string() + "0078"
        );
        // SS_CONTROLLER_ARRIVAL_PACKET.
        assert_eq!(
            hex(&InputEvent::ControllerArrival {
                number: 1,
                controller_type: 2,
                capabilities: 0x0101,
                supported_buttons: 0xffff,
            }),
            "0000000c04000055".to_string() + "01020101ffff0000"
        );
        // UTF-8 text.
        assert_eq!(hex(&InputEvent::Text("é".into())), "0000000617000000c3a9");
    }

    #[test]
    fn every_event_decodes_to_itself() {
        let events = vec![
            key_event("ShiftRight", false, 0).unwrap(),
            InputEvent::MousePosition {
                x: 1,
                y: 2,
                width: 1919,
                height: 1079,
            },
            InputEvent::MouseButton {
                down: true,
                button: MouseButton::X2,
            },
            InputEvent::Touch {
                event_type: 1,
                pointer_id: 7,
                x: 0.25,
                y: 0.75,
                pressure: 1.0,
                contact_major: 0.0,
                contact_minor: 0.0,
                rotation: 0xffff,
            },
            InputEvent::Controller(ControllerState {
                number: 2,
                active_mask: 0b101,
                buttons: buttons::B | 0x1_0000,
                left_trigger: 255,
                right_trigger: 3,
                left_stick: (-32768, 32767),
                right_stick: (5, -5),
            }),
            InputEvent::Text("héllo 🎮".into()),
        ];
        for e in events {
            assert_eq!(InputEvent::decode(&e.encode()), Ok(e.clone()), "{e:?}");
        }
    }

    #[test]
    fn text_is_split_at_character_boundaries_within_32_bytes() {
        let s = "🎮".repeat(9); // 36 bytes
        let parts = InputEvent::text(&s);
        assert_eq!(
            parts,
            vec![
                InputEvent::Text("🎮".repeat(8)),
                InputEvent::Text("🎮".into())
            ]
        );
    }

    #[test]
    fn browser_codes_map_to_windows_virtual_keys() {
        let cases = [
            ("KeyZ", 0x5a),
            ("Digit0", 0x30),
            ("Numpad7", 0x67),
            ("F1", 0x70),
            ("F12", 0x7b),
            ("Enter", 0x0d),
            ("ArrowUp", 0x26),
            ("ControlRight", 0xa3),
            ("MetaLeft", 0x5b),
            ("Quote", 0xde),
            ("Backquote", 0xc0),
        ];
        for (code, vk) in cases {
            assert_eq!(vk_from_code(code), Some(vk), "{code}");
        }
        assert_eq!(vk_from_code("Fn"), None);
        assert_eq!(vk_from_code("F25"), None);
        assert_eq!(vk_from_code("Keyboard"), None);
        assert_eq!(
            modifiers(true, true, false, true),
            MODIFIER_SHIFT | MODIFIER_CTRL | MODIFIER_META
        );
    }

    #[test]
    fn malformed_packets_are_errors() {
        assert_eq!(InputEvent::decode(&[0; 3]), Err(InputError::TooShort(3)));
        assert!(matches!(
            InputEvent::decode(&hex::decode("0000000899000000").unwrap()),
            Err(InputError::BadSize { .. })
        ));
        assert_eq!(
            InputEvent::decode(&hex::decode("0000000499000000").unwrap()),
            Err(InputError::UnknownMagic(0x99))
        );
    }
}
