//! The load client of section 6: N webrtc-rs viewers sharing one API, each
//! reading RTP from its video track and recording what it needs: packets,
//! bytes, sequence gaps, the frame ids of the bench's SEI messages with their
//! arrival instants, and the first keyframe.
//!
//! Kept cheap: no interceptors (no NACK, no receiver reports: loss is counted,
//! not repaired, the same for both relays), one reused read buffer per track,
//! no allocation per packet beyond webrtc-rs's own, and delays computed after
//! the measuring window rather than on the receive path.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use system_tests::viewer::{self, Interceptors};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::API;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice::udp_network::UDPNetwork;
use webrtc::peer_connection::RTCPeerConnection;

use super::gro_mux::GroMux;
use super::producer::frame_id;
use super::starts_keyframe;

/// One API for every viewer of the load client; with `gro`, each viewer's
/// socket takes UDP receive offload ([`GroMux`]).
pub fn api(gro: bool) -> anyhow::Result<API> {
    let mut se = SettingEngine::default();
    if gro {
        se.set_udp_network(UDPNetwork::Muxed(GroMux::new()));
    }
    se.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    // IPv4 host candidates only: Janus gathers no IPv6 by default, and
    // fewer candidate pairs make joins cheaper for both relays.
    se.set_network_types(vec![NetworkType::Udp4]);
    viewer::api(Interceptors::None, se)
}

/// What one viewer received. Written by its track reader only.
#[derive(Default)]
pub struct Rx {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// Packets missing from the sequence (gaps; reordering counts as loss).
    pub lost: AtomicU64,
    /// Frames whose id was seen.
    pub frames: AtomicU64,
    pub audio_packets: AtomicU64,
    /// From the join request to the first video packet, and to the first
    /// packet starting a keyframe.
    pub first_packet: OnceLock<Duration>,
    pub first_key: OnceLock<Duration>,
    /// Every frame seen while recording.
    pub arrivals: Mutex<Vec<Arrival>>,
    /// The SSRC of the video stream, from its first packet.
    pub video_ssrc: OnceLock<u32>,
}

/// One frame at one viewer.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// The bench's frame id (from the SEI message).
    pub id: u64,
    /// The frame's RTP timestamp as this viewer received it.
    pub rtp_ts: u32,
    /// When its last packet (marker) was read.
    pub at: Instant,
    /// Whether every packet from the one carrying the id to the last arrived.
    pub whole: bool,
}

/// Whether viewers keep arrival samples (only inside a measuring window).
pub static RECORDING: AtomicBool = AtomicBool::new(false);

/// A connected viewer of either relay.
pub struct LoadViewer {
    pub pc: Arc<RTCPeerConnection>,
    pub rx: Arc<Rx>,
    /// Relay-specific handle to leave with (ours: peer id; Janus: session).
    pub leave: Leave,
}

pub enum Leave {
    Ours(viewer::Viewer),
    Janus { session: u64 },
}

/// A peer connection for one viewer whose track readers fill `rx`;
/// `t0` is the join request, for the first-keyframe time.
pub async fn peer(api: &API, t0: Instant) -> anyhow::Result<(Arc<RTCPeerConnection>, Arc<Rx>)> {
    let pc = viewer::peer(api).await?;
    let rx = Arc::new(Rx::default());
    let r = rx.clone();
    viewer::on_tracks(&pc, move |track, video| {
        let rx = r.clone();
        async move {
            let mut buf = vec![0u8; 1500];
            let mut last_seq: Option<u16> = None;
            // The frame being received and whether it is still whole.
            let mut current: Option<(u64, bool)> = None;
            while let Ok((pkt, _)) = track.read(&mut buf).await {
                if !video {
                    rx.audio_packets.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let seq = pkt.header.sequence_number;
                if let Some(prev) = last_seq {
                    let gap = seq.wrapping_sub(prev);
                    if (2..0x8000).contains(&gap) {
                        rx.lost.fetch_add(u64::from(gap - 1), Ordering::Relaxed);
                        if let Some((_, whole)) = current.as_mut() {
                            *whole = false;
                        }
                    }
                }
                if last_seq.is_none() {
                    let _ = rx.first_packet.set(t0.elapsed());
                    let _ = rx.video_ssrc.set(pkt.header.ssrc);
                }
                last_seq = Some(seq);
                rx.packets.fetch_add(1, Ordering::Relaxed);
                rx.bytes
                    .fetch_add(pkt.payload.len() as u64, Ordering::Relaxed);
                if let Some(id) = frame_id(&pkt.payload) {
                    current = Some((id, true));
                    rx.frames.fetch_add(1, Ordering::Relaxed);
                }
                if rx.first_key.get().is_none() && starts_keyframe(&pkt.payload) {
                    let _ = rx.first_key.set(t0.elapsed());
                }
                if pkt.header.marker {
                    if let Some((id, whole)) = current.take() {
                        if RECORDING.load(Ordering::Relaxed) {
                            let now = Instant::now();
                            rx.arrivals
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .push(Arrival {
                                    id,
                                    rtp_ts: pkt.header.timestamp,
                                    at: now,
                                    whole,
                                });
                        }
                    }
                }
            }
        }
    });
    Ok((pc, rx))
}

/// Answers an offer with every host candidate in the answer (no trickle).
pub use system_tests::viewer::answer;
