use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use webrtc::rtp::packet::Packet as RtpPacket;
use webrtc::srtp::config::SessionKeys;
use webrtc::srtp::context::Context;
use webrtc::srtp::protection_profile::ProtectionProfile;
use webrtc::util::Unmarshal;

use super::*;
use crate::source::{EncodedAudio, VideoPacket};
use crate::srtp_out::{OutStream, VIDEO_HISTORY};

const PROFILE: ProtectionProfile = ProtectionProfile::AeadAes128Gcm;

/// A viewer of the tests: its keys (from `seed`), address and decryptor.
struct Viewer {
    id: u64,
    to: SocketAddr,
    rx: Context,
    left: CancellationToken,
}

fn keys(seed: u8) -> SessionKeys {
    let key: Vec<u8> = (0..PROFILE.key_len() as u8).map(|b| b ^ seed).collect();
    let salt: Vec<u8> = (0..PROFILE.salt_len() as u8)
        .map(|b| b.wrapping_add(seed))
        .collect();
    SessionKeys {
        local_master_key: key.clone(),
        local_master_salt: salt.clone(),
        remote_master_key: key,
        remote_master_salt: salt,
    }
}

/// Joins viewer `id` (port 10000 + id, video SSRC 100 + id, first seq
/// 1000 × id, both timestamp offsets 10 000 × id).
fn join(fan: &mut Fanout, id: u64) -> Viewer {
    join_with_room(fan, id, usize::MAX)
}

/// [`join`] with `room` bytes for the replay of the group of pictures.
fn join_with_room(fan: &mut Fanout, id: u64, room: usize) -> Viewer {
    let k = keys(id as u8);
    let to: SocketAddr = ([127, 0, 0, 1], 10_000 + id as u16).into();
    let out = SrtpOut::new(
        &k,
        PROFILE,
        to,
        OutStream::new(
            100 + id as u32,
            102,
            90_000,
            1000 * id as u16,
            VIDEO_HISTORY,
        ),
        OutStream::new(200 + id as u32, 111, 48_000, 0, 0),
    )
    .unwrap();
    let left = CancellationToken::new();
    let base = 10_000 * id as u32;
    fan.join(id, Sink::Srtp(out), left.clone(), (base, base));
    // As the driver does at a join; the others' destinations have no room.
    fan.offer_replays(Instant::now(), |d| if d == to { room } else { 0 });
    let rx = Context::new(
        &k.remote_master_key,
        &k.remote_master_salt,
        PROFILE,
        None,
        None,
    )
    .unwrap();
    Viewer { id, to, rx, left }
}

/// The packets of a burst of RTP input: `n` packets of one access unit at
/// `pts`, the first a keyframe start if `key`, numbered in their first
/// payload byte from `first`.
fn packets(first: u8, n: u8, pts: u64, key: bool) -> Vec<VideoPacket> {
    (0..n)
        .map(|i| VideoPacket {
            payload: Bytes::from(vec![first + i; 100]),
            pts_90k: pts,
            marker: i == n - 1,
            keyframe_start: key && i == 0,
            arrived_at: Instant::now(),
        })
        .collect()
}

/// [`packets`] as one broadcast item.
fn burst(first: u8, n: u8, pts: u64, key: bool) -> Media {
    Media::VideoPackets(packets(first, n, pts, key).into())
}

/// What the outbox holds for `v`, decrypted; the outbox is left as it is
/// ([`take`] empties it).
fn received(fan: &mut Fanout, v: &mut Viewer) -> Vec<RtpPacket> {
    let to = v.to;
    fan.outbox()
        .packets()
        .filter(|(_, dest)| *dest == to)
        .map(|(wire, _)| {
            let plain =
                v.rx.decrypt_rtp(wire)
                    .expect("decrypts with the viewer's keys");
            RtpPacket::unmarshal(&mut &plain[..]).expect("RTP")
        })
        .collect()
}

/// Empties the outbox (as the driver's flush does) and returns how many
/// packets it held.
fn take(fan: &mut Fanout) -> usize {
    let n = fan.outbox().len();
    *fan.outbox() = Outbox::default();
    n
}

