use super::*;
use crate::netsim::{Link, LinkProfile, SimRng};

const PACKET_SIZE: usize = 1392;

fn host(fec: u8) -> Packetizer {
    Packetizer::new(PacketizerConfig {
        packet_size: PACKET_SIZE,
        fec_percentage: fec,
        min_parity: 2,
        key: None,
    })
}

fn frame_bytes(rng: &mut SimRng, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
    if len >= 4 {
        v[..4].copy_from_slice(&[0, 0, 0, 1]);
    }
    v
}

fn drain(d: &mut Depacketizer) -> Vec<VideoEvent> {
    std::iter::from_fn(|| d.poll_event()).collect()
}

#[test]
fn nv_header_layout_matches_the_packed_c_struct() {
    // NV_VIDEO_PACKET (moonlight-common-c src/Video.h, Sunshine src/stream.cpp):
    // u32 streamPacketIndex, u32 frameIndex, u8 flags, u8 extraFlags,
    // u8 multiFecFlags, u8 multiFecBlocks, u32 fecInfo, little-endian.
    let nv = NvHeader {
        stream_packet_index: 0x0102,
        frame_index: 7,
        flags: FLAG_SOF | FLAG_CONTAINS_PIC_DATA,
        extra_flags: 0,
        multi_fec_flags: 0x10,
        fec_block: 1,
        last_fec_block: 2,
        fec_index: 3,
        data_shards: 40,
        fec_percentage: 20,
    };
    let mut b = [0u8; 16];
    nv.write(&mut b);
    assert_eq!(
        hex::encode(b),
        // 0x0102 << 8 | frame 7 | flags 5, extra 0, 0x10, (1<<4)|(2<<6)=0x90
        // | fecInfo = 3<<12 | 40<<22 | 20<<4 = 0x0a003140
        "000201000700000005001090".to_string() + "4031000a"
    );
    assert_eq!(NvHeader::parse(&b), Some(nv));
    assert_eq!(nv.parity_shards(), 8);
}

#[test]
fn frame_header_layout_matches_sunshine_short_header() {
    let h = FrameHeader {
        processing_latency: 0x0203,
        frame_type: FrameType::Idr,
        last_payload_len: 0x0506,
    };
    assert_eq!(h.to_bytes(), [0x01, 0x03, 0x02, 0x02, 0x06, 0x05, 0, 0]);
    assert_eq!(FrameHeader::parse(&h.to_bytes()), Some(h));
    assert_eq!(FrameHeader::parse(&[0x81, 0, 0, 0, 0, 0, 0, 0]), None);
}

#[test]
fn rtp_header_round_trips_with_extension_length() {
    let h = RtpHeader {
        header: RTP_VIDEO_HEADER_BYTE,
        payload_type: 0,
        sequence: 0xfffe,
        timestamp: 90_000,
        ssrc: 0,
    };
    let mut b = [0u8; 12];
    h.write(&mut b);
    assert_eq!(hex::encode(b), "9000fffe00015f9000000000");
    assert_eq!(RtpHeader::parse(&b), Some(h));
    assert_eq!(h.len(), 16);
}

#[test]
fn packetizer_sets_fec_info_flags_and_sequence_like_sunshine() {
    let mut p = host(20);
    let mut rng = SimRng::new(1);
    let data = frame_bytes(&mut rng, 10 * (PACKET_SIZE - 16) - 8 - 100);
    let packets = p.packetize(&HostFrame {
        frame_index: 1,
        frame_type: FrameType::Idr,
        rtp_timestamp: 0,
        data: &data,
    });
    // 10 data shards, ceil(10 * 20 / 100) = 2 parity.
    assert_eq!(packets.len(), 12);
    for (x, pkt) in packets.iter().enumerate() {
        assert_eq!(pkt.len(), PACKET_SIZE + 16);
        let rtp = RtpHeader::parse(pkt).unwrap();
        let nv = NvHeader::parse(&pkt[16..]).unwrap();
        assert_eq!(rtp.sequence, x as u16);
        assert_eq!(nv.fec_index, x as u16);
        assert_eq!((nv.data_shards, nv.fec_percentage), (10, 20));
        if x < 10 {
            let mut flags = FLAG_CONTAINS_PIC_DATA;
            if x == 0 {
                flags |= FLAG_SOF;
            }
            if x == 9 {
                flags |= FLAG_EOF;
            }
            assert_eq!(nv.flags, flags, "packet {x}");
            assert_eq!(nv.stream_packet_index, x as u32);
        }
    }
    let header = FrameHeader::parse(&packets[0][32..]).unwrap();
    assert_eq!(header.frame_type, FrameType::Idr);
    assert_eq!(usize::from(header.last_payload_len), PACKET_SIZE - 16 - 100);
    // The next frame continues the sequence.
    let next = p.packetize(&HostFrame {
        frame_index: 2,
        frame_type: FrameType::P,
        rtp_timestamp: 1500,
        data: &data[..100],
    });
    assert_eq!(RtpHeader::parse(&next[0]).unwrap().sequence, 12);
}

