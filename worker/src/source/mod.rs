//! Media sources: where a session's encoded video and audio come from.
//!
//! A [`SourceFactory`] turns a [`bus_schema::SourceSpec`] into a running
//! source and hands back a [`SourceHandle`]. The handle is the only way in:
//! consumers [`subscribe`](SourceHandle::subscribe) to a broadcast of
//! [`Media`] (every consumer gets every frame), ask for keyframes, hand the
//! viewers' merged input ([`bus_schema::SourceEvent`]) to a source that
//! takes it ([`SourceHandle::send_input`]; the handle's
//! [`input_route`](SourceHandle::input_route) says whether it does, or
//! whether its producer reads it from the bus), and stop the source.
//!
//! A source runs on its own OS threads (encoding is CPU work that must not
//! stall the async runtime). The threads talk to the handle only through a
//! [`SourceLink`]: atomics and small mutexes for requests and input, a
//! condition variable for the stop signal, and the broadcast sender for
//! output.
//!
//! Invariants:
//! - No source thread outlives its handle for long: dropping the handle asks
//!   the threads to stop (without blocking), and [`SourceHandle::stop`] waits
//!   for them, bounded by [`STOP_TIMEOUT`].
//! - Video is H.264 constrained baseline in Annex B, one access unit per
//!   [`EncodedVideo`], with SPS and PPS in front of every IDR.
//! - Audio is Opus at 48 kHz, stereo, 20 ms per [`EncodedAudio`].

pub mod gop;
mod link;
mod picture;
pub mod rtp;
mod synthetic;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use gop::Gop;
pub use h264::{nal_type, nal_units, NAL_IDR, NAL_PPS, NAL_SPS};
pub use link::{SourceHandle, SourceLink, SourceTap};
pub use picture::{draw_frame, DrawnInput, Overlay, I420};
pub use rtp::RtpFactory;
pub use synthetic::SyntheticFactory;

/// The RTP clock of H.264 video.
pub const VIDEO_CLOCK_HZ: u32 = 90_000;
/// Opus always runs at 48 kHz on the wire.
pub const AUDIO_SAMPLE_RATE: u32 = 48_000;
/// Channels in every [`EncodedAudio`] this module produces.
pub const AUDIO_CHANNELS: u16 = 2;
/// Samples per channel in one 20 ms audio packet.
pub const AUDIO_FRAME_SAMPLES: u32 = AUDIO_SAMPLE_RATE / 50;
/// Merged input events a source may leave unread before new ones are
/// dropped (a source reads them at least once a frame).
pub const INPUT_QUEUE: usize = 4096;
/// The longest [`SourceHandle::stop`] waits for a source's threads.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// One H.264 access unit.
pub struct EncodedVideo {
    /// Position in this source's output, from 0, without gaps.
    pub seq: u64,
    /// Presentation time on the 90 kHz clock, from the frame's slot in the
    /// schedule: frames skipped because the source fell behind leave a gap here.
    pub pts_90k: u64,
    /// An IDR picture, preceded by SPS and PPS: a decoder can start here.
    pub keyframe: bool,
    /// NAL units with 4-byte start codes.
    pub annexb: Bytes,
    pub width: u32,
    pub height: u32,
    /// When the picture was taken (for the synthetic source: drawn).
    pub captured_at: Instant,
}

/// One H.264 RTP payload, forwarded as it arrived (the RTP source's
/// cut-through path: viewers get a frame's first packets while its last are
/// still on the way). Each viewer numbers and stamps the packets itself.
pub struct VideoPacket {
    /// Single NAL unit, STAP-A or FU-A (RFC 6184), at most
    /// [`rtp::MAX_PAYLOAD`] bytes.
    pub payload: Bytes,
    /// Presentation time of its access unit on the 90 kHz clock.
    pub pts_90k: u64,
    /// The last packet of its access unit.
    pub marker: bool,
    /// The first packet of an IDR access unit (SPS and PPS first): where a
    /// viewer may start.
    pub keyframe_start: bool,
    pub arrived_at: Instant,
}

/// One 20 ms Opus packet (48 kHz, [`AUDIO_CHANNELS`] channels).
pub struct EncodedAudio {
    /// Position in this source's output, from 0, without gaps.
    pub seq: u64,
    /// Presentation time in samples per channel at 48 kHz.
    pub pts_48k: u64,
    pub opus: Bytes,
    pub captured_at: Instant,
}

