//! Opus over RTP (RFC 7587): one packet is one Opus packet. Pure.

use std::ops::Range;

use super::packet::{RtpHeader, SeqStep, SeqTracker, Timeline};
use crate::source::{AUDIO_FRAME_SAMPLES, AUDIO_SAMPLE_RATE};

/// What happened to the stream so far: the wire type of `session.stats`
/// (`rtp.audio`).
pub type AudioCounters = bus_schema::RtpAudioStats;

/// One Opus packet found in a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusPacket {
    /// Where the Opus bytes are in the datagram.
    pub range: Range<usize>,
    /// Samples per channel at 48 kHz, from 0 at the first packet.
    pub pts_48k: u64,
}

pub struct OpusTrack {
    payload_type: u8,
    ssrc: Option<u32>,
    seq: SeqTracker,
    timeline: Timeline,
    counters: AudioCounters,
}

impl OpusTrack {
    pub fn new(payload_type: u8) -> Self {
        OpusTrack {
            payload_type,
            ssrc: None,
            seq: SeqTracker::default(),
            timeline: Timeline::new(AUDIO_SAMPLE_RATE, u64::from(AUDIO_FRAME_SAMPLES)),
            counters: AudioCounters::default(),
        }
    }

    pub fn counters(&self) -> &AudioCounters {
        &self.counters
    }

    /// The Opus packet in `datagram`, if it is one to pass on. Lost audio
    /// needs no recovery: every Opus packet decodes on its own.
    pub fn push(&mut self, datagram: &[u8]) -> Option<OpusPacket> {
        let Ok(h) = RtpHeader::parse(datagram) else {
            self.counters.bad_packets += 1;
            return None;
        };
        if h.payload_type != self.payload_type {
            self.counters.bad_packets += 1;
            return None;
        }
        self.counters.packets += 1;
        if self.ssrc != Some(h.ssrc) {
            if self.ssrc.is_some() {
                self.restart();
            }
            self.ssrc = Some(h.ssrc);
        }
        match self.seq.step(h.seq) {
            SeqStep::First | SeqStep::InOrder => {}
            SeqStep::Gap(n) => self.counters.lost_packets += u64::from(n),
            SeqStep::Late => {
                self.counters.late_packets += 1;
                return None;
            }
            SeqStep::Jump => {
                self.restart();
                self.seq.step(h.seq);
            }
        }
        Some(OpusPacket {
            range: h.payload_start..h.payload_end,
            pts_48k: self.timeline.position(h.timestamp),
        })
    }

    fn restart(&mut self) {
        self.counters.restarts += 1;
        self.seq.reset();
        self.timeline.restart();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0x80 | pt];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn one_packet_is_one_opus_packet_on_a_continuous_timeline() {
        let mut t = OpusTrack::new(111);
        let a = rtp(111, 10, 1000, 5, &[0xFC, 1, 2]);
        let got = t.push(&a).unwrap();
        assert_eq!(&a[got.range], &[0xFC, 1, 2]);
        assert_eq!(got.pts_48k, 0);
        assert_eq!(t.push(&rtp(111, 11, 1960, 5, &[1])).unwrap().pts_48k, 960);
        // One lost, then a late one, then another sender.
        assert_eq!(t.push(&rtp(111, 13, 3880, 5, &[1])).unwrap().pts_48k, 2880);
        assert_eq!(t.push(&rtp(111, 12, 2920, 5, &[1])), None);
        assert_eq!(
            t.push(&rtp(111, 500, 9, 6, &[1])).unwrap().pts_48k,
            2880 + 960
        );
        assert_eq!(t.push(&rtp(96, 501, 969, 6, &[1])), None);
        let c = t.counters();
        assert_eq!(
            (
                c.packets,
                c.lost_packets,
                c.late_packets,
                c.restarts,
                c.bad_packets
            ),
            (5, 1, 1, 1, 1)
        );
    }
}
