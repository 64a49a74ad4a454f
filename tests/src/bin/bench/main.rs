//! Benchmarks of the running system against a real `nats-server`:
//! create latency, create/stop throughput, janitor detection after
//! `kill -9`, source CPU per session, viewer fan-out cost, and (section 6)
//! our worker side by side with Janus's streaming plugin fed the same RTP
//! stream (`compare.rs`).
//!
//! ```text
//! cargo build --release -p system-tests --bin bench -p worker --bin worker
//! cargo run --release -p system-tests --bin bench -- [--quick] [--only 1,3]
//! ```
//!
//! Prints a table and writes it to `target/bench/report.md` and
//! `target/bench/report.json`. Worker processes are the `worker` binary next
//! to this executable (so the release one under `--release`); their stderr,
//! and Janus's log, go to `target/bench/logs/`.

mod compare;
mod egress;
mod gro_mux;
mod janus;
mod load;
mod producer;
mod through_api;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bus_schema::registry::{Registry, Storage};
use bus_schema::{
    Bus, CreateSession, GetStats, Heartbeat, ListCursor, ListSessions, OnWorkerLost, Role,
    SessionEvent, SessionEventKind, SessionId, SessionState, SourceSpec, StopSession, Subjects,
};
use futures::StreamExt;
use serde_json::{json, Value};
use system_tests::viewer::{self, Interceptors};
use system_tests::{NatsServer, Proc};

// ------------------------------------------------------------------ plan

/// How much of each measurement to do.
#[derive(Debug, Clone)]
struct Plan {
    quick: bool,
    /// Section 6: run our worker with a UDP port per peer (webrtc-rs's
    /// default) instead of one batched UDP port (`UDP_PORT`).
    per_peer_ports: bool,
    /// Section 6: the load client's viewers read with plain sockets, one
    /// datagram per read, instead of taking UDP receive offload
    /// (`gro_mux.rs`), so that each GSO run a relay sends over loopback is
    /// delivered, and billed to the relay, datagram by datagram.
    plain_receivers: bool,
    only: Option<BTreeSet<u32>>,
    /// Extra time the largest viewer count is held while RSS is sampled.
    hold: Duration,
    creates_small: usize,
    creates_hd: usize,
    /// Section 1: sessions in the registry for the `session.list` rows.
    list_sessions: usize,
    throughput_clients: usize,
    throughput_window: Duration,
    reap_reps: usize,
    cpu_window: Duration,
    warmup: Duration,
    /// Section 6: viewer counts per relay, and the measuring window.
    relay_viewers: Vec<usize>,
    /// Section 6: only the stream whose label starts with this
    /// (`--stream 1080p60`).
    relay_stream: Option<String>,
    relay_window: Duration,
    /// Section 6: the window that captures relay egress times (after the
    /// CPU window, since capturing costs the senders). One frame in 30 or
    /// 60 is an IDR, many packets long, and those frames make the p99:
    /// 10 s hold 10 of them at 720p30 (3 s held 3, and one slow IDR moved
    /// the p99 by milliseconds).
    egress_window: Duration,
    /// Section 7: viewers that join one after another.
    api_viewers: usize,
    /// Section 7: viewers joining at once (whole joins; twice as many for
    /// signalling only), and for how long.
    join_concurrency: usize,
    join_window: Duration,
}

impl Plan {
    fn new(quick: bool, only: Option<BTreeSet<u32>>, hold: Duration) -> Self {
        if quick {
            Self {
                quick,
                per_peer_ports: false,
                plain_receivers: false,
                only,
                hold,
                creates_small: 15,
                creates_hd: 5,
                list_sessions: 300,
                throughput_clients: 8,
                throughput_window: Duration::from_secs(4),
                reap_reps: 2,
                cpu_window: Duration::from_secs(3),
                warmup: Duration::from_millis(1500),
                relay_viewers: vec![1, 5],
                relay_stream: None,
                relay_window: Duration::from_secs(3),
                egress_window: Duration::from_secs(1),
                api_viewers: 5,
                join_concurrency: 4,
                join_window: Duration::from_secs(3),
            }
        } else {
            Self {
                quick,
                per_peer_ports: false,
                plain_receivers: false,
                only,
                hold,
                creates_small: 50,
                creates_hd: 20,
                list_sessions: 3000,
                throughput_clients: 8,
                throughput_window: Duration::from_secs(10),
                reap_reps: 5,
                cpu_window: Duration::from_secs(10),
                warmup: Duration::from_secs(2),
                relay_viewers: vec![1, 10, 50, 100],
                relay_stream: None,
                relay_window: Duration::from_secs(8),
                egress_window: Duration::from_secs(10),
                api_viewers: 20,
                join_concurrency: 8,
                join_window: Duration::from_secs(10),
            }
        }
    }

    fn runs(&self, section: u32) -> bool {
        self.only.as_ref().is_none_or(|s| s.contains(&section))
    }
}

fn synthetic(width: u32, height: u32, fps: u32, bitrate_kbps: u32) -> SourceSpec {
    SourceSpec::Synthetic {
        width,
        height,
        fps,
        bitrate_kbps,
    }
}

fn small_source() -> SourceSpec {
    synthetic(320, 240, 15, 300)
}
fn hd_source() -> SourceSpec {
    synthetic(1280, 720, 30, 2500)
}
fn sd_source() -> SourceSpec {
    synthetic(640, 360, 30, 1000)
}
fn tiny_source() -> SourceSpec {
    synthetic(160, 120, 10, 200)
}

// ------------------------------------------------------------------ report

/// One line of the table, with its raw numbers for the JSON.
struct Row {
    id: String,
    measurement: String,
    result: String,
    method: String,
    data: Value,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
    /// Extra markdown sections (title, body) printed after the table.
    tables: Vec<(String, String)>,
}

impl Report {
    fn row(&mut self, id: &str, measurement: &str, result: String, method: &str, data: Value) {
        eprintln!("  [{id}] {measurement}: {result}");
        self.rows.push(Row {
            id: id.into(),
            measurement: measurement.into(),
            result,
            method: method.into(),
            data,
        });
    }

    fn note(&mut self, note: String) {
        eprintln!("  note: {note}");
        self.notes.push(note);
    }

    fn table(&mut self, title: &str, markdown: String) {
        self.tables.push((title.into(), markdown));
    }

