//! The RTSP handshake: message codec, the `rtspenc://` AES-GCM framing, the
//! SDP attributes, and pure client and host sides.
//!
//! Each request goes over its own TCP connection; the host closes it after
//! replying. The client sends, in order: OPTIONS, DESCRIBE, SETUP
//! `streamid=audio/0/0`, SETUP `streamid=video/0/0`, SETUP
//! `streamid=control/13/0`, ANNOUNCE `streamid=control/13/0` (SDP with the
//! stream settings below), PLAY `/`. Every request carries `CSeq`,
//! `X-GS-ClientVersion: 14` and `Host`; after the first SETUP, the `Session`
//! the host gave.
//!
//! Encrypted RTSP (the launch answer's `sessionUrl0` is `rtspenc://`) frames
//! each message as `0x80000000 | length` (u32 BE), a sequence number (u32
//! BE), a 16-byte GCM tag and the ciphertext, under the session's `rikey`
//! with a 12-byte IV: sequence number LE in bytes 0..4, byte 10 `'C'` (client)
//! or `'H'` (host), byte 11 `'R'`.

use std::collections::BTreeMap;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, KeyInit, Nonce, Tag};
use thiserror::Error;

use crate::control::Origin;

pub const CLIENT_VERSION: &str = "14";
pub const ENCRYPTED_BIT: u32 = 0x8000_0000;
const ENC_HEADER_LEN: usize = 24;

