//! WebRTC for viewers, on webrtc-rs 0.17 (see docs/decisions.md).
//!
//! One [`Engine`] per worker holds the webrtc `API` (codecs, interceptors,
//! ICE settings: NAT 1:1 IPs, one UDP port or a port range, mDNS). Each
//! viewer is a [`Viewer`]: one RTCPeerConnection with its own H.264 and
//! Opus tracks and an `input` data channel. The source encodes once; each
//! viewer's writer task reads the shared broadcast and packetizes for its
//! own peer, so a slow viewer only lags itself: when it falls behind the
//! broadcast's bound it skips to the next keyframe.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bus_schema::{Candidate, IceServer, InputEvent, PeerId, Role, WireError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use webrtc::api::interceptor_registry::configure_rtcp_reports;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_H264, MIME_TYPE_OPUS};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{APIBuilder, API};
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::dtls_transport::dtls_transport_state::RTCDtlsTransportState;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice::udp_mux::{UDPMuxDefault, UDPMuxParams};
use webrtc::ice::udp_network::{EphemeralUDP, UDPNetwork};
use webrtc::ice_transport::ice_candidate::{RTCIceCandidate, RTCIceCandidateInit};
use webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType,
};
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::rtp_transceiver::{RTCPFeedback, RTCRtpSendParameters};
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;
use webrtc::track::track_local::TrackLocal;

use crate::fanout::{
    random_u32, write_tracks, FanoutHandle, FanoutThreads, PayloadCache, SendGate, Sink, TrackSink,
    TRACK_QUEUE,
};
use crate::source::SourceTap;
use crate::srtp_out::{self, OutStream, SrtpOut};
use crate::udp::{BatchedUdp, SendCounters, UdpQueue};

/// ICE candidates one peer may give the worker, trickled or in its answer.
/// A browser sends a handful (one or two per interface and server); more
/// would only make the ICE agent probe addresses for nothing.
pub const MAX_CANDIDATES_PER_PEER: usize = 64;

/// Input messages one viewer may send per second, sustained, with bursts of
/// as many. A page sends one per input event (mouse moves come at the
/// display's frame rate, gamepads once a frame); beyond this the messages
/// are dropped unread and counted as refused.
pub const MAX_INPUT_PER_SEC: u32 = 500;

/// How long closing a viewer waits for its ICE gathering to finish.
const GATHER_BEFORE_CLOSE: Duration = Duration::from_secs(2);

/// How often dropped input is reported to the session while a flood lasts.
const DROP_REPORT_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum RtcError {
    #[error("webrtc: {0}")]
    WebRtc(#[from] webrtc::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The peer is over one of its limits.
    #[error("{0}")]
    Limit(String),
}

impl RtcError {
    /// The error for a viewer's signal that was refused: `too_large` for a
    /// limit, `invalid_request` for what the peer connection refused.
    pub fn to_wire(&self, what: &str) -> WireError {
        let code = match self {
            RtcError::Limit(_) => bus_schema::ErrorCode::TooLarge,
            _ => bus_schema::ErrorCode::InvalidRequest,
        };
        WireError::new(code, format!("{what}: {self}"))
    }
}

/// A token bucket: `rate` messages a second, bursts of up to `rate`.
/// Pure: time is an argument.
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: f64,
    tokens: f64,
    last: std::time::Instant,
}

