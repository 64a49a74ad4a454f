//! A three-server NATS cluster (routes, JetStream on each, the registry
//! replicated three ways) under the system, with real `nats-server`
//! processes: one server killed while sessions stream and viewers watch, a
//! rolling restart of all three, and the loss of two (no quorum). Services
//! run in-process, each given every server's URL unless a test says
//! otherwise, with heartbeats every 250 ms, the default lease (2 s) and the
//! janitor's default `dead_after` (3 s): what is measured is the cluster's
//! failover, and 600 ms leases on this loaded 2-core machine expire from CPU
//! starvation alone (seen in both workers at once, on no fault). Viewers are
//! webrtc-rs peers joined over NATS.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_schema::{Bus, Role, SessionId, Subjects};
use futures::StreamExt;
use serde_json::{json, Value};
use system_tests::viewer::{self, Interceptors};
use system_tests::*;

/// 20 frames a second: a pause in media longer than a few frames shows.
const SOURCE: &str = r#"{"kind":"synthetic","width":160,"height":120,"fps":20,"bitrate_kbps":200}"#;
const BUCKET_STREAM: &str = "KV_streams_sessions";

fn ok(v: &Value) -> &Value {
    assert_eq!(v["ok"], json!(true), "expected success, got {v}");
    &v["result"]
}

fn worker_on(urls: &str, id: &str) -> Service {
    let mut cfg = worker::Config::for_tests(urls);
    cfg.worker_id = Some(id.into());
    cfg.lease = Duration::from_secs(2).into();
    cfg.registry_storage = worker::config::StorageKind::File;
    worker(cfg)
}

fn janitor_config(urls: &str) -> janitor::Config {
    let mut cfg = janitor::Config::for_tests(urls, "streams");
    cfg.dead_after = Duration::from_secs(3).into();
    cfg
}

/// A client of the test itself, given the servers `urls` (reconnects to
/// another when its server goes).
async fn client(urls: &str) -> async_nats::Client {
    bus_schema::connect::connect(urls, "cluster-test")
        .await
        .expect("test client connects")
}