/// One Opus packet at `pts_48k`.
fn audio(pts_48k: u64) -> Media {
    Media::Audio(Arc::new(EncodedAudio {
        seq: 0,
        pts_48k,
        opus: Bytes::from_static(b"opus"),
        captured_at: Instant::now(),
    }))
}

fn first_bytes(packets: &[RtpPacket]) -> Vec<u8> {
    packets.iter().map(|p| p.payload[0]).collect()
}

#[test]
fn a_viewer_joining_mid_stream_starts_at_the_next_keyframe_start_in_a_burst() {
    let payloads = PayloadCache::default();
    let now = Instant::now();
    let mut fan = Fanout::default();
    let mut a = join(&mut fan, 1);
    // Before any keyframe, a burst without one goes to nobody.
    fan.media(&burst(20, 2, 0, false), &payloads, now);
    assert!(
        received(&mut fan, &mut a).is_empty(),
        "A waits for a keyframe"
    );
    // The tail of one access unit, then a keyframe starting mid-burst.
    let mut mixed = packets(0, 2, 0, false);
    mixed.extend(packets(2, 3, 3000, true));
    fan.media(&Media::VideoPackets(mixed.into()), &payloads, now);
    let got = received(&mut fan, &mut a);
    assert_eq!(first_bytes(&got), [2, 3, 4], "from the keyframe start on");
    assert_eq!(
        got.iter()
            .map(|p| p.header.sequence_number)
            .collect::<Vec<_>>(),
        [1000, 1001, 1002]
    );
    assert!(got.iter().all(|p| p.header.timestamp == 10_000 + 3000));
    assert_eq!(got.iter().map(|p| p.header.ssrc).max(), Some(101));
    assert_eq!(take(&mut fan), 3);
}