impl RateLimit {
    pub fn new(rate: u32, now: std::time::Instant) -> Self {
        Self {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn allow(&mut self, now: std::time::Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Input messages a viewer sent over its limit and that are not yet
/// reported to the session. Reported at most every [`DROP_REPORT_EVERY`]
/// during a flood, and at once with the next admitted message, so the
/// session's `input_refused` ends up counting every one of them.
struct Dropped {
    pending: u64,
    reported_at: std::time::Instant,
}

impl Dropped {
    /// Hands the pending count to the session if the queue has room.
    fn flush(
        &mut self,
        peer: &PeerId,
        events: &mpsc::Sender<ViewerEvent>,
        now: std::time::Instant,
    ) {
        if self.pending > 0
            && events
                .try_send(ViewerEvent::RateLimited(peer.clone(), self.pending))
                .is_ok()
        {
            self.pending = 0;
            self.reported_at = now;
        }
    }
}

/// ICE settings from the worker's config.
#[derive(Debug, Clone, Default)]
pub struct RtcSettings {
    pub ice_servers: Vec<IceServer>,
    /// Public IPs to advertise for host candidates (NAT 1:1).
    pub nat_1to1_ips: Vec<String>,
    /// One UDP port for every peer connection (UDP mux).
    pub udp_port: Option<u16>,
    /// Or a range of UDP ports.
    pub udp_port_range: Option<(u16, u16)>,
    /// Sender threads of the one port (`crate::udp`); 0 is taken as 1.
    pub udp_send_threads: usize,
    /// Viewers from which a fan-out holds RTP video back
    /// (`crate::fanout::HOLD_FROM`); 0: never.
    pub fanout_hold_from: usize,
    /// Threads the sessions' fan-outs run on (`crate::fanout::FanoutThreads`,
    /// one UDP port only); 0 is taken as 1.
    pub fanout_threads: usize,
}

/// What a viewer's callbacks tell its session.
#[derive(Debug)]
pub enum ViewerEvent {
    Candidate(PeerId, Candidate),
    Input(PeerId, Vec<InputEvent>),
    BadInput(PeerId, WireError),
    /// This many input messages were over the viewer's rate limit and dropped.
    RateLimited(PeerId, u64),
    State(PeerId, RTCPeerConnectionState),
}

pub struct Engine {
    api: API,
    ice_servers: Vec<IceServer>,
    video_payloads: Arc<PayloadCache>,
    udp_counters: Option<Arc<SendCounters>>,
    /// With one UDP port: its send queue, for viewers' media sent by the
    /// worker itself (`crate::srtp_out`).
    port: Option<UdpQueue>,
    /// With one UDP port: where the sessions' fan-outs run.
    fanout_threads: Option<FanoutThreads>,
    fanout_hold_from: usize,
}

/// The IPv4 address the host routes outbound traffic from: the one host
/// candidate on the UDP mux (see `Engine::new`). A connected UDP socket
/// only looks up the route; nothing is sent.
fn mux_ip() -> Option<std::net::IpAddr> {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    probe.connect("192.0.2.1:9").ok()?;
    let ip = probe.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}

fn h264() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: MIME_TYPE_H264.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
            .to_owned(),
        rtcp_feedback: vec![
            RTCPFeedback {
                typ: "goog-remb".into(),
                parameter: String::new(),
            },
            RTCPFeedback {
                typ: "ccm".into(),
                parameter: "fir".into(),
            },
            RTCPFeedback {
                typ: "nack".into(),
                parameter: String::new(),
            },
            RTCPFeedback {
                typ: "nack".into(),
                parameter: "pli".into(),
            },
        ],
    }
}

fn opus() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// Silence after which a viewer's ICE goes disconnected.
pub const ICE_DISCONNECTED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// Further silence after which it goes failed (the viewer is released).
pub const ICE_FAILED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How often ICE sends a keepalive when nothing else flows.
pub const ICE_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl Engine {
    pub async fn new(settings: &RtcSettings) -> Result<Self, RtcError> {
        let mut media = MediaEngine::default();
        media.register_codec(
            RTCRtpCodecParameters {
                capability: h264(),
                payload_type: 102,
                ..Default::default()
            },
            RTPCodecType::Video,
        )?;
        media.register_codec(
            RTCRtpCodecParameters {
                capability: opus(),
                payload_type: 111,
                ..Default::default()
            },
            RTPCodecType::Audio,
        )?;
        let mut se = SettingEngine::default();
        if !settings.nat_1to1_ips.is_empty() {
            se.set_nat_1to1_ips(settings.nat_1to1_ips.clone(), RTCIceCandidateType::Host);
        }
        let mut udp_counters = None;
        let mut one_port = None;
        let mut fanout_threads = None;
        if let Some(port) = settings.udp_port {
            // One port for every peer: the worker owns the socket and
            // batches its sends (crate::udp), and sends viewers'
            // media itself (crate::srtp_out).
            let sock = BatchedUdp::new(
                std::net::UdpSocket::bind(("0.0.0.0", port))?,
                settings.udp_send_threads,
            )?;
            udp_counters = Some(sock.counters());
            one_port = Some(sock.queue());
            fanout_threads = Some(FanoutThreads::start(settings.fanout_threads)?);
            se.set_udp_network(UDPNetwork::Muxed(UDPMuxDefault::new(UDPMuxParams::new(
                sock,
            ))));
            // webrtc-rs 0.17 gives every host candidate of a peer the same
            // mux connection and runs a reader per candidate on it, so with
            // two candidates (an IPv6 address beside the IPv4 one, or two
            // interfaces) each steals half the other's packets: ICE checks
            // are discarded and DTLS flights lost, and a viewer took 10 s
            // or more to connect. The socket is IPv4: one IPv4 address,
            // the one the host routes from.
            se.set_network_types(vec![NetworkType::Udp4]);
            if let Some(ip) = mux_ip() {
                se.set_ip_filter(Box::new(move |candidate| candidate == ip));
            }
        } else if let Some((lo, hi)) = settings.udp_port_range {
            let range = EphemeralUDP::new(lo, hi).map_err(|e| RtcError::WebRtc(e.into()))?;
            se.set_udp_network(UDPNetwork::Ephemeral(range));
        }
        // Browsers hide host addresses behind mDNS names. The worker does
        // not resolve them: its viewers' checks reach it from their real
        // addresses, which it takes as peer-reflexive candidates and
        // nominates at once (below), so resolving added nothing but an
        // mDNS socket, task and 65 KB buffer per viewer (webrtc-rs starts
        // one per peer to resolve), each reading every mDNS packet on the
        // LAN. mDNS candidates are left out before webrtc-rs sees them
        // ([`without_mdns_candidates`], [`is_mdns_candidate`]).
        se.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
        // The worker offers, so its ICE agent is the controlling one and
        // nominates the pair. A viewer's checks often reach it before the
        // viewer's candidates do (those go through the api and NATS; a
        // browser behind a NAT, or hiding its host address behind an mDNS
        // name the worker cannot resolve, has none that match), so the
        // worker first knows the viewer as a peer-reflexive candidate.
        // webrtc-rs holds such a pair back until 1 s after ICE started
        // (500 ms for server-reflexive), waiting for a better one. The
        // worker's own candidates are host addresses (one, on the one
        // port), so a pair the viewer's checks came through is as good a
        // path as any: it nominates at once (bench section 7, 7e).
        se.set_prflx_acceptance_min_wait(Some(Duration::ZERO));
        se.set_srflx_acceptance_min_wait(Some(Duration::ZERO));
        // A viewer that vanished without `leave` (its api restarted, its
        // page was killed) goes disconnected after 3 s of silence and
        // failed 5 s later, and the session then releases it; the defaults
        // (5 s + 25 s) held it about half a minute. Keepalives every second
        // keep a quiet but live connection well inside those bounds.
        se.set_ice_timeouts(
            Some(ICE_DISCONNECTED_TIMEOUT),
            Some(ICE_FAILED_TIMEOUT),
            Some(ICE_KEEPALIVE_INTERVAL),
        );
        // The worker only sends. On its own media path (one port) it numbers,
        // retransmits and reports itself, so webrtc-rs gets no interceptor.
        // Otherwise: a NACK responder (with a history of 1024 packets, about
        // 3 s of 720p video, instead of the default 8192 that cost ~10 MiB
        // per viewer) and sender/receiver reports.
        let mut registry = Registry::new();
        if one_port.is_none() {
            registry.add(Box::new(
                webrtc::interceptor::nack::responder::Responder::builder().with_log2_size(10),
            ));
            registry = configure_rtcp_reports(registry);
        }
        let api = APIBuilder::new()
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(se)
            .build();
        Ok(Self {
            api,
            ice_servers: settings.ice_servers.clone(),
            video_payloads: Arc::default(),
            udp_counters,
            port: one_port,
            fanout_threads,
            fanout_hold_from: settings.fanout_hold_from,
        })
    }

    /// What the batched UDP port has sent (with `udp_port` only).
    pub fn udp_counters(&self) -> Option<Arc<SendCounters>> {
        self.udp_counters.clone()
    }

    /// How many threads send on the batched UDP port (with `udp_port` only).
    pub fn udp_send_threads(&self) -> Option<usize> {
        self.port.as_ref().map(UdpQueue::lanes)
    }

    pub fn ice_servers(&self) -> &[IceServer] {
        &self.ice_servers
    }

    /// A session's fan-out (`crate::fanout`): with one UDP port on one of
    /// the fan-out threads, its viewers' media sealed by the worker itself;
    /// otherwise on this runtime, its viewers' media written to their
    /// webrtc-rs tracks.
    pub fn fanout(&self, tap: SourceTap, gate: SendGate) -> FanoutHandle {
        let slot = self.fanout_threads.as_ref().map(FanoutThreads::next);
        // Holding video back pays only for GSO sends on the one port.
        let hold_from = match self.port {
            Some(_) => self.fanout_hold_from,
            None => 0,
        };
        FanoutHandle::spawn(
            slot,
            tap,
            gate,
            self.video_payloads.clone(),
            self.port.clone(),
            hold_from,
        )
    }

    /// Creates a viewer's peer connection, joins it to the session's
    /// fan-out once its connection is up, and returns the viewer with the
    /// SDP offer to send to the browser.
    pub async fn viewer(
        &self,
        peer: PeerId,
        role: Role,
        tap: SourceTap,
        fanout: &FanoutHandle,
        events: mpsc::Sender<ViewerEvent>,
    ) -> Result<(Viewer, String), RtcError> {
        let config = RTCConfiguration {
            ice_servers: self
                .ice_servers
                .iter()
                .map(|s| RTCIceServer {
                    urls: s.urls.clone(),
                    username: s.username.clone().unwrap_or_default(),
                    credential: s.credential.clone().unwrap_or_default(),
                })
                .collect(),
            ..Default::default()
        };
        let pc = Arc::new(self.api.new_peer_connection(config).await?);
        let cancel = CancellationToken::new();
        let video = Arc::new(TrackLocalStaticRTP::new(
            h264(),
            "video".into(),
            "stream".into(),
        ));
        let audio = Arc::new(TrackLocalStaticSample::new(
            opus(),
            "audio".into(),
            "stream".into(),
        ));
        let video_sender = pc
            .add_track(video.clone() as Arc<dyn TrackLocal + Send + Sync>)
            .await?;
        let audio_sender = pc
            .add_track(audio.clone() as Arc<dyn TrackLocal + Send + Sync>)
            .await?;

        // RTCP from the viewer: PLI/FIR ask the source for a keyframe (the
        // source coalesces concurrent asks into one IDR). NACKs go to the
        // session's fan-out on the SRTP path; otherwise reading RTCP feeds
        // the NACK interceptor.
        let id = fanout.member_id();
        let srtp = self.port.is_some().then(|| (fanout.clone(), id));
        {
            let tap = tap.clone();
            let cancel_v = cancel.clone();
            let srtp = srtp.clone();
            let video_sender = video_sender.clone();
            tokio::spawn(async move {
                loop {
                    let r = tokio::select! {
                        r = video_sender.read_rtcp() => r,
                        _ = cancel_v.cancelled() => break,
                    };
                    let Ok((pkts, _)) = r else { break };
                    for p in pkts {
                        let any = p.as_any();
                        if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                            tap.request_keyframe();
                        } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                            if let Some((fanout, id)) = &srtp {
                                fanout.nack(*id, srtp_out::nacked(nack));
                            }
                        }
                    }
                }
            });
            let cancel = cancel.clone();
            let audio_sender = audio_sender.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = audio_sender.read_rtcp() => if r.is_err() { break },
                        _ = cancel.cancelled() => break,
                    }
                }
            });
        }

        // Input arrives on a data channel the worker opens.
        let dc = pc.create_data_channel("input", None).await?;
        {
            let events = events.clone();
            let peer = peer.clone();
            let now = std::time::Instant::now();
            let mut limit = RateLimit::new(MAX_INPUT_PER_SEC, now);
            let mut dropped = Dropped {
                pending: 0,
                reported_at: now,
            };
            dc.on_message(Box::new(move |msg: DataChannelMessage| {
                let now = std::time::Instant::now();
                if !limit.allow(now) {
                    // Over the limit: not even decoded.
                    dropped.pending += 1;
                    if now.duration_since(dropped.reported_at) >= DROP_REPORT_EVERY {
                        dropped.flush(&peer, &events, now);
                    }
                    return Box::pin(async {});
                }
                dropped.flush(&peer, &events, now);
                let ev = if role != Role::Control {
                    ViewerEvent::BadInput(
                        peer.clone(),
                        WireError::new(
                            bus_schema::ErrorCode::Forbidden,
                            "view-only viewers send no input",
                        ),
                    )
                } else if msg.is_string {
                    ViewerEvent::BadInput(
                        peer.clone(),
                        WireError::new(
                            bus_schema::ErrorCode::InvalidRequest,
                            "input messages are binary",
                        ),
                    )
                } else {
                    match bus_schema::input::decode_input(&msg.data) {
                        Ok(evs) => ViewerEvent::Input(peer.clone(), evs),
                        Err(e) => ViewerEvent::BadInput(peer.clone(), e),
                    }
                };
                // A full queue means a flood: drop, never block the channel.
                let _ = events.try_send(ev);
                Box::pin(async {})
            }));
        }
        {
            let events = events.clone();
            let peer = peer.clone();
            pc.on_ice_candidate(Box::new(move |c: Option<RTCIceCandidate>| {
                let events = events.clone();
                let peer = peer.clone();
                Box::pin(async move {
                    let Some(c) = c else { return };
                    match c.to_json() {
                        Ok(init) => {
                            let cand = Candidate {
                                candidate: init.candidate,
                                sdp_mid: init.sdp_mid,
                                sdp_mline_index: init.sdp_mline_index,
                            };
                            let _ = events.send(ViewerEvent::Candidate(peer, cand)).await;
                        }
                        Err(e) => debug!(error = %e, "candidate not serializable"),
                    }
                })
            }));
        }
        // Connected means ICE and DTLS are up: the SRTP path can start.
        let connected = Arc::new(tokio::sync::Notify::new());
        {
            let events = events.clone();
            let peer = peer.clone();
            let tap = tap.clone();
            let connected = connected.clone();
            pc.on_peer_connection_state_change(Box::new(move |s: RTCPeerConnectionState| {
                if s == RTCPeerConnectionState::Connected {
                    // A joining viewer gets a keyframe at once.
                    tap.request_keyframe();
                    connected.notify_one();
                }
                let events = events.clone();
                let peer = peer.clone();
                Box::pin(async move {
                    let _ = events.send(ViewerEvent::State(peer, s)).await;
                })
            }));
        }

        let offer = pc.create_offer(None).await?;
        pc.set_local_description(offer).await?;
        let sdp = pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .unwrap_or_default();

        let writer = match self.port {
            Some(_) => tokio::spawn(join_fanout(
                video_sender,
                audio_sender,
                fanout.clone(),
                id,
                connected,
                cancel.clone(),
            )),
            None => tokio::spawn(join_fanout_tracks(
                video,
                audio,
                fanout.clone(),
                id,
                connected,
                cancel.clone(),
            )),
        };
        Ok((
            Viewer {
                pc,
                role,
                cancel,
                writer,
                candidates: AtomicUsize::new(0),
            },
            sdp,
        ))
    }
}