    fn markdown(&self, machine: &Machine, command: &str) -> String {
        let mut s = String::new();
        s.push_str(&format!("Command: `{command}`\n\n"));
        s.push_str(&machine.markdown());
        s.push_str("\n| # | Measurement | Result | Method |\n|---|---|---|---|\n");
        let mut rows: Vec<&Row> = self.rows.iter().collect();
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        for r in rows {
            s.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                r.id,
                r.measurement,
                r.result.replace('|', "/"),
                r.method.replace('|', "/")
            ));
        }
        for (title, body) in &self.tables {
            s.push_str(&format!("\n### {title}\n\n{body}"));
        }
        if !self.notes.is_empty() {
            s.push_str("\nNotes from the run:\n\n");
            for n in &self.notes {
                s.push_str(&format!("- {n}\n"));
            }
        }
        s
    }

    fn json(&self, machine: &Machine, command: &str, elapsed: Duration) -> Value {
        json!({
            "command": command,
            "machine": machine.json(),
            "elapsed_s": elapsed.as_secs_f64(),
            "rows": self.rows.iter().map(|r| json!({
                "id": r.id,
                "measurement": r.measurement,
                "result": r.result,
                "method": r.method,
                "data": r.data,
            })).collect::<Vec<_>>(),
            "notes": self.notes,
            "tables": self.tables.iter().map(|(t, md)| json!({"title": t, "markdown": md})).collect::<Vec<_>>(),
        })
    }
}

/// Percentiles of a sample, nearest rank.
#[derive(Debug, Clone, Copy)]
struct Dist {
    n: usize,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
}

impl Dist {
    fn of(samples: &[Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort();
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Self {
            n: v.len(),
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: v[v.len() - 1],
        })
    }

    fn text(&self) -> String {
        format!(
            "p50 {} · p90 {} · p99 {} · max {} (n={})",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max),
            self.n
        )
    }

    fn json(&self) -> Value {
        json!({
            "n": self.n,
            "p50_ms": self.p50.as_secs_f64() * 1e3,
            "p90_ms": self.p90.as_secs_f64() * 1e3,
            "p99_ms": self.p99.as_secs_f64() * 1e3,
            "max_ms": self.max.as_secs_f64() * 1e3,
        })
    }
}

fn dist_text(samples: &[Duration]) -> (String, Value) {
    match Dist::of(samples) {
        Some(d) => (d.text(), d.json()),
        None => ("no sample".into(), Value::Null),
    }
}

fn ms(d: Duration) -> String {
    let m = d.as_secs_f64() * 1e3;
    if m >= 100.0 {
        format!("{m:.0} ms")
    } else {
        format!("{m:.1} ms")
    }
}

// ------------------------------------------------------------------ machine

struct Machine {
    nproc: usize,
    model: String,
    kernel: String,
    load_start: String,
    load_end: String,
}

impl Machine {
    fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Self {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            model,
            kernel,
            load_start: loadavg(),
            load_end: String::new(),
        }
    }

    fn markdown(&self) -> String {
        format!(
            "Machine: {} × {} (nproc {}), Linux {}; load average (1/5/15 min) at start {}, at end {}.\n",
            self.nproc, self.model, self.nproc, self.kernel, self.load_start, self.load_end
        )
    }

    fn json(&self) -> Value {
        json!({
            "nproc": self.nproc,
            "model": self.model,
            "kernel": self.kernel,
            "loadavg_start": self.load_start,
            "loadavg_end": self.load_end,
        })
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// CPU time a process has used, all its threads (live and exited)
/// together, to the nanosecond: its CPU-time clock
/// (`clock_getcpuclockid`; `None` is this process). `/proc/PID/stat`
/// counts in clock ticks of 10 ms, and one viewer's relay spends about ten
/// of them in a window, so a tick more or less was ±10% of the figure.
/// Zero once the process is gone.
fn proc_cpu(pid: Option<u32>) -> Duration {
    use nix::time::{clock_getcpuclockid, clock_gettime, ClockId};
    let clock = match pid {
        None => Ok(ClockId::CLOCK_PROCESS_CPUTIME_ID),
        Some(p) => clock_getcpuclockid(nix::unistd::Pid::from_raw(p as i32)),
    };
    clock
        .and_then(clock_gettime)
        .map_or(Duration::ZERO, Duration::from)
}

/// Time the threads of a process (those alive now) have spent runnable
/// but waiting for a CPU: the kernel's run-queue wait, the second field of
/// `/proc/PID/task/TID/schedstat`. Over a window, divided by its length,
/// it says how many of the process's threads were kept waiting on average.
fn proc_cpu_wait(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// User and system CPU time of a process so far (all its threads), in
/// clock ticks (`utime` and `stime` of `/proc/PID/stat`); zeros once it is
/// gone. Coarse (10 ms ticks) but split: over a window of a relay, the
/// kernel's share says how much of its cost is the send path.
fn proc_user_system_ticks(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    system_tests::proc_stat_cpu(&stat).map_or((0, 0), |(_, user, system)| (user, system))
}

/// VmRSS in KiB.
fn proc_rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Busy and total jiffies of the whole host, from /proc/stat.
fn host_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The host's busy cores between two [`host_ticks`] readings.
fn host_busy_cores((h0, t0): (u64, u64), (h1, t1): (u64, u64)) -> f64 {
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    if t1 > t0 {
        (h1 - h0) as f64 / (t1 - t0) as f64 * nproc
    } else {
        0.0
    }
}

/// CPU use over one window.
#[derive(Debug, Clone, Copy)]
struct CpuWindow {
    /// The measured process, in cores (1.0 = one core busy).
    cores: f64,
    /// The bench process itself.
    bench_cores: f64,
    /// The whole host, in cores.
    host_cores: f64,
}

impl CpuWindow {
    fn json(&self) -> Value {
        json!({"cores": self.cores, "bench_cores": self.bench_cores, "host_busy_cores": self.host_cores})
    }
}

async fn cpu_window(pid: u32, window: Duration) -> CpuWindow {
    let (cores, bench_cores, host_cores) = cpu_windows(&[pid], window).await;
    CpuWindow {
        cores: cores[0],
        bench_cores,
        host_cores,
    }
}

/// CPU of several processes, the bench and the host over one window, in
/// cores.
async fn cpu_windows(pids: &[u32], window: Duration) -> (Vec<f64>, f64, f64) {
    let p0: Vec<Duration> = pids.iter().map(|&p| proc_cpu(Some(p))).collect();
    let (b0, h0, at) = (proc_cpu(None), host_ticks(), Instant::now());
    tokio::time::sleep(window).await;
    let p1: Vec<Duration> = pids.iter().map(|&p| proc_cpu(Some(p))).collect();
    let (b1, h1) = (proc_cpu(None), host_ticks());
    let secs = at.elapsed().as_secs_f64();
    let cores = |a: Duration, b: Duration| b.saturating_sub(a).as_secs_f64() / secs;
    let host = host_busy_cores(h0, h1);
    (
        p0.iter().zip(&p1).map(|(&a, &b)| cores(a, b)).collect(),
        cores(b0, b1),
        host,
    )
}

// ------------------------------------------------------------------ services

struct Env {
    out_dir: PathBuf,
    worker_bin: PathBuf,
}

impl Env {
    /// A worker process (the binary next to this one), stderr to a log file.
    fn spawn_worker(&self, nats_url: &str, id: &str, extra: &[(&str, &str)]) -> Proc {
        let mut envs = vec![("NATS_URL", nats_url), ("WORKER_ID", id)];
        envs.extend_from_slice(extra);
        self.spawn(&self.worker_bin, id, &envs)
    }

    /// A service process from `bin` with `envs` (and `RUST_LOG`, `warn`
    /// unless set), its stderr to `logs/<log>.log`.
    fn spawn(&self, bin: &Path, log: &str, envs: &[(&str, &str)]) -> Proc {
        let log = std::fs::File::create(self.out_dir.join("logs").join(format!("{log}.log")))
            .expect("log file");
        let mut cmd = Command::new(bin);
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        Proc { child }
    }
}

fn bus_of(client: &async_nats::Client, timeout: Duration) -> Bus {
    Bus::new(client.clone(), Subjects::default()).with_timeout(timeout)
}

/// Waits for a heartbeat from `worker` satisfying `pred`.
async fn heartbeat(
    sub: &mut async_nats::Subscriber,
    worker: &str,
    timeout: Duration,
    pred: impl Fn(&Heartbeat) -> bool,
) -> anyhow::Result<Heartbeat> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, sub.next())
            .await
            .with_context(|| format!("no heartbeat from {worker} in {timeout:?}"))?
            .context("heartbeat subscription closed")?;
        if let Ok(hb) = bus_schema::decode_record::<Heartbeat>(&m.payload) {
            if hb.worker.as_str() == worker && pred(&hb) {
                return Ok(hb);
            }
        }
    }
}

