//! Video stream: wire headers, the host-side packetizer and the client-side
//! [`Depacketizer`].
//!
//! A video datagram is one FEC shard of `block_size = packet_size + 16` bytes
//! (optionally behind a 32-byte AES-GCM prefix, see [`ENC_PREFIX_LEN`]):
//!
//! ```text
//! 0      12 RTP header: 0x90 (v2 + extension), type, seq (BE), timestamp (BE, 90 kHz), ssrc
//! 12     16 4 reserved bytes (the RTP extension)
//! 16     32 NV header (LE): stream packet index << 8, frame index, flags,
//!           extra flags, multi-FEC flags (0x10), multi-FEC blocks
//!           (block << 4 | last block << 6), fecInfo (index << 12 | data shards << 22 | percent << 4)
//! 32    ... frame data: the first packet of a frame starts with the 8-byte frame header
//! ```
//!
//! The frame's bytes (frame header + access unit) are cut into chunks of
//! `packet_size - 16` bytes, one per data shard, and split into up to four FEC
//! blocks; each block gets `ceil(data * percent / 100)` Cauchy parity shards
//! ([`crate::fec`]), computed over whole shards while the RTP header and
//! fecInfo are still zero, as Sunshine does. The frame header's last-payload
//! length lets the client cut the zero padding off, so access units come out
//! byte for byte as the host's encoder wrote them.
//!
//! [`Depacketizer`] behaviour:
//! - packets are sorted into (frame, FEC block) by their NV header; duplicates
//!   and packets for frames already delivered or given up are ignored;
//! - a block is done when all its data shards arrived, or when data + parity
//!   received reach the data count, then lost data shards are recovered;
//! - frames are delivered strictly in frame order as [`VideoEvent::Frame`];
//! - the frame awaited next is given up when a packet of a frame
//!   [`DepacketizerConfig::reorder_frames`] or more ahead arrives, or at
//!   [`Depacketizer::deadline`] (`frame_timeout` after the last packet that
//!   touched it); then [`VideoEvent::RequestIdr`] is emitted once and frames
//!   are dropped until the next IDR frame, which is delivered whole; when the
//!   host offers reference-frame invalidation, [`VideoEvent::InvalidateRefFrames`]
//!   is emitted instead and a frame of type IDR, intra-refresh or
//!   after-invalidation ends the wait;
//! - the stream starts waiting for an IDR (the host's first frame is one).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, KeyInit, Nonce, Tag};
use thiserror::Error;

use crate::fec::{FecError, ReedSolomon, MAX_SHARDS};

/// RTP header plus the 4-byte extension.
pub const RTP_HEADER_LEN: usize = 16;
/// The NV video packet header.
pub const NV_HEADER_LEN: usize = 16;
/// Bytes before frame data in each shard.
pub const SHARD_HEADER_LEN: usize = RTP_HEADER_LEN + NV_HEADER_LEN;
/// The short frame header at the start of each frame.
pub const FRAME_HEADER_LEN: usize = 8;
/// IV (12), frame number (4, LE), GCM tag (16) before an encrypted shard.
pub const ENC_PREFIX_LEN: usize = 32;

pub const FLAG_CONTAINS_PIC_DATA: u8 = 0x1;
pub const FLAG_EOF: u8 = 0x2;
pub const FLAG_SOF: u8 = 0x4;
/// RTP first byte of video packets: version 2 with the extension bit.
pub const RTP_VIDEO_HEADER_BYTE: u8 = 0x80 | 0x10;
/// Most FEC blocks per frame (2 bits on the wire).
pub const MAX_FEC_BLOCKS: usize = 4;

/// The frame type carried in the frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameType {
    /// 1: a P-frame.
    P,
    /// 2: an IDR frame.
    Idr,
    /// 4: a P-frame with intra-refresh blocks.
    IntraRefresh,
    /// 5: a P-frame after reference frame invalidation.
    AfterInvalidation,
    Other(u8),
}

