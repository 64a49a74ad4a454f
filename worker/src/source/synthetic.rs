//! The built-in synthetic source: an animated test picture encoded to H.264
//! with OpenH264, and a tone encoded to Opus, each paced on its own thread.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bus_schema::SourceSpec;
use bytes::Bytes;
use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, IntraFramePeriod, Level, Profile,
    RateControlMode, UsageType, VuiConfig,
};
use openh264::{OpenH264API, Timestamp};
use tokio::sync::broadcast;

use super::{
    draw_frame, DrawnInput, EncodedAudio, EncodedVideo, Media, Overlay, SourceError, SourceFactory,
    SourceFault, SourceHandle, SourceLink, AUDIO_CHANNELS, AUDIO_FRAME_SAMPLES, AUDIO_SAMPLE_RATE,
    I420, VIDEO_CLOCK_HZ,
};
use h264::{nal_type, nal_units, NAL_IDR, NAL_PPS, NAL_SPS};

/// Audio packets per second (20 ms each).
const AUDIO_PACKETS_PER_SEC: u64 = (AUDIO_SAMPLE_RATE / AUDIO_FRAME_SAMPLES) as u64;
const AUDIO_BITRATE_BPS: i32 = 48_000;
/// Largest Opus packet we accept from the encoder (fits one RTP packet).
const AUDIO_MAX_PACKET: usize = 1275;
/// Periodic IDR, so a viewer that misses a keyframe request still recovers.
const KEYFRAME_INTERVAL: Duration = Duration::from_secs(2);
/// Broadcast depth in seconds of media.
const BUFFER_SECS: usize = 2;

/// Starts [`SourceSpec::Synthetic`] sources.
#[derive(Clone, Copy, Debug, Default)]
pub struct SyntheticFactory;

impl SourceFactory for SyntheticFactory {
    fn start(&self, spec: &SourceSpec) -> Result<SourceHandle, SourceError> {
        let config = Config::from_spec(spec)?;
        start(config).map(|(handle, _)| handle)
    }
}

/// What a synthetic source is asked to do.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
    pub keyframe_interval: Duration,
    /// Test hook: the video thread fails instead of encoding this frame.
    pub fail_at_seq: Option<u64>,
}

impl Config {
    #[allow(unreachable_patterns)] // other kinds of source are not ours
    pub fn from_spec(spec: &SourceSpec) -> Result<Self, SourceError> {
        spec.validate()
            .map_err(|e| SourceError::InvalidSpec(e.message))?;
        match *spec {
            SourceSpec::Synthetic {
                width,
                height,
                fps,
                bitrate_kbps,
            } => Ok(Config {
                width,
                height,
                fps,
                bitrate_kbps,
                keyframe_interval: KEYFRAME_INTERVAL,
                fail_at_seq: None,
            }),
            ref other => Err(SourceError::Unsupported(format!("{other:?}"))),
        }
    }
}

/// Starts the threads. The first video frame is encoded before this returns,
/// so encoder errors surface here; the receiver returned was subscribed
/// before that frame, so it sees the stream from its first IDR.
pub(crate) fn start(
    config: Config,
) -> Result<(SourceHandle, broadcast::Receiver<Media>), SourceError> {
    let mut video = VideoGen::new(&config)?;
    let audio = AudioGen::new()?;
    let capacity = BUFFER_SECS * (config.fps as usize + AUDIO_PACKETS_PER_SEC as usize);
    let mut handle = SourceHandle::new(capacity);
    // The merged input is drawn into the picture.
    handle.set_input_route(bus_schema::InputRoute::Source);
    let first_receiver = handle.subscribe();

    let start = Instant::now();
    let first = video
        .produce(0, false, start, SystemTime::now())
        .map_err(|e| SourceError::Encoder(e.to_string()))?;
    let fps = u64::from(config.fps);
    let drawn = DrawnInput::new(config.width, config.height);
    handle.spawn_thread("synthetic-video", move |link| {
        video_loop(&link, video, drawn, first, Pacer::new(start, fps, 1))
    })?;
    handle.spawn_thread("synthetic-audio", move |link| {
        audio_loop(&link, audio, Pacer::new(start, AUDIO_PACKETS_PER_SEC, 0))
    })?;
    tracing::debug!(
        width = config.width,
        height = config.height,
        fps = config.fps,
        bitrate_kbps = config.bitrate_kbps,
        "synthetic source started"
    );
    Ok((handle, first_receiver))
}

