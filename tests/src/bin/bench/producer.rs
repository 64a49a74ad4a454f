//! The one RTP stream fed to both relays in section 6.
//!
//! A short clip is encoded once with OpenH264 (the worker's own test
//! picture), IDR at its start, so replaying it in a loop is a valid H.264
//! stream that costs the bench nothing to produce. Each frame is packetized
//! with webrtc-rs's H.264 payloader (the packets every relay receives are the
//! same bytes) and gets one extra NAL unit: an SEI "user data unregistered"
//! message carrying a fixed UUID and the frame's id. Relays rewrite sequence
//! numbers, timestamps and SSRCs, but forward NAL units, so a viewer finds
//! the frame id in what it receives whatever the relay did to the headers.
//!
//! A dedicated thread sends each frame's packets to every destination, paced
//! in small bursts, in an order that alternates frame by frame, and records
//! per destination the instant the frame's last packet left: a viewer's
//! delay for that frame is its arrival minus that instant (same process,
//! same clock).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, IntraFramePeriod, Level, Profile,
    RateControlMode, UsageType, VuiConfig,
};
use openh264::{OpenH264API, Timestamp};
use webrtc::rtp::codecs::h264::H264Payloader;
use webrtc::rtp::packetizer::Payloader;
use worker::source::{draw_frame, Overlay, I420};

/// RTP payload types of the stream (what both relays are configured with).
pub const VIDEO_PT: u8 = 96;
pub const AUDIO_PT: u8 = 111;
/// Largest RTP payload the payloader produces.
const MTU: usize = 1200;
/// Identifies the bench's SEI messages (user data unregistered, type 5).
/// No zero byte, so no emulation prevention is ever needed.
const SEI_UUID: [u8; 16] = *b"relay-bench-fid1";
/// 20 ms of Opus silence (CELT, fullband, one frame): the relays forward
/// audio packets; what they carry does not matter to the bench.
const OPUS_SILENCE: [u8; 3] = [0xf8, 0xff, 0xfe];
/// Frames whose send instants are remembered (a ring indexed by frame id).
const RING: usize = 1 << 14;
/// Pacing within a frame: bursts of this many packets per destination, one
/// burst every `BURST_GAP` (about 10 KB per 200 µs, 400 Mbit/s), as a
/// network link would spread them. Unpaced, a keyframe arrives on loopback
/// as one burst of hundreds of packets, and a relay socket with the
/// default receive buffer (212 KB) drops part of it: a matter of
/// `net.core.rmem_default`, not of the relay.
const BURST: usize = 8;
const BURST_GAP: Duration = Duration::from_micros(200);

/// A stream to encode.
#[derive(Debug, Clone, Copy)]
pub struct StreamSpec {
    pub label: &'static str,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
    /// Length of the clip; its first frame is an IDR.
    pub frames: usize,
    /// An IDR every this many frames.
    pub gop: usize,
}

/// One encoded frame, already cut into RTP payloads.
struct ClipFrame {
    payloads: Vec<Bytes>,
    /// Where the SEI payload goes: after a leading STAP-A of SPS and PPS.
    sei_at: usize,
}

/// The encoded loop.
pub struct Clip {
    pub spec: StreamSpec,
    frames: Vec<ClipFrame>,
    /// Video bits per second of the loop, RTP payloads (SEI included).
    pub video_bps: f64,
    /// RTP packets per second of the loop (video and audio).
    pub packets_per_s: f64,
    pub encode_time: Duration,
}

impl Clip {
    pub fn encode(spec: StreamSpec) -> anyhow::Result<Clip> {
        let t0 = Instant::now();
        let level = if spec.width * spec.height * spec.fps > 1280 * 720 * 30 {
            Level::Level_4_2
        } else {
            Level::Level_3_1
        };
        let config = EncoderConfig::new()
            .profile(Profile::Baseline)
            .level(level)
            .rate_control_mode(RateControlMode::Bitrate)
            .bitrate(BitRate::from_bps(spec.bitrate_kbps * 1000))
            .max_frame_rate(FrameRate::from_hz(spec.fps as f32))
            .skip_frames(false)
            .usage_type(UsageType::CameraVideoRealTime)
            .complexity(Complexity::Low)
            .intra_frame_period(IntraFramePeriod::from_num_frames(0))
            .scene_change_detect(false)
            .vui(VuiConfig::bt601());
        let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
            .context("openh264 encoder")?;
        let mut picture = I420::new(spec.width, spec.height);
        let mut payloader = H264Payloader::default();
        let mut frames = Vec::with_capacity(spec.frames);
        let mut bytes = 0usize;
        let mut packets = 0usize;
        for i in 0..spec.frames {
            draw_frame(&mut picture, i as u64, "relay bench", &Overlay::default());
            // Grain on the luma, so the encoder has to spend its bitrate as
            // it would on camera video; the clock digits alone compress to
            // a fraction of the target.
            grain(&mut picture, i as u64);
            if i % spec.gop == 0 {
                encoder.force_intra_frame();
            }
            let au = encoder
                .encode_at(
                    &picture,
                    Timestamp::from_millis(i as u64 * 1000 / spec.fps as u64),
                )
                .context("h264 encode")?
                .to_vec();
            anyhow::ensure!(!au.is_empty(), "the encoder skipped frame {i}");
            let payloads = payloader
                .payload(MTU, &Bytes::from(au))
                .context("h264 payloader")?;
            let sei_at = usize::from(payloads.first().is_some_and(|p| p[0] & 0x1f == 24));
            bytes += payloads.iter().map(Bytes::len).sum::<usize>() + sei(0).len();
            packets += payloads.len() + 1;
            frames.push(ClipFrame { payloads, sei_at });
        }
        anyhow::ensure!(
            frames.first().is_some_and(|f| f.sei_at == 1),
            "the clip does not start with SPS and PPS"
        );
        let secs = spec.frames as f64 / f64::from(spec.fps);
        Ok(Clip {
            spec,
            frames,
            video_bps: bytes as f64 * 8.0 / secs,
            packets_per_s: packets as f64 / secs + 50.0,
            encode_time: t0.elapsed(),
        })
    }
}