/// Encryption flags of `x-ss-general.encryption*`.
pub const ENC_CONTROL_V2: u32 = 0x01;
pub const ENC_VIDEO: u32 = 0x02;
pub const ENC_AUDIO: u32 = 0x04;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RtspError {
    #[error("malformed RTSP message: {0}")]
    Malformed(&'static str),
    #[error("RTSP message failed AES-GCM authentication")]
    Decrypt,
    #[error("expected an encrypted RTSP message")]
    NotEncrypted,
    #[error("host answered {status} {reason} to {method}")]
    Status {
        method: String,
        status: u16,
        reason: String,
    },
    #[error("ANNOUNCE lacks required attribute {0}")]
    MissingAttribute(String),
    #[error("attribute {0} is not a number")]
    BadAttribute(String),
    #[error("host answered without the {0} header")]
    MissingHeader(&'static str),
    #[error("CSeq {got} answers request {expected}")]
    CSeqMismatch { expected: u32, got: u32 },
    #[error("the handshake is already complete")]
    Finished,
}

/// Request line or status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request { method: String, target: String },
    Response { status: u16, reason: String },
}

/// One RTSP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtspMessage {
    pub start: StartLine,
    pub cseq: u32,
    /// Headers other than CSeq and Content-length, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RtspMessage {
    pub fn request(method: &str, target: &str, cseq: u32) -> Self {
        Self {
            start: StartLine::Request {
                method: method.into(),
                target: target.into(),
            },
            cseq,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn response(status: u16, reason: &str, cseq: u32) -> Self {
        Self {
            start: StartLine::Response {
                status,
                reason: reason.into(),
            },
            cseq,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut s = match &self.start {
            StartLine::Request { method, target } => format!("{method} {target} RTSP/1.0\r\n"),
            StartLine::Response { status, reason } => format!("RTSP/1.0 {status} {reason}\r\n"),
        };
        s.push_str(&format!("CSeq: {}\r\n", self.cseq));
        for (n, v) in &self.headers {
            s.push_str(&format!("{n}: {v}\r\n"));
        }
        if !self.body.is_empty() {
            s.push_str(&format!("Content-length: {}\r\n", self.body.len()));
        }
        s.push_str("\r\n");
        let mut out = s.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }

    /// Parses one message from the start of `buf`. `Ok(None)` when more
    /// bytes are needed; otherwise the message and the bytes it took. Lines
    /// may end in `\n` or `\r\n` (clients differ).
    pub fn parse(buf: &[u8]) -> Result<Option<(Self, usize)>, RtspError> {
        Self::parse_inner(buf, false)
    }

    fn parse_inner(buf: &[u8], complete: bool) -> Result<Option<(Self, usize)>, RtspError> {
        let Some((head_end, body_start)) = find_head_end(buf) else {
            return Ok(None);
        };
        let head =
            std::str::from_utf8(&buf[..head_end]).map_err(|_| RtspError::Malformed("not UTF-8"))?;
        let mut lines = head.lines();
        let first = lines.next().ok_or(RtspError::Malformed("empty"))?.trim();
        let start = if let Some(rest) = first.strip_prefix("RTSP/1.0 ") {
            let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
            StartLine::Response {
                status: code
                    .parse()
                    .map_err(|_| RtspError::Malformed("status code"))?,
                reason: reason.to_string(),
            }
        } else {
            let mut parts = first.split(' ');
            let (Some(method), Some(target), Some("RTSP/1.0")) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(RtspError::Malformed("request line"));
            };
            StartLine::Request {
                method: method.into(),
                target: target.into(),
            }
        };
        let mut cseq = None;
        let mut length = 0usize;
        let mut headers = Vec::new();
        for line in lines {
            let Some((n, v)) = line.split_once(':') else {
                continue;
            };
            let (n, v) = (n.trim(), v.trim());
            if n.eq_ignore_ascii_case("CSeq") {
                cseq = Some(v.parse().map_err(|_| RtspError::Malformed("CSeq"))?);
            } else if n.eq_ignore_ascii_case("Content-length") {
                length = v
                    .parse()
                    .map_err(|_| RtspError::Malformed("Content-length"))?;
            } else {
                headers.push((n.to_string(), v.to_string()));
            }
        }
        let cseq = cseq.ok_or(RtspError::Malformed("no CSeq"))?;
        if complete {
            // The peer closed: the body is what it sent, whatever it declared.
            length = buf.len() - body_start;
        }
        if buf.len() < body_start + length {
            return Ok(None);
        }
        Ok(Some((
            Self {
                start,
                cseq,
                headers,
                body: buf[body_start..body_start + length].to_vec(),
            },
            body_start + length,
        )))
    }

    /// Parses a whole message the peer sent before closing: the body is
    /// everything after the head, whatever Content-length said (clients
    /// miscount it, and hosts may omit it).
    pub fn parse_complete(buf: &[u8]) -> Result<Self, RtspError> {
        Self::parse_inner(buf, true)?
            .map(|(m, _)| m)
            .ok_or(RtspError::Malformed("truncated"))
    }
}

fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    for i in 0..buf.len() {
        if buf[i..].starts_with(b"\r\n\r\n") {
            return Some((i, i + 4));
        }
        if buf[i..].starts_with(b"\n\n") {
            return Some((i, i + 2));
        }
    }
    None
}

/// AES-GCM framing of `rtspenc://`.
pub struct RtspCipher {
    cipher: Aes128Gcm,
}

impl RtspCipher {
    pub fn new(key: &[u8; 16]) -> Self {
        Self {
            cipher: Aes128Gcm::new(key.into()),
        }
    }

    fn iv(seq: u32, origin: Origin) -> [u8; 12] {
        let mut iv = [0u8; 12];
        iv[..4].copy_from_slice(&seq.to_le_bytes());
        iv[10] = match origin {
            Origin::Client => b'C',
            Origin::Host => b'H',
        };
        iv[11] = b'R';
        iv
    }

    pub fn seal(&self, seq: u32, origin: Origin, plaintext: &[u8]) -> Vec<u8> {
        let mut body = plaintext.to_vec();
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&Self::iv(seq, origin)), &[], &mut body)
            .expect("AES-GCM encrypts any RTSP message");
        let mut out = Vec::with_capacity(ENC_HEADER_LEN + body.len());
        out.extend_from_slice(&(ENCRYPTED_BIT | body.len() as u32).to_be_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&tag);
        out.extend_from_slice(&body);
        out
    }

    /// Opens one framed message from the start of `buf`; `Ok(None)` when
    /// more bytes are needed.
    pub fn open(&self, origin: Origin, buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, RtspError> {
        if buf.len() < ENC_HEADER_LEN {
            return Ok(None);
        }
        let type_len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if type_len & ENCRYPTED_BIT == 0 {
            return Err(RtspError::NotEncrypted);
        }
        let len = (type_len & !ENCRYPTED_BIT) as usize;
        if buf.len() < ENC_HEADER_LEN + len {
            return Ok(None);
        }
        let seq = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let mut body = buf[ENC_HEADER_LEN..ENC_HEADER_LEN + len].to_vec();
        self.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&Self::iv(seq, origin)),
                &[],
                &mut body,
                Tag::from_slice(&buf[8..24]),
            )
            .map_err(|_| RtspError::Decrypt)?;
        Ok(Some((body, ENC_HEADER_LEN + len)))
    }
}

