//! The worker's own media path to a viewer on the one UDP port: RTP
//! numbering, SRTP encryption, NACK retransmission and RTCP sender reports,
//! in place of webrtc-rs's per-packet path (track, stats recorder, sender
//! reports, NACK responder, SRTP session, ICE conn, mux: about 5–7 µs a
//! packet beyond encrypting and sending it, docs/profile.md).
//!
//! webrtc-rs still does ICE, DTLS, SCTP and the viewer's RTCP (PLI, FIR,
//! NACK reach the fan-out through `read_rtcp`). The SRTP keys are the ones
//! its DTLS handshake derived, read through the two accessors the vendored
//! webrtc-rs adds (vendor/README.md). Packets go to the selected candidate
//! pair's remote address through the port's send queue
//! ([`crate::udp::UdpQueue`]), the socket webrtc-rs's own packets
//! leave by, so the viewer sees one 5-tuple.
//!
//! [`OutStream`] is the pure part (numbering, rollover, history, report counters);
//! [`SrtpOut`] adds the SRTP (RTP sealed in place by [`srtp`], RTCP by
//! webrtc-srtp's context) and the destination, and seals
//! packets into an [`Outbox`]. A session's viewers share one fan-out task
//! that owns their `SrtpOut`s (`crate::fanout`).

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use webrtc::rtcp::packet::Packet as RtcpPacket;
use webrtc::rtcp::sender_report::SenderReport;
use webrtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use webrtc::srtp::config::SessionKeys;
use webrtc::srtp::context::Context;
use webrtc::srtp::protection_profile::ProtectionProfile;

use crate::udp::{trim_entries, Trim, UdpQueue, TRIM_FLOOR_BYTES};

pub mod srtp;

/// Video packets kept per viewer for retransmission on NACK: about 2.5 s of
/// 720p at 4 Mbit/s, as the NACK responder the webrtc-rs path used kept.
pub const VIDEO_HISTORY: usize = 1024;

/// How often a viewer gets RTCP sender reports (lip sync and round-trip
/// time in the browser); webrtc-rs's interceptor sent one a second too.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Packets one NACK may ask for again. A browser's NACK lists the few
/// packets it misses; a crafted one could list the whole history, or one
/// packet hundreds of times, for a single small RTCP packet.
pub const MAX_NACKED: usize = 128;

/// RTP header length without CSRCs or extensions, as written here.
const RTP_HEADER: usize = 12;

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

#[derive(Clone)]
struct Sent {
    seq: u16,
    /// The rollover counter the packet was sealed with (SRTP's index is
    /// `roc << 16 | seq`).
    roc: u32,
    timestamp: u32,
    marker: bool,
    payload: Bytes,
}

/// One outgoing RTP stream: its numbering, the packets kept for
/// retransmission, and the counters a sender report carries.
pub struct OutStream {
    ssrc: u32,
    payload_type: u8,
    clock_rate: u32,
    seq: u16,
    /// How often `seq` has wrapped (SRTP's rollover counter, RFC 3711).
    roc: u32,
    history: Vec<Option<Sent>>,
    packets: u32,
    octets: u32,
    /// RTP timestamp of the latest packet and when it was sent.
    last: Option<(u32, Instant)>,
}

