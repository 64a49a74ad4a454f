//! Workers on several hosts, simulated with network namespaces the tests
//! create (needs root): each worker process in a namespace of its own, with
//! its own address and one UDP port, reaching NATS over its link; NATS,
//! the janitor and the viewers in the root namespace, another "host".
//! Placement, forwarding and media across hosts, and a host cut off (its
//! link down) behaving as `reaping`'s partition test says.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_schema::{Bus, Role, SessionId, Subjects};
use serde_json::{json, Value};
use system_tests::viewer::{self, Interceptors};
use system_tests::*;

const SOURCE: &str = r#"{"kind":"synthetic","width":160,"height":120,"fps":20,"bitrate_kbps":200}"#;

fn ok(v: &Value) -> &Value {
    assert_eq!(v["ok"], json!(true), "expected success, got {v}");
    &v["result"]
}

/// A worker process on host `ns`: NATS through its link, one UDP port.
fn worker_on(nats: &NatsServer, ns: &Netns, id: &str) -> Proc {
    Proc::spawn_in(
        ns,
        "worker",
        &[
            ("NATS_URL", format!("nats://{}:{}", ns.gateway, nats.port)),
            ("WORKER_ID", id.into()),
            ("HEARTBEAT_INTERVAL", "250ms".into()),
            ("LEASE", "600ms".into()),
            ("REGISTRY_STORAGE", "memory".into()),
            ("UDP_PORT", "50000".into()),
        ],
    )
}