/// `a=name:value` attributes of an SDP body (and bare `name=value` lines
/// hosts send, such as `sprop-parameter-sets`). Values are trimmed.
pub fn sdp_attributes(body: &[u8]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in String::from_utf8_lossy(body).lines() {
        let line = line.trim();
        if let Some(a) = line.strip_prefix("a=") {
            if let Some((n, v)) = a.split_once(':') {
                out.insert(n.trim().to_string(), v.trim().to_string());
            }
        } else if let Some((n, v)) = line.split_once('=') {
            if n.len() > 1 {
                out.insert(n.to_string(), v.trim().to_string());
            }
        }
    }
    out
}

/// Video codec negotiated in ANNOUNCE (`x-nv-vqos[0].bitStreamFormat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    H264,
    Hevc,
    Av1,
}

impl VideoCodec {
    fn wire(self) -> u32 {
        match self {
            VideoCodec::H264 => 0,
            VideoCodec::Hevc => 1,
            VideoCodec::Av1 => 2,
        }
    }
}

/// The stream settings a client announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
    pub packet_size: u32,
    pub codec: VideoCodec,
    pub audio_channels: u32,
    pub audio_channel_mask: u32,
    pub audio_packet_duration_ms: u32,
    pub min_fec_packets: u32,
    /// `ENC_*` flags the client enables (of those the host supports).
    pub encryption: u32,
}

impl StreamSettings {
    pub fn new(width: u32, height: u32, fps: u32, bitrate_kbps: u32) -> Self {
        Self {
            width,
            height,
            fps,
            bitrate_kbps,
            packet_size: 1392,
            codec: VideoCodec::H264,
            audio_channels: 2,
            audio_channel_mask: 3,
            audio_packet_duration_ms: 5,
            min_fec_packets: 2,
            encryption: 0,
        }
    }