impl FrameType {
    pub fn from_wire(b: u8) -> Self {
        match b {
            1 => Self::P,
            2 => Self::Idr,
            4 => Self::IntraRefresh,
            5 => Self::AfterInvalidation,
            o => Self::Other(o),
        }
    }
    pub fn to_wire(self) -> u8 {
        match self {
            Self::P => 1,
            Self::Idr => 2,
            Self::IntraRefresh => 4,
            Self::AfterInvalidation => 5,
            Self::Other(o) => o,
        }
    }
}

/// The 12-byte RTP header (the 4 extension bytes follow it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RtpHeader {
    pub header: u8,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

impl RtpHeader {
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < 12 {
            return None;
        }
        Some(Self {
            header: b[0],
            payload_type: b[1] & 0x7f,
            sequence: u16::from_be_bytes([b[2], b[3]]),
            timestamp: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        })
    }
    pub fn write(&self, b: &mut [u8]) {
        b[0] = self.header;
        b[1] = self.payload_type;
        b[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        b[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        b[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
    }
    /// Bytes before the payload: 12, or 16 with the extension flag.
    pub fn len(&self) -> usize {
        if self.header & 0x10 != 0 {
            16
        } else {
            12
        }
    }
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// The NV video packet header (little-endian fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NvHeader {
    /// The stream packet index (the wire field is this << 8).
    pub stream_packet_index: u32,
    pub frame_index: u32,
    pub flags: u8,
    pub extra_flags: u8,
    pub multi_fec_flags: u8,
    /// FEC block of this packet within its frame (0..=3).
    pub fec_block: u8,
    /// Last FEC block of the frame (0..=3).
    pub last_fec_block: u8,
    /// Shard index within the FEC block.
    pub fec_index: u16,
    pub data_shards: u16,
    pub fec_percentage: u8,
}

impl NvHeader {
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < NV_HEADER_LEN {
            return None;
        }
        let le = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let fec_info = le(12);
        Some(Self {
            stream_packet_index: le(0) >> 8,
            frame_index: le(4),
            flags: b[8],
            extra_flags: b[9],
            multi_fec_flags: b[10],
            fec_block: (b[11] >> 4) & 0x3,
            last_fec_block: (b[11] >> 6) & 0x3,
            fec_index: ((fec_info >> 12) & 0x3ff) as u16,
            data_shards: (fec_info >> 22) as u16,
            fec_percentage: ((fec_info >> 4) & 0xff) as u8,
        })
    }

    /// Writes every field but fecInfo, which the packetizer sets after FEC.
    fn write_without_fec_info(&self, b: &mut [u8]) {
        b[0..4].copy_from_slice(&(self.stream_packet_index << 8).to_le_bytes());
        b[4..8].copy_from_slice(&self.frame_index.to_le_bytes());
        b[8] = self.flags;
        b[9] = self.extra_flags;
        b[10] = self.multi_fec_flags;
        b[11] = self.multi_fec_blocks();
    }

    pub fn write(&self, b: &mut [u8]) {
        self.write_without_fec_info(b);
        b[12..16].copy_from_slice(&self.fec_info().to_le_bytes());
    }

    pub fn multi_fec_blocks(&self) -> u8 {
        (self.fec_block << 4) | (self.last_fec_block << 6)
    }

    pub fn fec_info(&self) -> u32 {
        (u32::from(self.fec_index) << 12)
            | (u32::from(self.data_shards) << 22)
            | (u32::from(self.fec_percentage) << 4)
    }

    /// Parity shards of this packet's block, as clients compute them.
    pub fn parity_shards(&self) -> usize {
        (usize::from(self.data_shards) * usize::from(self.fec_percentage)).div_ceil(100)
    }
}

/// The 8-byte short frame header (0x01) that starts each frame's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Host processing latency in 1/10 ms (a Sunshine extension).
    pub processing_latency: u16,
    pub frame_type: FrameType,
    /// Bytes of frame data in the frame's final packet.
    pub last_payload_len: u16,
}