/// Starts a worker for each of `ids` with `start` and waits until each
/// has sent a heartbeat.
async fn start_workers<W>(
    client: &async_nats::Client,
    ids: &[&str],
    start: impl FnMut(&str) -> W,
) -> anyhow::Result<Vec<W>> {
    let mut hb = client
        .subscribe(Subjects::default().heartbeat_any())
        .await?;
    let workers = ids.iter().copied().map(start).collect();
    for id in ids {
        heartbeat(&mut hb, id, Duration::from_secs(20), |_| true).await?;
    }
    Ok(workers)
}

async fn create(
    bus: &Bus,
    id: Option<&SessionId>,
    source: SourceSpec,
    on_worker_lost: OnWorkerLost,
) -> Result<bus_schema::SessionInfo, bus_schema::WireError> {
    bus.request(
        &bus.subjects.session_create(),
        &CreateSession {
            id: id.cloned(),
            source,
            on_worker_lost,
            ..Default::default()
        },
    )
    .await
}

async fn stop(bus: &Bus, id: &SessionId) -> Result<bus_schema::SessionInfo, bus_schema::WireError> {
    bus.request(
        &bus.subjects.session_stop(id),
        &StopSession { detail: None },
    )
    .await
}

async fn frames_encoded(bus: &Bus, ids: &[SessionId]) -> u64 {
    let mut total = 0;
    for id in ids {
        if let Ok(s) = bus
            .request(&bus.subjects.session_stats(id), &GetStats {})
            .await
        {
            total += s.frames_encoded;
        }
    }
    total
}

// ------------------------------------------------------------------ 1. create latency

async fn bench_create_latency(env: &Env, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("[1] create latency");
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let mut hb = client
        .subscribe(Subjects::default().heartbeat_any())
        .await?;
    let _w = env.spawn_worker(&nats.url(), "w-lat", &[]);
    heartbeat(&mut hb, "w-lat", Duration::from_secs(20), |_| true).await?;
    let bus = bus_of(&client, Duration::from_secs(15));

    // One create first, uncounted: the first start pays one-off costs.
    let warm = SessionId::parse("lat-warm").expect("id");
    create(&bus, Some(&warm), small_source(), OnWorkerLost::End).await?;
    stop(&bus, &warm).await?;

    let cases = [
        (
            "1a",
            "320x240@15 300 kbit/s",
            small_source(),
            plan.creates_small,
        ),
        (
            "1b",
            "1280x720@30 2500 kbit/s",
            hd_source(),
            plan.creates_hd,
        ),
    ];
    for (tag, label, source, n) in cases {
        let fps = match source {
            SourceSpec::Synthetic { fps, .. } => fps,
            _ => unreachable!("section 1 creates synthetic sessions"),
        };
        let half_frame = Duration::from_secs_f64(0.5 / f64::from(fps));
        let mut replies = Vec::new();
        let mut started = Vec::new();
        let mut failures = 0;
        for i in 0..n {
            let id = SessionId::parse(format!("lat-{tag}-{i}")).expect("id");
            let mut ev = client
                .subscribe(
                    bus.subjects
                        .event_session(&id, SessionEventKind::Started)
                        .to_string(),
                )
                .await?;
            let t0 = Instant::now();
            match create(&bus, Some(&id), source.clone(), OnWorkerLost::End).await {
                Ok(_) => replies.push(t0.elapsed()),
                Err(e) => {
                    failures += 1;
                    eprintln!("    create {id} failed: {} {}", e.code.as_str(), e.message);
                    continue;
                }
            }
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), ev.next()).await {
                started.push(t0.elapsed());
            }
            if let Err(e) = stop(&bus, &id).await {
                eprintln!("    stop {id} failed: {} {}", e.code.as_str(), e.message);
            }
        }
        let (text, data) = dist_text(&replies);
        let slow = replies.iter().filter(|d| **d > half_frame).count();
        let text = format!(
            "{text}; {slow} of {} over half a frame interval ({})",
            replies.len(),
            ms(half_frame)
        );
        let fail = if failures > 0 {
            format!(", {failures} failed")
        } else {
            String::new()
        };
        report.row(
            tag,
            &format!("Create → reply (= first encoded frame), {label}"),
            format!("{text}{fail}"),
            &format!(
                "{n} sequential `session.create` requests to one release worker process (registry on file storage), each stopped before the next; timed in the client from request to reply"
            ),
            json!({
                "reply": data, "failed": failures, "over_half_frame": slow,
                "samples_ms": replies.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>(),
            }),
        );
        let (text, data) = dist_text(&started);
        report.row(
            &format!("{tag}'"),
            &format!("Create → `started` event, {label}"),
            text,
            "same creates; client subscribed to `event.session.<id>.started` before the request, timed to the event's arrival",
            json!({"started": data}),
        );
    }
    bench_list(&client, &bus, plan, report).await
}