#[test]
fn a_viewer_joining_between_idrs_gets_the_video_since_the_last_one_then_live() {
    let payloads = PayloadCache::default();
    let now = Instant::now();
    let mut fan = Fanout::default();
    let mut a = join(&mut fan, 1);
    // An IDR (pts 3000), a whole frame (6000) and half of one (9000).
    fan.media(&burst(2, 3, 3000, true), &payloads, now);
    fan.media(&burst(5, 2, 6000, false), &payloads, now);
    let mut half = packets(7, 3, 9000, false);
    half.truncate(2);
    fan.media(&Media::VideoPackets(half.into()), &payloads, now);
    take(&mut fan);

    // B joins: at once, everything from the IDR's first packet, its own
    // numbering, frames before the newest closed up just before it.
    let mut b = join(&mut fan, 2);
    let got = received(&mut fan, &mut b);
    assert_eq!(first_bytes(&got), [2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(got[0].header.sequence_number, 2000, "B's own numbering");
    let ts: Vec<u32> = got.iter().map(|p| p.header.timestamp - 20_000).collect();
    let step = crate::source::gop::REPLAY_STEP_90K as u32;
    assert_eq!(
        ts,
        [
            9000 - 2 * step,
            9000 - 2 * step,
            9000 - 2 * step,
            9000 - step,
            9000 - step,
            9000,
            9000
        ]
    );
    let markers: Vec<bool> = got.iter().map(|p| p.header.marker).collect();
    assert_eq!(markers, [false, false, true, false, true, false, false]);
    assert!(received(&mut fan, &mut a).is_empty(), "A gets no replay");
    take(&mut fan);

    // Live: the rest of the newest frame and the next, to both, B's
    // numbering going on without a gap.
    fan.media(
        &Media::VideoPackets(packets(9, 1, 9000, false).into()),
        &payloads,
        now,
    );
    fan.media(&burst(10, 1, 12_000, false), &payloads, now);
    let got_b = received(&mut fan, &mut b);
    assert_eq!(first_bytes(&got_b), [9, 10]);
    assert_eq!(
        got_b
            .iter()
            .map(|p| p.header.sequence_number)
            .collect::<Vec<_>>(),
        [2007, 2008]
    );
    assert_eq!(got_b[0].header.timestamp, 20_000 + 9000);
    assert_eq!(first_bytes(&received(&mut fan, &mut a)), [9, 10]);
    take(&mut fan);

    // After a skip (items missed) the group is gone: C waits for an IDR.
    fan.restart_at_keyframe();
    fan.forget_gop();
    let mut c = join(&mut fan, 3);
    assert!(received(&mut fan, &mut c).is_empty());
    fan.media(&burst(11, 1, 15_000, false), &payloads, now);
    assert!(
        received(&mut fan, &mut c).is_empty(),
        "C waits for a keyframe"
    );
    fan.media(&burst(12, 2, 18_000, true), &payloads, now);
    assert_eq!(first_bytes(&received(&mut fan, &mut c)), [12, 13]);
}

#[test]
fn a_replay_that_does_not_fit_the_queue_comes_once_it_fits_or_the_next_idr_does() {
    let payloads = PayloadCache::default();
    let now = Instant::now();
    let mut fan = Fanout::default();
    // 5 packets of 100 bytes since the IDR.
    fan.media(&burst(2, 5, 3000, true), &payloads, now);
    let mut a = join_with_room(&mut fan, 1, 500);
    assert!(
        received(&mut fan, &mut a).is_empty(),
        "500 bytes of room is too little"
    );
    let mut b = join_with_room(&mut fan, 2, 1000);
    assert_eq!(first_bytes(&received(&mut fan, &mut b)), [2, 3, 4, 5, 6]);
    take(&mut fan);
    // Still too little room: A waits, and live P-frames do not reach it.
    fan.offer_replays(now, |_| 500);
    fan.media(&burst(7, 1, 6000, false), &payloads, now);
    assert!(
        received(&mut fan, &mut a).is_empty(),
        "A waits for room or a keyframe"
    );
    assert_eq!(first_bytes(&received(&mut fan, &mut b)), [7]);
    take(&mut fan);
    // Room now: A gets the group so far, once, then the live video.
    fan.offer_replays(now, |_| 1000);
    assert_eq!(first_bytes(&received(&mut fan, &mut a)), [2, 3, 4, 5, 6, 7]);
    assert!(received(&mut fan, &mut b).is_empty(), "B has it already");
    take(&mut fan);
    fan.offer_replays(now, |_| 1000);
    assert_eq!(take(&mut fan), 0, "replayed once");
    fan.media(&burst(8, 1, 9000, false), &payloads, now);
    assert_eq!(first_bytes(&received(&mut fan, &mut a)), [8]);
    take(&mut fan);

    // Never room: C starts at the next IDR.
    let mut c = join_with_room(&mut fan, 3, 0);
    fan.offer_replays(now, |_| 0);
    assert!(received(&mut fan, &mut c).is_empty());
    fan.media(&burst(9, 1, 12_000, true), &payloads, now);
    assert_eq!(first_bytes(&received(&mut fan, &mut c)), [9]);
}

#[test]
fn a_fan_out_resuming_from_the_sources_group_replays_it_to_the_first_viewer() {
    let payloads = PayloadCache::default();
    let now = Instant::now();
    // What the source's link held when the fan-out subscribed.
    let mut gop = Gop::default();
    gop.push(&burst(2, 2, 3000, true));
    let mut fan = Fanout::default();
    fan.resume_from(gop);
    let mut a = join(&mut fan, 1);
    assert_eq!(first_bytes(&received(&mut fan, &mut a)), [2, 3]);
    take(&mut fan);
    fan.media(&burst(4, 1, 6000, false), &payloads, now);
    assert_eq!(first_bytes(&received(&mut fan, &mut a)), [4]);
}

#[test]
fn whole_frames_go_to_viewers_from_a_keyframe_with_the_marker_on_the_last_packet() {
    let payloads = PayloadCache::default();
    let now = Instant::now();
    let mut fan = Fanout::default();
    let mut a = join(&mut fan, 1);
    let frame = |keyframe: bool, pts: u64| {
        // SPS, PPS and a slice too big for one packet (FU-A).
        let mut annexb = Vec::new();
        for nal in [&[0x67u8, 1, 2][..], &[0x68, 3], &[0x65; 3000][..]] {
            annexb.extend_from_slice(&[0, 0, 0, 1]);
            annexb.extend_from_slice(nal);
        }
        Media::Video(Arc::new(crate::source::EncodedVideo {
            seq: 0,
            pts_90k: pts,
            keyframe,
            annexb: Bytes::from(annexb),
            width: 16,
            height: 16,
            captured_at: now,
        }))
    };
    fan.media(&frame(false, 0), &payloads, now);
    assert_eq!(take(&mut fan), 0, "nothing before a keyframe");
    fan.media(&frame(true, 3000), &payloads, now);
    let got = received(&mut fan, &mut a);
    assert!(got.len() >= 3, "STAP-A and FU-A packets: {}", got.len());
    let markers: Vec<bool> = got.iter().map(|p| p.header.marker).collect();
    assert_eq!(markers.iter().filter(|m| **m).count(), 1);
    assert!(markers[markers.len() - 1], "the marker on the last packet");
    take(&mut fan);
    fan.media(&frame(false, 6000), &payloads, now);
    assert!(take(&mut fan) > 0, "then every frame");
}

#[test]
fn a_closed_viewer_leaves_at_the_next_prune_and_gets_nothing_more() {
    let payloads = PayloadCache::default();
    let now = Instant::now();
    let mut fan = Fanout::default();
    let mut a = join(&mut fan, 1);
    let mut b = join(&mut fan, 2);
    fan.media(&burst(0, 2, 0, true), &payloads, now);
    assert_eq!(take(&mut fan), 4);
    b.left.cancel();
    assert_eq!(fan.prune(), 1);
    fan.media(&burst(2, 2, 3000, false), &payloads, now);
    assert_eq!(first_bytes(&received(&mut fan, &mut a)), [2, 3]);
    assert!(received(&mut fan, &mut b).is_empty());
    a.left.cancel();
    assert_eq!(fan.prune(), 0);
    assert!(fan.is_empty());
}

#[test]
fn a_nack_is_answered_to_its_own_viewer_with_the_same_packet() {
    let payloads = PayloadCache::default();
    let now = Instant::now();
    let mut fan = Fanout::default();
    let mut a = join(&mut fan, 1);
    let b = join(&mut fan, 2);
    fan.media(&burst(0, 3, 0, true), &payloads, now);
    let sealed: Vec<Vec<u8>> = fan
        .outbox()
        .packets()
        .filter(|(_, to)| *to == b.to)
        .map(|(w, _)| w.to_vec())
        .collect();
    take(&mut fan);
    // B lost its second packet (seq 2001) and asks for one never sent.
    assert_eq!(fan.resend(b.id, &[2001, 2500]), 1);
    let again: Vec<(Vec<u8>, SocketAddr)> = fan
        .outbox()
        .packets()
        .map(|(w, to)| (w.to_vec(), to))
        .collect();
    assert_eq!(
        again,
        [(sealed[1].clone(), b.to)],
        "the same SRTP packet, to B only"
    );
    take(&mut fan);
    assert_eq!(fan.resend(99, &[1001]), 0, "an unknown viewer gets nothing");
    assert!(received(&mut fan, &mut a).is_empty());
}

#[test]
fn after_a_skip_every_viewer_restarts_at_a_keyframe_and_audio_keeps_flowing() {
    let payloads = PayloadCache::default();
    let now = Instant::now();
    let mut fan = Fanout::default();
    let mut a = join(&mut fan, 1);
    fan.media(&burst(0, 2, 0, true), &payloads, now);
    take(&mut fan);
    fan.restart_at_keyframe();
    fan.media(&burst(2, 2, 3000, false), &payloads, now);
    assert_eq!(take(&mut fan), 0, "no video until a keyframe");
    fan.media(&audio(960), &payloads, now);
    let got = received(&mut fan, &mut a);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (
            got[0].header.ssrc,
            got[0].header.payload_type,
            got[0].header.timestamp
        ),
        (201, 111, 10_000 + 960)
    );
    take(&mut fan);
    fan.media(&burst(4, 2, 6000, true), &payloads, now);
    assert_eq!(first_bytes(&received(&mut fan, &mut a)), [4, 5]);
}

#[test]
fn each_viewer_gets_a_sender_report_a_second_at_its_current_destination() {
    let payloads = PayloadCache::default();
    let t0 = Instant::now();
    let mut fan = Fanout::default();
    let mut a = join(&mut fan, 1);
    let b = join(&mut fan, 2);
    fan.reports(t0, SystemTime::now());
    assert_eq!(take(&mut fan), 0, "no report before anything was sent");
    fan.media(&burst(0, 1, 0, true), &payloads, t0);
    take(&mut fan);
    let moved: SocketAddr = ([127, 0, 0, 1], 20_001).into();
    fan.set_destination(a.id, moved);
    fan.reports(t0, SystemTime::now());
    let dests: Vec<SocketAddr> = fan.outbox().packets().map(|(_, to)| to).collect();
    assert_eq!(
        dests,
        [moved, b.to],
        "one report each, A's at its new address"
    );
    let (wire, _) = fan.outbox().packets().next().unwrap();
    let rtcp = a.rx.decrypt_rtcp(wire).expect("SRTCP decrypts");
    assert!(!rtcp.is_empty());
    take(&mut fan);
    fan.reports(t0 + Duration::from_millis(500), SystemTime::now());
    assert_eq!(take(&mut fan), 0, "not twice within a second");
    fan.reports(t0 + Duration::from_secs(1), SystemTime::now());
    assert_eq!(take(&mut fan), 2);
}

/// [`packets`] with no marker: the access unit goes on in a later burst.
fn open_burst(first: u8, n: u8, pts: u64, key: bool) -> Media {
    let mut p = packets(first, n, pts, key);
    p.last_mut().expect("n > 0").marker = false;
    Media::VideoPackets(p.into())
}

/// The destinations of the outbox's packets, in queue order.
fn destinations(fan: &mut Fanout) -> Vec<SocketAddr> {
    fan.outbox().packets().map(|(_, to)| to).collect()
}

#[test]
fn with_many_viewers_a_frame_is_held_until_its_marker_and_each_viewers_share_lies_together() {
    let payloads = PayloadCache::default();
    let now = Instant::now();
    let mut fan = Fanout::default().holding_from(2);
    let mut a = join(&mut fan, 1);
    let mut b = join(&mut fan, 2);
    // Two bursts of one IDR access unit: nothing leaves before the marker.
    fan.media(&open_burst(2, 3, 3000, true), &payloads, now);
    assert_eq!(take(&mut fan), 0, "held until the frame ends");
    assert_eq!(fan.hold_deadline(), Some(now + HOLD_MAX));
    // Audio is not held and does not release the video.
    fan.media(&audio(0), &payloads, now);
    assert_eq!(take(&mut fan), 2, "audio for both");
    fan.media(&burst(5, 2, 3000, false), &payloads, now);
    assert_eq!(fan.hold_deadline(), None, "nothing held after the marker");
    assert_eq!(destinations(&mut fan), [[a.to; 5], [b.to; 5]].concat());
    for v in [&mut a, &mut b] {
        let got = received(&mut fan, v);
        assert_eq!(first_bytes(&got), [2, 3, 4, 5, 6]);
        let seq: Vec<u16> = got.iter().map(|p| p.header.sequence_number).collect();
        let first = 1000 * v.id as u16;
        assert_eq!(seq, (first..first + 5).collect::<Vec<_>>());
    }
    take(&mut fan);

    // A frame longer than a sender's turn leaves a turn at a time.
    let half = (PACKETS_PER_TURN / 2) as u8;
    fan.media(&open_burst(7, half, 6000, false), &payloads, now);
    assert_eq!(take(&mut fan), 0);
    fan.media(&open_burst(7 + half, half, 6000, false), &payloads, now);
    assert_eq!(
        first_bytes(&received(&mut fan, &mut a)).len(),
        PACKETS_PER_TURN
    );
    assert_eq!(
        take(&mut fan),
        2 * PACKETS_PER_TURN,
        "a turn for each viewer"
    );

    // Below the threshold each burst goes out as it comes (cut-through).
    b.left.cancel();
    assert_eq!(fan.prune(), 1);
    let next = 7 + 2 * half;
    fan.media(&open_burst(next, 2, 6000, false), &payloads, now);
    assert_eq!(first_bytes(&received(&mut fan, &mut a)), [next, next + 1]);
}

#[test]
fn video_held_past_its_deadline_is_released_and_a_viewer_joining_meanwhile_misses_nothing() {
    let payloads = PayloadCache::default();
    let now = Instant::now();
    let mut fan = Fanout::default().holding_from(1);
    let mut a = join(&mut fan, 1);
    fan.media(&burst(2, 2, 3000, true), &payloads, now);
    take(&mut fan);
    // The start of the next frame is held; its end never comes.
    fan.media(&open_burst(4, 2, 6000, false), &payloads, now);
    assert_eq!(take(&mut fan), 0);
    // B joins while it is held: the replay stops before the held packets…
    let mut b = join(&mut fan, 2);
    assert_eq!(first_bytes(&received(&mut fan, &mut b)), [2, 3]);
    take(&mut fan);
    // …which reach both at the deadline, once each.
    let deadline = fan.hold_deadline().expect("video is held");
    fan.release(deadline);
    assert_eq!(first_bytes(&received(&mut fan, &mut a)), [4, 5]);
    assert_eq!(first_bytes(&received(&mut fan, &mut b)), [4, 5]);
    assert_eq!(fan.hold_deadline(), None);
    take(&mut fan);
    fan.release(deadline);
    assert_eq!(take(&mut fan), 0, "released once");

    // A skip drops what is held with the group of pictures.
    fan.media(&open_burst(6, 2, 9000, false), &payloads, now);
    fan.restart_at_keyframe();
    fan.forget_gop();
    assert_eq!(fan.hold_deadline(), None);
    fan.release(now);
    assert_eq!(take(&mut fan), 0, "nothing was kept");
}

/// Sends on `tx` when dropped: tells a test its task is gone.
struct DroppedSignal(std::sync::mpsc::Sender<()>);

impl Drop for DroppedSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

#[test]
fn fanouts_go_to_the_least_loaded_thread_and_end_with_it() {
    let threads = FanoutThreads::start(2).expect("threads");
    // Where a placement's task runs, by thread name.
    let thread_of = |p: &FanoutSlot| {
        let (tx, rx) = std::sync::mpsc::channel();
        p.runtime.spawn(async move {
            let _ = tx.send(std::thread::current().name().map(str::to_owned));
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the task ran")
            .expect("a named thread")
    };
    let mut placed: Vec<FanoutSlot> = (0..3).map(|_| threads.next()).collect();
    let names: Vec<_> = placed.iter().map(thread_of).collect();
    assert_eq!(
        names,
        ["fanout-0", "fanout-1", "fanout-0"],
        "equal loads are dealt out in turn"
    );
    assert_eq!(threads.loads(), [2, 1]);

    // Both sessions on fanout-0 end: the next two go there, not in turn.
    placed.remove(2);
    placed.remove(0);
    assert_eq!(threads.loads(), [0, 1]);
    let a = threads.next();
    assert_eq!(thread_of(&a), "fanout-0", "the idle thread");
    let mut b = threads.next();
    assert_eq!(thread_of(&b), "fanout-0", "equal loads: the first");
    assert_eq!(threads.loads(), [2, 1]);

    // Viewers count: a session with 5 of them sends the next ones to the
    // other thread until it is as loaded.
    b.load.set_viewers(5);
    assert_eq!(threads.loads(), [7, 1]);
    let more: Vec<FanoutSlot> = (0..6).map(|_| threads.next()).collect();
    assert!(more.iter().all(|p| thread_of(p) == "fanout-1"));
    assert_eq!(threads.loads(), [7, 7]);
    b.load.set_viewers(1);
    assert_eq!(threads.loads(), [3, 7]);
    drop((a, b, more, placed));
    assert_eq!(threads.loads(), [0, 0], "every share given back");

    // A fan-out still running when the threads stop is dropped with them.
    let (dropped_tx, dropped) = std::sync::mpsc::channel();
    let (started_tx, started) = std::sync::mpsc::channel();
    threads.next().runtime.spawn(async move {
        let _signal = DroppedSignal(dropped_tx);
        let _ = started_tx.send(());
        std::future::pending::<()>().await;
    });
    started
        .recv_timeout(Duration::from_secs(10))
        .expect("the task started");
    assert!(dropped.try_recv().is_err(), "running, not dropped");
    drop(threads);
    dropped
        .recv_timeout(Duration::from_secs(10))
        .expect("the task was dropped with its thread");
}

/// Opus packets (not reports) a socket has received so far, without
/// waiting: an audio packet of [`audio`] sealed is 32 bytes (RTP header,
/// "opus", GCM tag).
fn audio_received(sock: &std::net::UdpSocket) -> usize {
    let mut buf = [0u8; 1500];
    let mut n = 0;
    while let Ok(len) = sock.recv(&mut buf) {
        n += usize::from(len == 32);
    }
    n
}

/// Whether `sock` receives an Opus packet within `timeout` (waiting on
/// the socket).
fn audio_within(sock: &std::net::UdpSocket, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    sock.set_nonblocking(false).unwrap();
    let mut buf = [0u8; 1500];
    let mut got = false;
    while !got {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left)).unwrap();
        got = matches!(sock.recv(&mut buf), Ok(32));
    }
    sock.set_nonblocking(true).unwrap();
    got
}

/// Waits (up to 10 s) until `sock` has received an Opus packet.
fn await_audio(sock: &std::net::UdpSocket) {
    assert!(
        audio_within(sock, Duration::from_secs(10)),
        "no Opus packet within 10 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_leaving_a_running_fan_out_gets_nothing_more_and_the_others_go_on() {
    let threads = FanoutThreads::start(1).unwrap();
    let port =
        crate::udp::BatchedUdp::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), 1).unwrap();
    let mut source = crate::source::SourceHandle::new(64);
    let (link_tx, link_rx) = std::sync::mpsc::channel();
    let (_done, done_rx) = std::sync::mpsc::channel::<()>();
    source
        .spawn_thread("test-source", move |link| {
            link_tx
                .send(link)
                .map_err(|_| crate::source::SourceFault::Vanished)?;
            let _ = done_rx.recv(); // until the test ends
            Ok(())
        })
        .unwrap();
    let link = link_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let now = Instant::now();
    let gate = SendGate {
        paused: Arc::default(),
        lease: Arc::new(crate::core::lease::LeaseGate::new(
            now,
            now + Duration::from_secs(3600),
        )),
    };
    let fanout = FanoutHandle::spawn(
        Some(threads.next()),
        source.tap(),
        gate,
        Arc::default(),
        Some(port.queue()),
        0,
    );
    let mut viewers = Vec::new();
    for id in [1u64, 2] {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        let out = SrtpOut::new(
            &keys(id as u8),
            PROFILE,
            sock.local_addr().unwrap(),
            OutStream::new(100 + id as u32, 102, 90_000, 0, VIDEO_HISTORY),
            OutStream::new(200 + id as u32, 111, 48_000, 0, 0),
        )
        .unwrap();
        let left = CancellationToken::new();
        assert!(
            fanout.join(id, Sink::Srtp(out), left.clone()).await,
            "the fan-out runs"
        );
        viewers.push((sock, left));
    }
    let [(leaving, left), (staying, _)] = &viewers[..] else {
        unreachable!()
    };
    let mut pts = 0;
    let mut publish = || {
        pts += 960;
        link.publish(audio(pts));
    };
    // Joins reach the fan-out in its own time: publish until both viewers
    // get audio.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut got_leaving, mut got_staying) = (false, false);
    while !(got_leaving && got_staying) {
        assert!(Instant::now() < deadline, "both viewers get audio");
        publish();
        let wait = Duration::from_millis(50);
        got_leaving |= audio_within(leaving, wait);
        got_staying |= audio_within(staying, wait);
    }
    assert_eq!(threads.loads(), [3], "the fan-out and its two viewers");

    left.cancel();
    // Until an Opus packet the staying viewer got after one more (sent by
    // a later flush, so after anything the first sent) finds none for the
    // one who left. Without the leave reaching the fan-out, this fails.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            Instant::now() < deadline,
            "the viewer who left still gets audio"
        );
        audio_received(leaving);
        publish();
        await_audio(staying);
        publish();
        await_audio(staying);
        if audio_received(leaving) == 0 {
            break;
        }
    }
    for _ in 0..5 {
        publish();
        await_audio(staying);
    }
    assert_eq!(audio_received(leaving), 0, "nothing more after leaving");
    assert_eq!(threads.loads(), [2], "the viewer who left no longer counts");
}

