//! H.264 over RTP (RFC 6184), forwarded packet by packet: a pure state
//! machine.
//!
//! Datagrams go in with their arrival time; RTP payloads for the viewers
//! come out as soon as they can be judged, not when their frame is whole
//! (cut-through: a frame's first packets reach the viewers while its last
//! ones are still on the way, as in Janus's streaming plugin):
//! - Single NAL units, STAP-A and FU-A are understood; other packet types
//!   (STAP-B, MTAP, FU-B: interleaved mode) break the access unit.
//! - An access unit ends at the marker bit (which senders set on its last
//!   packet, RFC 6184 §5.1), or when a packet with another RTP timestamp
//!   arrives (then the viewers got no marker for it: counted).
//! - Packets carrying no slice yet (parameter sets, SEI, delimiters) are
//!   held until the access unit's first slice shows whether it is an IDR:
//!   the first packet out of an IDR access unit is marked
//!   [`VideoPacket::keyframe_start`], where a joining viewer starts.
//! - SPS and PPS are remembered; an IDR sent without them gets the last
//!   ones in front (one STAP-A). An IDR with none known yet is dropped.
//! - Before the first IDR, nothing goes out. A gap in sequence numbers (or
//!   a malformed packet) cuts the access unit it falls in short: what was
//!   forwarded of it stays forwarded, its marker never comes, so decoders
//!   drop it; then nothing goes out until the next IDR (P-frames after a
//!   loss reference a picture the decoder never got). A packet overtaken
//!   by later ones is put back in place if it comes within the reorder
//!   window ([`super::reorder`], 10 ms); the later ones wait for it. Late
//!   (after the window) and duplicate packets are dropped.
//! - An access unit is forwarded only if its first packet starts a picture
//!   (a parameter set, SEI, delimiter, or a slice with
//!   `first_mb_in_slice == 0`), so losing the first packets of a frame is
//!   caught even when the gap falls between frames.
//! - A new SSRC or a sequence jump is a restarted sender: the next access
//!   unit out must be an IDR, and the timeline carries on after the last.
//! - Payloads up to [`MAX_PAYLOAD`] bytes go out unchanged; larger ones
//!   (ffmpeg's default is 1460) are cut into FU-A fragments that fit.
//!
//! Cost: one copy of each payload into its own `Bytes`; no other
//! allocation per packet except for the few held or refragmented ones.

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use super::packet::{RtpHeader, SeqStep, SeqTracker, Timeline};
use super::reorder::{Reorder, Step};
use crate::source::{VideoPacket, NAL_IDR, NAL_PPS, NAL_SPS, VIDEO_CLOCK_HZ};

/// The largest RTP payload forwarded (the RTP packet is 12 bytes more,
/// SRTP adds 10–16: what browsers and TURN relays take without IP
/// fragmentation, and what webrtc-rs's own packetizer targets).
pub const MAX_PAYLOAD: usize = 1200;
const STAP_A: u8 = 24;
const FU_A: u8 = 28;
const NAL_SEI: u8 = 6;
const NAL_AUD: u8 = 9;
/// Packets held while an access unit shows no slice yet; beyond this it is
/// not a picture we can judge, and is dropped.
const MAX_HELD: usize = 16;

/// What happened to the stream so far: the wire type of `session.stats`
/// (`rtp.video`), whose fields say what each counts.
pub type VideoCounters = bus_schema::RtpVideoStats;

/// What is done with the pending access unit's packets.
#[derive(Debug)]
enum Fate {
    /// No slice seen yet: its packets wait for the first one.
    Held(Vec<Bytes>),
    /// Going out packet by packet.
    Forwarding { keyframe: bool },
    /// Nothing of it goes out (counted as dropped when it ends).
    Dropping,
    /// Cut short after some of it went out (already counted).
    Cut,
}

/// The access unit being forwarded.
struct Pending {
    rtp_ts: u32,
    pts_90k: u64,
    fate: Fate,
    /// An FU-A unit is open (its end not seen yet).
    fu_open: bool,
    /// Parameter sets carried by the held packets.
    has_sps: bool,
    has_pps: bool,
}

/// What one payload carries, as far as forwarding needs to know.
struct Scan {
    /// The type of the first slice NAL unit that starts in it.
    first_slice: Option<u8>,
    has_sps: bool,
    has_pps: bool,
}

pub struct H264Forwarder {
    payload_type: u8,
    ssrc: Option<u32>,
    seq: SeqTracker,
    reorder: Reorder,
    timeline: Timeline,
    pending: Option<Pending>,
    /// Forward nothing until an IDR.
    need_idr: bool,
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    size: (u32, u32),
    counters: VideoCounters,
}