#[test]
fn frames_of_every_size_come_back_byte_identical_without_loss() {
    let mut p = host(20);
    let mut d = Depacketizer::new(DepacketizerConfig::new(PACKET_SIZE));
    let mut rng = SimRng::new(2);
    let now = Instant::now();
    let chunk = PACKET_SIZE - 16;
    // Sizes around packet boundaries, and frames needing 2, 3 and 4 FEC blocks
    // (212 data shards per block at 20%), and one past 4 blocks (FEC off).
    let sizes = [
        1,
        chunk - 8,
        chunk - 7,
        chunk,
        3 * chunk + 5,
        213 * chunk,
        500 * chunk + 17,
        700 * chunk,
        900 * chunk,
    ];
    for (i, &len) in sizes.iter().enumerate() {
        let data = frame_bytes(&mut rng, len);
        let frame_type = if i == 0 { FrameType::Idr } else { FrameType::P };
        for pkt in p.packetize(&HostFrame {
            frame_index: i as u32 + 1,
            frame_type,
            rtp_timestamp: i as u32 * 1500,
            data: &data,
        }) {
            d.push(now, &pkt).unwrap();
        }
        let events = drain(&mut d);
        assert_eq!(
            events,
            vec![VideoEvent::Frame(AccessUnit {
                frame_index: i as u32 + 1,
                frame_type,
                rtp_timestamp: i as u32 * 1500,
                data,
            })],
            "size {len}"
        );
    }
    assert_eq!(d.stats().recovered_shards, 0);
}

/// Runs `frames` frames through a seeded link; returns what arrived and the
/// depacketizer's stats.
fn run_link(
    seed: u64,
    profile: LinkProfile,
    fec: u8,
    frames: &[(FrameType, Vec<u8>)],
    key: Option<[u8; 16]>,
) -> (Vec<VideoEvent>, VideoStats) {
    let mut p = Packetizer::new(PacketizerConfig {
        packet_size: PACKET_SIZE,
        fec_percentage: fec,
        min_parity: 2,
        key,
    });
    let mut config = DepacketizerConfig::new(PACKET_SIZE);
    config.key = key;
    let mut d = Depacketizer::new(config);
    let mut link = Link::new(seed, profile);
    let start = Instant::now();
    let mut now = start;
    let mut events = Vec::new();
    let frame_interval = Duration::from_micros(16_667);
    for (i, (frame_type, data)) in frames.iter().enumerate() {
        for pkt in p.packetize(&HostFrame {
            frame_index: i as u32 + 1,
            frame_type: *frame_type,
            rtp_timestamp: i as u32 * 1500,
            data,
        }) {
            link.send(now, pkt);
        }
        let until = now + frame_interval;
        loop {
            let next = [link.deadline(), d.deadline()]
                .into_iter()
                .flatten()
                .min()
                .filter(|t| *t <= until);
            let Some(t) = next else { break };
            now = now.max(t);
            while let Some((_, pkt)) = link.poll(now) {
                let _ = d.push(now, &pkt);
            }
            d.expire(now);
            events.extend(std::iter::from_fn(|| d.poll_event()));
        }
        now = until;
    }
    // Let everything in flight land and every deadline pass.
    now += Duration::from_secs(1);
    while let Some((_, pkt)) = link.poll(now) {
        let _ = d.push(now, &pkt);
    }
    d.expire(now);
    events.extend(std::iter::from_fn(|| d.poll_event()));
    (events, d.stats().clone())
}

fn clip(seed: u64, n: usize) -> Vec<(FrameType, Vec<u8>)> {
    let mut rng = SimRng::new(seed);
    (0..n)
        .map(|i| {
            let (t, len) = if i % 30 == 0 {
                (FrameType::Idr, 40_000 + (rng.next_u64() % 20_000) as usize)
            } else {
                (FrameType::P, 2_000 + (rng.next_u64() % 30_000) as usize)
            };
            (t, frame_bytes(&mut rng, len))
        })
        .collect()
}

