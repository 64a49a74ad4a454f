//! Control stream messages (carried over ENet) and their AES-GCM envelope.
//!
//! A message is `type` (u16 LE), `payload length` (u16 LE), payload. With
//! encryption (every Sunshine session), each message travels as:
//!
//! ```text
//! 0x0001 (u16 LE) | length (u16 LE) = 4 + 16 + plaintext | seq (u32 LE) | GCM tag (16) | ciphertext
//! ```
//!
//! The key is the session's `rikey`. Two IV constructions exist:
//! [`ControlCipher::V1`] (Nvidia's: a 16-byte IV whose first byte is the
//! sequence number truncated to 8 bits) and [`ControlCipher::V2`] (Sunshine
//! with `SS_ENC_CONTROL_V2`: a 12-byte IV with the sequence number in LE in
//! bytes 0..4, byte 10 `'C'` from the client or `'H'` from the host, byte 11
//! `'C'`).

use aes_gcm::aead::consts::U16;
use aes_gcm::aead::AeadInPlace;
use aes_gcm::aes::Aes128;
use aes_gcm::{Aes128Gcm, AesGcm, KeyInit, Nonce, Tag};
use thiserror::Error;

use crate::input::{InputError, InputEvent};

pub const TYPE_ENCRYPTED: u16 = 0x0001;
pub const TYPE_TERMINATION_SHORT: u16 = 0x0100;
pub const TYPE_TERMINATION: u16 = 0x0109;
pub const TYPE_RUMBLE: u16 = 0x010b;
pub const TYPE_HDR_MODE: u16 = 0x010e;
pub const TYPE_PING: u16 = 0x0200;
pub const TYPE_LOSS_STATS: u16 = 0x0201;
pub const TYPE_FRAME_STATS: u16 = 0x0204;
pub const TYPE_INPUT: u16 = 0x0206;
pub const TYPE_INVALIDATE_REF_FRAMES: u16 = 0x0301;
pub const TYPE_REQUEST_IDR: u16 = 0x0302;
pub const TYPE_START_A: u16 = 0x0305;
pub const TYPE_START_B: u16 = 0x0307;
pub const TYPE_FEC_STATUS: u16 = 0x5502;

/// HRESULT hosts send when the stream ended as intended (the app quit or
/// the session was stopped).
pub const TERMINATION_GRACEFUL: u32 = 0x8003_0023;

