//! A webrtc-rs viewer joined to a session over NATS: the join and the
//! signals the api relays for a browser's page (`session.join` with a role,
//! the worker's offer, an answer with every host candidate, candidates
//! trickled from the worker, `leave`).
//!
//! Shared by the tests (`fanout`, `hostile`, `sources`) and the `bench` and
//! `profile` binaries. What a viewer does with its tracks stays with the
//! caller: it creates the peer ([`peer`]), registers its readers
//! ([`on_tracks`]), then finishes the join ([`Pending::connect`]).
//!
//! ```ignore
//! let (pending, pc) = viewer::start(&bus, &id, Role::View, Interceptors::Default).await?;
//! viewer::on_tracks(&pc, |track, video| async move { /* read */ });
//! let v = pending.connect(&bus, pc).await?;
//! ```
//!
//! ([`start`] is [`request`], [`api`] and [`peer`]; a caller sharing one API
//! among many viewers calls them itself.)

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bus_schema::{Bus, JoinPeer, PeerId, PeerSignal, Role, SessionId, ToPeer, WireError, WorkerId};
use futures::StreamExt;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::MediaEngine;
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{APIBuilder, API};
use webrtc::data_channel::RTCDataChannel;
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::track::track_remote::TrackRemote;

/// Which RTP interceptors the viewers' API runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interceptors {
    /// webrtc-rs's defaults (NACK, receiver reports, ...), as a page has.
    Default,
    /// None: loss is counted, not repaired, and no reports are sent.
    None,
}

/// A webrtc-rs API with the default codecs (H.264 and Opus among them),
/// `interceptors` and `settings`.
pub fn api(interceptors: Interceptors, settings: SettingEngine) -> anyhow::Result<API> {
    let mut media = MediaEngine::default();
    media.register_default_codecs()?;
    let registry = match interceptors {
        Interceptors::Default => register_default_interceptors(Registry::new(), &mut media)?,
        Interceptors::None => Registry::new(),
    };
    Ok(APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build())
}

/// A peer connection with the default configuration; it receives only,
/// since it answers a worker's send-only offer.
pub async fn peer(api: &API) -> anyhow::Result<Arc<RTCPeerConnection>> {
    Ok(Arc::new(
        api.new_peer_connection(RTCConfiguration::default()).await?,
    ))
}

/// Whether a received track is the H.264 video (else Opus audio).
pub fn is_video(track: &TrackRemote) -> bool {
    track
        .codec()
        .capability
        .mime_type
        .to_lowercase()
        .contains("h264")
}

/// Spawns `read(track, video)` for each track `pc` receives; `video` is
/// whether the track is H.264.
pub fn on_tracks<F, Fut>(pc: &RTCPeerConnection, read: F)
where
    F: Fn(Arc<TrackRemote>, bool) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let read = Arc::new(read);
    pc.on_track(Box::new(move |track, _, _| {
        let read = read.clone();
        Box::pin(async move {
            let video = is_video(&track);
            tokio::spawn(read(track, video));
        })
    }));
}