impl H264Forwarder {
    /// `restart_step` is where a restarted sender's timeline continues
    /// after the last frame (one nominal frame, in 90 kHz ticks).
    pub fn new(payload_type: u8, restart_step: u64) -> Self {
        H264Forwarder {
            payload_type,
            ssrc: None,
            seq: SeqTracker::default(),
            reorder: Reorder::default(),
            timeline: Timeline::new(VIDEO_CLOCK_HZ, restart_step),
            pending: None,
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

    /// From the last SPS (0 × 0 until one was read).
    pub fn picture_size(&self) -> (u32, u32) {
        self.size
    }

    /// Takes one datagram; calls `emit` for each payload that may go to the
    /// viewers now, in order. A packet that overtook an earlier one waits
    /// for it in the reorder window (see [`reorder`](super::reorder)).
    /// Never panics, whatever the bytes.
    pub fn push(&mut self, now: Instant, datagram: &[u8], mut emit: impl FnMut(VideoPacket)) {
        self.expire(now, &mut emit);
        let Some(h) = self.header(datagram) else {
            self.counters.bad_packets += 1;
            return;
        };
        match self.reorder.arrive(now, h.ssrc, h.seq, datagram) {
            Step::Held => return,
            Step::Duplicate => {
                self.counters.packets += 1;
                self.counters.late_packets += 1;
                return;
            }
            Step::ReleaseFirst => {
                for d in self.reorder.release_all() {
                    self.take_released(now, &d, &mut emit);
                }
            }
            Step::Pass => {}
        }
        self.take(now, datagram, h, &mut emit);
        for d in self.reorder.ready() {
            self.take_released(now, &d, &mut emit);
        }
        self.counters.reordered_packets = self.reorder.reordered();
    }

    /// When a packet held in the reorder window stops waiting: call
    /// [`Self::expire`] then (or on the next datagram, which checks too).
    pub fn deadline(&self) -> Option<Instant> {
        self.reorder.deadline()
    }

    /// Passes on the held packets whose wait is over by `now`, taking the
    /// gaps in front of them as loss.
    pub fn expire(&mut self, now: Instant, mut emit: impl FnMut(VideoPacket)) {
        for d in self.reorder.expire(now) {
            self.take_released(now, &d, &mut emit);
        }
    }

    /// The RTP header of a datagram of our payload type; `None` for
    /// anything else (counted as bad by the caller).
    fn header(&self, datagram: &[u8]) -> Option<RtpHeader> {
        RtpHeader::parse(datagram)
            .ok()
            .filter(|h| h.payload_type == self.payload_type)
    }

    /// A packet the reorder window held: it passed [`Self::header`] when it
    /// came, so only its header is read again.
    fn take_released(&mut self, now: Instant, datagram: &[u8], emit: &mut impl FnMut(VideoPacket)) {
        if let Some(h) = self.header(datagram) {
            self.take(now, datagram, h, emit);
        }
    }

    /// One datagram of our payload type (`h` its header), in its turn.
    fn take(
        &mut self,
        now: Instant,
        datagram: &[u8],
        h: RtpHeader,
        emit: &mut impl FnMut(VideoPacket),
    ) {
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
                self.cut();
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
            self.finish(false);
        }
        let payload = &datagram[h.payload_start..h.payload_end];
        if self.pending.is_none() {
            let fate = if starts_picture(payload) {
                Fate::Held(Vec::new())
            } else {
                // A frame whose start was lost, or not a picture at all.
                self.need_idr = true;
                Fate::Dropping
            };
            self.pending = Some(Pending {
                rtp_ts: h.timestamp,
                pts_90k: self.timeline.position(h.timestamp),
                fate,
                fu_open: false,
                has_sps: false,
                has_pps: false,
            });
        }
        let Some(pending) = self.pending.as_mut() else {
            return;
        };
        let out = Out {
            pts_90k: pending.pts_90k,
            arrived_at: now,
        };
        match scan(payload, &mut pending.fu_open) {
            Ok(s) => {
                pending.has_sps |= s.has_sps;
                pending.has_pps |= s.has_pps;
                if s.has_sps || s.has_pps {
                    self.remember_parameter_sets(payload);
                }
                self.forward(payload, h.marker, s.first_slice, out, emit);
            }
            Err(broken) => {
                if broken == Broken::Malformed {
                    self.counters.bad_packets += 1;
                }
                self.cut();
            }
        }
        if h.marker {
            self.finish(true);
        }
    }

    /// Decides and sends what the pending unit's state allows for one
    /// payload.
    fn forward(
        &mut self,
        payload: &[u8],
        marker: bool,
        first_slice: Option<u8>,
        out: Out,
        emit: &mut impl FnMut(VideoPacket),
    ) {
        let Some(pending) = self.pending.as_mut() else {
            return;
        };
        match &mut pending.fate {
            Fate::Dropping | Fate::Cut => {}
            Fate::Forwarding { .. } => {
                self.counters.forwarded_packets += fit(
                    payload,
                    marker,
                    false,
                    out,
                    &mut self.counters.refragmented,
                    emit,
                );
            }
            Fate::Held(held) => {
                let Some(slice) = first_slice else {
                    if held.len() == MAX_HELD {
                        self.need_idr = true;
                        pending.fate = Fate::Dropping;
                    } else {
                        held.push(Bytes::copy_from_slice(payload));
                    }
                    return;
                };
                let keyframe = slice == NAL_IDR;
                let held = std::mem::take(held);
                let mut first = Vec::with_capacity(1);
                if keyframe && !(pending.has_sps && pending.has_pps) {
                    match (&self.sps, &self.pps) {
                        (Some(sps), Some(pps)) => {
                            self.counters.parameter_sets_inserted += 1;
                            first.push(stap_a(sps, pps));
                        }
                        // An IDR no decoder can start from yet.
                        _ => {
                            pending.fate = Fate::Dropping;
                            return;
                        }
                    }
                } else if !keyframe && self.need_idr {
                    pending.fate = Fate::Dropping;
                    return;
                }
                if keyframe {
                    self.need_idr = false;
                }
                pending.fate = Fate::Forwarding { keyframe };
                let c = &mut self.counters;
                let mut start = keyframe;
                for p in first.iter().chain(&held) {
                    c.forwarded_packets += fit(p, false, start, out, &mut c.refragmented, emit);
                    start = false;
                }
                c.forwarded_packets += fit(payload, marker, start, out, &mut c.refragmented, emit);
            }
        }
    }

    /// A loss or a malformed packet: the pending unit goes no further, and
    /// nothing goes out until an IDR.
    fn cut(&mut self) {
        self.need_idr = true;
        if let Some(p) = &mut self.pending {
            p.fate = match p.fate {
                Fate::Forwarding { .. } => {
                    self.counters.cut_frames += 1;
                    Fate::Cut
                }
                Fate::Cut => Fate::Cut,
                Fate::Held(_) | Fate::Dropping => Fate::Dropping,
            };
        }
    }

    /// A new sender (SSRC) or a jump in its sequence: what is pending ends
    /// here and an IDR is awaited; the timeline continues after the last
    /// frame.
    fn restart(&mut self) {
        self.counters.restarts += 1;
        self.cut();
        self.finish(false);
        self.seq.reset();
        self.timeline.restart();
    }

    /// Ends the pending access unit (at its marker when `marked`).
    fn finish(&mut self, marked: bool) {
        let Some(p) = self.pending.take() else {
            return;
        };
        match p.fate {
            Fate::Forwarding { .. } if p.fu_open => {
                // Its last fragment never came: as good as lost.
                self.counters.cut_frames += 1;
                self.need_idr = true;
            }
            Fate::Forwarding { keyframe } => {
                self.counters.frames += 1;
                self.counters.keyframes += u64::from(keyframe);
                self.counters.unmarked_frames += u64::from(!marked);
            }
            Fate::Dropping => self.counters.dropped_frames += 1,
            // Parameter sets or SEI alone: remembered, nothing to show.
            Fate::Held(_) | Fate::Cut => {}
        }
    }

    /// Keeps the SPS and PPS a payload carries (whole NAL units only).
    fn remember_parameter_sets(&mut self, payload: &[u8]) {
        for nal in whole_nals(payload) {
            match nal[0] & 0x1F {
                NAL_SPS if self.sps.as_deref() != Some(nal) => {
                    if let Some(size) = ::h264::picture_size(nal) {
                        self.size = size;
                    }
                    self.sps = Some(Bytes::copy_from_slice(nal));
                }
                NAL_PPS if self.pps.as_deref() != Some(nal) => {
                    self.pps = Some(Bytes::copy_from_slice(nal));
                }
                _ => {}
            }
        }
    }
}

/// Time fields shared by every payload out of one datagram.
#[derive(Clone, Copy)]
struct Out {
    pts_90k: u64,
    arrived_at: Instant,
}

/// Why a payload cannot be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broken {
    /// Not H.264 RTP we understand (counted as a bad packet).
    Malformed,
    /// Well formed, but its fragment unit's start or end is missing (the
    /// other packets were lost).
    Incomplete,
}