/// One control message.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlMessage {
    StartA,
    StartB,
    /// The periodic ping clients send every 100 ms.
    Ping,
    RequestIdr,
    /// Frames `first..=last` are lost: the host should not reference them.
    InvalidateRefFrames {
        first: u64,
        last: u64,
    },
    Input(InputEvent),
    /// The host ends the stream; `reason` an HRESULT ([`TERMINATION_GRACEFUL`]).
    Termination {
        reason: u32,
    },
    Rumble {
        controller: u16,
        low: u16,
        high: u16,
    },
    /// Any other type, kept as bytes.
    Other {
        kind: u16,
        payload: Vec<u8>,
    },
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ControlError {
    #[error("control packet of {0} bytes is too short")]
    TooShort(usize),
    #[error("control packet length field {declared} disagrees with {actual} bytes")]
    BadLength { declared: usize, actual: usize },
    #[error("expected an encrypted control packet, got type {0:#06x}")]
    NotEncrypted(u16),
    #[error("control packet failed AES-GCM authentication")]
    Decrypt,
    #[error("input message: {0}")]
    Input(#[from] InputError),
}

impl ControlMessage {
    pub fn kind(&self) -> u16 {
        match self {
            ControlMessage::StartA => TYPE_START_A,
            ControlMessage::StartB => TYPE_START_B,
            ControlMessage::Ping => TYPE_PING,
            ControlMessage::RequestIdr => TYPE_REQUEST_IDR,
            ControlMessage::InvalidateRefFrames { .. } => TYPE_INVALIDATE_REF_FRAMES,
            ControlMessage::Input(_) => TYPE_INPUT,
            ControlMessage::Termination { .. } => TYPE_TERMINATION,
            ControlMessage::Rumble { .. } => TYPE_RUMBLE,
            ControlMessage::Other { kind, .. } => *kind,
        }
    }

    fn payload(&self) -> Vec<u8> {
        match self {
            ControlMessage::StartA | ControlMessage::RequestIdr => vec![0, 0],
            ControlMessage::StartB => vec![0],
            // u16 4, u32 0 and two bytes of padding: moonlight-common-c sends
            // its 8-byte buffer whole.
            ControlMessage::Ping => vec![4, 0, 0, 0, 0, 0, 0, 0],
            ControlMessage::InvalidateRefFrames { first, last } => {
                let mut p = Vec::with_capacity(24);
                p.extend_from_slice(&first.to_le_bytes());
                p.extend_from_slice(&last.to_le_bytes());
                p.extend_from_slice(&[0; 8]);
                p
            }
            ControlMessage::Input(e) => e.encode(),
            ControlMessage::Termination { reason } => reason.to_be_bytes().to_vec(),
            ControlMessage::Rumble {
                controller,
                low,
                high,
            } => {
                let mut p = vec![0; 4];
                for v in [*controller, *low, *high] {
                    p.extend_from_slice(&v.to_le_bytes());
                }
                p
            }
            ControlMessage::Other { payload, .. } => payload.clone(),
        }
    }

    /// `type | length | payload`, the plaintext of one message.
    pub fn encode(&self) -> Vec<u8> {
        let payload = self.payload();
        let mut out = Vec::with_capacity(4 + payload.len());
        out.extend_from_slice(&self.kind().to_le_bytes());
        out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, ControlError> {
        if b.len() < 4 {
            return Err(ControlError::TooShort(b.len()));
        }
        let kind = u16::from_le_bytes([b[0], b[1]]);
        let len = usize::from(u16::from_le_bytes([b[2], b[3]]));
        let p = &b[4..];
        if p.len() != len {
            return Err(ControlError::BadLength {
                declared: len,
                actual: p.len(),
            });
        }
        Ok(match kind {
            TYPE_START_A => ControlMessage::StartA,
            TYPE_START_B => ControlMessage::StartB,
            TYPE_PING => ControlMessage::Ping,
            TYPE_REQUEST_IDR => ControlMessage::RequestIdr,
            TYPE_INVALIDATE_REF_FRAMES if len >= 16 => {
                let u = |i: usize| u64::from_le_bytes(p[i..i + 8].try_into().expect("8 bytes"));
                ControlMessage::InvalidateRefFrames {
                    first: u(0),
                    last: u(8),
                }
            }
            TYPE_INPUT => ControlMessage::Input(InputEvent::decode(p)?),
            TYPE_TERMINATION if len >= 4 => ControlMessage::Termination {
                reason: u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
            },
            TYPE_RUMBLE if len >= 10 => {
                let u = |i: usize| u16::from_le_bytes([p[i], p[i + 1]]);
                ControlMessage::Rumble {
                    controller: u(4),
                    low: u(6),
                    high: u(8),
                }
            }
            _ => ControlMessage::Other {
                kind,
                payload: p.to_vec(),
            },
        })
    }
}

/// Who sends a message: sets the direction byte of V2 IVs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Client,
    Host,
}

type Aes128Gcm16 = AesGcm<Aes128, U16>;

/// The AES-GCM envelope of one direction or both.
#[derive(Clone)]
pub enum ControlCipher {
    V1(Box<Aes128Gcm16>),
    V2(Box<Aes128Gcm>),
}

impl std::fmt::Debug for ControlCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ControlCipher::V1(_) => "ControlCipher::V1",
            ControlCipher::V2(_) => "ControlCipher::V2",
        })
    }
}

impl ControlCipher {
    pub fn v1(key: &[u8; 16]) -> Self {
        ControlCipher::V1(Box::new(Aes128Gcm16::new(key.into())))
    }
    pub fn v2(key: &[u8; 16]) -> Self {
        ControlCipher::V2(Box::new(Aes128Gcm::new(key.into())))
    }

    fn v2_iv(seq: u32, origin: Origin) -> [u8; 12] {
        let mut iv = [0u8; 12];
        iv[..4].copy_from_slice(&seq.to_le_bytes());
        iv[10] = match origin {
            Origin::Client => b'C',
            Origin::Host => b'H',
        };
        iv[11] = b'C';
        iv
    }

