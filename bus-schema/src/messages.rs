//! Every message on the bus.
//!
//! Evolution rules: fields are only added, always with a default, so old
//! payloads keep parsing (the fixture tests pin this). Commands, which ask a
//! service to act, refuse unknown fields: a caller must never believe an
//! option took effect on a worker that does not know it. Records, events and
//! heartbeats, which many readers consume, ignore unknown fields so readers
//! upgrade independently.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::ids::{PeerId, SessionId, WorkerId};
use crate::time::{HumanDuration, Timestamp};

// ---------------------------------------------------------------- sources

/// Where a session's media comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceSpec {
    /// The built-in animated test picture (frame counter, wall clock) and tone.
    Synthetic {
        #[serde(default = "default_width")]
        width: u32,
        #[serde(default = "default_height")]
        height: u32,
        #[serde(default = "default_fps")]
        fps: u32,
        /// Video bitrate in kbit/s.
        #[serde(default = "default_bitrate")]
        bitrate_kbps: u32,
    },
    /// Plain RTP pushed to the worker's UDP ports, the way Janus's streaming
    /// plugin takes it (ffmpeg, GStreamer or OBS as the sender): H.264
    /// constrained baseline (profile-level-id 42e01f, what browsers are
    /// offered) on `video_port`, Opus at 48 kHz on `audio_port`. Keyframe
    /// requests cannot reach the sender: viewers start at its next IDR, so
    /// senders should use a short GOP (e.g. ffmpeg `-g 30`).
    Rtp {
        video_port: u16,
        #[serde(default)]
        audio_port: Option<u16>,
        /// The local address to bind (an IP literal).
        #[serde(default = "default_rtp_bind")]
        bind: String,
        #[serde(default = "default_video_pt")]
        video_payload_type: u8,
        #[serde(default = "default_audio_pt")]
        audio_payload_type: u8,
    },
}

fn default_rtp_bind() -> String {
    "127.0.0.1".into()
}
fn default_video_pt() -> u8 {
    96
}
fn default_audio_pt() -> u8 {
    111
}

/// The nominal frame rate of an RTP source (the sender's own rate is not
/// announced on the wire).
pub const RTP_NOMINAL_FPS: u32 = 30;

fn default_width() -> u32 {
    1280
}
fn default_height() -> u32 {
    720
}
fn default_fps() -> u32 {
    30
}
fn default_bitrate() -> u32 {
    2500
}

impl Default for SourceSpec {
    fn default() -> Self {
        SourceSpec::Synthetic {
            width: default_width(),
            height: default_height(),
            fps: default_fps(),
            bitrate_kbps: default_bitrate(),
        }
    }
}

impl SourceSpec {
    /// Checks ranges that the type system cannot.
    pub fn validate(&self) -> Result<(), WireError> {
        use crate::error::ErrorCode::InvalidRequest;
        match *self {
            SourceSpec::Synthetic {
                width,
                height,
                fps,
                bitrate_kbps,
            } => {
                if !(16..=3840).contains(&width) || !(16..=2160).contains(&height) {
                    return Err(WireError::new(
                        InvalidRequest,
                        "synthetic width must be 16..=3840 and height 16..=2160",
                    ));
                }
                if width % 2 != 0 || height % 2 != 0 {
                    return Err(WireError::new(
                        InvalidRequest,
                        "synthetic width and height must be even",
                    ));
                }
                if !(1..=120).contains(&fps) {
                    return Err(WireError::new(
                        InvalidRequest,
                        "synthetic fps must be 1..=120",
                    ));
                }
                if !(50..=50_000).contains(&bitrate_kbps) {
                    return Err(WireError::new(
                        InvalidRequest,
                        "bitrate_kbps must be 50..=50000",
                    ));
                }
                Ok(())
            }
            SourceSpec::Rtp {
                video_port,
                audio_port,
                ref bind,
                video_payload_type,
                audio_payload_type,
            } => {
                if video_port == 0 || audio_port == Some(0) {
                    return Err(WireError::new(
                        InvalidRequest,
                        "rtp video_port and audio_port must be 1..=65535",
                    ));
                }
                if audio_port == Some(video_port) {
                    return Err(WireError::new(
                        InvalidRequest,
                        "rtp video_port and audio_port must differ",
                    ));
                }
                if bind.parse::<std::net::IpAddr>().is_err() {
                    return Err(WireError::new(
                        InvalidRequest,
                        "rtp bind must be an IP address such as 127.0.0.1 or 0.0.0.0",
                    ));
                }
                let dynamic = 96..=127;
                if !dynamic.contains(&video_payload_type) || !dynamic.contains(&audio_payload_type)
                {
                    return Err(WireError::new(
                        InvalidRequest,
                        "rtp video_payload_type and audio_payload_type must be 96..=127",
                    ));
                }
                Ok(())
            }
        }
    }