impl FrameHeader {
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < FRAME_HEADER_LEN || b[0] != 0x01 {
            return None;
        }
        Some(Self {
            processing_latency: u16::from_le_bytes([b[1], b[2]]),
            frame_type: FrameType::from_wire(b[3]),
            last_payload_len: u16::from_le_bytes([b[4], b[5]]),
        })
    }
    pub fn to_bytes(&self) -> [u8; FRAME_HEADER_LEN] {
        let l = self.processing_latency.to_le_bytes();
        let p = self.last_payload_len.to_le_bytes();
        [
            0x01,
            l[0],
            l[1],
            self.frame_type.to_wire(),
            p[0],
            p[1],
            0,
            0,
        ]
    }
}

/// What the host sends for one encoded frame.
#[derive(Debug, Clone, Copy)]
pub struct HostFrame<'a> {
    pub frame_index: u32,
    pub frame_type: FrameType,
    /// 90 kHz presentation timestamp.
    pub rtp_timestamp: u32,
    /// The access unit (Annex B for H.264/HEVC, OBUs for AV1).
    pub data: &'a [u8],
}

/// Host-side stream settings, as negotiated in RTSP.
#[derive(Debug, Clone)]
pub struct PacketizerConfig {
    /// `x-nv-video[0].packetSize`: shard size minus the 16-byte RTP header.
    pub packet_size: usize,
    pub fec_percentage: u8,
    /// `x-nv-vqos[0].fec.minRequiredFecPackets`.
    pub min_parity: usize,
    /// AES-128-GCM key when video encryption was negotiated.
    pub key: Option<[u8; 16]>,
}

/// Host side: cuts frames into FEC-protected datagrams as Sunshine does.
pub struct Packetizer {
    config: PacketizerConfig,
    sequence: u16,
    iv_counter: u64,
    cipher: Option<Aes128Gcm>,
}

impl Packetizer {
    pub fn new(config: PacketizerConfig) -> Self {
        let cipher = config.key.map(|k| Aes128Gcm::new(&k.into()));
        Self {
            config,
            sequence: 0,
            iv_counter: 0,
            cipher,
        }
    }

    pub fn block_size(&self) -> usize {
        self.config.packet_size + RTP_HEADER_LEN
    }