fn video_loop(
    link: &SourceLink,
    mut video: VideoGen,
    mut drawn: DrawnInput,
    first: Option<EncodedVideo>,
    mut pacer: Pacer,
) -> Result<(), SourceFault> {
    if let Some(frame) = first {
        link.count_frame();
        link.publish(Media::Video(Arc::new(frame)));
    }
    loop {
        if link.sleep_until(pacer.next_deadline()) {
            return Ok(());
        }
        let now = Instant::now();
        let (index, skipped) = pacer.take(now);
        if skipped > 0 {
            tracing::debug!(skipped, "synthetic video fell behind; skipping frames");
        }
        if drawn.apply(&link.take_input()) {
            video.overlay = drawn.overlay();
        }
        let keyframe = link.take_keyframe_request();
        if let Some(frame) = video.produce(index, keyframe, now, SystemTime::now())? {
            link.count_frame();
            link.publish(Media::Video(Arc::new(frame)));
        }
    }
}

fn audio_loop(link: &SourceLink, mut audio: AudioGen, mut pacer: Pacer) -> Result<(), SourceFault> {
    loop {
        if link.sleep_until(pacer.next_deadline()) {
            return Ok(());
        }
        let now = Instant::now();
        let (index, skipped) = pacer.take(now);
        if skipped > 0 {
            tracing::debug!(skipped, "synthetic audio fell behind; skipping packets");
        }
        let packet = audio.produce(index, now)?;
        link.publish(Media::Audio(Arc::new(packet)));
    }
}

/// The schedule of a periodic output: tick `n` is due at `start + n / rate`,
/// computed from `n` each time so rounding never accumulates into drift.
#[derive(Debug)]
pub(crate) struct Pacer {
    start: Instant,
    rate: u64,
    next: u64,
}

impl Pacer {
    pub fn new(start: Instant, rate: u64, first_tick: u64) -> Self {
        Pacer {
            start,
            rate: rate.max(1),
            next: first_tick,
        }
    }

