//! Dead, hung and partitioned workers: the janitor's reaping and the
//! worker's own lease, against real processes and a real nats-server.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use system_tests::*;

const SMALL: &str = r#"{"kind":"synthetic","width":160,"height":120,"fps":10,"bitrate_kbps":200}"#;

fn worker_env(nats_url: &str, id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("NATS_URL", nats_url.to_string()),
        ("WORKER_ID", id.to_string()),
        ("HEARTBEAT_INTERVAL", "250ms".into()),
        ("LEASE", "600ms".into()),
        ("REGISTRY_STORAGE", "memory".into()),
    ]
}

fn ok(v: &Value) -> &Value {
    assert_eq!(v["ok"], json!(true), "expected success, got {v}");
    &v["result"]
}

#[tokio::test]
async fn kill_9_of_a_worker_ends_its_sessions_with_worker_lost() {
    init_tracing();
    let nats = NatsServer::start().await;
    let _j = janitor(janitor::Config::for_tests(&nats.url(), "streams"));
    let mut w = Proc::spawn("worker", &worker_env(&nats.url(), "w-doomed"));
    let c = nats.client().await;
    let mut hb = subscribe(&c, "streams.v1.worker.*.heartbeat").await;
    heartbeat_from(&mut hb, "w-doomed").await;
    let mut ended = subscribe(&c, "streams.v1.event.session.doomed-1.ended").await;
    let mut lost = subscribe(&c, "streams.v1.event.worker.w-doomed.lost").await;
    let body = format!(r#"{{"id":"doomed-1","source":{SMALL}}}"#);
    let info = raw_request(&c, "streams.v1.session.create", &body).await;
    assert_eq!(ok(&info)["owner"], "w-doomed");

    w.signal("KILL");
    let killed = Instant::now();
    w.wait_exit(Duration::from_secs(5))
        .await
        .expect("worker died");
    let m = tokio::time::timeout(Duration::from_secs(10), ended.next())
        .await
        .unwrap()
        .unwrap();
    let detected = killed.elapsed();
    let ev: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(ev["reason"], "worker_lost");
    eprintln!("janitor reaped the session {detected:?} after kill -9 (dead_after 1 s)");
    let m = tokio::time::timeout(Duration::from_secs(5), lost.next())
        .await
        .unwrap()
        .unwrap();
    let ev: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(ev["sessions"], json!(["doomed-1"]));
    // No worker is left to answer `get`: read the registry itself.
    let rec = registry_get(&c, "doomed-1").await.expect("entry retained");
    assert_eq!(rec["state"], "ended");
    assert_eq!(rec["ended"]["reason"], "worker_lost");
}

#[tokio::test]
async fn kill_9_moves_a_restartable_session_to_another_worker() {
    init_tracing();
    let nats = NatsServer::start().await;
    let _j = janitor(janitor::Config::for_tests(&nats.url(), "streams"));
    let w1 = Proc::spawn("worker", &worker_env(&nats.url(), "w-first"));
    let c = nats.client().await;
    let mut hb = subscribe(&c, "streams.v1.worker.*.heartbeat").await;
    heartbeat_from(&mut hb, "w-first").await;
    let body = format!(r#"{{"id":"phoenix","on_worker_lost":"restart","source":{SMALL}}}"#);
    assert_eq!(
        ok(&raw_request(&c, "streams.v1.session.create", &body).await)["owner"],
        "w-first"
    );

    let mut cfg = worker::Config::for_tests(&nats.url());
    cfg.worker_id = Some("w-second".into());
    let _w2 = worker(cfg);
    heartbeat_from(&mut hb, "w-second").await;
    let mut moved = subscribe(&c, "streams.v1.event.session.phoenix.*").await;

    w1.signal("KILL");
    let killed = Instant::now();
    let live = wait_for(
        "the session to be live on w-second",
        Duration::from_secs(15),
        || async {
            let rec = registry_get(&c, "phoenix").await?;
            (rec["owner"] == "w-second" && rec["state"] == "live").then_some(rec)
        },
    )
    .await;
    eprintln!(
        "session restarted elsewhere {:?} after kill -9",
        killed.elapsed()
    );
    assert_eq!(live["epoch"], 2, "a new epoch for the new owner");
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(5), moved.next())
            .await
            .unwrap()
            .unwrap();
        let ev: Value = serde_json::from_slice(&m.payload).unwrap();
        kinds.push(ev["kind"].as_str().unwrap().to_string());
    }
    assert!(kinds.contains(&"moved".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"started".to_string()), "{kinds:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = heartbeat_from(&mut hb, "w-second").await;
        if v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == "phoenix" && s["epoch"] == 2)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "w-second never reported the session"
        );
    }
}