pub struct Viewer {
    pc: Arc<RTCPeerConnection>,
    pub role: Role,
    cancel: CancellationToken,
    writer: tokio::task::JoinHandle<()>,
    /// ICE candidates the peer has given so far (answer and trickle).
    candidates: AtomicUsize,
}

impl Viewer {
    /// Counts `n` more candidates from the peer against its limit.
    fn take_candidates(&self, n: usize) -> Result<(), RtcError> {
        let before = self.candidates.fetch_add(n, Ordering::Relaxed);
        if before + n > MAX_CANDIDATES_PER_PEER {
            self.candidates.fetch_sub(n, Ordering::Relaxed);
            return Err(RtcError::Limit(format!(
                "more than {MAX_CANDIDATES_PER_PEER} ICE candidates from this peer"
            )));
        }
        Ok(())
    }

    pub async fn apply_answer(&self, sdp: String) -> Result<(), RtcError> {
        let sdp = without_mdns_candidates(&sdp);
        let in_sdp = sdp
            .lines()
            .filter(|l| l.starts_with("a=candidate:"))
            .count();
        self.take_candidates(in_sdp)?;
        let applied = match RTCSessionDescription::answer(sdp) {
            Ok(answer) => self.pc.set_remote_description(answer).await,
            Err(e) => Err(e),
        };
        if applied.is_err() {
            // A refused answer gave nothing; its candidates do not count.
            self.candidates.fetch_sub(in_sdp, Ordering::Relaxed);
        }
        Ok(applied?)
    }

