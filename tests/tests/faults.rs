//! Faults seen from the outside: an api restart and a worker crash while
//! real browsers watch, two janitors with one killed mid-reap, and
//! commands repeated or out of order, each against a real nats-server.
//!
//! The browser tests take `browser::SERIAL` (one at a time, at most two
//! chromiums). Measured times are printed with `eprintln!` for
//! docs/reliability.md; no test asserts a speed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_schema::{SessionId, Subjects, WorkerId};
use futures::StreamExt;
use serde_json::{json, Value};
use system_tests::browser::{Browser, ChromeDriver, SERIAL};
use system_tests::*;

/// What the browsers watch.
const SOURCE: &str = r#"{"kind":"synthetic","width":320,"height":240,"fps":15,"bitrate_kbps":400}"#;
/// Headless sessions: cheap to encode, many per worker.
const SMALL: &str = r#"{"kind":"synthetic","width":160,"height":120,"fps":10,"bitrate_kbps":200}"#;
const SECRET: &str = "faults-secret";
/// From page open (or from an earlier mark) to the stats a test waits for.
const DECODE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bus-side changes (registry, viewer counts, events).
const BUS_TIMEOUT: Duration = Duration::from_secs(15);

fn subjects() -> Subjects {
    Subjects::default()
}

fn sid(id: &str) -> SessionId {
    SessionId::parse(id).expect("valid session id")
}

fn wid(id: &str) -> WorkerId {
    WorkerId::parse(id).expect("valid worker id")
}

/// A worker process with the test timings (heartbeat 250 ms, lease 600 ms)
/// and room for 24 sessions.
fn worker_env(nats_url: &str, id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("NATS_URL", nats_url.to_string()),
        ("WORKER_ID", id.to_string()),
        ("HEARTBEAT_INTERVAL", "250ms".into()),
        ("LEASE", "600ms".into()),
        ("WORKER_CAPACITY", "24".into()),
        ("REGISTRY_STORAGE", "memory".into()),
    ]
}

/// A janitor process with the timings of `janitor::Config::for_tests`
/// (dead after 1 s), except that ended entries stay a minute (the test
/// reads them).
fn janitor_env(nats_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("NATS_URL", nats_url.to_string()),
        ("HEARTBEAT_INTERVAL", "250ms".into()),
        ("DEAD_AFTER", "1s".into()),
        ("SCAN_INTERVAL", "250ms".into()),
        ("ENDED_RETENTION", "1m".into()),
        ("REQUEST_TIMEOUT", "1s".into()),
    ]
}

fn ok(v: &Value) -> &Value {
    assert_eq!(v["ok"], json!(true), "expected success, got {v}");
    &v["result"]
}

fn err_code(v: &Value) -> &str {
    assert_eq!(v["ok"], json!(false), "expected an error, got {v}");
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code: {v}"))
}

fn frames(s: &Value) -> u64 {
    s["framesDecoded"].as_u64().unwrap_or(0)
}

fn viewers(s: &Value) -> usize {
    s["viewers"].as_array().map_or(0, Vec::len)
}

/// Every session event (`started`, `ended`, `moved`; viewer events are
/// left out) seen on the bus since the collector started, in arrival order.
struct Events {
    seen: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Events {
    async fn collect(client: &async_nats::Client) -> Self {
        let mut sub = subscribe(client, subjects().event_session_any()).await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let Ok(v) = serde_json::from_slice::<Value>(&m.payload) else {
                    continue;
                };
                if matches!(v["kind"].as_str(), Some("started" | "ended" | "moved")) {
                    sink.lock().expect("events lock").push(v);
                }
            }
        });
        Self { seen, task }
    }

    fn all(&self) -> Vec<Value> {
        self.seen.lock().expect("events lock").clone()
    }

    /// The events of one session and kind.
    fn of(&self, id: &str, kind: &str) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(|e| e["id"] == id && e["kind"] == kind)
            .collect()
    }
}

/// Waits until the workers answer `session.list`.
async fn wait_workers(bus: &async_nats::Client) {
    worker_answers(bus).await
}

