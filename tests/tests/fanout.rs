//! Many viewers of one session, joined by a webrtc-rs client over NATS
//! (the same join and signals the api relays for browsers).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bus_schema::{Bus, Role, SessionId, Subjects};
use serde_json::{json, Value};
use system_tests::viewer::{self, Interceptors};
use system_tests::*;
use webrtc::media::io::sample_builder::SampleBuilder;
use webrtc::rtp::codecs::h264::H264Packet;

/// What one test viewer has received.
#[derive(Default)]
struct Counters {
    /// Complete H.264 access units.
    frames: AtomicU64,
    audio_packets: AtomicU64,
    /// Width and height of the first decoded picture.
    decoded: std::sync::Mutex<Option<(usize, usize)>>,
    /// When set, the viewer stops reading its tracks.
    stalled: AtomicBool,
}

struct TestViewer {
    /// The `input` data channel, once the worker has opened it.
    input: viewer::Channel,
    rtc: viewer::Viewer,
    counters: Arc<Counters>,
}

async fn join(bus: &Bus, id: &SessionId) -> TestViewer {
    join_as(bus, id, Role::View).await
}

async fn join_as(bus: &Bus, id: &SessionId, role: Role) -> TestViewer {
    let (pending, pc) = viewer::start(bus, id, role, Interceptors::Default)
        .await
        .expect("join accepted");
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    viewer::on_tracks(&pc, move |track, video| {
        let c = c.clone();
        async move {
            let mut builder = SampleBuilder::new(128, H264Packet::default(), 90_000);
            let mut decoder = openh264::decoder::Decoder::new().ok();
            while let Ok((pkt, _)) = track.read_rtp().await {
                if c.stalled.load(Ordering::Relaxed) {
                    // Stop reading: packets pile up and are dropped in this viewer only.
                    std::future::pending::<()>().await;
                }
                if !video {
                    c.audio_packets.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                builder.push(pkt);
                while let Some(sample) = builder.pop() {
                    c.frames.fetch_add(1, Ordering::Relaxed);
                    let mut seen = c.decoded.lock().unwrap();
                    if seen.is_none() {
                        if let Some(d) = decoder.as_mut() {
                            if let Ok(Some(pic)) = d.decode(&sample.data) {
                                use openh264::formats::YUVSource;
                                *seen = Some(pic.dimensions());
                            }
                        }
                    }
                }
            }
        }
    });
    let input = viewer::data_channel(&pc);
    let rtc = pending.connect(bus, pc).await.expect("answer accepted");
    TestViewer {
        input,
        rtc,
        counters,
    }
}

/// A nats-server, a worker, and one live session `id` with `source`.
async fn session(
    id: &str,
    source: &str,
) -> (NatsServer, Service, async_nats::Client, Bus, SessionId) {
    session_with(id, source, |_| {}).await
}

/// [`session`] with the worker's config adjusted by `adjust`.
async fn session_with(
    id: &str,
    source: &str,
    adjust: impl FnOnce(&mut worker::Config),
) -> (NatsServer, Service, async_nats::Client, Bus, SessionId) {
    init_tracing();
    let nats = NatsServer::start().await;
    let mut config = worker::Config::for_tests(&nats.url());
    adjust(&mut config);
    let w = worker(config);
    let client = nats.client().await;
    let bus = Bus::new(client.clone(), Subjects::default()).with_timeout(Duration::from_secs(10));
    worker_answers(&client).await;
    let body = format!(r#"{{"id":"{id}","source":{source}}}"#);
    let created = raw_request(&client, "streams.v1.session.create", &body).await;
    assert_eq!(created["ok"], json!(true), "{created}");
    (nats, w, client, bus, SessionId::parse(id).unwrap())
}

async fn stats(c: &async_nats::Client, id: &str) -> Value {
    let r = raw_request(c, &format!("streams.v1.session.{id}.stats"), "{}").await;
    assert_eq!(r["ok"], json!(true), "{r}");
    r["result"].clone()
}

/// The two twenty-viewer tests run one at a time: forty webrtc-rs viewers
/// and two workers at once on a 2-core machine measure the machine.
static TWENTY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const FAN_SOURCE: &str =
    r#"{"kind":"synthetic","width":320,"height":240,"fps":15,"bitrate_kbps":300}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_viewers_each_get_a_steady_decodable_stream_and_a_stalled_one_slows_nobody() {
    let _serial = TWENTY.lock().await;
    let (_nats, _w, client, bus, id) = session("fan", FAN_SOURCE).await;
    twenty_viewers(&client, &bus, &id).await;
}

/// The same through one UDP port for every peer (`UDP_PORT`, how
/// docker-compose runs workers), whose sends the worker batches: the
/// packets go out in fewer system calls than packets, none dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_viewers_through_one_udp_port_get_the_stream_in_batched_sends() {
    let _serial = TWENTY.lock().await;
    let port = free_udp_port();
    let (_nats, _w, client, bus, id) = session_with("fan", FAN_SOURCE, |c| {
        c.udp_port = Some(port);
        // Two sender threads, each with its share of the viewers.
        c.udp_send_threads = Some(2);
    })
    .await;
    let candidates = twenty_viewers(&client, &bus, &id).await;
    // One IPv4 host candidate on that port: webrtc-rs 0.17 shares one mux
    // connection among a peer's host candidates and they steal each
    // other's packets, so the worker offers exactly one.
    for (i, c) in candidates.iter().enumerate() {
        let addrs: std::collections::BTreeSet<(String, String)> = c
            .iter()
            .map(|line| {
                // candidate:<foundation> <component> udp <prio> <ip> <port> typ host
                let f: Vec<&str> = line.split_whitespace().collect();
                (f[4].to_owned(), f[5].to_owned())
            })
            .collect();
        assert_eq!(addrs.len(), 1, "viewer {i}: {c:?}");
        let (ip, p) = addrs.into_iter().next().unwrap();
        assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "{ip}");
        assert_eq!(p, port.to_string());
    }
    let stats = worker_stats(&client).await;
    let udp = &stats["udp"];
    let (packets, sends) = (
        udp["packets"].as_u64().unwrap(),
        udp["sends"].as_u64().unwrap(),
    );
    eprintln!(
        "one UDP port: {packets} packets in {sends} sends, {} dropped",
        udp["dropped"]
    );
    assert!(packets > 0 && sends < packets, "{udp}");
    assert_eq!(udp["dropped"], json!(0), "{udp}");
    assert_eq!(udp["threads"], json!(2), "{udp}");
}

