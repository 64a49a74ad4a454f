//! Sources plug in behind one interface; when one fails, its session ends
//! with `source_failed` and says why.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_schema::SourceSpec;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use system_tests::*;
use worker::source::{EncodedVideo, Media, SourceError, SourceFactory, SourceHandle};

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
            Err("stream from the host broke".into())
        })?;
        Ok(h)
    }
}

fn cfg(nats: &NatsServer) -> worker::Config {
    worker::Config::for_tests(&nats.url())
}

async fn ready(c: &async_nats::Client) {
    wait_for("a worker", Duration::from_secs(20), || async {
        c.request("streams.v1.session.list".to_string(), "".into())
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn a_source_that_cannot_start_is_a_clear_error_and_an_ended_record() {
    init_tracing();
    let nats = NatsServer::start().await;
    let _w = worker_with(cfg(&nats), Arc::new(Broken));
    let c = nats.client().await;
    ready(&c).await;
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
    ready(&c).await;
    let mut ended = subscribe(&c, "streams.v1.event.session.flaky.ended").await;
    let r = raw_request(&c, "streams.v1.session.create", r#"{"id":"flaky"}"#).await;
    assert_eq!(r["result"]["state"], "live", "{r}");
    let m = tokio::time::timeout(Duration::from_secs(10), ended.next())
        .await
        .unwrap()
        .unwrap();
    let ev: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(ev["reason"], "source_failed");
    assert_eq!(ev["detail"], "stream from the host broke");
}

// ------------------------------------------------------------ the RTP source

/// A UDP port nobody listens on right now.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

/// Debian's ffmpeg sending the test picture (H.264 constrained baseline,
/// an IDR every second) and a tone (Opus) as plain RTP; killed on drop.
struct RtpSender(std::process::Child);

impl RtpSender {
    fn start(video_port: u16, audio_port: Option<u16>) -> Self {
        let mut args: Vec<String> = [
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=15",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-map",
            "0:v",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-profile:v",
            "baseline",
            "-tune",
            "zerolatency",
            "-g",
            "15",
            "-bf",
            "0",
            "-f",
            "rtp",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("rtp://127.0.0.1:{video_port}"));
        if let Some(port) = audio_port {
            for a in [
                "-map",
                "1:a",
                "-c:a",
                "libopus",
                "-payload_type",
                "111",
                "-f",
                "rtp",
            ] {
                args.push(a.into());
            }
            args.push(format!("rtp://127.0.0.1:{port}"));
        }
        let child = std::process::Command::new("/usr/bin/ffmpeg")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("ffmpeg runs (scripts/setup.sh installs it)");
        RtpSender(child)
    }
}

impl Drop for RtpSender {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_feeds_a_session_over_rtp_and_a_viewer_decodes_it() {
    use std::sync::atomic::Ordering;
    init_tracing();
    let nats = NatsServer::start().await;
    let _w = worker(cfg(&nats));
    let c = nats.client().await;
    ready(&c).await;
    let (vport, aport) = (free_udp_port(), free_udp_port());

    // Live as soon as the ports are bound, before any media.
    let r = create(&c, "rtp-feed", &rtp_spec(vport, Some(aport))).await;
    assert_eq!(r["result"]["state"], "live", "{r}");
    assert_eq!(r["result"]["spec"]["source"]["bind"], "127.0.0.1", "{r}");
    assert_eq!(frames(&c, "rtp-feed").await, 0);
    assert!(!port_is_free(vport).await && !port_is_free(aport).await);

    let sender = RtpSender::start(vport, Some(aport));
    wait_for(
        "frames from ffmpeg in the session's stats",
        Duration::from_secs(20),
        || async { (frames(&c, "rtp-feed").await >= 5).then_some(()) },
    )
    .await;

    let bus = bus_schema::Bus::new(c.clone(), bus_schema::Subjects::default())
        .with_timeout(Duration::from_secs(10));
    let id = bus_schema::SessionId::parse("rtp-feed").unwrap();
    let (pc, got) = rtc_viewer(&bus, &id).await;
    wait_for(
        "the viewer to decode a 320x240 picture",
        Duration::from_secs(30),
        || async { (*got.decoded.lock().unwrap() == Some((320, 240))).then_some(()) },
    )
    .await;
    wait_for("audio at the viewer", Duration::from_secs(10), || async {
        (got.audio_packets.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;
    assert!(got.keyframes.load(Ordering::Relaxed) >= 1);

    // The sender stops and a new one (new SSRC, sequence, timestamps)
    // takes over: the viewer gets its IDRs too.
    drop(sender);
    let keys = got.keyframes.load(Ordering::Relaxed);
    let _sender = RtpSender::start(vport, Some(aport));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_sessions_are_independent_and_bad_ports_are_clear_errors() {
    init_tracing();
    let nats = NatsServer::start().await;
    let _w = worker(cfg(&nats));
    let c = nats.client().await;
    ready(&c).await;

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
    let _sender = RtpSender::start(a, None);
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