/// Checks a payload's structure and FU-A continuity, and says what it
/// carries.
fn scan(payload: &[u8], fu_open: &mut bool) -> Result<Scan, Broken> {
    let mut s = Scan {
        first_slice: None,
        has_sps: false,
        has_pps: false,
    };
    let nal = |s: &mut Scan, t: u8| match t {
        NAL_SPS => s.has_sps = true,
        NAL_PPS => s.has_pps = true,
        1..=5 if s.first_slice.is_none() => s.first_slice = Some(t),
        _ => {}
    };
    let first = *payload.first().ok_or(Broken::Malformed)?;
    match first & 0x1F {
        t @ 1..=23 => {
            if std::mem::take(fu_open) {
                // The FU-A before it never ended.
                return Err(Broken::Incomplete);
            }
            nal(&mut s, t);
        }
        STAP_A => {
            let mut any = false;
            for n in stap_a_units(payload) {
                nal(&mut s, n.ok_or(Broken::Malformed)?[0] & 0x1F);
                any = true;
            }
            if !any {
                return Err(Broken::Malformed);
            }
            if std::mem::take(fu_open) {
                return Err(Broken::Incomplete);
            }
        }
        FU_A => {
            if payload.len() < 3 {
                return Err(Broken::Malformed);
            }
            let header = payload[1];
            let (start, end) = (header & 0x80 != 0, header & 0x40 != 0);
            if start == *fu_open {
                // A start inside an open unit, or a middle/end without one.
                *fu_open = false;
                return Err(Broken::Incomplete);
            }
            if start {
                nal(&mut s, header & 0x1F);
            }
            *fu_open = !end;
        }
        _ => return Err(Broken::Malformed),
    }
    Ok(s)
}

