//! Sources plug in behind one interface; when one fails, its session ends
//! with `source_failed` and says why.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_schema::SourceSpec;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use system_tests::*;
use worker::source::{EncodedVideo, Media, SourceError, SourceFactory, SourceFault, SourceHandle};

/// Refuses to start.
struct Broken;

impl SourceFactory for Broken {
    fn start(&self, _: &SourceSpec) -> Result<SourceHandle, SourceError> {
        Err(SourceError::Unsupported(
            "the test host is unreachable".into(),
        ))
    }
}

/// Sends a few frames, then fails.
struct Flaky;

impl SourceFactory for Flaky {
    fn start(&self, _: &SourceSpec) -> Result<SourceHandle, SourceError> {
        let mut h = SourceHandle::new(64);
        h.spawn_thread("flaky-src", |link| {
            for seq in 0..5u64 {
                if link.sleep_until(Instant::now() + Duration::from_millis(100)) {
                    return Ok(());
                }
                link.publish(Media::Video(Arc::new(EncodedVideo {
                    seq,
                    pts_90k: seq * 9000,
                    keyframe: seq == 0,
                    annexb: Bytes::from_static(&[0, 0, 0, 1, 0x65, 0x88]),
                    width: 16,
                    height: 16,
                    captured_at: Instant::now(),
                })));
            }
            Err(SourceFault::Io {
                what: "stream from the host",
                detail: "connection reset".into(),
            })
        })?;
        Ok(h)
    }
}

fn cfg(nats: &NatsServer) -> worker::Config {
    worker::Config::for_tests(&nats.url())
}

