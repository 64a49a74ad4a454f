//! RTP fixed header (RFC 3550 §5.1), parsed in place without allocating,
//! and the unwrapping of 16-bit sequence numbers and 32-bit timestamps.

/// The fields of an RTP header this source uses, and where the payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// The payload is `packet[payload_start..payload_end]` (CSRCs, header
    /// extension and padding skipped).
    pub payload_start: usize,
    pub payload_end: usize,
}

/// Why a datagram is not an RTP packet we can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPacket {
    TooShort,
    NotVersion2,
    /// RTCP sent to the RTP port (payload types 72..=79 with the marker).
    Rtcp,
    /// The CSRC list, extension or padding runs past the end.
    Truncated,
    EmptyPayload,
}

impl RtpHeader {
    pub fn parse(p: &[u8]) -> Result<RtpHeader, BadPacket> {
        if p.len() < 12 {
            return Err(BadPacket::TooShort);
        }
        if p[0] >> 6 != 2 {
            return Err(BadPacket::NotVersion2);
        }
        let padding = p[0] & 0x20 != 0;
        let extension = p[0] & 0x10 != 0;
        let csrc_count = (p[0] & 0x0F) as usize;
        let marker = p[1] & 0x80 != 0;
        let payload_type = p[1] & 0x7F;
        if (192..=223).contains(&p[1]) {
            // RFC 5761 §4: RTCP packet types read as RTP payload types
            // 64..=95 with the marker set.
            return Err(BadPacket::Rtcp);
        }
        let seq = u16::from_be_bytes([p[2], p[3]]);
        let timestamp = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        let ssrc = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
        let mut start = 12 + 4 * csrc_count;
        if extension {
            if p.len() < start + 4 {
                return Err(BadPacket::Truncated);
            }
            let words = u16::from_be_bytes([p[start + 2], p[start + 3]]) as usize;
            start += 4 + 4 * words;
        }
        let mut end = p.len();
        if padding {
            let pad = *p.last().expect("at least 12 bytes") as usize;
            if pad == 0 || pad > end {
                return Err(BadPacket::Truncated);
            }
            end -= pad;
        }
        if start > end {
            return Err(BadPacket::Truncated);
        }
        if start == end {
            return Err(BadPacket::EmptyPayload);
        }
        Ok(RtpHeader {
            marker,
            payload_type,
            seq,
            timestamp,
            ssrc,
            payload_start: start,
            payload_end: end,
        })
    }
}

/// How a packet's sequence number relates to the previous one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqStep {
    /// The first packet of a stream.
    First,
    /// The next one.
    InOrder,
    /// `n` packets are missing before this one.
    Gap(u16),
    /// Older than or equal to one already seen (late or duplicate).
    Late,
    /// Too far away to be loss or reordering: the sender restarted.
    Jump,
}

/// Beyond this many missing packets a sequence change is a restart, not loss.
pub const MAX_GAP: u16 = 3000;

/// Follows a stream's sequence numbers.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    last: Option<u16>,
}

impl SeqTracker {
    pub fn step(&mut self, seq: u16) -> SeqStep {
        let Some(last) = self.last else {
            self.last = Some(seq);
            return SeqStep::First;
        };
        let ahead = seq.wrapping_sub(last);
        let step = match ahead {
            1 => SeqStep::InOrder,
            0 => return SeqStep::Late,
            n if n <= MAX_GAP + 1 => SeqStep::Gap(n - 1),
            n if n >= u16::MAX - MAX_GAP => return SeqStep::Late,
            _ => SeqStep::Jump,
        };
        self.last = Some(seq);
        step
    }

    pub fn reset(&mut self) {
        self.last = None;
    }
}

/// Turns 32-bit RTP timestamps into a 64-bit timeline that starts at the
/// first packet, never goes backwards across sender restarts, and keeps
/// counting across wraps.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// The RTP timestamp and timeline position of the last packet.
    last: Option<(u32, u64)>,
    /// Where a restarted stream continues from.
    resume_at: u64,
    /// A jump bigger than this (either way) starts a new segment.
    max_jump: u32,
    /// Added to `resume_at` after a restart (one nominal frame).
    restart_step: u64,
}

impl Timeline {
    pub fn new(clock_hz: u32, restart_step: u64) -> Self {
        Timeline {
            last: None,
            resume_at: 0,
            max_jump: clock_hz.saturating_mul(10),
            restart_step,
        }
    }

