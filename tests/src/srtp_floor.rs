//! The SRTP floor: how many RTP packets one core encrypts per second with
//! the SRTP code of this build. A viewer can never cost less than
//! encrypting its packets, so the relay's CPU per viewer is quoted as a
//! multiple of this. Two sealers are measured: the worker's own, which
//! writes each packet into a buffer and seals it there
//! (`worker::srtp_out::srtp`, what the worker's one-port path uses), and
//! webrtc-rs's (`webrtc::srtp` 0.17, `Context::encrypt_rtp`, what a track
//! or the SRTCP of a viewer uses). The headline floor is the faster one,
//! the worker's own.
//!
//! Which profile a viewer uses is decided in the DTLS handshake. The worker
//! offers (`a=setup:actpass`), so the viewer answers as the DTLS client and
//! the worker, as server, takes the first profile of the *client's* list
//! that it supports (`dtls` 0.17, `flight0`). webrtc-rs clients list
//! `AEAD_AES_128_GCM` first (`webrtc::dtls_transport::default_srtp_protection_profiles`),
//! so the bench's webrtc-rs viewers get GCM. Chrome lists
//! `AES_CM_128_HMAC_SHA1_80` first and its GCM suites after it
//! (libwebrtc `CryptoOptions::GetSupportedDtlsSrtpCryptoSuites`: "GCM
//! cipher suites are not the top choice since they increase the packet
//! size"), so browsers get AES-CM with HMAC-SHA1-80 (Chromium's `getStats()`
//! against the worker reports `srtpCipher: SRTP_AES128_CM_HMAC_SHA1_80`).
//! Both are measured.

use std::time::{Duration, Instant};

use webrtc::srtp::context::Context;
use webrtc::srtp::protection_profile::ProtectionProfile;
use worker::srtp_out::srtp::RtpSealer;

/// The two profiles viewers negotiate with the worker.
pub const PROFILES: [ProtectionProfile; 2] = [
    ProtectionProfile::AeadAes128Gcm,
    ProtectionProfile::Aes128CmHmacSha1_80,
];

/// Which SRTP code seals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealer {
    /// `worker::srtp_out::srtp`: the packet is written into a buffer (as into
    /// the worker's outbox) and sealed there.
    InPlace,
    /// webrtc-srtp's `Context::encrypt_rtp` on the marshalled packet
    /// (header parse, encrypt, tag, a new buffer per packet).
    WebrtcSrtp,
}

impl Sealer {
    pub const ALL: [Sealer; 2] = [Sealer::InPlace, Sealer::WebrtcSrtp];

    pub fn name(self) -> &'static str {
        match self {
            Sealer::InPlace => "in place (worker::srtp_out::srtp)",
            Sealer::WebrtcSrtp => "webrtc-srtp 0.17 Context",
        }
    }
}

/// A packet like the worker's writer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// H.264 FU-A fragment filling webrtc-rs's outbound RTP MTU: 1200
    /// bytes of RTP (12-byte header, FU indicator and header, 1186 bytes
    /// of slice).
    VideoFuA,
    /// Opus: 12-byte header and a 100-byte frame (20 ms at ~40 kbit/s).
    Opus,
}

impl PacketKind {
    pub fn rtp_len(self) -> usize {
        match self {
            PacketKind::VideoFuA => 1200,
            PacketKind::Opus => 112,
        }
    }

    fn payload_type(self) -> u8 {
        match self {
            PacketKind::VideoFuA => 102,
            PacketKind::Opus => 111,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PacketKind::VideoFuA => "H.264 FU-A, 1200-byte RTP",
            PacketKind::Opus => "Opus, 112-byte RTP",
        }
    }
}

/// One sealer, profile and packet size, encrypted on one thread.
#[derive(Debug, Clone)]
pub struct FloorCase {
    pub sealer: Sealer,
    pub profile: ProtectionProfile,
    pub kind: PacketKind,
    pub packets: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// CPU time of the measuring thread over the run (None when the run
    /// was too short for the kernel's 10 ms tick, or not on Linux).
    pub cpu: Option<Duration>,
    /// Per second of the thread's CPU time when known, so other load on
    /// the machine does not lower the figure; else per wall second.
    pub packets_per_sec: f64,
    /// SRTP bytes out (RTP plus the auth tag), in Mbit/s.
    pub mbit_per_sec: f64,
    /// The first and last packets of the run decrypt to what was sent with
    /// a receiver's context, and their payload was not sent in clear.
    pub round_trip_ok: bool,
}

/// The floor on this machine.
#[derive(Debug, Clone)]
pub struct SrtpFloor {
    /// The headline case: the faster sealer (the worker's own), the
    /// profile the bench's webrtc-rs viewers negotiate (AEAD_AES_128_GCM),
    /// 1200-byte video packets.
    pub sealer: Sealer,
    pub profile: ProtectionProfile,
    pub packets_per_sec: f64,
    pub mbit_per_sec: f64,
    /// Whether the CPU advertises AES-NI (`aes` in /proc/cpuinfo); the
    /// RustCrypto `aes` crate detects and uses it at run time.
    pub aes_ni: bool,
    /// Every sealer × profile × packet kind.
    pub cases: Vec<FloorCase>,
}

