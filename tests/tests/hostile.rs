//! Hostile input against the running system (real nats-server, in-process
//! worker and api, webrtc-rs viewers): oversized, deeply nested and
//! non-UTF-8 payloads on every worker endpoint; a huge SDP answer and
//! thousands of ICE candidates from one peer; an input flood from one
//! viewer; oversized and flooding WebSocket messages. Each is refused with a
//! stable code or rate-limited and counted; nothing panics; other viewers
//! and other sessions keep streaming.
//!
//! (`sessions.rs` covers the classic bad commands on `create`/`list`/`get`;
//! `fanout.rs` covers refused input packets and view-only senders.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bus_schema::{Bus, JoinPeer, PeerId, Role, SessionId, Subjects};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use system_tests::viewer::{self, Interceptors};
use system_tests::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use webrtc::data_channel::RTCDataChannel;

const TINY: &str = r#"{"kind":"synthetic","width":64,"height":64,"fps":10,"bitrate_kbps":50}"#;

/// A nats-server, one in-process worker, a client and a typed bus.
async fn system() -> (NatsServer, Service, async_nats::Client, Bus) {
    init_tracing();
    let nats = NatsServer::start().await;
    let w = worker(worker::Config::for_tests(&nats.url()));
    let client = nats.client().await;
    let bus = Bus::new(client.clone(), Subjects::default()).with_timeout(Duration::from_secs(10));
    worker_answers(&client).await;
    (nats, w, client, bus)
}