// ------------------------------------------------ the same policy, track sinks

/// Joins a viewer whose way out is a track queue of `capacity` packets.
fn join_track(
    fan: &mut Fanout,
    id: u64,
    capacity: usize,
) -> tokio::sync::mpsc::Receiver<TrackPacket> {
    let (sink, rx) = TrackSink::new(capacity);
    fan.join(id, Sink::Track(sink), CancellationToken::new(), (0, 0));
    fan.offer_replays(Instant::now(), |_| 0);
    rx
}

/// The first payload bytes of the video queued for a track viewer, in order.
fn track_video(rx: &mut tokio::sync::mpsc::Receiver<TrackPacket>) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(p) = rx.try_recv() {
        if let TrackPacket::Video { payload, .. } = p {
            out.push(payload[0]);
        }
    }
    out
}

#[test]
fn a_track_viewer_starts_at_a_keyframe_like_any_other() {
    let payloads = PayloadCache::default();
    let mut fan = Fanout::default().holding_from(0);
    let mut rx = join_track(&mut fan, 1, 64);
    let now = Instant::now();
    fan.media(&burst(10, 3, 3000, false), &payloads, now);
    assert!(track_video(&mut rx).is_empty(), "no keyframe yet");
    let mut key = packets(20, 2, 6000, false);
    key.extend(packets(30, 3, 9000, true));
    fan.media(&Media::VideoPackets(key.into()), &payloads, now);
    assert_eq!(
        track_video(&mut rx),
        [30, 31, 32],
        "from the keyframe start on"
    );
    fan.media(&burst(40, 2, 12_000, false), &payloads, now);
    assert_eq!(track_video(&mut rx), [40, 41]);
    assert_eq!(take(&mut fan), 0, "nothing for a track goes to the port");
}

