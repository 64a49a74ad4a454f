//! H.264 over RTP (RFC 6184) to Annex B access units: a pure state machine.
//!
//! Packets go in with their arrival time; whole access units come out, each
//! decodable given the ones before it:
//! - Single NAL units, STAP-A and FU-A are understood; other packet types
//!   (STAP-B, MTAP, FU-B: interleaved mode) break the access unit.
//! - An access unit ends at the marker bit, or when a packet with another
//!   RTP timestamp arrives.
//! - A gap in sequence numbers breaks the access unit it falls in, and
//!   every access unit after it is dropped until the next intact IDR
//!   (P-frames after a loss reference a picture the decoder never got).
//!   Late and duplicate packets are dropped (no reordering buffer: a
//!   reordered packet costs the frames up to the next IDR, like a loss).
//! - An access unit counts as intact only if its first packet starts a
//!   picture (a parameter set, SEI, delimiter, or a slice with
//!   `first_mb_in_slice == 0`), so losing the first packets of a frame is
//!   caught even when the gap falls between frames.
//! - SPS and PPS are remembered; an IDR sent without them gets the last
//!   ones in front. An IDR with none known yet is dropped.
//! - A new SSRC or a sequence jump is a restarted sender: the next access
//!   unit must be an IDR, and the timeline carries on after the last one.
//!
//! Cost: one copy of each payload into the access unit's buffer, no
//! allocation per packet (the buffer and the NAL index are reused; the
//! access unit's `Bytes` is the only allocation per frame).

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use super::packet::{RtpHeader, SeqStep, SeqTracker, Timeline};
use super::sps;
use crate::source::{NAL_IDR, NAL_PPS, NAL_SPS, VIDEO_CLOCK_HZ};

const START_CODE: [u8; 4] = [0, 0, 0, 1];
const STAP_A: u8 = 24;
const FU_A: u8 = 28;
const NAL_SEI: u8 = 6;
const NAL_AUD: u8 = 9;

/// One access unit, ready for [`EncodedVideo`](crate::source::EncodedVideo).
#[derive(Debug, Clone)]
pub struct AccessUnit {
    /// NAL units with 4-byte start codes; an IDR has SPS and PPS in front.
    pub annexb: Bytes,
    pub keyframe: bool,
    /// The RTP timestamp unwrapped, from 0 at the first packet.
    pub pts_90k: u64,
    /// When the access unit's first packet arrived.
    pub first_arrival: Instant,
    /// From the last SPS (0 × 0 until one was read).
    pub width: u32,
    pub height: u32,
}

/// What happened to the stream so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VideoCounters {
    /// RTP packets of the expected payload type.
    pub packets: u64,
    /// Datagrams that are not RTP, another payload type, or malformed H.264.
    pub bad_packets: u64,
    /// Packets missing from the sequence.
    pub lost_packets: u64,
    /// Packets that came after a later one (or twice), dropped.
    pub late_packets: u64,
    /// Access units out.
    pub frames: u64,
    pub keyframes: u64,
    /// Access units dropped: broken by loss or malformed, or not decodable
    /// because they follow a loss and precede the next IDR.
    pub dropped_frames: u64,
    /// IDRs that arrived without SPS/PPS and got the remembered ones.
    pub parameter_sets_inserted: u64,
    /// New SSRC or sequence jump.
    pub restarts: u64,
}

/// The access unit being collected.
struct Pending {
    rtp_ts: u32,
    pts_90k: u64,
    arrival: Instant,
    /// Still decodable: no gap, no malformed packet, starts a picture.
    intact: bool,
    /// An FU-A unit is open (its end not seen yet).
    fu_open: bool,
}

pub struct H264Assembler {
    payload_type: u8,
    ssrc: Option<u32>,
    seq: SeqTracker,
    timeline: Timeline,
    pending: Option<Pending>,
    /// The pending access unit's bytes (Annex B).
    buf: BytesMut,
    /// (NAL type, offset of its header in `buf`) of the pending unit.
    nals: Vec<(u8, usize)>,
    /// Drop everything until an intact IDR.
    need_idr: bool,
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    size: (u32, u32),
    counters: VideoCounters,
}