/// Counts the video RTP packets `pc` receives (audio is read and left).
pub fn count_video(pc: &RTCPeerConnection) -> Arc<std::sync::atomic::AtomicU64> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let packets = Arc::new(AtomicU64::new(0));
    let counter = packets.clone();
    on_tracks(pc, move |track, video| {
        let counter = counter.clone();
        async move {
            while track.read_rtp().await.is_ok() {
                if video {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    packets
}

/// The data channel the worker opens (`input`), once it is open.
pub type Channel = Arc<tokio::sync::Mutex<Option<Arc<RTCDataChannel>>>>;

/// Fills the returned slot with each data channel the worker opens on `pc`,
/// once it is open.
pub fn data_channel(pc: &RTCPeerConnection) -> Channel {
    let channel: Channel = Arc::new(tokio::sync::Mutex::new(None));
    let slot = channel.clone();
    pc.on_data_channel(Box::new(move |dc| {
        let slot = slot.clone();
        Box::pin(async move {
            let d = dc.clone();
            dc.on_open(Box::new(move || {
                Box::pin(async move {
                    *slot.lock().await = Some(d);
                })
            }));
        })
    }));
    channel
}

/// Answers `offer` on `pc` and returns the answer SDP with every host
/// candidate in it (gathering complete, no trickle from this side).
pub async fn answer(pc: &RTCPeerConnection, offer: String) -> anyhow::Result<String> {
    pc.set_remote_description(RTCSessionDescription::offer(offer)?)
        .await?;
    let answer = pc.create_answer(None).await?;
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(answer).await?;
    let _ = gathered.recv().await;
    Ok(pc
        .local_description()
        .await
        .context("no local description")?
        .sdp)
}

/// Adds a candidate the worker trickled to `pc`; one `pc` refuses (it
/// cannot parse or use it) is left out, and the others still connect.
pub async fn add_candidate(pc: &RTCPeerConnection, c: bus_schema::Candidate) {
    let _ = pc
        .add_ice_candidate(RTCIceCandidateInit {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_mline_index,
            username_fragment: None,
        })
        .await;
}

/// A join the worker has accepted, with its offer, not yet answered.
pub struct Pending {
    peer: PeerId,
    session: SessionId,
    worker: WorkerId,
    offer: String,
    inbox: async_nats::Subscriber,
    sent: Instant,
}

/// Joins `id` as a new peer with `role`: subscribes to the peer's signals,
/// then asks `session.join`, which answers with the worker and its offer.
pub async fn request(bus: &Bus, id: &SessionId, role: Role) -> anyhow::Result<Pending> {
    let peer = PeerId::generate();
    let inbox = bus
        .client
        .subscribe(bus.subjects.peer_out(&peer).to_string())
        .await?;
    let sent = Instant::now();
    let joined = bus
        .request(
            &bus.subjects.session_join(id),
            &JoinPeer {
                peer: peer.clone(),
                role,
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("join refused: {} {}", e.code.as_str(), e.message))?;
    Ok(Pending {
        peer,
        session: id.clone(),
        worker: joined.worker,
        offer: joined.offer,
        inbox,
        sent,
    })
}

/// [`request`], then a peer with an API of its own with `interceptors`
/// (default settings): the start of most joins.
pub async fn start(
    bus: &Bus,
    id: &SessionId,
    role: Role,
    interceptors: Interceptors,
) -> anyhow::Result<(Pending, Arc<RTCPeerConnection>)> {
    let pending = request(bus, id, role).await?;
    let api = api(interceptors, SettingEngine::default())?;
    let pc = peer(&api).await?;
    Ok((pending, pc))
}

impl Pending {
    /// When the join request was sent (after the subscription).
    pub fn sent(&self) -> Instant {
        self.sent
    }

    /// Adds the worker's trickled candidates to `pc` as they come, answers
    /// the offer and sends the answer to the worker.
    pub async fn connect(self, bus: &Bus, pc: Arc<RTCPeerConnection>) -> anyhow::Result<Viewer> {
        self.connect_with(bus, pc, |sdp| sdp).await
    }

    /// [`Self::connect`], with the answer's SDP changed by `edit` before it
    /// is sent (as a browser that names its candidates differently).
    pub async fn connect_with(
        self,
        bus: &Bus,
        pc: Arc<RTCPeerConnection>,
        edit: impl FnOnce(String) -> String,
    ) -> anyhow::Result<Viewer> {
        let Pending {
            peer,
            session,
            worker,
            offer,
            mut inbox,
            ..
        } = self;
        let pc2 = pc.clone();
        let worker_candidates: Arc<std::sync::Mutex<Vec<String>>> = Arc::new(
            offer
                .lines()
                .filter_map(|l| l.strip_prefix("a="))
                .filter(|l| l.starts_with("candidate:"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
                .into(),
        );
        let seen = worker_candidates.clone();
        // The offer first: a candidate added before the remote description
        // is refused, so the worker's trickled ones wait in `inbox` until
        // the answer has set it.
        let sdp = edit(answer(&pc, offer).await?);
        let signals = tokio::spawn(async move {
            while let Some(m) = inbox.next().await {
                if let Ok(ToPeer::Candidate { candidate }) =
                    bus_schema::decode_record::<ToPeer>(&m.payload)
                {
                    seen.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(candidate.candidate.clone());
                    add_candidate(&pc2, candidate).await;
                }
            }
        });
        bus.request(
            &bus.subjects.worker_peer(&worker, &session, &peer),
            &PeerSignal::Answer { sdp },
        )
        .await
        .map_err(|e| anyhow::anyhow!("answer refused: {} {}", e.code.as_str(), e.message))?;
        Ok(Viewer {
            peer,
            worker,
            session,
            pc,
            signals,
            worker_candidates,
        })
    }
}

/// A joined viewer.
pub struct Viewer {
    pub peer: PeerId,
    /// The worker serving the session, which holds this peer.
    pub worker: WorkerId,
    pub session: SessionId,
    pub pc: Arc<RTCPeerConnection>,
    /// Adds the worker's trickled candidates to `pc`.
    signals: tokio::task::JoinHandle<()>,
    /// The worker's ICE candidates so far (`candidate:…` lines, from the
    /// offer and trickled).
    pub worker_candidates: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Viewer {
    /// Sends `leave` to the worker.
    pub async fn leave(&self, bus: &Bus) -> Result<(), WireError> {
        bus.request(
            &bus.subjects
                .worker_peer(&self.worker, &self.session, &self.peer),
            &PeerSignal::Leave,
        )
        .await
        .map(|_| ())
    }

    /// Stops taking candidates and closes the peer connection.
    pub async fn close(&self) {
        self.signals.abort();
        let _ = self.pc.close().await;
    }
}