    pub fn next_deadline(&self) -> Instant {
        let nanos = u128::from(self.next) * 1_000_000_000 / u128::from(self.rate);
        self.start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The tick to produce at `now`, and how many were skipped for it: when
    /// the next tick's successor is already due, the late ticks are dropped
    /// rather than produced in a burst.
    pub fn take(&mut self, now: Instant) -> (u64, u64) {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        let due =
            u64::try_from(elapsed * u128::from(self.rate) / 1_000_000_000).unwrap_or(u64::MAX);
        let tick = due.max(self.next);
        let skipped = tick - self.next;
        self.next = tick + 1;
        (tick, skipped)
    }
}

/// Draws and encodes the picture.
struct VideoGen {
    encoder: Encoder,
    picture: I420,
    overlay: Overlay,
    fps: u64,
    /// Frames from one IDR to the next when nobody asks for one.
    keyframe_every: u64,
    next_seq: u64,
    since_keyframe: u64,
    keyframe_pending: bool,
    /// SPS and PPS of the last IDR, in Annex B.
    parameter_sets: Vec<u8>,
    fail_at_seq: Option<u64>,
}

impl VideoGen {
    fn new(config: &Config) -> Result<Self, SourceError> {
        let encoder_config = EncoderConfig::new()
            // Baseline is what browsers negotiate (42e01f); OpenH264 writes
            // it with constraint_set1, i.e. constrained baseline.
            .profile(Profile::Baseline)
            .level(level_for(
                config.width,
                config.height,
                config.fps,
                config.bitrate_kbps,
            ))
            .rate_control_mode(RateControlMode::Bitrate)
            .bitrate(BitRate::from_bps(config.bitrate_kbps.saturating_mul(1000)))
            .max_frame_rate(FrameRate::from_hz(config.fps as f32))
            // Every tick yields a picture; the pacer alone decides what to
            // drop. OpenH264 warns at init that it then cannot hold the
            // bitrate; it steers by QP instead, and measured output stays on
            // target (2.49 Mbit/s for 2.5 at 720p30).
            .skip_frames(false)
            // Camera mode is the path browsers' own OpenH264 use for WebRTC.
            .usage_type(UsageType::CameraVideoRealTime)
            // A test picture needs no fine motion search; Low costs about a
            // quarter less CPU than Medium at 720p30.
            .complexity(Complexity::Low)
            // We place every IDR ourselves: periodic, on request, never on
            // the encoder's own scene-change guess.
            .intra_frame_period(IntraFramePeriod::from_num_frames(0))
            .scene_change_detect(false)
            // One thread per session: its CPU cost is predictable and no
            // encoder worker threads outlive the source.
            .num_threads(1)
            // The picture is drawn in BT.601 limited range.
            .vui(VuiConfig::bt601());
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), encoder_config)
            .map_err(|e| SourceError::Encoder(e.to_string()))?;
        let fps = u64::from(config.fps.max(1));
        let keyframe_every = (config.keyframe_interval.as_millis() as u64 * fps / 1000).max(1);
        Ok(VideoGen {
            encoder,
            picture: I420::new(config.width, config.height),
            overlay: Overlay::default(),
            fps,
            keyframe_every,
            next_seq: 0,
            since_keyframe: 0,
            keyframe_pending: true,
            parameter_sets: Vec::new(),
            fail_at_seq: config.fail_at_seq,
        })
    }

    /// Draws and encodes the frame in slot `index`. `None` if the encoder
    /// produced nothing for it (it should not, with frame skipping off).
    fn produce(
        &mut self,
        index: u64,
        keyframe_requested: bool,
        captured_at: Instant,
        wallclock: SystemTime,
    ) -> Result<Option<EncodedVideo>, SourceFault> {
        if self.fail_at_seq == Some(self.next_seq) {
            return Err(SourceFault::Injected(self.next_seq));
        }
        let clock = humantime::format_rfc3339_millis(wallclock).to_string();
        draw_frame(&mut self.picture, index, &clock, &self.overlay);

        self.keyframe_pending |= keyframe_requested || self.since_keyframe >= self.keyframe_every;
        if self.keyframe_pending {
            self.encoder.force_intra_frame();
        }
        let pts_ms = index * 1000 / self.fps;
        let mut annexb = self
            .encoder
            .encode_at(&self.picture, Timestamp::from_millis(pts_ms))
            .map_err(|e| SourceFault::Encoder {
                codec: "h264",
                detail: e.to_string(),
            })?
            .to_vec();
        if annexb.is_empty() {
            return Ok(None);
        }

        let keyframe = nal_units(&annexb).any(|nal| nal_type(nal) == NAL_IDR);
        if keyframe {
            self.ensure_parameter_sets(&mut annexb)?;
            self.keyframe_pending = false;
            self.since_keyframe = 1;
        } else {
            self.since_keyframe += 1;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(Some(EncodedVideo {
            seq,
            pts_90k: index * u64::from(VIDEO_CLOCK_HZ) / self.fps,
            keyframe,
            annexb: Bytes::from(annexb),
            width: self.picture.width(),
            height: self.picture.height(),
            captured_at,
        }))
    }

    /// Makes sure the IDR access unit carries SPS and PPS: remembers them
    /// when present, puts the remembered ones in front when not.
    fn ensure_parameter_sets(&mut self, access_unit: &mut Vec<u8>) -> Result<(), SourceFault> {
        let mut sets = Vec::new();
        for nal in nal_units(access_unit) {
            if matches!(nal_type(nal), NAL_SPS | NAL_PPS) {
                sets.extend_from_slice(&[0, 0, 0, 1]);
                sets.extend_from_slice(nal);
            }
        }
        let types = |b: &[u8]| nal_units(b).map(nal_type).collect::<Vec<_>>();
        let found = types(&sets);
        if found.contains(&NAL_SPS) && found.contains(&NAL_PPS) {
            self.parameter_sets = sets;
        } else if self.parameter_sets.is_empty() {
            return Err(SourceFault::Encoder {
                codec: "h264",
                detail: "an IDR without SPS/PPS".into(),
            });
        } else {
            access_unit.splice(0..0, self.parameter_sets.iter().copied());
        }
        Ok(())
    }
}