    /// The ANNOUNCE body: every attribute Sunshine reads with `args.at`.
    pub fn to_sdp(&self, client_ip: &str) -> Vec<u8> {
        let attrs: Vec<(&str, String)> = vec![
            ("x-nv-general.serverAddress", client_ip.to_string()),
            ("x-nv-general.featureFlags", "167".into()),
            ("x-nv-general.useReliableUdp", "13".into()),
            ("x-ml-general.featureFlags", "7".into()),
            (
                "x-ss-general.encryptionEnabled",
                self.encryption.to_string(),
            ),
            ("x-nv-video[0].clientViewportWd", self.width.to_string()),
            ("x-nv-video[0].clientViewportHt", self.height.to_string()),
            ("x-nv-video[0].maxFPS", self.fps.to_string()),
            (
                "x-nv-video[0].clientRefreshRateX100",
                (self.fps * 100).to_string(),
            ),
            ("x-nv-video[0].packetSize", self.packet_size.to_string()),
            ("x-nv-video[0].rateControlMode", "4".into()),
            ("x-nv-video[0].timeoutLengthMs", "7000".into()),
            ("x-nv-video[0].framesWithInvalidRefThreshold", "0".into()),
            (
                "x-nv-video[0].initialBitrateKbps",
                self.bitrate_kbps.to_string(),
            ),
            (
                "x-nv-video[0].initialPeakBitrateKbps",
                self.bitrate_kbps.to_string(),
            ),
            (
                "x-nv-vqos[0].bw.minimumBitrateKbps",
                self.bitrate_kbps.to_string(),
            ),
            (
                "x-nv-vqos[0].bw.maximumBitrateKbps",
                self.bitrate_kbps.to_string(),
            ),
            (
                "x-ml-video.configuredBitrateKbps",
                self.bitrate_kbps.to_string(),
            ),
            ("x-nv-vqos[0].fec.enable", "1".into()),
            (
                "x-nv-vqos[0].fec.minRequiredFecPackets",
                self.min_fec_packets.to_string(),
            ),
            ("x-nv-vqos[0].videoQualityScoreUpdateTime", "5000".into()),
            ("x-nv-vqos[0].qosTrafficType", "5".into()),
            ("x-nv-aqos.qosTrafficType", "4".into()),
            ("x-nv-vqos[0].drc.enable", "0".into()),
            ("x-nv-general.enableRecoveryMode", "0".into()),
            ("x-nv-video[0].videoEncoderSlicesPerFrame", "1".into()),
            (
                "x-nv-clientSupportHevc",
                u32::from(self.codec == VideoCodec::Hevc).to_string(),
            ),
            (
                "x-nv-vqos[0].bitStreamFormat",
                self.codec.wire().to_string(),
            ),
            ("x-nv-video[0].dynamicRangeMode", "0".into()),
            ("x-nv-video[0].maxNumReferenceFrames", "0".into()),
            ("x-ss-video[0].chromaSamplingType", "0".into()),
            ("x-ss-video[0].intraRefresh", "0".into()),
            ("x-nv-video[0].encoderCscMode", "0".into()),
            (
                "x-nv-audio.surround.numChannels",
                self.audio_channels.to_string(),
            ),
            (
                "x-nv-audio.surround.channelMask",
                self.audio_channel_mask.to_string(),
            ),
            (
                "x-nv-audio.surround.enable",
                u32::from(self.audio_channels > 2).to_string(),
            ),
            ("x-nv-audio.surround.AudioQuality", "0".into()),
            (
                "x-nv-aqos.packetDuration",
                self.audio_packet_duration_ms.to_string(),
            ),
        ];
        let mut s = format!("v=0\r\no=android 0 {CLIENT_VERSION} IN IPv4 {client_ip}\r\ns=NVIDIA Streaming Client\r\n");
        for (n, v) in attrs {
            s.push_str(&format!("a={n}:{v} \r\n"));
        }
        s.push_str("t=0 0\r\nm=video 47998  \r\n");
        s.into_bytes()
    }

    /// Host side: reads an ANNOUNCE body, refusing one that lacks an
    /// attribute a host needs.
    pub fn from_sdp(body: &[u8]) -> Result<Self, RtspError> {
        let a = sdp_attributes(body);
        let num = |name: &str| -> Result<u32, RtspError> {
            a.get(name)
                .ok_or_else(|| RtspError::MissingAttribute(name.into()))?
                .parse()
                .map_err(|_| RtspError::BadAttribute(name.into()))
        };
        let opt = |name: &str, default: u32| -> Result<u32, RtspError> {
            match a.get(name) {
                None => Ok(default),
                Some(v) => v.parse().map_err(|_| RtspError::BadAttribute(name.into())),
            }
        };
        let codec = match opt("x-nv-vqos[0].bitStreamFormat", 0)? {
            1 => VideoCodec::Hevc,
            2 => VideoCodec::Av1,
            _ => VideoCodec::H264,
        };
        Ok(Self {
            width: num("x-nv-video[0].clientViewportWd")?,
            height: num("x-nv-video[0].clientViewportHt")?,
            fps: num("x-nv-video[0].maxFPS")?,
            bitrate_kbps: opt("x-nv-vqos[0].bw.maximumBitrateKbps", 10_000)?,
            packet_size: num("x-nv-video[0].packetSize")?,
            codec,
            audio_channels: num("x-nv-audio.surround.numChannels")?,
            audio_channel_mask: num("x-nv-audio.surround.channelMask")?,
            audio_packet_duration_ms: opt("x-nv-aqos.packetDuration", 5)?,
            min_fec_packets: opt("x-nv-vqos[0].fec.minRequiredFecPackets", 0)?,
            encryption: opt("x-ss-general.encryptionEnabled", 0)?,
        })
    }
}

