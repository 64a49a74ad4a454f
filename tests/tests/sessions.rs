//! Sessions over NATS as Helix drives them: raw JSON on documented subjects,
//! against a real nats-server and in-process workers.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use system_tests::*;

const SMALL: &str = r#"{"kind":"synthetic","width":160,"height":120,"fps":10,"bitrate_kbps":200}"#;

fn create_body(id: &str, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(",{extra}")
    };
    format!(r#"{{"id":"{id}","source":{SMALL}{extra}}}"#)
}

fn worker_cfg(nats: &NatsServer, id: &str) -> worker::Config {
    let mut c = worker::Config::for_tests(&nats.url());
    c.worker_id = Some(id.to_string());
    c
}

fn ok(v: &Value) -> &Value {
    assert_eq!(v["ok"], json!(true), "expected success, got {v}");
    &v["result"]
}

fn err_code(v: &Value) -> &str {
    assert_eq!(v["ok"], json!(false), "expected an error, got {v}");
    v["error"]["code"].as_str().expect("error code")
}

/// Waits until the worker answers on the bus.
async fn ready(client: &async_nats::Client) {
    worker_answers(client).await
}

/// Collects the reason of the first `ended` event of a session.
async fn ended_reason(sub: &mut async_nats::Subscriber, timeout: Duration) -> String {
    let msg = tokio::time::timeout(timeout, sub.next())
        .await
        .expect("an ended event in time")
        .expect("subscription open");
    let ev: Value = serde_json::from_slice(&msg.payload).expect("event JSON");
    assert_eq!(ev["kind"], "ended");
    ev["reason"].as_str().expect("reason").to_string()
}