/// Twenty viewers of session `id`: each decodes and keeps receiving while
/// one of them stalls; all leave and are dropped. Returns the ICE
/// candidates the worker gave each viewer.
async fn twenty_viewers(
    client: &async_nats::Client,
    bus: &Bus,
    id: &SessionId,
) -> Vec<Vec<String>> {
    let (client, bus, id) = (client.clone(), bus.clone(), id.clone());

    const N: usize = 20;
    let mut viewers = Vec::new();
    for _ in 0..N {
        viewers.push(join(&bus, &id).await);
    }
    assert_eq!(
        stats(&client, "fan").await["viewers"]
            .as_array()
            .unwrap()
            .len(),
        N
    );

    // Every viewer decodes a 320x240 picture and keeps receiving.
    wait_for(
        "every viewer to decode a picture",
        Duration::from_secs(30),
        || async {
            viewers
                .iter()
                .all(|v| *v.counters.decoded.lock().unwrap() == Some((320, 240)))
                .then_some(())
        },
    )
    .await;
    wait_for(
        "audio to reach everyone",
        Duration::from_secs(10),
        || async {
            viewers
                .iter()
                .all(|v| v.counters.audio_packets.load(Ordering::Relaxed) > 0)
                .then_some(())
        },
    )
    .await;

    // One viewer stops reading. Over the next stretch of the source's
    // output, every other viewer still receives (nearly) every frame.
    viewers[0].counters.stalled.store(true, Ordering::Relaxed);
    let before: Vec<u64> = viewers
        .iter()
        .map(|v| v.counters.frames.load(Ordering::Relaxed))
        .collect();
    let enc0 = stats(&client, "fan").await["frames_encoded"]
        .as_u64()
        .unwrap();
    let enc1 = wait_for(
        "the source to encode 45 more frames",
        Duration::from_secs(30),
        || async {
            let e = stats(&client, "fan").await["frames_encoded"]
                .as_u64()
                .unwrap();
            (e >= enc0 + 45).then_some(e)
        },
    )
    .await;
    // Frames in flight at the end of the window are allowed to arrive.
    let produced = enc1 - enc0;
    let received = wait_for(
        "the others to receive the window's frames",
        Duration::from_secs(5),
        || async {
            let got: Vec<u64> = viewers
                .iter()
                .zip(&before)
                .skip(1)
                .map(|(v, b)| v.counters.frames.load(Ordering::Relaxed) - b)
                .collect();
            got.iter().all(|g| *g * 10 >= produced * 9).then_some(got)
        },
    )
    .await;
    eprintln!("source produced {produced} frames; the 19 reading viewers received {received:?}");

    let candidates = viewers
        .iter()
        .map(|v| v.rtc.worker_candidates.lock().unwrap().clone())
        .collect();
    for v in &viewers {
        v.rtc.leave(&bus).await.expect("leave accepted");
        let _ = v.rtc.pc.close().await;
    }
    all_dropped(&client, "fan").await;
    candidates
}

