//! Video frames packetized once for all of a worker's viewers.

use std::sync::Arc;

use bytes::Bytes;
use tracing::debug;
use webrtc::rtp::codecs::h264::H264Payloader;
use webrtc::rtp::packetizer::Payloader;

use crate::source::EncodedVideo;

/// RTP payload bytes per video packet: webrtc-rs's outbound RTP MTU
/// (1200, what `TrackLocalStaticSample` uses) minus the 12-byte header.
const VIDEO_PAYLOAD_MTU: usize = 1200 - 12;

/// How many recent frames [`PayloadCache`] keeps (across the worker's
/// sessions): enough for every session's fan-out to find the frame it is
/// sending; one that misses packetizes again.
const PAYLOAD_CACHE_FRAMES: usize = 32;

/// Video frames packetized once for all viewers. Each session's fan-out
/// asks for the RTP payloads (FU-A / STAP-A, RFC 6184) of the frame it is
/// about to send; the first asker packetizes, the others share the result.
/// Frames are told apart by identity (the cache holds the frame, so its
/// address cannot be reused while cached).
#[derive(Default)]
pub struct PayloadCache {
    recent: std::sync::Mutex<std::collections::VecDeque<Packetized>>,
}

/// A frame and its RTP payloads.
type Packetized = (Arc<EncodedVideo>, Arc<Vec<Bytes>>);

impl PayloadCache {
    pub fn payloads(&self, frame: &Arc<EncodedVideo>) -> Arc<Vec<Bytes>> {
        if let Some(hit) = self.lock().iter().find(|(f, _)| Arc::ptr_eq(f, frame)) {
            return hit.1.clone();
        }
        // Packetize outside the lock; two writers racing on one frame both
        // packetize (same output) and the second insert is skipped.
        let payloads = Arc::new(packetize_h264(&frame.annexb));
        let mut recent = self.lock();
        if let Some(hit) = recent.iter().find(|(f, _)| Arc::ptr_eq(f, frame)) {
            return hit.1.clone();
        }
        if recent.len() == PAYLOAD_CACHE_FRAMES {
            recent.pop_front();
        }
        recent.push_back((frame.clone(), payloads.clone()));
        payloads
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Packetized>> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An Annex B access unit as RTP payloads. A fresh payloader per frame: an
/// IDR access unit carries its SPS and PPS, which it sends as a STAP-A.
fn packetize_h264(annexb: &Bytes) -> Vec<Bytes> {
    match H264Payloader::default().payload(VIDEO_PAYLOAD_MTU, annexb) {
        Ok(p) => p,
        Err(e) => {
            debug!(error = %e, "h264 packetize");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn frame(annexb: Vec<u8>) -> Arc<EncodedVideo> {
        Arc::new(EncodedVideo {
            seq: 0,
            pts_90k: 0,
            keyframe: true,
            annexb: Bytes::from(annexb),
            width: 16,
            height: 16,
            captured_at: Instant::now(),
        })
    }

    #[test]
    fn payload_cache_packetizes_a_frame_once_as_the_payloader_does() {
        // SPS, PPS, then an IDR slice bigger than one packet.
        let mut au = vec![
            0, 0, 0, 1, 0x67, 0x42, 0xe0, 0x1f, 0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80,
        ];
        au.extend_from_slice(&[0, 0, 0, 1, 0x65]);
        au.extend((0..3000u32).map(|i| (i % 251) as u8 | 1));
        let cache = PayloadCache::default();
        let f = frame(au);
        let a = cache.payloads(&f);
        let b = cache.payloads(&f);
        assert!(
            Arc::ptr_eq(&a, &b),
            "the second viewer shares the first's packets"
        );
        let expected = H264Payloader::default()
            .payload(VIDEO_PAYLOAD_MTU, &f.annexb)
            .unwrap();
        assert_eq!(*a, expected);
        assert_eq!(a[0][0] & 0x1f, 24, "SPS and PPS go first as a STAP-A");
        assert!(
            a.len() >= 4 && a[1..].iter().all(|p| p[0] & 0x1f == 28),
            "then FU-A"
        );
        assert!(a.iter().all(|p| p.len() <= VIDEO_PAYLOAD_MTU));

        // Another frame with the same bytes is another frame.
        let g = frame(f.annexb.to_vec());
        assert!(!Arc::ptr_eq(&cache.payloads(&g), &a));
        // Old frames leave the cache; asking again packetizes again.
        for _ in 0..PAYLOAD_CACHE_FRAMES {
            cache.payloads(&frame(vec![0, 0, 0, 1, 0x41, 1, 2, 3]));
        }
        let again = cache.payloads(&f);
        assert!(!Arc::ptr_eq(&again, &a));
        assert_eq!(*again, expected);
    }
}