    pub async fn add_candidate(&self, c: Candidate) -> Result<(), RtcError> {
        self.take_candidates(1)?;
        if is_mdns_candidate(&c.candidate) {
            // Not resolved (see `Engine::new`): the peer's checks stand in.
            debug!(candidate = %c.candidate, "mDNS candidate left out");
            return Ok(());
        }
        self.pc
            .add_ice_candidate(RTCIceCandidateInit {
                candidate: c.candidate,
                sdp_mid: c.sdp_mid,
                sdp_mline_index: c.sdp_mline_index,
                username_fragment: None,
            })
            .await?;
        Ok(())
    }

    pub async fn close(self) {
        self.cancel.cancel();
        // A peer connection closed while its ICE agent still gathers can
        // leave the gathering's sockets and tasks behind (webrtc-rs 0.17):
        // let gathering finish first (it takes milliseconds without STUN).
        use webrtc::ice_transport::ice_gathering_state::RTCIceGatheringState;
        if self.pc.ice_gathering_state() != RTCIceGatheringState::Complete {
            let mut done = self.pc.gathering_complete_promise().await;
            let _ = tokio::time::timeout(GATHER_BEFORE_CLOSE, done.recv()).await;
        }
        if let Err(e) = self.pc.close().await {
            debug!(error = %e, "peer connection close");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.writer).await;
    }
}