    /// The timeline position of `ts`.
    pub fn position(&mut self, ts: u32) -> u64 {
        let pos = match self.last {
            None => self.resume_at,
            Some((last_ts, last_pos)) => {
                let diff = ts.wrapping_sub(last_ts) as i32;
                if diff.unsigned_abs() > self.max_jump {
                    last_pos + self.restart_step
                } else if diff >= 0 {
                    last_pos + diff as u64
                } else {
                    last_pos.saturating_sub(diff.unsigned_abs() as u64)
                }
            }
        };
        // Only forward moves are remembered, so a late packet cannot drag
        // the timeline back.
        if self.last.is_none_or(|(_, p)| pos >= p) {
            self.last = Some((ts, pos));
        }
        pos
    }

    /// The sender restarted: the next timestamp continues after the last.
    pub fn restart(&mut self) {
        if let Some((_, p)) = self.last.take() {
            self.resume_at = p + self.restart_step;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn rtp(
        pt: u8,
        seq: u16,
        ts: u32,
        ssrc: u32,
        marker: bool,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn parses_a_plain_header() {
        let p = rtp(96, 7, 9000, 42, true, &[1, 2, 3]);
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!(
            (h.marker, h.payload_type, h.seq, h.timestamp, h.ssrc),
            (true, 96, 7, 9000, 42)
        );
        assert_eq!(&p[h.payload_start..h.payload_end], &[1, 2, 3]);
    }

    #[test]
    fn skips_csrcs_extension_and_padding() {
        let mut p = rtp(96, 1, 0, 1, false, &[]);
        p[0] |= 0x20 | 0x10 | 0x01; // padding, extension, one CSRC
        p.extend_from_slice(&[0, 0, 0, 9]); // CSRC
        p.extend_from_slice(&[0xBE, 0xDE, 0, 1, 1, 2, 3, 4]); // one-word extension
        p.extend_from_slice(&[7, 7]); // payload
        p.extend_from_slice(&[0, 0, 3]); // padding of 3
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!(&p[h.payload_start..h.payload_end], &[7, 7]);
    }

    #[test]
    fn refuses_what_is_not_rtp() {
        assert_eq!(RtpHeader::parse(&[0x80; 5]), Err(BadPacket::TooShort));
        let mut p = rtp(96, 1, 0, 1, false, &[1]);
        p[0] = 0x40;
        assert_eq!(RtpHeader::parse(&p), Err(BadPacket::NotVersion2));
        // An RTCP receiver report (PT 201) on the RTP port.
        let rr = [0x80, 201, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(RtpHeader::parse(&rr), Err(BadPacket::Rtcp));
        let mut p = rtp(96, 1, 0, 1, false, &[1]);
        p[0] |= 0x20;
        *p.last_mut().unwrap() = 200;
        assert_eq!(RtpHeader::parse(&p), Err(BadPacket::Truncated));
        assert_eq!(
            RtpHeader::parse(&rtp(96, 1, 0, 1, false, &[])),
            Err(BadPacket::EmptyPayload)
        );
    }

    #[test]
    fn sequence_steps() {
        let mut s = SeqTracker::default();
        assert_eq!(s.step(65534), SeqStep::First);
        assert_eq!(s.step(65535), SeqStep::InOrder);
        assert_eq!(s.step(0), SeqStep::InOrder);
        assert_eq!(s.step(3), SeqStep::Gap(2));
        assert_eq!(s.step(2), SeqStep::Late);
        assert_eq!(s.step(3), SeqStep::Late);
        assert_eq!(s.step(4), SeqStep::InOrder);
        assert_eq!(s.step(30_000), SeqStep::Jump);
        assert_eq!(s.step(30_001), SeqStep::InOrder);
    }

    #[test]
    fn timeline_unwraps_and_survives_restarts() {
        let mut t = Timeline::new(90_000, 3000);
        assert_eq!(t.position(u32::MAX - 2999), 0);
        assert_eq!(t.position(u32::MAX - 2999), 0);
        assert_eq!(t.position(0), 3000); // wrapped
        assert_eq!(t.position(3000), 6000);
        assert_eq!(t.position(0), 3000); // a late packet
        assert_eq!(t.position(6000), 9000); // still measured from the newest
                                            // A huge jump is a new segment one step on.
        assert_eq!(t.position(2_000_000_000), 12_000);
        t.restart();
        assert_eq!(t.position(5), 15_000);
        assert_eq!(t.position(3005), 18_000);
    }
}