/// `POST /api/sessions`; expects 201.
async fn rest_create(http: &reqwest::Client, base: &str, id: &str, extra: &str) -> Value {
    let body = format!(r#"{{"id":"{id}","source":{SOURCE}{extra}}}"#);
    let r = http
        .post(format!("{base}/api/sessions"))
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

/// Mints a control token; returns the viewer page's absolute URL.
async fn page_url(http: &reqwest::Client, base: &str, id: &str) -> String {
    let r = http
        .post(format!("{base}/api/sessions/{id}/tokens"))
        .json(&json!({"role": "control"}))
        .send()
        .await
        .expect("POST tokens");
    let status = r.status();
    let v: Value = r.json().await.expect("JSON reply");
    assert_eq!(status, 201, "mint for {id}: {v}");
    format!("{base}{}", v["url"].as_str().expect("url"))
}

/// Polls `session.<id>.stats` until `pred` holds; returns those stats.
async fn wait_bus_stats(
    bus: &async_nats::Client,
    id: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let pred = &pred;
    let subject = subjects().session_stats(&sid(id)).to_string();
    let subject = &subject;
    wait_for(what, timeout, || async move {
        let v = raw_request(bus, subject, "{}").await;
        let s = v.get("result").filter(|_| v["ok"] == json!(true))?;
        pred(s).then(|| s.clone())
    })
    .await
}

/// Waits until `b` decodes more than 10 frames of 320x240.
async fn wait_decoding(b: &Browser) -> Value {
    b.wait_stats("framesDecoded > 10 at 320x240", DECODE_TIMEOUT, |s| {
        frames(s) > 10 && s["frameWidth"] == json!(320) && s["frameHeight"] == json!(240)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_restart_while_watching() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let nats = NatsServer::start().await;
    let mut wc = worker::Config::for_tests(&nats.url());
    wc.worker_id = Some("w-calm".into());
    let _worker = worker(wc);
    let bus = nats.client().await;
    wait_workers(&bus).await;
    // The api as a process: stopping it ends every WebSocket it served.
    let port = free_port();
    let api_env = [
        ("NATS_URL", nats.url()),
        ("JOIN_TOKEN_SECRET", SECRET.to_string()),
    ];
    let mut first_api = api_process_on(port, &api_env).await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    rest_create(&http, &base, "calm", "").await;
    let url = page_url(&http, &base, "calm").await;

    let driver = ChromeDriver::start().await;
    let b = driver.browser("watcher").await;
    b.open(&url).await;
    let s = wait_decoding(&b).await;
    let first_peer = s["peer"].clone();
    assert!(first_peer.is_string(), "the page joined: {s}");
    wait_bus_stats(&bus, "calm", "1 viewer on the worker", BUS_TIMEOUT, |s| {
        viewers(s) == 1
    })
    .await;

    first_api.signal("TERM");
    let status = first_api
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("the api exits within 5 s of SIGTERM, a viewer attached");
    assert!(status.success(), "clean exit: {status:?}");
    let down = Instant::now();
    let healthz = format!("{base}/healthz");
    assert!(
        http.get(&healthz).send().await.is_err(),
        "nothing answers on the api's port"
    );
    // Media is peer to peer: the page keeps decoding on its first peer
    // connection while its signalling retries against a closed port.
    let before = frames(&b.stats().await.expect("stats"));
    let s = b
        .wait_stats(
            &format!("30 more frames from {before} with the api down"),
            DECODE_TIMEOUT,
            |s| frames(s) >= before + 30 && s["peer"] == first_peer,
        )
        .await;
    let ws_state = b
        .execute("return window.viewer.state.ws.readyState;")
        .await
        .expect("page state");
    assert_ne!(ws_state, json!(1), "the page's WebSocket is not open: {s}");
    assert!(
        http.get(&healthz).send().await.is_err(),
        "the api stayed down while the page decoded"
    );
    eprintln!(
        "api down for {:?}: the page decoded {} more frames meanwhile",
        down.elapsed(),
        frames(&s) - before
    );

    let _second_api = api_process_on(port, &api_env).await;
    let up = Instant::now();
    let s = b
        .wait_stats(
            "the page to join again through the new api",
            DECODE_TIMEOUT,
            |s| s["peer"].is_string() && s["peer"] != first_peer && s["connected"] == json!(true),
        )
        .await;
    let rejoined = up.elapsed();
    let second_peer = s["peer"].clone();
    let s = wait_decoding(&b).await;
    let decoding = up.elapsed();
    assert_eq!(s["peer"], second_peer, "{s}");
    eprintln!(
        "api back up -> page rejoined (new peer connected) in {rejoined:?}, decoding >10 frames on it in {decoding:?} (page backoff 250 ms doubling, 5 s cap; api was down {:?})",
        up.duration_since(down)
    );
    // The first peer connection is closed by the page once the new one
    // connects; no api was there to send `leave`, so the worker releases
    // it when its ICE goes failed (disconnected after 3 s of silence,
    // failed 5 s later), with slack for a loaded machine; webrtc-rs's
    // defaults (5 s + 25 s) held it about half a minute.
    let release_bound =
        worker::rtc::ICE_DISCONNECTED_TIMEOUT + worker::rtc::ICE_FAILED_TIMEOUT + BUS_TIMEOUT / 3;
    let s = wait_bus_stats(
        &bus,
        "calm",
        "the worker back to 1 viewer, the new peer, within its ICE timeouts",
        release_bound,
        |s| viewers(s) == 1,
    )
    .await;
    assert_eq!(s["viewers"][0]["peer"], second_peer, "{s}");
    eprintln!(
        "the worker released the old peer {:?} after the new one connected ({:?} after the api came back; bound {release_bound:?})",
        up.elapsed() - rejoined,
        up.elapsed()
    );
    let f = frames(&b.stats().await.expect("stats"));
    b.wait_stats("still decoding at the end", DECODE_TIMEOUT, |s| {
        frames(s) >= f + 10
    })
    .await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_crash_viewer_sees_why_and_a_restartable_session_comes_back() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let nats = NatsServer::start().await;
    let jc = janitor::Config::for_tests(&nats.url(), "streams");
    let dead_after = *jc.dead_after;
    let scan = *jc.scan_interval;
    let _janitor = janitor(jc);
    let bus = nats.client().await;
    let mut hb = subscribe(&bus, subjects().heartbeat_any()).await;
    let mut doomed = Proc::spawn("worker", &worker_env(&nats.url(), "w-doomed"));
    heartbeat_from(&mut hb, "w-doomed").await;
    let mut ac = api::Config::for_tests(&nats.url());
    ac.join_token_secret = Some(SECRET.into());
    let (_api, base) = api(ac).await;
    let http = reqwest::Client::new();
    // Both sessions land on the only worker.
    let phoenix = rest_create(&http, &base, "phoenix", r#","on_worker_lost":"restart""#).await;
    let mortal = rest_create(&http, &base, "mortal", "").await;
    assert_eq!(phoenix["owner"], "w-doomed");
    assert_eq!(mortal["owner"], "w-doomed");
    let _heir = Proc::spawn("worker", &worker_env(&nats.url(), "w-heir"));
    heartbeat_from(&mut hb, "w-heir").await;
    drop(hb);

    let driver = ChromeDriver::start().await;
    let pa = driver.browser("phoenix").await;
    let pm = driver.browser("mortal").await;
    pa.open(&page_url(&http, &base, "phoenix").await).await;
    pm.open(&page_url(&http, &base, "mortal").await).await;
    let (sa, sm) = tokio::join!(wait_decoding(&pa), wait_decoding(&pm));
    assert_eq!(sa["worker"], "w-doomed", "{sa}");
    assert_eq!(sm["worker"], "w-doomed", "{sm}");

    doomed.signal("KILL");
    let killed = Instant::now();
    doomed
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("the worker died");
    // The registry is repaired within the janitor's bound (dead_after plus
    // a scan, with slack for a loaded machine).
    let bound = dead_after + 2 * scan + Duration::from_secs(5);
    let (p_rec, m_rec) = wait_for("the registry to be repaired", bound, || async {
        let p = registry_get(&bus, "phoenix").await?;
        let m = registry_get(&bus, "mortal").await?;
        (p["owner"] == "w-heir" && m["state"] == "ended").then_some((p, m))
    })
    .await;
    let repaired = killed.elapsed();
    assert_eq!(p_rec["epoch"], 2, "a new epoch for the new owner: {p_rec}");
    assert_eq!(m_rec["ended"]["reason"], "worker_lost", "{m_rec}");

    // The page of the ended session says why.
    let s = pm
        .wait_stats("the page to show worker_lost", BUS_TIMEOUT, |s| {
            s["ended"] == "worker_lost"
        })
        .await;
    let told = killed.elapsed();
    let notice = pm
        .execute(r#"return document.getElementById("notice").textContent;"#)
        .await
        .expect("notice");
    assert!(
        notice.as_str().is_some_and(|n| n.contains("worker lost")),
        "the page tells the viewer why: {notice} ({s})"
    );
    // The restartable session's page rejoins its new worker by itself.
    let s = pa
        .wait_stats(
            "the page to decode again from w-heir",
            DECODE_TIMEOUT,
            |s| s["worker"] == "w-heir" && s["connected"] == json!(true) && frames(s) >= 1,
        )
        .await;
    let back = killed.elapsed();
    assert_eq!(s["ended"], Value::Null, "{s}");
    wait_decoding(&pa).await;
    eprintln!(
        "kill -9 -> registry repaired {repaired:?}, ended page shows worker_lost {told:?}, \
         restartable page decoding again from the new worker {back:?} (dead_after {dead_after:?}, scan {scan:?})"
    );
    let st = wait_bus_stats(&bus, "phoenix", "1 viewer on w-heir", BUS_TIMEOUT, |s| {
        viewers(s) == 1
    })
    .await;
    assert_eq!(st["worker"], "w-heir", "{st}");
    let listed = raw_request(&bus, &subjects().session_list().to_string(), "{}").await;
    let ids: Vec<&str> = ok(&listed)["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["phoenix"],
        "only the restarted session is live: {listed}"
    );
    pa.close().await;
    pm.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_janitors_one_killed_mid_reap() {
    init_tracing();
    let nats = NatsServer::start().await;
    let s = subjects();
    let bus = nats.client().await;
    let events = Events::collect(&bus).await;
    let mut lost = subscribe(&bus, s.event_worker_any()).await;
    let mut hb = subscribe(&bus, s.heartbeat_any()).await;
    let mut reaps = subscribe(&bus, s.event_session_any()).await;
    // Both janitors declare a worker dead after 1 s and race for every
    // session; a is killed as soon as the first reap is announced.
    let mut janitor_a = Proc::spawn("janitor", &janitor_env(&nats.url()));
    let mut janitor_b = Proc::spawn("janitor", &janitor_env(&nats.url()));
    let mut doomed = Proc::spawn("worker", &worker_env(&nats.url(), "w-doomed"));
    heartbeat_from(&mut hb, "w-doomed").await;

    // Sixteen sessions on the doomed worker, twelve to restart: a janitor
    // applies 8 actions at once and a move waits for the adopt, so a reap
    // is still in progress after its first event.
    let ids: Vec<String> = (0..16).map(|i| format!("reap-{i}")).collect();
    let restart = |id: &str| id.trim_start_matches("reap-").parse::<u32>().unwrap() % 4 != 0;
    let creates = ids.iter().map(|id| {
        let policy = if restart(id) { "restart" } else { "end" };
        let body = format!(r#"{{"id":"{id}","on_worker_lost":"{policy}","source":{SMALL}}}"#);
        let (bus, subject) = (bus.clone(), s.session_create().to_string());
        async move { raw_request(&bus, &subject, &body).await }
    });
    for r in futures::future::join_all(creates).await {
        assert_eq!(ok(&r)["owner"], "w-doomed", "{r}");
    }
    let mut healthy = Proc::spawn("worker", &worker_env(&nats.url(), "w-healthy"));
    heartbeat_from(&mut hb, "w-healthy").await;
    // A session on the healthy worker that no janitor may touch.
    let body = format!(r#"{{"id":"bystander","source":{SMALL}}}"#);
    let by = raw_request(&bus, &s.worker_create(&wid("w-healthy")).to_string(), &body).await;
    assert_eq!(ok(&by)["owner"], "w-healthy", "{by}");

    doomed.signal("KILL");
    let killed = Instant::now();
    doomed
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("worker died");
    loop {
        let m = tokio::time::timeout(BUS_TIMEOUT, reaps.next())
            .await
            .expect("a first reap event")
            .expect("subscription open");
        let v: Value = serde_json::from_slice(&m.payload).expect("event JSON");
        if matches!(v["kind"].as_str(), Some("moved" | "ended")) {
            break;
        }
    }
    // SIGKILL straight from this process: no `kill` command to wait for.
    janitor_a.child.kill().expect("SIGKILL janitor a");
    let first_reap = killed.elapsed();
    drop(reaps);
    let reaped_when_killed = events
        .all()
        .iter()
        .filter(|e| matches!(e["kind"].as_str(), Some("moved" | "ended")))
        .count();
    janitor_a
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("janitor a died");

    // Janitor b finishes whatever a left: every end session ended with
    // worker_lost, every restart session live on the healthy worker.
    let expect_done = |ids: &[String], to: &'static str| {
        let ids = ids.to_vec();
        let bus = bus.clone();
        move || {
            let (ids, bus) = (ids.clone(), bus.clone());
            async move {
                let mut recs = BTreeMap::new();
                for id in &ids {
                    let rec = registry_get(&bus, id).await?;
                    let done = if restart(id) {
                        rec["owner"] == to && rec["state"] == "live"
                    } else {
                        rec["state"] == "ended"
                    };
                    if !done {
                        return None;
                    }
                    recs.insert(id.clone(), rec);
                }
                Some(recs)
            }
        }
    };
    wait_repaired(
        &bus,
        &events,
        &ids,
        expect_done(&ids, "w-healthy"),
        "w-healthy",
    )
    .await;
    let all_reaped = killed.elapsed();
    // Let janitor b scan a couple of seconds more (8 heartbeats of the
    // healthy worker listing all its sessions): a double reap would show.
    let want: BTreeSet<String> = ids
        .iter()
        .filter(|id| restart(id))
        .cloned()
        .chain(["bystander".to_string()])
        .collect();
    let mut steady = 0;
    let deadline = Instant::now() + BUS_TIMEOUT;
    while steady < 8 {
        let v = heartbeat_from(&mut hb, "w-healthy").await;
        let held: BTreeSet<String> = v["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .filter(|s| s["suspended"] != json!(true))
            .filter_map(|s| s["id"].as_str().map(String::from))
            .collect();
        steady = if held == want { steady + 1 } else { 0 };
        assert!(
            Instant::now() < deadline,
            "w-healthy never settled on {want:?}: {v}"
        );
    }
    let recs = expect_done(&ids, "w-healthy")()
        .await
        .expect("still repaired");
    // The registry is the truth: each session changed hands once per
    // epoch, and no transition was announced twice. A janitor killed
    // between its registry write and its publish loses that event (counted
    // and printed: `unannounced`); a move whose adopt request it never sent
    // is repaired by the survivor under the next epoch (`repairs`).
    let (mut moves, mut unannounced, mut repairs) = (0, 0, 0);
    for id in &ids {
        let moved = events.of(id, "moved");
        let ended = events.of(id, "ended");
        let rec = &recs[id];
        let epoch = rec["epoch"].as_u64().expect("epoch");
        if restart(id) {
            assert!(ended.is_empty(), "{id} never ends: {ended:?}");
            assert!(epoch >= 2, "{id} was moved: {rec}");
            let epochs: Vec<u64> = moved.iter().map(|e| e["epoch"].as_u64().unwrap()).collect();
            let unique: BTreeSet<u64> = epochs.iter().copied().collect();
            assert_eq!(
                unique.len(),
                epochs.len(),
                "{id}: one move per epoch: {epochs:?}"
            );
            assert!(
                epochs.iter().all(|e| (2..=epoch).contains(e)),
                "{id}: moves only to epochs the registry went through: {epochs:?} {rec}"
            );
            assert!(
                moved.iter().all(|e| e["worker"] == "w-healthy"),
                "{moved:?}"
            );
            moves += moved.len();
            repairs += epoch - 2;
            unannounced += (epoch - 1) as usize - moved.len();
        } else {
            assert!(moved.is_empty(), "{id} is never moved: {moved:?}");
            assert!(ended.len() <= 1, "{id} ends once: {ended:?}");
            assert!(ended
                .iter()
                .all(|e| e["reason"] == "worker_lost" && e["epoch"] == 1));
            assert_eq!(rec["ended"]["reason"], "worker_lost", "{rec}");
            assert_eq!(epoch, 1, "{rec}");
            unannounced += 1 - ended.len();
        }
    }
    let by = registry_get(&bus, "bystander").await.expect("bystander");
    assert_eq!(
        (&by["owner"], &by["epoch"], &by["state"]),
        (&json!("w-healthy"), &json!(1), &json!("live")),
        "the live session is untouched: {by}"
    );
    assert!(events.of("bystander", "moved").is_empty());
    assert!(events.of("bystander", "ended").is_empty());
    let mut lost_events = 0;
    while let Some(Some(m)) = futures::FutureExt::now_or_never(lost.next()) {
        let v: Value = serde_json::from_slice(&m.payload).expect("JSON");
        assert_eq!(v["worker"], "w-doomed", "only the dead worker is lost: {v}");
        lost_events += 1;
    }
    assert!(lost_events >= 1, "the dead worker was announced");
    eprintln!(
        "two janitors, kill -9 of a worker with 16 sessions: first reap event {first_reap:?} after the kill \
         (janitor a killed then, {reaped_when_killed} sessions reaped by then), all 16 repaired {all_reaped:?}; \
         {moves} moved events for 12 restart sessions ({repairs} repaired moves), \
         {unannounced} transitions unannounced, {lost_events} worker-lost announcement(s)"
    );

    // A fresh janitor alone: b dies too, a new one starts, and the
    // healthy worker is killed at once. The new janitor knows nothing but
    // what the registry and the heartbeats tell it, and reaps it.
    janitor_b.signal("KILL");
    janitor_b
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("janitor b died");
    let _spare = Proc::spawn("worker", &worker_env(&nats.url(), "w-spare"));
    heartbeat_from(&mut hb, "w-spare").await;
    let _janitor_c = Proc::spawn("janitor", &janitor_env(&nats.url()));
    let started = Instant::now();
    healthy.signal("KILL");
    healthy
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("w-healthy died");
    let moved_ids: Vec<String> = ids.iter().filter(|id| restart(id)).cloned().collect();
    let before: BTreeMap<String, u64> = recs
        .iter()
        .map(|(id, r)| (id.clone(), r["epoch"].as_u64().unwrap()))
        .collect();
    let recs2 = wait_repaired(
        &bus,
        &events,
        &moved_ids,
        expect_done(&moved_ids, "w-spare"),
        "w-spare",
    )
    .await;
    let by = wait_for(
        "the fresh janitor to end the bystander",
        BUS_TIMEOUT,
        || async {
            let r = registry_get(&bus, "bystander").await?;
            (r["state"] == "ended").then_some(r)
        },
    )
    .await;
    eprintln!(
        "a fresh janitor (started with the worker's kill) repaired everything {:?} later",
        started.elapsed()
    );
    assert_eq!(by["ended"]["reason"], "worker_lost", "{by}");
    assert_eq!(events.of("bystander", "ended").len(), 1);
    for (id, rec) in &recs2 {
        assert_eq!(
            rec["epoch"],
            json!(before[id] + 1),
            "{id}: one more move: {rec}"
        );
        let epochs: Vec<u64> = events
            .of(id, "moved")
            .iter()
            .map(|e| e["epoch"].as_u64().unwrap())
            .collect();
        let unique: BTreeSet<u64> = epochs.iter().copied().collect();
        assert_eq!(
            unique.len(),
            epochs.len(),
            "{id}: epochs unique: {epochs:?}"
        );
    }
    // The sessions that had ended stay as they were.
    for id in ids.iter().filter(|id| !restart(id)) {
        assert!(events.of(id, "ended").len() <= 1, "{id}");
        let rec = registry_get(&bus, id).await.expect("kept");
        assert_eq!(rec["epoch"], 1, "{rec}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_and_out_of_order_commands_get_clear_answers() {
    init_tracing();
    let nats = NatsServer::start().await;
    let s = subjects();
    let bus = nats.client().await;
    let events = Events::collect(&bus).await;
    let mut hb = subscribe(&bus, s.heartbeat_any()).await;
    let mut workers = Vec::new();
    for w in ["w-a", "w-b"] {
        let mut cfg = worker::Config::for_tests(&nats.url());
        cfg.worker_id = Some(w.into());
        workers.push(worker(cfg));
        heartbeat_from(&mut hb, w).await;
    }
    let create = s.session_create().to_string();
    let req = |subject: String, body: String| {
        let bus = bus.clone();
        async move { raw_request(&bus, &subject, &body).await }
    };

    // The same create twice at once: one session, both told about it.
    let body = format!(r#"{{"id":"twin","source":{SMALL}}}"#);
    let (a, b) = tokio::join!(
        req(create.clone(), body.clone()),
        req(create.clone(), body.clone())
    );
    let (a, b) = (ok(&a), ok(&b));
    for k in ["owner", "epoch", "created_at"] {
        assert_eq!(
            a[k], b[k],
            "both creates describe one session ({k}): {a} {b}"
        );
    }
    assert_eq!(a["epoch"], 1);
    // One source started (counted again at the end, once the session's
    // later events are in).
    wait_for("twin's started event", BUS_TIMEOUT, || async {
        (!events.of("twin", "started").is_empty()).then_some(())
    })
    .await;

    // The same id with another body: the session as it is (documented:
    // its spec unchanged, whatever the new request says), nothing started.
    let other = r#"{"id":"twin","source":{"kind":"synthetic","width":640,"height":480},"labels":{"x":"y"}}"#;
    let again = req(create.clone(), other.into()).await;
    let again = ok(&again);
    assert_eq!(again["owner"], a["owner"], "{again}");
    assert_eq!(again["epoch"], 1, "{again}");
    assert_eq!(again["created_at"], a["created_at"], "{again}");
    assert_eq!(
        again["spec"]["source"]["width"], 160,
        "spec unchanged: {again}"
    );
    assert_eq!(
        again["spec"]["labels"],
        json!({}),
        "spec unchanged: {again}"
    );
    let owner = a["owner"].as_str().expect("owner").to_string();

    // A viewer joins (over NATS, as the api does) so there is a peer to
    // signal once the session has ended.
    let join = req(
        s.session_join(&sid("twin")).to_string(),
        r#"{"peer":"p-faults000001","role":"view"}"#.into(),
    )
    .await;
    assert_eq!(ok(&join)["worker"], owner, "{join}");

    // Stop twice: the second is a no-op that returns the ended record.
    let stop = s.session_stop(&sid("twin")).to_string();
    let first = req(stop.clone(), "{}".into()).await;
    let first = ok(&first).clone();
    assert_eq!(first["state"], "ended", "{first}");
    assert_eq!(first["ended"]["reason"], "stopped", "{first}");
    let second = req(stop.clone(), r#"{"detail":"again"}"#.into()).await;
    let second = ok(&second);
    assert_eq!(second["state"], "ended", "{second}");
    assert_eq!(
        second["ended"], first["ended"],
        "the first end stands: {second}"
    );
    assert_eq!(
        second["revision"], first["revision"],
        "nothing written: {second}"
    );

    // Commands for the ended session: `ended`, with the reason.
    let twin = sid("twin");
    for (verb, subject, body) in [
        ("keepalive", s.session_keepalive(&twin).to_string(), "{}"),
        (
            "join",
            s.session_join(&twin).to_string(),
            r#"{"peer":"p-faults000002","role":"view"}"#,
        ),
        (
            "input",
            s.session_input(&twin).to_string(),
            r#"{"events":[]}"#,
        ),
        ("stats", s.session_stats(&twin).to_string(), "{}"),
    ] {
        let r = req(subject, body.into()).await;
        assert_eq!(err_code(&r), "ended", "{verb} on an ended session: {r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("stopped")),
            "{verb}: the message gives the reason: {r}"
        );
    }
    // The peer's signalling subject on its (former) owner.
    let peer_subject = s
        .worker_peer(
            &wid(&owner),
            &sid("twin"),
            &bus_schema::PeerId::parse("p-faults000001").expect("peer id"),
        )
        .to_string();
    for body in [
        r#"{"type":"leave"}"#,
        r#"{"type":"answer","sdp":"v=0\r\n"}"#,
    ] {
        let r = req(peer_subject.clone(), body.into()).await;
        assert_eq!(
            err_code(&r),
            "ended",
            "a peer command for an ended session: {r}"
        );
    }
    let got = req(s.session_get(&sid("twin")).to_string(), "{}".into()).await;
    assert_eq!(ok(&got)["state"], "ended", "{got}");

    // Stop, keepalive and join for an id never created: not_found.
    for (subject, body) in [
        (s.session_stop(&sid("ghost")).to_string(), "{}"),
        (s.session_keepalive(&sid("ghost")).to_string(), "{}"),
        (
            s.session_join(&sid("ghost")).to_string(),
            r#"{"peer":"p-faults000003","role":"view"}"#,
        ),
    ] {
        let r = req(subject.clone(), body.into()).await;
        assert_eq!(err_code(&r), "not_found", "{subject}: {r}");
    }

    // A stop sent together with its create: the stop is answered (ended,
    // or not_found / conflict when it came first), the create succeeds, and
    // a stop repeated until it is answered `ended` leaves nothing behind.
    let mut went_live = BTreeSet::from(["twin".to_string()]);
    for i in 0..4 {
        let id = format!("race-{i}");
        let body = format!(r#"{{"id":"{id}","source":{SMALL}}}"#);
        let stop = s.session_stop(&sid(&id)).to_string();
        let (created, stopped) = tokio::join!(req(create.clone(), body), async {
            if i % 2 == 1 {
                // Half the rounds stop as soon as the create's claim is in
                // the registry (starting or live).
                wait_for("the create's claim", BUS_TIMEOUT, || {
                    registry_get(&bus, &id)
                })
                .await;
            }
            req(stop.clone(), "{}".into()).await
        });
        if created["ok"] == json!(true) {
            assert_eq!(created["result"]["id"], id.as_str(), "{created}");
            went_live.insert(id.clone());
        } else {
            // The stop won the race while the source was starting: the
            // create says so, with the reason.
            assert_eq!(err_code(&created), "ended", "{created}");
            assert!(
                created["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("stopped")),
                "{created}"
            );
            assert_eq!(stopped["ok"], json!(true), "the stop that won: {stopped}");
        }
        if stopped["ok"] == json!(true) {
            assert_eq!(stopped["result"]["state"], "ended", "{stopped}");
        } else {
            let code = err_code(&stopped);
            assert!(
                code == "not_found" || code == "conflict",
                "a stop racing its create: {stopped}"
            );
        }
        let end = wait_for(&format!("{id} to stop"), BUS_TIMEOUT, || {
            let stop = stop.clone();
            let req = &req;
            async move {
                let r = req(stop, "{}".into()).await;
                (r["ok"] == json!(true)).then_some(r)
            }
        })
        .await;
        assert_eq!(end["result"]["state"], "ended", "{end}");
        eprintln!(
            "{id}: create {}, concurrent stop {}",
            if created["ok"] == json!(true) {
                created["result"]["state"].to_string()
            } else {
                format!("answered {}", created["error"]["code"])
            },
            if stopped["ok"] == json!(true) {
                "ended it".to_string()
            } else {
                format!("answered {}", stopped["error"]["code"])
            }
        );
    }

    // Nothing leaked: no live session, every id ended exactly once, and
    // both workers' heartbeats list nothing.
    let listed = req(s.session_list().to_string(), "{}".into()).await;
    assert_eq!(ok(&listed)["sessions"], json!([]), "{listed}");
    for w in ["w-a", "w-b"] {
        let v = wait_for_heartbeat_empty(&mut hb, w).await;
        assert_eq!(v["sessions"], json!([]), "{v}");
    }
    for id in ["twin", "race-0", "race-1", "race-2", "race-3"] {
        let ended = wait_for(&format!("the ended event of {id}"), BUS_TIMEOUT, || async {
            let e = events.of(id, "ended");
            (!e.is_empty()).then_some(e)
        })
        .await;
        assert_eq!(ended.len(), 1, "{id} ended once: {ended:?}");
        // A create the stop beat never went live.
        let starts = usize::from(went_live.contains(id));
        assert_eq!(events.of(id, "started").len(), starts, "{id}");
        let rec = registry_get(&bus, id).await.expect("kept while retained");
        assert_eq!(rec["state"], "ended", "{rec}");
    }
    assert!(
        registry_get(&bus, "ghost").await.is_none(),
        "no ghost entry"
    );
    for w in workers {
        assert!(w.stop(Duration::from_secs(10)).await, "worker stops");
    }
}

/// Polls `done` until it gives the repaired records; at the deadline
/// panics with every record and event of `ids`.
async fn wait_repaired<F, Fut>(
    bus: &async_nats::Client,
    events: &Events,
    ids: &[String],
    mut done: F,
    to: &str,
) -> BTreeMap<String, Value>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<BTreeMap<String, Value>>>,
{
    let deadline = Instant::now() + BUS_TIMEOUT;
    loop {
        if let Some(recs) = done().await {
            return recs;
        }
        if Instant::now() >= deadline {
            let mut state = String::new();
            for id in ids {
                let rec = registry_get(bus, id).await;
                state.push_str(&format!(
                    "\n  {id}: {} / events {:?}",
                    rec.map_or("missing".into(), |r| format!(
                        "{} owner {} epoch {}",
                        r["state"], r["owner"], r["epoch"]
                    )),
                    events
                        .all()
                        .iter()
                        .filter(|e| e["id"] == id.as_str())
                        .map(|e| format!("{} {} e{}", e["kind"], e["worker"], e["epoch"]))
                        .collect::<Vec<_>>()
                ));
            }
            panic!("timed out after {BUS_TIMEOUT:?} waiting for the sessions to be ended or live on {to}:{state}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first heartbeat of `worker` that lists no session (within 10 s).
async fn wait_for_heartbeat_empty(sub: &mut async_nats::Subscriber, worker: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = heartbeat_from(sub, worker).await;
        if v["sessions"] == json!([]) || Instant::now() >= deadline {
            return v;
        }
    }
}

/// Rewrites a registry entry as a janitor would (a compare-and-set on the
/// revision read), publishing no event: the janitor "died" in between.
async fn janitor_write(
    bus: &async_nats::Client,
    id: &str,
    change: impl FnOnce(&mut bus_schema::SessionRecord),
) -> bus_schema::SessionRecord {
    use bus_schema::registry::{Registry, Storage};
    let js = async_nats::jetstream::new(bus.clone());
    let reg = Registry::open(&js, &subjects(), Storage::Memory)
        .await
        .expect("registry opens");
    let v = reg
        .get(&sid(id))
        .await
        .expect("registry readable")
        .unwrap_or_else(|| panic!("{id} is in the registry"));
    let mut record = v.record;
    change(&mut record);
    record.updated_at = bus_schema::Timestamp::now();
    reg.update(&record, v.revision)
        .await
        .expect("the CAS wins: nobody else writes");
    record
}

/// A janitor that dies between its registry write and its event: the api
/// learns the end or move from the registry and tells the page anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_janitor_event_reaches_the_page_through_the_registry() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let nats = NatsServer::start().await;
    let bus = nats.client().await;
    let mut hb = subscribe(&bus, subjects().heartbeat_any()).await;
    let mut old = Proc::spawn("worker", &worker_env(&nats.url(), "w-old"));
    heartbeat_from(&mut hb, "w-old").await;
    let mut ac = api::Config::for_tests(&nats.url());
    ac.join_token_secret = Some(SECRET.into());
    let (_api, base) = api(ac).await;
    let http = reqwest::Client::new();
    let lost = rest_create(&http, &base, "lost", "").await;
    let moved = rest_create(&http, &base, "moved", "").await;
    assert_eq!(lost["owner"], "w-old");
    assert_eq!(moved["owner"], "w-old");
    let _new = Proc::spawn("worker", &worker_env(&nats.url(), "w-new"));
    heartbeat_from(&mut hb, "w-new").await;
    drop(hb);

    let driver = ChromeDriver::start().await;
    let pl = driver.browser("lost").await;
    let pm = driver.browser("moved").await;
    pl.open(&page_url(&http, &base, "lost").await).await;
    pm.open(&page_url(&http, &base, "moved").await).await;
    let (sl, sm) = tokio::join!(wait_decoding(&pl), wait_decoding(&pm));
    assert_eq!(sl["worker"], "w-old", "{sl}");
    assert_eq!(sm["worker"], "w-old", "{sm}");
    let events = Events::collect(&bus).await;

    // The owner hangs (it can tell nobody anything), and the "janitor"
    // writes the registry and dies before publishing.
    old.signal("STOP");
    let written = Instant::now();
    let ended = janitor_write(&bus, "lost", |r| {
        r.state = bus_schema::SessionState::Ended;
        r.ended = Some(bus_schema::Ended {
            reason: bus_schema::EndReason::WorkerLost,
            at: bus_schema::Timestamp::now(),
            detail: Some("test: written as a janitor would, no event".into()),
        });
    })
    .await;
    assert_eq!(ended.epoch, 1);
    let rec = janitor_write(&bus, "moved", |r| {
        r.owner = wid("w-new");
        r.epoch += 1;
        r.state = bus_schema::SessionState::Starting;
        r.live_at = None;
        r.viewers = 0;
    })
    .await;
    // The new owner starts it, as the janitor's adopt would have done.
    let typed = bus_schema::Bus::new(bus.clone(), subjects());
    let adopted = typed
        .request(
            &subjects().worker_adopt(&wid("w-new"), &sid("moved")),
            &bus_schema::AdoptSession { epoch: rec.epoch },
        )
        .await
        .expect("w-new adopts");
    assert_eq!(adopted.record.owner, wid("w-new"));
    // The hung worker is gone for good (its subscriptions with it).
    old.signal("KILL");
    old.wait_exit(Duration::from_secs(5))
        .await
        .expect("the hung worker died");

    let s = pl
        .wait_stats("the page to show worker_lost", BUS_TIMEOUT, |s| {
            s["ended"] == "worker_lost"
        })
        .await;
    let told = written.elapsed();
    assert_eq!(s["worker"], "w-old", "{s}");
    let notice = pl
        .execute(r#"return document.getElementById("notice").textContent;"#)
        .await
        .expect("notice");
    assert!(
        notice.as_str().is_some_and(|n| n.contains("worker lost")),
        "the page tells the viewer why: {notice}"
    );
    // The moved page was told by the registry path (its reason names the
    // epoch; the event path's does not), rejoined w-new and decodes.
    let closed = pm
        .execute("return window.viewer.state.closed;")
        .await
        .expect("page state");
    let s = pm
        .wait_stats("the page to decode from w-new", DECODE_TIMEOUT, |s| {
            s["worker"] == "w-new" && s["connected"] == json!(true) && frames(s) >= 1
        })
        .await;
    let rejoined = written.elapsed();
    let closed = if closed.is_null() {
        pm.execute("return window.viewer.state.closed;")
            .await
            .expect("page state")
    } else {
        closed
    };
    assert!(
        closed
            .as_str()
            .is_some_and(|c| c.contains("moved to worker w-new (epoch 2)")),
        "the registry told the page of the move: {closed} ({s})"
    );
    wait_decoding(&pm).await;
    let decoding = written.elapsed();
    for id in ["lost", "moved"] {
        let lost_events: Vec<Value> = events
            .all()
            .into_iter()
            .filter(|e| e["id"] == id && matches!(e["kind"].as_str(), Some("ended" | "moved")))
            .collect();
        assert!(
            lost_events.is_empty(),
            "no end or move event was published for {id}: {lost_events:?}"
        );
    }
    eprintln!(
        "registry written, no event -> ended page shows worker_lost {told:?}; \
         moved page joined w-new {rejoined:?}, decoding >10 frames {decoding:?}"
    );
    pl.close().await;
    pm.close().await;
}

/// A NATS restart shorter than the worker's lease: media flows peer to
/// peer the whole time, the session is never suspended, moved or ended,
/// and the page never has to join again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_nats_outage_does_not_interrupt_a_watching_browser() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let mut nats = NatsServer::start().await;
    // A lease longer than the outage below, and a janitor that waits
    // longer still (the lease must stay shorter than DEAD_AFTER).
    let lease = Duration::from_secs(5);
    let mut wc = worker::Config::for_tests(&nats.url());
    wc.worker_id = Some("w-through".into());
    wc.lease = lease.into();
    wc.registry_storage = worker::config::StorageKind::File;
    let _worker = worker(wc);
    let mut jc = janitor::Config::for_tests(&nats.url(), "streams");
    jc.dead_after = Duration::from_secs(6).into();
    let _janitor = janitor(jc);
    let bus = nats.client().await;
    wait_workers(&bus).await;
    let mut ac = api::Config::for_tests(&nats.url());
    ac.join_token_secret = Some(SECRET.into());
    let (_api, base) = api(ac).await;
    let http = reqwest::Client::new();
    rest_create(&http, &base, "through", "").await;
    let url = page_url(&http, &base, "through").await;
    let driver = ChromeDriver::start().await;
    let b = driver.browser("through").await;
    b.open(&url).await;
    let s = wait_decoding(&b).await;
    let peer = s["peer"].clone();
    drop(bus);

    nats.kill();
    let down = Instant::now();
    let before = frames(&b.stats().await.expect("stats"));
    // 15 frames at 15 fps while NATS is down; the wait ends before the
    // lease could run out, so the frames cannot come from after a resume.
    let s = b
        .wait_stats(
            &format!("15 more frames from {before} with NATS down"),
            lease - Duration::from_secs(1),
            |s| frames(s) >= before + 15,
        )
        .await;
    assert_eq!(s["peer"], peer, "the same peer connection: {s}");
    let during = frames(&s) - before;
    nats.start_again().await;
    eprintln!(
        "NATS down {:?}: the page decoded {during} frames meanwhile",
        down.elapsed()
    );

    // NATS is back: the worker's heartbeats never showed the session
    // suspended, the registry still has it at epoch 1, the page keeps
    // decoding on the same peer connection and never rejoined.
    let bus = nats.client().await;
    let mut hb = subscribe(&bus, subjects().heartbeat_any()).await;
    for _ in 0..4 {
        let v = heartbeat_from(&mut hb, "w-through").await;
        assert_eq!(v["sessions"][0]["id"], "through", "{v}");
        assert_eq!(v["sessions"][0]["suspended"], false, "never suspended: {v}");
    }
    let rec = registry_get(&bus, "through").await.expect("record");
    assert_eq!(rec["state"], "live", "{rec}");
    assert_eq!(rec["epoch"], 1, "{rec}");
    assert_eq!(rec["owner"], "w-through", "{rec}");
    let mark = frames(&b.stats().await.expect("stats"));
    let s = b
        .wait_stats("15 more frames after NATS is back", DECODE_TIMEOUT, |s| {
            frames(s) >= mark + 15
        })
        .await;
    assert_eq!(s["peer"], peer, "the page never joined again: {s}");
    assert_eq!(s["ended"], Value::Null, "{s}");
}