/// What the host said in DESCRIBE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostCapabilities {
    pub feature_flags: u32,
    pub encryption_supported: u32,
    pub encryption_requested: u32,
    pub hevc: bool,
    pub av1: bool,
    pub ref_pic_invalidation: bool,
}

impl HostCapabilities {
    pub fn from_sdp(body: &[u8]) -> Self {
        let a = sdp_attributes(body);
        let num = |n: &str| a.get(n).and_then(|v| v.parse().ok()).unwrap_or(0);
        Self {
            feature_flags: num("x-ss-general.featureFlags"),
            encryption_supported: num("x-ss-general.encryptionSupported"),
            encryption_requested: num("x-ss-general.encryptionRequested"),
            hevc: a.contains_key("sprop-parameter-sets"),
            av1: a.get("rtpmap").is_some_and(|v| v.contains("AV1")),
            ref_pic_invalidation: num("x-nv-video[0].refPicInvalidation") == 1,
        }
    }

    pub fn to_sdp(&self) -> Vec<u8> {
        let mut s = String::new();
        if self.hevc {
            s.push_str("sprop-parameter-sets=AAAAAU\r\n");
        }
        if self.av1 {
            s.push_str("a=rtpmap:98 AV1/90000\r\n");
        }
        s.push_str(&format!(
            "a=x-ss-general.featureFlags:{}\r\n",
            self.feature_flags
        ));
        s.push_str(&format!(
            "a=x-ss-general.encryptionSupported:{}\r\n",
            self.encryption_supported
        ));
        s.push_str(&format!(
            "a=x-ss-general.encryptionRequested:{}\r\n",
            self.encryption_requested
        ));
        if self.ref_pic_invalidation {
            s.push_str("a=x-nv-video[0].refPicInvalidation:1\r\n");
        }
        s.push_str("a=fmtp:97 surround-params=21101\r\n");
        s.into_bytes()
    }
}

/// What the handshake established, for the stream's sockets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Negotiated {
    pub session: String,
    pub audio_port: u16,
    pub video_port: u16,
    pub control_port: u16,
    /// `X-SS-Ping-Payload` of the audio and video SETUP answers.
    pub audio_ping: Option<String>,
    pub video_ping: Option<String>,
    /// `X-SS-Connect-Data` of the control SETUP answer (ENet connect data).
    pub control_connect_data: Option<u32>,
    pub capabilities: HostCapabilities,
    /// Encryption flags announced (the host's supported ∩ the client's).
    pub encryption: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Options,
    Describe,
    SetupAudio,
    SetupVideo,
    SetupControl,
    Announce,
    Play,
    Done,
}

/// Client side of the handshake: call [`next_request`](Self::next_request),
/// send it on a new connection, feed the answer to
/// [`on_response`](Self::on_response), until [`is_done`](Self::is_done).
#[derive(Debug)]
pub struct RtspClient {
    host: String,
    client_ip: String,
    settings: StreamSettings,
    step: Step,
    cseq: u32,
    negotiated: Negotiated,
}