impl SrtpFloor {
    pub fn case(
        &self,
        sealer: Sealer,
        profile: ProtectionProfile,
        kind: PacketKind,
    ) -> Option<&FloorCase> {
        self.cases
            .iter()
            .find(|c| c.sealer == sealer && c.profile as u8 == profile as u8 && c.kind == kind)
    }

    /// Cores one viewer needs, at the headline sealer's floor, for a stream
    /// of `video_kbps` of H.264 (sent as 1200-byte packets) plus Opus at 50
    /// packets/s.
    pub fn cores_per_viewer(&self, profile: ProtectionProfile, video_kbps: f64) -> Option<f64> {
        let v = self.case(self.sealer, profile, PacketKind::VideoFuA)?;
        let a = self.case(self.sealer, profile, PacketKind::Opus)?;
        let video_pps = video_kbps * 1000.0 / 8.0 / PacketKind::VideoFuA.rtp_len() as f64;
        Some(video_pps / v.packets_per_sec + 50.0 / a.packets_per_sec)
    }
}

pub fn profile_name(p: ProtectionProfile) -> &'static str {
    match p {
        ProtectionProfile::Aes128CmHmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
        ProtectionProfile::Aes128CmHmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        ProtectionProfile::Aes256CmHmacSha1_80 => "AES_CM_256_HMAC_SHA1_80",
        ProtectionProfile::Aes256CmHmacSha1_32 => "AES_CM_256_HMAC_SHA1_32",
        ProtectionProfile::AeadAes128Gcm => "AEAD_AES_128_GCM",
        ProtectionProfile::AeadAes256Gcm => "AEAD_AES_256_GCM",
    }
}

pub fn cpu_has_aes_ni() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| {
            s.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "aes"))
        })
        .unwrap_or(false)
}

/// Measures every sealer × profile × packet kind for `per_case` each
/// (eight cases, so the call takes about eight times `per_case`).
pub fn measure(per_case: Duration) -> SrtpFloor {
    let mut cases = Vec::new();
    for sealer in Sealer::ALL {
        for profile in PROFILES {
            for kind in [PacketKind::VideoFuA, PacketKind::Opus] {
                cases.push(measure_case(sealer, profile, kind, per_case));
            }
        }
    }
    let head = cases[0].clone();
    SrtpFloor {
        sealer: head.sealer,
        profile: head.profile,
        packets_per_sec: head.packets_per_sec,
        mbit_per_sec: head.mbit_per_sec,
        aes_ni: cpu_has_aes_ni(),
        cases,
    }
}

fn keys(profile: ProtectionProfile) -> (Vec<u8>, Vec<u8>) {
    // A benchmark key: fixed, distinct bytes of the profile's lengths.
    let key = (0..profile.key_len() as u8)
        .map(|i| i.wrapping_mul(7) ^ 0x5a)
        .collect();
    let salt = (0..profile.salt_len() as u8)
        .map(|i| i.wrapping_mul(13) ^ 0xa5)
        .collect();
    (key, salt)
}

fn context(profile: ProtectionProfile) -> Context {
    let (key, salt) = keys(profile);
    Context::new(&key, &salt, profile, None, None).expect("valid SRTP key and salt lengths")
}

/// A marshalled RTP packet (version 2, no extension) of `kind`'s size.
fn packet(kind: PacketKind, seq: u16, timestamp: u32) -> Vec<u8> {
    let mut p = vec![0u8; kind.rtp_len()];
    p[0] = 0x80;
    p[1] = kind.payload_type();
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&timestamp.to_be_bytes());
    p[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    match kind {
        PacketKind::VideoFuA => {
            p[12] = 0x7c; // FU indicator: NRI 3, type 28 (FU-A)
            p[13] = 0x05; // FU header: middle fragment of an IDR slice
        }
        PacketKind::Opus => p[12] = 0x78,
    }
    for (i, b) in p.iter_mut().enumerate().skip(14) {
        *b = (i as u8).wrapping_mul(31);
    }
    p
}

fn set_seq(p: &mut [u8], seq: u16) {
    p[2..4].copy_from_slice(&seq.to_be_bytes());
}