    /// The datagrams for one frame, data then parity for each FEC block.
    pub fn packetize(&mut self, frame: &HostFrame<'_>) -> Vec<Vec<u8>> {
        let block_size = self.block_size();
        let chunk = block_size - SHARD_HEADER_LEN;
        let total = FRAME_HEADER_LEN + frame.data.len();
        let mut last = total % chunk;
        if last == 0 {
            last = chunk;
        }
        let header = FrameHeader {
            processing_latency: 0,
            frame_type: frame.frame_type,
            last_payload_len: last as u16,
        };
        let header = header.to_bytes();
        let mut bytes = Vec::with_capacity(total);
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(frame.data);
        let chunks: Vec<&[u8]> = bytes.chunks(chunk).collect();

        let mut percentage = usize::from(self.config.fec_percentage);
        let max_data_per_block = (MAX_SHARDS * 100) / (100 + percentage);
        let mut blocks = chunks.len().div_ceil(max_data_per_block);
        if blocks > MAX_FEC_BLOCKS {
            percentage = 0;
            blocks = MAX_FEC_BLOCKS;
        }
        let per_block = chunks.len().div_ceil(blocks);
        let groups: Vec<&[&[u8]]> = chunks.chunks(per_block).collect();
        let last_block = (groups.len() - 1) as u8;

        let mut out = Vec::new();
        for (block, group) in groups.iter().enumerate() {
            let data = group.len();
            let mut parity = (data * percentage).div_ceil(100);
            let mut block_percentage = percentage;
            if parity < self.config.min_parity && percentage != 0 {
                parity = self.config.min_parity;
                block_percentage = 100 * parity / data;
            }
            if data + parity > MAX_SHARDS {
                parity = MAX_SHARDS - data;
            }
            let low = self.sequence;
            let mut shards: Vec<Vec<u8>> = group
                .iter()
                .enumerate()
                .map(|(x, c)| {
                    let mut s = vec![0u8; block_size];
                    let mut flags = FLAG_CONTAINS_PIC_DATA;
                    if x == 0 {
                        flags |= FLAG_SOF;
                    }
                    if x == data - 1 {
                        flags |= FLAG_EOF;
                    }
                    let nv = NvHeader {
                        stream_packet_index: u32::from(low.wrapping_add(x as u16)),
                        frame_index: frame.frame_index,
                        flags,
                        multi_fec_flags: 0x10,
                        fec_block: block as u8,
                        last_fec_block: last_block,
                        ..NvHeader::default()
                    };
                    nv.write_without_fec_info(&mut s[RTP_HEADER_LEN..SHARD_HEADER_LEN]);
                    s[SHARD_HEADER_LEN..SHARD_HEADER_LEN + c.len()].copy_from_slice(c);
                    s
                })
                .collect();
            if parity > 0 {
                let rs = ReedSolomon::new(data, parity).expect("shape checked above");
                let p = rs.encode(&shards).expect("equal shards");
                shards.extend(p);
            }
            for (x, shard) in shards.iter_mut().enumerate() {
                let fec_info =
                    ((x as u32) << 12) | ((data as u32) << 22) | ((block_percentage as u32) << 4);
                shard[RTP_HEADER_LEN + 12..SHARD_HEADER_LEN]
                    .copy_from_slice(&fec_info.to_le_bytes());
                shard[RTP_HEADER_LEN + 11] = ((block as u8) << 4) | (last_block << 6);
                shard[RTP_HEADER_LEN + 4..RTP_HEADER_LEN + 8]
                    .copy_from_slice(&frame.frame_index.to_le_bytes());
                RtpHeader {
                    header: RTP_VIDEO_HEADER_BYTE,
                    payload_type: 0,
                    sequence: low.wrapping_add(x as u16),
                    timestamp: frame.rtp_timestamp,
                    ssrc: 0,
                }
                .write(shard);
            }
            self.sequence = low.wrapping_add(shards.len() as u16);
            for shard in shards {
                out.push(self.seal(frame.frame_index, shard));
            }
        }
        out
    }

    fn seal(&mut self, frame_index: u32, mut shard: Vec<u8>) -> Vec<u8> {
        let Some(cipher) = &self.cipher else {
            return shard;
        };
        let mut iv = [0u8; 12];
        iv[..8].copy_from_slice(&self.iv_counter.to_le_bytes());
        iv[11] = b'V';
        self.iv_counter += 1;
        let tag = cipher
            .encrypt_in_place_detached(Nonce::from_slice(&iv), &[], &mut shard)
            .expect("AES-GCM encrypts any length a datagram has");
        let mut out = Vec::with_capacity(ENC_PREFIX_LEN + shard.len());
        out.extend_from_slice(&iv);
        out.extend_from_slice(&frame_index.to_le_bytes());
        out.extend_from_slice(&tag);
        out.extend_from_slice(&shard);
        out
    }
}

/// Client-side settings.
#[derive(Debug, Clone)]
pub struct DepacketizerConfig {
    /// `x-nv-video[0].packetSize` as negotiated.
    pub packet_size: usize,
    /// AES-128-GCM key when video encryption was negotiated.
    pub key: Option<[u8; 16]>,
    /// How long an incomplete frame may wait for late packets.
    pub frame_timeout: Duration,
    /// A packet this many frames ahead gives up the awaited frame.
    pub reorder_frames: u32,
    /// The host offers reference-frame invalidation (DESCRIBE's
    /// `refPicInvalidation`): after a loss, ask it to stop referencing the
    /// lost frames instead of asking for an IDR.
    pub reference_invalidation: bool,
}