/// The lowest level that fits the stream, but at least 3.1 (the `1f` of
/// `42e01f`, which browsers offer). Limits from H.264 table A-1.
fn level_for(width: u32, height: u32, fps: u32, bitrate_kbps: u32) -> Level {
    let frame_mbs = u64::from(width.div_ceil(16)) * u64::from(height.div_ceil(16));
    let mbs_per_sec = frame_mbs * u64::from(fps);
    // (level, max macroblocks/s, max frame macroblocks, max kbit/s baseline)
    const LEVELS: [(Level, u64, u64, u32); 8] = [
        (Level::Level_3_1, 108_000, 3_600, 14_000),
        (Level::Level_3_2, 216_000, 5_120, 20_000),
        (Level::Level_4_0, 245_760, 8_192, 20_000),
        (Level::Level_4_1, 245_760, 8_192, 50_000),
        (Level::Level_4_2, 522_240, 8_704, 50_000),
        (Level::Level_5_0, 589_824, 22_080, 135_000),
        (Level::Level_5_1, 983_040, 36_864, 240_000),
        (Level::Level_5_2, 2_073_600, 36_864, 240_000),
    ];
    LEVELS
        .iter()
        .find(|(_, max_rate, max_frame, max_kbps)| {
            mbs_per_sec <= *max_rate && frame_mbs <= *max_frame && bitrate_kbps <= *max_kbps
        })
        .map_or(Level::Level_5_2, |(level, ..)| *level)
}

/// Generates and encodes the tone.
struct AudioGen {
    encoder: opus::Encoder,
    next_seq: u64,
    pcm: Vec<i16>,
    out: Vec<u8>,
}

impl AudioGen {
    fn new() -> Result<Self, SourceError> {
        let channels = match AUDIO_CHANNELS {
            1 => opus::Channels::Mono,
            _ => opus::Channels::Stereo,
        };
        let opus_err = |e: opus::Error| SourceError::Encoder(format!("opus: {e}"));
        let mut encoder = opus::Encoder::new(AUDIO_SAMPLE_RATE, channels, opus::Application::Audio)
            .map_err(opus_err)?;
        encoder
            .set_bitrate(opus::Bitrate::Bits(AUDIO_BITRATE_BPS))
            .map_err(opus_err)?;
        Ok(AudioGen {
            encoder,
            next_seq: 0,
            pcm: vec![0; (AUDIO_FRAME_SAMPLES * u32::from(AUDIO_CHANNELS)) as usize],
            out: vec![0; AUDIO_MAX_PACKET],
        })
    }

    /// Encodes the 20 ms in slot `index`.
    fn produce(&mut self, index: u64, captured_at: Instant) -> Result<EncodedAudio, SourceFault> {
        let first_sample = index * u64::from(AUDIO_FRAME_SAMPLES);
        fill_tone(first_sample, usize::from(AUDIO_CHANNELS), &mut self.pcm);
        let len =
            self.encoder
                .encode(&self.pcm, &mut self.out)
                .map_err(|e| SourceFault::Encoder {
                    codec: "opus",
                    detail: e.to_string(),
                })?;
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(EncodedAudio {
            seq,
            pts_48k: first_sample,
            opus: Bytes::copy_from_slice(&self.out[..len]),
            captured_at,
        })
    }
}