/// Joins `id` through the queue group (whichever worker receives the join
/// forwards it to the owner) and counts the video packets.
async fn watch(bus: &Bus, id: &str) -> (viewer::Viewer, Arc<AtomicU64>) {
    let id = SessionId::parse(id).expect("valid id");
    let (pending, pc) = viewer::start(bus, &id, Role::View, Interceptors::Default)
        .await
        .expect("join accepted");
    let packets = viewer::count_video(&pc);
    let v = pending.connect(bus, pc).await.expect("answer accepted");
    (v, packets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_forwarding_and_media_work_across_hosts() {
    init_tracing();
    let nats = NatsServer::start_on_all_interfaces().await;
    let _j = janitor(janitor::Config::for_tests(&nats.url(), "streams"));
    let (host_a, host_b) = (Netns::create(31), Netns::create(32));
    let _wa = worker_on(&nats, &host_a, "w-host-a");
    let _wb = worker_on(&nats, &host_b, "w-host-b");
    let c = nats.client().await;
    let mut hb = subscribe(&c, "streams.v1.worker.*.heartbeat").await;
    heartbeat_from(&mut hb, "w-host-a").await;
    heartbeat_from(&mut hb, "w-host-b").await;

    // Placement: the second session goes to the host the first did not.
    let mut owners = vec![];
    for id in ["across-1", "across-2"] {
        let body = format!(r#"{{"id":"{id}","source":{SOURCE}}}"#);
        let info = raw_request(&c, "streams.v1.session.create", &body).await;
        let owner = ok(&info)["owner"].as_str().unwrap().to_string();
        // Wait until every worker's view has the session's load.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = heartbeat_from(&mut hb, &owner).await;
            if v["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["id"] == id)
            {
                break;
            }
            assert!(Instant::now() < deadline, "{owner} never listed {id}");
        }
        for _ in 0..2 {
            heartbeat_from(&mut hb, &owner).await;
        }
        owners.push(owner);
    }
    owners.sort();
    assert_eq!(owners, ["w-host-a", "w-host-b"], "one session per host");

    // Forwarding: commands through the queue group reach the owner from
    // either host (20 each: the other host receives some and forwards).
    for id in ["across-1", "across-2"] {
        for _ in 0..20 {
            let r = raw_request(&c, &format!("streams.v1.session.{id}.stats"), "").await;
            ok(&r);
        }
    }

    // Media: three viewers per session, each offered the owner's address.
    let bus = Bus::new(c.clone(), Subjects::default()).with_timeout(Duration::from_secs(15));
    let mut viewers = vec![];
    for id in ["across-1", "across-2"] {
        let info = raw_request(&c, &format!("streams.v1.session.{id}.get"), "").await;
        let owner = ok(&info)["owner"].as_str().unwrap().to_string();
        let addr = if owner == "w-host-a" {
            host_a.addr.clone()
        } else {
            host_b.addr.clone()
        };
        for _ in 0..3 {
            let (v, packets) = watch(&bus, id).await;
            assert_eq!(v.worker.as_str(), owner);
            viewers.push((id, addr.clone(), v, packets));
        }
    }
    let t0 = Instant::now();
    for (id, addr, v, packets) in &viewers {
        wait_for(
            &format!("video of {id} from {addr}"),
            Duration::from_secs(30),
            || async { (packets.load(Ordering::Relaxed) >= 20).then_some(()) },
        )
        .await;
        let candidates = v.worker_candidates.lock().unwrap().clone();
        assert!(
            candidates.iter().all(|c| c.contains(addr.as_str())),
            "the worker offers its host's address {addr} alone: {candidates:?}"
        );
    }
    eprintln!(
        "6 viewers in the root namespace got video from workers in two namespaces ({:?})",
        t0.elapsed()
    );
    for (_, _, v, _) in &viewers {
        v.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_off_stops_by_itself_and_does_not_resume_after_healing() {
    init_tracing();
    let nats = NatsServer::start_on_all_interfaces().await;
    let _j = janitor(janitor::Config::for_tests(&nats.url(), "streams"));
    let (island, main) = (Netns::create(33), Netns::create(34));
    let _wi = worker_on(&nats, &island, "w-island-host");
    let c = nats.client().await;
    let mut hb = subscribe(&c, "streams.v1.worker.*.heartbeat").await;
    heartbeat_from(&mut hb, "w-island-host").await;
    let body = format!(r#"{{"id":"cut-off","on_worker_lost":"restart","source":{SOURCE}}}"#);
    let r = raw_request(&c, "streams.v1.worker.w-island-host.session.create", &body).await;
    assert_eq!(ok(&r)["owner"], "w-island-host");
    let _wm = worker_on(&nats, &main, "w-main-host");
    heartbeat_from(&mut hb, "w-main-host").await;
    let bus = Bus::new(c.clone(), Subjects::default()).with_timeout(Duration::from_secs(15));
    let (v, packets) = watch(&bus, "cut-off").await;
    wait_for("video from the island", Duration::from_secs(30), || async {
        (packets.load(Ordering::Relaxed) >= 20).then_some(())
    })
    .await;

    island.cut();
    let cut = Instant::now();
    let moved = wait_for(
        "the session to move to w-main-host",
        Duration::from_secs(15),
        || async {
            let rec = registry_get(&c, "cut-off").await?;
            (rec["owner"] == "w-main-host" && rec["state"] == "live").then_some(rec)
        },
    )
    .await;
    assert_eq!(moved["epoch"], 2);
    eprintln!("moved {:?} after the host's link went down", cut.elapsed());

    let healed_at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    island.heal();
    // Heartbeats sent while cut off arrive now (TCP retransmits them): one
    // from before the heal shows the session suspended.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < deadline,
            "no heartbeat from the cut-off host showing the session suspended"
        );
        let v = heartbeat_from(&mut hb, "w-island-host").await;
        let held = &v["sessions"];
        if v["sent_at"].as_str().unwrap() < healed_at.as_str()
            && held[0]["id"] == "cut-off"
            && held[0]["suspended"] == true
        {
            break;
        }
    }
    // Healed, it sees the session given away and drops it, never resuming.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = heartbeat_from(&mut hb, "w-island-host").await;
        let held = v["sessions"].as_array().unwrap();
        assert!(
            held.iter().all(|s| s["suspended"] == true),
            "the healed worker never resumes a session it lost: {v}"
        );
        if held.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "w-island-host kept the lost session"
        );
    }
    let rec = registry_get(&c, "cut-off").await.unwrap();
    assert_eq!(
        (rec["owner"].clone(), rec["epoch"].clone()),
        (json!("w-main-host"), json!(2))
    );
    v.close().await;
}