impl RtspClient {
    pub fn new(host: &str, client_ip: &str, settings: StreamSettings) -> Self {
        Self {
            host: host.into(),
            client_ip: client_ip.into(),
            settings,
            step: Step::Options,
            cseq: 0,
            negotiated: Negotiated::default(),
        }
    }

    pub fn is_done(&self) -> bool {
        self.step == Step::Done
    }

    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// The settings as announced (encryption narrowed to the host's).
    pub fn settings(&self) -> &StreamSettings {
        &self.settings
    }

    pub fn next_request(&mut self) -> Result<RtspMessage, RtspError> {
        let (method, target) = match self.step {
            Step::Options => ("OPTIONS", format!("rtsp://{}:48010", self.host)),
            Step::Describe => ("DESCRIBE", format!("rtsp://{}:48010", self.host)),
            Step::SetupAudio => ("SETUP", "streamid=audio/0/0".into()),
            Step::SetupVideo => ("SETUP", "streamid=video/0/0".into()),
            Step::SetupControl => ("SETUP", "streamid=control/13/0".into()),
            Step::Announce => ("ANNOUNCE", "streamid=control/13/0".into()),
            Step::Play => ("PLAY", "/".into()),
            Step::Done => return Err(RtspError::Finished),
        };
        self.cseq += 1;
        let mut m = RtspMessage::request(method, &target, self.cseq)
            .with_header("X-GS-ClientVersion", CLIENT_VERSION)
            .with_header("Host", &self.host);
        if !self.negotiated.session.is_empty() {
            m = m.with_header("Session", &self.negotiated.session);
        }
        match self.step {
            Step::Describe => m = m.with_header("Accept", "application/sdp"),
            Step::SetupAudio | Step::SetupVideo | Step::SetupControl => {
                m = m
                    .with_header("Transport", "unicast;X-GS-ClientPort=50000-50001")
                    .with_header("If-Modified-Since", "Thu, 01 Jan 1970 00:00:00 GMT")
            }
            Step::Announce => {
                m = m.with_header("Content-type", "application/sdp");
                m.body = self.settings.to_sdp(&self.client_ip);
            }
            _ => {}
        }
        Ok(m)
    }

    pub fn on_response(&mut self, r: &RtspMessage) -> Result<(), RtspError> {
        let method = match self.step {
            Step::Options => "OPTIONS",
            Step::Describe => "DESCRIBE",
            Step::SetupAudio | Step::SetupVideo | Step::SetupControl => "SETUP",
            Step::Announce => "ANNOUNCE",
            Step::Play => "PLAY",
            Step::Done => return Err(RtspError::Finished),
        };
        if r.cseq != self.cseq {
            return Err(RtspError::CSeqMismatch {
                expected: self.cseq,
                got: r.cseq,
            });
        }
        match &r.start {
            StartLine::Response { status: 200, .. } => {}
            StartLine::Response { status, reason } => {
                return Err(RtspError::Status {
                    method: method.into(),
                    status: *status,
                    reason: reason.clone(),
                })
            }
            StartLine::Request { .. } => return Err(RtspError::Malformed("expected a response")),
        }
        let port = |r: &RtspMessage| -> Result<u16, RtspError> {
            let t = r
                .header("Transport")
                .ok_or(RtspError::MissingHeader("Transport"))?;
            t.split(';')
                .find_map(|p| p.trim().strip_prefix("server_port="))
                .and_then(|p| p.split('-').next()?.parse().ok())
                .ok_or(RtspError::Malformed("Transport server_port"))
        };
        self.step = match self.step {
            Step::Options => Step::Describe,
            Step::Describe => {
                let caps = HostCapabilities::from_sdp(&r.body);
                self.settings.encryption &= caps.encryption_supported;
                self.settings.encryption |= caps.encryption_requested & caps.encryption_supported;
                self.negotiated.encryption = self.settings.encryption;
                self.negotiated.capabilities = caps;
                Step::SetupAudio
            }
            Step::SetupAudio => {
                let session = r
                    .header("Session")
                    .ok_or(RtspError::MissingHeader("Session"))?;
                self.negotiated.session =
                    session.split(';').next().unwrap_or("").trim().to_string();
                self.negotiated.audio_port = port(r)?;
                self.negotiated.audio_ping = r.header("X-SS-Ping-Payload").map(str::to_string);
                Step::SetupVideo
            }
            Step::SetupVideo => {
                self.negotiated.video_port = port(r)?;
                self.negotiated.video_ping = r.header("X-SS-Ping-Payload").map(str::to_string);
                Step::SetupControl
            }
            Step::SetupControl => {
                self.negotiated.control_port = port(r)?;
                self.negotiated.control_connect_data =
                    r.header("X-SS-Connect-Data").and_then(|v| v.parse().ok());
                Step::Announce
            }
            Step::Announce => Step::Play,
            Step::Play => Step::Done,
            Step::Done => Step::Done,
        };
        Ok(())
    }
}