    /// The picture size when the spec fixes it (an RTP sender picks its own).
    pub fn picture_size(&self) -> Option<(u32, u32)> {
        match *self {
            SourceSpec::Synthetic { width, height, .. } => Some((width, height)),
            SourceSpec::Rtp { .. } => None,
        }
    }
}

/// What happens to a session when its worker is declared dead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnWorkerLost {
    /// The session ends with reason `worker_lost`.
    #[default]
    End,
    /// The janitor starts the session again on another worker, under a new epoch.
    Restart,
}

// ---------------------------------------------------------------- commands

/// `session.create`: start a headless session. Idempotent by `id`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// Your id for the session; generated when absent. A create with the id
    /// of a live session returns that session and starts nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<SessionId>,
    #[serde(default)]
    pub source: SourceSpec,
    /// How long the session lives with no viewer and no keepalive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ttl: Option<HumanDuration>,
    /// The longest the session may live at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<HumanDuration>,
    #[serde(default)]
    pub on_worker_lost: OnWorkerLost,
    /// Free-form labels stored with the session (at most 32, short strings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl CreateSession {
    pub fn validate(&self) -> Result<(), WireError> {
        self.source.validate()?;
        if self.labels.len() > 32
            || self
                .labels
                .iter()
                .any(|(k, v)| k.is_empty() || k.len() > 64 || v.len() > 256)
        {
            return Err(WireError::new(
                crate::error::ErrorCode::InvalidRequest,
                "labels: at most 32, keys 1..=64 bytes, values up to 256 bytes",
            ));
        }
        Ok(())
    }
}

/// The most sessions one `session.list` page may ask for.
pub const MAX_LIST_LIMIT: u32 = 1000;

/// `session.list`: the registry's sessions, oldest first, optionally
/// filtered, one page per request. A page holds at most `limit` sessions
/// and never more than fits in one NATS message; when more follow, the
/// reply's `next` is the cursor to pass as `after` for the next page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListSessions {
    /// Include ended sessions still retained in the registry.
    #[serde(default)]
    pub include_ended: bool,
    /// At most this many sessions (1 to [`MAX_LIST_LIMIT`]); without it, as
    /// many as fit in one message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Start after this session: the `next` of the page before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<ListCursor>,
}

impl ListSessions {
    /// Checks ranges that the type system cannot.
    pub fn validate(&self) -> Result<(), WireError> {
        match self.limit {
            Some(n) if n == 0 || n > MAX_LIST_LIMIT => Err(WireError::new(
                crate::error::ErrorCode::InvalidRequest,
                format!("limit must be 1 to {MAX_LIST_LIMIT}, not {n}"),
            )),
            _ => Ok(()),
        }
    }
}

/// A place in `session.list`'s order (creation time, then id): the last
/// session of a page. On the wire a string, `<created_at>/<id>`; callers
/// pass it back as they got it. A cursor stays valid when its session is
/// deleted: the next page starts after where that session was.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ListCursor {
    // Field order is the list's order: the derived `Ord` compares
    // `created_at` first.
    pub created_at: Timestamp,
    pub id: SessionId,
}

impl ListCursor {
    /// Where `record` sits in the list's order.
    pub fn of(record: &SessionRecord) -> Self {
        Self {
            created_at: record.created_at,
            id: record.id.clone(),
        }
    }
}

impl TryFrom<String> for ListCursor {
    type Error = WireError;
    fn try_from(s: String) -> Result<Self, WireError> {
        let bad = |why: String| {
            WireError::new(
                crate::error::ErrorCode::InvalidRequest,
                format!("after: {s:?} is not a session.list cursor ({why})"),
            )
        };
        let (at, id) = s
            .split_once('/')
            .ok_or_else(|| bad("expected <created_at>/<id>".into()))?;
        Ok(Self {
            created_at: Timestamp::try_from(at.to_string()).map_err(|e| bad(e.message))?,
            id: SessionId::parse(id).map_err(|e| bad(e.message))?,
        })
    }
}

