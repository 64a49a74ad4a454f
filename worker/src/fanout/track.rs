//! A viewer's way out through webrtc-rs's tracks (a UDP port per peer, or
//! a port range): the fan-out queues each packet the policy gives the
//! viewer, and the viewer's own writer task ([`write_tracks`]) writes them
//! to its tracks, where webrtc-rs's interceptors number retransmissions
//! and report. The queue is bounded and never waited on: when it is full
//! the fan-out drops the rest and the viewer skips to the next keyframe,
//! so a viewer whose writes stall lags only itself.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;
use webrtc::media::Sample;
use webrtc::rtp::header::Header as RtpHeader;
use webrtc::rtp::packet::Packet as RtpPacket;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;
use webrtc::track::track_local::TrackLocalWriter;

/// Packets waiting for one viewer's writer: about a second of 720p30 at
/// 2.5 Mbit/s, a 1080p keyframe several times over.
pub const TRACK_QUEUE: usize = 1024;

/// One packet for a viewer's tracks.
#[derive(Debug)]
pub enum TrackPacket {
    /// An H.264 RTP payload with its marker and the viewer's RTP timestamp;
    /// the writer numbers it.
    Video {
        payload: Bytes,
        marker: bool,
        timestamp: u32,
    },
    /// A 20 ms Opus packet.
    Audio(Bytes),
}

/// The fan-out's end of a viewer's track queue.
pub struct TrackSink {
    tx: mpsc::Sender<TrackPacket>,
}

impl TrackSink {
    /// A sink and the receiver its writer task reads.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<TrackPacket>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self { tx }, rx)
    }

    /// Queues video payloads in order; `false` if the queue filled (the
    /// rest are dropped: the viewer must start again at a keyframe).
    pub fn send_video<'a>(
        &mut self,
        packets: impl Iterator<Item = (&'a Bytes, bool, u32)>,
    ) -> bool {
        for (payload, marker, timestamp) in packets {
            let packet = TrackPacket::Video {
                payload: payload.clone(),
                marker,
                timestamp,
            };
            if self.tx.try_send(packet).is_err() {
                return false;
            }
        }
        true
    }

    /// Queues an Opus packet; a full queue drops it (audio needs no restart).
    pub fn send_audio(&mut self, opus: &Bytes) {
        let _ = self.tx.try_send(TrackPacket::Audio(opus.clone()));
    }

    /// Packets the queue can still take.
    pub fn room(&self) -> usize {
        self.tx.capacity()
    }
}

/// A viewer's writer: what its sink queued, onto its tracks, until the
/// queue closes (the fan-out let the viewer go) or `cancel`.
pub async fn write_tracks(
    mut rx: mpsc::Receiver<TrackPacket>,
    video: Arc<TrackLocalStaticRTP>,
    audio: Arc<TrackLocalStaticSample>,
    first_seq: u16,
    cancel: CancellationToken,
) {
    let mut seq = first_seq;
    loop {
        let packet = tokio::select! {
            p = rx.recv() => p,
            _ = cancel.cancelled() => return,
        };
        let Some(packet) = packet else { return };
        match packet {
            TrackPacket::Video {
                payload,
                marker,
                timestamp,
            } => {
                // The track sets SSRC and payload type.
                let rtp = RtpPacket {
                    header: RtpHeader {
                        version: 2,
                        marker,
                        sequence_number: seq,
                        timestamp,
                        ..Default::default()
                    },
                    payload,
                };
                seq = seq.wrapping_add(1);
                if let Err(e) = video.write_rtp(&rtp).await {
                    debug!(error = %e, "video write");
                }
            }
            TrackPacket::Audio(data) => {
                let sample = Sample {
                    data,
                    duration: Duration::from_millis(20),
                    ..Default::default()
                };
                if let Err(e) = audio.write_sample(&sample).await {
                    debug!(error = %e, "audio write");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_says_so_and_keeps_what_fit_in_order() {
        let (mut sink, mut rx) = TrackSink::new(3);
        let p: Vec<Bytes> = (0..5u8).map(|i| Bytes::from(vec![i])).collect();
        assert_eq!(sink.room(), 3);
        assert!(sink.send_video(p[..2].iter().map(|b| (b, false, 7))));
        assert!(
            !sink.send_video(p[2..].iter().map(|b| (b, true, 8))),
            "the third fits, the fourth does not"
        );
        sink.send_audio(&p[0]);
        let mut got = Vec::new();
        while let Ok(TrackPacket::Video { payload, .. }) = rx.try_recv() {
            got.push(payload[0]);
        }
        assert_eq!(got, [0, 1, 2]);
        assert!(
            sink.send_video(p[3..4].iter().map(|b| (b, true, 9))),
            "room again once read"
        );
    }
}