/// A viewer on its session's fan-out (`crate::fanout`): once the viewer's
/// DTLS is up, hands the fan-out its SRTP path (keys, SSRCs, payload
/// types, destination), then keeps the destination current (the selected
/// candidate pair can change) until the viewer closes, which ends the
/// membership. Media for the viewer is not sealed before that, as webrtc-rs
/// drops writes to an unbound track.
async fn join_fanout(
    video: Arc<RTCRtpSender>,
    audio: Arc<RTCRtpSender>,
    fanout: FanoutHandle,
    id: u64,
    connected: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
) {
    let out = loop {
        tokio::select! {
            _ = connected.notified() => {}
            _ = cancel.cancelled() => return,
        }
        match start_srtp_out(&video, &audio).await {
            Ok(out) => break out,
            // Waits for the next time the connection comes up.
            Err(e) => warn!(error = %e, "SRTP path could not start"),
        }
    };
    let mut to = out.destination();
    if !fanout.join(id, Sink::Srtp(out), cancel.clone()).await {
        return;
    }
    let mut every = tokio::time::interval(srtp_out::REPORT_EVERY);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let selected = video
            .transport()
            .ice_transport()
            .selected_remote_addr()
            .await;
        if let Some(now) = selected.filter(|now| *now != to) {
            to = now;
            fanout.set_destination(id, to).await;
        }
    }
}