impl DepacketizerConfig {
    pub fn new(packet_size: usize) -> Self {
        Self {
            packet_size,
            key: None,
            frame_timeout: Duration::from_millis(100),
            reorder_frames: 3,
            reference_invalidation: false,
        }
    }
}

/// A whole access unit, as the host's encoder produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    pub frame_index: u32,
    pub frame_type: FrameType,
    pub rtp_timestamp: u32,
    pub data: Vec<u8>,
}

/// What the depacketizer asks of its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoEvent {
    Frame(AccessUnit),
    /// A frame could not be recovered: ask the host for an IDR frame.
    /// `lost_frame` is the first frame given up.
    RequestIdr {
        lost_frame: u32,
    },
    /// A frame could not be recovered and the host offers reference-frame
    /// invalidation: ask it not to reference frames `first..=last` (the lost
    /// one up to the newest seen). Frames are then dropped until one of type
    /// IDR, intra-refresh or after-invalidation arrives.
    InvalidateRefFrames {
        first: u32,
        last: u32,
    },
}

/// Why a datagram was not taken. Bad datagrams are dropped, never fatal.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PacketError {
    #[error("datagram of {0} bytes is too short")]
    TooShort(usize),
    #[error("datagram failed AES-GCM authentication")]
    Decrypt,
    #[error("FEC shape out of range: {data} data, {percentage}% parity, index {index}")]
    BadFecInfo {
        data: u16,
        percentage: u8,
        index: u16,
    },
    #[error("FEC: {0}")]
    Fec(#[from] FecError),
}

/// Counters a caller may read at any time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VideoStats {
    pub packets: u64,
    pub duplicates: u64,
    pub stale: u64,
    pub rejected: u64,
    pub recovered_shards: u64,
    pub frames_delivered: u64,
    pub frames_lost: u64,
    pub frames_dropped_awaiting_idr: u64,
}

#[derive(Debug)]
struct Block {
    data: usize,
    parity: usize,
    shards: Vec<Option<Vec<u8>>>,
    received_data: usize,
    received_parity: usize,
    complete: bool,
}

#[derive(Debug)]
struct Frame {
    rtp_timestamp: u32,
    last_block: u8,
    blocks: BTreeMap<u8, Block>,
    last_touch: Instant,
}

impl Frame {
    fn complete(&self) -> bool {
        self.blocks.len() == usize::from(self.last_block) + 1
            && self.blocks.values().all(|b| b.complete)
    }
}

/// Client side: reassembles datagrams into access units (see module docs).
pub struct Depacketizer {
    config: DepacketizerConfig,
    cipher: Option<Aes128Gcm>,
    block_size: usize,
    /// The frame to deliver next; `None` before the first packet.
    next_frame: Option<u32>,
    frames: BTreeMap<u32, Frame>,
    awaiting_idr: bool,
    /// An invalidation was asked for: a frame of type 4 or 5 also recovers.
    invalidation_pending: bool,
    highest_seen: u32,
    events: VecDeque<VideoEvent>,
    stats: VideoStats,
}

impl Depacketizer {
    pub fn new(config: DepacketizerConfig) -> Self {
        let cipher = config.key.map(|k| Aes128Gcm::new(&k.into()));
        Self {
            block_size: config.packet_size + RTP_HEADER_LEN,
            config,
            cipher,
            next_frame: None,
            frames: BTreeMap::new(),
            awaiting_idr: true,
            invalidation_pending: false,
            highest_seen: 0,
            events: VecDeque::new(),
            stats: VideoStats::default(),
        }
    }

    pub fn stats(&self) -> &VideoStats {
        &self.stats
    }

    /// The next event to act on, if any. Drain after every `push`/`expire`.
    pub fn poll_event(&mut self) -> Option<VideoEvent> {
        self.events.pop_front()
    }