impl H264Assembler {
    /// `restart_step` is where a restarted sender's timeline continues
    /// after the last frame (one nominal frame, in 90 kHz ticks).
    pub fn new(payload_type: u8, restart_step: u64) -> Self {
        H264Assembler {
            payload_type,
            ssrc: None,
            seq: SeqTracker::default(),
            timeline: Timeline::new(VIDEO_CLOCK_HZ, restart_step),
            pending: None,
            buf: BytesMut::with_capacity(64 * 1024),
            nals: Vec::with_capacity(16),
            need_idr: true,
            sps: None,
            pps: None,
            size: (0, 0),
            counters: VideoCounters::default(),
        }
    }

    pub fn counters(&self) -> &VideoCounters {
        &self.counters
    }

    /// Takes one datagram; calls `emit` for each access unit it completes
    /// (at most two: the one a new timestamp ends, and this one if its
    /// marker is set). Never panics, whatever the bytes.
    pub fn push(&mut self, now: Instant, datagram: &[u8], mut emit: impl FnMut(AccessUnit)) {
        let Ok(h) = RtpHeader::parse(datagram) else {
            self.counters.bad_packets += 1;
            return;
        };
        if h.payload_type != self.payload_type {
            self.counters.bad_packets += 1;
            return;
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
            SeqStep::Gap(n) => {
                self.counters.lost_packets += u64::from(n);
                self.need_idr = true;
                if let Some(p) = &mut self.pending {
                    p.intact = false;
                }
            }
            SeqStep::Late => {
                self.counters.late_packets += 1;
                return;
            }
            SeqStep::Jump => {
                self.restart();
                self.seq.step(h.seq);
            }
        }
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.rtp_ts != h.timestamp)
        {
            self.finish(&mut emit);
        }
        let payload = &datagram[h.payload_start..h.payload_end];
        if self.pending.is_none() {
            let pts_90k = self.timeline.position(h.timestamp);
            self.pending = Some(Pending {
                rtp_ts: h.timestamp,
                pts_90k,
                arrival: now,
                intact: starts_picture(payload),
                fu_open: false,
            });
        }
        if !self.depacketize(payload) {
            self.counters.bad_packets += 1;
            if let Some(p) = &mut self.pending {
                p.intact = false;
            }
        }
        if h.marker {
            self.finish(&mut emit);
        }
    }

    /// A new sender (SSRC) or a jump in its sequence: drop what is pending
    /// and wait for an IDR; the timeline continues after the last frame.
    fn restart(&mut self) {
        self.counters.restarts += 1;
        if self.pending.take().is_some() {
            self.counters.dropped_frames += 1;
        }
        self.buf.clear();
        self.nals.clear();
        self.seq.reset();
        self.timeline.restart();
        self.need_idr = true;
    }

    /// Appends the payload's NAL units to the buffer. `false` if malformed.
    fn depacketize(&mut self, payload: &[u8]) -> bool {
        let Some(pending) = self.pending.as_mut() else {
            return false;
        };
        let Some(&first) = payload.first() else {
            return false;
        };
        match first & 0x1F {
            t @ 1..=23 => {
                if pending.fu_open {
                    // The FU-A before it never ended.
                    pending.fu_open = false;
                    pending.intact = false;
                }
                self.nals.push((t, self.buf.len() + 4));
                self.buf.put_slice(&START_CODE);
                self.buf.put_slice(payload);
                true
            }
            STAP_A => {
                let mut rest = &payload[1..];
                while !rest.is_empty() {
                    if rest.len() < 2 {
                        return false;
                    }
                    let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                    rest = &rest[2..];
                    if len == 0 || len > rest.len() {
                        return false;
                    }
                    self.nals.push((rest[0] & 0x1F, self.buf.len() + 4));
                    self.buf.put_slice(&START_CODE);
                    self.buf.put_slice(&rest[..len]);
                    rest = &rest[len..];
                }
                true
            }
            FU_A => {
                if payload.len() < 3 {
                    return false;
                }
                let (indicator, header) = (payload[0], payload[1]);
                let (start, end) = (header & 0x80 != 0, header & 0x40 != 0);
                if start {
                    if pending.fu_open {
                        pending.intact = false;
                    }
                    let nal_header = (indicator & 0xE0) | (header & 0x1F);
                    self.nals.push((header & 0x1F, self.buf.len() + 4));
                    self.buf.put_slice(&START_CODE);
                    self.buf.put_u8(nal_header);
                    pending.fu_open = true;
                } else if !pending.fu_open {
                    // A middle or end without its start: the start was lost.
                    pending.intact = false;
                    return true;
                }
                self.buf.put_slice(&payload[2..]);
                if end {
                    pending.fu_open = false;
                }
                true
            }
            _ => false,
        }
    }

    /// Ends the pending access unit: emits it if decodable, else drops it.
    fn finish(&mut self, emit: &mut impl FnMut(AccessUnit)) {
        let Some(p) = self.pending.take() else {
            return;
        };
        let intact = p.intact && !p.fu_open;
        let outcome = if intact { self.complete(p) } else { None };
        match outcome {
            Some(au) => {
                self.counters.frames += 1;
                if au.keyframe {
                    self.counters.keyframes += 1;
                }
                emit(au);
            }
            None => {
                if !intact {
                    self.need_idr = true;
                    self.counters.dropped_frames += 1;
                }
                self.buf.clear();
            }
        }
        self.nals.clear();
    }

    /// The intact pending unit as an access unit, or `None` when it must
    /// wait for an IDR or carries no picture (counted by the caller only
    /// when dropped for loss).
    fn complete(&mut self, p: Pending) -> Option<AccessUnit> {
        let mut has_idr = false;
        let mut has_slice = false;
        let (mut has_sps, mut has_pps) = (false, false);
        for i in 0..self.nals.len() {
            let (t, start) = self.nals[i];
            let end = self
                .nals
                .get(i + 1)
                .map_or(self.buf.len(), |&(_, next)| next - 4);
            let nal = &self.buf[start..end];
            match t {
                NAL_SPS => {
                    has_sps = true;
                    if self.sps.as_deref() != Some(nal) {
                        if let Some(size) = sps::picture_size(nal) {
                            self.size = size;
                        }
                        self.sps = Some(Bytes::copy_from_slice(nal));
                    }
                }
                NAL_PPS => {
                    has_pps = true;
                    if self.pps.as_deref() != Some(nal) {
                        self.pps = Some(Bytes::copy_from_slice(nal));
                    }
                }
                NAL_IDR => {
                    has_idr = true;
                    has_slice = true;
                }
                1..=5 => has_slice = true,
                _ => {}
            }
        }
        if !has_slice {
            // Parameter sets or SEI alone: remembered, nothing to show.
            return None;
        }
        if !has_idr && self.need_idr {
            self.counters.dropped_frames += 1;
            return None;
        }
        let annexb = if has_idr && !(has_sps && has_pps) {
            let (Some(sps), Some(pps)) = (&self.sps, &self.pps) else {
                // An IDR no decoder can start from yet.
                self.counters.dropped_frames += 1;
                return None;
            };
            self.counters.parameter_sets_inserted += 1;
            let au = self.buf.split();
            let mut out = BytesMut::with_capacity(au.len() + sps.len() + pps.len() + 8);
            if !has_sps {
                out.put_slice(&START_CODE);
                out.put_slice(sps);
            }
            if !has_pps {
                out.put_slice(&START_CODE);
                out.put_slice(pps);
            }
            out.put_slice(&au);
            out.freeze()
        } else {
            self.buf.split().freeze()
        };
        if has_idr {
            self.need_idr = false;
        }
        Some(AccessUnit {
            annexb,
            keyframe: has_idr,
            pts_90k: p.pts_90k,
            first_arrival: p.arrival,
            width: self.size.0,
            height: self.size.1,
        })
    }
}