impl From<ListCursor> for String {
    fn from(c: ListCursor) -> String {
        format!("{}/{}", c.created_at, c.id)
    }
}

impl JsonSchema for ListCursor {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ListCursor".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A session.list cursor, <created_at>/<id>: pass a reply's `next` back as `after`",
        })
    }
}

/// `session.<id>.get`: no fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetSession {}

/// `session.<id>.keepalive`: reset the idle clock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Keepalive {}

/// `session.<id>.stop`: end the session with reason `stopped`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StopSession {
    /// Free text kept in the record's end detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Janitor to worker: run this session, which the registry now gives you
/// under `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdoptSession {
    pub epoch: u64,
}

/// Janitor to worker: stop a session you run under `epoch`; the registry no
/// longer gives it to you.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fence {
    pub epoch: u64,
}

/// An empty success reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Ack {}

// ---------------------------------------------------------------- registry

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Claimed by a worker; its source is starting.
    Starting,
    /// The source produces encoded media.
    Live,
    /// Over; `ended` says why. Kept in the registry for a retention period.
    Ended,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// A `stop` command.
    Stopped,
    /// No viewer and no keepalive for the idle TTL.
    IdleTimeout,
    /// The session reached its maximum lifetime.
    MaxLifetime,
    /// Its worker shut down (SIGTERM).
    WorkerShutdown,
    /// Its worker died, hung or lost NATS for longer than its lease.
    WorkerLost,
    /// The source could not start or failed while running.
    SourceFailed,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Stopped => "stopped",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::MaxLifetime => "max_lifetime",
            EndReason::WorkerShutdown => "worker_shutdown",
            EndReason::WorkerLost => "worker_lost",
            EndReason::SourceFailed => "source_failed",
        }
    }
}

/// A session's spec with every default resolved, as stored in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SessionSpec {
    pub source: SourceSpec,
    pub idle_ttl: HumanDuration,
    pub max_lifetime: HumanDuration,
    #[serde(default)]
    pub on_worker_lost: OnWorkerLost,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// How and when a session ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Ended {
    pub reason: EndReason,
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The registry entry of one session: the value under its id in the
/// `<prefix>_sessions` JetStream key-value bucket. Every change of owner is a
/// compare-and-set on the entry's revision and bumps `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SessionRecord {
    pub id: SessionId,
    pub owner: WorkerId,
    /// Starts at 1; +1 at every change of owner.
    pub epoch: u64,
    pub state: SessionState,
    pub spec: SessionSpec,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// When the current owner's source produced its first encoded frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Ended>,
    /// Viewers attached when the owner last wrote the record.
    #[serde(default)]
    pub viewers: u32,
}

/// A session as replies show it: the record and its registry revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SessionInfo {
    #[serde(flatten)]
    pub record: SessionRecord,
    /// The registry revision this view was read at.
    pub revision: u64,
}

/// Reply to `session.list`: one page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionInfo>,
    /// More sessions follow: ask again with this as `after`. Absent on the
    /// last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<ListCursor>,
}

// ---------------------------------------------------------------- liveness

/// A session a worker is running, as its heartbeat reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HeldSession {
    pub id: SessionId,
    pub epoch: u64,
    #[serde(default)]
    pub viewers: u32,
    /// The worker lost its lease and holds the session without streaming
    /// until it can check the registry again.
    #[serde(default)]
    pub suspended: bool,
}

/// Published by every worker every heartbeat interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Heartbeat {
    pub worker: WorkerId,
    /// Increases by one per heartbeat of this process.
    pub seq: u64,
    pub interval_ms: u64,
    /// The most sessions this worker runs at once.
    pub capacity: u32,
    pub sessions: Vec<HeldSession>,
    /// The worker is shutting down and takes no new sessions.
    #[serde(default)]
    pub draining: bool,
    pub sent_at: Timestamp,
}

impl Heartbeat {
    pub fn free(&self) -> u32 {
        if self.draining {
            0
        } else {
            self.capacity.saturating_sub(self.sessions.len() as u32)
        }
    }
}