/// A soft 440 Hz tone under an 880 Hz beep for the first 120 ms of every
/// second, interleaved over `channels`, starting at sample `first`.
fn fill_tone(first: u64, channels: usize, out: &mut [i16]) {
    use std::f64::consts::TAU;
    let rate = u64::from(AUDIO_SAMPLE_RATE);
    for (i, frame) in out.chunks_exact_mut(channels).enumerate() {
        // Both frequencies divide the rate, so one second is a whole period.
        let s = (first + i as u64) % rate;
        let t = s as f64 / rate as f64;
        let mut v = 0.08 * (TAU * 440.0 * t).sin();
        let beep_len = 0.120;
        if t < beep_len {
            let fade = (t / 0.005).min((beep_len - t) / 0.005).min(1.0);
            v += 0.25 * fade * (TAU * 880.0 * t).sin();
        }
        frame.fill((v * f64::from(i16::MAX)) as i16);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceExit;
    use openh264::formats::YUVSource;
    use std::process::Command;

    const WAIT: Duration = Duration::from_secs(15);

    fn config(width: u32, height: u32, fps: u32) -> Config {
        Config {
            width,
            height,
            fps,
            bitrate_kbps: 500,
            keyframe_interval: KEYFRAME_INTERVAL,
            fail_at_seq: None,
        }
    }

    async fn next_video(rx: &mut broadcast::Receiver<Media>) -> Arc<EncodedVideo> {
        let wait = async {
            loop {
                match rx.recv().await {
                    Ok(Media::Video(v)) => return v,
                    Ok(Media::Audio(_) | Media::VideoPackets(_)) => {}
                    Err(e) => panic!("receiving media: {e}"),
                }
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .expect("no video frame in time")
    }

    async fn videos(rx: &mut broadcast::Receiver<Media>, n: usize) -> Vec<Arc<EncodedVideo>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(next_video(rx).await);
        }
        out
    }

    async fn next_audio(rx: &mut broadcast::Receiver<Media>) -> Arc<EncodedAudio> {
        let wait = async {
            loop {
                match rx.recv().await {
                    Ok(Media::Audio(a)) => return a,
                    Ok(Media::Video(_) | Media::VideoPackets(_)) => {}
                    Err(e) => panic!("receiving media: {e}"),
                }
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .expect("no audio packet in time")
    }

    fn types(annexb: &[u8]) -> Vec<u8> {
        nal_units(annexb).map(nal_type).collect()
    }

    #[tokio::test]
    async fn ffprobe_reads_320x240_constrained_baseline() {
        let (handle, mut rx) = start(config(320, 240, 30)).unwrap();
        let frames = videos(&mut rx, 60).await;
        handle.stop().await;

        // Output order and timing.
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(f.seq, i as u64);
            assert_eq!((f.width, f.height), (320, 240));
            assert_eq!(f.pts_90k % 3000, 0, "pts on the 30 fps grid");
        }
        assert!(frames.windows(2).all(|w| w[1].pts_90k > w[0].pts_90k));
        assert!(frames[0].keyframe, "the first frame is an IDR");
        for f in frames.iter().filter(|f| f.keyframe) {
            let t = types(&f.annexb);
            assert!(
                t.contains(&NAL_SPS) && t.contains(&NAL_PPS),
                "IDR without SPS/PPS: {t:?}"
            );
        }

        let path =
            std::env::temp_dir().join(format!("synthetic-{}-ffprobe.h264", std::process::id()));
        let stream: Vec<u8> = frames
            .iter()
            .flat_map(|f| f.annexb.iter().copied())
            .collect();
        std::fs::write(&path, &stream).unwrap();
        let output = Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-count_frames",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=width,height,profile,nb_read_frames",
                "-of",
                "json",
            ])
            .arg(&path)
            .output();
        let _ = std::fs::remove_file(&path);
        let output = match output {
            Ok(o) => o,
            Err(e) => panic!("cannot run ffprobe ({e}); run scripts/setup.sh to install ffmpeg"),
        };
        assert!(
            output.status.success(),
            "ffprobe: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        eprintln!("ffprobe: {json}");
        let stream = &json["streams"][0];
        assert_eq!(stream["width"], 320);
        assert_eq!(stream["height"], 240);
        let profile = stream["profile"].as_str().unwrap_or_default();
        assert!(
            profile == "Constrained Baseline" || profile == "Baseline",
            "profile {profile}"
        );
        assert_eq!(stream["nb_read_frames"], frames.len().to_string());
    }

    #[tokio::test]
    async fn decodes_in_process_with_openh264() {
        let (handle, mut rx) = start(config(320, 240, 30)).unwrap();
        let frames = videos(&mut rx, 20).await;
        handle.stop().await;
        let mut decoder = openh264::decoder::Decoder::new().unwrap();
        let mut decoded = 0;
        for f in &frames {
            if let Some(picture) = decoder.decode(&f.annexb).unwrap() {
                assert_eq!(picture.dimensions(), (320, 240));
                decoded += 1;
            }
        }
        assert_eq!(decoded, frames.len());
    }

    #[tokio::test]
    async fn public_factory_starts_and_stops() {
        let spec = SourceSpec::Synthetic {
            width: 320,
            height: 240,
            fps: 30,
            bitrate_kbps: 300,
        };
        let handle = SyntheticFactory.start(&spec).unwrap();
        let mut rx = handle.subscribe();
        let f = next_video(&mut rx).await;
        assert_eq!((f.width, f.height), (320, 240));
        assert!(handle.frames_encoded() > f.seq);
        handle.stop().await;
    }

    #[test]
    fn invalid_specs_are_refused() {
        let odd = SourceSpec::Synthetic {
            width: 321,
            height: 240,
            fps: 30,
            bitrate_kbps: 300,
        };
        assert!(matches!(
            SyntheticFactory.start(&odd),
            Err(SourceError::InvalidSpec(_))
        ));
    }

    #[tokio::test]
    async fn request_keyframe_makes_one_of_the_next_frames_an_idr() {
        let mut cfg = config(320, 240, 30);
        cfg.keyframe_interval = Duration::from_secs(600);
        let (handle, mut rx) = start(cfg).unwrap();
        let first = videos(&mut rx, 5).await;
        assert!(first[0].keyframe);
        assert!(
            first[1..].iter().all(|f| !f.keyframe),
            "no IDR unless asked"
        );
        handle.request_keyframe();
        let next = videos(&mut rx, 3).await;
        assert!(
            next.iter().any(|f| f.keyframe),
            "no IDR after request_keyframe"
        );
        handle.stop().await;
    }

    #[tokio::test]
    async fn a_burst_of_requests_gives_one_keyframe() {
        let mut cfg = config(320, 240, 10);
        cfg.keyframe_interval = Duration::from_secs(600);
        let (handle, mut rx) = start(cfg).unwrap();
        videos(&mut rx, 3).await;
        // Right after a frame the thread waits ~100 ms for the next slot, so
        // the whole burst lands before one frame.
        for _ in 0..100 {
            handle.request_keyframe();
        }
        let next = videos(&mut rx, 5).await;
        let keyframes = next.iter().filter(|f| f.keyframe).count();
        assert_eq!(
            keyframes,
            1,
            "{:?}",
            next.iter().map(|f| f.keyframe).collect::<Vec<_>>()
        );
        handle.stop().await;
    }

    #[tokio::test]
    async fn periodic_keyframes() {
        let mut cfg = config(320, 240, 30);
        cfg.keyframe_interval = Duration::from_millis(300); // every 9 frames
        let (handle, mut rx) = start(cfg).unwrap();
        let frames = videos(&mut rx, 30).await;
        handle.stop().await;
        let idr_seqs: Vec<u64> = frames
            .iter()
            .filter(|f| f.keyframe)
            .map(|f| f.seq)
            .collect();
        assert_eq!(idr_seqs, vec![0, 9, 18, 27]);
    }

    #[tokio::test]
    async fn audio_is_50_packets_a_second_of_audible_opus() {
        let (handle, mut rx) = start(config(320, 240, 30)).unwrap();
        let mut packets = Vec::new();
        for _ in 0..50 {
            packets.push(next_audio(&mut rx).await);
        }
        handle.stop().await;

        let span = packets[49].captured_at - packets[0].captured_at;
        let slots = (packets[49].pts_48k - packets[0].pts_48k) / u64::from(AUDIO_FRAME_SAMPLES);
        assert!(
            span > Duration::from_millis(900) && span < Duration::from_millis(1500),
            "50 packets took {span:?}"
        );
        assert!(slots < 60, "{slots} slots for 50 packets: too many skipped");
        for (i, p) in packets.iter().enumerate() {
            assert_eq!(p.seq, i as u64);
            assert_eq!(p.pts_48k % u64::from(AUDIO_FRAME_SAMPLES), 0);
        }

        let mut decoder = opus::Decoder::new(AUDIO_SAMPLE_RATE, opus::Channels::Stereo).unwrap();
        let mut pcm = vec![0i16; 5760 * 2];
        for (i, p) in packets.iter().enumerate() {
            let samples = decoder.decode(&p.opus, &mut pcm, false).unwrap();
            assert_eq!(samples, AUDIO_FRAME_SAMPLES as usize);
            let out = &pcm[..samples * 2];
            let rms =
                (out.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / out.len() as f64).sqrt();
            // The first packet is partly codec delay.
            if i > 0 {
                assert!(rms > 500.0, "packet {i} is near silent (rms {rms:.0})");
            }
        }
    }

    #[test]
    fn tone_is_loud_enough_and_beeps() {
        let mut quiet = vec![0i16; 960 * 2];
        let mut beep = vec![0i16; 960 * 2];
        fill_tone(24_000, 2, &mut quiet); // half a second in: tone only
        fill_tone(960, 2, &mut beep); // 20 ms in: beep
        let peak = |v: &[i16]| v.iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!(peak(&quiet) > 2000);
        assert!(peak(&beep) > peak(&quiet) * 3);
        // Stereo channels carry the same signal.
        assert!(quiet.chunks(2).all(|c| c[0] == c[1]));
    }

    /// Encodes one frame with `overlay` and decodes it again.
    fn encode_decode(overlay: Overlay) -> Vec<u8> {
        let mut video = VideoGen::new(&config(320, 240, 30)).unwrap();
        video.overlay = overlay;
        let wallclock = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let frame = video
            .produce(5, false, Instant::now(), wallclock)
            .unwrap()
            .unwrap();
        let mut decoder = openh264::decoder::Decoder::new().unwrap();
        let picture = decoder.decode(&frame.annexb).unwrap().expect("one picture");
        let (w, h) = picture.dimensions();
        let stride = picture.strides().0;
        (0..h)
            .flat_map(|r| picture.y()[r * stride..r * stride + w].to_vec())
            .collect()
    }

    #[test]
    fn overlay_changes_the_encoded_picture_around_the_cursor() {
        let at = |x, y| Overlay {
            cursor: Some((x, y)),
            ..Overlay::default()
        };
        let a = encode_decode(at(200, 150));
        let b = encode_decode(at(80, 180));
        let luma = |img: &[u8], x: usize, y: usize| img[y * 320 + x];
        // The crosshair centre is near white where the cursor is, and the
        // background (at most ~170 luma there) where it is not.
        assert!(luma(&a, 200, 150) > 210, "{}", luma(&a, 200, 150));
        assert!(luma(&b, 200, 150) < 190, "{}", luma(&b, 200, 150));
        assert!(luma(&b, 80, 180) > 210, "{}", luma(&b, 80, 180));
        assert!(luma(&a, 80, 180) < 190, "{}", luma(&a, 80, 180));
    }

    #[tokio::test]
    async fn merged_input_is_drawn_into_the_stream() {
        let (handle, mut rx) = start(config(320, 240, 30)).unwrap();
        let mut decoder = openh264::decoder::Decoder::new().unwrap();
        let mut centre_luma = |f: &EncodedVideo| {
            let p = decoder
                .decode(&f.annexb)
                .unwrap()
                .expect("a picture per frame");
            p.y()[150 * p.strides().0 + 200]
        };
        for f in videos(&mut rx, 3).await {
            assert!(centre_luma(&f) < 205);
        }
        assert_eq!(handle.input_route(), bus_schema::InputRoute::Source);
        // The pointer to (200, 150) of 320x240 in normalised units.
        let sent = handle.send_input(&[
            bus_schema::SourceEvent::MouseAbs {
                x: (200 * 65535 / 319) as u16 + 1,
                y: (150 * 65535 / 239) as u16 + 1,
            },
            bus_schema::SourceEvent::Key {
                code: "KeyA".into(),
                down: true,
            },
        ]);
        assert_eq!(sent, 2);
        let mut seen = false;
        for f in videos(&mut rx, 5).await {
            seen |= centre_luma(&f) > 215;
        }
        assert!(seen, "the cursor never showed");
        handle.stop().await;
    }

    #[tokio::test]
    async fn stop_is_prompt_and_leaves_no_thread() {
        let (handle, mut rx) = start(config(320, 240, 30)).unwrap();
        next_video(&mut rx).await;
        let started = Instant::now();
        handle.stop().await;
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "stop took {:?}",
            started.elapsed()
        );
        // Every sender is gone: both threads have ended and the handle too.
        loop {
            match rx.try_recv() {
                Ok(_) => {}
                Err(broadcast::error::TryRecvError::Closed) => break,
                Err(e) => panic!("expected the stream to be closed, got {e:?}"),
            }
        }
    }

    #[tokio::test]
    async fn drop_without_stop_ends_the_threads() {
        let (mut handle, mut rx) = start(config(320, 240, 30)).unwrap();
        next_video(&mut rx).await;
        let threads = handle.take_threads();
        assert_eq!(threads.len(), 2);
        let started = Instant::now();
        drop(handle);
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "drop blocked"
        );
        // Joining waits for the threads' actual end; bounded.
        let joined = tokio::task::spawn_blocking(move || {
            threads
                .into_iter()
                .map(|t| t.join().is_ok())
                .collect::<Vec<_>>()
        });
        let joined = tokio::time::timeout(Duration::from_secs(2), joined)
            .await
            .expect("threads still running 2 s after the drop")
            .unwrap();
        assert_eq!(joined, vec![true, true]);
    }

    #[tokio::test]
    async fn failure_mid_run_ends_the_source_with_a_reason() {
        let mut cfg = config(320, 240, 30);
        cfg.fail_at_seq = Some(3);
        let (mut handle, mut rx) = start(cfg).unwrap();
        let exit = tokio::time::timeout(WAIT, handle.exited())
            .await
            .expect("exited resolves after a failure");
        assert_eq!(exit, SourceExit::Failed(SourceFault::Injected(3)));
        assert_eq!(videos(&mut rx, 3).await.last().unwrap().seq, 2);
        handle.stop().await;
    }

    #[test]
    fn pacer_keeps_the_grid_and_skips_instead_of_bursting() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = Pacer::new(t0, 30, 0);
        assert_eq!(p.next_deadline(), t0);
        assert_eq!(p.take(t0), (0, 0));
        // Tick 1 at 33.333 ms; woken a little late still gives tick 1.
        assert_eq!(p.next_deadline(), t0 + Duration::from_nanos(33_333_333));
        assert_eq!(p.take(t0 + ms(40)), (1, 0));
        // Far behind: jump to the tick due now, not a burst of the missed ones.
        assert_eq!(p.take(t0 + ms(1000)), (30, 28));
        assert_eq!(p.next_deadline(), t0 + Duration::from_nanos(1_033_333_333));
        // No drift after many ticks: tick 30 000 is exactly 1000 s in.
        let p = Pacer::new(t0, 30, 30_000);
        assert_eq!(p.next_deadline(), t0 + Duration::from_secs(1000));
    }

    #[test]
    fn level_fits_the_stream() {
        let name = |l: Level| format!("{l:?}");
        assert_eq!(name(level_for(320, 240, 30, 500)), "Level_3_1");
        assert_eq!(name(level_for(1280, 720, 30, 2500)), "Level_3_1");
        assert_eq!(name(level_for(1280, 720, 60, 2500)), "Level_3_2");
        assert_eq!(name(level_for(1920, 1080, 30, 5000)), "Level_4_0");
        assert_eq!(name(level_for(1920, 1080, 60, 8000)), "Level_4_2");
        assert_eq!(name(level_for(3840, 2160, 30, 20000)), "Level_5_1");
        assert_eq!(name(level_for(3840, 2160, 120, 50000)), "Level_5_2");
        assert_eq!(name(level_for(1280, 720, 30, 30_000)), "Level_4_1");
    }
}