/// A viewer's SRTP path from its DTLS keys, selected pair and senders.
async fn start_srtp_out(video: &RTCRtpSender, audio: &RTCRtpSender) -> Result<SrtpOut, String> {
    let transport = video.transport();
    if transport.state() != RTCDtlsTransportState::Connected {
        return Err("DTLS is not connected".into());
    }
    let (keys, profile) = transport
        .srtp_keys()
        .await
        .ok_or("DTLS gave no SRTP keys")?;
    let to = transport
        .ice_transport()
        .selected_remote_addr()
        .await
        .ok_or("no selected candidate pair")?;
    // SSRC from the sender's encoding; the payload type from the negotiated
    // codec (one per kind is registered; the encoding's own field is never
    // set by webrtc-rs 0.17).
    let stream = |p: RTCRtpSendParameters| {
        let ssrc = p.encodings.first().map(|e| e.ssrc);
        let pt = p.rtp_parameters.codecs.first().map(|c| c.payload_type);
        ssrc.zip(pt)
            .ok_or("a sender without an encoding or a codec")
    };
    let (video_ssrc, video_pt) = stream(video.get_parameters().await)?;
    let (audio_ssrc, audio_pt) = stream(audio.get_parameters().await)?;
    let video = OutStream::new(
        video_ssrc,
        video_pt,
        90_000,
        random_u32() as u16,
        srtp_out::VIDEO_HISTORY,
    );
    let audio = OutStream::new(audio_ssrc, audio_pt, 48_000, random_u32() as u16, 0);
    let out = SrtpOut::new(&keys, profile, to, video, audio).map_err(|e| e.to_string())?;
    debug!(?profile, in_place = out.seals_in_place(), %to, "SRTP path");
    Ok(out)
}