impl OutStream {
    /// A stream numbered from `first_seq`, keeping `history` packets for
    /// retransmission (0: none).
    pub fn new(
        ssrc: u32,
        payload_type: u8,
        clock_rate: u32,
        first_seq: u16,
        history: usize,
    ) -> Self {
        Self {
            ssrc,
            payload_type: payload_type & 0x7f,
            clock_rate,
            seq: first_seq,
            roc: 0,
            history: vec![None; history],
            packets: 0,
            octets: 0,
            last: None,
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Numbers the next packet, keeps it, and appends its plaintext RTP
    /// (header and payload) to `out`. Returns its rollover counter.
    pub fn next(
        &mut self,
        payload: &Bytes,
        marker: bool,
        timestamp: u32,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> u32 {
        let (seq, roc) = (self.seq, self.roc);
        self.seq = seq.wrapping_add(1);
        if self.seq == 0 {
            self.roc = self.roc.wrapping_add(1);
        }
        self.write(seq, timestamp, marker, payload, out);
        if !self.history.is_empty() {
            let slot = seq as usize % self.history.len();
            self.history[slot] = Some(Sent {
                seq,
                roc,
                timestamp,
                marker,
                payload: payload.clone(),
            });
        }
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload.len() as u32);
        self.last = Some((timestamp, now));
        roc
    }

    /// Appends the packet numbered `seq` again to `out`, if it is still
    /// kept, and returns its rollover counter; a retransmission is the same
    /// packet (RFC 4585 NACK without RTX).
    pub fn again(&self, seq: u16, out: &mut Vec<u8>) -> Option<u32> {
        if self.history.is_empty() {
            return None;
        }
        match &self.history[seq as usize % self.history.len()] {
            Some(s) if s.seq == seq => {
                self.write(s.seq, s.timestamp, s.marker, &s.payload, out);
                Some(s.roc)
            }
            _ => None,
        }
    }

    /// The sender report for `now`: the RTP time the stream's clock has
    /// reached since its latest packet, and what was sent. `None` before
    /// the first packet (a report would map the clock to nothing).
    pub fn report(&self, now: Instant, wall: SystemTime) -> Option<SenderReport> {
        let (timestamp, at) = self.last?;
        let elapsed = now.saturating_duration_since(at);
        let ticks = (elapsed.as_nanos() * u128::from(self.clock_rate) / 1_000_000_000) as u32;
        Some(SenderReport {
            ssrc: self.ssrc,
            ntp_time: ntp(wall),
            rtp_time: timestamp.wrapping_add(ticks),
            packet_count: self.packets,
            octet_count: self.octets,
            ..Default::default()
        })
    }

    fn write(&self, seq: u16, timestamp: u32, marker: bool, payload: &[u8], out: &mut Vec<u8>) {
        out.reserve(RTP_HEADER + payload.len());
        out.push(0x80); // version 2, no padding, extension or CSRCs
        out.push(u8::from(marker) << 7 | self.payload_type);
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&timestamp.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(payload);
    }
}

/// The sequence numbers a NACK asks for: each once, at most [`MAX_NACKED`]
/// (the first ones listed).
pub fn nacked(nack: &TransportLayerNack) -> Vec<u16> {
    let mut seen = std::collections::HashSet::new();
    nack.nacks
        .iter()
        .flat_map(|n| n.packet_list())
        .filter(|s| seen.insert(*s))
        .take(MAX_NACKED)
        .collect()
}

/// A wall-clock time as a 64-bit NTP timestamp (seconds since 1900 in the
/// high half, the fraction in the low half).
pub fn ntp(wall: SystemTime) -> u64 {
    let since = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// Why a viewer's SRTP path could not start or send.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    #[error("SRTP: {0}")]
    Srtp(#[from] webrtc::srtp::Error),
    #[error("RTCP: {0}")]
    Rtcp(#[from] webrtc::rtcp::Error),
    #[error("SRTP keys: {0}")]
    Keys(#[from] srtp::KeyLengths),
}

/// Encrypted packets waiting to go, laid end to end, each with its length
/// and destination, kept apart by the port's lane (sender thread) that
/// sends them: what one [`UdpQueue::send`] per lane queues under one lock
/// and without a copy (a session's fan-out fills it for all its viewers,
/// `crate::fanout`).
pub struct Outbox {
    lanes: Vec<Waiting>,
}

/// One lane's packets in an [`Outbox`], and how their buffers follow what
/// the lane has needed lately ([`Trim`]).
struct Waiting {
    wire: Vec<u8>,
    packets: Vec<(usize, SocketAddr)>,
    trim_wire: Trim,
    trim_packets: Trim,
}

impl Default for Waiting {
    fn default() -> Self {
        Self {
            wire: Vec::new(),
            packets: Vec::new(),
            trim_wire: Trim::new(TRIM_FLOOR_BYTES),
            trim_packets: trim_entries(),
        }
    }
}

impl Default for Outbox {
    fn default() -> Self {
        Self::new(1)
    }
}

impl Outbox {
    /// An outbox for a port of `lanes` sender threads
    /// ([`UdpQueue::lanes`]).
    pub fn new(lanes: usize) -> Self {
        Self {
            lanes: (0..lanes.max(1)).map(|_| Waiting::default()).collect(),
        }
    }

    fn lane(&mut self, to: SocketAddr) -> &mut Waiting {
        let lane = crate::udp::lane_of(to, self.lanes.len());
        &mut self.lanes[lane]
    }

    fn push(&mut self, sealed: &[u8], to: SocketAddr) {
        let lane = self.lane(to);
        lane.wire.extend_from_slice(sealed);
        lane.packets.push((sealed.len(), to));
    }

    /// Adds the packet `write` appends to the buffer (given where it
    /// starts) for `to`, if it returns `true`; otherwise drops what it
    /// wrote. Whether a packet went in.
    fn append(&mut self, to: SocketAddr, write: impl FnOnce(&mut Vec<u8>, usize) -> bool) -> bool {
        let lane = self.lane(to);
        let start = lane.wire.len();
        if write(&mut lane.wire, start) {
            lane.packets.push((lane.wire.len() - start, to));
            true
        } else {
            lane.wire.truncate(start);
            false
        }
    }

    /// Packets waiting.
    pub fn len(&self) -> usize {
        self.lanes.iter().map(|l| l.packets.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.lanes.iter().all(|l| l.packets.is_empty())
    }

    /// The packets waiting with their destinations, lane by lane (each
    /// destination's in order).
    pub fn packets(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        self.lanes.iter().flat_map(|l| {
            let mut start = 0;
            l.packets.iter().map(move |&(len, to)| {
                let p = &l.wire[start..start + len];
                start += len;
                (p, to)
            })
        })
    }

    /// Queues everything on the port and empties the outbox (its buffers
    /// are kept for the next round, their capacity trimmed to what recent
    /// rounds needed, [`Trim`]).
    pub fn flush(&mut self, udp: &mut UdpQueue, now: Instant) {
        for lane in &mut self.lanes {
            if !lane.packets.is_empty() {
                let (bytes, packets) = (lane.wire.len(), lane.packets.len());
                udp.send(&mut lane.wire, &lane.packets);
                lane.packets.clear();
                lane.trim_wire.used(bytes, &mut lane.wire, now);
                lane.trim_packets.used(packets, &mut lane.packets, now);
            }
        }
    }
}

/// A viewer's SRTP path: both streams, their SRTP, and where
/// packets go. Sealed packets go into the caller's [`Outbox`].
pub struct SrtpOut {
    seal: Seal,
    to: SocketAddr,
    pub video: OutStream,
    pub audio: OutStream,
    reported_at: Option<Instant>,
}

/// A viewer's SRTP: RTP sealed in place in the outbox for the two profiles
/// viewers negotiate ([`srtp`]), otherwise by webrtc-srtp's context, which
/// also seals RTCP (RTP and RTCP keep separate indices).
struct Seal {
    in_place: Option<srtp::RtpSealer>,
    context: Context,
    /// Plaintext for the context.
    plain: Vec<u8>,
    /// Packets the context refused (not expected: the first is logged).
    refused: u64,
}

impl Seal {
    /// Seals the RTP packet `write` appends to a buffer (returning its
    /// rollover counter, or `None` having written nothing) into `out`, for
    /// `to`. Whether a packet went in.
    fn rtp(
        &mut self,
        out: &mut Outbox,
        to: SocketAddr,
        write: impl FnOnce(&mut Vec<u8>) -> Option<u32>,
    ) -> bool {
        if let Some(sealer) = &self.in_place {
            return out.append(to, |wire, start| {
                let Some(roc) = write(wire) else {
                    return false;
                };
                sealer.seal(wire, start, RTP_HEADER, roc);
                true
            });
        }
        self.plain.clear();
        if write(&mut self.plain).is_none() {
            return false;
        }
        match self.context.encrypt_rtp(&self.plain) {
            Ok(sealed) => {
                out.push(&sealed, to);
                true
            }
            Err(e) => {
                if self.refused == 0 {
                    // Not expected (the keys and profile were accepted):
                    // said once per viewer, then only counted.
                    tracing::warn!(error = %e, to = %to, "SRTP refused an RTP packet; it was dropped");
                }
                self.refused += 1;
                false
            }
        }
    }
}

impl SrtpOut {
    /// `keys` as the local side derived them from DTLS.
    pub fn new(
        keys: &SessionKeys,
        profile: ProtectionProfile,
        to: SocketAddr,
        video: OutStream,
        audio: OutStream,
    ) -> Result<Self, DirectError> {
        let context = Context::new(
            &keys.local_master_key,
            &keys.local_master_salt,
            profile,
            None,
            None,
        )?;
        let in_place =
            srtp::RtpSealer::new(profile, &keys.local_master_key, &keys.local_master_salt)?;
        Ok(Self {
            seal: Seal {
                in_place,
                context,
                plain: Vec::with_capacity(1500),
                refused: 0,
            },
            to,
            video,
            audio,
            reported_at: None,
        })
    }

    /// Where packets go.
    pub fn destination(&self) -> SocketAddr {
        self.to
    }

    /// Sends packets elsewhere (the selected candidate pair can change).
    pub fn set_destination(&mut self, to: SocketAddr) {
        self.to = to;
    }

    /// Packets the SRTP context refused (not expected: the first is
    /// logged).
    pub fn refused(&self) -> u64 {
        self.seal.refused
    }

    /// Whether RTP is sealed in place ([`srtp`]) rather than by webrtc-srtp.
    pub fn seals_in_place(&self) -> bool {
        self.seal.in_place.is_some()
    }

    /// Encrypts video packets (payload, marker, RTP timestamp) into `out`.
    pub fn send_video<'a>(
        &mut self,
        packets: impl Iterator<Item = (&'a Bytes, bool, u32)>,
        now: Instant,
        out: &mut Outbox,
    ) {
        for (payload, marker, timestamp) in packets {
            let video = &mut self.video;
            self.seal.rtp(out, self.to, |buf| {
                Some(video.next(payload, marker, timestamp, now, buf))
            });
        }
    }

    /// Encrypts one audio packet into `out`.
    pub fn send_audio(&mut self, payload: &Bytes, timestamp: u32, now: Instant, out: &mut Outbox) {
        let audio = &mut self.audio;
        self.seal.rtp(out, self.to, |buf| {
            Some(audio.next(payload, false, timestamp, now, buf))
        });
    }

    /// Encrypts again into `out` the video packets a viewer reported lost,
    /// those still kept. Returns how many.
    pub fn resend(&mut self, seqs: &[u16], out: &mut Outbox) -> usize {
        let video = &self.video;
        seqs.iter()
            .filter(|&&seq| self.seal.rtp(out, self.to, |buf| video.again(seq, buf)))
            .count()
    }

    /// Whether a sender report is due.
    pub fn report_due(&self, now: Instant) -> bool {
        self.reported_at
            .is_none_or(|at| now.saturating_duration_since(at) >= REPORT_EVERY)
    }

    /// Encrypts into `out` one compound RTCP packet with a sender report
    /// per stream that has sent anything (nothing before the first packet).
    pub fn report(
        &mut self,
        now: Instant,
        wall: SystemTime,
        out: &mut Outbox,
    ) -> Result<(), DirectError> {
        let reports: Vec<Box<dyn RtcpPacket + Send + Sync>> = [&self.video, &self.audio]
            .into_iter()
            .filter_map(|s| s.report(now, wall))
            .map(|r| Box::new(r) as Box<dyn RtcpPacket + Send + Sync>)
            .collect();
        if reports.is_empty() {
            // Still due: the first report follows the first packet.
            return Ok(());
        }
        self.reported_at = Some(now);
        let plain = webrtc::rtcp::packet::marshal(&reports)?;
        let sealed = self.seal.context.encrypt_rtcp(&plain)?;
        out.push(&sealed, self.to);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