/// Deterministic pseudo-random grain over the whole luma plane.
fn grain(p: &mut I420, frame: u64) {
    let mut s = 0x2545_f491_4f6c_dd1d ^ frame.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for chunk in p.y.chunks_mut(8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        for (k, px) in chunk.iter_mut().enumerate() {
            let n = ((s >> (k * 8)) & 0x0f) as i16 - 8;
            *px = (i16::from(*px) + n).clamp(16, 235) as u8;
        }
    }
}

/// The SEI NAL unit (one RTP payload) carrying frame id `id`: 7 bits per
/// byte with the top bit set, so the message never holds a zero byte.
fn sei(id: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(3 + 16 + 8 + 1);
    b.put_u8(0x06); // nal_ref_idc 0, type 6 (SEI)
    b.put_u8(5); // payload type: user data unregistered
    b.put_u8(24); // payload size: UUID + 8 id bytes
    b.put_slice(&SEI_UUID);
    for k in (0..8).rev() {
        b.put_u8(0x80 | ((id >> (7 * k)) & 0x7f) as u8);
    }
    b.put_u8(0x80); // rbsp trailing bits
    b.freeze()
}

/// The frame id in an SEI NAL unit made by [`sei`], if it is one.
fn parse_sei(nal: &[u8]) -> Option<u64> {
    if nal.len() < 3 + 16 + 8 || nal[0] & 0x1f != 6 || nal[1] != 5 || nal[2] != 24 {
        return None;
    }
    if nal[3..19] != SEI_UUID {
        return None;
    }
    Some(
        nal[19..27]
            .iter()
            .fold(0, |id, b| (id << 7) | u64::from(b & 0x7f)),
    )
}

/// The frame id carried by an H.264 RTP payload (a single SEI NAL unit or
/// a STAP-A holding one), if any.
pub fn frame_id(payload: &[u8]) -> Option<u64> {
    match payload.first()? & 0x1f {
        6 => parse_sei(payload),
        24 => {
            let mut i = 1;
            while i + 2 < payload.len() {
                let size = usize::from(u16::from_be_bytes([payload[i], payload[i + 1]]));
                let nal = payload.get(i + 2..i + 2 + size)?;
                if let Some(id) = parse_sei(nal) {
                    return Some(id);
                }
                i += 2 + size;
            }
            None
        }
        _ => None,
    }
}

fn rtp(pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + payload.len());
    p.push(0x80);
    p.push(pt | if marker { 0x80 } else { 0 });
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// Where one relay takes the stream.
#[derive(Debug, Clone, Copy)]
pub struct Destination {
    pub video: SocketAddr,
    pub audio: SocketAddr,
}

/// Send instants shared with the viewers, and counters.
pub struct Sent {
    base: Instant,
    /// Per ring slot: the frame id stored, then per destination the
    /// nanoseconds since `base` at which its last packet left.
    ids: Vec<AtomicU64>,
    at: Vec<Vec<AtomicU64>>,
    pub frames: AtomicU64,
    pub packets: AtomicU64,
    pub send_errors: AtomicU64,
    /// Frames sent later than their slot by more than one frame interval.
    pub late: AtomicU64,
    /// Frames from one IDR to the next (the clip's loop holds a whole
    /// number of them).
    gop: u64,
}

impl Sent {
    fn new(destinations: usize, gop: usize) -> Self {
        Sent {
            gop: gop.max(1) as u64,
            base: Instant::now(),
            ids: (0..RING).map(|_| AtomicU64::new(u64::MAX)).collect(),
            at: (0..destinations)
                .map(|_| (0..RING).map(|_| AtomicU64::new(0)).collect())
                .collect(),
            frames: AtomicU64::new(0),
            packets: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            late: AtomicU64::new(0),
        }
    }

    /// Whether frame `id` is an IDR.
    pub fn is_keyframe(&self, id: u64) -> bool {
        id.is_multiple_of(self.gop)
    }