/// A viewer on its session's fan-out through its webrtc-rs tracks (a port
/// per peer, or a port range): once its connection is up, hands the
/// fan-out a track sink and writes what the fan-out queues on it until the
/// viewer closes.
async fn join_fanout_tracks(
    video: Arc<TrackLocalStaticRTP>,
    audio: Arc<TrackLocalStaticSample>,
    fanout: FanoutHandle,
    id: u64,
    connected: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
) {
    tokio::select! {
        _ = connected.notified() => {}
        _ = cancel.cancelled() => return,
    }
    let (sink, rx) = TrackSink::new(TRACK_QUEUE);
    if !fanout.join(id, Sink::Track(sink), cancel.clone()).await {
        return;
    }
    write_tracks(rx, video, audio, random_u32() as u16, cancel).await;
}

/// Whether an ICE candidate (`candidate:…`, with or without `a=`) names
/// its address with an mDNS name (`<uuid>.local`), as browsers hide host
/// addresses. Pure.
pub fn is_mdns_candidate(candidate: &str) -> bool {
    let fields = candidate.trim_start_matches("a=");
    fields.starts_with("candidate:")
        && fields
            .split_ascii_whitespace()
            .nth(4)
            .is_some_and(|address| address.to_ascii_lowercase().ends_with(".local"))
}

/// `sdp` without its mDNS candidate lines ([`is_mdns_candidate`]). Pure.
pub fn without_mdns_candidates(sdp: &str) -> String {
    sdp.split_inclusive('\n')
        .filter(|line| !is_mdns_candidate(line.trim_end()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn mdns_candidates_are_told_apart_and_left_out_of_an_answer() {
        let mdns = "candidate:1 1 udp 2113937151 4f1a2b3c-9d8e-4c1b-a2f3-0123456789ab.local 54321 typ host generation 0";
        let host = "candidate:2 1 udp 2113937151 192.168.1.20 54321 typ host generation 0";
        let srflx =
            "candidate:3 1 udp 1677729535 203.0.113.7 40000 typ srflx raddr 0.0.0.0 rport 0";
        assert!(is_mdns_candidate(mdns));
        assert!(is_mdns_candidate(&format!("a={mdns}")));
        assert!(is_mdns_candidate(&mdns.replace(".local", ".LOCAL")));
        assert!(!is_mdns_candidate(host));
        assert!(!is_mdns_candidate(srflx));
        assert!(!is_mdns_candidate("a=mid:local"));
        assert!(!is_mdns_candidate(""));
        let answer = format!(
            "v=0\r\na=mid:0\r\na={mdns}\r\na={host}\r\na={srflx}\r\na=end-of-candidates\r\n"
        );
        assert_eq!(
            without_mdns_candidates(&answer),
            format!("v=0\r\na=mid:0\r\na={host}\r\na={srflx}\r\na=end-of-candidates\r\n")
        );
    }

    #[test]
    fn rate_limit_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut l = RateLimit::new(10, t0);
        assert_eq!((0..25).filter(|_| l.allow(t0)).count(), 10, "burst of 10");
        // Half a second later, five more.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..25).filter(|_| l.allow(t1)).count(), 5);
        // A long pause refills only up to the burst.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..25).filter(|_| l.allow(t2)).count(), 10);
        // Time going backwards (it does not, but) grants nothing.
        assert!(!l.allow(t0));
    }

    #[test]
    fn limits_are_refused_as_too_large_and_the_rest_as_invalid() {
        let e = RtcError::Limit("more than 64 ICE candidates from this peer".into());
        let w = e.to_wire("candidate rejected");
        assert_eq!(w.code, bus_schema::ErrorCode::TooLarge);
        assert_eq!(
            w.message,
            "candidate rejected: more than 64 ICE candidates from this peer"
        );
        let e = RtcError::WebRtc(webrtc::Error::ErrConnectionClosed);
        assert_eq!(
            e.to_wire("answer rejected").code,
            bus_schema::ErrorCode::InvalidRequest
        );
    }
}