#[tokio::test]
async fn a_partitioned_worker_stops_by_itself_and_does_not_resume_after_healing() {
    init_tracing();
    let nats = NatsServer::start().await;
    let proxy = Proxy::start(nats.port).await;
    let _j = janitor(janitor::Config::for_tests(&nats.url(), "streams"));
    let mut cfg = worker::Config::for_tests(&proxy.url());
    cfg.worker_id = Some("w-island".into());
    let _island = worker(cfg);
    let c = nats.client().await;
    let mut hb = subscribe(&c, "streams.v1.worker.*.heartbeat").await;
    heartbeat_from(&mut hb, "w-island").await;
    let body = format!(r#"{{"id":"marooned","on_worker_lost":"restart","source":{SMALL}}}"#);
    assert_eq!(
        ok(&raw_request(&c, "streams.v1.session.create", &body).await)["owner"],
        "w-island"
    );
    let mut cfg = worker::Config::for_tests(&nats.url());
    cfg.worker_id = Some("w-main".into());
    let _main = worker(cfg);
    heartbeat_from(&mut hb, "w-main").await;

    proxy.partition();
    let cut = Instant::now();
    // The janitor hears nothing from w-island and moves the session.
    let moved = wait_for(
        "the session to move to w-main",
        Duration::from_secs(15),
        || async {
            let rec = registry_get(&c, "marooned").await?;
            (rec["owner"] == "w-main" && rec["state"] == "live").then_some(rec)
        },
    )
    .await;
    assert_eq!(moved["epoch"], 2);
    eprintln!("moved {:?} after the partition", cut.elapsed());

    let healed_at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    proxy.heal();
    // Heartbeats w-island sent while cut off arrive now, in order. One sent
    // before the heal shows the session suspended: it stopped streaming by
    // itself once its lease ran out.
    let deadline = Instant::now() + Duration::from_secs(15);
    let suspended_while_cut = loop {
        assert!(
            Instant::now() < deadline,
            "no heartbeat from the partition showing the session suspended"
        );
        let v = heartbeat_from(&mut hb, "w-island").await;
        let sent = v["sent_at"].as_str().unwrap().to_string();
        let held = &v["sessions"];
        if sent < healed_at && held[0]["id"] == "marooned" && held[0]["suspended"] == true {
            break sent;
        }
    };
    eprintln!("w-island reported the session suspended at {suspended_while_cut}, before the heal at {healed_at}");
    // Healed, it reads the registry, sees the session given away, and drops
    // it without ever streaming it again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = heartbeat_from(&mut hb, "w-island").await;
        let held = v["sessions"].as_array().unwrap();
        assert!(
            held.iter().all(|s| s["suspended"] == true),
            "the healed worker never resumes a session it lost: {v}"
        );
        if held.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "w-island kept the lost session");
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let v = heartbeat_from(&mut hb, "w-island").await;
        assert_eq!(v["sessions"], json!([]), "and never picks it up again");
    }
    let rec = registry_get(&c, "marooned").await.unwrap();
    assert_eq!(rec["owner"], "w-main");
    assert_eq!(rec["epoch"], 2);
}

#[tokio::test]
async fn sigterm_ends_a_worker_process_cleanly_within_seconds() {
    init_tracing();
    let nats = NatsServer::start().await;
    let mut w = Proc::spawn("worker", &worker_env(&nats.url(), "w-term"));
    let c = nats.client().await;
    let mut hb = subscribe(&c, "streams.v1.worker.*.heartbeat").await;
    heartbeat_from(&mut hb, "w-term").await;
    let body = format!(r#"{{"id":"term-1","source":{SMALL}}}"#);
    ok(&raw_request(&c, "streams.v1.session.create", &body).await);
    let mut ended = subscribe(&c, "streams.v1.event.session.term-1.ended").await;
    w.signal("TERM");
    let t0 = Instant::now();
    let status = w
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("exits within 5 s of SIGTERM");
    assert!(status.success(), "clean exit: {status:?}");
    eprintln!("worker exited {:?} after SIGTERM", t0.elapsed());
    let m = tokio::time::timeout(Duration::from_secs(2), ended.next())
        .await
        .unwrap()
        .unwrap();
    let v: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["reason"], "worker_shutdown");
}

#[tokio::test]
async fn api_and_janitor_processes_exit_on_sigterm() {
    init_tracing();
    let nats = NatsServer::start().await;
    let port = free_port();
    let mut api = Proc::spawn(
        "api",
        &[
            ("NATS_URL", nats.url()),
            ("API_LISTEN", format!("127.0.0.1:{port}")),
        ],
    );
    let mut jan = Proc::spawn("janitor", &[("NATS_URL", nats.url())]);
    let url = format!("http://127.0.0.1:{port}/healthz");
    wait_for("the api to answer", Duration::from_secs(15), || {
        let url = url.clone();
        async move {
            reqwest::get(&url)
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        }
    })
    .await;
    for p in [&mut api, &mut jan] {
        p.signal("TERM");
        let s = p
            .wait_exit(Duration::from_secs(5))
            .await
            .expect("exits within 5 s");
        assert!(s.success(), "{s:?}");
    }
}