// ---------------------------------------------------------------- viewers

/// What a viewer may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sees, hears and sends input.
    Control,
    /// Sees and hears; input is refused.
    #[default]
    View,
}

/// A STUN or TURN server, in the shape of the browser's `RTCIceServer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// `session.<id>.join`: attach a viewer. The owner creates an
/// RTCPeerConnection (the worker offers) and answers with its offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinPeer {
    pub peer: PeerId,
    #[serde(default)]
    pub role: Role,
}

/// Reply to `join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Joined {
    pub session: SessionId,
    pub peer: PeerId,
    pub worker: WorkerId,
    pub epoch: u64,
    pub role: Role,
    /// The worker's SDP offer: H.264 video, Opus audio, data channel `input`.
    pub offer: String,
    pub ice_servers: Vec<IceServer>,
    pub viewers: u32,
}

/// An ICE candidate, as `RTCIceCandidateInit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Candidate {
    pub candidate: String,
    #[serde(default, rename = "sdpMid", skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(
        default,
        rename = "sdpMLineIndex",
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_mline_index: Option<u16>,
}

/// Viewer to worker, through the api: `worker.<w>.session.<id>.peer.<peer>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PeerSignal {
    Answer {
        sdp: String,
    },
    Candidate {
        candidate: Candidate,
    },
    /// The viewer leaves; everything it held is released.
    Leave,
}

/// Worker to viewer, through the api: `peer.<peer>.out`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToPeer {
    Candidate {
        candidate: Candidate,
    },
    /// The number of viewers changed.
    Viewers {
        count: u32,
    },
    /// The session ended; the viewer should show why.
    Ended {
        reason: EndReason,
    },
    /// The worker dropped this peer (for example after an ICE failure).
    Closed {
        reason: String,
    },
}

/// `session.<id>.stats`: what the owner sees right now. No fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetStats {}

/// One attached viewer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ViewerInfo {
    pub peer: PeerId,
    pub role: Role,
}

/// Reply to `session.<id>.stats`: the live state of a session on its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SessionStats {
    pub id: SessionId,
    pub worker: WorkerId,
    pub epoch: u64,
    pub frames_encoded: u64,
    pub viewers: Vec<ViewerInfo>,
    /// The merged input: keys and mouse buttons held by any viewer.
    pub keys_down: Vec<String>,
    pub buttons_down: Vec<u8>,
    /// Input events accepted from viewers and the backend.
    pub input_events: u64,
    /// Input messages refused (view-only senders, malformed packets).
    pub input_refused: u64,
    /// What an `rtp` source received; absent for other sources (and from
    /// workers older than this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtp: Option<RtpSourceStats>,
    /// Where the merged input goes; absent from workers older than this
    /// field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_route: Option<crate::source_input::InputRoute>,
    /// Merged input events handed on that way (to the source, or published).
    #[serde(default)]
    pub input_forwarded: u64,
}

/// Counters of an `rtp` source since it started on this owner, refreshed
/// by its receive threads every 50 ms or so.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RtpSourceStats {
    pub video: RtpVideoStats,
    /// Absent without an `audio_port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<RtpAudioStats>,
    /// Keyframe requests from viewers, which cannot reach an RTP sender
    /// (viewers wait for its next IDR).
    pub keyframe_requests: u64,
}

/// The video port of an `rtp` source (H.264, forwarded packet by packet).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RtpVideoStats {
    /// RTP packets of the expected payload type.
    pub packets: u64,
    /// Datagrams that are not RTP, another payload type, or malformed H.264.
    pub bad_packets: u64,
    /// Packets missing from the sequence.
    pub lost_packets: u64,
    /// Packets that came after a later one that had already gone on (past
    /// the 10 ms reorder window), or twice: dropped.
    pub late_packets: u64,
    /// Packets that came after later ones and were put back in order (the
    /// later ones waited for them, at most 10 ms).
    #[serde(default)]
    pub reordered_packets: u64,
    /// Payloads relayed to viewers (after re-cutting).
    pub forwarded_packets: u64,
    /// Payloads larger than 1200 bytes, cut into FU-A fragments.
    pub refragmented: u64,
    /// Access units relayed whole.
    pub frames: u64,
    pub keyframes: u64,
    /// Access units of which nothing was relayed: before the first IDR,
    /// between a loss and the next IDR, or not starting a picture.
    pub dropped_frames: u64,
    /// Access units cut short by loss or a malformed packet after some of
    /// their packets had gone out.
    pub cut_frames: u64,
    /// Access units that ended without a marker bit (a new timestamp came).
    pub unmarked_frames: u64,
    /// IDRs that arrived without SPS/PPS and got the remembered ones.
    pub parameter_sets_inserted: u64,
    /// New SSRC or sequence jump (a restarted sender).
    pub restarts: u64,
}