// Debug without the payload bytes, which would flood a log.
impl std::fmt::Debug for EncodedVideo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedVideo")
            .field("seq", &self.seq)
            .field("pts_90k", &self.pts_90k)
            .field("keyframe", &self.keyframe)
            .field("annexb_len", &self.annexb.len())
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for VideoPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VideoPacket")
            .field("pts_90k", &self.pts_90k)
            .field("marker", &self.marker)
            .field("keyframe_start", &self.keyframe_start)
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for EncodedAudio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedAudio")
            .field("seq", &self.seq)
            .field("pts_48k", &self.pts_48k)
            .field("opus_len", &self.opus.len())
            .finish_non_exhaustive()
    }
}

/// What a source broadcasts. Cloning is cheap (an `Arc`).
#[derive(Clone, Debug)]
pub enum Media {
    Video(Arc<EncodedVideo>),
    /// The packets a burst of datagrams let go, in order (the RTP source:
    /// what one read found queued).
    VideoPackets(Arc<[VideoPacket]>),
    Audio(Arc<EncodedAudio>),
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The encoder refused its configuration or failed to initialise.
    #[error("encoder error: {0}")]
    Encoder(String),
    /// No factory here can start this kind of source.
    #[error("unsupported source: {0}")]
    Unsupported(String),
    /// The spec is of a known kind but its values are out of range.
    #[error("invalid source spec: {0}")]
    InvalidSpec(String),
    /// The operating system would not start a source thread.
    #[error("could not start a source thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// A socket the source listens on could not be bound (port in use,
    /// address not local).
    #[error("cannot listen: {0}")]
    Bind(String),
}

/// Why a running source failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceFault {
    /// The encoder refused a frame or its output was unusable.
    #[error("{codec} encoder: {detail}")]
    Encoder { codec: &'static str, detail: String },
    /// A socket the source reads failed.
    #[error("{what} failed: {detail}")]
    Io { what: &'static str, detail: String },
    /// A source thread panicked.
    #[error("source thread panicked")]
    Panicked,
    /// The source's output closed, or its threads all ended, without
    /// saying how.
    #[error("source ended without a record")]
    Vanished,
    /// A test asked for it.
    #[error("injected failure at frame {0}")]
    Injected(u64),
}

/// How a source ended.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceExit {
    /// It ended cleanly (asked to, or its input ended).
    Stopped,
    /// It failed; the registry records the fault as the end's detail.
    Failed(SourceFault),
}

/// Starts sources from specs. Object-safe so real sources (Moonlight host,
/// desktop capture) plug in later; [`BuiltinFactory`] starts every kind
/// this crate has.
pub trait SourceFactory: Send + Sync + 'static {
    /// Starts a source. May block for a few milliseconds while encoders
    /// initialise (the synthetic source encodes its first frame here, so
    /// configuration errors surface as [`SourceError::Encoder`]). A push
    /// source (RTP) returns once its sockets are bound, marked
    /// [`live on start`](SourceHandle::set_live_on_start).
    fn start(&self, spec: &bus_schema::SourceSpec) -> Result<SourceHandle, SourceError>;
}

/// Every kind of source this worker can run: each spec goes to its factory.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuiltinFactory;

impl SourceFactory for BuiltinFactory {
    fn start(&self, spec: &bus_schema::SourceSpec) -> Result<SourceHandle, SourceError> {
        use bus_schema::SourceSpec;
        match spec {
            SourceSpec::Synthetic { .. } => SyntheticFactory.start(spec),
            SourceSpec::Rtp { .. } => RtpFactory.start(spec),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_cross_threads_and_factories_are_objects() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<SourceHandle>();
        send_sync::<Media>();
        let _: Arc<dyn SourceFactory> = Arc::new(SyntheticFactory);
        let _: Arc<dyn SourceFactory> = Arc::new(BuiltinFactory);
    }

    #[test]
    fn debug_leaves_out_the_payload() {
        let v = EncodedVideo {
            seq: 1,
            pts_90k: 3000,
            keyframe: true,
            annexb: Bytes::from(vec![0xAB; 1000]),
            width: 2,
            height: 2,
            captured_at: Instant::now(),
        };
        let text = format!("{:?}", Media::Video(Arc::new(v)));
        assert!(text.contains("annexb_len: 1000"), "{text}");
        assert!(text.len() < 200, "{text}");
    }
}