#[tokio::test]
async fn a_nats_restart_loses_no_session_and_everything_reconnects() {
    init_tracing();
    let mut nats = NatsServer::start().await;
    let mut jc = janitor::Config::for_tests(&nats.url(), "streams");
    jc.dead_after = Duration::from_secs(1).into();
    let _j = janitor(jc);
    let mut cfg = worker::Config::for_tests(&nats.url());
    cfg.worker_id = Some("w-steady".into());
    cfg.registry_storage = worker::config::StorageKind::File;
    let _w = worker(cfg);
    let c = nats.client().await;
    let mut hb = subscribe(&c, "streams.v1.worker.*.heartbeat").await;
    heartbeat_from(&mut hb, "w-steady").await;
    let body = format!(r#"{{"id":"steady","source":{SMALL}}}"#);
    let info = raw_request(&c, "streams.v1.session.create", &body).await;
    assert_eq!(ok(&info)["state"], "live");
    drop(hb);

    // The outage is part of the scenario: NATS stays down for three leases,
    // so the worker must suspend, then resume.
    nats.kill();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_millis(1800)).await;
    nats.start_again().await;
    // The registry was on disk; the worker reconnects, resubscribes, finds
    // the session still its own and resumes it; the janitor ends nothing.
    let c = nats.client().await;
    let mut hb = subscribe(&c, "streams.v1.worker.*.heartbeat").await;
    let mut ended = subscribe(&c, "streams.v1.event.session.steady.ended").await;
    // Heartbeats the worker published while cut off are delivered once it
    // reconnects: they show the session suspended, then resumed.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut saw_suspended = false;
    loop {
        let v = heartbeat_from(&mut hb, "w-steady").await;
        let held = &v["sessions"];
        assert_eq!(held[0]["id"], "steady", "the worker keeps the session: {v}");
        if held[0]["suspended"] == true {
            saw_suspended = true;
        } else if saw_suspended {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the session did not suspend and resume: {v}"
        );
    }
    eprintln!(
        "streaming again {:?} after the NATS restart began",
        t0.elapsed()
    );
    let kept = wait_for(
        "the worker to answer again",
        Duration::from_secs(10),
        || async {
            let r = c
                .request("streams.v1.session.steady.keepalive".to_string(), "".into())
                .await
                .ok()?;
            let v: Value = serde_json::from_slice(&r.payload).ok()?;
            (v["ok"] == json!(true)).then_some(v)
        },
    )
    .await;
    assert_eq!(kept["result"]["epoch"], 1, "same owner, same epoch");
    assert_eq!(kept["result"]["owner"], "w-steady");
    // A few janitor scans later, still nobody ended it.
    let rec = registry_get(&c, "steady").await.unwrap();
    assert_eq!(rec["state"], "live");
    for _ in 0..8 {
        heartbeat_from(&mut hb, "w-steady").await;
    }
    assert!(
        futures::FutureExt::now_or_never(ended.next()).is_none(),
        "no end event"
    );
    assert_eq!(registry_get(&c, "steady").await.unwrap()["state"], "live");
}

#[tokio::test]
async fn a_frozen_worker_is_replaced_and_on_waking_never_streams_the_session_again() {
    init_tracing();
    let nats = NatsServer::start().await;
    let _j = janitor(janitor::Config::for_tests(&nats.url(), "streams"));
    let frozen = Proc::spawn("worker", &worker_env(&nats.url(), "w-frozen"));
    let c = nats.client().await;
    let mut hb = subscribe(&c, "streams.v1.worker.*.heartbeat").await;
    heartbeat_from(&mut hb, "w-frozen").await;
    let body = format!(r#"{{"id":"icicle","on_worker_lost":"restart","source":{SMALL}}}"#);
    assert_eq!(
        ok(&raw_request(&c, "streams.v1.session.create", &body).await)["owner"],
        "w-frozen"
    );
    let mut cfg = worker::Config::for_tests(&nats.url());
    cfg.worker_id = Some("w-awake".into());
    let _awake = worker(cfg);
    heartbeat_from(&mut hb, "w-awake").await;

    frozen.signal("STOP");
    let stopped = Instant::now();
    wait_for(
        "the session to move to w-awake",
        Duration::from_secs(15),
        || async {
            let rec = registry_get(&c, "icicle").await?;
            (rec["owner"] == "w-awake" && rec["state"] == "live").then_some(())
        },
    )
    .await;
    eprintln!("moved {:?} after SIGSTOP", stopped.elapsed());
    frozen.signal("CONT");
    // Every heartbeat the woken worker sends shows the session suspended
    // (its lease ran out while it slept) until it learns it was given away
    // and drops it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = heartbeat_from(&mut hb, "w-frozen").await;
        let held = v["sessions"].as_array().unwrap();
        assert!(
            held.iter().all(|s| s["suspended"] == true),
            "after waking it never streams the session: {v}"
        );
        if held.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "w-frozen kept the session");
    }
    let rec = registry_get(&c, "icicle").await.unwrap();
    assert_eq!(rec["owner"], "w-awake");
    assert_eq!(rec["epoch"], 2);
}
