//! End to end with real headless chromium: the viewer page served by the
//! api, signalling over its WebSocket, WebRTC media and input from the
//! in-process worker, all against a real nats-server. Plus the WebSocket's
//! refusals with a plain WebSocket client.
//!
//! The tests take `browser::SERIAL` so at most one runs at a time (and
//! each keeps at most two chromiums open).

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use system_tests::browser::{Browser, ChromeDriver, SERIAL};
use system_tests::*;
use tokio_tungstenite::tungstenite::Message;

const SOURCE: &str = r#"{"kind":"synthetic","width":320,"height":240,"fps":15,"bitrate_kbps":400}"#;
const SECRET: &str = "test-secret";
/// From page open (or from an earlier mark) to the stats a test waits for.
const DECODE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bus-side changes (viewer counts, keys) after the browser acted.
const BUS_TIMEOUT: Duration = Duration::from_secs(15);

/// nats-server, one worker and the api, in-process.
struct Stack {
    _api: Service,
    _worker: Service,
    base: String,
    bus: async_nats::Client,
    http: reqwest::Client,
    _nats: NatsServer,
}

impl Stack {
    async fn start(worker_id: &str) -> Self {
        Self::start_with(worker_id, |_| {}).await
    }

    /// [`Stack::start`] with the worker's config adjusted by `adjust`.
    async fn start_with(worker_id: &str, adjust: impl FnOnce(&mut worker::Config)) -> Self {
        init_tracing();
        let nats = NatsServer::start().await;
        let mut wc = worker::Config::for_tests(&nats.url());
        wc.worker_id = Some(worker_id.to_string());
        adjust(&mut wc);
        let w = worker(wc);
        let mut ac = api::Config::for_tests(&nats.url());
        ac.join_token_secret = Some(SECRET.into());
        let (a, base) = api(ac).await;
        let bus = nats.client().await;
        let http = reqwest::Client::new();
        worker_answers(&bus).await;
        wait_for("the api to answer /healthz", BUS_TIMEOUT, || {
            let (http, url) = (http.clone(), format!("{base}/healthz"));
            async move {
                http.get(url)
                    .send()
                    .await
                    .ok()?
                    .status()
                    .is_success()
                    .then_some(())
            }
        })
        .await;
        Self {
            _api: a,
            _worker: w,
            base,
            bus,
            http,
            _nats: nats,
        }
    }