/// Waits until the worker has dropped every viewer of session `id`.
async fn all_dropped(client: &async_nats::Client, id: &str) {
    wait_for(
        &format!("the worker to drop every viewer of {id}"),
        Duration::from_secs(30),
        || async {
            stats(client, id).await["viewers"]
                .as_array()
                .unwrap()
                .is_empty()
                .then_some(())
        },
    )
    .await;
}

async fn input_channel(v: &TestViewer) -> Arc<webrtc::data_channel::RTCDataChannel> {
    wait_for(
        "the input data channel to open",
        Duration::from_secs(20),
        || async { v.input.lock().await.clone() },
    )
    .await
}

fn key(code: &str, down: bool) -> bytes::Bytes {
    let evs = [bus_schema::InputEvent::Key {
        code: code.into(),
        down,
    }];
    bytes::Bytes::from(bus_schema::input::encode_input(&evs).unwrap())
}

async fn keys_down(c: &async_nats::Client, id: &str) -> Vec<String> {
    let s = stats(c, id).await;
    s["keys_down"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_from_controllers_and_the_backend_merges_and_bad_packets_are_refused() {
    let (_nats, _w, client, bus, id) = session(
        "keys",
        r#"{"kind":"synthetic","width":160,"height":120,"fps":10,"bitrate_kbps":100}"#,
    )
    .await;
    let a = join_as(&bus, &id, Role::Control).await;
    let b = join_as(&bus, &id, Role::Control).await;
    let viewer = join_as(&bus, &id, Role::View).await;
    let (da, db, dv) = (
        input_channel(&a).await,
        input_channel(&b).await,
        input_channel(&viewer).await,
    );

    // Union: both hold KeyA; it stays down until the last one lets go.
    da.send(&key("KeyA", true)).await.unwrap();
    db.send(&key("KeyA", true)).await.unwrap();
    wait_for("KeyA down", Duration::from_secs(10), || async {
        (keys_down(&client, "keys").await == ["KeyA"]).then_some(())
    })
    .await;
    let accepted = stats(&client, "keys").await["input_events"]
        .as_u64()
        .unwrap();
    da.send(&key("KeyA", false)).await.unwrap();
    wait_for(
        "a's release to be processed",
        Duration::from_secs(10),
        || async {
            let n = stats(&client, "keys").await["input_events"]
                .as_u64()
                .unwrap();
            (n > accepted).then_some(())
        },
    )
    .await;
    assert_eq!(
        keys_down(&client, "keys").await,
        ["KeyA"],
        "b still holds KeyA"
    );
    db.send(&key("KeyB", true)).await.unwrap();
    wait_for("KeyB down too", Duration::from_secs(10), || async {
        (keys_down(&client, "keys").await == ["KeyA", "KeyB"]).then_some(())
    })
    .await;

    // The view-only viewer and malformed packets are refused and change nothing.
    let refused0 = stats(&client, "keys").await["input_refused"]
        .as_u64()
        .unwrap();
    dv.send(&key("KeyC", true)).await.unwrap();
    da.send(&bytes::Bytes::from_static(&[0xEE, 1, 2]))
        .await
        .unwrap();
    da.send(&bytes::Bytes::from_static(&[0x01, 0x01, 0x05, b'K']))
        .await
        .unwrap();
    wait_for("three refusals", Duration::from_secs(10), || async {
        let r = stats(&client, "keys").await["input_refused"]
            .as_u64()
            .unwrap();
        (r >= refused0 + 3).then_some(())
    })
    .await;
    assert_eq!(keys_down(&client, "keys").await, ["KeyA", "KeyB"]);

    // The backend injects input over NATS like one more controller.
    let r = raw_request(
        &client,
        "streams.v1.session.keys.input",
        r#"{"events":[{"type":"key","code":"KeyZ","down":true},{"type":"mouse_abs","x":100,"y":200}]}"#,
    )
    .await;
    assert_eq!(r["ok"], json!(true), "{r}");
    assert_eq!(keys_down(&client, "keys").await, ["KeyA", "KeyB", "KeyZ"]);
    let r = raw_request(
        &client,
        "streams.v1.session.keys.input",
        r#"{"events":[{"type":"key","code":"Key Z","down":true}]}"#,
    )
    .await;
    assert_eq!(r["error"]["code"], "invalid_request", "{r}");

    // b leaves: everything it held is released; nobody else's keys are.
    b.rtc.leave(&bus).await.unwrap();
    wait_for("b's keys released", Duration::from_secs(10), || async {
        (keys_down(&client, "keys").await == ["KeyZ"]).then_some(())
    })
    .await;
}

/// What the viewer of [`a_lost_packet_reported_by_a_viewer_on_the_one_port_comes_again_and_both_streams_get_sender_reports`] saw.
enum Seen {
    /// A video packet: sequence number and payload.
    Video(u16, bytes::Bytes),
    /// A sender report: SSRC, packet count, RTP time.
    Report(u32, u32, u32),
    /// The SSRC of a track, as it starts.
    Track(u32, bool),
}

/// On the one UDP port the worker sends viewers' media itself (SRTP with
/// the keys of the viewer's DTLS handshake): a packet the viewer reports
/// lost in a NACK comes again, the same packet, and the viewer gets RTCP
/// sender reports for its video and audio streams, as webrtc-rs's NACK
/// responder and report interceptor gave before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_packet_reported_by_a_viewer_on_the_one_port_comes_again_and_both_streams_get_sender_reports(
) {
    use webrtc::rtcp::sender_report::SenderReport;
    use webrtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};

    let port = free_udp_port();
    let (_nats, _w, client, bus, id) =
        session_with("nack", FAN_SOURCE, |c| c.udp_port = Some(port)).await;
    let pending = viewer::request(&bus, &id, Role::View)
        .await
        .expect("join accepted");
    // No interceptors (so this viewer sends no NACKs of its own) and no
    // SRTP replay window, so a packet that comes twice is read twice.
    let mut se = webrtc::api::setting_engine::SettingEngine::default();
    se.disable_srtp_replay_protection(true);
    let api = viewer::api(Interceptors::None, se).expect("api");
    let pc = viewer::peer(&api).await.expect("peer");
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<Seen>();
    pc.on_track(Box::new(move |track, receiver, _| {
        let tx = tx.clone();
        let video = viewer::is_video(&track);
        let _ = tx.send(Seen::Track(track.ssrc(), video));
        {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Ok((pkts, _)) = receiver.read_rtcp().await {
                    for p in pkts {
                        if let Some(sr) = p.as_any().downcast_ref::<SenderReport>() {
                            let _ = tx.send(Seen::Report(sr.ssrc, sr.packet_count, sr.rtp_time));
                        }
                    }
                }
            });
        }
        Box::pin(async move {
            if !video {
                // Audio is read so its RTCP keeps flowing; its packets are not needed.
                tokio::spawn(async move { while track.read_rtp().await.is_ok() {} });
                return;
            }
            while let Ok((pkt, _)) = track.read_rtp().await {
                let _ = tx.send(Seen::Video(pkt.header.sequence_number, pkt.payload));
            }
        })
    }));
    let v = pending
        .connect(&bus, pc.clone())
        .await
        .expect("answer accepted");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut ssrcs = std::collections::HashMap::new(); // ssrc -> video?
    let mut received: std::collections::HashMap<u16, (bytes::Bytes, usize)> = Default::default();
    let mut reports: std::collections::HashMap<u32, (u32, u32)> = Default::default();
    let mut nacked: Option<u16> = None;
    loop {
        let got = tokio::time::timeout_at(deadline, seen.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out: nacked {nacked:?} (times seen: {:?}), reports {reports:?}, tracks {ssrcs:?}",
                    nacked.and_then(|s| received.get(&s)).map(|r| r.1)
                )
            })
            .expect("viewer open");
        match got {
            Seen::Track(ssrc, video) => {
                ssrcs.insert(ssrc, video);
            }
            Seen::Report(ssrc, packets, rtp_time) => {
                reports.insert(ssrc, (packets, rtp_time));
            }
            Seen::Video(seq, payload) => {
                let entry = received.entry(seq).or_insert((payload.clone(), 0));
                assert_eq!(entry.0, payload, "packet {seq} came again with other bytes");
                entry.1 += 1;
                // After 30 packets, report an early one lost.
                if nacked.is_none() && received.len() >= 30 {
                    let (&video_ssrc, _) = ssrcs.iter().find(|(_, v)| **v).expect("a video track");
                    let lost = *received.keys().min().expect("packets");
                    let nack = TransportLayerNack {
                        sender_ssrc: 1,
                        media_ssrc: video_ssrc,
                        nacks: vec![NackPair {
                            packet_id: lost,
                            lost_packets: 0,
                        }],
                    };
                    pc.write_rtcp(&[Box::new(nack)]).await.expect("NACK sent");
                    nacked = Some(lost);
                }
            }
        }
        let again = nacked
            .and_then(|s| received.get(&s))
            .is_some_and(|r| r.1 >= 2);
        let both_reported = ssrcs.len() == 2
            && ssrcs
                .keys()
                .all(|s| reports.get(s).is_some_and(|(packets, _)| *packets > 0));
        if again && both_reported {
            break;
        }
    }
    let udp = &worker_stats(&client).await["udp"];
    assert!(udp["direct"].as_u64().unwrap_or(0) > 30, "{udp}");
    v.leave(&bus).await.expect("left");
    v.close().await;
}