#[tokio::test]
async fn raw_json_create_get_list_keepalive_stop() {
    init_tracing();
    let nats = NatsServer::start().await;
    let w = worker(worker_cfg(&nats, "w-raw"));
    let c = nats.client().await;
    ready(&c).await;
    let mut started = subscribe(&c, "streams.v1.event.session.helix-1.started").await;
    let mut ended = subscribe(&c, "streams.v1.event.session.helix-1.ended").await;

    let t0 = Instant::now();
    let created = raw_request(
        &c,
        "streams.v1.session.create",
        &create_body("helix-1", r#""idle_ttl":"1m""#),
    )
    .await;
    let info = ok(&created).clone();
    eprintln!("create-to-live reply: {:?}", t0.elapsed());
    assert_eq!(info["id"], "helix-1");
    assert_eq!(info["owner"], "w-raw");
    assert_eq!(
        info["state"], "live",
        "the reply comes once the first frame is encoded"
    );
    assert_eq!(info["epoch"], 1);
    assert_eq!(info["spec"]["idle_ttl"], "1m");
    assert!(info["live_at"].is_string());
    let ev = tokio::time::timeout(Duration::from_secs(5), started.next())
        .await
        .unwrap()
        .unwrap();
    let ev: Value = serde_json::from_slice(&ev.payload).unwrap();
    assert_eq!(ev["worker"], "w-raw");

    let got = raw_request(&c, "streams.v1.session.helix-1.get", "").await;
    assert_eq!(ok(&got)["state"], "live");
    let listed = raw_request(&c, "streams.v1.session.list", "{}").await;
    let ids: Vec<&str> = ok(&listed)["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["helix-1"]);

    let kept = raw_request(&c, "streams.v1.session.helix-1.keepalive", "{}").await;
    assert_eq!(ok(&kept)["id"], "helix-1");

    let stopped = raw_request(
        &c,
        "streams.v1.session.helix-1.stop",
        r#"{"detail":"user closed"}"#,
    )
    .await;
    let stopped = ok(&stopped);
    assert_eq!(stopped["state"], "ended");
    assert_eq!(stopped["ended"]["reason"], "stopped");
    assert_eq!(stopped["ended"]["detail"], "user closed");
    assert_eq!(
        ended_reason(&mut ended, Duration::from_secs(5)).await,
        "stopped"
    );

    // The end stays visible; a second stop is a no-op that says how it ended.
    let again = raw_request(&c, "streams.v1.session.helix-1.stop", "").await;
    assert_eq!(ok(&again)["ended"]["reason"], "stopped");
    let kept = raw_request(&c, "streams.v1.session.helix-1.keepalive", "").await;
    assert_eq!(err_code(&kept), "ended");
    let listed = raw_request(&c, "streams.v1.session.list", r#"{"include_ended":true}"#).await;
    assert_eq!(ok(&listed)["sessions"][0]["state"], "ended");
    let listed = raw_request(&c, "streams.v1.session.list", "").await;
    assert_eq!(ok(&listed)["sessions"], json!([]));
    assert!(w.stop(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn create_is_idempotent_even_when_two_workers_race() {
    init_tracing();
    let nats = NatsServer::start().await;
    let c = nats.client().await;
    let mut hb = subscribe(&c, "streams.v1.worker.*.heartbeat").await;
    let a = worker(worker_cfg(&nats, "w-a"));
    let b = worker(worker_cfg(&nats, "w-b"));
    // Both must answer on their own subjects before the race: a heartbeat
    // from each (one worker answering `session.list` is not enough, the
    // other may still be opening the registry).
    for w in ["w-a", "w-b"] {
        heartbeat_from(&mut hb, w).await;
    }

    // The same create sent straight to both workers at once: both try to
    // claim the id in the registry; one wins, the other returns its record.
    let body = create_body("race-1", "");
    let (ra, rb) = tokio::join!(
        raw_request(&c, "streams.v1.worker.w-a.session.create", &body),
        raw_request(&c, "streams.v1.worker.w-b.session.create", &body),
    );
    let (ia, ib) = (ok(&ra), ok(&rb));
    assert_eq!(ia["owner"], ib["owner"], "one owner for both answers");
    assert_eq!(ia["epoch"], ib["epoch"]);
    let owner = ia["owner"].as_str().unwrap().to_string();

    // A later create through the public subject returns the same session.
    let again = raw_request(&c, "streams.v1.session.create", &body).await;
    assert_eq!(ok(&again)["owner"], owner.as_str());

    // Exactly one worker streams it: wait for a heartbeat from each worker
    // sent after the race, and count.
    let after = Instant::now();
    let mut seen = std::collections::HashMap::new();
    while seen.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(5), hb.next())
            .await
            .unwrap()
            .unwrap();
        if after.elapsed() < Duration::from_millis(300) {
            continue;
        }
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        let holds = v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == "race-1");
        seen.insert(v["worker"].as_str().unwrap().to_string(), holds);
    }
    assert_eq!(seen.values().filter(|h| **h).count(), 1, "{seen:?}");
    assert!(seen[&owner], "the owner streams it");
    let listed = raw_request(&c, "streams.v1.session.list", "").await;
    assert_eq!(ok(&listed)["sessions"].as_array().unwrap().len(), 1);
    a.stop(Duration::from_secs(5)).await;
    b.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn idle_ttl_ends_a_headless_session_and_keepalive_defers_it() {
    init_tracing();
    let nats = NatsServer::start().await;
    let _w = worker(worker_cfg(&nats, "w-ttl"));
    let c = nats.client().await;
    ready(&c).await;

    // Unattended: ends on its idle TTL.
    let mut ended = subscribe(&c, "streams.v1.event.session.idle-1.ended").await;
    ok(&raw_request(
        &c,
        "streams.v1.session.create",
        &create_body("idle-1", r#""idle_ttl":"1s""#),
    )
    .await);
    assert_eq!(
        ended_reason(&mut ended, Duration::from_secs(10)).await,
        "idle_timeout"
    );
    let got = raw_request(&c, "streams.v1.session.idle-1.get", "").await;
    assert_eq!(ok(&got)["ended"]["reason"], "idle_timeout");

    // Kept alive for two TTLs, it survives; then it idles out. (The TTL
    // leaves a loaded machine 1.7 s between two keepalives.)
    let mut ended = subscribe(&c, "streams.v1.event.session.idle-2.ended").await;
    ok(&raw_request(
        &c,
        "streams.v1.session.create",
        &create_body("idle-2", r#""idle_ttl":"2s""#),
    )
    .await);
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        tick.tick().await;
        let r = raw_request(&c, "streams.v1.session.idle-2.keepalive", "").await;
        assert_eq!(ok(&r)["state"], "live", "keepalive holds the session");
    }
    assert_eq!(
        ended_reason(&mut ended, Duration::from_secs(10)).await,
        "idle_timeout"
    );
}

#[tokio::test]
async fn max_lifetime_ends_a_session_despite_keepalives() {
    init_tracing();
    let nats = NatsServer::start().await;
    let _w = worker(worker_cfg(&nats, "w-life"));
    let c = nats.client().await;
    ready(&c).await;
    let mut ended = subscribe(&c, "streams.v1.event.session.life-1.ended").await;
    ok(&raw_request(
        &c,
        "streams.v1.session.create",
        &create_body("life-1", r#""idle_ttl":"1m","max_lifetime":"2s""#),
    )
    .await);
    let reason = tokio::select! {
        r = ended_reason(&mut ended, Duration::from_secs(10)) => r,
        _ = async {
            let mut tick = tokio::time::interval(Duration::from_millis(300));
            loop { tick.tick().await; let _ = c.request("streams.v1.session.life-1.keepalive".to_string(), "".into()).await; }
        } => unreachable!(),
    };
    assert_eq!(reason, "max_lifetime");
}

#[tokio::test]
async fn no_capacity_is_a_quick_clear_error() {
    init_tracing();
    let nats = NatsServer::start().await;
    let mut cfg = worker_cfg(&nats, "w-small");
    cfg.capacity = 1;
    let _w = worker(cfg);
    let c = nats.client().await;
    ready(&c).await;
    ok(&raw_request(&c, "streams.v1.session.create", &create_body("cap-1", "")).await);
    let t0 = Instant::now();
    let r = raw_request(&c, "streams.v1.session.create", &create_body("cap-2", "")).await;
    assert_eq!(err_code(&r), "no_capacity");
    eprintln!("no_capacity answered in {:?}", t0.elapsed());
    // The existing session is untouched and the refused id was not registered.
    let got = raw_request(&c, "streams.v1.session.cap-2.get", "").await;
    assert_eq!(err_code(&got), "not_found");
    let got = raw_request(&c, "streams.v1.session.cap-1.get", "").await;
    assert_eq!(ok(&got)["state"], "live");
}

#[tokio::test]
async fn bad_input_gets_stable_error_codes_and_changes_nothing() {
    init_tracing();
    let nats = NatsServer::start().await;
    let _w = worker(worker_cfg(&nats, "w-bad"));
    let c = nats.client().await;
    ready(&c).await;
    let cases: &[(&str, &str, &str)] = &[
        ("streams.v1.session.create", "{not json", "malformed"),
        ("streams.v1.session.create", "\u{0}\u{1}", "malformed"),
        (
            "streams.v1.session.create",
            r#"{"id":"x","colour":"red"}"#,
            "invalid_request",
        ),
        (
            "streams.v1.session.create",
            r#"{"id":42}"#,
            "invalid_request",
        ),
        ("streams.v1.session.create", r#"[]"#, "invalid_request"),
        (
            "streams.v1.session.create",
            r#"{"id":"has space"}"#,
            "invalid_id",
        ),
        (
            "streams.v1.session.create",
            r#"{"idle_ttl":"tomorrow"}"#,
            "invalid_duration",
        ),
        (
            "streams.v1.session.create",
            r#"{"max_lifetime":"0s"}"#,
            "invalid_duration",
        ),
        (
            "streams.v1.session.create",
            r#"{"source":{"kind":"webcam"}}"#,
            "invalid_request",
        ),
        (
            "streams.v1.session.create",
            r#"{"source":{"kind":"synthetic","width":7}}"#,
            "invalid_request",
        ),
        (
            "streams.v1.session.create",
            r#"{"on_worker_lost":"sometimes"}"#,
            "invalid_request",
        ),
        (
            "streams.v1.session.list",
            r#"{"include_ended":"yes"}"#,
            "invalid_request",
        ),
        ("streams.v1.session.nosuch.get", "", "not_found"),
        ("streams.v1.session.nosuch.stop", "", "not_found"),
        ("streams.v1.session.nosuch.keepalive", "", "not_found"),
        ("streams.v1.session.bad!id.get", "", "invalid_id"),
        (
            "streams.v1.session.nosuch.stop",
            r#"{"detail":7}"#,
            "invalid_request",
        ),
        (
            "streams.v1.worker.w-bad.session.nosuch.adopt",
            r#"{"epoch":2}"#,
            "not_found",
        ),
        (
            "streams.v1.worker.w-bad.session.nosuch.adopt",
            r#"{}"#,
            "invalid_request",
        ),
    ];
    for (subject, body, code) in cases {
        let r = raw_request(&c, subject, body).await;
        assert_eq!(err_code(&r), *code, "{subject} {body:?} -> {r}");
        assert!(r["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let huge = format!(
        r#"{{"id":"big","labels":{{"k":"{}"}}}}"#,
        "x".repeat(70_000)
    );
    assert_eq!(
        err_code(&raw_request(&c, "streams.v1.session.create", &huge).await),
        "too_large"
    );
    let listed = raw_request(&c, "streams.v1.session.list", r#"{"include_ended":true}"#).await;
    assert_eq!(
        ok(&listed)["sessions"],
        json!([]),
        "nothing was created by bad input"
    );
    // The worker still serves.
    ok(&raw_request(&c, "streams.v1.session.create", &create_body("fine", "")).await);
}

#[tokio::test]
async fn worker_shutdown_ends_sessions_and_leaves_no_live_entries() {
    init_tracing();
    let nats = NatsServer::start().await;
    let w = worker(worker_cfg(&nats, "w-bye"));
    let c = nats.client().await;
    ready(&c).await;
    let mut ended = subscribe(&c, "streams.v1.event.session.*.ended").await;
    for id in ["bye-1", "bye-2"] {
        ok(&raw_request(&c, "streams.v1.session.create", &create_body(id, "")).await);
    }
    let t0 = Instant::now();
    assert!(w.stop(Duration::from_secs(10)).await, "worker stops");
    eprintln!("worker shutdown took {:?}", t0.elapsed());
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(2), ended.next())
            .await
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["reason"], "worker_shutdown");
    }
    // A second worker reads the registry: no session is left starting or live.
    let _w2 = worker(worker_cfg(&nats, "w-next"));
    ready(&c).await;
    let listed = raw_request(&c, "streams.v1.session.list", r#"{"include_ended":true}"#).await;
    for s in ok(&listed)["sessions"].as_array().unwrap() {
        assert_eq!(s["state"], "ended");
        assert_eq!(s["ended"]["reason"], "worker_shutdown");
    }
}

#[tokio::test]
async fn workers_are_a_nats_micro_service_with_endpoints_and_request_counts() {
    init_tracing();
    let nats = NatsServer::start().await;
    let _a = worker(worker_cfg(&nats, "w-micro-a"));
    let _b = worker(worker_cfg(&nats, "w-micro-b"));
    let c = nats.client().await;
    ready(&c).await;
    // What `nats micro ls` and `nats micro info stream-worker` ask, until
    // both workers answer (`ready` saw one; the other may still be
    // registering its service).
    let infos: Vec<Value> = wait_for(
        "both workers' service info",
        Duration::from_secs(20),
        || async {
            let inbox = c.new_inbox();
            let mut replies = c.subscribe(inbox.clone()).await.ok()?;
            c.publish_with_reply("$SRV.INFO.stream-worker", inbox, "".into())
                .await
                .ok()?;
            let mut got = Vec::new();
            while got.len() < 2 {
                let m = tokio::time::timeout(Duration::from_secs(1), replies.next())
                    .await
                    .ok()??;
                got.push(serde_json::from_slice(&m.payload).ok()?);
            }
            Some(got)
        },
    )
    .await;
    let mut workers = Vec::new();
    for info in &infos {
        assert_eq!(info["name"], "stream-worker");
        let names: Vec<&str> = info["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        for needed in [
            "create",
            "list",
            "get",
            "keepalive",
            "stop",
            "join",
            "input",
            "stats",
            "adopt",
            "fence",
        ] {
            assert!(
                names.contains(&needed),
                "endpoint {needed} missing from {names:?}"
            );
        }
        workers.push(info["metadata"]["worker_id"].as_str().unwrap().to_string());
    }
    workers.sort();
    assert_eq!(workers, ["w-micro-a", "w-micro-b"]);
    // `nats micro stats`: three lists are counted by the endpoint that served them.
    for _ in 0..3 {
        ok(&raw_request(&c, "streams.v1.session.list", "").await);
    }
    let mut inbox = subscribe(&c, "_INBOX.micro-stats").await;
    c.publish_with_reply("$SRV.STATS.stream-worker", "_INBOX.micro-stats", "".into())
        .await
        .unwrap();
    let mut lists = 0;
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(5), inbox.next())
            .await
            .unwrap()
            .unwrap();
        let st: Value = serde_json::from_slice(&m.payload).unwrap();
        for e in st["endpoints"].as_array().unwrap() {
            if e["name"] == "list" {
                lists += e["num_requests"].as_u64().unwrap();
            }
        }
    }
    // `ready` sent at least one list too.
    assert!(lists >= 4, "list requests counted: {lists}");
}