    /// When frame `id` left for destination `dest`, if still remembered.
    pub fn sent_at(&self, dest: usize, id: u64) -> Option<Instant> {
        let slot = (id as usize) % RING;
        // The instants are written before the id (Release), so a matching id
        // means they are complete.
        if self.ids[slot].load(Ordering::Acquire) != id {
            return None;
        }
        let ns = self.at.get(dest)?[slot].load(Ordering::Relaxed);
        Some(self.base + Duration::from_nanos(ns))
    }
}

/// The running producer; stops on drop.
pub struct Producer {
    pub sent: Arc<Sent>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Producer {
    pub fn start(clip: Arc<Clip>, destinations: Vec<Destination>) -> anyhow::Result<Producer> {
        let sock = UdpSocket::bind("127.0.0.1:0").context("producer socket")?;
        let sent = Arc::new(Sent::new(destinations.len(), clip.spec.gop));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (sent.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("bench-producer".into())
            .spawn(move || run(&clip, &destinations, &sock, &s, &st))
            .context("producer thread")?;
        Ok(Producer {
            sent,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(clip: &Clip, dests: &[Destination], sock: &UdpSocket, sent: &Sent, stop: &AtomicBool) {
    let fps = u64::from(clip.spec.fps);
    let frame_ts = 90_000 / clip.spec.fps;
    let (vssrc, assrc) = (0x5eed_0001_u32, 0x5eed_0002_u32);
    let (mut vseq, mut aseq) = (0u16, 0u16);
    let start = Instant::now();
    let mut next_audio = 0u64;
    let packet = |pkt: &[u8], to: SocketAddr| {
        if sock.send_to(pkt, to).is_err() {
            sent.send_errors.fetch_add(1, Ordering::Relaxed);
        }
        sent.packets.fetch_add(1, Ordering::Relaxed);
    };
    for id in 0u64.. {
        let due = start + Duration::from_nanos(id * 1_000_000_000 / fps);
        // Audio packets due before this frame, every 20 ms.
        loop {
            let adue = start + Duration::from_millis(next_audio * 20);
            if adue > due {
                break;
            }
            sleep_until(adue);
            let pkt = rtp(
                AUDIO_PT,
                false,
                aseq,
                (next_audio * 960) as u32,
                assrc,
                &OPUS_SILENCE,
            );
            aseq = aseq.wrapping_add(1);
            next_audio += 1;
            for d in dests {
                packet(&pkt, d.audio);
            }
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        sleep_until(due);
        if Instant::now() > due + Duration::from_nanos(1_000_000_000 / fps) {
            sent.late.fetch_add(1, Ordering::Relaxed);
        }
        let f = &clip.frames[(id as usize) % clip.frames.len()];
        let ts = (id as u32).wrapping_mul(frame_ts);
        let sei = sei(id);
        let mut pkts = Vec::with_capacity(f.payloads.len() + 1);
        let n = f.payloads.len();
        for (k, p) in f.payloads.iter().enumerate() {
            if k == f.sei_at {
                pkts.push(rtp(VIDEO_PT, false, vseq, ts, vssrc, &sei));
                vseq = vseq.wrapping_add(1);
            }
            pkts.push(rtp(VIDEO_PT, k + 1 == n, vseq, ts, vssrc, p));
            vseq = vseq.wrapping_add(1);
        }
        let slot = (id as usize) % RING;
        // Alternate which relay gets each burst first.
        let order: Vec<usize> = if id % 2 == 0 {
            (0..dests.len()).collect()
        } else {
            (0..dests.len()).rev().collect()
        };
        let frame_start = Instant::now();
        let chunks = pkts.len().div_ceil(BURST);
        for (k, chunk) in pkts.chunks(BURST).enumerate() {
            sleep_until(frame_start + BURST_GAP * k as u32);
            for &d in &order {
                for p in chunk {
                    packet(p, dests[d].video);
                }
                if k + 1 == chunks {
                    let ns = sent.base.elapsed().as_nanos() as u64;
                    sent.at[d][slot].store(ns, Ordering::Relaxed);
                }
            }
        }
        sent.ids[slot].store(id, Ordering::Release);
        sent.frames.fetch_add(1, Ordering::Relaxed);
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_ids_survive_single_nal_and_stap_a_payloads() {
        for id in [0, 1, 127, 128, 1 << 40, (1 << 56) - 1] {
            let nal = sei(id);
            assert!(!nal.contains(&0), "{nal:?}");
            assert_eq!(frame_id(&nal), Some(id));
            let mut stap = vec![24u8, 0, 2, 0x67, 0x42];
            stap.extend_from_slice(&(nal.len() as u16).to_be_bytes());
            stap.extend_from_slice(&nal);
            assert_eq!(frame_id(&stap), Some(id));
        }
        assert_eq!(frame_id(&[0x65, 0x88]), None);
        assert_eq!(frame_id(&[0x06, 0x05, 0x10, 1, 2]), None);
    }
}
