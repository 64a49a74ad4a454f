//! Load and leaks, against the real binaries (`worker`, `api`) as child
//! processes on a real nats-server:
//!
//! - 400 sessions' worth of create / join / stop churn through NATS: every
//!   request answered; afterwards the worker's open file descriptors,
//!   threads, live tokio tasks and resident memory are back to baseline.
//! - 500 concurrent viewer WebSockets against one api (signalling only):
//!   each gets its `joined` or a clear error; after they close, the api's
//!   tasks, descriptors and memory are back to baseline and the worker holds
//!   no viewer.
//!
//! Baselines are taken after a warm-up round, so what is allocated once
//! (connection pools, the runtime's worker threads, the allocator's arenas)
//! is in the baseline. The figures are printed (`--nocapture`).
//! `LOAD_SESSIONS` and `LOAD_VIEWERS` change the sizes.

use std::time::{Duration, Instant, SystemTime};

use bus_schema::{Role, SessionId};
use futures::StreamExt;
use serde_json::{json, Value};
use system_tests::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const TINY: &str = r#"{"kind":"synthetic","width":64,"height":64,"fps":5,"bitrate_kbps":50}"#;

/// Resident memory is compared with the high-water mark of a warm-up round
/// of the same size, plus this: glibc's malloc keeps freed pages in its
/// arenas (whether it trims them back is luck), so RSS after a burst stays
/// near the burst's peak without any leak; a leak instead grows past that
/// peak with every round. What one session or viewer holds (a peer
/// connection, an encoder: 100 KiB to 1 MiB) times 400 or 500 is far over
/// the slack.
const RSS_SLACK_KIB: u64 = 32 * 1024;
/// Descriptors and threads may differ by this much: the tokio blocking
/// pool and the NATS client come and go on their own schedule.
const FD_SLACK: u64 = 4;
const THREAD_SLACK: u64 = 4;
/// Tokio tasks: periodic jobs (heartbeats, sweeps, the NATS client's
/// flushes) may be mid-flight when counted.
const TASK_SLACK: u64 = 4;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What `/proc` says about a process.
#[derive(Debug, Clone, Copy)]
struct ProcStats {
    fds: u64,
    threads: u64,
    rss_kib: u64,
}

fn proc_stats(pid: u32) -> ProcStats {
    let count = |dir: String| {
        std::fs::read_dir(&dir)
            .map(|d| d.count() as u64)
            .unwrap_or(0)
    };
    ProcStats {
        fds: count(format!("/proc/{pid}/fd")),
        threads: count(format!("/proc/{pid}/task")),
        rss_kib: status_kib(pid, "VmRSS:"),
    }
}

/// A `… kB` line of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`), in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// What a process's descriptors point at, for a failure message.
fn fd_targets(pid: u32) -> String {
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    if let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in d.flatten() {
            let t = std::fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let kind = t.split(':').next().unwrap_or("").to_string();
            *kinds.entry(kind).or_default() += 1;
        }
    }
    let udp = std::fs::read_to_string(format!("/proc/{pid}/net/udp"))
        .map(|t| t.lines().count().saturating_sub(1))
        .unwrap_or(0);
    format!("descriptors by kind {kinds:?}; UDP sockets in its namespace {udp}")
}