#[test]
fn fec_recovers_frames_under_seeded_loss_reorder_and_duplication() {
    let frames = clip(3, 120);
    let profile = LinkProfile {
        loss: 0.05,
        reorder: 0.05,
        duplicate: 0.02,
        ..LinkProfile::perfect()
    };
    let (events, stats) = run_link(11, profile, 50, &frames, None);
    let delivered: Vec<&AccessUnit> = events
        .iter()
        .filter_map(|e| match e {
            VideoEvent::Frame(au) => Some(au),
            _ => None,
        })
        .collect();
    assert!(stats.recovered_shards > 50, "{stats:?}");
    assert!(stats.duplicates > 0, "{stats:?}");
    // Every frame delivered is the one sent, byte for byte.
    for au in &delivered {
        assert_eq!(au.data, frames[au.frame_index as usize - 1].1);
    }
    assert_eq!(delivered.len(), 120, "{stats:?}");
}

#[test]
fn unrecoverable_loss_asks_for_an_idr_and_resumes_whole_at_the_next_one() {
    let frames = clip(4, 61);
    let mut p = host(20);
    let mut d = Depacketizer::new(DepacketizerConfig::new(PACKET_SIZE));
    let now = Instant::now();
    let mut delivered = Vec::new();
    let mut requests = Vec::new();
    for (i, (t, data)) in frames.iter().enumerate() {
        let index = i as u32 + 1;
        let pkts = p.packetize(&HostFrame {
            frame_index: index,
            frame_type: *t,
            rtp_timestamp: 0,
            data,
        });
        let n = pkts.len();
        for (k, pkt) in pkts.into_iter().enumerate() {
            // Frame 10 loses half its packets: beyond what parity covers.
            if index == 10 && k % 2 == 0 && k < n {
                continue;
            }
            d.push(now, &pkt).unwrap();
        }
        for e in drain(&mut d) {
            match e {
                VideoEvent::Frame(au) => delivered.push(au.frame_index),
                VideoEvent::RequestIdr { lost_frame } => requests.push((index, lost_frame)),
                other => panic!("{other:?}"),
            }
        }
    }
    // Frame 10 is given up when frame 13 arrives (3 frames of reordering
    // allowed), once; frames 11..=30 are P-frames that depend on it and are
    // dropped; frame 31 is the next IDR and everything after it is delivered.
    assert_eq!(requests, vec![(13, 10)]);
    let expected: Vec<u32> = (1..=9).chain(31..=61).collect();
    assert_eq!(delivered, expected);
    assert_eq!(d.stats().frames_lost, 1);
    assert_eq!(d.stats().frames_dropped_awaiting_idr, 20);
}

#[test]
fn an_incomplete_last_frame_is_given_up_at_its_deadline() {
    let mut p = host(0);
    let mut d = Depacketizer::new(DepacketizerConfig::new(PACKET_SIZE));
    let t0 = Instant::now();
    let mut rng = SimRng::new(5);
    let idr = frame_bytes(&mut rng, 5000);
    for pkt in p.packetize(&HostFrame {
        frame_index: 1,
        frame_type: FrameType::Idr,
        rtp_timestamp: 0,
        data: &idr,
    }) {
        d.push(t0, &pkt).unwrap();
    }
    assert!(matches!(drain(&mut d)[..], [VideoEvent::Frame(_)]));
    assert_eq!(d.deadline(), None, "nothing awaited");
    let pkts = p.packetize(&HostFrame {
        frame_index: 2,
        frame_type: FrameType::P,
        rtp_timestamp: 0,
        data: &idr,
    });
    d.push(t0, &pkts[0]).unwrap();
    let deadline = d.deadline().expect("frame 2 is awaited");
    assert_eq!(deadline, t0 + Duration::from_millis(100));
    d.expire(deadline - Duration::from_millis(1));
    assert_eq!(drain(&mut d), vec![]);
    d.expire(deadline);
    assert_eq!(
        drain(&mut d),
        vec![VideoEvent::RequestIdr { lost_frame: 2 }]
    );
    assert_eq!(d.deadline(), None);
    // Late packets of the given-up frame are stale.
    d.push(deadline, &pkts[1]).unwrap();
    assert_eq!(d.stats().stale, 1);
}