    /// `POST /api/sessions`; expects 201.
    async fn create(&self, id: &str, extra: &str) -> Value {
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(",{extra}")
        };
        let body = format!(r#"{{"id":"{id}","source":{SOURCE}{extra}}}"#);
        let r = self
            .http
            .post(format!("{}/api/sessions", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST /api/sessions");
        let status = r.status();
        let v: Value = r.json().await.expect("JSON reply");
        assert_eq!(status, 201, "create {id}: {v}");
        v
    }

    /// `POST /api/sessions/{id}/tokens`; returns the reply (token, url, ws).
    async fn mint(&self, id: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}/api/sessions/{id}/tokens", self.base))
            .json(&body)
            .send()
            .await
            .expect("POST tokens");
        let status = r.status();
        let v: Value = r.json().await.expect("JSON reply");
        assert_eq!(status, 201, "mint {body} for {id}: {v}");
        v
    }

    /// The viewer page's absolute URL for a minted token.
    fn page(&self, minted: &Value) -> String {
        format!("{}{}", self.base, minted["url"].as_str().expect("url"))
    }

    /// `session.<id>.stats` over NATS: the result of a successful reply.
    async fn stats(&self, id: &str) -> Value {
        let v = raw_request(&self.bus, &format!("streams.v1.session.{id}.stats"), "{}").await;
        assert_eq!(v["ok"], json!(true), "stats of {id}: {v}");
        v["result"].clone()
    }

    /// Polls session stats until `pred` holds; returns those stats.
    async fn wait_stats(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let pred = &pred;
        wait_for(what, BUS_TIMEOUT, || async move {
            let s = self.stats(id).await;
            pred(&s).then_some(s)
        })
        .await
    }
}

fn frames(s: &Value) -> u64 {
    s["framesDecoded"].as_u64().unwrap_or(0)
}

fn viewers(s: &Value) -> usize {
    s["viewers"].as_array().map_or(0, Vec::len)
}

fn keys_down(s: &Value) -> Vec<String> {
    s["keys_down"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|k| k.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn decodes_320x240(s: &Value, more_than: u64) -> bool {
    frames(s) > more_than && s["frameWidth"] == json!(320) && s["frameHeight"] == json!(240)
}

/// Waits until `b` has decoded more than 10 frames of 320x240.
async fn wait_decoding(b: &Browser) -> Value {
    b.wait_stats("framesDecoded > 10 at 320x240", DECODE_TIMEOUT, |s| {
        decodes_320x240(s, 10)
    })
    .await
}

/// Waits until `b` decodes at least 10 more frames than it had now.
async fn wait_still_decoding(b: &Browser) -> u64 {
    let from = frames(&b.stats().await.expect("stats"));
    let s = b
        .wait_stats(
            &format!("framesDecoded to rise by 10 from {from}"),
            DECODE_TIMEOUT,
            |s| frames(s) >= from + 10,
        )
        .await;
    frames(&s)
}

/// Calls `js` (an expression) in the page until it returns `true`.
async fn until_true(b: &Browser, what: &str, js: &str) {
    let deadline = Instant::now() + BUS_TIMEOUT;
    loop {
        match b.execute(&format!("return {js};")).await {
            Ok(Value::Bool(true)) => return,
            Ok(_) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!(
                "timed out waiting in browser {} for {what} (`{js}` gave {other:?})\n{}",
                b.name,
                b.diagnostics().await
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_watch_one_session_and_one_leaving_does_not_stop_the_other() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::start("w-two").await;
    let driver = ChromeDriver::start().await;
    stack.create("two", "").await;
    let token = stack.mint("two", json!({"role": "control"})).await;
    let url = stack.page(&token);

    let a = driver.browser("A").await;
    let b = driver.browser("B").await;
    a.open(&url).await;
    b.open(&url).await;
    let (sa, sb) = tokio::join!(wait_decoding(&a), wait_decoding(&b));
    eprintln!("A: {sa}\nB: {sb}");
    let (fa, fb) = tokio::join!(wait_still_decoding(&a), wait_still_decoding(&b));
    eprintln!("both still decoding: A at {fa}, B at {fb} frames");

    let s = stack
        .wait_stats("two", "2 viewers on the bus", |s| viewers(s) == 2)
        .await;
    assert!(
        s["viewers"]
            .as_array()
            .expect("viewers")
            .iter()
            .all(|v| v["role"] == "control"),
        "both joined with a control token: {s}"
    );

    a.close().await;
    let fb2 = wait_still_decoding(&b).await;
    eprintln!("B still decoding after A left: {fb2} frames");
    let s = stack
        .wait_stats("two", "1 viewer on the bus after A left", |s| {
            viewers(s) == 1
        })
        .await;
    eprintln!("after A left: {s}");
    assert_eq!(
        b.stats().await.expect("stats")["connected"],
        json!(true),
        "B stays connected"
    );
    b.close().await;
}

/// The production setup (docker-compose): one UDP port for every peer,
/// whose sends the worker batches. Chromium connects through it and
/// decodes; the packets went out through the batched sender, none dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_decodes_through_the_one_batched_udp_port() {
    let _serial = SERIAL.lock().await;
    let port = free_udp_port();
    let stack = Stack::start_with("w-port", |c| c.udp_port = Some(port)).await;
    let driver = ChromeDriver::start().await;
    stack.create("port", "").await;
    let token = stack.mint("port", json!({"role": "view"})).await;
    let b = driver.browser("P").await;
    b.open(&stack.page(&token)).await;
    let s = wait_decoding(&b).await;
    let frames = wait_still_decoding(&b).await;
    eprintln!("through UDP port {port}: {s}; still decoding at {frames} frames");
    let udp = worker_stats(&stack.bus).await["udp"].clone();
    eprintln!("worker's udp sender: {udp}");
    assert!(udp["packets"].as_u64().unwrap_or(0) > 0, "{udp}");
    assert_eq!(udp["dropped"], json!(0), "{udp}");
    // The media went out on the worker's own path (it encrypted them with
    // the keys of the browser's DTLS handshake), not through webrtc-rs's.
    let direct = udp["direct"].as_u64().unwrap_or(0);
    assert!(
        direct > frames,
        "{udp}: fewer direct packets than frames decoded"
    );
    b.close().await;
}

/// Chromium as it ships hides its addresses: each host candidate it sends
/// is named `<uuid>.local` (none is sent at all where it cannot register
/// such a name), which the worker does not resolve. Its checks
/// still reach the worker's port, and the worker takes the address they
/// came from (a peer-reflexive candidate): the browser decodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_naming_its_candidates_with_mdns_decodes() {
    let _serial = SERIAL.lock().await;
    let port = free_udp_port();
    let stack = Stack::start_with("w-mdns", |c| c.udp_port = Some(port)).await;
    let driver = ChromeDriver::start().await;
    stack.create("mdns", "").await;
    let token = stack.mint("mdns", json!({"role": "view"})).await;
    let b = driver.browser_hiding_addresses("M").await;
    b.open(&stack.page(&token)).await;
    let s = wait_decoding(&b).await;
    let sdp = b
        .execute("return window.viewer.state.pc.localDescription.sdp;")
        .await
        .expect("the page's local description");
    let candidates: Vec<&str> = sdp
        .as_str()
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .collect();
    eprintln!("decoding with mDNS-named candidates: {s}; candidates {candidates:?}");
    // A chromium that cannot register its names sends no host candidate
    // at all; the worker then learns the address from the checks alike.
    for c in &candidates {
        assert!(
            worker::rtc::is_mdns_candidate(c),
            "a candidate shows its address instead of an mDNS name: {c}"
        );
    }
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_joining_an_rtp_session_between_idrs_decodes_at_once_and_plays_on() {
    let _serial = SERIAL.lock().await;
    let port = free_udp_port();
    let stack = Stack::start_with("w-gop", |c| c.udp_port = Some(port)).await;
    let driver = ChromeDriver::start().await;
    let vport = free_udp_port();
    let r = stack
        .http
        .post(format!("{}/api/sessions", stack.base))
        .json(&json!({"id": "gop", "source": {"kind": "rtp", "video_port": vport}}))
        .send()
        .await
        .expect("POST /api/sessions");
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    // One IDR every 40 s; the browser joins 2 s after the first.
    let _sender = RtpSender::start(vport, None, 600);
    stack
        .wait_stats("gop", "an IDR and 30 frames from ffmpeg", |s| {
            s["rtp"]["video"]["keyframes"] == json!(1)
                && s["rtp"]["video"]["frames"].as_u64() >= Some(30)
        })
        .await;
    let token = stack.mint("gop", json!({"role": "view"})).await;
    let b = driver.browser("G").await;
    b.open(&stack.page(&token)).await;
    let s = wait_decoding(&b).await;
    let rtp = stack.stats("gop").await["rtp"]["video"].clone();
    assert_eq!(
        rtp["keyframes"],
        json!(1),
        "the browser decoded without a new IDR: {rtp}; {s}"
    );
    // It plays on with the live frames after the replayed ones.
    let frames = wait_still_decoding(&b).await;
    eprintln!("joined between IDRs: {s}; still decoding at {frames} frames; {rtp}");
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_a_controller_reach_the_aggregator_and_view_only_keys_do_not() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::start("w-keys").await;
    let driver = ChromeDriver::start().await;
    stack.create("keys", "").await;
    let control = stack.mint("keys", json!({"role": "control"})).await;
    let view = stack.mint("keys", json!({"role": "view"})).await;
    assert_eq!(control["role"], "control");
    assert_eq!(view["role"], "view");

    let c = driver.browser("C").await;
    let v = driver.browser("V").await;
    c.open(&stack.page(&control)).await;
    v.open(&stack.page(&view)).await;
    let (sc, sv) = tokio::join!(wait_decoding(&c), wait_decoding(&v));
    assert_eq!(sc["role"], "control", "C: {sc}");
    assert_eq!(sv["role"], "view", "V: {sv}");

    // A controller's key reaches the aggregator.
    until_true(
        &c,
        "sendKey(KeyA, down) to go out on the data channel",
        r#"window.viewer.sendKey("KeyA", true)"#,
    )
    .await;
    let s = stack
        .wait_stats("keys", "keys_down to contain KeyA", |s| {
            keys_down(s).contains(&"KeyA".to_string())
        })
        .await;
    assert!(
        s["input_events"].as_u64().unwrap_or(0) >= 1,
        "the key counts as an accepted input event: {s}"
    );

    // The view-only page does not send...
    until_true(
        &v,
        "V's input data channel to open",
        r#"!!window.viewer.state.dc && window.viewer.state.dc.readyState === "open""#,
    )
    .await;
    let sent = v
        .execute(r#"return window.viewer.sendKey("KeyB", true);"#)
        .await
        .expect("sendKey runs");
    assert_eq!(sent, json!(false), "a view-only page does not send keys");
    // ...and the worker refuses what a view-only peer sends anyway.
    let refused_before = stack.stats("keys").await["input_refused"]
        .as_u64()
        .expect("input_refused");
    let raw = v
        .execute(
            r#"window.viewer.state.dc.send(new Uint8Array([1, 1, 4, 75, 101, 121, 66])); return true;"#,
        )
        .await
        .expect("raw key packet sent over V's data channel");
    assert_eq!(raw, json!(true));
    let s = stack
        .wait_stats("keys", "input_refused to count V's packet", |s| {
            assert!(
                !keys_down(s).contains(&"KeyB".to_string()),
                "a view-only peer's KeyB reached the aggregator: {s}"
            );
            s["input_refused"].as_u64().unwrap_or(0) > refused_before
        })
        .await;
    assert_eq!(
        keys_down(&s),
        ["KeyA"],
        "only the controller's key is down: {s}"
    );

    // Releasing in C empties keys_down.
    until_true(
        &c,
        "sendKey(KeyA, up)",
        r#"window.viewer.sendKey("KeyA", false)"#,
    )
    .await;
    stack
        .wait_stats("keys", "keys_down to be empty after the release", |s| {
            keys_down(s).is_empty()
        })
        .await;

    // A controller that leaves while holding a key releases it.
    until_true(
        &c,
        "sendKey(KeyA, down) again",
        r#"window.viewer.sendKey("KeyA", true)"#,
    )
    .await;
    stack
        .wait_stats("keys", "keys_down to contain KeyA again", |s| {
            keys_down(s).contains(&"KeyA".to_string())
        })
        .await;
    c.close().await;
    let s = stack
        .wait_stats("keys", "keys_down to be empty once C is gone", |s| {
            keys_down(s).is_empty()
        })
        .await;
    eprintln!("after C left holding KeyA: {s}");
    stack
        .wait_stats("keys", "only V left on the bus", |s| viewers(s) == 1)
        .await;
    v.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_viewers_leave_the_session_survives_and_a_rejoin_decodes_again() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::start("w-rejoin").await;
    let driver = ChromeDriver::start().await;
    stack.create("rejoin", r#""idle_ttl":"1m""#).await;
    let token = stack.mint("rejoin", json!({"role": "control"})).await;
    let url = stack.page(&token);

    let first = driver.browser("first").await;
    let t0 = Instant::now();
    first.open(&url).await;
    let cold_load = t0.elapsed();
    first
        .wait_stats("a first decoded frame", DECODE_TIMEOUT, |s| frames(s) >= 1)
        .await;
    let cold = t0.elapsed();
    wait_decoding(&first).await;
    first.close().await;

    stack
        .wait_stats("rejoin", "0 viewers once the only browser left", |s| {
            viewers(s) == 0
        })
        .await;
    let got = raw_request(&stack.bus, "streams.v1.session.rejoin.get", "{}").await;
    assert_eq!(got["ok"], json!(true), "get: {got}");
    assert_eq!(
        got["result"]["state"], "live",
        "the session outlives its last viewer: {got}"
    );

    let second = driver.browser("second").await;
    let t1 = Instant::now();
    second.open(&url).await;
    let rejoin_load = t1.elapsed();
    second
        .wait_stats("a first decoded frame", DECODE_TIMEOUT, |s| frames(s) >= 1)
        .await;
    let rejoin = t1.elapsed();
    let s = wait_decoding(&second).await;
    eprintln!(
        "page open to first decoded frame (wall clock, 50 ms polls): first join {cold:?} \
         (page load {cold_load:?}), rejoin {rejoin:?} (page load {rejoin_load:?}); {s}"
    );
    second.close().await;
}

/// A WebSocket upgrade request without a WebSocket client: status and body.
async fn upgrade(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = http
        .get(url)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .expect("upgrade request");
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, body)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text message as JSON, skipping the worker's `candidate` and
/// `viewers` updates unless `all`; `None` when the server closed.
async fn next_json(ws: &mut Ws, all: bool) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + BUS_TIMEOUT;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a WebSocket message in time");
        match m {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).expect("text messages are JSON");
                if all || !matches!(v["type"].as_str(), Some("candidate" | "viewers")) {
                    return Some(v);
                }
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_without_or_with_a_bad_token_is_refused() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::start("w-ws").await;
    stack.create("ws", "").await;
    let ws_url = format!("{}/api/sessions/ws/ws", stack.base);

    // No token.
    let (status, body) = upgrade(&stack.http, &ws_url).await;
    assert_eq!(status, 401, "no token: {body}");
    assert_eq!(body["error"]["code"], "unauthorized", "no token: {body}");

    // A query that does not parse: JSON like every other refusal.
    let (status, body) = upgrade(&stack.http, &format!("{ws_url}?token=a&token=b")).await;
    assert_eq!(status, 400, "a repeated token: {body}");
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");

    // A token for another session (minted with the shared secret, as a
    // backend does).
    let signer = api::token::Signer::new(SECRET);
    let other = signer.mint(
        &bus_schema::SessionId::parse("another").expect("id"),
        bus_schema::Role::Control,
        Duration::from_secs(600),
        std::time::SystemTime::now(),
    );
    let (status, body) = upgrade(&stack.http, &format!("{ws_url}?token={other}")).await;
    assert_eq!(status, 403, "token for another session: {body}");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");

    // A tampered token: a view token whose claims are rewritten to control,
    // the signature kept.
    let view = stack.mint("ws", json!({"role": "view"})).await;
    let view_token = view["token"].as_str().expect("token").to_string();
    let (_, sig) = view_token.rsplit_once('.').expect("v1.claims.sig");
    let claims = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sid":"ws","role":"control","exp":99999999999}"#)
    };
    let forged = format!("v1.{claims}.{sig}");
    let (status, body) = upgrade(&stack.http, &format!("{ws_url}?token={forged}")).await;
    assert_eq!(status, 401, "tampered token: {body}");
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");

    // A valid token: joined with an H.264 offer.
    let control = stack.mint("ws", json!({"role": "control"})).await;
    let ws_path = control["ws"].as_str().expect("ws path");
    let url = format!("{}{ws_path}", stack.base.replacen("http://", "ws://", 1));
    let (mut ws, resp) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("a valid token opens the WebSocket");
    assert_eq!(resp.status().as_u16(), 101);
    let joined = next_json(&mut ws, true).await.expect("a first message");
    assert_eq!(joined["type"], "joined", "first message: {joined}");
    assert_eq!(joined["role"], "control", "{joined}");
    let offer = joined["offer"].as_str().expect("offer SDP");
    assert!(offer.contains("H264"), "offer without H264: {offer}");
    assert!(
        offer.contains("42e01f"),
        "offer without profile-level-id 42e01f: {offer}"
    );
    stack
        .wait_stats("ws", "the WebSocket's peer listed", |s| viewers(s) == 1)
        .await;

    // Malformed JSON is answered with an error; the socket stays open.
    ws.send(Message::Text("{not json".into()))
        .await
        .expect("send");
    let err = next_json(&mut ws, false)
        .await
        .expect("an error reply, not a close");
    assert_eq!(err["type"], "error", "{err}");
    assert!(
        matches!(err["code"].as_str(), Some("malformed" | "invalid_request")),
        "{err}"
    );
    // The next message is still processed: leave, and the server closes.
    ws.send(Message::Text(r#"{"type":"leave"}"#.into()))
        .await
        .expect("send leave on the same socket");
    let after = next_json(&mut ws, false).await;
    assert!(
        after.is_none(),
        "leave closes the socket; got {after:?} instead"
    );
    stack
        .wait_stats("ws", "the peer gone after leave", |s| viewers(s) == 0)
        .await;

    // A view token for a session that has since ended.
    let late = stack.mint("ws", json!({"role": "view"})).await;
    let r = stack
        .http
        .delete(format!("{}/api/sessions/ws", stack.base))
        .send()
        .await
        .expect("DELETE");
    assert!(r.status().is_success(), "stop: {}", r.status());
    let late_url = format!(
        "{}{}",
        stack.base.replacen("http://", "ws://", 1),
        late["ws"].as_str().expect("ws path")
    );
    match tokio_tungstenite::connect_async(&late_url).await {
        Ok((mut ws, _)) => {
            let first = next_json(&mut ws, true)
                .await
                .expect("a first message on the ended session");
            assert_eq!(first["type"], "error", "{first}");
            assert_eq!(first["code"], "ended", "{first}");
            assert!(
                next_json(&mut ws, true).await.is_none(),
                "the server closes after the error"
            );
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body: Value = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            assert_eq!(resp.status().as_u16(), 410, "{body}");
            assert_eq!(body["error"]["code"], "ended", "{body}");
        }
        Err(e) => panic!("unexpected WebSocket error for an ended session: {e}"),
    }
}