/// The audio port of an `rtp` source (Opus).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RtpAudioStats {
    /// RTP packets of the expected payload type.
    pub packets: u64,
    /// Datagrams that are not RTP or of another payload type.
    pub bad_packets: u64,
    /// Packets missing from the sequence.
    pub lost_packets: u64,
    /// Packets that came after a later one (or twice), dropped.
    pub late_packets: u64,
    /// New SSRC or sequence jump (a restarted sender).
    pub restarts: u64,
}

// ---------------------------------------------------------------- events

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionEventKind {
    /// The source is live on `worker` under `epoch`.
    Started,
    /// The session is over; `reason` says why.
    Ended,
    /// The janitor moved the session to another worker.
    Moved,
    ViewerJoined,
    ViewerLeft,
}

impl SessionEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionEventKind::Started => "started",
            SessionEventKind::Ended => "ended",
            SessionEventKind::Moved => "moved",
            SessionEventKind::ViewerJoined => "viewer_joined",
            SessionEventKind::ViewerLeft => "viewer_left",
        }
    }
}

/// `event.session.<id>.<kind>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SessionEvent {
    pub id: SessionId,
    pub kind: SessionEventKind,
    pub worker: WorkerId,
    pub epoch: u64,
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<EndReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For viewer events: who, and how many viewers now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<crate::PeerId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub viewers: Option<u32>,
}

/// `event.worker.<id>.lost`: the janitor declared a worker dead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerLost {
    pub worker: WorkerId,
    pub last_seen: Timestamp,
    pub sessions: Vec<SessionId>,
    pub at: Timestamp,
}

#[cfg(test)]
mod source_spec_tests {
    use super::*;
    use crate::error::ErrorCode;

    fn rtp(json: &str) -> SourceSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn rtp_defaults_fill_in() {
        let s = rtp(r#"{"kind":"rtp","video_port":5004,"audio_port":5006}"#);
        assert_eq!(
            s,
            SourceSpec::Rtp {
                video_port: 5004,
                audio_port: Some(5006),
                bind: "127.0.0.1".into(),
                video_payload_type: 96,
                audio_payload_type: 111,
            }
        );
        s.validate().unwrap();
        assert_eq!(s.picture_size(), None);
        rtp(r#"{"kind":"rtp","video_port":5004}"#)
            .validate()
            .unwrap();
    }

    #[test]
    fn rtp_out_of_range_values_are_refused_with_a_clear_message() {
        for (json, words) in [
            (r#"{"kind":"rtp","video_port":0}"#, "1..=65535"),
            (
                r#"{"kind":"rtp","video_port":5004,"audio_port":0}"#,
                "1..=65535",
            ),
            (
                r#"{"kind":"rtp","video_port":5004,"audio_port":5004}"#,
                "differ",
            ),
            (
                r#"{"kind":"rtp","video_port":5004,"bind":"localhost"}"#,
                "IP address",
            ),
            (
                r#"{"kind":"rtp","video_port":5004,"video_payload_type":95}"#,
                "96..=127",
            ),
            (
                r#"{"kind":"rtp","video_port":5004,"audio_payload_type":128}"#,
                "96..=127",
            ),
        ] {
            let e = rtp(json).validate().unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{json}");
            assert!(e.message.contains(words), "{json}: {}", e.message);
        }
        // A port beyond u16 or an unknown field does not even parse.
        assert!(
            serde_json::from_str::<SourceSpec>(r#"{"kind":"rtp","video_port":70000}"#).is_err()
        );
        assert!(
            serde_json::from_str::<SourceSpec>(r#"{"kind":"rtp","video_port":1,"x":1}"#).is_err()
        );
    }
}