    /// Seals one plaintext message into an encrypted packet.
    pub fn seal(&self, seq: u32, origin: Origin, plaintext: &[u8]) -> Vec<u8> {
        let mut body = plaintext.to_vec();
        let tag = match self {
            ControlCipher::V1(c) => {
                let mut iv = [0u8; 16];
                iv[0] = seq as u8;
                c.encrypt_in_place_detached(Nonce::from_slice(&iv), &[], &mut body)
            }
            ControlCipher::V2(c) => {
                let iv = Self::v2_iv(seq, origin);
                c.encrypt_in_place_detached(Nonce::from_slice(&iv), &[], &mut body)
            }
        }
        .expect("AES-GCM encrypts any control message length");
        let mut out = Vec::with_capacity(8 + 16 + body.len());
        out.extend_from_slice(&TYPE_ENCRYPTED.to_le_bytes());
        out.extend_from_slice(&((4 + 16 + body.len()) as u16).to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&tag);
        out.extend_from_slice(&body);
        out
    }

    /// Opens an encrypted packet sent by `origin`; returns its sequence
    /// number and plaintext message.
    pub fn open(&self, origin: Origin, packet: &[u8]) -> Result<(u32, Vec<u8>), ControlError> {
        if packet.len() < 4 + 4 + 16 {
            return Err(ControlError::TooShort(packet.len()));
        }
        let kind = u16::from_le_bytes([packet[0], packet[1]]);
        if kind != TYPE_ENCRYPTED {
            return Err(ControlError::NotEncrypted(kind));
        }
        let len = usize::from(u16::from_le_bytes([packet[2], packet[3]]));
        if len != packet.len() - 4 {
            return Err(ControlError::BadLength {
                declared: len,
                actual: packet.len() - 4,
            });
        }
        let seq = u32::from_le_bytes([packet[4], packet[5], packet[6], packet[7]]);
        let tag = Tag::from_slice(&packet[8..24]);
        let mut body = packet[24..].to_vec();
        match self {
            ControlCipher::V1(c) => {
                let mut iv = [0u8; 16];
                iv[0] = seq as u8;
                c.decrypt_in_place_detached(Nonce::from_slice(&iv), &[], &mut body, tag)
            }
            ControlCipher::V2(c) => {
                let iv = Self::v2_iv(seq, origin);
                c.decrypt_in_place_detached(Nonce::from_slice(&iv), &[], &mut body, tag)
            }
        }
        .map_err(|_| ControlError::Decrypt)?;
        Ok((seq, body))
    }
}

/// One side's control-stream state: the sequence number and cipher.
#[derive(Debug)]
pub struct ControlChannel {
    cipher: ControlCipher,
    me: Origin,
    next_seq: u32,
}

impl ControlChannel {
    pub fn new(cipher: ControlCipher, me: Origin) -> Self {
        Self {
            cipher,
            me,
            next_seq: 0,
        }
    }

    /// The packet for one message, with the next sequence number.
    pub fn seal(&mut self, message: &ControlMessage) -> Vec<u8> {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.cipher.seal(seq, self.me, &message.encode())
    }

