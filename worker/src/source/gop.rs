//! An RTP source's video since its last IDR, for viewers that join between
//! two IDRs.
//!
//! A viewer can only start decoding at an IDR, and an RTP sender cannot be
//! asked for one (keyframe requests do not reach it). With a sender's usual
//! group of pictures (ffmpeg's default is 250 frames, OBS's 2 s or more), a
//! viewer that joins waits that long for a picture. Instead a joining viewer
//! first gets the packets from the last IDR to now, with their frames'
//! timestamps pulled together just before the live one (see
//! [`Gop::replay`]), so its decoder catches up at once and plays on live.
//!
//! Pure: the source's link pushes each broadcast item under the lock that
//! also guards subscribing, and the session's fan-out keeps its own copy of
//! what it has taken from the broadcast.

use std::sync::Arc;

use bytes::Bytes;

use super::{Media, VideoPacket};

/// The most a group of pictures may hold; past it the group is dropped and
/// joining viewers wait for the next IDR, as without one. 4 MiB is 2.8 s
/// at 12 Mbit/s, 8 s at 4 Mbit/s.
pub const MAX_GOP_BYTES: usize = 4 << 20;

/// The RTP-time gap between replayed frames (1 ms on the 90 kHz clock): the
/// frames before the live one reach the viewer at once, and a decoder
/// takes them as a burst just before it rather than as seconds of past.
pub const REPLAY_STEP_90K: u64 = 90;

/// The video packets from the last IDR's first packet to the newest.
#[derive(Clone, Debug)]
pub struct Gop {
    /// Broadcast items, the first from `first` on (where its IDR starts).
    items: Vec<Arc<[VideoPacket]>>,
    first: usize,
    bytes: usize,
    /// Packets held.
    count: usize,
    max_bytes: usize,
}

impl Default for Gop {
    fn default() -> Self {
        Self::new(MAX_GOP_BYTES)
    }
}