#[test]
fn encrypted_video_round_trips_and_tampering_is_rejected() {
    let key = [7u8; 16];
    let frames = clip(6, 10);
    let (events, stats) = run_link(1, LinkProfile::perfect(), 20, &frames, Some(key));
    assert_eq!(events.len(), 10, "{stats:?}");
    for (e, (_, sent)) in events.iter().zip(&frames) {
        assert!(matches!(e, VideoEvent::Frame(au) if &au.data == sent));
    }
    let mut p = Packetizer::new(PacketizerConfig {
        packet_size: PACKET_SIZE,
        fec_percentage: 20,
        min_parity: 2,
        key: Some(key),
    });
    let mut pkt = p.packetize(&HostFrame {
        frame_index: 1,
        frame_type: FrameType::Idr,
        rtp_timestamp: 0,
        data: &frames[0].1,
    })[0]
        .clone();
    assert_eq!(pkt.len(), ENC_PREFIX_LEN + PACKET_SIZE + 16);
    assert_eq!(pkt[11], b'V');
    let last = pkt.len() - 1;
    pkt[last] ^= 1;
    let mut config = DepacketizerConfig::new(PACKET_SIZE);
    config.key = Some(key);
    let mut d = Depacketizer::new(config);
    assert_eq!(d.push(Instant::now(), &pkt), Err(PacketError::Decrypt));
}

#[test]
fn malformed_datagrams_are_refused_not_fatal() {
    let mut d = Depacketizer::new(DepacketizerConfig::new(PACKET_SIZE));
    let now = Instant::now();
    assert_eq!(d.push(now, &[0x90; 10]), Err(PacketError::TooShort(10)));
    let mut pkt = vec![0u8; 64];
    pkt[0] = RTP_VIDEO_HEADER_BYTE;
    // fecInfo: index 9 of 2 data shards, 0%.
    let nv = NvHeader {
        fec_index: 9,
        data_shards: 2,
        ..NvHeader::default()
    };
    nv.write(&mut pkt[16..32]);
    assert!(matches!(
        d.push(now, &pkt),
        Err(PacketError::BadFecInfo { .. })
    ));
    assert_eq!(d.stats().rejected, 2);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Any bytes at all: refused or ignored, never a panic, never an
        /// unbounded loop (a far frame index jumps in one step).
        #[test]
        fn arbitrary_datagrams_never_panic(datagrams in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..1500), 0..40)) {
            let mut d = Depacketizer::new(DepacketizerConfig::new(PACKET_SIZE));
            let t0 = Instant::now();
            for (i, dg) in datagrams.iter().enumerate() {
                let _ = d.push(t0 + Duration::from_millis(i as u64), dg);
                d.expire(t0 + Duration::from_millis(i as u64 * 50));
                while d.poll_event().is_some() {}
            }
        }

        /// Headers that parse but carry random frame indices and FEC fields.
        #[test]
        fn random_header_fields_never_panic(fields in proptest::collection::vec(
            (any::<u32>(), any::<u8>(), any::<u8>(), any::<u32>(), 0usize..200), 1..60)) {
            let mut d = Depacketizer::new(DepacketizerConfig::new(PACKET_SIZE));
            let t0 = Instant::now();
            for (frame, flags, blocks, fec_info, len) in fields {
                let mut p = vec![0u8; SHARD_HEADER_LEN + len];
                p[0] = RTP_VIDEO_HEADER_BYTE;
                p[20..24].copy_from_slice(&frame.to_le_bytes());
                p[24] = flags;
                p[27] = blocks;
                p[28..32].copy_from_slice(&fec_info.to_le_bytes());
                let _ = d.push(t0, &p);
                while d.poll_event().is_some() {}
            }
        }

        /// Losses within what parity covers, in any pattern: every frame
        /// arrives byte-identical and no IDR is requested.
        #[test]
        fn losses_within_parity_are_always_recovered(
            sizes in proptest::collection::vec(1usize..60_000, 1..8),
            seed in any::<u64>(),
        ) {
            let mut p = host(20);
            let mut d = Depacketizer::new(DepacketizerConfig::new(PACKET_SIZE));
            let mut rng = SimRng::new(seed);
            let now = Instant::now();
            for (i, len) in sizes.iter().enumerate() {
                let data = frame_bytes(&mut rng, *len);
                let frame_type = if i == 0 { FrameType::Idr } else { FrameType::P };
                let packets = p.packetize(&HostFrame { frame_index: i as u32 + 1, frame_type, rtp_timestamp: 0, data: &data });
                // Group by FEC block; drop up to `parity` shards of each at random.
                let mut by_block: BTreeMap<u8, Vec<Vec<u8>>> = BTreeMap::new();
                for pkt in packets {
                    let nv = NvHeader::parse(&pkt[RTP_HEADER_LEN..]).unwrap();
                    by_block.entry(nv.fec_block).or_default().push(pkt);
                }
                for (_, block) in by_block {
                    let nv = NvHeader::parse(&block[0][RTP_HEADER_LEN..]).unwrap();
                    let parity = block.len() - usize::from(nv.data_shards);
                    let drops = (rng.next_u64() as usize) % (parity + 1);
                    let mut dropped = std::collections::BTreeSet::new();
                    while dropped.len() < drops {
                        dropped.insert((rng.next_u64() as usize) % block.len());
                    }
                    for (k, pkt) in block.iter().enumerate() {
                        if !dropped.contains(&k) {
                            d.push(now, pkt).unwrap();
                        }
                    }
                }
                let events = drain(&mut d);
                prop_assert_eq!(events, vec![VideoEvent::Frame(AccessUnit {
                    frame_index: i as u32 + 1, frame_type, rtp_timestamp: 0, data,
                })]);
            }
        }
    }

    #[test]
    fn a_far_frame_index_is_one_step_not_four_billion() {
        let mut d = Depacketizer::new(DepacketizerConfig::new(PACKET_SIZE));
        let mut p = host(20);
        let now = Instant::now();
        let data = vec![1u8; 100];
        for f in [1u32, u32::MAX - 10] {
            for pkt in p.packetize(&HostFrame {
                frame_index: f,
                frame_type: FrameType::Idr,
                rtp_timestamp: 0,
                data: &data,
            }) {
                d.push(now, &pkt).unwrap();
            }
        }
        let far = u32::MAX - 10;
        let events = drain(&mut d);
        assert!(
            matches!(
                events[..],
                [
                    VideoEvent::Frame(_),
                    VideoEvent::RequestIdr { lost_frame: 2 }
                ]
            ),
            "{events:?}"
        );
        // Frames 2..far-3 are given up at once; far-2 and far-1 may still come.
        assert_eq!(d.stats().frames_lost, u64::from(far - 4));
        d.expire(now + Duration::from_secs(1));
        let events = drain(&mut d);
        assert!(
            matches!(&events[..], [VideoEvent::Frame(au)] if au.frame_index == far),
            "{events:?}"
        );
        assert_eq!(d.stats().frames_lost, u64::from(far - 2));
    }
}

