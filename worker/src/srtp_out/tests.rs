use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use webrtc::rtcp::sender_report::SenderReport;
use webrtc::rtp::packet::Packet as RtpPacket;
use webrtc::srtp::config::SessionKeys;
use webrtc::srtp::context::Context;
use webrtc::srtp::protection_profile::ProtectionProfile;
use webrtc::util::Unmarshal;

use super::*;
use crate::udp::BatchedUdp;

fn parse(buf: &[u8]) -> RtpPacket {
    let mut b = buf;
    RtpPacket::unmarshal(&mut b).expect("valid RTP")
}

#[test]
fn packets_are_numbered_from_the_first_seq_across_the_wrap_with_the_streams_ssrc() {
    let now = Instant::now();
    let mut s = OutStream::new(0xdead_beef, 102, 90_000, 0xfffe, 16);
    let mut out = Vec::new();
    let (mut seen, mut rocs) = (Vec::new(), Vec::new());
    for (i, marker) in [false, false, true].into_iter().enumerate() {
        let payload = Bytes::from(vec![i as u8; 10 + i]);
        out.clear();
        rocs.push(s.next(&payload, marker, 1000, now, &mut out));
        let p = parse(&out);
        assert_eq!(p.header.version, 2);
        assert_eq!(p.header.ssrc, 0xdead_beef);
        assert_eq!(p.header.payload_type, 102);
        assert_eq!(p.header.timestamp, 1000);
        assert_eq!(p.header.marker, marker);
        assert_eq!(p.payload, payload);
        seen.push(p.header.sequence_number);
    }
    assert_eq!(seen, [0xfffe, 0xffff, 0]);
    assert_eq!(rocs, [0, 0, 1], "the rollover counter counts the wrap");
    // A retransmission keeps the rollover counter it was first sent with.
    assert_eq!(s.again(0xffff, &mut out), Some(0));
    assert_eq!(s.again(0, &mut out), Some(1));
}

#[test]
fn a_kept_packet_is_sent_again_unchanged_and_an_overwritten_one_is_not() {
    let now = Instant::now();
    let mut s = OutStream::new(7, 102, 90_000, 100, 4);
    let mut out = Vec::new();
    let mut first = Vec::new();
    for i in 0..6u8 {
        out.clear();
        s.next(
            &Bytes::from(vec![i; 20]),
            i == 5,
            90 * u32::from(i),
            now,
            &mut out,
        );
        if i == 2 {
            first = out.clone();
        }
    }
    // 100 and 101 were overwritten by 104 and 105 (4 slots).
    out.clear();
    assert_eq!(s.again(100, &mut out), None);
    assert_eq!(s.again(101, &mut out), None);
    assert!(out.is_empty(), "nothing written for a packet not kept");
    assert_eq!(s.again(102, &mut out), Some(0));
    assert_eq!(out, first, "a retransmission is the same packet");
    assert_eq!(s.again(200, &mut out), None, "never sent");
    let mut none = OutStream::new(8, 111, 48_000, 0, 0);
    none.next(&Bytes::from_static(b"x"), false, 0, now, &mut out);
    assert_eq!(
        none.again(0, &mut out),
        None,
        "a stream without history resends nothing"
    );
}

#[test]
fn a_report_carries_the_counts_and_the_rtp_time_the_clock_has_reached() {
    let t0 = Instant::now();
    let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut s = OutStream::new(9, 111, 48_000, 0, 0);
    assert!(s.report(t0, wall).is_none(), "no report before a packet");
    let mut out = Vec::new();
    s.next(&Bytes::from(vec![0; 100]), false, 5_000, t0, &mut out);
    s.next(&Bytes::from(vec![0; 60]), false, 5_960, t0, &mut out);
    let r = s
        .report(t0 + Duration::from_millis(500), wall)
        .expect("a report");
    assert_eq!(r.ssrc, 9);
    assert_eq!(r.packet_count, 2);
    assert_eq!(r.octet_count, 160, "payload octets only");
    assert_eq!(r.rtp_time, 5_960 + 24_000, "half a second at 48 kHz");
    assert_eq!(r.ntp_time, ntp(wall));
}

#[test]
fn a_nack_asks_for_each_packet_once_and_for_at_most_the_cap() {
    use webrtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
    let nack = |pairs: Vec<NackPair>| TransportLayerNack {
        sender_ssrc: 1,
        media_ssrc: 2,
        nacks: pairs,
    };
    // 10 and the bitmask's 11 and 13; then 10 again and 11 again.
    let pairs = vec![
        NackPair {
            packet_id: 10,
            lost_packets: 0b101,
        },
        NackPair {
            packet_id: 10,
            lost_packets: 0b1,
        },
    ];
    assert_eq!(nacked(&nack(pairs)), [10, 11, 13]);
    // A crafted NACK listing 400 packets (17 per pair) gets the cap.
    let many: Vec<NackPair> = (0..400u16 / 17 + 1)
        .map(|i| NackPair {
            packet_id: i * 17,
            lost_packets: 0xffff,
        })
        .collect();
    let asked = nacked(&nack(many));
    assert_eq!(asked.len(), MAX_NACKED);
    assert_eq!(asked[..3], [0, 1, 2]);
}

#[test]
fn ntp_time_counts_from_1900_with_a_binary_fraction() {
    assert_eq!(ntp(UNIX_EPOCH), 2_208_988_800 << 32);
    assert_eq!(
        ntp(UNIX_EPOCH + Duration::from_millis(1500)),
        ((2_208_988_800 + 1) << 32) | 0x8000_0000
    );
}