/// The NAL units of a STAP-A payload; a `None` item (the last) if its
/// lengths do not add up.
fn stap_a_units(payload: &[u8]) -> impl Iterator<Item = Option<&[u8]>> {
    let mut rest = payload.get(1..).unwrap_or_default();
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let nal = match rest {
            [hi, lo, units @ ..] => units
                .get(..usize::from(u16::from_be_bytes([*hi, *lo])))
                .filter(|n| !n.is_empty()),
            _ => None,
        };
        rest = match nal {
            Some(n) => &rest[2 + n.len()..],
            None => &[],
        };
        Some(nal)
    })
}

/// The whole NAL units in a (well-formed) payload: one single NAL unit or
/// the units of a STAP-A; none for a fragment.
fn whole_nals(payload: &[u8]) -> Vec<&[u8]> {
    match payload.first().map(|b| b & 0x1F) {
        Some(1..=23) => vec![payload],
        Some(STAP_A) => stap_a_units(payload).map_while(|n| n).collect(),
        _ => Vec::new(),
    }
}

/// SPS and PPS as one STAP-A payload.
fn stap_a(sps: &[u8], pps: &[u8]) -> Bytes {
    let mut p = BytesMut::with_capacity(5 + sps.len() + pps.len());
    // F = 0, NRI = the highest of the two, type 24.
    p.put_u8(((sps[0] | pps[0]) & 0x60) | STAP_A);
    for nal in [sps, pps] {
        p.put_u16(nal.len() as u16);
        p.put_slice(nal);
    }
    p.freeze()
}