fn worker_env(
    nats_url: &str,
    id: &str,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("NATS_URL", nats_url.to_string()),
        ("WORKER_ID", id.to_string()),
        ("REGISTRY_STORAGE", "memory".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    env
}

async fn ready(c: &async_nats::Client) {
    worker_answers(c).await
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Waits until `measure` is within the slack of the baseline on every count.
async fn back_to_baseline<F, Fut>(
    diagnose: impl Fn() -> String,
    what: &str,
    baseline: ProcStats,
    tasks0: u64,
    measure: F,
) -> (ProcStats, u64)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = (ProcStats, u64)>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (now, tasks) = measure().await;
        let ok = now.fds <= baseline.fds + FD_SLACK
            && now.threads <= baseline.threads + THREAD_SLACK
            && now.rss_kib <= baseline.rss_kib + RSS_SLACK_KIB
            && tasks <= tasks0 + TASK_SLACK;
        if ok {
            return (now, tasks);
        }
        assert!(
            Instant::now() < deadline,
            "{what} not back to baseline within 60 s: baseline {baseline:?} tasks {tasks0}, now {now:?} tasks {tasks}; {}",
            diagnose()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One session's life: create, a viewer joins (the worker builds a peer
/// connection and offers), stop. Returns the three latencies.
async fn churn_one(c: async_nats::Client, id: String, join: bool) -> Result<[Duration; 3], String> {
    let req = |subject: String, body: String| {
        let c = c.clone();
        async move {
            let t = Instant::now();
            let r = tokio::time::timeout(
                Duration::from_secs(30),
                c.request(subject.clone(), body.into()),
            )
            .await
            .map_err(|_| format!("{subject}: no answer in 30 s"))?
            .map_err(|e| format!("{subject}: {e}"))?;
            let v: Value = serde_json::from_slice(&r.payload).map_err(|e| e.to_string())?;
            if v["ok"] != json!(true) {
                return Err(format!("{subject}: {v}"));
            }
            Ok::<_, String>(t.elapsed())
        }
    };
    let create = req(
        "streams.v1.session.create".into(),
        format!(r#"{{"id":"{id}","source":{TINY}}}"#),
    )
    .await?;
    let join = if join {
        req(
            format!("streams.v1.session.{id}.join"),
            format!(r#"{{"peer":"p-{id}"}}"#),
        )
        .await?
    } else {
        Duration::ZERO
    };
    let stop = req(format!("streams.v1.session.{id}.stop"), "".into()).await?;
    Ok([create, join, stop])
}

async fn churn(
    c: &async_nats::Client,
    prefix: &str,
    n: usize,
    parallel: usize,
    join: bool,
) -> Vec<[Duration; 3]> {
    let results: Vec<_> =
        futures::stream::iter((0..n).map(|i| churn_one(c.clone(), format!("{prefix}-{i}"), join)))
            .buffer_unordered(parallel)
            .collect()
            .await;
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {n} sessions failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    results.into_iter().map(Result::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_churn_answers_every_request_and_leaks_nothing() {
    churn_test(false).await;
}

/// The same churn with one viewer joining each session (the worker builds a
/// peer connection and its offer; the viewer never connects) before the
/// stop closes it. This found peer connections closed mid-gathering leaving
/// their sockets and tasks behind (8 of 200 in about half the runs), fixed
/// in `rtc::Viewer::close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_churn_with_a_viewer_each_leaks_nothing() {
    churn_test(true).await;
}

async fn churn_test(join: bool) {
    init_tracing();
    let n = env_usize("LOAD_SESSIONS", 400);
    let nats = NatsServer::start().await;
    let w = Proc::spawn(
        "worker",
        &worker_env(&nats.url(), "w-churn", &[("WORKER_CAPACITY", "16")]),
    );
    let pid = w.child.id();
    let c = nats.client().await;
    ready(&c).await;
    let tasks = |v: &Value| v["alive_tasks"].as_u64().expect("alive_tasks");

    // Warm-up: a full round, so what is allocated once (and the allocator's
    // high-water mark for this concurrency) is in the baseline. A leak then
    // shows as growth in the measured round.
    churn(&c, "warm", n, 8, join).await;
    // The round's high-water mark is the process's peak RSS (`VmHWM`), not
    // a reading after it: by then its sessions are stopped, and glibc may
    // have trimmed what they freed (one CI run read 20 MB here, then 58 MB,
    // the usual level, after the measured round).
    let warm_peak = ProcStats {
        rss_kib: status_kib(pid, "VmHWM:"),
        ..proc_stats(pid)
    };
    let measure = || async {
        let d = worker_stats(&c).await;
        assert_eq!(d["sessions"], 0, "{d}");
        (proc_stats(pid), tasks(&d))
    };
    // The baseline: the lowest of a few readings.
    let (base, tasks0) = {
        let mut b = measure().await;
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let (s, t) = measure().await;
            b.0.fds = b.0.fds.min(s.fds);
            b.0.threads = b.0.threads.min(s.threads);
            b.0.rss_kib = b.0.rss_kib.min(s.rss_kib);
            b.1 = b.1.min(t);
        }
        b
    };

    let idle_rss = base.rss_kib;
    let base = ProcStats {
        rss_kib: base.rss_kib.max(warm_peak.rss_kib),
        ..base
    };
    let started = Instant::now();
    let lat = churn(&c, "churn", n, 8, join).await;
    let took = started.elapsed();
    let peak = proc_stats(pid);
    let (after, tasks1) = back_to_baseline(
        || fd_targets(pid),
        "the worker after churn",
        base,
        tasks0,
        measure,
    )
    .await;

    for (i, what) in ["create", "join", "stop"].iter().enumerate() {
        if *what == "join" && !join {
            continue;
        }
        let mut v: Vec<Duration> = lat.iter().map(|l| l[i]).collect();
        v.sort();
        eprintln!(
            "churn {what}: {n} requests, {n} answered ok, p50 {:.1?} p99 {:.1?} max {:.1?}",
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            v[v.len() - 1]
        );
    }
    eprintln!(
        "churn: {n} sessions ({}; 8 at a time) in {took:.1?}, {:.0} sessions/s",
        if join {
            "create, join, stop"
        } else {
            "create, stop"
        },
        n as f64 / took.as_secs_f64()
    );
    eprintln!(
        "worker leak check: fds {} -> {}, threads {} -> {}, tokio tasks {tasks0} -> {tasks1}, RSS idle {idle_rss} KiB, after the warm-up round {} KiB, after the measured round {} KiB (just after it {} KiB)",
        base.fds, after.fds, base.threads, after.threads, warm_peak.rss_kib, after.rss_kib, peak.rss_kib
    );
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a viewer WebSocket and waits for its first message: `joined`, or
/// an error. Returns the socket, the first message and the latency.
async fn open_viewer(url: String) -> Result<(Ws, Value, Duration), String> {
    let t = Instant::now();
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .map_err(|_| "no first message in 30 s".to_string())?;
        match m {
            Some(Ok(WsMessage::Text(text))) => {
                let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
                return Ok((ws, v, t.elapsed()));
            }
            Some(Ok(_)) => continue,
            other => return Err(format!("closed before an answer: {other:?}")),
        }
    }
}

async fn api_metrics(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

fn metric(text: &str, name: &str) -> u64 {
    api::metrics::parse(text, name).unwrap_or_else(|| panic!("{name} in {text}")) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_viewer_websockets_are_all_answered_and_leave_nothing_behind() {
    init_tracing();
    let viewers = env_usize("LOAD_VIEWERS", 500);
    // Ten sessions of up to 50 viewers: one worker builds a peer connection
    // (and its offer) per join; MAX_VIEWERS is per session.
    const SESSIONS: usize = 10;
    let per_session = viewers.div_ceil(SESSIONS);
    let nats = NatsServer::start().await;
    let max_viewers = per_session.to_string();
    let _w = Proc::spawn(
        "worker",
        &worker_env(
            &nats.url(),
            "w-ws",
            &[("WORKER_CAPACITY", "16"), ("MAX_VIEWERS", &max_viewers)],
        ),
    );
    let port = free_port();
    let secret = "load-test-secret";
    let a = api_process_on(
        port,
        &[
            ("NATS_URL", nats.url()),
            ("JOIN_TOKEN_SECRET", secret.into()),
        ],
    )
    .await;
    let api_pid = a.child.id();
    let base = format!("http://127.0.0.1:{port}");
    let c = nats.client().await;
    ready(&c).await;
    let http = reqwest::Client::new();
    for s in 0..SESSIONS {
        let body = format!(r#"{{"id":"ws-{s}","source":{TINY}}}"#);
        let r = raw_request(&c, "streams.v1.session.create", &body).await;
        assert_eq!(r["ok"], json!(true), "{r}");
    }
    let signer = api::token::Signer::new(secret);
    let ws_base = base.replace("http://", "ws://");
    let url = |i: usize| {
        let id = SessionId::parse(format!("ws-{}", i % SESSIONS)).unwrap();
        let token = signer.mint(&id, Role::View, Duration::from_secs(600), SystemTime::now());
        format!("{ws_base}/api/sessions/{id}/ws?token={token}")
    };
    let total_viewers = || async {
        let mut n = 0;
        for s in 0..SESSIONS {
            let r = raw_request(&c, &format!("streams.v1.session.ws-{s}.stats"), "").await;
            n += r["result"]["viewers"].as_array().unwrap().len();
        }
        n
    };

    // Warm-up: a full round, so what is allocated once (and the
    // allocator's high-water mark) is in the baseline; a leak then shows as
    // growth in the measured round.
    let round = |tag: &'static str| {
        let url = &url;
        async move {
            let started = Instant::now();
            let results: Vec<_> = futures::stream::iter((0..viewers).map(|i| open_viewer(url(i))))
                .buffer_unordered(64)
                .collect()
                .await;
            let took = started.elapsed();
            let mut sockets = Vec::new();
            let mut lat = Vec::new();
            let mut errors = std::collections::BTreeMap::<String, usize>::new();
            for r in results {
                let (ws, first, t) =
                    r.unwrap_or_else(|e| panic!("{tag}: a viewer got no answer: {e}"));
                match first["type"].as_str() {
                    Some("joined") => {
                        lat.push(t);
                        sockets.push(ws);
                    }
                    Some("error") => {
                        *errors
                            .entry(first["code"].as_str().unwrap_or("?").to_string())
                            .or_default() += 1;
                    }
                    _ => panic!("{tag}: unexpected first message {first}"),
                }
            }
            lat.sort();
            (sockets, lat, errors, took)
        }
    };
    let (mut warm, _, errors, _) = round("warm-up").await;
    assert!(errors.is_empty(), "warm-up: {errors:?}");
    // The api's high-water mark with every viewer open: freed memory that
    // the allocator keeps lies under it; a leak grows past it round after round.
    let warm_peak = proc_stats(api_pid);
    futures::future::join_all(warm.iter_mut().map(|ws| ws.close(None))).await;
    drop(warm);
    wait_for(
        "the warm-up viewers to leave",
        Duration::from_secs(60),
        || async { (total_viewers().await == 0).then_some(()) },
    )
    .await;
    let measure = || async {
        let m = api_metrics(&http, &base).await;
        (
            proc_stats(api_pid),
            metric(&m, "api_tokio_alive_tasks"),
            metric(&m, "api_viewer_websockets"),
        )
    };
    let baseline = wait_for(
        "no open WebSocket on the api",
        Duration::from_secs(30),
        || async {
            let (s, t, open) = measure().await;
            (open == 0).then_some((s, t))
        },
    )
    .await;
    let (idle_stats, base_tasks) = baseline;
    let base_stats = ProcStats {
        rss_kib: idle_stats.rss_kib.max(warm_peak.rss_kib),
        ..idle_stats
    };

    // The measured round: every viewer opens at once (64 connecting at a time).
    let (mut sockets, lat, errors, open_took) = round("load").await;
    let (peak, peak_tasks, open) = measure().await;
    let worker_viewers = total_viewers().await;
    eprintln!(
        "websockets: {viewers} opened (64 connecting at a time) in {open_took:.1?}: {} joined, errors {errors:?}; join latency p50 {:.0?} p99 {:.0?} max {:.0?}",
        sockets.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or_default()
    );
    eprintln!(
        "api with {open} open: fds {}, threads {}, tokio tasks {peak_tasks}, RSS {} KiB; worker holds {worker_viewers} viewers",
        peak.fds, peak.threads, peak.rss_kib
    );
    assert!(errors.is_empty(), "every viewer joins: {errors:?}");
    assert_eq!(sockets.len(), viewers);
    assert_eq!(open as usize, viewers);
    assert_eq!(worker_viewers, viewers);

    // Everyone leaves.
    futures::future::join_all(sockets.iter_mut().map(|ws| ws.close(None))).await;
    drop(sockets);
    wait_for(
        "the worker to hold no viewer",
        Duration::from_secs(60),
        || async { (total_viewers().await == 0).then_some(()) },
    )
    .await;
    let (after, after_tasks) = back_to_baseline(
        || fd_targets(api_pid),
        "the api after the viewers left",
        base_stats,
        base_tasks,
        || async {
            let (s, t, open) = measure().await;
            assert!(open <= viewers as u64);
            (s, if open == 0 { t } else { u64::MAX / 2 })
        },
    )
    .await;
    eprintln!(
        "api leak check: fds {} -> {}, threads {} -> {}, tokio tasks {base_tasks} -> {after_tasks}, RSS idle {} KiB, with {viewers} open in the warm-up round {} KiB, after the measured round {} KiB",
        base_stats.fds, after.fds, base_stats.threads, after.threads, idle_stats.rss_kib, warm_peak.rss_kib, after.rss_kib
    );
}