/// Encrypts `kind` packets with `profile` on this thread for `duration`:
/// with [`Sealer::WebrtcSrtp`] the way `webrtc::srtp::session::Session::write`
/// does, with [`Sealer::InPlace`] the way the worker's outbox does (the
/// packet copied into a reused buffer, sealed there).
pub fn measure_case(
    sealer: Sealer,
    profile: ProtectionProfile,
    kind: PacketKind,
    duration: Duration,
) -> FloorCase {
    let mut tx = context(profile);
    let (key, salt) = keys(profile);
    let in_place = RtpSealer::new(profile, &key, &salt)
        .expect("valid SRTP key and salt lengths")
        .filter(|_| sealer == Sealer::InPlace);
    let mut wire = Vec::with_capacity(1500);
    let mut last = bytes::Bytes::new();
    let mut buf = packet(kind, 0, 0);
    let first_plain = buf.clone();
    let mut first_sealed: Option<Vec<u8>> = None;
    let mut seq: u16 = 0;
    let mut packets: u64 = 0;
    let mut bytes_out: u64 = 0;
    let cpu_start = thread_cpu();
    let start = Instant::now();
    let mut elapsed = Duration::ZERO;
    // Check the clock every 256 packets so it costs nothing measurable.
    while elapsed < duration {
        for _ in 0..256 {
            set_seq(&mut buf, seq);
            let sealed: &[u8] = match &in_place {
                Some(s) => {
                    wire.clear();
                    wire.extend_from_slice(&buf);
                    // Below one rollover (as the context, renewed below).
                    s.seal(&mut wire, 0, 12, 0);
                    &wire
                }
                None => {
                    last = tx.encrypt_rtp(&buf).expect("encrypt");
                    &last
                }
            };
            bytes_out += sealed.len() as u64;
            if packets == 0 {
                first_sealed = Some(sealed.to_vec());
            }
            std::hint::black_box(sealed);
            packets += 1;
            seq = seq.wrapping_add(1);
            if seq == 0 {
                // Stay below one rollover so the receiver check is simple.
                tx = context(profile);
            }
        }
        elapsed = start.elapsed();
    }
    let cpu = match (cpu_start, thread_cpu()) {
        (Some(a), Some(b)) if b.saturating_sub(a) >= Duration::from_millis(200) => Some(b - a),
        _ => None,
    };
    set_seq(&mut buf, seq.wrapping_sub(1));
    let last_sealed: &[u8] = if in_place.is_some() { &wire } else { &last };
    let round_trip_ok = first_sealed
        .map(|s| decrypts_to(profile, &[(&s, &first_plain), (last_sealed, &buf)]))
        .unwrap_or(false);
    let secs = cpu.unwrap_or(elapsed).as_secs_f64();
    FloorCase {
        sealer,
        profile,
        kind,
        packets,
        elapsed,
        cpu,
        packets_per_sec: packets as f64 / secs,
        mbit_per_sec: bytes_out as f64 * 8.0 / secs / 1e6,
        round_trip_ok,
    }
}

/// utime + stime of the calling thread (Linux, 10 ms ticks).
pub(crate) fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let (_, user, system) = crate::proc_stat_cpu(&stat)?;
    Some(Duration::from_millis((user + system) * 10))
}

/// A receiver's context decrypts each sealed packet (in order) to its
/// plaintext, and the sealed payload differs from the plaintext's.
fn decrypts_to(profile: ProtectionProfile, pairs: &[(&[u8], &[u8])]) -> bool {
    let mut rx = context(profile);
    pairs.iter().all(|(sealed, plain)| {
        let hidden = sealed.len() > plain.len() && sealed[12..plain.len()] != plain[12..];
        let opened = rx.decrypt_rtp(sealed).map(|b| b.to_vec());
        hidden && opened.as_deref().ok() == Some(*plain)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_encrypts_packets_a_receiver_decrypts_for_both_sealers_and_profiles() {
        let floor = measure(Duration::from_millis(50));
        assert_eq!(floor.cases.len(), 8);
        for c in &floor.cases {
            assert!(c.packets >= 256, "{c:?}");
            assert!(
                c.packets_per_sec.is_finite() && c.packets_per_sec > 0.0,
                "{c:?}"
            );
            assert!(c.mbit_per_sec.is_finite() && c.mbit_per_sec > 0.0, "{c:?}");
            assert!(c.round_trip_ok, "{c:?}");
            // Bytes out per packet: the RTP packet plus the profile's tag.
            let tag = match c.profile {
                ProtectionProfile::AeadAes128Gcm => 16,
                _ => 10,
            };
            let per_packet = c.mbit_per_sec * 1e6 / 8.0 / c.packets_per_sec;
            assert!(
                (per_packet - (c.kind.rtp_len() + tag) as f64).abs() < 0.5,
                "{c:?}"
            );
        }
        assert_eq!(floor.profile as u8, ProtectionProfile::AeadAes128Gcm as u8);
        assert_eq!(floor.sealer, Sealer::InPlace);
        let cores = floor
            .cores_per_viewer(ProtectionProfile::Aes128CmHmacSha1_80, 4000.0)
            .unwrap();
        assert!(cores.is_finite() && cores > 0.0);
    }

    #[test]
    fn a_receiver_with_another_key_rejects_the_packets() {
        let mut tx = context(ProtectionProfile::AeadAes128Gcm);
        let sealed = tx.encrypt_rtp(&packet(PacketKind::Opus, 1, 0)).unwrap();
        let mut other = Context::new(
            &[9u8; 16],
            &[9u8; 12],
            ProtectionProfile::AeadAes128Gcm,
            None,
            None,
        )
        .unwrap();
        assert!(other.decrypt_rtp(&sealed).is_err());
    }
}