    /// A message the other side sent.
    pub fn open(&self, packet: &[u8]) -> Result<ControlMessage, ControlError> {
        let peer = match self.me {
            Origin::Client => Origin::Host,
            Origin::Host => Origin::Client,
        };
        let (_, plain) = self.cipher.open(peer, packet)?;
        ControlMessage::decode(&plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wolf (games-on-whales/wolf, MIT) tests/testControl.cpp, "Control AES
    /// Encryption": packets from a real session with key
    /// EDF04A215C4FBEA20934120C8480D855, (plaintext, seq, packet).
    const WOLF_KEY: &str = "EDF04A215C4FBEA20934120C8480D855";
    const WOLF_PACKETS: [(&str, u32, &str); 4] = [
        ("020302000000", 0, "01001A0000000000BF0EB6DA10E47C702EC8644EB87D9CF7B6FAC9FF75CA"),
        ("0703010000", 1, "010019000100000021DBB8DC0590AF3A2B20BCE5A347DE31D366E5B9C5"),
        (
            "000208000400000000000000",
            2,
            "0100200002000000220722FBADED58A03F2E8898F0F1DCB7C93F6235590618E4186AD990",
        ),
        (
            "060212000000000E05000000033400C00000059F0329",
            6,
            "01002A00060000005A4D999FB2542F85BDD39D99F77EB825254569D2C04E21241B5CEC01BD3F93129718ECC1F153",
        ),
    ];

    fn wolf_key() -> [u8; 16] {
        // Wolf uses the key's 32 ASCII hex digits as given, parsed to 16 bytes.
        hex::decode(WOLF_KEY).unwrap().try_into().unwrap()
    }

    #[test]
    fn wolf_session_packets_seal_and_open_byte_for_byte() {
        let cipher = ControlCipher::v1(&wolf_key());
        for (plain, seq, packet) in WOLF_PACKETS {
            let plain = hex::decode(plain).unwrap();
            let packet = hex::decode(packet).unwrap();
            assert_eq!(
                hex::encode(cipher.seal(seq, Origin::Client, &plain)),
                hex::encode(&packet)
            );
            assert_eq!(cipher.open(Origin::Client, &packet), Ok((seq, plain)));
        }
    }

    #[test]
    fn wolf_session_messages_decode_to_their_kinds() {
        let decoded: Vec<ControlMessage> = WOLF_PACKETS
            .iter()
            .map(|(p, _, _)| ControlMessage::decode(&hex::decode(p).unwrap()).unwrap())
            .collect();
        assert_eq!(decoded[0], ControlMessage::RequestIdr);
        assert_eq!(decoded[1], ControlMessage::StartB);
        assert_eq!(decoded[2], ControlMessage::Ping);
        assert!(matches!(
            decoded[3],
            ControlMessage::Input(InputEvent::MousePosition { x: 820, .. })
        ));
        for (m, (p, _, _)) in decoded.iter().zip(WOLF_PACKETS) {
            assert_eq!(hex::encode_upper(m.encode()), p);
        }
    }

    #[test]
    fn v2_envelope_round_trips_and_binds_direction_and_sequence() {
        let key = [9u8; 16];
        let mut client = ControlChannel::new(ControlCipher::v2(&key), Origin::Client);
        let host = ControlChannel::new(ControlCipher::v2(&key), Origin::Host);
        let a = client.seal(&ControlMessage::RequestIdr);
        let b = client.seal(&ControlMessage::Termination {
            reason: TERMINATION_GRACEFUL,
        });
        assert_eq!(host.open(&a), Ok(ControlMessage::RequestIdr));
        assert_eq!(
            host.open(&b),
            Ok(ControlMessage::Termination {
                reason: TERMINATION_GRACEFUL
            })
        );
        // A client packet reflected back to the client fails: the IV names the sender.
        assert_eq!(client.open(&a), Err(ControlError::Decrypt));
        // A tampered sequence number fails.
        let mut c = b.clone();
        c[4] ^= 1;
        assert_eq!(host.open(&c), Err(ControlError::Decrypt));
        // A wrong key fails.
        let other = ControlChannel::new(ControlCipher::v2(&[8u8; 16]), Origin::Host);
        assert_eq!(other.open(&a), Err(ControlError::Decrypt));
    }

    #[test]
    fn termination_and_invalidation_layouts() {
        let t = ControlMessage::Termination {
            reason: TERMINATION_GRACEFUL,
        };
        assert_eq!(hex::encode(t.encode()), "0901040080030023");
        let r = ControlMessage::InvalidateRefFrames { first: 5, last: 9 };
        let e = r.encode();
        assert_eq!(&e[..4], &[0x01, 0x03, 24, 0]);
        assert_eq!(ControlMessage::decode(&e), Ok(r));
    }

    #[test]
    fn malformed_control_packets_are_errors() {
        let c = ControlCipher::v2(&[0; 16]);
        assert_eq!(
            c.open(Origin::Host, &[1, 0]),
            Err(ControlError::TooShort(2))
        );
        let mut p = c.seal(0, Origin::Host, &ControlMessage::Ping.encode());
        p[0] = 2;
        assert_eq!(c.open(Origin::Host, &p), Err(ControlError::NotEncrypted(2)));
        assert!(matches!(
            ControlMessage::decode(&[0, 2, 9, 0, 1]),
            Err(ControlError::BadLength { .. })
        ));
    }
}