#[test]
fn a_full_track_queue_restarts_only_that_viewer_at_the_next_keyframe() {
    let payloads = PayloadCache::default();
    let mut fan = Fanout::default().holding_from(0);
    let mut slow = join_track(&mut fan, 1, 4);
    let mut fast = join_track(&mut fan, 2, 64);
    let now = Instant::now();
    fan.media(&burst(10, 3, 3000, true), &payloads, now);
    assert!(!fan.take_keyframe_wanted());
    // The slow viewer does not read: its queue (4) overflows in this frame.
    fan.media(&burst(20, 3, 6000, false), &payloads, now);
    assert!(
        fan.take_keyframe_wanted(),
        "the overflow asks the source for a keyframe"
    );
    assert!(!fan.take_keyframe_wanted(), "asked once");
    fan.media(&burst(30, 2, 9000, false), &payloads, now);
    assert_eq!(track_video(&mut fast), [10, 11, 12, 20, 21, 22, 30, 31]);
    assert_eq!(
        track_video(&mut slow),
        [10, 11, 12, 20],
        "what fit, then nothing until a keyframe"
    );
    fan.media(&burst(50, 2, 12_000, true), &payloads, now);
    assert_eq!(track_video(&mut slow), [50, 51], "back at the keyframe");
    assert_eq!(track_video(&mut fast), [50, 51]);
}

#[test]
fn a_track_viewer_gets_the_group_of_pictures_when_its_queue_has_room() {
    let payloads = PayloadCache::default();
    let mut fan = Fanout::default().holding_from(0);
    let mut first = join_track(&mut fan, 1, 64);
    let now = Instant::now();
    fan.media(&burst(10, 2, 3000, true), &payloads, now);
    fan.media(&burst(20, 2, 6000, false), &payloads, now);
    track_video(&mut first);
    // Room for 64 packets: the 4-packet group is replayed at once.
    let mut joiner = join_track(&mut fan, 2, 64);
    assert_eq!(track_video(&mut joiner), [10, 11, 20, 21]);
    // Room for 2 packets only: no replay, it waits for the next keyframe.
    let mut cramped = join_track(&mut fan, 3, 2);
    assert!(track_video(&mut cramped).is_empty());
    fan.media(&burst(30, 1, 9000, false), &payloads, now);
    assert!(track_video(&mut cramped).is_empty());
    assert_eq!(track_video(&mut joiner), [30]);
}
