//! Many viewers of one session, joined by a webrtc-rs client over NATS
//! (the same join and signals the api relays for browsers).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bus_schema::{Bus, JoinPeer, PeerId, PeerSignal, Role, SessionId, Subjects, ToPeer};
use futures::StreamExt;
use serde_json::{json, Value};
use system_tests::*;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::MediaEngine;
use webrtc::api::APIBuilder;
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::interceptor::registry::Registry;
use webrtc::media::io::sample_builder::SampleBuilder;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
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
    peer: PeerId,
    worker: bus_schema::WorkerId,
    pc: Arc<RTCPeerConnection>,
    counters: Arc<Counters>,
    _signals: tokio::task::JoinHandle<()>,
}

async fn join(bus: &Bus, id: &SessionId) -> TestViewer {
    let peer = PeerId::generate();
    let mut inbox = bus
        .client
        .subscribe(bus.subjects.peer_out(&peer).to_string())
        .await
        .unwrap();
    let joined = bus
        .request(
            &bus.subjects.session_join(id),
            &JoinPeer {
                peer: peer.clone(),
                role: Role::View,
            },
        )
        .await
        .expect("join accepted");
    let worker = joined.worker.clone();

    let mut media = MediaEngine::default();
    media.register_default_codecs().unwrap();
    let registry = register_default_interceptors(Registry::new(), &mut media).unwrap();
    let api = APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .build();
    let pc = Arc::new(
        api.new_peer_connection(RTCConfiguration::default())
            .await
            .unwrap(),
    );
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    pc.on_track(Box::new(move |track, _, _| {
        let c = c.clone();
        Box::pin(async move {
            let video = track
                .codec()
                .capability
                .mime_type
                .to_lowercase()
                .contains("h264");
            tokio::spawn(async move {
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
            });
        })
    }));
    let pc2 = pc.clone();
    let signals = tokio::spawn(async move {
        while let Some(m) = inbox.next().await {
            if let Ok(ToPeer::Candidate { candidate }) =
                bus_schema::decode_record::<ToPeer>(&m.payload)
            {
                let _ = pc2
                    .add_ice_candidate(RTCIceCandidateInit {
                        candidate: candidate.candidate,
                        sdp_mid: candidate.sdp_mid,
                        sdp_mline_index: candidate.sdp_mline_index,
                        username_fragment: None,
                    })
                    .await;
            }
        }
    });
    pc.set_remote_description(RTCSessionDescription::offer(joined.offer).unwrap())
        .await
        .unwrap();
    let answer = pc.create_answer(None).await.unwrap();
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(answer).await.unwrap();
    let _ = gathered.recv().await;
    let sdp = pc.local_description().await.unwrap().sdp;
    bus.request(
        &bus.subjects.worker_peer(&joined.worker, id, &peer),
        &PeerSignal::Answer { sdp },
    )
    .await
    .expect("answer accepted");
    TestViewer {
        peer,
        worker,
        pc,
        counters,
        _signals: signals,
    }
}

async fn stats(c: &async_nats::Client, id: &str) -> Value {
    let r = raw_request(c, &format!("streams.v1.session.{id}.stats"), "{}").await;
    assert_eq!(r["ok"], json!(true), "{r}");
    r["result"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_viewers_each_get_a_steady_decodable_stream_and_a_stalled_one_slows_nobody() {
    init_tracing();
    let nats = NatsServer::start().await;
    let _w = worker(worker::Config::for_tests(&nats.url()));
    let client = nats.client().await;
    let bus = Bus::new(client.clone(), Subjects::default()).with_timeout(Duration::from_secs(10));
    wait_for("a worker", Duration::from_secs(20), || async {
        client
            .request("streams.v1.session.list".to_string(), "".into())
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let created = raw_request(
        &client,
        "streams.v1.session.create",
        r#"{"id":"fan","source":{"kind":"synthetic","width":320,"height":240,"fps":15,"bitrate_kbps":300}}"#,
    )
    .await;
    assert_eq!(created["ok"], json!(true), "{created}");
    let id = SessionId::parse("fan").unwrap();

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
    assert!(
        viewers
            .iter()
            .all(|v| v.counters.audio_packets.load(Ordering::Relaxed) > 0),
        "audio reaches everyone"
    );

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

    for v in &viewers {
        bus.request(
            &bus.subjects.worker_peer(&v.worker, &id, &v.peer),
            &PeerSignal::Leave,
        )
        .await
        .expect("leave accepted");
        let _ = v.pc.close().await;
    }
    wait_for(
        "the worker to drop every viewer",
        Duration::from_secs(30),
        || async {
            stats(&client, "fan").await["viewers"]
                .as_array()
                .unwrap()
                .is_empty()
                .then_some(())
        },
    )
    .await;
}