impl Gop {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            items: Vec::new(),
            first: 0,
            bytes: 0,
            count: 0,
            max_bytes,
        }
    }

    /// Takes one broadcast item: an IDR start begins a new group, later
    /// packets extend it. Whole frames from an encoder (the synthetic
    /// source, which makes an IDR when asked) and audio are not kept.
    pub fn push(&mut self, media: &Media) {
        let Media::VideoPackets(packets) = media else {
            return;
        };
        if let Some(i) = packets.iter().rposition(|p| p.keyframe_start) {
            self.clear();
            self.first = i;
        } else if self.items.is_empty() {
            return;
        }
        let from = if self.items.is_empty() { self.first } else { 0 };
        self.bytes += packets[from..]
            .iter()
            .map(|p| p.payload.len())
            .sum::<usize>();
        self.count += packets.len() - from;
        self.items.push(packets.clone());
        if self.bytes > self.max_bytes {
            self.clear();
        }
    }

    /// Forgets the group (items were missed, or nobody watches).
    pub fn clear(&mut self) {
        self.items.clear();
        self.first = 0;
        self.bytes = 0;
        self.count = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Payload bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Packets held: what [`Self::replay`] returns.
    pub fn len(&self) -> usize {
        self.count
    }

    fn packets(&self) -> impl Iterator<Item = &VideoPacket> {
        self.items
            .iter()
            .enumerate()
            .flat_map(|(i, item)| item[if i == 0 { self.first } else { 0 }..].iter())
    }

    /// The group's packets to send a joining viewer, in order, as (payload,
    /// marker, presentation time on the 90 kHz clock). The newest frame
    /// keeps its own time, since the rest of it may still be on the way;
    /// each frame before it is [`REPLAY_STEP_90K`] earlier than the next
    /// (never later than its own time), so times only grow, across the
    /// replay and into the live packets after it.
    pub fn replay(&self) -> Vec<(Bytes, bool, u64)> {
        let Some(newest) = self.packets().last().map(|p| p.pts_90k) else {
            return Vec::new();
        };
        // Frames are runs of packets with one presentation time.
        let mut frames = 0u64;
        let mut prev = None;
        for p in self.packets() {
            if prev != Some(p.pts_90k) {
                frames += 1;
                prev = Some(p.pts_90k);
            }
        }
        let mut out = Vec::new();
        let (mut frame, mut prev) = (0u64, None);
        for p in self.packets() {
            if prev.is_some() && prev != Some(p.pts_90k) {
                frame += 1;
            }
            prev = Some(p.pts_90k);
            let back = (frames - 1 - frame) * REPLAY_STEP_90K;
            let pts = newest - back.min(newest.saturating_sub(p.pts_90k));
            out.push((p.payload.clone(), p.marker, pts));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A burst: (pts in frames of 3000, marker, keyframe start) per packet,
    /// each payload 100 bytes.
    fn burst(packets: &[(u64, bool, bool)]) -> Media {
        let now = Instant::now();
        Media::VideoPackets(
            packets
                .iter()
                .map(|&(frame, marker, key)| VideoPacket {
                    payload: Bytes::from(vec![frame as u8; 100]),
                    pts_90k: 1_000_000 + frame * 3000,
                    marker,
                    keyframe_start: key,
                    arrived_at: now,
                })
                .collect(),
        )
    }

    fn pts(replay: &[(Bytes, bool, u64)]) -> Vec<u64> {
        replay.iter().map(|r| r.2 - 1_000_000).collect()
    }

    #[test]
    fn nothing_is_kept_before_the_first_idr() {
        let mut g = Gop::default();
        g.push(&burst(&[(0, false, false), (0, true, false)]));
        assert!(g.is_empty());
        assert!(g.replay().is_empty());
    }

    #[test]
    fn a_group_starts_at_the_idrs_first_packet_and_the_next_idr_replaces_it() {
        let mut g = Gop::default();
        // The end of a frame, then an IDR in the same burst.
        g.push(&burst(&[
            (0, true, false),
            (1, false, true),
            (1, true, false),
        ]));
        g.push(&burst(&[(2, true, false)]));
        let r = g.replay();
        assert_eq!(r.len(), 3, "from the IDR's first packet");
        assert_eq!(r[0].0[0], 1);
        assert_eq!(g.bytes(), 300);
        assert_eq!(g.len(), 3, "len counts what a replay sends");
        g.push(&burst(&[(3, false, true)]));
        assert_eq!(g.replay().len(), 1);
        assert_eq!(g.bytes(), 100);
        assert_eq!(g.len(), 1);
        g.clear();
        assert_eq!(g.len(), 0);
    }

    #[test]
    fn replayed_frames_close_up_before_the_newest_which_keeps_its_time() {
        let mut g = Gop::default();
        g.push(&burst(&[(0, false, true), (0, true, false)]));
        for f in 1..5 {
            g.push(&burst(&[(f, true, false)]));
        }
        // The newest frame is still arriving (no marker yet).
        g.push(&burst(&[(5, false, false)]));
        let r = g.replay();
        let step = REPLAY_STEP_90K;
        let newest = 5 * 3000;
        assert_eq!(
            pts(&r),
            [
                newest - 5 * step,
                newest - 5 * step,
                newest - 4 * step,
                newest - 3 * step,
                newest - 2 * step,
                newest - step,
                newest
            ]
        );
        let markers: Vec<bool> = r.iter().map(|x| x.1).collect();
        assert_eq!(markers, [false, true, true, true, true, true, false]);
        // Live packets of the newest frame and the next come after in time.
        assert!(pts(&r).windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn a_replayed_frame_is_never_later_than_its_own_time() {
        // Frames 1 tick apart (a sender with odd timestamps): closing up by
        // the step would reorder them; each keeps its own time instead.
        let mut g = Gop::default();
        let now = Instant::now();
        let packets: Vec<VideoPacket> = (0..4)
            .map(|i| VideoPacket {
                payload: Bytes::from_static(b"x"),
                pts_90k: 500 + i,
                marker: true,
                keyframe_start: i == 0,
                arrived_at: now,
            })
            .collect();
        g.push(&Media::VideoPackets(packets.into()));
        let r: Vec<u64> = g.replay().iter().map(|x| x.2).collect();
        assert_eq!(r, [500, 501, 502, 503]);
    }

    #[test]
    fn a_group_past_the_limit_is_dropped_until_the_next_idr() {
        let mut g = Gop::new(350);
        g.push(&burst(&[(0, false, true), (0, true, false)]));
        g.push(&burst(&[(1, true, false)]));
        assert_eq!(g.bytes(), 300);
        g.push(&burst(&[(2, true, false)]));
        assert!(g.is_empty(), "400 bytes is past 350");
        g.push(&burst(&[(3, true, false)]));
        assert!(g.is_empty(), "nothing to extend");
        g.push(&burst(&[(4, true, true)]));
        assert_eq!(g.replay().len(), 1);
    }

    #[test]
    fn encoder_frames_and_audio_are_not_kept() {
        let mut g = Gop::default();
        g.push(&Media::Audio(Arc::new(super::super::EncodedAudio {
            seq: 0,
            pts_48k: 0,
            opus: Bytes::from_static(b"o"),
            captured_at: Instant::now(),
        })));
        assert!(g.is_empty());
    }
}