    /// Takes one datagram as received.
    pub fn push(&mut self, now: Instant, datagram: &[u8]) -> Result<(), PacketError> {
        self.stats.packets += 1;
        let result = self.push_inner(now, datagram);
        if result.is_err() {
            self.stats.rejected += 1;
        }
        result
    }

    fn push_inner(&mut self, now: Instant, datagram: &[u8]) -> Result<(), PacketError> {
        let plain;
        let shard: &[u8] = match &self.cipher {
            None => datagram,
            Some(cipher) => {
                if datagram.len() < ENC_PREFIX_LEN + SHARD_HEADER_LEN {
                    return Err(PacketError::TooShort(datagram.len()));
                }
                let (prefix, body) = datagram.split_at(ENC_PREFIX_LEN);
                let frame_hint =
                    u32::from_le_bytes([prefix[12], prefix[13], prefix[14], prefix[15]]);
                if self.next_frame.is_some_and(|n| frame_hint < n) {
                    self.stats.stale += 1;
                    return Ok(());
                }
                let mut buf = body.to_vec();
                cipher
                    .decrypt_in_place_detached(
                        Nonce::from_slice(&prefix[..12]),
                        &[],
                        &mut buf,
                        Tag::from_slice(&prefix[16..32]),
                    )
                    .map_err(|_| PacketError::Decrypt)?;
                plain = buf;
                &plain
            }
        };
        if shard.len() < SHARD_HEADER_LEN || shard.len() > self.block_size {
            return Err(PacketError::TooShort(shard.len()));
        }
        let rtp = RtpHeader::parse(shard).ok_or(PacketError::TooShort(shard.len()))?;
        let nv =
            NvHeader::parse(&shard[RTP_HEADER_LEN..]).ok_or(PacketError::TooShort(shard.len()))?;
        let parity = nv.parity_shards();
        let data = usize::from(nv.data_shards);
        if data == 0 || data + parity > MAX_SHARDS || usize::from(nv.fec_index) >= data + parity {
            return Err(PacketError::BadFecInfo {
                data: nv.data_shards,
                percentage: nv.fec_percentage,
                index: nv.fec_index,
            });
        }
        let index = nv.frame_index;
        let next = *self.next_frame.get_or_insert(index);
        if index >= next {
            self.highest_seen = self.highest_seen.max(index);
        }
        if index < next {
            self.stats.stale += 1;
            return Ok(());
        }
        let frame = self.frames.entry(index).or_insert_with(|| Frame {
            rtp_timestamp: rtp.timestamp,
            last_block: nv.last_fec_block,
            blocks: BTreeMap::new(),
            last_touch: now,
        });
        frame.last_touch = now;
        let block = frame.blocks.entry(nv.fec_block).or_insert_with(|| Block {
            data,
            parity,
            shards: vec![None; data + parity],
            received_data: 0,
            received_parity: 0,
            complete: false,
        });
        let slot = usize::from(nv.fec_index);
        if block.complete
            || block.data != data
            || block.shards.get(slot).is_some_and(Option::is_some)
        {
            self.stats.duplicates += 1;
            return Ok(());
        }
        let mut bytes = shard.to_vec();
        bytes.resize(self.block_size, 0);
        block.shards[slot] = Some(bytes);
        if slot < data {
            block.received_data += 1;
        } else {
            block.received_parity += 1;
        }
        if block.received_data < data && block.received_data + block.received_parity >= data {
            let missing = data - block.received_data;
            let rs = ReedSolomon::new(data, block.parity)?;
            rs.reconstruct(&mut block.shards)?;
            self.stats.recovered_shards += missing as u64;
            block.received_data = data;
        }
        if block.received_data == data {
            block.complete = true;
            block.shards.truncate(data);
        }
        let reorder = self.config.reorder_frames.max(1);
        let ahead = index.saturating_sub(next);
        if ahead >= reorder {
            // Give up every frame too far behind this one. Frames never seen
            // are skipped in one step, so a far jump costs one iteration.
            let floor = index - (reorder - 1);
            while let Some(n) = self.next_frame {
                if n >= floor {
                    break;
                }
                match self.frames.get(&n) {
                    Some(f) if f.complete() => self.deliver_ready(),
                    Some(_) => self.give_up(n),
                    None => {
                        let seen = self.frames.range(n..).next().map(|(k, _)| *k);
                        let to = seen.unwrap_or(floor).min(floor).max(n + 1);
                        self.give_up(n);
                        self.stats.frames_lost += u64::from(to - n - 1);
                        self.next_frame = Some(to);
                    }
                }
            }
        }
        self.deliver_ready();
        Ok(())
    }