/// Creates `id` on worker `w` (its own create subject: no placement).
async fn create_on(c: &async_nats::Client, w: &str, id: &str) {
    let body = format!(r#"{{"id":"{id}","source":{SOURCE}}}"#);
    let r = raw_request(c, &format!("streams.v1.worker.{w}.session.create"), &body).await;
    assert_eq!(ok(&r)["owner"], w, "{r}");
    assert_eq!(ok(&r)["state"], "live", "{r}");
}

/// Creates `id` through placement, retrying until it succeeds (a write to
/// the registry waits for its stream to have a leader); the time it took.
async fn create_until_it_succeeds(c: &async_nats::Client, id: &str) -> Duration {
    let t0 = Instant::now();
    let body = format!(r#"{{"id":"{id}","source":{SOURCE}}}"#);
    wait_for(
        &format!("a create of {id} to succeed"),
        Duration::from_secs(30),
        || async {
            let r = c
                .request("streams.v1.session.create".to_string(), body.clone().into())
                .await
                .ok()?;
            let v: Value = serde_json::from_slice(&r.payload).ok()?;
            (v["ok"] == json!(true)).then_some(())
        },
    )
    .await;
    t0.elapsed()
}

/// What a viewer received: video packets and the longest silence between
/// two of them since the last [`Media::mark`].
#[derive(Default)]
struct Media {
    packets: u64,
    last: Option<Instant>,
    max_gap: Duration,
}

type Shared = Arc<Mutex<Media>>;

fn lock(m: &Shared) -> std::sync::MutexGuard<'_, Media> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn mark(m: &Shared) {
    let mut m = lock(m);
    m.max_gap = Duration::ZERO;
}

/// The longest silence since the mark, counting the one still going on.
fn max_gap(m: &Shared) -> Duration {
    let m = lock(m);
    let ongoing = m.last.map(|l| l.elapsed()).unwrap_or_default();
    m.max_gap.max(ongoing)
}

fn packets(m: &Shared) -> u64 {
    lock(m).packets
}

async fn more_packets(m: &Shared, what: &str, more: u64) {
    let start = packets(m);
    wait_for(what, Duration::from_secs(20), || async {
        (packets(m) >= start + more).then_some(())
    })
    .await;
}

/// Joins `id` as a viewer and waits for its first video.
async fn watch(bus: &Bus, id: &str) -> (viewer::Viewer, Shared) {
    let id = SessionId::parse(id).expect("valid id");
    let (pending, pc) = viewer::start(bus, &id, Role::View, Interceptors::Default)
        .await
        .expect("join accepted");
    let media: Shared = Arc::default();
    let m = media.clone();
    viewer::on_tracks(&pc, move |track, video| {
        let m = m.clone();
        async move {
            while track.read_rtp().await.is_ok() {
                if video {
                    let now = Instant::now();
                    let mut m = lock(&m);
                    if let Some(last) = m.last {
                        m.max_gap = m.max_gap.max(now - last);
                    }
                    m.last = Some(now);
                    m.packets += 1;
                }
            }
        }
    });
    let v = pending.connect(bus, pc).await.expect("answer accepted");
    more_packets(&media, &format!("video of {id}"), 10).await;
    (v, media)
}

/// Reads heartbeats of `worker` until `n` of them were sent after `after`
/// (a wall-clock time of this machine, as `sent_at` is); panics if one
/// shows a session suspended (media held back for a lost lease).
async fn never_suspended(
    hb: &mut async_nats::Subscriber,
    worker: &str,
    after: std::time::SystemTime,
    n: usize,
) {
    let after = humantime::format_rfc3339_millis(after).to_string();
    let mut counted = 0;
    while counted < n {
        let v = heartbeat_from(hb, worker).await;
        for s in v["sessions"].as_array().expect("sessions") {
            assert_ne!(s["suspended"], json!(true), "{worker} suspended: {v}");
        }
        if v["sent_at"].as_str().expect("sent_at") > after.as_str() {
            counted += 1;
        }
    }
}

/// Of the first `n` heartbeats of `worker` sent after `after`, how many
/// show a session suspended.
async fn suspended_heartbeats(
    hb: &mut async_nats::Subscriber,
    worker: &str,
    after: std::time::SystemTime,
    n: usize,
) -> usize {
    let after = humantime::format_rfc3339_millis(after).to_string();
    let (mut counted, mut suspended) = (0, 0);
    while counted < n {
        let v = heartbeat_from(hb, worker).await;
        if v["sent_at"].as_str().expect("sent_at") > after.as_str() {
            counted += 1;
            let held = v["sessions"].as_array().expect("sessions");
            if held.iter().any(|s| s["suspended"] == json!(true)) {
                suspended += 1;
            }
        }
    }
    suspended
}

/// Writes to the registry every 50 ms through its own client (given every
/// server) until told to stop; returns the longest stretch during which
/// writes failed, and how many failed.
fn registry_writer(
    urls: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<(Duration, u32)> {
    use bus_schema::registry::{Registry, Storage};
    tokio::spawn(async move {
        let c = client(&urls).await;
        let js = async_nats::jetstream::new(c);
        let reg = Registry::open(&js, &Subjects::default(), Storage::File)
            .await
            .expect("registry");
        let (mut longest, mut failed, mut failing_since) = (Duration::ZERO, 0, None);
        for k in 0.. {
            if *stop.borrow() {
                break;
            }
            let rec = ghost_record(&format!("probe-{k}"), k, true, 0);
            let t = Instant::now();
            match tokio::time::timeout(Duration::from_secs(2), reg.create(&rec)).await {
                Ok(Ok(_)) => {
                    if let Some(since) = failing_since.take() {
                        longest = longest.max(t.duration_since(since));
                    }
                }
                _ => {
                    failed += 1;
                    failing_since.get_or_insert(t);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(since) = failing_since {
            longest = longest.max(since.elapsed());
        }
        (longest, failed)
    })
}

/// Every session in `ids` is live in the registry under epoch 1 (never
/// ended, never moved).
async fn all_live_at_epoch_1(c: &async_nats::Client, ids: &[&str]) {
    for id in ids {
        let rec = registry_get(c, id).await.expect("entry exists");
        assert_eq!(rec["state"], "live", "{id}: {rec}");
        assert_eq!(rec["epoch"], 1, "{id}: {rec}");
    }
}

async fn replicas(c: &async_nats::Client) -> usize {
    let js = async_nats::jetstream::new(c.clone());
    let mut s = js.get_stream(BUCKET_STREAM).await.expect("bucket stream");
    s.info().await.expect("stream info").config.num_replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_server_loses_nothing_and_media_goes_on() {
    init_tracing();
    let mut cluster = NatsCluster::start().await;
    eprintln!("nats-server {}", nats_server_version());
    let _j = janitor(janitor_config(&cluster.urls()));
    let _alpha = worker_on(&cluster.urls(), "w-alpha");
    let victim = wait_for("w-alpha's server", Duration::from_secs(15), || async {
        cluster.member_serving("w-alpha").await
    })
    .await;
    let others: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    // w-bravo is given the two other servers: its server survives.
    let _bravo = worker_on(&cluster.urls_of(&others), "w-bravo");
    let c = client(&cluster.urls_of(&others)).await;
    let mut hb = subscribe(&c, "streams.v1.worker.*.heartbeat").await;
    heartbeat_from(&mut hb, "w-alpha").await;
    heartbeat_from(&mut hb, "w-bravo").await;
    create_on(&c, "w-alpha", "on-alpha").await;
    create_on(&c, "w-bravo", "on-bravo").await;
    assert_eq!(replicas(&c).await, 3, "the registry has three copies");
    cluster.stream_current(others[0], BUCKET_STREAM, 3).await;
    // The victim also leads the registry's stream: its loss costs an
    // election before the next write.
    cluster
        .move_stream_leader(others[0], BUCKET_STREAM, victim)
        .await;
    let bus = Bus::new(c.clone(), Subjects::default()).with_timeout(Duration::from_secs(15));
    let (va, ma) = watch(&bus, "on-alpha").await;
    let (vb, mb) = watch(&bus, "on-bravo").await;
    let mut ended = subscribe(&c, "streams.v1.event.session.*.ended").await;

    mark(&ma);
    mark(&mb);
    cluster.servers[victim].kill();
    let (killed, killed_at) = (Instant::now(), std::time::SystemTime::now());
    let moved_to = wait_for(
        "w-alpha to reconnect to another server",
        Duration::from_secs(15),
        || async { cluster.member_serving("w-alpha").await },
    )
    .await;
    let reconnected = killed.elapsed();
    assert_ne!(moved_to, victim);
    // A write to the registry: a create, retried while the bucket's stream
    // may elect a new leader.
    let write = create_until_it_succeeds(&c, "after-kill").await;
    let leader = cluster.stream_leader(others[0], BUCKET_STREAM).await;
    assert!(
        leader.is_some_and(|l| l != victim),
        "a new leader: {leader:?}"
    );
    // Three seconds of heartbeats since the kill: w-bravo never suspends.
    never_suspended(&mut hb, "w-bravo", killed_at, 12).await;
    more_packets(&ma, "w-alpha's viewer to get video again", 20).await;
    more_packets(&mb, "w-bravo's viewer to keep getting video", 20).await;
    let (gap_a, gap_b) = (max_gap(&ma), max_gap(&mb));
    eprintln!(
        "kill -9 of n{} (w-alpha's server and the registry's leader): w-alpha reconnected to n{} within {reconnected:?}; a create succeeded \
         {write:?} after the kill; longest video gap: w-alpha's viewer {gap_a:?}, w-bravo's \
         {gap_b:?} (12 heartbeats of w-bravo, none suspended)",
        victim + 1,
        moved_to + 1
    );
    assert!(
        gap_b < Duration::from_millis(500),
        "media on the surviving server's worker paused {gap_b:?}"
    );
    // The viewers are still on their first peer connections, and nothing ended.
    for v in [&va, &vb] {
        assert_eq!(
            v.pc.connection_state(),
            webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState::Connected
        );
    }
    assert!(
        futures::FutureExt::now_or_never(ended.next()).is_none(),
        "a session ended"
    );
    all_live_at_epoch_1(&c, &["on-alpha", "on-bravo", "after-kill"]).await;

    // The killed server comes back and catches up: three current copies.
    cluster.servers[victim].start_again().await;
    let back = Instant::now();
    cluster.stream_current(others[0], BUCKET_STREAM, 3).await;
    eprintln!(
        "n{} back: the registry has three current copies {:?} after its start",
        victim + 1,
        back.elapsed()
    );
    va.close().await;
    vb.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_all_three_servers_ends_no_session() {
    init_tracing();
    let mut cluster = NatsCluster::start().await;
    let urls = cluster.urls();
    let _j = janitor(janitor_config(&urls));
    let _w1 = worker_on(&urls, "w-one");
    let _w2 = worker_on(&urls, "w-two");
    let c = client(&urls).await;
    let mut hb = subscribe(&c, "streams.v1.worker.*.heartbeat").await;
    heartbeat_from(&mut hb, "w-one").await;
    heartbeat_from(&mut hb, "w-two").await;
    create_on(&c, "w-one", "roll-one").await;
    create_on(&c, "w-two", "roll-two").await;
    let bus = Bus::new(c.clone(), Subjects::default()).with_timeout(Duration::from_secs(15));
    let (v1, m1) = watch(&bus, "roll-one").await;
    let (v2, m2) = watch(&bus, "roll-two").await;
    mark(&m1);
    mark(&m2);
    let (stop_writer, stopped) = tokio::sync::watch::channel(false);
    let writer = registry_writer(urls.clone(), stopped);
    let t0 = Instant::now();
    let mut created = vec![];
    for i in 0..3 {
        let step = Instant::now();
        // SIGTERM, as an upgrade stops a server: it closes its clients'
        // connections and they reconnect to the others at once.
        cluster.servers[i].stop().await;
        cluster.servers[i].start_again().await;
        cluster.jetstream_answers(i).await;
        cluster.stream_current(i, BUCKET_STREAM, 3).await;
        let id = format!("rolled-{i}");
        let write = create_until_it_succeeds(&c, &id).await;
        created.push(id);
        more_packets(&m1, "roll-one's viewer to get video", 10).await;
        more_packets(&m2, "roll-two's viewer to get video", 10).await;
        eprintln!(
            "n{} restarted and caught up in {:?}; a create then took {write:?}",
            i + 1,
            step.elapsed()
        );
    }
    let (gap1, gap2) = (max_gap(&m1), max_gap(&m2));
    let _ = stop_writer.send(true);
    let (outage, failed) = writer.await.expect("writer");
    eprintln!(
        "rolling restart of 3 servers in {:?}; longest video gap {gap1:?} / {gap2:?}; registry \
         writes every 50 ms: {failed} failed, the longest stretch without one {outage:?}",
        t0.elapsed()
    );
    let mut ids = vec!["roll-one", "roll-two"];
    ids.extend(created.iter().map(String::as_str));
    all_live_at_epoch_1(&c, &ids).await;
    for v in [&v1, &v2] {
        assert_eq!(
            v.pc.connection_state(),
            webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState::Connected,
            "the viewer kept its peer connection"
        );
    }
    // Heartbeats queued during the restarts may show a lease that lapsed
    // under load for a moment; the session must be streaming again after.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = heartbeat_from(&mut hb, "w-one").await;
        let streaming = v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == "roll-one" && s["suspended"] != json!(true));
        if streaming {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "w-one still lists roll-one suspended 10 s after the restarts: {v}"
        );
    }
    assert_eq!(replicas(&c).await, 3);
    v1.close().await;
    v2.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_two_servers_refuses_registry_writes_streams_on_and_recovers_with_quorum() {
    init_tracing();
    let mut cluster = NatsCluster::start().await;
    let urls = cluster.urls();
    let _j = janitor(janitor_config(&urls));
    let _w = worker_on(&urls, "w-lone");
    let c = client(&cluster.urls_of(&[0])).await;
    let mut hb = subscribe(&c, "streams.v1.worker.*.heartbeat").await;
    heartbeat_from(&mut hb, "w-lone").await;
    create_on(&c, "w-lone", "keeps").await;
    create_on(&c, "w-lone", "stopped-meanwhile").await;
    let bus = Bus::new(c.clone(), Subjects::default()).with_timeout(Duration::from_secs(15));
    let (v, media) = watch(&bus, "keeps").await;
    cluster.stream_current(0, BUCKET_STREAM, 3).await;

    mark(&media);
    cluster.servers[1].kill();
    cluster.servers[2].kill();
    let (lost, lost_at) = (Instant::now(), std::time::SystemTime::now());
    wait_for(
        "w-lone on the surviving server",
        Duration::from_secs(15),
        || async { (cluster.member_serving("w-lone").await == Some(0)).then_some(()) },
    )
    .await;
    // A create needs a registry write: refused.
    let body = format!(r#"{{"id":"refused","source":{SOURCE}}}"#);
    let t = Instant::now();
    let r = c
        .send_request(
            "streams.v1.session.create",
            async_nats::Request::new()
                .payload(body.into())
                .timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("the create is answered");
    let refused_in = t.elapsed();
    let r: Value = serde_json::from_slice(&r.payload).expect("JSON");
    assert_eq!(r["ok"], json!(false), "a create without quorum: {r}");
    eprintln!("create without quorum answered in {refused_in:?}: {r}");
    assert_eq!(r["error"]["code"], "unavailable", "{r}");
    // A stop cannot write `ended`: its answer waits for the registry.
    let stopper = c.clone();
    let stop = tokio::spawn(async move {
        let asked = Instant::now();
        let r = stopper
            .send_request(
                "streams.v1.session.stopped-meanwhile.stop",
                async_nats::Request::new().timeout(Some(Duration::from_secs(60))),
            )
            .await
            .expect("the stop is answered");
        let v: Value = serde_json::from_slice(&r.payload).expect("JSON");
        (v, Instant::now(), asked.elapsed())
    });
    // Core NATS still carries heartbeats: the lease holds, media goes on.
    let suspended = suspended_heartbeats(&mut hb, "w-lone", lost_at, 12).await;
    more_packets(&media, "the viewer to keep getting video", 20).await;
    let keepalive = raw_request(&c, "streams.v1.session.keeps.keepalive", "").await;
    eprintln!(
        "without quorum for {:?}: {suspended} of 12 heartbeats suspended; longest video gap \
         {:?}; keepalive: ok={}",
        lost.elapsed(),
        max_gap(&media),
        keepalive["ok"]
    );

    // One server back: a quorum of two, writes succeed again.
    eprintln!(
        "before the quorum is back the stop is {}answered",
        if stop.is_finished() { "" } else { "not yet " }
    );
    let restarting = Instant::now();
    cluster.servers[1].start_again().await;
    let back = Instant::now();
    let write = create_until_it_succeeds(&c, "after-quorum").await;
    eprintln!(
        "quorum back: a create succeeded {write:?} after the second server's start ({:?})",
        back.elapsed()
    );
    all_live_at_epoch_1(&c, &["keeps", "after-quorum"]).await;
    let (stopped, answered_at, waited) = stop.await.expect("stop task");
    eprintln!(
        "the stop asked without quorum was answered {waited:?} later ({:?} after the second \
         server was started): {stopped}",
        answered_at.checked_duration_since(restarting)
    );
    // The worker stopped it whatever the registry said: no heartbeat lists it.
    let gone = Instant::now();
    let deadline = gone + Duration::from_secs(10);
    loop {
        let hb = heartbeat_from(&mut hb, "w-lone").await;
        let held = hb["sessions"].as_array().expect("sessions");
        if !held.iter().any(|s| s["id"] == "stopped-meanwhile") {
            break;
        }
        assert!(Instant::now() < deadline, "the worker still runs it: {hb}");
    }
    // What the registry says of it, for the record (docs/reliability.md):
    // `stopped` when one of the worker's five writes got through, else
    // `live` until the janitor sees the owner not reporting it and ends it
    // `worker_lost`, once the janitor can list the registry again.
    let t = Instant::now();
    let mut rec = registry_get(&c, "stopped-meanwhile").await.expect("entry");
    while rec["state"] != "ended" && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rec = registry_get(&c, "stopped-meanwhile").await.expect("entry");
    }
    eprintln!(
        "its entry: {} {} ({:?} after the second server was started)",
        rec["state"],
        rec["ended"],
        restarting.elapsed()
    );
    more_packets(&media, "the viewer to keep getting video", 20).await;
    assert_eq!(
        v.pc.connection_state(),
        webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState::Connected
    );
    cluster.servers[2].start_again().await;
    cluster.stream_current(0, BUCKET_STREAM, 3).await;
    v.close().await;
}

/// Why `Registry::open` creates the bucket's stream itself instead of
/// calling async-nats's `create_key_value`: the standard path reads account
/// info first, in a shape Debian's 2.9 does not send. It works on current
/// servers; the workaround stays while 2.9 is supported (docs/deploy.md).
#[tokio::test]
async fn the_standard_kv_creation_path_fails_on_2_9_only() {
    init_tracing();
    let nats = NatsServer::start().await;
    let version = nats_server_version();
    let js = async_nats::jetstream::new(nats.client().await);
    let created = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "probe".into(),
            ..Default::default()
        })
        .await;
    eprintln!(
        "nats-server {version}: create_key_value → {:?}",
        created.as_ref().err()
    );
    assert_eq!(created.is_ok(), !version.starts_with("v2.9."), "{version}");
}