#[test]
fn with_reference_invalidation_a_loss_asks_to_invalidate_and_an_after_invalidation_frame_resumes() {
    let frames = clip(8, 20);
    let mut p = host(20);
    let mut config = DepacketizerConfig::new(PACKET_SIZE);
    config.reference_invalidation = true;
    let mut d = Depacketizer::new(config);
    let now = Instant::now();
    let mut delivered = Vec::new();
    let mut asks = Vec::new();
    for (i, (t, data)) in frames.iter().enumerate() {
        let index = i as u32 + 1;
        // The host answers the invalidation: frame 15 is encoded without the
        // lost references (type 5).
        let frame_type = if index == 15 {
            FrameType::AfterInvalidation
        } else {
            *t
        };
        let pkts = p.packetize(&HostFrame {
            frame_index: index,
            frame_type,
            rtp_timestamp: 0,
            data,
        });
        for (k, pkt) in pkts.into_iter().enumerate() {
            if index == 6 && k % 2 == 0 {
                continue;
            }
            d.push(now, &pkt).unwrap();
        }
        for e in drain(&mut d) {
            match e {
                VideoEvent::Frame(au) => delivered.push((au.frame_index, au.frame_type)),
                other => asks.push(other),
            }
        }
    }
    assert_eq!(
        asks,
        vec![VideoEvent::InvalidateRefFrames { first: 6, last: 9 }]
    );
    let indices: Vec<u32> = delivered.iter().map(|(i, _)| *i).collect();
    let expected: Vec<u32> = (1..=5).chain(15..=20).collect();
    assert_eq!(indices, expected);
    assert_eq!(delivered[5], (15, FrameType::AfterInvalidation));
}