/// On the one UDP port a session's viewers share one fan-out task, which
/// stops taking the broadcast when its last viewer leaves and takes it
/// again for the next: a viewer joining a session everyone has left
/// decodes the stream, twice over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_one_port_a_viewer_joining_after_the_last_one_left_gets_the_stream() {
    let port = free_udp_port();
    let (_nats, _w, client, bus, id) =
        session_with("again", FAN_SOURCE, |c| c.udp_port = Some(port)).await;
    for round in 1..=3 {
        let v = join(&bus, &id).await;
        wait_for(
            &format!("viewer {round} to decode a picture"),
            Duration::from_secs(30),
            || async { (*v.counters.decoded.lock().unwrap() == Some((320, 240))).then_some(()) },
        )
        .await;
        v.rtc.leave(&bus).await.expect("leave accepted");
        let _ = v.rtc.pc.close().await;
        all_dropped(&client, "again").await;
    }
    let udp = &worker_stats(&client).await["udp"];
    assert!(udp["direct"].as_u64().unwrap_or(0) > 0, "{udp}");
}

/// The answer with every candidate's address replaced by an mDNS name, as
/// Chrome names host addresses by default.
fn mdns_named(sdp: String) -> String {
    sdp.split_inclusive('\n')
        .enumerate()
        .map(|(i, line)| match line.strip_prefix("a=candidate:") {
            Some(rest) => {
                let mut f: Vec<&str> = rest.split(' ').collect();
                let name = format!("{i:08x}-0000-4000-8000-000000000000.local");
                if f.len() > 4 {
                    f[4] = &name;
                }
                format!("a=candidate:{}", f.join(" "))
            }
            None => line.to_string(),
        })
        .collect()
}