/// The host's configuration for its RTSP side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    pub capabilities: HostCapabilities,
    pub audio_port: u16,
    pub video_port: u16,
    pub control_port: u16,
    pub audio_ping: String,
    pub video_ping: String,
    pub control_connect_data: u32,
}

/// Host side: answers each request; keeps the announced settings.
#[derive(Debug)]
pub struct RtspHost {
    config: HostConfig,
    announced: Option<StreamSettings>,
    played: bool,
}

pub const SESSION_ID: &str = "DEADBEEFCAFE";

impl RtspHost {
    pub fn new(config: HostConfig) -> Self {
        Self {
            config,
            announced: None,
            played: false,
        }
    }

    pub fn announced(&self) -> Option<&StreamSettings> {
        self.announced.as_ref()
    }

    /// True once PLAY was answered: the stream may start.
    pub fn played(&self) -> bool {
        self.played
    }

    pub fn handle(&mut self, req: &RtspMessage) -> RtspMessage {
        let ok = RtspMessage::response(200, "OK", req.cseq);
        let StartLine::Request { method, target } = &req.start else {
            return RtspMessage::response(400, "BAD REQUEST", req.cseq);
        };
        match method.as_str() {
            "OPTIONS" => ok,
            "DESCRIBE" => {
                let mut r = ok;
                r.body = self.config.capabilities.to_sdp();
                r
            }
            "SETUP" => {
                let kind = target
                    .strip_prefix("streamid=")
                    .and_then(|t| t.split('/').next())
                    .unwrap_or("");
                let (port, extra) = match kind {
                    "audio" => (
                        self.config.audio_port,
                        Some(("X-SS-Ping-Payload", self.config.audio_ping.clone())),
                    ),
                    "video" => (
                        self.config.video_port,
                        Some(("X-SS-Ping-Payload", self.config.video_ping.clone())),
                    ),
                    "control" => (
                        self.config.control_port,
                        Some((
                            "X-SS-Connect-Data",
                            self.config.control_connect_data.to_string(),
                        )),
                    ),
                    _ => return RtspMessage::response(404, "NOT FOUND", req.cseq),
                };
                let mut r = ok
                    .with_header("Session", &format!("{SESSION_ID};timeout = 90"))
                    .with_header("Transport", &format!("server_port={port}"));
                if let Some((n, v)) = extra {
                    r = r.with_header(n, &v);
                }
                r
            }
            "ANNOUNCE" => match StreamSettings::from_sdp(&req.body) {
                Ok(s) => {
                    self.announced = Some(s);
                    ok
                }
                Err(_) => RtspMessage::response(400, "BAD REQUEST", req.cseq),
            },
            "PLAY" if self.announced.is_some() => {
                self.played = true;
                ok
            }
            "PLAY" => RtspMessage::response(400, "BAD REQUEST", req.cseq),
            _ => RtspMessage::response(404, "NOT FOUND", req.cseq),
        }
    }
}

#[cfg(test)]
mod tests;