/// Emits `payload` as one packet if it fits in [`MAX_PAYLOAD`], else as
/// FU-A fragments that do (a STAP-A is taken apart into its units first).
/// `marker` goes on the last packet out, `keyframe_start` on the first.
/// Returns the number of packets emitted.
fn fit(
    payload: &[u8],
    marker: bool,
    keyframe_start: bool,
    out: Out,
    refragmented: &mut u64,
    emit: &mut impl FnMut(VideoPacket),
) -> u64 {
    let packet = |payload: Bytes, marker: bool, keyframe_start: bool| VideoPacket {
        payload,
        pts_90k: out.pts_90k,
        marker,
        keyframe_start,
        arrived_at: out.arrived_at,
    };
    if payload.len() <= MAX_PAYLOAD {
        emit(packet(
            Bytes::copy_from_slice(payload),
            marker,
            keyframe_start,
        ));
        return 1;
    }
    *refragmented += 1;
    // (FU indicator, FU header without S/E, data, starts the NAL, ends it)
    let mut pieces: Vec<(u8, u8, &[u8], bool, bool)> = Vec::new();
    match payload[0] & 0x1F {
        STAP_A => {
            for nal in stap_a_units(payload).map_while(|n| n) {
                pieces.push(((nal[0] & 0xE0) | FU_A, nal[0] & 0x1F, &nal[1..], true, true));
            }
        }
        FU_A => {
            let h = payload[1];
            pieces.push((
                payload[0],
                h & 0x1F,
                &payload[2..],
                h & 0x80 != 0,
                h & 0x40 != 0,
            ));
        }
        _ => pieces.push((
            (payload[0] & 0xE0) | FU_A,
            payload[0] & 0x1F,
            &payload[1..],
            true,
            true,
        )),
    }
    let mut packets = Vec::new();
    for (indicator, nal_type, data, starts, ends) in pieces {
        if data.len() < MAX_PAYLOAD && starts && ends {
            // A unit of a STAP-A that fits as a single NAL unit.
            let mut whole = BytesMut::with_capacity(data.len() + 1);
            whole.put_u8((indicator & 0xE0) | nal_type);
            whole.put_slice(data);
            packets.push(whole.freeze());
            continue;
        }
        // Equal pieces, each with the 2-byte FU indicator and header.
        let count = data.len().div_ceil(MAX_PAYLOAD - 2).max(1);
        let size = data.len().div_ceil(count).max(1);
        let chunks = data.chunks(size).count();
        for (i, chunk) in data.chunks(size).enumerate() {
            let mut header = nal_type;
            if i == 0 && starts {
                header |= 0x80;
            }
            if i + 1 == chunks && ends {
                header |= 0x40;
            }
            let mut p = BytesMut::with_capacity(chunk.len() + 2);
            p.put_u8(indicator);
            p.put_u8(header);
            p.put_slice(chunk);
            packets.push(p.freeze());
        }
    }
    let n = packets.len();
    for (i, p) in packets.into_iter().enumerate() {
        emit(packet(p, marker && i + 1 == n, keyframe_start && i == 0));
    }
    n as u64
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
    use crate::source::rtp::reorder;
    use proptest::prelude::*;
    use std::time::Duration;

    const PT: u8 = 96;
    const SPS: &[u8] = &[
        0x67, 0x42, 0xC0, 0x0D, 0xD9, 0x01, 0x41, 0xFB, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10,
        0x00, 0x00, 0x03, 0x03, 0xC0, 0xF1, 0x42, 0xA4, 0x80,
    ];
    const PPS: &[u8] = &[0x68, 0xCB, 0x83, 0xCB, 0x20];
    /// Slice length and fragment size of the test sender: 3 fragments a
    /// frame, each small enough to go out unchanged.
    const SLICE: usize = 3000;
    const FRAGMENT: usize = 1000;

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

    fn stap(nals: &[&[u8]]) -> Vec<u8> {
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
                payloads.push(stap(&[SPS, PPS]));
            }
            payloads.extend(fu_a(&slice(idr, SLICE), FRAGMENT));
            self.packets(payloads)
        }

        fn packets(&mut self, payloads: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
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

    /// Packets out, each with the index of the datagram that let it go.
    fn run_at(f: &mut H264Forwarder, packets: &[Vec<u8>]) -> Vec<(usize, VideoPacket)> {
        let t0 = Instant::now();
        let mut out = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            f.push(t0 + Duration::from_millis(i as u64), p, |v| {
                out.push((i, v))
            });
        }
        // What still waits in the reorder window when the input ends.
        let end = t0 + Duration::from_millis(packets.len() as u64) + reorder::WINDOW;
        f.expire(end, |v| out.push((packets.len(), v)));
        out
    }

    fn run(f: &mut H264Forwarder, packets: &[Vec<u8>]) -> Vec<VideoPacket> {
        run_at(f, packets).into_iter().map(|(_, v)| v).collect()
    }

    fn forwarder() -> H264Forwarder {
        H264Forwarder::new(PT, 3000)
    }

    /// Output split into access units (runs of one timestamp), each with
    /// whether its marker came.
    fn frames(out: &[VideoPacket]) -> Vec<(&[VideoPacket], bool)> {
        out.chunk_by(|a, b| a.pts_90k == b.pts_90k && !a.marker)
            .map(|f| (f, f.last().is_some_and(|p| p.marker)))
            .collect()
    }

    /// The NAL units a receiver rebuilds from payloads (RFC 6184).
    fn nals(packets: &[VideoPacket]) -> Vec<Vec<u8>> {
        let mut nals = Vec::new();
        let mut open: Option<Vec<u8>> = None;
        for p in packets {
            let b = &p.payload[..];
            match b[0] & 0x1F {
                STAP_A => nals.extend(stap_a_units(b).map(|n| n.unwrap().to_vec())),
                FU_A => {
                    if b[1] & 0x80 != 0 {
                        open = Some(vec![(b[0] & 0xE0) | (b[1] & 0x1F)]);
                    }
                    let nal = open.as_mut().expect("a fragment after its start");
                    nal.extend_from_slice(&b[2..]);
                    if b[1] & 0x40 != 0 {
                        nals.push(open.take().unwrap());
                    }
                }
                _ => nals.push(b.to_vec()),
            }
        }
        nals
    }

    fn types(packets: &[VideoPacket]) -> Vec<u8> {
        nals(packets).iter().map(|n| n[0] & 0x1F).collect()
    }

    fn payload(datagram: &[u8]) -> &[u8] {
        &datagram[12..]
    }

    #[test]
    fn a_clean_stream_goes_out_packet_by_packet_as_it_arrives() {
        let mut s = Sender::new(1);
        let mut packets = s.frame(true, true);
        packets.extend(s.frame(false, false));
        packets.extend(s.frame(false, false));
        let mut f = forwarder();
        let out = run_at(&mut f, &packets);
        // Every payload unchanged, in order, marker where the sender put it.
        assert_eq!(out.len(), packets.len());
        for ((_, v), p) in out.iter().zip(&packets) {
            assert_eq!(&v.payload[..], payload(p));
            assert_eq!(v.marker, p[1] & 0x80 != 0);
        }
        // Cut-through: each packet leaves when it arrives, except the
        // parameter sets, held until the slice behind them shows an IDR.
        let released: Vec<usize> = out.iter().map(|(i, _)| *i).collect();
        let mut expected: Vec<usize> = (0..packets.len()).collect();
        expected[0] = 1;
        assert_eq!(released, expected);
        let t0 = out[0].1.arrived_at;
        assert_eq!(out[4].1.arrived_at, t0 + Duration::from_millis(3));
        // Only the IDR's first packet is where a viewer may start.
        let starts: Vec<bool> = out.iter().map(|(_, v)| v.keyframe_start).collect();
        assert!(starts[0] && starts[1..].iter().all(|s| !s));
        let out: Vec<VideoPacket> = out.into_iter().map(|(_, v)| v).collect();
        let fr = frames(&out);
        assert_eq!(types(fr[0].0), vec![NAL_SPS, NAL_PPS, NAL_IDR]);
        assert_eq!(nals(fr[0].0)[2], slice(true, SLICE));
        // Times: unwrapped across the 32-bit wrap.
        let pts: Vec<u64> = fr.iter().map(|(f, _)| f[0].pts_90k).collect();
        assert_eq!(pts, vec![0, 3000, 6000]);
        assert_eq!(f.picture_size(), (320, 240));
        let c = f.counters();
        assert_eq!(
            (
                c.frames,
                c.keyframes,
                c.dropped_frames,
                c.cut_frames,
                c.lost_packets
            ),
            (3, 1, 0, 0, 0)
        );
        assert_eq!((c.forwarded_packets, c.refragmented), (10, 0));
    }

    #[test]
    fn joining_mid_stream_waits_for_the_first_idr() {
        let mut s = Sender::new(1);
        let mut packets = s.frame(false, false);
        // The tail of a frame whose start we missed.
        packets.extend(s.frame(false, false).into_iter().skip(1));
        packets.extend(s.frame(true, true));
        packets.extend(s.frame(false, false));
        let mut f = forwarder();
        let out = run(&mut f, &packets);
        assert!(out[0].keyframe_start);
        assert_eq!(frames(&out).len(), 2);
        assert_eq!(f.counters().dropped_frames, 2);
    }

    #[test]
    fn a_lost_fragment_cuts_its_frame_short_and_waits_for_the_next_idr() {
        let mut s = Sender::new(1);
        let mut packets = s.frame(true, true);
        let mut broken = s.frame(false, false);
        broken.remove(1); // a middle FU-A fragment
        packets.extend(broken);
        packets.extend(s.frame(false, false)); // intact but undecodable
        packets.extend(s.frame(true, true));
        packets.extend(s.frame(false, false));
        let mut f = forwarder();
        let out = run(&mut f, &packets);
        let fr = frames(&out);
        // The broken frame's first fragment had gone; its end never does.
        let shape: Vec<(usize, bool)> = fr.iter().map(|(f, m)| (f.len(), *m)).collect();
        assert_eq!(shape, vec![(4, true), (1, false), (4, true), (3, true)]);
        assert!(fr[2].0[0].keyframe_start);
        assert_eq!(fr[2].0[0].pts_90k, 9000);
        let c = f.counters();
        assert_eq!((c.lost_packets, c.cut_frames, c.dropped_frames), (1, 1, 1));
        assert_eq!((c.frames, c.keyframes), (3, 2));
    }

    #[test]
    fn a_frame_lost_whole_stops_the_frames_after_it() {
        let mut s = Sender::new(1);
        let mut packets = s.frame(true, true);
        let _lost = s.frame(false, false);
        packets.extend(s.frame(false, false));
        packets.extend(s.frame(true, true));
        let mut f = forwarder();
        let out = run(&mut f, &packets);
        let fr = frames(&out);
        assert_eq!(fr.len(), 2);
        assert!(fr.iter().all(|(f, m)| f[0].keyframe_start && *m));
        assert_eq!(f.counters().lost_packets, 3);
    }

    #[test]
    fn the_first_packets_of_a_frame_lost_across_the_boundary() {
        // The gap eats the end of one frame and the start of the next.
        let mut s = Sender::new(1);
        let mut packets = s.frame(true, true);
        let mut p1 = s.frame(false, false);
        let p2 = s.frame(false, false);
        p1.pop();
        packets.extend(p1);
        packets.extend(p2.into_iter().skip(1));
        let mut f = forwarder();
        let out = run(&mut f, &packets);
        let shape: Vec<(usize, bool)> = frames(&out).iter().map(|(f, m)| (f.len(), *m)).collect();
        assert_eq!(shape, vec![(4, true), (2, false)]);
        let c = f.counters();
        assert_eq!((c.cut_frames, c.dropped_frames), (1, 1));
    }

    #[test]
    fn parameter_sets_sent_once_are_put_in_front_of_later_idrs() {
        let mut s = Sender::new(1);
        // A first IDR without SPS/PPS cannot be decoded: dropped.
        let mut packets = s.frame(true, false);
        // The sender's parameter sets alone, as their own unit (no picture).
        packets.extend(s.packets(vec![stap(&[SPS, PPS])]));
        packets.extend(s.frame(true, false));
        packets.extend(s.frame(false, false));
        packets.extend(s.frame(true, false));
        let mut f = forwarder();
        let out = run(&mut f, &packets);
        let fr = frames(&out);
        assert_eq!(fr.len(), 3);
        assert_eq!(types(fr[0].0), vec![NAL_SPS, NAL_PPS, NAL_IDR]);
        assert_eq!(types(fr[2].0), vec![NAL_SPS, NAL_PPS, NAL_IDR]);
        assert!(fr[0].0[0].keyframe_start && fr[2].0[0].keyframe_start);
        assert_eq!(nals(fr[0].0)[..2], [SPS.to_vec(), PPS.to_vec()]);
        let c = f.counters();
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
        let mut f = forwarder();
        let out = run(&mut f, &packets);
        let fr = frames(&out);
        let pts: Vec<u64> = fr.iter().map(|(f, _)| f[0].pts_90k).collect();
        // The timeline goes on after the last frame, one step later.
        assert_eq!(pts, vec![0, 3000, 9000, 12_000]);
        assert!(fr[2].0[0].keyframe_start);
        let c = f.counters();
        assert_eq!((c.restarts, c.dropped_frames, c.cut_frames), (1, 1, 0));
    }

    #[test]
    fn packets_overtaken_within_the_window_are_put_back_in_order() {
        let mut s = Sender::new(1);
        let mut packets = s.frame(true, true);
        let mut p = s.frame(false, false);
        p.swap(0, 2); // the frame's first fragment comes third
        packets.extend(p);
        let mut next = s.frame(false, false);
        next.swap(1, 2);
        packets.extend(next);
        let mut f = forwarder();
        let (when, out): (Vec<usize>, Vec<VideoPacket>) =
            run_at(&mut f, &packets).into_iter().unzip();
        let fr: Vec<(usize, bool)> = frames(&out).iter().map(|(f, m)| (f.len(), *m)).collect();
        assert_eq!(fr, vec![(4, true), (3, true), (3, true)]);
        // The frame's packets waited for its first one, no longer: all
        // three went out when it came (the sixth datagram).
        assert_eq!(when[4..7], [6, 6, 6]);
        let c = f.counters();
        assert_eq!(
            (c.reordered_packets, c.lost_packets, c.late_packets),
            (2, 0, 0)
        );
        assert_eq!((c.frames, c.cut_frames, c.dropped_frames), (3, 0, 0));
    }

    #[test]
    fn a_gap_is_loss_once_the_window_is_over() {
        let mut s = Sender::new(1);
        let mut packets = s.frame(true, true);
        let mut p = s.frame(false, false);
        p.remove(0);
        packets.extend(p);
        let mut f = forwarder();
        let t0 = Instant::now();
        let mut out = Vec::new();
        for p in &packets {
            f.push(t0, p, |v| out.push(v));
        }
        // The IDR went out; the rest waits for the missing packet.
        assert_eq!(out.len(), 4);
        assert_eq!(f.deadline(), Some(t0 + reorder::WINDOW));
        f.expire(t0 + reorder::WINDOW - Duration::from_micros(1), |v| {
            out.push(v)
        });
        assert_eq!(out.len(), 4);
        f.expire(t0 + reorder::WINDOW, |v| out.push(v));
        // Now a loss: the frame's start is gone, so none of it goes out.
        assert_eq!(out.len(), 4);
        assert_eq!(f.deadline(), None);
        let c = f.counters();
        assert_eq!((c.lost_packets, c.reordered_packets, c.packets), (1, 0, 6));
    }

    #[test]
    fn late_and_duplicate_packets_are_dropped_without_harm() {
        let mut s = Sender::new(1);
        let mut packets = s.frame(true, true);
        let p = s.frame(false, false);
        packets.extend(p.clone());
        packets.push(p[0].clone()); // duplicate of an old one
        packets.extend(s.frame(false, false));
        let mut f = forwarder();
        let out = run(&mut f, &packets);
        assert_eq!(frames(&out).len(), 3);
        assert!(frames(&out).iter().all(|(_, m)| *m));
        assert_eq!(f.counters().late_packets, 1);
    }

    #[test]
    fn without_marker_bits_a_new_timestamp_ends_the_frame() {
        let mut s = Sender::new(1);
        let mut packets: Vec<Vec<u8>> = Vec::new();
        for fr in [s.frame(true, true), s.frame(false, false)] {
            packets.extend(fr.into_iter().map(|mut p| {
                p[1] &= 0x7F;
                p
            }));
        }
        packets.extend(s.frame(false, false));
        let mut f = forwarder();
        let out = run(&mut f, &packets);
        assert_eq!(out.len(), packets.len());
        let c = f.counters();
        assert_eq!((c.frames, c.unmarked_frames), (3, 2));
    }

    #[test]
    fn other_payload_types_and_garbage_are_counted_not_used() {
        let mut f = forwarder();
        let mut other = rtp(1, 0, 1, true, &slice(true, 10));
        other[1] = 0x80 | 100;
        let bad_stap = rtp(2, 0, 1, true, &[STAP_A, 0, 9, 0x67]);
        let out = run(&mut f, &[other, vec![1, 2, 3], vec![0x80; 12], bad_stap]);
        assert!(out.is_empty());
        assert_eq!(f.counters().bad_packets, 4);
        assert_eq!(f.counters().packets, 1);
    }

    #[test]
    fn payloads_too_large_are_cut_into_fragments_that_fit() {
        let mut s = Sender::new(1);
        let sei = {
            let mut n = vec![NAL_SEI];
            n.extend(std::iter::repeat_n(0x55, 1500));
            n
        };
        let idr = slice(true, 4000);
        let p = slice(false, 2000);
        // A STAP-A too large, then 1400-byte FU-A fragments (ffmpeg sends
        // up to 1460), then a single NAL unit of 2000 bytes.
        let mut payloads = vec![stap(&[SPS, PPS, &sei])];
        payloads.extend(fu_a(&idr, 1400));
        let mut packets = s.packets(payloads);
        packets.extend(s.packets(vec![p.clone()]));
        let mut f = forwarder();
        let out = run(&mut f, &packets);
        assert!(out.iter().all(|v| v.payload.len() <= MAX_PAYLOAD));
        let fr = frames(&out);
        assert_eq!(fr.len(), 2);
        assert!(fr.iter().all(|(_, m)| *m));
        assert_eq!(
            nals(fr[0].0),
            vec![SPS.to_vec(), PPS.to_vec(), sei, idr.clone()]
        );
        assert_eq!(nals(fr[1].0), vec![p]);
        assert!(out[0].keyframe_start && out[1..].iter().all(|v| !v.keyframe_start));
        // Markers only at the ends of the two frames.
        assert_eq!(out.iter().filter(|v| v.marker).count(), 2);
        assert_eq!(f.counters().refragmented, 1 + 3 + 1);
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
            let mut f = forwarder();
            let mut packets = datagrams;
            // Make most of them look like RTP of our type.
            for p in packets.iter_mut().filter(|p| p.len() >= 2) {
                p[0] = 0x80 | (p[0] & 0x3F);
                p[1] = (p[1] & 0x80) | PT;
            }
            for v in run(&mut f, &packets) {
                prop_assert!(v.payload.len() <= MAX_PAYLOAD);
            }
        }

        #[test]
        fn whatever_is_lost_or_reordered_every_frame_that_ends_decodes(
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
            let mut f = forwarder();
            let out = run(&mut f, &packets);
            if let Some(first) = out.first() {
                prop_assert!(first.keyframe_start, "the first packet out starts an IDR");
            }
            let fr = frames(&out);
            for (k, (frame, marked)) in fr.iter().enumerate() {
                if k > 0 && !fr[k - 1].1 {
                    prop_assert!(frame[0].keyframe_start, "after a frame cut short, an IDR");
                }
                if !marked {
                    continue;
                }
                let t = types(frame);
                if frame[0].keyframe_start {
                    prop_assert_eq!(&t[..], &[NAL_SPS, NAL_PPS, NAL_IDR]);
                } else {
                    prop_assert_eq!(&t[..], &[1]);
                }
                // Every slice is whole: same length as sent.
                for nal in nals(frame).iter().filter(|n| matches!(n[0] & 0x1F, 1 | 5)) {
                    prop_assert_eq!(nal.len(), SLICE);
                }
            }
        }
    }
}