/// UDP sockets of process `pid` bound to local `port` (its descriptors'
/// socket inodes found in `/proc/<pid>/net/udp` and `udp6`).
fn udp_sockets_on(pid: u32, port: u16) -> usize {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|t| {
                    let t = t.display().to_string();
                    Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let port = format!(":{port:04X}");
    ["udp", "udp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).ok())
        .map(|t| {
            t.lines()
                .skip(1)
                .filter(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() > 9 && f[1].ends_with(&port) && inodes.contains(f[9])
                })
                .count()
        })
        .sum()
}

/// Browsers hide host addresses behind mDNS names. The worker does not
/// resolve them (so it keeps no mDNS socket per viewer, as webrtc-rs's
/// resolver did) and still connects such viewers, from their checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_naming_their_candidates_with_mdns_get_video_and_the_worker_opens_no_mdns_socket() {
    init_tracing();
    let nats = NatsServer::start().await;
    let w = Proc::spawn(
        "worker",
        &[
            ("NATS_URL", nats.url()),
            ("WORKER_ID", "w-mdns".into()),
            ("REGISTRY_STORAGE", "memory".into()),
        ],
    );
    let c = nats.client().await;
    worker_answers(&c).await;
    let bus = Bus::new(c.clone(), Subjects::default()).with_timeout(Duration::from_secs(15));
    let id = SessionId::parse("mdns").unwrap();
    let r = raw_request(
        &c,
        "streams.v1.session.create",
        r#"{"id":"mdns","source":{"kind":"synthetic","width":160,"height":120,"fps":10,"bitrate_kbps":200}}"#,
    )
    .await;
    assert_eq!(r["ok"], json!(true), "{r}");
    let mut viewers = Vec::new();
    for _ in 0..3 {
        let (pending, pc) = viewer::start(&bus, &id, Role::View, Interceptors::Default)
            .await
            .expect("join accepted");
        let packets = viewer::count_video(&pc);
        let v = pending
            .connect_with(&bus, pc, mdns_named)
            .await
            .expect("answer accepted");
        viewers.push((v, packets));
    }
    for (i, (_, packets)) in viewers.iter().enumerate() {
        wait_for(
            &format!("video at viewer {i}"),
            Duration::from_secs(30),
            || async { (packets.load(Ordering::Relaxed) > 0).then_some(()) },
        )
        .await;
    }
    assert_eq!(
        udp_sockets_on(w.child.id(), 5353),
        0,
        "the worker keeps an mDNS socket with {} viewers",
        viewers.len()
    );
    for (v, _) in &viewers {
        v.close().await;
    }
}