/// Row 1c: `session.list` against a registry of `plan.list_sessions`
/// records that no worker runs, written straight into the bucket.
async fn bench_list(
    client: &async_nats::Client,
    bus: &Bus,
    plan: &Plan,
    report: &mut Report,
) -> anyhow::Result<()> {
    let n = plan.list_sessions;
    let js = async_nats::jetstream::new(client.clone());
    let reg = Registry::open(&js, &bus.subjects, Storage::File).await?;
    for i in 0..n {
        let id = format!("list-{i:05}");
        reg.create(&system_tests::ghost_record(&id, i as u64, false, 2))
            .await?;
    }
    let list = |limit: Option<u32>, after: Option<ListCursor>| async move {
        bus.request(
            &bus.subjects.session_list(),
            &ListSessions {
                include_ended: false,
                limit,
                after,
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("session.list: {} {}", e.code.as_str(), e.message))
    };
    let mut first = Vec::new();
    for _ in 0..50 {
        let t0 = Instant::now();
        let page = list(Some(100), None).await?;
        first.push(t0.elapsed());
        anyhow::ensure!(page.sessions.len() == 100.min(n), "a short first page");
    }
    // Whole walks, in pages of 100 and in pages as large as fit.
    let mut walks = Vec::new();
    for limit in [Some(100), None] {
        let (t0, mut after, mut pages, mut seen) = (Instant::now(), None, 0, 0);
        loop {
            let page = list(limit, after.take()).await?;
            pages += 1;
            seen += page.sessions.len();
            match page.next {
                Some(c) => after = Some(c),
                None => break,
            }
        }
        anyhow::ensure!(seen == n, "a walk saw {seen} of {n} sessions");
        walks.push((limit, t0.elapsed(), pages));
    }
    let (text, data) = dist_text(&first);
    let walk_text = walks
        .iter()
        .map(|(limit, took, pages)| {
            let by = limit.map_or("as many as fit".to_string(), |l| format!("{l}"));
            format!("whole list by {by}: {} in {pages} pages", ms(*took))
        })
        .collect::<Vec<_>>()
        .join("; ");
    report.row(
        "1c",
        &format!("`session.list` with {n} sessions in the registry"),
        format!("first page of 100: {text}; {walk_text}"),
        &format!(
            "{n} records (about 500 bytes each) written straight into the registry, owned by no live worker; 50 requests for the first page of 100, then whole walks following `next`; timed in the client"
        ),
        json!({
            "sessions": n,
            "first_page": data,
            "walks": walks.iter().map(|(limit, took, pages)| json!({
                "limit": limit, "ms": took.as_secs_f64() * 1e3, "pages": pages,
            })).collect::<Vec<_>>(),
        }),
    );
    Ok(())
}

// ------------------------------------------------------------------ 2. throughput

async fn bench_throughput(plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("[2] create/stop throughput");
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let workers = start_workers(&client, &["w-tp-1", "w-tp-2"], |id| {
        let mut cfg = worker::Config::for_tests(&nats.url());
        cfg.worker_id = Some(id.into());
        cfg.capacity = 64;
        cfg.heartbeat_interval = Duration::from_secs(1).into();
        cfg.lease = Duration::from_secs(2).into();
        cfg.registry_storage = worker::config::StorageKind::File;
        system_tests::worker(cfg)
    })
    .await?;

    #[derive(Default)]
    struct Tally {
        pairs: AtomicU64,
        create_failed: AtomicU64,
        stop_failed: AtomicU64,
    }
    let tally = Arc::new(Tally::default());
    let placed: Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>> = Default::default();
    let errors: Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>> = Default::default();
    let window = plan.throughput_window;
    let start = Instant::now();
    let deadline = start + window;
    let mut tasks = Vec::new();
    for _ in 0..plan.throughput_clients {
        // Each client has its own connection, as separate services would.
        let bus = bus_of(&nats.client().await, Duration::from_secs(10));
        let (tally, placed, errors) = (tally.clone(), placed.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let info = match create(&bus, None, tiny_source(), OnWorkerLost::End).await {
                    Ok(info) => info,
                    Err(e) => {
                        tally.create_failed.fetch_add(1, Ordering::Relaxed);
                        *errors
                            .lock()
                            .unwrap()
                            .entry(format!("create {}", e.code.as_str()))
                            .or_default() += 1;
                        continue;
                    }
                };
                *placed
                    .lock()
                    .unwrap()
                    .entry(info.record.owner.to_string())
                    .or_default() += 1;
                match stop(&bus, &info.record.id).await {
                    Ok(_) => {
                        tally.pairs.fetch_add(1, Ordering::Relaxed);
                        lat.push(t0.elapsed());
                    }
                    Err(e) => {
                        tally.stop_failed.fetch_add(1, Ordering::Relaxed);
                        *errors
                            .lock()
                            .unwrap()
                            .entry(format!("stop {}", e.code.as_str()))
                            .or_default() += 1;
                    }
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    let elapsed = start.elapsed();
    let pairs = tally.pairs.load(Ordering::Relaxed);
    let cf = tally.create_failed.load(Ordering::Relaxed);
    let sf = tally.stop_failed.load(Ordering::Relaxed);
    let rate = pairs as f64 / elapsed.as_secs_f64();
    let (lat_text, lat_json) = dist_text(&lat);
    let slow = lat
        .iter()
        .filter(|d| **d > Duration::from_millis(50))
        .count();
    let lat_text = format!("{lat_text}, {slow} over 50 ms (half a frame at 10 fps)");
    let placed = placed.lock().unwrap().clone();
    let errors = errors.lock().unwrap().clone();
    report.row(
        "2",
        "Create+stop throughput",
        format!(
            "{rate:.1} pairs/s ({:.1} requests/s): {pairs} pairs answered, {cf} creates and {sf} stops failed in {:.1} s; pair latency {lat_text}; placed {}",
            rate * 2.0,
            elapsed.as_secs_f64(),
            placed
                .iter()
                .map(|(w, n)| format!("{w}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        &format!(
            "{} concurrent clients (one NATS connection each) loop create (160x120@10 200 kbit/s) then stop for {:.0} s against 2 in-process workers with capacity 64 (same process as the clients)",
            plan.throughput_clients,
            window.as_secs_f64()
        ),
        json!({
            "pairs": pairs, "pairs_per_s": rate, "create_failed": cf, "stop_failed": sf,
            "elapsed_s": elapsed.as_secs_f64(), "pair_latency": lat_json,
            "placed": placed, "errors": errors,
        }),
    );
    if !errors.is_empty() {
        report.note(format!("throughput errors by kind: {errors:?}"));
    }
    for w in workers {
        w.stop(Duration::from_secs(10)).await;
    }
    Ok(())
}

// ------------------------------------------------------------------ 3. janitor

struct Timings {
    name: &'static str,
    heartbeat: Duration,
    lease: Duration,
    janitor: fn(&str) -> janitor::Config,
}

fn janitor_defaults(url: &str) -> janitor::Config {
    janitor::Config {
        nats_url: url.into(),
        ..Default::default()
    }
}

fn janitor_test_timings(url: &str) -> janitor::Config {
    janitor::Config::for_tests(url, bus_schema::subjects::DEFAULT_PREFIX)
}

fn humantime_str(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

async fn bench_janitor(env: &Env, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("[3] janitor detection after kill -9");
    let timings = [
        Timings {
            name: "defaults (heartbeat 1 s, lease 2 s, dead_after 3 s, scan 1 s)",
            heartbeat: Duration::from_secs(1),
            lease: Duration::from_secs(2),
            janitor: janitor_defaults,
        },
        Timings {
            name: "test timings (heartbeat 250 ms, lease 600 ms, dead_after 1 s, scan 250 ms)",
            heartbeat: Duration::from_millis(250),
            lease: Duration::from_millis(600),
            janitor: janitor_test_timings,
        },
    ];
    for (k, t) in timings.iter().enumerate() {
        let tag = ["3a", "3b"][k];
        let mut ended = Vec::new();
        let mut restarted = Vec::new();
        let mut failures = Vec::new();
        let mut phases = Phases(0x5eed_0000 + k as u64);
        for rep in 0..plan.reap_reps {
            match reap_once(env, t, &format!("{tag}-{rep}"), false, phases.next()).await {
                Ok(d) => ended.push(d),
                Err(e) => failures.push(format!("end #{rep}: {e:#}")),
            }
            match reap_once(env, t, &format!("{tag}-{rep}"), true, phases.next()).await {
                Ok(d) => restarted.push(d),
                Err(e) => failures.push(format!("restart #{rep}: {e:#}")),
            }
        }
        let (text, data) = dist_text(&ended);
        report.row(
            tag,
            &format!("kill -9 → `ended` (worker_lost), {}", t.name),
            text,
            "worker process with one 160x120 session, in-process janitor, fresh nats-server per repetition; SIGKILL at a seeded pseudo-random phase after a heartbeat listing the session (worker start also offset against the janitor's scan ticks); timed to the `event.session.<id>.ended` event with reason worker_lost",
            json!({"ended": data}),
        );
        let (text, data) = dist_text(&restarted);
        report.row(
            &format!("{tag}'"),
            &format!("kill -9 → restarted live on another worker, {}", t.name),
            text,
            "as above with `on_worker_lost: restart` and a second (in-process) worker with the same timings; timed until the registry entry shows the new owner and state live (polled every 10 ms)",
            json!({"restarted": data}),
        );
        for f in failures {
            report.note(format!("{tag}: {f}"));
        }
    }
    Ok(())
}

/// Seeded pseudo-random fractions in [0, 1) (splitmix64), so repetitions
/// kill at different phases of the heartbeat and scan cycles, the same ones
/// on every run.
struct Phases(u64);

impl Phases {
    fn next(&mut self) -> (f64, f64) {
        let mut one = || {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) as f64 / u64::MAX as f64
        };
        (one(), one())
    }
}

/// One repetition: a worker process with one session is killed. Returns the
/// time from the kill to the `ended` event (or to the session being live on
/// a standby worker when `restart`). `phase` offsets the worker's start
/// against the janitor's scan ticks and the kill against its heartbeats.
async fn reap_once(
    env: &Env,
    t: &Timings,
    tag: &str,
    restart: bool,
    phase: (f64, f64),
) -> anyhow::Result<Duration> {
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let bus = bus_of(&client, Duration::from_secs(15));
    let subjects = Subjects::default();
    let jan = system_tests::janitor((t.janitor)(&nats.url()));
    let mut hb = client.subscribe(subjects.heartbeat_any()).await?;
    let scan = *(t.janitor)("nats://unused").scan_interval;
    tokio::time::sleep(scan.mul_f64(phase.0)).await;
    let victim = format!("w-{tag}{}", if restart { "-r" } else { "" });
    let mut proc = env.spawn_worker(
        &nats.url(),
        &victim,
        &[
            ("HEARTBEAT_INTERVAL", &humantime_str(t.heartbeat)),
            ("LEASE", &humantime_str(t.lease)),
        ],
    );
    heartbeat(&mut hb, &victim, Duration::from_secs(20), |_| true).await?;
    let id = SessionId::parse(format!("reap-{tag}")).expect("id");
    let mut ended = client
        .subscribe(
            subjects
                .event_session(&id, SessionEventKind::Ended)
                .to_string(),
        )
        .await?;
    let policy = if restart {
        OnWorkerLost::Restart
    } else {
        OnWorkerLost::End
    };
    let info = create(&bus, Some(&id), tiny_source(), policy).await?;
    if info.record.owner.as_str() != victim {
        bail!(
            "session placed on {} instead of {victim}",
            info.record.owner
        );
    }
    let standby = if restart {
        let sid = format!("w-{tag}-standby");
        let mut cfg = worker::Config::for_tests(&nats.url());
        cfg.worker_id = Some(sid.clone());
        cfg.heartbeat_interval = t.heartbeat.into();
        cfg.lease = t.lease.into();
        cfg.registry_storage = worker::config::StorageKind::File;
        let w = system_tests::worker(cfg);
        heartbeat(&mut hb, &sid, Duration::from_secs(20), |_| true).await?;
        Some((w, sid))
    } else {
        None
    };
    heartbeat(&mut hb, &victim, Duration::from_secs(10), |h| {
        h.sessions.iter().any(|s| s.id == id)
    })
    .await?;
    tokio::time::sleep(t.heartbeat.mul_f64(phase.1)).await;

    proc.signal("KILL");
    let killed = Instant::now();
    proc.wait_exit(Duration::from_secs(5))
        .await
        .context("the worker did not die")?;
    let took = match &standby {
        None => {
            let m = tokio::time::timeout(Duration::from_secs(30), ended.next())
                .await
                .context("no ended event within 30 s")?
                .context("subscription closed")?;
            let took = killed.elapsed();
            let ev: SessionEvent = bus_schema::decode_record(&m.payload)?;
            if ev.reason != Some(bus_schema::EndReason::WorkerLost) {
                bail!("ended with {:?}, not worker_lost", ev.reason);
            }
            took
        }
        Some((_, sid)) => {
            let js = async_nats::jetstream::new(client.clone());
            let reg = Registry::open(&js, &subjects, Storage::File).await?;
            let deadline = killed + Duration::from_secs(30);
            loop {
                if let Ok(Some(v)) = reg.get(&id).await {
                    if v.record.owner.as_str() == sid && v.record.state == SessionState::Live {
                        break killed.elapsed();
                    }
                }
                if Instant::now() > deadline {
                    bail!("not live on the standby within 30 s");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    eprintln!(
        "    {tag} {}: {}",
        if restart { "restart" } else { "end" },
        ms(took)
    );
    if let Some((w, _)) = standby {
        w.stop(Duration::from_secs(10)).await;
    }
    jan.stop(Duration::from_secs(10)).await;
    Ok(took)
}

// ------------------------------------------------------------------ 4. source CPU

async fn bench_source_cpu(env: &Env, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("[4] synthetic source CPU per session");
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let mut hb = client
        .subscribe(Subjects::default().heartbeat_any())
        .await?;
    let w = env.spawn_worker(&nats.url(), "w-cpu", &[]);
    let pid = w.child.id();
    heartbeat(&mut hb, "w-cpu", Duration::from_secs(20), |_| true).await?;
    drop(hb);
    let bus = bus_of(&client, Duration::from_secs(15));

    tokio::time::sleep(plan.warmup).await;
    let idle = cpu_window(pid, plan.cpu_window).await;
    report.row(
        "4",
        "Idle worker process CPU",
        format!(
            "{:.3} cores (host busy {:.2} of {} cores)",
            idle.cores,
            idle.host_cores,
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        &format!(
            "worker process with no session; CPU time (the process's CPU clock) over {:.0} s",
            plan.cpu_window.as_secs_f64()
        ),
        idle.json(),
    );
    let cases = [
        ("4a", "1280x720@30 2500 kbit/s", hd_source(), 30.0),
        ("4b", "640x360@30 1000 kbit/s", sd_source(), 30.0),
    ];
    for (tag, label, source, fps) in cases {
        let mut cells = Vec::new();
        let mut data = Vec::new();
        for n in [1usize, 2, 4] {
            let mut ids = Vec::new();
            for i in 0..n {
                let id = SessionId::parse(format!("cpu-{tag}-{n}-{i}")).expect("id");
                create(&bus, Some(&id), source.clone(), OnWorkerLost::End).await?;
                ids.push(id);
            }
            tokio::time::sleep(plan.warmup).await;
            let f0 = frames_encoded(&bus, &ids).await;
            let t0 = Instant::now();
            let win = cpu_window(pid, plan.cpu_window).await;
            let f1 = frames_encoded(&bus, &ids).await;
            let achieved = (f1 - f0) as f64 / t0.elapsed().as_secs_f64() / n as f64;
            let per = (win.cores - idle.cores) / n as f64;
            cells.push(format!(
                "N={n}: {per:.3} cores/session ({:.2} total, {achieved:.1} fps each, host busy {:.2})",
                win.cores, win.host_cores
            ));
            data.push(json!({
                "n": n, "cores_per_session": per, "fps_per_session": achieved,
                "target_fps": fps, "window": win.json(),
            }));
            if achieved < fps * 0.9 {
                report.note(format!(
                    "{tag} N={n}: sessions encoded {achieved:.1} fps of {fps} while the worker used {:.2} cores and the host {:.2} of its cores: the encoder threads did not get the CPU they needed",
                    win.cores, win.host_cores
                ));
            }
            for id in &ids {
                stop(&bus, id).await?;
            }
        }
        report.row(
            tag,
            &format!("Synthetic source CPU per session, {label}"),
            cells.join("; "),
            &format!(
                "N sessions in one release worker process; after {:.1} s warm-up, CPU time over {:.0} s, minus the idle worker, divided by N; fps from `stats.frames_encoded`",
                plan.warmup.as_secs_f64(),
                plan.cpu_window.as_secs_f64()
            ),
            json!({"runs": data, "idle_cores": idle.cores}),
        );
    }
    Ok(())
}

// ------------------------------------------------------------------ 5. fan-out

/// What one bench viewer has received. The receive path only counts.
#[derive(Default)]
struct Counters {
    video_packets: AtomicU64,
    video_bytes: AtomicU64,
    /// Marker bits: the last packet of each access unit.
    markers: AtomicU64,
    audio_packets: AtomicU64,
    /// From the join request to the first packet that starts a keyframe.
    first_key: OnceLock<Duration>,
}

struct Viewer {
    rtc: viewer::Viewer,
    counters: Arc<Counters>,
}

/// Whether an H.264 RTP payload (RFC 6184) starts an IDR or carries an SPS.
fn starts_keyframe(payload: &[u8]) -> bool {
    let key = |t: u8| t == 5 || t == 7;
    let Some(&b0) = payload.first() else {
        return false;
    };
    match b0 & 0x1f {
        // FU-A: the start fragment of a keyframe NAL.
        28 => payload
            .get(1)
            .is_some_and(|&b1| b1 & 0x80 != 0 && key(b1 & 0x1f)),
        // STAP-A: 2-byte size, then each NAL.
        24 => {
            let mut i = 1;
            while i + 2 < payload.len() {
                let size = u16::from_be_bytes([payload[i], payload[i + 1]]) as usize;
                if key(payload[i + 2] & 0x1f) {
                    return true;
                }
                i += 2 + size;
            }
            false
        }
        t => key(t),
    }
}

async fn join(bus: &Bus, id: &SessionId) -> anyhow::Result<Viewer> {
    let (pending, pc) = viewer::start(bus, id, Role::View, Interceptors::Default).await?;
    let t0 = pending.sent();
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    viewer::on_tracks(&pc, move |track, video| {
        let c = c.clone();
        async move {
            while let Ok((pkt, _)) = track.read_rtp().await {
                if !video {
                    c.audio_packets.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                c.video_packets.fetch_add(1, Ordering::Relaxed);
                c.video_bytes
                    .fetch_add(pkt.payload.len() as u64, Ordering::Relaxed);
                if pkt.header.marker {
                    c.markers.fetch_add(1, Ordering::Relaxed);
                }
                if c.first_key.get().is_none() && starts_keyframe(&pkt.payload) {
                    let _ = c.first_key.set(t0.elapsed());
                }
            }
        }
    });
    let rtc = pending.connect(bus, pc).await?;
    Ok(Viewer { rtc, counters })
}

async fn bench_fanout(env: &Env, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("[5] viewer fan-out");
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let mut hb = client
        .subscribe(Subjects::default().heartbeat_any())
        .await?;
    let w = env.spawn_worker(&nats.url(), "w-fan", &[]);
    let pid = w.child.id();
    heartbeat(&mut hb, "w-fan", Duration::from_secs(20), |_| true).await?;
    drop(hb);
    let bus = bus_of(&client, Duration::from_secs(15));
    let id = SessionId::parse("fan").expect("id");
    create(&bus, Some(&id), hd_source(), OnWorkerLost::End).await?;

    let mut viewers: Vec<Viewer> = Vec::new();
    let mut base: Option<(CpuWindow, u64)> = None;
    let mut cells = Vec::new();
    let mut data = Vec::new();
    for n in [0usize, 1, 10, 20] {
        while viewers.len() < n {
            viewers.push(join(&bus, &id).await?);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !viewers.iter().all(|v| v.counters.first_key.get().is_some()) {
            if Instant::now() > deadline {
                let missing = viewers
                    .iter()
                    .filter(|v| v.counters.first_key.get().is_none())
                    .count();
                report.note(format!(
                    "5 N={n}: {missing} viewers had no keyframe 30 s after joining"
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(plan.warmup).await;
        let bytes0: Vec<u64> = viewers
            .iter()
            .map(|v| v.counters.video_bytes.load(Ordering::Relaxed))
            .collect();
        let marks0: Vec<u64> = viewers
            .iter()
            .map(|v| v.counters.markers.load(Ordering::Relaxed))
            .collect();
        let t0 = Instant::now();
        let rss0 = proc_rss_kib(&pid.to_string());
        let win = cpu_window(pid, plan.cpu_window).await;
        let secs = t0.elapsed().as_secs_f64();
        let rss = proc_rss_kib(&pid.to_string());
        let kbps: Vec<f64> = viewers
            .iter()
            .zip(&bytes0)
            .map(|(v, b)| {
                (v.counters.video_bytes.load(Ordering::Relaxed) - b) as f64 * 8.0 / 1e3 / secs
            })
            .collect();
        let fps: Vec<f64> = viewers
            .iter()
            .zip(&marks0)
            .map(|(v, m)| (v.counters.markers.load(Ordering::Relaxed) - m) as f64 / secs)
            .collect();
        let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let (cell, extra) = match base {
            None => {
                base = Some((win, rss));
                (
                    format!(
                        "N=0: {:.3} cores, RSS {:.1} MiB",
                        win.cores,
                        rss as f64 / 1024.0
                    ),
                    json!({}),
                )
            }
            Some((b, brss)) => {
                let cpu_per = (win.cores - b.cores) / n as f64;
                let rss_per = (rss as f64 - brss as f64) / 1024.0 / n as f64;
                (
                    format!(
                        "N={n}: {cpu_per:.4} cores/viewer, {rss_per:.2} MiB/viewer ({:.3} cores, RSS {:.1} → {:.1} MiB over the window; slowest viewer {:.0} kbit/s {:.1} fps; bench {:.2} cores, host busy {:.2})",
                        win.cores,
                        rss0 as f64 / 1024.0,
                        rss as f64 / 1024.0,
                        min(&kbps),
                        min(&fps),
                        win.bench_cores,
                        win.host_cores
                    ),
                    json!({"cores_per_viewer": cpu_per, "rss_mib_per_viewer": rss_per}),
                )
            }
        };
        eprintln!("    {cell}");
        cells.push(cell);
        data.push(json!({
            "n": n, "window": win.json(), "rss_kib": rss, "rss_kib_window_start": rss0,
            "viewer_video_kbps": kbps, "viewer_fps": fps, "per_viewer": extra,
        }));
    }
    if !plan.hold.is_zero() {
        // Does RSS level off with the viewers connected?
        let t0 = Instant::now();
        let mut samples = Vec::new();
        while t0.elapsed() < plan.hold {
            tokio::time::sleep(Duration::from_secs(5)).await;
            samples.push((t0.elapsed().as_secs(), proc_rss_kib(&pid.to_string())));
        }
        report.row(
            "5d",
            &format!("Worker RSS while {} viewers stay", viewers.len()),
            samples
                .iter()
                .map(|(t, k)| format!("+{t} s: {:.1} MiB", *k as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join(", "),
            "after the last step of 5a, VmRSS sampled every 5 s (`--hold SECS`)",
            json!({"samples": samples.iter().map(|(t, k)| json!({"t_s": t, "rss_kib": k})).collect::<Vec<_>>()}),
        );
    }
    report.row(
        "5a",
        "Viewer fan-out cost, 1280x720@30 2500 kbit/s",
        cells.join("; "),
        &format!(
            "one session in a release worker process; N webrtc-rs viewers in the bench process (receive path counts RTP only); after each step all viewers have a keyframe, {:.1} s warm-up, worker CPU time over {:.0} s and VmRSS; per viewer = (N − N0)/N",
            plan.warmup.as_secs_f64(),
            plan.cpu_window.as_secs_f64()
        ),
        json!({"steps": data}),
    );
    let keys: Vec<Duration> = viewers
        .iter()
        .filter_map(|v| v.counters.first_key.get().copied())
        .collect();
    let (text, kdata) = dist_text(&keys);
    report.row(
        "5b",
        "Join → first keyframe packet at the viewer",
        text,
        "sequential joins above; from the `session.join` request to the first RTP packet starting an IDR (NAL 5) or SPS (7), incl. FU-A start fragments and STAP-A",
        json!({"first_keyframe": kdata}),
    );

    // After everyone left: does the worker give the memory and CPU back?
    // A second round of as many viewers tells retention from a leak.
    let (b, brss) = base.expect("N=0 measured first");
    let rounds = viewers.len();
    leave_all(&bus, &id, std::mem::take(&mut viewers), report).await;
    tokio::time::sleep(plan.warmup).await;
    let win = cpu_window(pid, plan.cpu_window).await;
    let rss1 = proc_rss_kib(&pid.to_string());
    for _ in 0..rounds {
        viewers.push(join(&bus, &id).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !viewers.iter().all(|v| v.counters.first_key.get().is_some()) && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(plan.warmup + plan.cpu_window).await;
    let rss_during = proc_rss_kib(&pid.to_string());
    leave_all(&bus, &id, std::mem::take(&mut viewers), report).await;
    tokio::time::sleep(plan.warmup).await;
    let rss2 = proc_rss_kib(&pid.to_string());
    let mib = |k: u64| k as f64 / 1024.0;
    report.row(
        "5c",
        &format!("Worker after all {rounds} viewers left, twice"),
        format!(
            "{:.3} cores (N=0 before: {:.3}); RSS {:.1} MiB after the first round left (N=0 before: {:.1}), {:.1} MiB with a second round of {rounds} held as long, {:.1} MiB after it left",
            win.cores,
            b.cores,
            mib(rss1),
            mib(brss),
            mib(rss_during),
            mib(rss2),
        ),
        "every viewer sent `leave` and closed; once `stats` lists no viewer, warm-up, then the same CPU window and VmRSS; then the same number of viewers joined and left again",
        json!({"window": win.json(), "rss_kib_after_first": rss1, "rss_kib_second_round": rss_during, "rss_kib_after_second": rss2, "rss_kib_before": brss}),
    );
    let _ = stop(&bus, &id).await;
    Ok(())
}

/// Every viewer leaves and closes; waits until the worker lists none.
async fn leave_all(bus: &Bus, id: &SessionId, viewers: Vec<Viewer>, report: &mut Report) {
    for v in &viewers {
        let _ = v.rtc.leave(bus).await;
        v.rtc.close().await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match bus
            .request(&bus.subjects.session_stats(id), &GetStats {})
            .await
        {
            Ok(s) if s.viewers.is_empty() => break,
            _ if Instant::now() > deadline => {
                report.note("5: the worker still listed viewers 30 s after all left".into());
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

// ------------------------------------------------------------------ main

/// A workspace binary next to this executable (`worker`, `api`), so that
/// a `--release` bench runs release services.
fn sibling_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("exe dir")?;
    let p = dir.join(name);
    if !p.exists() {
        bail!(
            "{} is missing: build it with the same profile (`cargo build --release -p {name} --bin {name}`)",
            p.display()
        );
    }
    Ok(p)
}

/// `target/bench`, beside the profile directory of this executable.
fn out_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe.parent().and_then(Path::parent).context("target dir")?;
    Ok(target.join("bench"))
}

/// Warnings and errors the worker processes and Janus logged, besides
/// OpenH264's note about frame skipping (printed by the C library at every
/// encoder start), Janus's notes about what its config disables, and its
/// note that it skipped a viewer candidate it cannot reach (the viewers
/// offer every host address; one pair suffices).
fn scan_logs(dir: &Path) -> Vec<String> {
    let expected = [
        "[OpenH264]",
        "has been disabled, skipping",
        "Session timeouts have been disabled",
        "Failed to add some remote candidates",
    ];
    let mut notes = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return notes;
    };
    let mut files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                !expected.iter().any(|e| l.contains(e)) && (l.contains("WARN") || l.contains("ERR"))
            })
            .collect();
        if let Some(first) = lines.first() {
            notes.push(format!(
                "{}: {} warning/error lines, first: {}",
                f.file_name().unwrap_or_default().to_string_lossy(),
                lines.len(),
                strip_ansi(first)
            ));
        }
    }
    notes
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A comma-separated argument (`1,10,50`), or the usage on anything else.
fn list<T: std::str::FromStr, C: FromIterator<T>>(arg: Option<String>) -> C {
    let arg = arg.unwrap_or_else(|| usage());
    arg.split(',')
        .map(|s| s.trim().parse().unwrap_or_else(|_| usage()))
        .collect()
}

fn usage() -> ! {
    eprintln!("usage: bench [--quick] [--only 1,2,3,4,5,6,7] [--hold SECS] [--per-peer-ports] [--plain-receivers] [--stream 720p30|1080p60] [--viewers 1,10,50,100]");
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                "warn,webrtc=error,webrtc_ice=error,webrtc_sctp=error,webrtc_dtls=error,webrtc_mdns=error,webrtc_srtp=error".into()
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut quick = false;
    let mut per_peer_ports = false;
    let mut plain_receivers = false;
    let mut only = None;
    let mut hold = Duration::ZERO;
    let (mut stream, mut viewers) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--per-peer-ports" => per_peer_ports = true,
            "--plain-receivers" => plain_receivers = true,
            "--hold" => {
                let secs = args.next().unwrap_or_else(|| usage());
                hold = Duration::from_secs(secs.parse().unwrap_or_else(|_| usage()));
            }
            "--stream" => stream = Some(args.next().unwrap_or_else(|| usage())),
            "--viewers" => viewers = Some(list(args.next())),
            "--only" => only = Some(list(args.next())),
            _ => usage(),
        }
    }
    let mut plan = Plan {
        per_peer_ports,
        plain_receivers,
        relay_stream: stream,
        ..Plan::new(quick, only, hold)
    };
    if let Some(v) = viewers {
        plan.relay_viewers = v;
    }
    let out = out_dir()?;
    let _ = std::fs::remove_dir_all(out.join("logs"));
    std::fs::create_dir_all(out.join("logs"))?;
    let mut machine = Machine::probe();
    let env = Env {
        out_dir: out.clone(),
        worker_bin: sibling_bin("worker")?,
    };
    let command = format!(
        "cargo run --release -p system-tests --bin bench --{}",
        std::env::args()
            .skip(1)
            .map(|a| format!(" {a}"))
            .collect::<String>()
    );
    eprintln!(
        "bench ({}): {} × {}, load {}; worker binary {}",
        if plan.quick { "quick" } else { "full" },
        machine.nproc,
        machine.model,
        machine.load_start,
        env.worker_bin.display()
    );
    let started = Instant::now();
    let mut report = Report::default();
    let sections: [(u32, &str); 7] = [
        (1, "create latency"),
        (2, "throughput"),
        (3, "janitor"),
        (4, "source CPU"),
        (5, "fan-out"),
        (6, "relays side by side"),
        (7, "through the api"),
    ];
    // Ctrl-C or SIGTERM drops the running section, whose worker, Janus and
    // nats-server processes stop with it (they would outlive a killed
    // bench and load the next run's machine).
    let mut interrupted = std::pin::pin!(bus_schema::connect::shutdown_signal());
    for (n, name) in sections {
        if !plan.runs(n) {
            continue;
        }
        let t = Instant::now();
        let section = async {
            match n {
                1 => bench_create_latency(&env, &plan, &mut report).await,
                2 => bench_throughput(&plan, &mut report).await,
                3 => bench_janitor(&env, &plan, &mut report).await,
                4 => bench_source_cpu(&env, &plan, &mut report).await,
                5 => bench_fanout(&env, &plan, &mut report).await,
                6 => compare::bench_relays(&env, &plan, &mut report).await,
                _ => through_api::bench_api(&env, &plan, &mut report).await,
            }
        };
        let r = tokio::select! {
            r = section => Some(r),
            () = &mut interrupted => None,
        };
        // The section (and its processes) is dropped by now.
        let Some(r) = r else {
            eprintln!("interrupted in section {n} ({name}); its processes are stopped");
            std::process::exit(130);
        };
        if let Err(e) = r {
            report.note(format!("section {n} ({name}) failed: {e:#}"));
        }
        let done = format!(
            "section {n} ({name}) took {:.1} s; load average after it {}",
            t.elapsed().as_secs_f64(),
            loadavg()
        );
        report.note(done);
    }
    report.notes.extend(scan_logs(&out.join("logs")));
    machine.load_end = loadavg();
    let elapsed = started.elapsed();
    report.notes.push(format!(
        "whole run took {:.0} s; logs of worker processes in target/bench/logs/",
        elapsed.as_secs_f64()
    ));
    let md = report.markdown(&machine, &command);
    std::fs::write(out.join("report.md"), &md)?;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report.json(&machine, &command, elapsed))?,
    )?;
    println!("{md}");
    eprintln!(
        "wrote {} and {}",
        out.join("report.md").display(),
        out.join("report.json").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframes_are_found_in_single_fu_a_and_stap_a_payloads() {
        assert!(starts_keyframe(&[0x65, 0x88]));
        assert!(starts_keyframe(&[0x67, 0x42]));
        assert!(!starts_keyframe(&[0x41, 0x9a]));
        // FU-A start of an IDR, then a middle fragment.
        assert!(starts_keyframe(&[0x7c, 0x85, 0x00]));
        assert!(!starts_keyframe(&[0x7c, 0x05, 0x00]));
        assert!(!starts_keyframe(&[0x7c, 0x81, 0x00]));
        // STAP-A holding SPS then PPS; and one holding only a P slice.
        assert!(starts_keyframe(&[
            0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68
        ]));
        assert!(!starts_keyframe(&[0x78, 0x00, 0x01, 0x41]));
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let d = Dist::of(&v).unwrap();
        assert_eq!(d.p50, Duration::from_millis(50));
        assert_eq!(d.p90, Duration::from_millis(90));
        assert_eq!(d.p99, Duration::from_millis(99));
        assert_eq!(d.max, Duration::from_millis(100));
    }
}