/// Whether an RTP payload begins a picture: a non-VCL unit that precedes
/// slices, or a slice (whole or the start of its fragments) with
/// `first_mb_in_slice == 0` (Exp-Golomb 0 is a single 1 bit).
fn starts_picture(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    let (nal_type, slice_byte) = match first & 0x1F {
        STAP_A => match payload.get(3) {
            Some(&h) => (h & 0x1F, payload.get(4)),
            None => return false,
        },
        FU_A => match payload.get(1) {
            Some(&h) if h & 0x80 != 0 => (h & 0x1F, payload.get(2)),
            _ => return false,
        },
        t => (t, payload.get(1)),
    };
    match nal_type {
        NAL_SEI | NAL_SPS | NAL_PPS | NAL_AUD => true,
        1..=5 => slice_byte.is_some_and(|b| b & 0x80 != 0),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::nal_units;
    use proptest::prelude::*;
    use std::time::Duration;

    const PT: u8 = 96;
    const SPS: &[u8] = &[
        0x67, 0x42, 0xC0, 0x0D, 0xD9, 0x01, 0x41, 0xFB, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10,
        0x00, 0x00, 0x03, 0x03, 0xC0, 0xF1, 0x42, 0xA4, 0x80,
    ];
    const PPS: &[u8] = &[0x68, 0xCB, 0x83, 0xCB, 0x20];

    /// A slice NAL: `first_mb_in_slice == 0` (top bit set), then filler.
    fn slice(idr: bool, len: usize) -> Vec<u8> {
        let mut n = vec![if idr { 0x65 } else { 0x41 }, 0x88];
        n.extend((0..len.saturating_sub(2)).map(|i| (i % 251) as u8 | 1));
        n
    }

    fn rtp(seq: u16, ts: u32, ssrc: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, PT | if marker { 0x80 } else { 0 }];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn stap_a(nals: &[&[u8]]) -> Vec<u8> {
        let mut p = vec![STAP_A | 0x60];
        for n in nals {
            p.extend_from_slice(&(n.len() as u16).to_be_bytes());
            p.extend_from_slice(n);
        }
        p
    }

    /// FU-A fragments of `nal`, `size` bytes of it per packet.
    fn fu_a(nal: &[u8], size: usize) -> Vec<Vec<u8>> {
        let chunks: Vec<&[u8]> = nal[1..].chunks(size).collect();
        let last = chunks.len() - 1;
        chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut h = nal[0] & 0x1F;
                if i == 0 {
                    h |= 0x80;
                }
                if i == last {
                    h |= 0x40;
                }
                let mut p = vec![(nal[0] & 0xE0) | FU_A, h];
                p.extend_from_slice(c);
                p
            })
            .collect()
    }

    /// A sender: numbers packets, stamps frames 3000 ticks apart.
    struct Sender {
        seq: u16,
        ts: u32,
        ssrc: u32,
    }

    impl Sender {
        fn new(ssrc: u32) -> Self {
            Sender {
                seq: 65_530, // wraps during the tests
                ts: u32::MAX - 5000,
                ssrc,
            }
        }

        /// One frame's packets: STAP-A of SPS+PPS for an IDR with
        /// `with_params`, then the slice as FU-A fragments.
        fn frame(&mut self, idr: bool, with_params: bool) -> Vec<Vec<u8>> {
            let mut payloads = Vec::new();
            if idr && with_params {
                payloads.push(stap_a(&[SPS, PPS]));
            }
            payloads.extend(fu_a(&slice(idr, 3000), 1200));
            let n = payloads.len();
            let out = payloads
                .into_iter()
                .enumerate()
                .map(|(i, p)| {
                    let pkt = rtp(self.seq, self.ts, self.ssrc, i + 1 == n, &p);
                    self.seq = self.seq.wrapping_add(1);
                    pkt
                })
                .collect();
            self.ts = self.ts.wrapping_add(3000);
            out
        }
    }

    fn run(a: &mut H264Assembler, packets: &[Vec<u8>]) -> Vec<AccessUnit> {
        let t0 = Instant::now();
        let mut out = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            a.push(t0 + Duration::from_millis(i as u64), p, |au| out.push(au));
        }
        out
    }

    fn types(au: &AccessUnit) -> Vec<u8> {
        nal_units(&au.annexb).map(|n| n[0] & 0x1F).collect()
    }

    fn assembler() -> H264Assembler {
        H264Assembler::new(PT, 3000)
    }

    #[test]
    fn a_clean_stream_comes_out_frame_by_frame() {
        let mut s = Sender::new(1);
        let mut packets = s.frame(true, true);
        packets.extend(s.frame(false, false));
        packets.extend(s.frame(false, false));
        let mut a = assembler();
        let t0 = Instant::now();
        let mut out = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            a.push(t0 + Duration::from_millis(i as u64), p, |au| out.push(au));
        }
        assert_eq!(out.len(), 3);
        assert!(out[0].keyframe && !out[1].keyframe && !out[2].keyframe);
        assert_eq!(types(&out[0]), vec![NAL_SPS, NAL_PPS, NAL_IDR]);
        assert_eq!(types(&out[1]), vec![1]);
        // The slice is whole again: header, then every byte in order.
        let idr: Vec<&[u8]> = nal_units(&out[0].annexb).collect();
        assert_eq!(idr[2], &slice(true, 3000)[..]);
        assert_eq!(idr[0], SPS);
        // Times: unwrapped across the 32-bit wrap, arrival of the first packet.
        let pts: Vec<u64> = out.iter().map(|au| au.pts_90k).collect();
        assert_eq!(pts, vec![0, 3000, 6000]);
        assert_eq!(out[0].first_arrival, t0);
        assert_eq!(out[1].first_arrival, t0 + Duration::from_millis(4));
        assert_eq!((out[0].width, out[0].height), (320, 240));
        let c = a.counters();
        assert_eq!(
            (c.frames, c.keyframes, c.dropped_frames, c.lost_packets),
            (3, 1, 0, 0)
        );
    }

    #[test]
    fn joining_mid_stream_waits_for_the_first_idr() {
        let mut s = Sender::new(1);
        let mut packets = s.frame(false, false);
        // The tail of a frame whose start we missed.
        packets.extend(s.frame(false, false).into_iter().skip(1));
        packets.extend(s.frame(true, true));
        packets.extend(s.frame(false, false));
        let mut a = assembler();
        let out = run(&mut a, &packets);
        assert_eq!(out.len(), 2);
        assert!(out[0].keyframe);
        assert_eq!(a.counters().dropped_frames, 2);
    }

    #[test]
    fn a_lost_fragment_drops_frames_until_the_next_idr() {
        let mut s = Sender::new(1);
        let mut packets = s.frame(true, true);
        let mut broken = s.frame(false, false);
        broken.remove(1); // a middle FU-A fragment
        packets.extend(broken);
        packets.extend(s.frame(false, false)); // intact but undecodable
        packets.extend(s.frame(true, true));
        packets.extend(s.frame(false, false));
        let mut a = assembler();
        let out = run(&mut a, &packets);
        let keys: Vec<bool> = out.iter().map(|au| au.keyframe).collect();
        assert_eq!(keys, vec![true, true, false]);
        let c = a.counters();
        assert_eq!(c.lost_packets, 1);
        assert_eq!(c.dropped_frames, 2);
        assert_eq!(out[1].pts_90k, 9000);
    }

    #[test]
    fn a_frame_lost_whole_drops_the_frames_after_it() {
        let mut s = Sender::new(1);
        let mut packets = s.frame(true, true);
        let _lost = s.frame(false, false);
        packets.extend(s.frame(false, false));
        packets.extend(s.frame(true, true));
        let mut a = assembler();
        let out = run(&mut a, &packets);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|au| au.keyframe));
        assert_eq!(a.counters().lost_packets, 3);
    }

    #[test]
    fn the_first_packets_of_a_frame_lost_across_the_boundary() {
        // The gap eats the end of one frame and the start of the next: both go.
        let mut s = Sender::new(1);
        let mut packets = s.frame(true, true);
        let mut p1 = s.frame(false, false);
        let p2 = s.frame(false, false);
        p1.pop();
        packets.extend(p1);
        packets.extend(p2.into_iter().skip(1));
        let mut a = assembler();
        let out = run(&mut a, &packets);
        assert_eq!(out.len(), 1);
        assert_eq!(a.counters().dropped_frames, 2);
    }

    #[test]
    fn parameter_sets_sent_once_are_put_in_front_of_later_idrs() {
        let mut s = Sender::new(1);
        // A first IDR without SPS/PPS cannot be decoded: dropped.
        let mut packets = s.frame(true, false);
        // The sender's parameter sets alone, as their own unit (no picture).
        packets.push(rtp(
            s.seq,
            s.ts.wrapping_sub(1),
            1,
            true,
            &stap_a(&[SPS, PPS]),
        ));
        s.seq = s.seq.wrapping_add(1);
        packets.extend(s.frame(true, false));
        packets.extend(s.frame(false, false));
        packets.extend(s.frame(true, false));
        let mut a = assembler();
        let out = run(&mut a, &packets);
        assert_eq!(out.len(), 3);
        assert_eq!(types(&out[0]), vec![NAL_SPS, NAL_PPS, NAL_IDR]);
        assert_eq!(types(&out[2]), vec![NAL_SPS, NAL_PPS, NAL_IDR]);
        let c = a.counters();
        assert_eq!((c.parameter_sets_inserted, c.dropped_frames), (2, 1));
    }

    #[test]
    fn a_restarted_sender_is_taken_up_at_its_next_idr() {
        let mut s = Sender::new(1);
        let mut packets = s.frame(true, true);
        packets.extend(s.frame(false, false));
        let mut again = Sender::new(2);
        again.seq = 1000;
        again.ts = 77;
        packets.extend(again.frame(false, false)); // mid-GOP: not decodable
        packets.extend(again.frame(true, true));
        packets.extend(again.frame(false, false));
        let mut a = assembler();
        let out = run(&mut a, &packets);
        let pts: Vec<u64> = out.iter().map(|au| au.pts_90k).collect();
        // The timeline goes on after the last frame, one step later.
        assert_eq!(pts, vec![0, 3000, 9000, 12_000]);
        assert!(out[2].keyframe);
        let c = a.counters();
        assert_eq!((c.restarts, c.dropped_frames), (1, 1));
    }

    #[test]
    fn late_and_duplicate_packets_are_dropped_without_harm() {
        let mut s = Sender::new(1);
        let mut packets = s.frame(true, true);
        let p = s.frame(false, false);
        packets.extend(p.clone());
        packets.push(p[0].clone()); // duplicate of an old one
        packets.extend(s.frame(false, false));
        let mut a = assembler();
        let out = run(&mut a, &packets);
        assert_eq!(out.len(), 3);
        assert_eq!(a.counters().late_packets, 1);
    }

    #[test]
    fn without_marker_bits_a_new_timestamp_ends_the_frame() {
        let mut s = Sender::new(1);
        let mut packets: Vec<Vec<u8>> = Vec::new();
        for f in [s.frame(true, true), s.frame(false, false)] {
            packets.extend(f.into_iter().map(|mut p| {
                p[1] &= 0x7F;
                p
            }));
        }
        let mut a = assembler();
        let out = run(&mut a, &packets);
        assert_eq!(out.len(), 1, "the last frame waits for its successor");
    }

    #[test]
    fn other_payload_types_and_garbage_are_counted_not_used() {
        let mut a = assembler();
        let mut other = rtp(1, 0, 1, true, &slice(true, 10));
        other[1] = 0x80 | 100;
        let out = run(&mut a, &[other, vec![1, 2, 3], vec![0x80; 12]]);
        assert!(out.is_empty());
        assert_eq!(a.counters().bad_packets, 3);
        assert_eq!(a.counters().packets, 0);
    }

    fn stream() -> Vec<Vec<u8>> {
        let mut s = Sender::new(7);
        let mut packets = Vec::new();
        for i in 0..8 {
            packets.extend(s.frame(i % 4 == 0, i % 8 == 0));
        }
        packets
    }

    proptest! {
        #[test]
        fn arbitrary_datagrams_never_panic(datagrams in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..64)) {
            let mut a = assembler();
            let mut packets = datagrams;
            // Make most of them look like RTP of our type.
            for p in packets.iter_mut().filter(|p| p.len() >= 2) {
                p[0] = 0x80 | (p[0] & 0x3F);
                p[1] = (p[1] & 0x80) | PT;
            }
            run(&mut a, &packets);
        }

        #[test]
        fn whatever_is_lost_or_reordered_every_output_decodes(
            drops in prop::collection::vec(any::<bool>(), 64),
            swaps in prop::collection::vec((0usize..64, 0usize..64), 0..4),
        ) {
            let mut packets: Vec<Vec<u8>> = stream()
                .into_iter()
                .zip(drops.iter().cycle())
                .filter(|(_, &d)| !d)
                .map(|(p, _)| p)
                .collect();
            let n = packets.len();
            for (i, j) in swaps {
                if n > 0 {
                    packets.swap(i % n, j % n);
                }
            }
            let mut a = assembler();
            let out = run(&mut a, &packets);
            if let Some(first) = out.first() {
                prop_assert!(first.keyframe, "the first frame out is an IDR");
            }
            for au in &out {
                let t = types(au);
                if au.keyframe {
                    prop_assert_eq!(&t[..2], &[NAL_SPS, NAL_PPS]);
                }
                // Every slice is whole: same length as sent.
                for nal in nal_units(&au.annexb).filter(|n| matches!(n[0] & 0x1F, 1 | 5)) {
                    prop_assert_eq!(nal.len(), 3000);
                }
            }
        }
    }
}