    /// When [`expire`](Self::expire) should next be called, if at all.
    pub fn deadline(&self) -> Option<Instant> {
        let next = self.next_frame?;
        let waiting = self.frames.range(next..).next()?;
        // The awaited frame is incomplete (or missing while later ones wait).
        Some(waiting.1.last_touch + self.config.frame_timeout)
    }

    /// Gives up the awaited frame if its deadline has passed.
    pub fn expire(&mut self, now: Instant) {
        while let Some(deadline) = self.deadline() {
            if now < deadline {
                break;
            }
            let Some(next) = self.next_frame else { break };
            self.give_up(next);
            self.deliver_ready();
        }
    }

    fn give_up(&mut self, frame: u32) {
        self.frames.remove(&frame);
        self.stats.frames_lost += 1;
        self.next_frame = Some(frame + 1);
        self.lost(frame);
    }

    /// Asks once per loss for a recovery frame.
    fn lost(&mut self, frame: u32) {
        if self.awaiting_idr {
            return;
        }
        self.awaiting_idr = true;
        if self.config.reference_invalidation {
            self.invalidation_pending = true;
            self.events.push_back(VideoEvent::InvalidateRefFrames {
                first: frame,
                last: self.highest_seen.max(frame),
            });
        } else {
            self.events
                .push_back(VideoEvent::RequestIdr { lost_frame: frame });
        }
    }

    fn recovers(&self, t: FrameType) -> bool {
        t == FrameType::Idr
            || (self.invalidation_pending
                && matches!(t, FrameType::IntraRefresh | FrameType::AfterInvalidation))
    }

    fn deliver_ready(&mut self) {
        while let Some(next) = self.next_frame {
            match self.frames.get(&next) {
                Some(f) if f.complete() => {}
                _ => break,
            }
            let frame = self.frames.remove(&next).expect("checked above");
            self.next_frame = Some(next + 1);
            match self.assemble(next, frame) {
                Some(au) if self.awaiting_idr && !self.recovers(au.frame_type) => {
                    self.stats.frames_dropped_awaiting_idr += 1;
                }
                Some(au) => {
                    self.awaiting_idr = false;
                    self.invalidation_pending = false;
                    self.stats.frames_delivered += 1;
                    self.events.push_back(VideoEvent::Frame(au));
                }
                None => {
                    self.stats.frames_lost += 1;
                    self.lost(next);
                }
            }
        }
    }

    fn assemble(&self, frame_index: u32, frame: Frame) -> Option<AccessUnit> {
        let chunk = self.block_size - SHARD_HEADER_LEN;
        let mut bytes = Vec::new();
        for block in frame.blocks.into_values() {
            for shard in block.shards.into_iter().flatten() {
                bytes.extend_from_slice(&shard[SHARD_HEADER_LEN..]);
            }
        }
        let header = FrameHeader::parse(&bytes)?;
        let last = usize::from(header.last_payload_len);
        if last > 0 && last <= chunk && bytes.len() >= chunk {
            bytes.truncate(bytes.len() - chunk + last);
        }
        bytes.drain(..FRAME_HEADER_LEN);
        Some(AccessUnit {
            frame_index,
            frame_type: header.frame_type,
            rtp_timestamp: frame.rtp_timestamp,
            data: bytes,
        })
    }
}

#[cfg(test)]
mod tests;