#[tokio::test]
async fn a_source_that_cannot_start_is_a_clear_error_and_an_ended_record() {
    init_tracing();
    let nats = NatsServer::start().await;
    let _w = worker_with(cfg(&nats), Arc::new(Broken));
    let c = nats.client().await;
    worker_answers(&c).await;
    let r = raw_request(&c, "streams.v1.session.create", r#"{"id":"nope"}"#).await;
    assert_eq!(r["ok"], json!(false), "{r}");
    assert_eq!(r["error"]["code"], "source_failed");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unreachable"));
    let rec = registry_get(&c, "nope")
        .await
        .expect("the attempt is recorded");
    assert_eq!(rec["state"], "ended");
    assert_eq!(rec["ended"]["reason"], "source_failed");
    // The slot was given back: the worker still takes sessions up to capacity.
    let listed = raw_request(&c, "streams.v1.session.list", "").await;
    assert_eq!(listed["result"]["sessions"], json!([]));
}

#[tokio::test]
async fn a_source_failing_mid_stream_ends_its_session_with_the_reason() {
    init_tracing();
    let nats = NatsServer::start().await;
    let _w = worker_with(cfg(&nats), Arc::new(Flaky));
    let c = nats.client().await;
    worker_answers(&c).await;
    let mut ended = subscribe(&c, "streams.v1.event.session.flaky.ended").await;
    let r = raw_request(&c, "streams.v1.session.create", r#"{"id":"flaky"}"#).await;
    assert_eq!(r["result"]["state"], "live", "{r}");
    let m = tokio::time::timeout(Duration::from_secs(10), ended.next())
        .await
        .unwrap()
        .unwrap();
    let ev: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(ev["reason"], "source_failed");
    assert_eq!(
        ev["detail"],
        "stream from the host failed: connection reset"
    );
}

// ------------------------------------------------------------ the RTP source

/// A UDP port nobody listens on right now.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

fn rtp_spec(video: u16, audio: Option<u16>) -> String {
    match audio {
        Some(a) => format!(r#"{{"kind":"rtp","video_port":{video},"audio_port":{a}}}"#),
        None => format!(r#"{{"kind":"rtp","video_port":{video}}}"#),
    }
}

async fn create(c: &async_nats::Client, id: &str, source: &str) -> Value {
    let body = format!(r#"{{"id":"{id}","source":{source}}}"#);
    raw_request(c, "streams.v1.session.create", &body).await
}

async fn frames(c: &async_nats::Client, id: &str) -> u64 {
    let r = raw_request(c, &format!("streams.v1.session.{id}.stats"), "{}").await;
    assert_eq!(r["ok"], json!(true), "{r}");
    r["result"]["frames_encoded"].as_u64().unwrap()
}

async fn port_is_free(port: u16) -> bool {
    std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

/// What a webrtc-rs viewer joined over NATS has received.
#[derive(Default)]
struct Received {
    frames: std::sync::atomic::AtomicU64,
    keyframes: std::sync::atomic::AtomicU64,
    audio_packets: std::sync::atomic::AtomicU64,
    /// The size of the first picture openh264 decoded.
    decoded: std::sync::Mutex<Option<(usize, usize)>>,
}

/// Joins `id` as a viewer with webrtc-rs (the signals the api relays for
/// browsers) and counts what arrives.
async fn rtc_viewer(
    bus: &bus_schema::Bus,
    id: &bus_schema::SessionId,
) -> (
    Arc<webrtc::peer_connection::RTCPeerConnection>,
    Arc<Received>,
) {
    use std::sync::atomic::Ordering;
    use system_tests::viewer::{self, Interceptors};
    use webrtc::media::io::sample_builder::SampleBuilder;
    use webrtc::rtp::codecs::h264::H264Packet;

    let (pending, pc) = viewer::start(bus, id, bus_schema::Role::View, Interceptors::Default)
        .await
        .expect("join accepted");
    let got = Arc::new(Received::default());
    let g = got.clone();
    viewer::on_tracks(&pc, move |track, video| {
        let g = g.clone();
        async move {
            let mut builder = SampleBuilder::new(128, H264Packet::default(), 90_000);
            let mut decoder = openh264::decoder::Decoder::new().ok();
            while let Ok((pkt, _)) = track.read_rtp().await {
                if !video {
                    g.audio_packets.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                builder.push(pkt);
                while let Some(sample) = builder.pop() {
                    g.frames.fetch_add(1, Ordering::Relaxed);
                    if worker::source::nal_units(&sample.data)
                        .any(|n| worker::source::nal_type(n) == worker::source::NAL_IDR)
                    {
                        g.keyframes.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut seen = g.decoded.lock().unwrap();
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
    let v = pending.connect(bus, pc).await.expect("answer accepted");
    (v.pc, got)
}

/// Joins session `id` with [`rtc_viewer`] and waits until it has decoded
/// a 320x240 picture; panics if that takes longer than `within`.
async fn viewer_decoding(
    c: &async_nats::Client,
    id: &str,
    within: Duration,
) -> (
    Arc<webrtc::peer_connection::RTCPeerConnection>,
    Arc<Received>,
) {
    let bus = bus_schema::Bus::new(c.clone(), bus_schema::Subjects::default())
        .with_timeout(Duration::from_secs(10));
    let id = bus_schema::SessionId::parse(id).unwrap();
    let (pc, got) = rtc_viewer(&bus, &id).await;
    wait_for("the viewer to decode a 320x240 picture", within, || async {
        (*got.decoded.lock().unwrap() == Some((320, 240))).then_some(())
    })
    .await;
    (pc, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_feeds_a_session_over_rtp_and_a_viewer_decodes_it() {
    use std::sync::atomic::Ordering;
    init_tracing();
    let nats = NatsServer::start().await;
    let _w = worker(cfg(&nats));
    let c = nats.client().await;
    worker_answers(&c).await;
    let (vport, aport) = (free_udp_port(), free_udp_port());

    // Live as soon as the ports are bound, before any media.
    let r = create(&c, "rtp-feed", &rtp_spec(vport, Some(aport))).await;
    assert_eq!(r["result"]["state"], "live", "{r}");
    assert_eq!(r["result"]["spec"]["source"]["bind"], "127.0.0.1", "{r}");
    assert_eq!(frames(&c, "rtp-feed").await, 0);
    assert!(!port_is_free(vport).await && !port_is_free(aport).await);

    let sender = RtpSender::start(vport, Some(aport), 15);
    wait_for(
        "frames from ffmpeg in the session's stats",
        Duration::from_secs(20),
        || async { (frames(&c, "rtp-feed").await >= 5).then_some(()) },
    )
    .await;

    let (pc, got) = viewer_decoding(&c, "rtp-feed", Duration::from_secs(30)).await;
    wait_for("audio at the viewer", Duration::from_secs(10), || async {
        (got.audio_packets.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;
    assert!(got.keyframes.load(Ordering::Relaxed) >= 1);

    // The sender stops and a new one (new SSRC, sequence, timestamps)
    // takes over: the viewer gets its IDRs too.
    drop(sender);
    let keys = got.keyframes.load(Ordering::Relaxed);
    let _sender = RtpSender::start(vport, Some(aport), 15);
    wait_for(
        "a keyframe from the restarted sender",
        Duration::from_secs(20),
        || async { (got.keyframes.load(Ordering::Relaxed) > keys).then_some(()) },
    )
    .await;

    // Stopping the session closes its sockets.
    let r = raw_request(&c, "streams.v1.session.rtp-feed.stop", "{}").await;
    assert_eq!(r["ok"], json!(true), "{r}");
    wait_for(
        "the ports to be free again",
        Duration::from_secs(5),
        || async { (port_is_free(vport).await && port_is_free(aport).await).then_some(()) },
    )
    .await;
    let _ = pc.close().await;
}

/// A viewer joins an RTP session well after the sender's only IDR (one
/// every 40 s): it decodes a picture from the video since that IDR, with
/// no new IDR sent, then keeps receiving live frames. With `hold_from`
/// viewers (the one port) the fan-out holds video back until a frame ends.
async fn a_viewer_joining_between_idrs_decodes_at_once(udp_port: Option<u16>, hold_from: usize) {
    use std::sync::atomic::Ordering;
    init_tracing();
    let nats = NatsServer::start().await;
    let mut wc = cfg(&nats);
    wc.udp_port = udp_port;
    wc.fanout_hold_from = hold_from;
    let _w = worker(wc);
    let c = nats.client().await;
    worker_answers(&c).await;
    let vport = free_udp_port();
    let r = create(&c, "rtp-gop", &rtp_spec(vport, None)).await;
    assert_eq!(r["result"]["state"], "live", "{r}");
    let _sender = RtpSender::start(vport, None, 600);
    // Two seconds in (30 frames at 15 fps): mid-way between IDRs.
    let rtp = rtp_stats_until(&c, "rtp-gop", "an IDR and 30 frames", |rtp| {
        rtp["video"]["keyframes"] == json!(1) && rtp["video"]["frames"].as_u64() >= Some(30)
    })
    .await;
    eprintln!("joining at {}", rtp["video"]);

    let (pc, got) = viewer_decoding(&c, "rtp-gop", Duration::from_secs(20)).await;
    let rtp = rtp_stats_until(&c, "rtp-gop", "stats", |_| true).await;
    assert_eq!(
        rtp["video"]["keyframes"],
        json!(1),
        "the picture came from the IDR before the join: {rtp}"
    );
    assert_eq!(
        got.keyframes.load(Ordering::Relaxed),
        1,
        "one IDR, replayed"
    );
    // Live frames follow the replay.
    let seen = got.frames.load(Ordering::Relaxed);
    wait_for("15 more frames", Duration::from_secs(10), || async {
        (got.frames.load(Ordering::Relaxed) >= seen + 15).then_some(())
    })
    .await;
    let _ = pc.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_joining_between_idrs_decodes_at_once_on_the_one_udp_port() {
    a_viewer_joining_between_idrs_decodes_at_once(Some(free_udp_port()), 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_joining_between_idrs_decodes_at_once_with_video_held_until_frames_end() {
    a_viewer_joining_between_idrs_decodes_at_once(Some(free_udp_port()), 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_joining_between_idrs_decodes_at_once_on_a_port_per_peer() {
    a_viewer_joining_between_idrs_decodes_at_once(None, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_sessions_are_independent_and_bad_ports_are_clear_errors() {
    init_tracing();
    let nats = NatsServer::start().await;
    let _w = worker(cfg(&nats));
    let c = nats.client().await;
    worker_answers(&c).await;

    // Same port twice, or a reserved payload type: refused before anything starts.
    let p = free_udp_port();
    let r = create(&c, "same", &rtp_spec(p, Some(p))).await;
    assert_eq!(r["error"]["code"], "invalid_request", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("differ"));
    let r = create(
        &c,
        "pt",
        &format!(r#"{{"kind":"rtp","video_port":{p},"video_payload_type":0}}"#),
    )
    .await;
    assert_eq!(r["error"]["code"], "invalid_request", "{r}");
    assert!(registry_get(&c, "same").await.is_none());

    // A port someone else holds: source_failed, saying which port.
    let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let busy = held.local_addr().unwrap().port();
    let free = free_udp_port();
    let r = create(&c, "busy", &rtp_spec(free, Some(busy))).await;
    assert_eq!(r["error"]["code"], "source_failed", "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&busy.to_string()), "{msg}");
    assert_eq!(registry_get(&c, "busy").await.unwrap()["state"], "ended");
    // The video port bound before the failure was let go.
    assert!(port_is_free(free).await, "the video socket leaked");
    let listed = raw_request(&c, "streams.v1.session.list", "").await;
    assert_eq!(listed["result"]["sessions"], json!([]), "{listed}");

    // Two sessions on their own ports: media for one is not the other's.
    let (a, b) = (free_udp_port(), free_udp_port());
    assert_eq!(
        create(&c, "a", &rtp_spec(a, None)).await["result"]["state"],
        "live"
    );
    assert_eq!(
        create(&c, "b", &rtp_spec(b, None)).await["result"]["state"],
        "live"
    );
    let _sender = RtpSender::start(a, None, 15);
    wait_for("frames in session a", Duration::from_secs(20), || async {
        (frames(&c, "a").await >= 5).then_some(())
    })
    .await;
    assert_eq!(frames(&c, "b").await, 0);
    let r = raw_request(&c, "streams.v1.session.a.stop", "{}").await;
    assert_eq!(r["ok"], json!(true), "{r}");
    let info = raw_request(&c, "streams.v1.session.b.get", "{}").await;
    assert_eq!(info["result"]["state"], "live", "{info}");
}

// ------------------------------------------- merged input to the source

/// Injects `events` as the backend and returns once the owner acked.
async fn inject(c: &async_nats::Client, id: &str, events: Value) {
    let body = json!({ "events": events }).to_string();
    let r = raw_request(c, &format!("streams.v1.session.{id}.input"), &body).await;
    assert_eq!(r["ok"], json!(true), "{r}");
}

/// Everything already delivered to `sub`, without waiting: the owner
/// publishes a session's merged input before it acks the injection, on
/// the same connection, so by the ack any message is here.
fn delivered(sub: &mut async_nats::Subscriber) -> Vec<Value> {
    use futures::FutureExt;
    let mut out = Vec::new();
    while let Some(Some(m)) = sub.next().now_or_never() {
        out.push(serde_json::from_slice(&m.payload).expect("SourceInput JSON"));
    }
    out
}

#[tokio::test]
async fn an_rtp_sessions_merged_input_is_published_for_its_producer_in_order() {
    init_tracing();
    let nats = NatsServer::start().await;
    let _w = worker(cfg(&nats));
    let c = nats.client().await;
    worker_answers(&c).await;
    let r = create(&c, "desk", &rtp_spec(free_udp_port(), None)).await;
    assert_eq!(r["result"]["state"], "live", "{r}");
    let mut sub = subscribe(&c, "streams.v1.source.desk.input").await;

    inject(
        &c,
        "desk",
        json!([
            {"type": "key", "code": "ShiftLeft", "down": true},
            {"type": "key", "code": "KeyA", "down": true},
            {"type": "key", "code": "KeyA", "down": true},
            {"type": "mouse_move", "dx": 5, "dy": -2},
        ]),
    )
    .await;
    inject(
        &c,
        "desk",
        json!([
            {"type": "ping"},
            {"type": "key", "code": "KeyA", "down": false},
            {"type": "key", "code": "ShiftLeft", "down": false},
        ]),
    )
    .await;
    let got = delivered(&mut sub);
    let key = |code: &str, down: bool| json!({"type": "key", "code": code, "down": down});
    assert_eq!(
        got,
        [
            json!({"session": "desk", "epoch": 1, "seq": 1, "events": [
                key("ShiftLeft", true),
                key("KeyA", true),
                {"type": "mouse_move", "dx": 5, "dy": -2},
            ]}),
            json!({"session": "desk", "epoch": 1, "seq": 2, "events": [
                key("KeyA", false),
                key("ShiftLeft", false),
            ]}),
        ],
        "the merged stream: a repeated down is one down, a ping is nothing"
    );
    let stats = raw_request(&c, "streams.v1.session.desk.stats", "{}").await;
    assert_eq!(stats["result"]["input_route"], "bus", "{stats}");
    assert_eq!(stats["result"]["input_forwarded"], 5, "{stats}");

    // Input that merges to nothing publishes nothing.
    inject(&c, "desk", json!([{"type": "ping"}])).await;
    assert_eq!(delivered(&mut sub), Vec::<Value>::new());
}

#[tokio::test]
async fn a_synthetic_session_draws_its_input_and_publishes_none() {
    init_tracing();
    let nats = NatsServer::start().await;
    let _w = worker(cfg(&nats));
    let c = nats.client().await;
    worker_answers(&c).await;
    let r = raw_request(&c, "streams.v1.session.create", r#"{"id":"syn"}"#).await;
    assert_eq!(r["result"]["state"], "live", "{r}");
    let mut sub = subscribe(&c, "streams.v1.source.>").await;
    inject(
        &c,
        "syn",
        json!([{"type": "key", "code": "KeyB", "down": true}]),
    )
    .await;
    assert_eq!(delivered(&mut sub), Vec::<Value>::new());
    let stats = raw_request(&c, "streams.v1.session.syn.stats", "{}").await;
    assert_eq!(stats["result"]["input_route"], "source", "{stats}");
    assert_eq!(stats["result"]["input_forwarded"], 1, "{stats}");
    assert_eq!(stats["result"]["keys_down"], json!(["KeyB"]), "{stats}");
}

// ------------------------------------------- cut-through RTP forwarding

/// The payload size the test packetizes at: every payload stays under the
/// 1200 bytes above which the worker refragments, so it reaches the viewer
/// byte for byte.
const CUT_THROUGH_MTU: usize = 1000;

/// IDR access units of a 320x240 test picture encoded with OpenH264, each
/// a different picture (so their slice bytes differ), as RTP payloads
/// (STAP-A with SPS and PPS, then FU-A fragments).
struct IdrFrames {
    encoder: openh264::encoder::Encoder,
    picture: worker::source::I420,
    payloader: webrtc::rtp::codecs::h264::H264Payloader,
    next: u64,
}

impl IdrFrames {
    fn new() -> Self {
        use openh264::encoder::{
            BitRate, EncoderConfig, FrameRate, IntraFramePeriod, Profile, RateControlMode,
        };
        let config = EncoderConfig::new()
            .profile(Profile::Baseline)
            .rate_control_mode(RateControlMode::Bitrate)
            .bitrate(BitRate::from_bps(1_000_000))
            .max_frame_rate(FrameRate::from_hz(10.0))
            .skip_frames(false)
            .intra_frame_period(IntraFramePeriod::from_num_frames(0))
            .num_threads(1);
        let encoder = openh264::encoder::Encoder::with_api_config(
            openh264::OpenH264API::from_source(),
            config,
        )
        .expect("an openh264 encoder");
        IdrFrames {
            encoder,
            picture: worker::source::I420::new(320, 240),
            payloader: Default::default(),
            next: 0,
        }
    }

    /// The next picture, encoded as an IDR, as RTP payloads.
    fn next(&mut self) -> Vec<Bytes> {
        use webrtc::rtp::packetizer::Payloader;
        let n = self.next;
        self.next += 1;
        worker::source::draw_frame(
            &mut self.picture,
            n,
            "cut-through",
            &worker::source::Overlay::default(),
        );
        // Grain on the luma, different in every picture: an IDR of it is
        // a dozen FU-A fragments, where the flat test picture alone fits
        // in a few.
        let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for px in self.picture.y.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *px = px.saturating_add((x >> 59) as u8);
        }
        self.encoder.force_intra_frame();
        let au = self
            .encoder
            .encode_at(&self.picture, openh264::Timestamp::from_millis(n * 100))
            .expect("h264 encode")
            .to_vec();
        assert!(
            worker::source::nal_units(&au)
                .any(|n| worker::source::nal_type(n) == worker::source::NAL_IDR),
            "picture {n} was not encoded as an IDR"
        );
        self.payloader
            .payload(CUT_THROUGH_MTU, &Bytes::from(au))
            .expect("h264 payloader")
    }
}

/// An RTP sender of one SSRC, from a socket of its own, to a session's
/// video port (payload type 96, the default).
struct RtpOut {
    socket: tokio::net::UdpSocket,
    seq: u16,
    ts: u32,
}

impl RtpOut {
    async fn to(port: u16) -> Self {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(("127.0.0.1", port)).await.unwrap();
        RtpOut {
            socket,
            seq: 40_000,
            ts: 7_000_000,
        }
    }

    /// Moves to the next frame's timestamp (10 fps).
    fn next_frame(&mut self) {
        self.ts = self.ts.wrapping_add(9_000);
    }

    /// Leaves a sequence number out, as a lost packet would.
    fn skip(&mut self) {
        self.seq = self.seq.wrapping_add(1);
    }

    /// Sends `payload` with the current timestamp and the next sequence number.
    async fn send(&mut self, payload: &Bytes, marker: bool) {
        self.send_ahead(0, payload, marker).await;
        self.seq = self.seq.wrapping_add(1);
    }

    /// Sends `payload` numbered `ahead` places after the next sequence
    /// number, without moving on: a packet that overtakes others.
    async fn send_ahead(&mut self, ahead: u16, payload: &Bytes, marker: bool) {
        use webrtc::util::Marshal;
        let packet = webrtc::rtp::packet::Packet {
            header: webrtc::rtp::header::Header {
                version: 2,
                marker,
                payload_type: 96,
                sequence_number: self.seq.wrapping_add(ahead),
                timestamp: self.ts,
                ssrc: 0x5eed_cafe,
                ..Default::default()
            },
            payload: payload.clone(),
        };
        self.socket
            .send(&packet.marshal().expect("an RTP packet"))
            .await
            .expect("a send to the video port");
    }
}

/// Joins `id` as a webrtc-rs viewer that hands every video RTP packet it
/// receives (header and payload, as the worker rewrote them) to the
/// returned channel, as it arrives.
async fn packet_viewer(
    bus: &bus_schema::Bus,
    id: &bus_schema::SessionId,
) -> (
    Arc<webrtc::peer_connection::RTCPeerConnection>,
    tokio::sync::mpsc::UnboundedReceiver<webrtc::rtp::packet::Packet>,
) {
    use system_tests::viewer::{self, Interceptors};
    let (pending, pc) = viewer::start(bus, id, bus_schema::Role::View, Interceptors::Default)
        .await
        .expect("join accepted");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    viewer::on_tracks(&pc, move |track, video| {
        let tx = tx.clone();
        async move {
            while let Ok((pkt, _)) = track.read_rtp().await {
                if video && tx.send(pkt).is_err() {
                    return;
                }
            }
        }
    });
    let v = pending.connect(bus, pc).await.expect("answer accepted");
    (v.pc, rx)
}

/// Receives packets until `want` has seen one it takes (`true`), or panics
/// with `what` once `timeout` has passed.
async fn receive_until(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<webrtc::rtp::packet::Packet>,
    what: &str,
    timeout: Duration,
    mut want: impl FnMut(&webrtc::rtp::packet::Packet) -> bool,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(p)) if want(&p) => return,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the viewer's video track ended while waiting for {what}"),
            Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_packets_reach_a_viewer_before_their_frame_is_complete() {
    rtp_packets_reach_a_viewer_before_their_frame_is_complete_with(None, 0).await;
}

/// With video held back until a frame ends (`FANOUT_HOLD_FROM`), a frame
/// whose end does not come still goes out, once held for `HOLD_MAX`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_packets_held_back_for_their_frame_leave_when_its_end_is_late() {
    rtp_packets_reach_a_viewer_before_their_frame_is_complete_with(Some(free_udp_port()), 1).await;
}

async fn rtp_packets_reach_a_viewer_before_their_frame_is_complete_with(
    udp_port: Option<u16>,
    hold_from: usize,
) {
    use std::collections::HashSet;
    init_tracing();
    let nats = NatsServer::start().await;
    let mut wc = cfg(&nats);
    wc.udp_port = udp_port;
    wc.fanout_hold_from = hold_from;
    let _w = worker(wc);
    let c = nats.client().await;
    worker_answers(&c).await;
    let vport = free_udp_port();
    let r = create(&c, "cut-through", &rtp_spec(vport, None)).await;
    assert_eq!(r["result"]["state"], "live", "{r}");

    let bus = bus_schema::Bus::new(c.clone(), bus_schema::Subjects::default())
        .with_timeout(Duration::from_secs(10));
    let id = bus_schema::SessionId::parse("cut-through").unwrap();
    let (pc, mut rx) = packet_viewer(&bus, &id).await;

    // Whole IDR frames, one every 100 ms, until the viewer has its first
    // packet (ICE and DTLS take their time). Every payload sent here is
    // remembered, so the frame below is told apart by bytes of its own.
    let mut idrs = IdrFrames::new();
    let mut out = RtpOut::to(vport).await;
    let mut sent_before: HashSet<Bytes> = HashSet::new();
    let first_packet_by = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let frame = idrs.next();
        out.next_frame();
        for (i, p) in frame.iter().enumerate() {
            out.send(p, i + 1 == frame.len()).await;
        }
        sent_before.extend(frame);
        let pace = (tokio::time::Instant::now() + Duration::from_millis(100)).min(first_packet_by);
        match tokio::time::timeout_at(pace, rx.recv()).await {
            Ok(Some(_)) => break,
            Ok(None) => panic!("the viewer's video track ended before its first packet"),
            Err(_) => assert!(
                tokio::time::Instant::now() < first_packet_by,
                "timed out after 30 s waiting for the viewer's first packet"
            ),
        }
    }

    // A new IDR frame, new timestamp: its first half only (STAP-A with SPS
    // and PPS, the first FU-A fragments). The marker packet stays back.
    let frame = idrs.next();
    assert!(
        frame.len() >= 4,
        "a 320x240 IDR at MTU {CUT_THROUGH_MTU} is several packets, got {}",
        frame.len()
    );
    let half = frame.len() / 2;
    tracing::info!(
        packets = frame.len(),
        held_back = frame.len() - half,
        "the half frame"
    );
    let mut pending: HashSet<Bytes> = frame[..half]
        .iter()
        .filter(|p| !sent_before.contains(*p))
        .cloned()
        .collect();
    assert!(
        !pending.is_empty(),
        "the new picture's first fragments repeat an earlier frame's bytes"
    );
    let of_first_half = pending.len();
    out.next_frame();
    for p in &frame[..half] {
        out.send(p, false).await;
    }
    receive_until(
        &mut rx,
        &format!(
            "the {of_first_half} fragments of the first half of an IDR frame whose marker \
             packet has not been sent (whole-frame forwarding holds them back)"
        ),
        Duration::from_secs(5),
        |p| {
            if pending.remove(&p.payload) {
                assert!(
                    !p.header.marker,
                    "a fragment mid-frame carries the marker bit"
                );
            }
            pending.is_empty()
        },
    )
    .await;

    // The rest of the frame: its marker packet reaches the viewer, marked.
    let last = frame.last().unwrap().clone();
    for (i, p) in frame.iter().enumerate().skip(half) {
        out.send(p, i + 1 == frame.len()).await;
    }
    receive_until(
        &mut rx,
        "the frame's marker packet",
        Duration::from_secs(5),
        |p| {
            if p.payload == last {
                assert!(
                    p.header.marker,
                    "the frame's last packet lost its marker bit"
                );
                return true;
            }
            false
        },
    )
    .await;
    let _ = pc.close().await;
}

/// The `rtp` counters of a session's stats, polled until `done` holds.
async fn rtp_stats_until(
    c: &async_nats::Client,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(what, Duration::from_secs(10), || async {
        let r = raw_request(c, &format!("streams.v1.session.{id}.stats"), "{}").await;
        assert_eq!(r["ok"], json!(true), "{r}");
        let rtp = r["result"]["rtp"].clone();
        done(&rtp).then_some(rtp)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rtp_sources_packet_loss_and_frame_counters_are_in_the_session_stats() {
    init_tracing();
    let nats = NatsServer::start().await;
    let _w = worker(cfg(&nats));
    let c = nats.client().await;
    worker_answers(&c).await;

    // Other sources have no `rtp` counters.
    let body = r#"{"kind":"synthetic","width":160,"height":120,"fps":10,"bitrate_kbps":100}"#;
    let r = create(&c, "not-rtp", body).await;
    assert_eq!(r["result"]["state"], "live", "{r}");
    let r = raw_request(&c, "streams.v1.session.not-rtp.stats", "{}").await;
    assert_eq!(r["ok"], json!(true), "{r}");
    assert!(r["result"].get("rtp").is_none(), "{r}");

    let (vport, aport) = (free_udp_port(), free_udp_port());
    let r = create(&c, "rtp-stats", &rtp_spec(vport, Some(aport))).await;
    assert_eq!(r["result"]["state"], "live", "{r}");

    // Three whole IDR frames, one of them with two packets swapped (put
    // back in order by the reorder window), one losing a packet halfway
    // (after its first fragments went out), one more.
    let mut idrs = IdrFrames::new();
    let mut out = RtpOut::to(vport).await;
    let mut sent = 0u64;
    for n in 0..5 {
        let frame = idrs.next();
        assert!(frame.len() >= 4, "an IDR of several packets");
        out.next_frame();
        for (i, p) in frame.iter().enumerate() {
            if n == 3 && i == frame.len() / 2 {
                out.skip();
                continue;
            }
            if n == 1 && i == 1 {
                // Packet 2 overtakes packet 1.
                out.send_ahead(1, &frame[2], false).await;
                out.send(p, false).await;
                out.skip();
                sent += 2;
                continue;
            }
            if n == 1 && i == 2 {
                continue;
            }
            out.send(p, i + 1 == frame.len()).await;
            sent += 1;
        }
    }
    // Audio: two Opus packets and a datagram that is not RTP.
    let audio = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for seq in [1u16, 2] {
        let mut p = vec![0x80, 111];
        p.extend(seq.to_be_bytes());
        p.extend((u32::from(seq) * 960).to_be_bytes());
        p.extend(0xa0d1_0000u32.to_be_bytes());
        p.extend([0xfc, 0xff, 0xfe]);
        audio.send_to(&p, ("127.0.0.1", aport)).await.unwrap();
    }
    audio
        .send_to(b"not rtp", ("127.0.0.1", aport))
        .await
        .unwrap();

    let rtp = rtp_stats_until(
        &c,
        "rtp-stats",
        &format!("stats counting the {sent} video packets and 3 audio datagrams sent"),
        |rtp| {
            rtp["video"]["packets"] == json!(sent)
                && rtp["audio"]["packets"] == json!(2)
                && rtp["audio"]["bad_packets"] == json!(1)
        },
    )
    .await;
    let video = &rtp["video"];
    assert_eq!(video["lost_packets"], json!(1), "{rtp}");
    assert_eq!(
        video["cut_frames"],
        json!(1),
        "the frame with the gap: {rtp}"
    );
    assert_eq!(video["dropped_frames"], json!(0), "{rtp}");
    assert_eq!(video["frames"], json!(4), "{rtp}");
    assert_eq!(video["keyframes"], json!(4), "{rtp}");
    assert_eq!(video["bad_packets"], json!(0), "{rtp}");
    assert_eq!(video["late_packets"], json!(0), "{rtp}");
    assert_eq!(video["reordered_packets"], json!(1), "{rtp}");
    assert_eq!(video["unmarked_frames"], json!(0), "{rtp}");
    assert_eq!(rtp["audio"]["lost_packets"], json!(0), "{rtp}");
    assert_eq!(frames(&c, "rtp-stats").await, 4);
}