async fn create(c: &async_nats::Client, id: &str) {
    let body = format!(r#"{{"id":"{id}","source":{TINY}}}"#);
    let r = raw_request(c, "streams.v1.session.create", &body).await;
    assert_eq!(r["ok"], json!(true), "{r}");
}

async fn stats(c: &async_nats::Client, id: &str) -> Value {
    let r = raw_request(c, &format!("streams.v1.session.{id}.stats"), "{}").await;
    assert_eq!(r["ok"], json!(true), "{r}");
    r["result"].clone()
}

fn num(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {v}"))
}

/// Waits until `id` has encoded `more` frames beyond what it had now: the
/// session is still being served.
async fn keeps_encoding(c: &async_nats::Client, id: &str, more: u64) {
    let start = num(&stats(c, id).await, "frames_encoded");
    wait_for(
        &format!("session {id} to encode {more} more frames"),
        Duration::from_secs(20),
        || async { (num(&stats(c, id).await, "frames_encoded") >= start + more).then_some(()) },
    )
    .await;
}

fn code(r: &Value) -> &str {
    r["error"]["code"].as_str().unwrap_or("<no error>")
}

/// A webrtc-rs viewer joined over NATS (as in `fanout.rs`), counting the
/// video RTP packets it receives.
struct TestViewer {
    rtc: viewer::Viewer,
    input: viewer::Channel,
    video_packets: Arc<AtomicU64>,
}

async fn join_as(bus: &Bus, id: &SessionId, role: Role) -> TestViewer {
    let (pending, pc) = viewer::start(bus, id, role, Interceptors::Default)
        .await
        .expect("join accepted");
    let video_packets = viewer::count_video(&pc);
    let input = viewer::data_channel(&pc);
    let rtc = pending.connect(bus, pc).await.expect("answer accepted");
    TestViewer {
        rtc,
        input,
        video_packets,
    }
}

impl TestViewer {
    async fn input(&self) -> Arc<RTCDataChannel> {
        wait_for(
            "the input data channel to open",
            Duration::from_secs(20),
            || async { self.input.lock().await.clone() },
        )
        .await
    }

    /// Waits until this viewer has received `more` video packets beyond now.
    async fn keeps_receiving(&self, more: u64) {
        let start = self.video_packets.load(Ordering::Relaxed);
        wait_for(
            "the viewer to keep receiving video",
            Duration::from_secs(20),
            || async { (self.video_packets.load(Ordering::Relaxed) >= start + more).then_some(()) },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_deep_and_non_utf8_payloads_on_every_endpoint_get_stable_codes() {
    let (_nats, _w, c, _bus) = system().await;
    create(&c, "keep").await;
    let w = stats(&c, "keep").await["worker"]
        .as_str()
        .unwrap()
        .to_string();
    // Every endpoint the worker serves, with a session id where it takes one.
    let subjects = [
        "streams.v1.session.create".to_string(),
        "streams.v1.session.list".into(),
        "streams.v1.session.keep.get".into(),
        "streams.v1.session.keep.keepalive".into(),
        "streams.v1.session.keep.stop".into(),
        "streams.v1.session.keep.join".into(),
        "streams.v1.session.keep.input".into(),
        "streams.v1.session.keep.stats".into(),
        format!("streams.v1.worker.{w}.session.create"),
        format!("streams.v1.worker.{w}.session.keep.keepalive"),
        format!("streams.v1.worker.{w}.session.keep.stop"),
        format!("streams.v1.worker.{w}.session.keep.join"),
        format!("streams.v1.worker.{w}.session.keep.input"),
        format!("streams.v1.worker.{w}.session.keep.stats"),
        format!("streams.v1.worker.{w}.session.keep.adopt"),
        format!("streams.v1.worker.{w}.session.keep.fence"),
        format!("streams.v1.worker.{w}.session.keep.peer.p-000000000000"),
    ];
    // 900 KiB: under the NATS server's 1 MiB max_payload, so it reaches the
    // worker, far over the 64 KiB the decoder accepts.
    let oversized = bytes::Bytes::from(format!(r#"{{"detail":"{}"}}"#, "x".repeat(900 * 1024)));
    let deep = bytes::Bytes::from(format!("{}{}", "[".repeat(20_000), "]".repeat(20_000)));
    let deep_object = bytes::Bytes::from(format!(
        "{}1{}",
        r#"{"a":"#.repeat(5_000),
        "}".repeat(5_000)
    ));
    let not_utf8 = bytes::Bytes::from_static(b"{\"detail\":\"\xff\xfe\xc3\"}");
    let cases = [
        (&oversized, "too_large"),
        (&deep, "malformed"),
        (&deep_object, "malformed"),
        (&not_utf8, "malformed"),
    ];
    for subject in &subjects {
        for (payload, want) in &cases {
            let reply = tokio::time::timeout(
                Duration::from_secs(15),
                c.request(subject.clone(), (*payload).clone()),
            )
            .await
            .unwrap_or_else(|_| panic!("no reply on {subject}"))
            .unwrap_or_else(|e| panic!("request on {subject} failed: {e}"));
            let r: Value = serde_json::from_slice(&reply.payload).expect("reply is JSON");
            assert_eq!(code(&r), *want, "{subject}: {r}");
            assert!(
                r["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{r}"
            );
        }
    }
    // The worker still serves: the session streams and is unchanged, a
    // new session starts.
    keeps_encoding(&c, "keep", 5).await;
    let got = raw_request(&c, "streams.v1.session.keep.get", "").await;
    assert_eq!(got["result"]["state"], "live", "{got}");
    assert_eq!(got["result"]["epoch"], 1, "{got}");
    create(&c, "after").await;
    eprintln!(
        "{} endpoints x {} hostile payloads refused with stable codes",
        subjects.len(),
        cases.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_sdp_and_thousands_of_candidates_from_one_peer_are_refused_and_others_stream_on() {
    let (_nats, _w, c, bus) = system().await;
    create(&c, "ice").await;
    create(&c, "other").await;
    let id = SessionId::parse("ice").unwrap();
    let good = join_as(&bus, &id, Role::View).await;
    good.keeps_receiving(10).await;

    // The hostile peer joins and never answers properly.
    let bad = PeerId::generate();
    let joined = bus
        .request(
            &bus.subjects.session_join(&id),
            &JoinPeer {
                peer: bad.clone(),
                role: Role::View,
            },
        )
        .await
        .expect("join accepted");
    let signal = |body: String| {
        let subject = bus
            .subjects
            .worker_peer(&joined.worker, &id, &bad)
            .to_string();
        let c = c.clone();
        async move {
            let r = tokio::time::timeout(
                Duration::from_secs(15),
                c.request(subject, bytes::Bytes::from(body)),
            )
            .await
            .expect("a reply")
            .expect("request sent");
            serde_json::from_slice::<Value>(&r.payload).expect("JSON reply")
        }
    };
    // A 1 MiB answer does not even fit a NATS message (max_payload): the
    // client refuses to send it. 900 KiB reaches the worker: too_large.
    let mib = serde_json::to_string(&json!({"type":"answer","sdp":"v".repeat(1 << 20)})).unwrap();
    assert!(
        c.request(
            bus.subjects
                .worker_peer(&joined.worker, &id, &bad)
                .to_string(),
            mib.into()
        )
        .await
        .is_err(),
        "a payload over the server's max_payload is refused by the client"
    );
    let r = signal(
        serde_json::to_string(&json!({"type":"answer","sdp":"v".repeat(900 * 1024)})).unwrap(),
    )
    .await;
    assert_eq!(code(&r), "too_large", "{r}");
    // Just under 64 KiB of garbage SDP: the peer connection refuses it.
    let r =
        signal(serde_json::to_string(&json!({"type":"answer","sdp":"x".repeat(60_000)})).unwrap())
            .await;
    assert_eq!(code(&r), "invalid_request", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("answer rejected"),
        "{r}"
    );
    // An answer carrying hundreds of candidates is over the per-peer limit.
    let many: String = (0..200)
        .map(|i| {
            format!(
                "a=candidate:{i} 1 udp 2130706431 10.0.{}.{} 9 typ host\r\n",
                i / 250,
                i % 250
            )
        })
        .collect();
    let r = signal(
        serde_json::to_string(&json!({"type":"answer","sdp":format!("v=0\r\n{many}")})).unwrap(),
    )
    .await;
    assert_eq!(code(&r), "too_large", "{r}");

    // Thousands of trickled candidates: the first 64 are taken (or refused
    // by the peer connection on their merits), every one after is
    // too_large, each with an answer.
    let mut codes = std::collections::BTreeMap::<String, u32>::new();
    let mut first_limit = None;
    for i in 0..3000u32 {
        let cand = json!({"type":"candidate","candidate":{
            "candidate": format!("candidate:{i} 1 udp 2130706431 10.1.{}.{} 9 typ host", i / 250, i % 250),
            "sdpMid": "0", "sdpMLineIndex": 0}});
        let r = signal(cand.to_string()).await;
        let k = if r["ok"] == json!(true) {
            "ok".to_string()
        } else {
            code(&r).to_string()
        };
        if k == "too_large" && first_limit.is_none() {
            first_limit = Some(i);
            assert!(
                r["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("more than 64 ICE candidates"),
                "{r}"
            );
        }
        *codes.entry(k).or_default() += 1;
    }
    eprintln!("3000 trickled candidates from one peer: {codes:?}");
    assert_eq!(first_limit, Some(64), "{codes:?}");
    assert_eq!(codes.get("too_large"), Some(&(3000 - 64)), "{codes:?}");

    // Nobody else noticed: the good viewer still receives, both sessions
    // still encode, and the hostile peer can still leave cleanly.
    good.keeps_receiving(10).await;
    keeps_encoding(&c, "ice", 5).await;
    keeps_encoding(&c, "other", 5).await;
    let r = signal(r#"{"type":"leave"}"#.into()).await;
    assert_eq!(r["ok"], json!(true), "{r}");
    let s = stats(&c, "ice").await;
    let viewers: Vec<&str> = s["viewers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["peer"].as_str().unwrap())
        .collect();
    assert_eq!(viewers, [good.rtc.peer.as_str()]);
    let _ = good.rtc.pc.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_flood_from_one_viewer_is_rate_limited_and_counted_and_harms_no_one() {
    let (_nats, _w, c, bus) = system().await;
    create(&c, "flood").await;
    create(&c, "bystander").await;
    let id = SessionId::parse("flood").unwrap();
    let flooder = join_as(&bus, &id, Role::Control).await;
    let calm = join_as(&bus, &id, Role::Control).await;
    let watcher = join_as(&bus, &id, Role::View).await;
    let (df, dc) = (flooder.input().await, calm.input().await);
    watcher.keeps_receiving(10).await;
    let key = |code: &str, down: bool| {
        bytes::Bytes::from(
            bus_schema::input::encode_input(&[bus_schema::InputEvent::Key {
                code: code.into(),
                down,
            }])
            .unwrap(),
        )
    };
    let before = stats(&c, "flood").await;
    let base = num(&before, "input_events") + num(&before, "input_refused");
    let bystander0 = num(&stats(&c, "bystander").await, "frames_encoded");

    // The flood: 20 000 one-event messages as fast as the channel takes
    // them, KeyA down and up in turn. Midway the calm controller presses KeyC.
    const FLOOD: u64 = 20_000;
    let mut sent = 0u64;
    for i in 0..FLOOD {
        df.send(&key("KeyA", i % 2 == 0))
            .await
            .expect("data channel send");
        sent += 1;
        if i == FLOOD / 2 {
            dc.send(&key("KeyC", true)).await.unwrap();
            sent += 1;
        }
    }
    // Settle: the flooder lets go of KeyA, one message at a time, until
    // the worker has seen (or counted as dropped) every message sent. Drops
    // are reported with the next admitted message, so each release is given
    // time to land before the next.
    let release = key("KeyA", false);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let after = 'settled: loop {
        assert!(
            std::time::Instant::now() < deadline,
            "flood messages never all accounted for"
        );
        df.send(&release).await.unwrap();
        sent += 1;
        for _ in 0..40 {
            let s = stats(&c, "flood").await;
            let seen = num(&s, "input_events") + num(&s, "input_refused") - base;
            if seen == sent && s["keys_down"] == json!(["KeyC"]) {
                break 'settled s;
            }
            if seen == sent {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    let accepted = num(&after, "input_events") - num(&before, "input_events");
    let refused = num(&after, "input_refused") - num(&before, "input_refused");
    eprintln!(
        "input flood: {sent} messages sent, {accepted} accepted, {refused} dropped by the rate limit ({} per second per viewer)",
        worker::rtc::MAX_INPUT_PER_SEC
    );
    assert!(refused > 0, "the flood went over the limit");
    assert_eq!(accepted + refused, sent);
    // The merged state is right after the flood: the calm controller's key
    // got through (its own budget), and new input is applied.
    dc.send(&key("KeyB", true)).await.unwrap();
    wait_for("KeyB applied", Duration::from_secs(10), || async {
        let s = stats(&c, "flood").await;
        (s["keys_down"] == json!(["KeyB", "KeyC"])).then_some(())
    })
    .await;
    // Media kept flowing to the watcher, and the other session kept encoding.
    watcher.keeps_receiving(10).await;
    assert!(num(&stats(&c, "bystander").await, "frames_encoded") > bystander0);
    keeps_encoding(&c, "bystander", 5).await;
    for v in [&flooder, &calm, &watcher] {
        let _ = v.rtc.pc.close().await;
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_join(base: &str, id: &str) -> Ws {
    let http = reqwest::Client::new();
    let t: Value = http
        .post(format!("{base}/api/sessions/{id}/tokens"))
        .body(r#"{"role":"view"}"#)
        .send()
        .await
        .expect("POST tokens")
        .json()
        .await
        .expect("token JSON");
    let url = format!(
        "{}{}",
        base.replace("http://", "ws://"),
        t["ws"].as_str().expect("ws path")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("ws");
    let first = next_json(&mut ws).await.expect("joined");
    assert_eq!(first["type"], "joined", "{first}");
    ws
}

/// The next JSON text message, or None when the socket closes.
async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("a message within 15 s");
        match m {
            Some(Ok(WsMessage::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
            Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

async fn viewer_count(c: &async_nats::Client, id: &str) -> usize {
    stats(c, id).await["viewers"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_floods_and_oversized_messages_are_refused_and_the_api_serves_on() {
    let (nats, _w, c, _bus) = system().await;
    let (_api, base) = api(api::Config::for_tests(&nats.url())).await;
    create(&c, "wsh").await;

    // A flood of signalling messages: past 50 a second each one is answered
    // rate_limited; the socket stays usable.
    let mut ws = ws_join(&base, "wsh").await;
    const N: usize = 300;
    for i in 0..N {
        // Harmless but real: candidates the worker takes or refuses.
        let m = json!({"type":"candidate","candidate":{"candidate":format!("candidate:{i} 1 udp 1 10.9.0.1 9 typ host"),"sdpMid":"0","sdpMLineIndex":0}});
        ws.send(WsMessage::Text(m.to_string().into()))
            .await
            .unwrap();
    }
    // Each message gets an answer: rate_limited from the api, or the
    // worker's refusal of a candidate for a peer that never answered
    // (invalid_request) or over its 64 (too_large).
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    while codes.values().sum::<usize>() < N {
        let m = next_json(&mut ws).await.expect("socket open");
        if m["type"] == "error" {
            *codes
                .entry(m["code"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    eprintln!("{N} signalling messages in a burst: answers {codes:?}");
    let limited = codes.get("rate_limited").copied().unwrap_or(0);
    assert!(limited > 0, "{codes:?}");
    assert!(
        limited <= N - api::ws::MAX_SIGNALS_PER_SEC as usize,
        "{codes:?}"
    );
    assert_eq!(viewer_count(&c, "wsh").await, 1);

    // A 1 MiB message is over the 64 KiB frame limit: the api closes that
    // socket and releases the viewer.
    let huge = json!({"type":"answer","sdp":"v".repeat(1 << 20)}).to_string();
    let _ = ws.send(WsMessage::Text(huge.into())).await;
    while next_json(&mut ws).await.is_some() {}
    wait_for(
        "the viewer of the closed socket to be released",
        Duration::from_secs(20),
        || async { (viewer_count(&c, "wsh").await == 0).then_some(()) },
    )
    .await;

    // Not JSON, deeply nested, and binary frames: each answered with a code.
    let mut ws = ws_join(&base, "wsh").await;
    let cases: Vec<(WsMessage, &str)> = vec![
        (WsMessage::Text("{not json".into()), "malformed"),
        (
            WsMessage::Text(format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into()),
            "malformed",
        ),
        (
            WsMessage::Text(r#"{"type":"offer","sdp":""}"#.into()),
            "invalid_request",
        ),
        (
            WsMessage::Binary(vec![0xff, 0xfe, 0x00].into()),
            "invalid_request",
        ),
    ];
    for (m, want) in cases {
        ws.send(m).await.unwrap();
        let r = loop {
            // Viewer counts and candidates from the worker may come first.
            let r = next_json(&mut ws).await.expect("socket open");
            if r["type"] == "error" {
                break r;
            }
        };
        assert_eq!(r["code"], want, "{r}");
    }
    // The api and worker serve on: the page leaves cleanly, another joins.
    ws.send(WsMessage::Text(r#"{"type":"leave"}"#.into()))
        .await
        .unwrap();
    let _ws2 = ws_join(&base, "wsh").await;
    wait_for(
        "exactly the new viewer attached",
        Duration::from_secs(20),
        || async { (viewer_count(&c, "wsh").await == 1).then_some(()) },
    )
    .await;
    keeps_encoding(&c, "wsh", 5).await;
}