fn keys(profile: ProtectionProfile) -> SessionKeys {
    let key: Vec<u8> = (0..profile.key_len() as u8).collect();
    let salt: Vec<u8> = (100..100 + profile.salt_len() as u8).collect();
    SessionKeys {
        local_master_key: key.clone(),
        local_master_salt: salt.clone(),
        remote_master_key: key,
        remote_master_salt: salt,
    }
}

async fn recv(sock: &tokio::net::UdpSocket) -> Vec<u8> {
    let mut buf = vec![0; 2000];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .expect("a packet within 5 s")
        .expect("recv");
    buf.truncate(n);
    buf
}

#[tokio::test]
async fn a_viewer_decrypts_what_the_direct_path_sends_with_the_dtls_keys() {
    for profile in [
        ProtectionProfile::AeadAes128Gcm,
        ProtectionProfile::Aes128CmHmacSha1_80,
    ] {
        let port = BatchedUdp::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), 1).unwrap();
        let viewer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let keys = keys(profile);
        let mut out = SrtpOut::new(
            &keys,
            profile,
            viewer.local_addr().unwrap(),
            OutStream::new(1111, 102, 90_000, 10, VIDEO_HISTORY),
            OutStream::new(2222, 111, 48_000, 500, 0),
        )
        .unwrap();
        assert!(out.seals_in_place(), "{profile:?} is sealed in the outbox");
        let (mut udp, mut outbox) = (port.queue(), Outbox::default());
        let mut rx = Context::new(
            &keys.remote_master_key,
            &keys.remote_master_salt,
            profile,
            None,
            None,
        )
        .unwrap();
        let now = Instant::now();
        let frame: Vec<(Bytes, bool, u32)> = (0..3u8)
            .map(|i| (Bytes::from(vec![i; 1186]), i == 2, 3000))
            .collect();
        out.send_video(frame.iter().map(|(p, m, t)| (p, *m, *t)), now, &mut outbox);
        outbox.flush(&mut udp, now);
        let mut sealed = Vec::new();
        for (i, (payload, marker, ts)) in frame.iter().enumerate() {
            let wire = recv(&viewer).await;
            let p = parse(&rx.decrypt_rtp(&wire).expect("decrypts"));
            assert_eq!(p.header.sequence_number, 10 + i as u16);
            assert_eq!(
                (&p.payload, p.header.marker, p.header.timestamp),
                (payload, *marker, *ts)
            );
            sealed.push(wire);
        }
        out.send_audio(&Bytes::from_static(b"opus"), 960, now, &mut outbox);
        outbox.flush(&mut udp, now);
        let p = parse(
            &rx.decrypt_rtp(&recv(&viewer).await)
                .expect("audio decrypts"),
        );
        assert_eq!(
            (
                p.header.ssrc,
                p.header.payload_type,
                p.header.sequence_number
            ),
            (2222, 111, 500)
        );

        // A NACK for seq 11 gets the same packet again; 99 was never sent.
        assert_eq!(out.resend(&[11, 99], &mut outbox), 1);
        outbox.flush(&mut udp, now);
        assert_eq!(
            recv(&viewer).await,
            sealed[1],
            "the retransmission is the same SRTP packet"
        );

        assert!(out.report_due(now));
        out.report(now, SystemTime::now(), &mut outbox).unwrap();
        outbox.flush(&mut udp, now);
        assert!(!out.report_due(now + Duration::from_millis(10)));
        let rtcp = rx
            .decrypt_rtcp(&recv(&viewer).await)
            .expect("SRTCP decrypts");
        let pkts = webrtc::rtcp::packet::unmarshal(&mut &rtcp[..]).expect("RTCP");
        let srs: Vec<(u32, u32)> = pkts
            .iter()
            .map(|p| {
                let sr = p
                    .as_any()
                    .downcast_ref::<SenderReport>()
                    .expect("a sender report");
                (sr.ssrc, sr.packet_count)
            })
            .collect();
        assert_eq!(srs, [(1111, 3), (2222, 1)]);
        assert_eq!(out.refused(), 0);
    }
}

#[tokio::test]
async fn an_outbox_keeps_each_lanes_packets_apart_and_every_destination_in_order() {
    let lanes = 2;
    let port = BatchedUdp::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), lanes).unwrap();
    let mut udp = port.queue();
    let viewers = crate::udp::tests::one_receiver_per_lane(lanes).await;
    let to: Vec<_> = viewers.iter().map(|v| v.local_addr().unwrap()).collect();
    let mut outbox = Outbox::new(lanes);
    // Interleaved as a fan-out writes them: each packet to both viewers.
    for n in 0..20u8 {
        for (v, &addr) in to.iter().enumerate() {
            outbox.push(&[n, v as u8, 0x77], addr);
        }
    }
    assert_eq!(outbox.len(), 40);
    let lane_of = |a| crate::udp::lane_of(a, lanes);
    for (lane, waiting) in outbox.lanes.iter().enumerate() {
        assert_eq!(waiting.packets.len(), 20, "lane {lane}");
        assert!(waiting.packets.iter().all(|&(_, a)| lane_of(a) == lane));
    }
    outbox.flush(&mut udp, Instant::now());
    assert!(outbox.is_empty());
    for (v, rx) in viewers.iter().enumerate() {
        for n in 0..20u8 {
            assert_eq!(recv(rx).await, [n, v as u8, 0x77], "viewer {v}, packet {n}");
        }
    }
    assert_eq!(
        port.counters()
            .direct
            .load(std::sync::atomic::Ordering::Relaxed),
        40
    );
}
