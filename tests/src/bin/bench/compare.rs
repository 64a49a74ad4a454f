//! Section 6: our worker side by side with Janus's streaming plugin, fed the
//! same RTP stream, on the same machine, in the same run.
//!
//! Per stream (720p30 ~4 Mbit/s, 1080p60 ~12 Mbit/s): a fresh nats-server,
//! a fresh release worker process with one `rtp` session, a fresh Janus with
//! one RTP mountpoint, and one producer thread sending every packet to both
//! (see `producer.rs`). Both relays ingest all the time; the viewers of one
//! step watch one relay. For each N the two relays take turns (the order
//! alternates from step to step so drift of a noisy machine falls on both):
//! N viewers join, every one waits for a keyframe, a warm-up, then one
//! window measures the relay process's CPU (its CPU-time clock) and
//! RSS, what every viewer received and the delay of every frame; then the
//! viewers leave. A relay's steps stop at the first that fails.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_schema::{OnWorkerLost, Role, SessionId, SourceSpec, Subjects};
use serde_json::{json, Value};
use system_tests::viewer;
use system_tests::NatsServer;
use webrtc::api::API;

use super::egress;
use super::janus::{self, Janus};
use super::load::{self, Leave, LoadViewer, RECORDING};
use super::producer::{Clip, Destination, Producer, Sent, StreamSpec};
use super::{
    bus_of, cpu_windows, create, heartbeat, loadavg, ms, proc_cpu_wait, proc_rss_kib,
    proc_user_system_ticks, stop, Bus, Dist, Env, Plan, Report,
};

/// A stream whose loop starts with an IDR and has one every second.
pub fn streams(quick: bool) -> Vec<StreamSpec> {
    vec![
        StreamSpec {
            label: "720p30 4 Mbit/s",
            width: 1280,
            height: 720,
            fps: 30,
            bitrate_kbps: 4000,
            frames: 60,
            gop: 30,
        },
        StreamSpec {
            label: "1080p60 12 Mbit/s",
            width: 1920,
            height: 1080,
            fps: 60,
            bitrate_kbps: 12_000,
            frames: if quick { 60 } else { 120 },
            gop: 60,
        },
    ]
}

/// When a step counts as failed delivery.
const MIN_DELIVERED: f64 = 0.95;
const MAX_P99: Duration = Duration::from_millis(200);
/// Longest wait for every viewer of a step to get a keyframe.
const KEY_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Ours,
    Janus,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Ours => "ours",
            Side::Janus => "Janus",
        }
    }
    /// Index of the relay in the producer's destinations.
    fn dest(self) -> usize {
        match self {
            Side::Ours => 0,
            Side::Janus => 1,
        }
    }
}

/// One measured step.
#[derive(Debug, Clone)]
struct Step {
    side: Side,
    n: usize,
    relay_cores: f64,
    cores_per_viewer: f64,
    rss_kib: u64,
    rss_mib_per_viewer: f64,
    /// Fraction of the frames sent in the window that the slowest viewer saw.
    min_delivered: f64,
    mean_delivered: f64,
    loss: f64,
    /// Median over viewers of video kbit/s received.
    kbps: f64,
    delay: Option<Dist>,
    /// From the producer's send of a frame's last packet to the relay's send
    /// of it to a viewer, seen on loopback (see `egress`).
    egress: Result<EgressDelay, String>,
    /// Frames that arrived whole (no packet missing from the one carrying
    /// the frame id to the marker), as a fraction of the frames sent in the
    /// window times the viewers.
    whole: f64,
    /// p99 delay with every frame that did not arrive whole counted as
    /// later than any that did; `None` when more than 1% were not whole.
    whole_p99: Option<Duration>,
    bench_cores: f64,
    host_cores: f64,
    /// The relay's threads' run-queue wait over the window, per second:
    /// how many of them were runnable but kept from a CPU, on average.
    cpu_wait: f64,
    /// The relay's system time over the window as a share of its user +
    /// system time (`None` with too few ticks to tell).
    kernel_share: Option<f64>,
    /// UDP datagrams the host dropped for full receive buffers (any socket).
    host_udp_drops: u64,
    /// Ours: the one UDP port's send calls over the window (the worker's
    /// counters).
    sends: Option<Sends>,
    no_key: usize,
    failed: Option<String>,
}

/// Send calls and datagrams per viewer per second over a window.
#[derive(Debug, Clone, Copy)]
struct Sends {
    calls: f64,
    datagrams: f64,
}

/// The one UDP port's (send calls, datagrams sent) so far, from the
/// worker's `$SRV.STATS` data; `None` without the one port.
async fn udp_sends(client: &async_nats::Client) -> Option<(u64, u64)> {
    let udp = system_tests::worker_stats(client).await["udp"].clone();
    Some((udp["sends"].as_u64()?, udp["packets"].as_u64()?))
}

impl Step {
    fn json(&self) -> Value {
        json!({
            "relay": self.side.name(), "n": self.n, "relay_cores": self.relay_cores,
            "cores_per_viewer": self.cores_per_viewer, "rss_kib": self.rss_kib,
            "rss_mib_per_viewer": self.rss_mib_per_viewer,
            "min_delivered": self.min_delivered, "mean_delivered": self.mean_delivered,
            "loss": self.loss, "median_viewer_kbps": self.kbps,
            "delay": self.delay.map(|d| d.json()), "bench_cores": self.bench_cores,
            "whole_frames": self.whole,
            "egress": match &self.egress {
                Ok(e) => json!({"delay": e.delay.map(|d| d.json()),
                    "keyframes": e.keyframes.map(|d| d.json()), "frames": e.frames,
                    "without_egress_time": e.missing, "captured_packets": e.captured}),
                Err(e) => json!({"error": e}),
            },
            "p99_ms_broken_as_late": self.whole_p99.map(|d| d.as_secs_f64() * 1e3),
            "host_busy_cores": self.host_cores, "relay_cpu_wait": self.cpu_wait,
            "relay_kernel_share": self.kernel_share, "viewers_without_keyframe": self.no_key,
            "host_udp_rcvbuf_drops": self.host_udp_drops,
            "send_calls_per_viewer_s": self.sends.map(|s| s.calls),
            "datagrams_per_viewer_s": self.sends.map(|s| s.datagrams),
            "failed": self.failed,
        })
    }
}

/// Everything of one relay for one stream.
struct RelayRun {
    side: Side,
    pid: u32,
    base_cores: f64,
    base_rss: u64,
    steps: Vec<Step>,
    /// Join request to the first keyframe packet, and to the first packet.
    joins: Vec<Duration>,
    first_packets: Vec<Duration>,
    join_errors: Vec<String>,
}

impl RelayRun {
    fn failed(&self) -> bool {
        self.steps.iter().any(|s| s.failed.is_some())
    }
    /// The last step that delivered.
    fn best(&self) -> Option<&Step> {
        self.steps.iter().rev().find(|s| s.failed.is_none())
    }
}

/// The host's UDP datagrams dropped for a full receive buffer, so far.
fn udp_rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// A viewer of our worker, joined over NATS like the api does for a page.
async fn join_ours(bus: &Bus, id: &SessionId, api: &API) -> anyhow::Result<LoadViewer> {
    let pending = viewer::request(bus, id, Role::View).await?;
    let (pc, rx) = load::peer(api, pending.sent()).await?;
    let rtc = pending.connect(bus, pc.clone()).await?;
    Ok(LoadViewer {
        pc,
        rx,
        leave: Leave::Ours(rtc),
    })
}

struct Relays<'a> {
    bus: &'a Bus,
    session: &'a SessionId,
    janus: &'a Janus,
    api: &'a API,
}

impl Relays<'_> {
    async fn join(&self, side: Side) -> anyhow::Result<LoadViewer> {
        match side {
            Side::Ours => join_ours(self.bus, self.session, self.api).await,
            Side::Janus => self.janus.watch(self.api).await,
        }
    }

    async fn leave_all(&self, viewers: Vec<LoadViewer>) {
        let leaves = viewers.into_iter().map(|v| async move {
            match &v.leave {
                Leave::Ours(rtc) => {
                    let _ = rtc.leave(self.bus).await;
                    rtc.close().await;
                }
                Leave::Janus { session } => {
                    self.janus.leave(*session).await;
                    let _ = v.pc.close().await;
                }
            }
        });
        futures::future::join_all(leaves).await;
    }
}

/// The p99 of `expected` frames of which `whole` arrived whole with these
/// delays and the rest never did (counted as later than any): `None` when
/// the rank falls among the missing ones. Sorts `whole`.
fn p99_broken_as_late(whole: &mut [Duration], expected: usize) -> Option<Duration> {
    let total = expected.max(whole.len());
    if total == 0 {
        return None;
    }
    whole.sort();
    let rank = ((0.99 * total as f64).ceil() as usize).max(1);
    whole.get(rank - 1).copied()
}

/// Egress delays of one capture window.
#[derive(Debug, Clone, Copy)]
struct EgressDelay {
    delay: Option<Dist>,
    /// The IDR frames alone: one frame in `gop`, so at N=1 they are the
    /// p99.
    keyframes: Option<Dist>,
    /// Frames read by viewers in the window, and those of them whose
    /// frame end the capture did not see.
    frames: usize,
    missing: usize,
    /// Outgoing packets the capture looked at.
    captured: u64,
}

/// A window of its own after the CPU window: captures the relay's outgoing
/// frame ends on loopback while the viewers record the frames they read,
/// and times each from the producer's send to the relay's.
async fn egress_window(
    viewers: &[LoadViewer],
    sent: &Sent,
    side: Side,
    window: Duration,
) -> Result<EgressDelay, String> {
    let ssrcs = viewers
        .iter()
        .filter_map(|v| v.rx.video_ssrc.get().copied())
        .collect();
    for v in viewers {
        v.rx.arrivals.lock().expect("arrivals").clear();
    }
    // Producer instants (monotonic) against the capture's wall clock.
    let (mono, wall) = (Instant::now(), std::time::SystemTime::now());
    let capture = egress::Capture::start(ssrcs).map_err(|e| format!("capture: {e}"))?;
    RECORDING.store(true, Ordering::Relaxed);
    tokio::time::sleep(window).await;
    RECORDING.store(false, Ordering::Relaxed);
    let seen = tokio::task::spawn_blocking(move || capture.finish())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("capture: {e}"))?;
    let (mut delays, mut key_delays, mut frames, mut missing) = (Vec::new(), Vec::new(), 0, 0);
    for v in viewers {
        let Some(&ssrc) = v.rx.video_ssrc.get() else {
            continue;
        };
        for a in v.rx.arrivals.lock().expect("arrivals").drain(..) {
            let Some(s) = sent.sent_at(side.dest(), a.id) else {
                continue;
            };
            frames += 1;
            match seen.marker_at.get(&(ssrc, a.rtp_ts)) {
                Some(&at) => {
                    let sent_wall = wall + s.saturating_duration_since(mono)
                        - mono.saturating_duration_since(s);
                    let delay = at.duration_since(sent_wall).unwrap_or_default();
                    delays.push(delay);
                    if sent.is_keyframe(a.id) {
                        key_delays.push(delay);
                    }
                }
                None => missing += 1,
            }
        }
    }
    Ok(EgressDelay {
        delay: Dist::of(&delays),
        keyframes: Dist::of(&key_delays),
        frames,
        missing,
        captured: seen.packets,
    })
}

/// A table cell of [`Step::egress`].
fn egress_cell(s: &Step, f: fn(&Dist) -> Duration) -> String {
    match &s.egress {
        Ok(e) => e.delay.map_or("-".into(), |d| ms(f(&d))),
        Err(e) => format!("({e})"),
    }
}

/// The table cell of [`Step::whole_p99`].
fn broken_late(s: &Step) -> String {
    s.whole_p99.map_or_else(
        || format!("over 1% broken ({:.1}%)", (1.0 - s.whole).max(0.0) * 100.0),
        ms,
    )
}

/// One step: `n` viewers on `side`, measured, then gone.
async fn step(relays: &Relays<'_>, run: &mut RelayRun, n: usize, sent: &Sent, plan: &Plan) -> Step {
    let side = run.side;
    let mut viewers = Vec::with_capacity(n);
    let mut join_error = None;
    for _ in 0..n {
        match relays.join(side).await {
            Ok(v) => viewers.push(v),
            Err(e) => {
                join_error = Some(format!("{e:#}"));
                break;
            }
        }
    }
    let deadline = Instant::now() + KEY_DEADLINE;
    while Instant::now() < deadline && !viewers.iter().all(|v| v.rx.first_key.get().is_some()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    run.joins
        .extend(viewers.iter().filter_map(|v| v.rx.first_key.get().copied()));
    run.first_packets.extend(
        viewers
            .iter()
            .filter_map(|v| v.rx.first_packet.get().copied()),
    );
    let no_key = n - viewers
        .iter()
        .filter(|v| v.rx.first_key.get().is_some())
        .count();
    tokio::time::sleep(plan.warmup).await;

    for v in &viewers {
        v.rx.arrivals.lock().expect("arrivals").clear();
    }
    let snap = |v: &LoadViewer| {
        (
            v.rx.frames.load(Ordering::Relaxed),
            v.rx.packets.load(Ordering::Relaxed),
            v.rx.lost.load(Ordering::Relaxed),
            v.rx.bytes.load(Ordering::Relaxed),
        )
    };
    let f0 = sent.frames.load(Ordering::Relaxed);
    let s0: Vec<_> = viewers.iter().map(snap).collect();
    let drops0 = udp_rcvbuf_errors();
    RECORDING.store(true, Ordering::Relaxed);
    let sends0 = match side {
        Side::Ours => udp_sends(&relays.bus.client).await,
        Side::Janus => None,
    };
    if std::env::var_os("BENCH_MARK").is_some() {
        eprintln!("MARK {} {} {}", run.pid, n, run.side.name());
    }
    let (t0, wait0) = (Instant::now(), proc_cpu_wait(run.pid));
    let ticks0 = proc_user_system_ticks(run.pid);
    let (cores, bench_cores, host_cores) = cpu_windows(&[run.pid], plan.relay_window).await;
    RECORDING.store(false, Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    let sends = match (sends0, udp_sends(&relays.bus.client).await) {
        (Some((c0, d0)), Some((c1, d1))) => Some(Sends {
            calls: c1.saturating_sub(c0) as f64 / secs / n as f64,
            datagrams: d1.saturating_sub(d0) as f64 / secs / n as f64,
        }),
        _ => None,
    };
    let cpu_wait = proc_cpu_wait(run.pid).saturating_sub(wait0).as_secs_f64() / secs;
    let ticks1 = proc_user_system_ticks(run.pid);
    let (user, system) = (
        ticks1.0.saturating_sub(ticks0.0),
        ticks1.1.saturating_sub(ticks0.1),
    );
    // Under 50 ticks (0.5 s of CPU) a tick is 2% of the share or more.
    let kernel_share = (user + system >= 50).then(|| system as f64 / (user + system) as f64);
    let f1 = sent.frames.load(Ordering::Relaxed);
    let s1: Vec<_> = viewers.iter().map(snap).collect();
    let host_udp_drops = udp_rcvbuf_errors() - drops0;
    let rss = proc_rss_kib(&run.pid.to_string());
    // Give the last frames of the window time to arrive before reading
    // the arrivals (they were recorded until RECORDING went off).
    let frames_sent = (f1 - f0).max(1) as f64;
    let mut delivered: Vec<f64> = s0
        .iter()
        .zip(&s1)
        .map(|(a, b)| (b.0 - a.0) as f64 / frames_sent)
        .collect();
    // Viewers that never joined count as receiving nothing.
    delivered.extend(std::iter::repeat_n(0.0, n - viewers.len()));
    let (pk, lost): (u64, u64) = s0
        .iter()
        .zip(&s1)
        .fold((0, 0), |(p, l), (a, b)| (p + b.1 - a.1, l + b.2 - a.2));
    let mut kbps: Vec<f64> = s0
        .iter()
        .zip(&s1)
        .map(|(a, b)| (b.3 - a.3) as f64 * 8.0 / 1e3 / secs)
        .collect();
    kbps.sort_by(f64::total_cmp);
    let mut delays = Vec::new();
    let mut whole_delays = Vec::new();
    let mut unmatched = 0usize;
    for v in &viewers {
        for a in v.rx.arrivals.lock().expect("arrivals").drain(..) {
            match sent.sent_at(side.dest(), a.id) {
                Some(s) => {
                    let d = a.at.saturating_duration_since(s);
                    delays.push(d);
                    if a.whole {
                        whole_delays.push(d);
                    }
                }
                None => unmatched += 1,
            }
        }
    }
    let delay = Dist::of(&delays);
    let expected = (f1 - f0) as usize * viewers.len();
    let whole = whole_delays.len() as f64 / expected.max(1) as f64;
    let whole_p99 = p99_broken_as_late(&mut whole_delays, expected);
    let min_delivered = delivered.iter().copied().fold(f64::INFINITY, f64::min);
    let mean_delivered = delivered.iter().sum::<f64>() / delivered.len().max(1) as f64;
    let mut failed = Vec::new();
    if let Some(e) = join_error {
        failed.push(format!("join failed after {} viewers: {e}", viewers.len()));
    }
    if no_key > 0 {
        failed.push(format!(
            "{no_key} viewers without a keyframe after {KEY_DEADLINE:?}"
        ));
    }
    if min_delivered < MIN_DELIVERED {
        failed.push(format!(
            "slowest viewer got {:.1}% of the frames",
            min_delivered * 100.0
        ));
    }
    if delay.is_some_and(|d| d.p99 > MAX_P99) {
        failed.push(format!(
            "p99 delay {} > {}",
            ms(delay.expect("some").p99),
            ms(MAX_P99)
        ));
    }
    if unmatched > 0 {
        eprintln!("      {unmatched} arrivals had no send record");
    }
    let egress = egress_window(&viewers, sent, side, plan.egress_window).await;
    let s = Step {
        side,
        n,
        relay_cores: cores[0],
        cores_per_viewer: (cores[0] - run.base_cores) / n as f64,
        rss_kib: rss,
        rss_mib_per_viewer: (rss as f64 - run.base_rss as f64) / 1024.0 / n as f64,
        min_delivered,
        mean_delivered,
        loss: lost as f64 / (pk + lost).max(1) as f64,
        kbps: kbps.get(kbps.len() / 2).copied().unwrap_or(0.0),
        delay,
        egress,
        whole,
        whole_p99,
        bench_cores,
        host_cores,
        cpu_wait,
        kernel_share,
        host_udp_drops,
        sends,
        no_key,
        failed: (!failed.is_empty()).then(|| failed.join("; ")),
    };
    eprintln!(
        "    {} N={n}: {:.3} cores ({:.4}/viewer), RSS {:.1} MiB, slowest {:.1}% frames, loss {:.2}% (host UDP buffer drops {host_udp_drops}), delay {}, egress {}, relay threads waiting for a CPU {:.2}, bench {:.2} cores, host {:.2}{}",
        side.name(),
        s.relay_cores,
        s.cores_per_viewer,
        rss as f64 / 1024.0,
        min_delivered * 100.0,
        s.loss * 100.0,
        delay.map_or("-".into(), |d| format!("p50 {} p99 {}", ms(d.p50), ms(d.p99))),
        match &s.egress {
            Ok(e) => format!(
                "{}, IDR frames {} ({} of {} frames without an egress time, {} packets captured)",
                e.delay.map_or("-".into(), |d| format!("p50 {} p99 {}", ms(d.p50), ms(d.p99))),
                e.keyframes.map_or("-".into(), |d| format!("p50 {} max {}", ms(d.p50), ms(d.max))),
                e.missing,
                e.frames,
                e.captured
            ),
            Err(e) => e.clone(),
        },
        cpu_wait,
        bench_cores,
        host_cores,
        s.failed.as_ref().map_or(String::new(), |f| format!(" FAILED: {f}"))
    );
    relays.leave_all(viewers).await;
    tokio::time::sleep(plan.warmup).await;
    s
}

/// What section 6 found for one stream, for the tables.
struct StreamResult {
    spec: StreamSpec,
    clip_bps: f64,
    runs: Vec<RelayRun>,
    producer_late: u64,
    bench_base: f64,
    ours_failed: Option<String>,
}

pub async fn bench_relays(env: &Env, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("[6] relays side by side: ours and Janus, same RTP stream");
    let chosen: Vec<StreamSpec> = streams(plan.quick)
        .into_iter()
        .filter(|s| {
            plan.relay_stream
                .as_ref()
                .is_none_or(|l| s.label.starts_with(l.as_str()))
        })
        .collect();
    if chosen.is_empty() {
        let labels: Vec<&str> = streams(plan.quick).iter().map(|s| s.label).collect();
        anyhow::bail!(
            "--stream {:?} matches none of the streams: {}",
            plan.relay_stream.as_deref().unwrap_or_default(),
            labels.join(", ")
        );
    }
    janus::available()?;
    let floor_window = if plan.quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(1)
    };
    let floor =
        tokio::task::spawn_blocking(move || system_tests::srtp_floor::measure(floor_window))
            .await?;
    let udp = tokio::task::spawn_blocking(move || system_tests::udp_floor::measure(floor_window))
        .await?
        .map_err(|e| report.note(format!("6: UDP send floor not measured: {e}")))
        .ok();
    let api = load::api(!plan.plain_receivers)?;
    let mut results = Vec::new();
    for spec in chosen {
        match relay_stream(env, plan, &api, spec).await {
            Ok(r) => results.push(r),
            Err(e) => report.note(format!("6 {}: {e:#}", spec.label)),
        }
    }
    write_tables(report, plan, &results, &floor, udp.as_ref());
    Ok(())
}

async fn relay_stream(
    env: &Env,
    plan: &Plan,
    api: &API,
    spec: StreamSpec,
) -> anyhow::Result<StreamResult> {
    eprintln!("  stream {}", spec.label);
    let clip = Arc::new(tokio::task::spawn_blocking(move || Clip::encode(spec)).await??);
    eprintln!(
        "    clip: {} frames encoded in {:.1} s, {:.2} Mbit/s video, {:.0} packets/s",
        spec.frames,
        clip.encode_time.as_secs_f64(),
        clip.video_bps / 1e6,
        clip.packets_per_s
    );
    let tag = format!("{}p{}", spec.height, spec.fps);
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let mut hb = client
        .subscribe(Subjects::default().heartbeat_any())
        .await?;
    let wid = format!("w-relay-{tag}");
    // The default of 32 viewers per session would refuse the larger steps;
    // Janus has no such limit.
    // One UDP port for every peer, batched, as docker-compose runs
    // workers (or, with --per-peer-ports, webrtc-rs's port per peer).
    let udp_port = system_tests::free_udp_port().to_string();
    let mut envs = vec![("MAX_VIEWERS", "1000")];
    if !plan.per_peer_ports {
        envs.push(("UDP_PORT", udp_port.as_str()));
    }
    let worker = env.spawn_worker(&nats.url(), &wid, &envs);
    heartbeat(&mut hb, &wid, Duration::from_secs(20), |_| true).await?;
    drop(hb);
    let bus = bus_of(&client, Duration::from_secs(15));
    let janus = Janus::start(&env.out_dir.join("logs").join(format!("janus-{tag}.log"))).await?;

    let (vport, aport) = (system_tests::free_udp_port(), system_tests::free_udp_port());
    let ours = Destination {
        video: ([127, 0, 0, 1], vport).into(),
        audio: ([127, 0, 0, 1], aport).into(),
    };
    let session = SessionId::parse(format!("relay-{tag}")).expect("id");
    // The producer starts first: until the session binds its ports, the
    // kernel drops what is sent to them. The create reply comes with the
    // first access unit.
    let producer = Producer::start(clip.clone(), vec![ours, janus.input])?;
    let source = SourceSpec::Rtp {
        video_port: vport,
        audio_port: Some(aport),
        bind: "127.0.0.1".into(),
        video_payload_type: super::producer::VIDEO_PT,
        audio_payload_type: super::producer::AUDIO_PT,
    };
    // Without our session (a worker without the `rtp` source), Janus
    // alone is measured and the failure noted.
    let ours_failed = create(&bus, Some(&session), source, OnWorkerLost::End)
        .await
        .err()
        .map(|e| format!("our rtp session: {} {}", e.code.as_str(), e.message));

    tokio::time::sleep(plan.warmup * 2).await;
    let pids = [worker.child.id(), janus.pid()];
    let (base, bench_base, host) = cpu_windows(&pids, plan.relay_window).await;
    let mut runs: Vec<RelayRun> = [Side::Ours, Side::Janus]
        .into_iter()
        .zip(pids)
        .zip(base)
        .filter(|((side, _), _)| *side == Side::Janus || ours_failed.is_none())
        .map(|((side, pid), cores)| RelayRun {
            side,
            pid,
            base_cores: cores,
            base_rss: proc_rss_kib(&pid.to_string()),
            steps: Vec::new(),
            joins: Vec::new(),
            first_packets: Vec::new(),
            join_errors: Vec::new(),
        })
        .collect();
    for r in &runs {
        eprintln!(
            "    {} N=0: {:.3} cores, RSS {:.1} MiB",
            r.side.name(),
            r.base_cores,
            r.base_rss as f64 / 1024.0
        );
    }
    eprintln!("    bench (producer, idle client) {bench_base:.3} cores, host busy {host:.2}");
    let relays = Relays {
        bus: &bus,
        session: &session,
        janus: &janus,
        api,
    };
    for (k, &n) in plan.relay_viewers.iter().enumerate() {
        let mut order: Vec<usize> = (0..runs.len()).collect();
        if k % 2 == 1 {
            order.reverse();
        }
        for i in order {
            if runs[i].failed() {
                continue;
            }
            let s = step(&relays, &mut runs[i], n, &producer.sent, plan).await;
            if let Some(f) = &s.failed {
                runs[i].join_errors.push(format!("N={n}: {f}"));
            }
            runs[i].steps.push(s);
        }
        if runs.iter().all(RelayRun::failed) {
            break;
        }
    }
    let late = producer.sent.late.load(Ordering::Relaxed);
    drop(producer);
    let _ = stop(&bus, &session).await;
    eprintln!("    load average {}", loadavg());
    Ok(StreamResult {
        spec,
        clip_bps: clip.video_bps,
        runs,
        producer_late: late,
        bench_base,
        ours_failed,
    })
}

fn write_tables(
    report: &mut Report,
    plan: &Plan,
    results: &[StreamResult],
    floor: &system_tests::srtp_floor::SrtpFloor,
    udp: Option<&system_tests::udp_floor::UdpFloor>,
) {
    use system_tests::srtp_floor::profile_name;
    let mut md = String::new();
    md.push_str(&format!(
        "Failure: a step fails when a viewer has no keyframe {} s after joining, the slowest viewer sees < {:.0}% of the frames sent in the window, or the p99 frame delay exceeds {}; a relay's steps stop at its first failure. Delay: from the producer's send of a frame's last packet to that relay, to the arrival at the viewer of the frame's last packet (marker), found by the SEI frame id. Cores/viewer = (relay cores at N − at N=0) / N; viewers/core = 1 / that. SRTP floor: {}, sealed {}, with 1200-byte packets, {:.0} packets/s = {:.0} Mbit/s on one core (webrtc-srtp's `Context`: {:.0} packets/s); floor/viewer = cores one viewer's stream costs at that rate. Whole frames: frames that arrived with no packet missing (from the one carrying the frame id to the marker; the load client repairs nothing, for either relay), over the frames sent in the window times the viewers; p99, broken = late: the p99 delay when every frame that did not arrive whole counts as later than any that did (a viewer without it waits for a repair or the next keyframe).\n\n",
        KEY_DEADLINE.as_secs(),
        MIN_DELIVERED * 100.0,
        ms(MAX_P99),
        profile_name(floor.profile),
        floor.sealer.name(),
        floor.packets_per_sec,
        floor.mbit_per_sec,
        floor
            .case(
                system_tests::srtp_floor::Sealer::WebrtcSrtp,
                floor.profile,
                system_tests::srtp_floor::PacketKind::VideoFuA
            )
            .map_or(f64::NAN, |c| c.packets_per_sec),
    ));
    if let Some(u) = udp {
        md.push_str(&format!(
            "Send floor: one core sends {:.0} {}-byte UDP datagrams/s over loopback with one `sendto` each ({:.1}% delivered), {:.0}/s as GSO runs of {} (one `sendmsg` each, {:.1}% delivered) to plain sockets and {:.0}/s to sockets with UDP receive offload on ({:.1}% delivered), {:.0}/s when a run to each of {} such sockets goes in one `sendmmsg` ({:.1}% delivered), the best of {} runs each; its CPU includes the loopback delivery, as the relays' does. Receivers: {}. × SRTP + send floor = cores/viewer ÷ (the SRTP floor + the viewer's packets at the GSO rate to these receivers): what no relay on this loopback can go below.\n\n",
            u.sendto.packets_per_sec,
            system_tests::udp_floor::DATAGRAM,
            u.sendto.delivered * 100.0,
            u.gso.packets_per_sec,
            system_tests::udp_floor::GSO_RUN,
            u.gso.delivered * 100.0,
            u.gso_gro.packets_per_sec,
            u.gso_gro.delivered * 100.0,
            u.gso_gro_mmsg.packets_per_sec,
            system_tests::udp_floor::RECEIVERS,
            u.gso_gro_mmsg.delivered * 100.0,
            system_tests::udp_floor::TRIES,
            if plan.plain_receivers {
                "plain sockets, one datagram per read (`--plain-receivers`), so a GSO run sent over loopback is delivered, and billed to its sender, datagram by datagram"
            } else {
                "each viewer's socket has UDP receive offload on, so a GSO run sent over loopback is delivered whole, once, as a viewer host's NIC would coalesce it on its own machine; a relay sending one datagram per `sendto` (Janus) pays the same either way"
            },
        ));
        if let Some((per_call, per_datagram)) = u.call_cost(!plan.plain_receivers) {
            md.push_str(&format!(
                "Send calls: ours' send calls on its one UDP port and the datagrams they carried per viewer per second over the window (the worker's counters), audio and reports included; Janus sends each datagram with its own `sendto`. A call costs {:.2} µs plus {:.3} µs per datagram here (the line through the send floor's `sendto` and GSO cases), so × SRTP + its calls' floor = cores/viewer ÷ (the SRTP floor + what those calls cost at that price): the least a relay sending as ours does could cost.\n\n",
                per_call * 1e6,
                per_datagram * 1e6,
            ));
        }
    }
    md.push_str("| Stream | N | Relay | Relay cores | Cores/viewer | Viewers/core | × SRTP floor | × SRTP + send floor | Send calls/viewer/s (datagrams/call) | × SRTP + its calls' floor | Kernel share | RSS MiB/viewer | Slowest viewer frames | Loss (host UDP drops) | Whole frames | Delay p50 | Delay p99 | p99, broken = late | Egress p50 | Egress p99 | Bench cores | Result |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let mut data = Vec::new();
    let mut headline = Vec::new();
    let mut ratio_md = String::from("\nRatios ours / Janus at every N both delivered (below 1: ours cheaper or faster; p99 broken = late: \"ours only\" where only Janus lost more than 1% of its frames):\n\n| Stream | N | Cores/viewer | RSS/viewer | Delay p50 | Delay p99 | p99, broken = late | Egress p50 | Egress p99 |\n|---|---|---|---|---|---|---|---|---|\n");
    for r in results {
        let kbps = r.clip_bps / 1e3;
        let floor_cpv = floor
            .cores_per_viewer(floor.profile, kbps)
            .unwrap_or(f64::NAN);
        // The send floor adds the viewer's packets (video + 50 Opus/s) at
        // the GSO rate.
        let send_cpv = udp.map_or(f64::NAN, |u| {
            let gso = if plan.plain_receivers {
                u.gso
            } else {
                u.gso_gro
            };
            (kbps * 1000.0 / 8.0 / 1200.0 + 50.0) / gso.packets_per_sec
        });
        let floor2_cpv = floor_cpv + send_cpv;
        let call_cost = udp.and_then(|u| u.call_cost(!plan.plain_receivers));
        for run in &r.runs {
            md.push_str(&format!(
                "| {} | 0 | {} | {:.3} | | | | | | | | RSS {:.1} MiB | | | | | | | | | {:.2} | |\n",
                r.spec.label,
                run.side.name(),
                run.base_cores,
                run.base_rss as f64 / 1024.0,
                r.bench_base
            ));
        }
        let max_n = r
            .runs
            .iter()
            .flat_map(|x| x.steps.iter().map(|s| s.n))
            .max()
            .unwrap_or(0);
        for &n in plan.relay_viewers.iter().filter(|&&n| n <= max_n) {
            for run in &r.runs {
                let Some(s) = run.steps.iter().find(|s| s.n == n) else {
                    continue;
                };
                md.push_str(&format!(
                    "| {} | {n} | {} | {:.3} | {:.4} | {:.0} | {:.1}× | {:.1}× | {} | {} | {} | {:.2} | {:.1}% | {:.2}% ({}) | {:.1}% | {} | {} | {} | {} | {} | {:.2} | {} |\n",
                    r.spec.label,
                    run.side.name(),
                    s.relay_cores,
                    s.cores_per_viewer,
                    1.0 / s.cores_per_viewer.max(1e-6),
                    s.cores_per_viewer / floor_cpv,
                    s.cores_per_viewer / floor2_cpv,
                    s.sends.map_or("-".into(), |c| format!(
                        "{:.0} ({:.1})",
                        c.calls,
                        c.datagrams / c.calls.max(1e-9)
                    )),
                    match (s.sends, call_cost) {
                        (Some(c), Some((per_call, per_datagram))) => format!(
                            "{:.1}×",
                            s.cores_per_viewer
                                / (floor_cpv + c.calls * per_call + c.datagrams * per_datagram)
                        ),
                        _ => "-".into(),
                    },
                    s.kernel_share.map_or("-".into(), |k| format!("{:.0}%", k * 100.0)),
                    s.rss_mib_per_viewer,
                    s.min_delivered * 100.0,
                    s.loss * 100.0,
                    s.host_udp_drops,
                    s.whole * 100.0,
                    s.delay.map_or("-".into(), |d| ms(d.p50)),
                    s.delay.map_or("-".into(), |d| ms(d.p99)),
                    broken_late(s),
                    egress_cell(s, |d| d.p50),
                    egress_cell(s, |d| d.p99),
                    s.bench_cores,
                    s.failed.as_deref().map_or("ok".to_string(), |f| format!("failed: {f}")),
                ));
            }
        }
        if let Some(e) = &r.ours_failed {
            report.note(format!("6 {}: {e}; Janus measured alone", r.spec.label));
        }
        // Ratios at every N both relays delivered.
        let side = |s: Side| r.runs.iter().find(|x| x.side == s);
        let no_run = |s: Side| RelayRun {
            side: s,
            pid: 0,
            base_cores: 0.0,
            base_rss: 0,
            steps: Vec::new(),
            joins: Vec::new(),
            first_packets: Vec::new(),
            join_errors: Vec::new(),
        };
        let (o, j) = (no_run(Side::Ours), no_run(Side::Janus));
        let ours = side(Side::Ours).unwrap_or(&o);
        let janus = side(Side::Janus).unwrap_or(&j);
        let mut ratios = Vec::new();
        for s in &ours.steps {
            let Some(j) = janus.steps.iter().find(|j| j.n == s.n) else {
                continue;
            };
            if s.failed.is_some() || j.failed.is_some() {
                continue;
            }
            let d = |a: Option<Dist>, b: Option<Dist>, f: fn(&Dist) -> Duration| match (a, b) {
                (Some(a), Some(b)) => f(&a).as_secs_f64() / f(&b).as_secs_f64().max(1e-9),
                _ => f64::NAN,
            };
            let cpv = s.cores_per_viewer / j.cores_per_viewer;
            let rss = s.rss_mib_per_viewer / j.rss_mib_per_viewer;
            let (p50, p99) = (
                d(s.delay, j.delay, |x| x.p50),
                d(s.delay, j.delay, |x| x.p99),
            );
            let late = match (s.whole_p99, j.whole_p99) {
                (Some(a), Some(b)) => format!("{:.2}", a.as_secs_f64() / b.as_secs_f64().max(1e-9)),
                (Some(_), None) => "ours only".into(),
                (None, Some(_)) => "Janus only".into(),
                (None, None) => "neither".into(),
            };
            let eg = |x: &Step| x.egress.as_ref().ok().and_then(|e| e.delay);
            let (e50, e99) = (d(eg(s), eg(j), |x| x.p50), d(eg(s), eg(j), |x| x.p99));
            ratio_md.push_str(&format!(
                "| {} | {} | {cpv:.2} | {rss:.2} | {p50:.2} | {p99:.2} | {late} | {e50:.2} | {e99:.2} |\n",
                r.spec.label, s.n
            ));
            ratios.push(json!({
                "n": s.n,
                "cores_per_viewer": cpv,
                "rss_per_viewer": rss,
                "delay_p50": p50,
                "delay_p99": p99,
                "p99_broken_as_late": late,
                "egress_p50": e50,
                "egress_p99": e99,
            }));
        }
        let join_text = |v: &[Duration]| Dist::of(v).map_or("no sample".into(), |d| d.text());
        let best = |run: &RelayRun| {
            run.best().map_or("no step delivered".to_string(), |s| {
                format!(
                    "up to N={} delivered; at N={}: {:.4} cores/viewer ({:.0} viewers/core, {:.1}× SRTP floor), {:.2} MiB/viewer, delay p50 {} p99 {}",
                    s.n,
                    s.n,
                    s.cores_per_viewer,
                    1.0 / s.cores_per_viewer.max(1e-6),
                    s.cores_per_viewer / floor_cpv,
                    s.rss_mib_per_viewer,
                    s.delay.map_or("-".into(), |d| ms(d.p50)),
                    s.delay.map_or("-".into(), |d| ms(d.p99)),
                )
            })
        };
        let top_ratio = ratios.last().cloned();
        headline.push(format!(
            "{} ({:.2} Mbit/s video; SRTP floor {:.4} cores/viewer): ours {}; Janus {}{}",
            r.spec.label,
            r.clip_bps / 1e6,
            floor_cpv,
            best(ours),
            best(janus),
            top_ratio.as_ref().map_or(String::new(), |t| format!(
                "; ours/Janus at N={}: cores/viewer {:.2}, RSS/viewer {:.2}, delay p50 {:.2}, p99 {:.2}",
                t["n"], t["cores_per_viewer"].as_f64().unwrap_or(f64::NAN),
                t["rss_per_viewer"].as_f64().unwrap_or(f64::NAN),
                t["delay_p50"].as_f64().unwrap_or(f64::NAN),
                t["delay_p99"].as_f64().unwrap_or(f64::NAN),
            ))
        ));
        report.row(
            &format!("6{}", ['a', 'b', 'c', 'd'][data.len().min(3)]),
            &format!("Join → first keyframe, {}", r.spec.label),
            format!(
                "to keyframe: ours {}; Janus {}. To the first video packet: ours {}; Janus {}",
                join_text(&ours.joins),
                join_text(&janus.joins),
                join_text(&ours.first_packets),
                join_text(&janus.first_packets)
            ),
            "every join of the steps above (sequential); ours from the NATS `session.join` request (what the api does on WebSocket open), Janus from the `watch` request, to the first RTP packet starting an IDR or SPS, and to the first video packet of any kind. Neither relay can ask this producer for a keyframe: ours sends a joining viewer the video since the producer's last IDR first (its `Gop`); Janus (defaults, no `videobufferkf`) starts a viewer at the live packets, so its first time includes the wait for the next IDR (one per second)",
            json!({
                "ours": Dist::of(&ours.joins).map(|d| d.json()),
                "janus": Dist::of(&janus.joins).map(|d| d.json()),
                "ours_first_packet": Dist::of(&ours.first_packets).map(|d| d.json()),
                "janus_first_packet": Dist::of(&janus.first_packets).map(|d| d.json()),
            }),
        );
        if r.producer_late > 0 {
            report.note(format!(
                "6 {}: the producer sent {} frames more than a frame interval late (the bench did not get the CPU)",
                r.spec.label, r.producer_late
            ));
        }
        for run in &r.runs {
            for e in &run.join_errors {
                report.note(format!("6 {} {}: {e}", r.spec.label, run.side.name()));
            }
        }
        data.push(json!({
            "stream": r.spec.label, "width": r.spec.width, "height": r.spec.height,
            "fps": r.spec.fps, "target_kbps": r.spec.bitrate_kbps,
            "clip_video_bps": r.clip_bps, "srtp_floor_cores_per_viewer": floor_cpv,
            "srtp_and_send_floor_cores_per_viewer": floor2_cpv,
            "bench_cores_n0": r.bench_base,
            "relays": r.runs.iter().map(|run| json!({
                "relay": run.side.name(), "n0_cores": run.base_cores, "n0_rss_kib": run.base_rss,
                "steps": run.steps.iter().map(Step::json).collect::<Vec<_>>(),
                "join_to_keyframe": Dist::of(&run.joins).map(|d| d.json()),
            })).collect::<Vec<_>>(),
            "ratios_ours_over_janus": ratios,
        }));
    }
    md.push_str(&ratio_md);
    md.push_str(&format!(
        "\nBench cores: the bench process (producer thread and the webrtc-rs load client) over the window; it shares the {} cores with the relays. Kernel share: the relay's system time over the window as a share of its user + system time (`/proc/PID/stat`, 10 ms ticks): the send path, with the loopback delivery to the viewers, is the kernel's.\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    ));
    report.row(
        "6",
        "Relays side by side (ours / Janus streaming), same RTP stream",
        headline.join(". "),
        &format!(
            "one producer thread sends every RTP packet of a pre-encoded loop (OpenH264, IDR each second, SEI frame ids) to a release worker's `rtp` session and to a Janus 1.1 RTP mountpoint; N webrtc-rs viewers (one shared API, no interceptors) join one relay at a time, N = {:?}; per step {:.0} s warm-up and a {:.0} s window; see the relay table",
            plan.relay_viewers,
            plan.warmup.as_secs_f64(),
            plan.relay_window.as_secs_f64()
        ),
        json!({
            "streams": data,
            "srtp_floor": {
                "profile": profile_name(floor.profile),
                "sealer": floor.sealer.name(),
                "packets_per_s": floor.packets_per_sec,
                "mbit_per_s": floor.mbit_per_sec,
                "aes_ni": floor.aes_ni,
                "cases": floor.cases.iter().map(|c| json!({
                    "sealer": c.sealer.name(),
                    "profile": profile_name(c.profile), "kind": c.kind.name(),
                    "packets_per_s": c.packets_per_sec, "mbit_per_s": c.mbit_per_sec,
                    "round_trip_ok": c.round_trip_ok,
                })).collect::<Vec<_>>(),
            },
            "udp_send_floor": udp.map(|u| json!({
                "datagram_bytes": system_tests::udp_floor::DATAGRAM,
                "sendto_packets_per_s": u.sendto.packets_per_sec,
                "sendto_delivered": u.sendto.delivered,
                "gso_run": system_tests::udp_floor::GSO_RUN,
                "gso_packets_per_s": u.gso.packets_per_sec,
                "gso_delivered": u.gso.delivered,
                "gso_to_gro_packets_per_s": u.gso_gro.packets_per_sec,
                "gso_to_gro_delivered": u.gso_gro.delivered,
                "gso_to_gro_sendmmsg_packets_per_s": u.gso_gro_mmsg.packets_per_sec,
                "gso_to_gro_sendmmsg_delivered": u.gso_gro_mmsg.delivered,
                "sendmmsg_messages": system_tests::udp_floor::RECEIVERS,
            })),
            "receivers": if plan.plain_receivers { "plain" } else { "gro" },
        }),
    );
    report.table("Relays side by side (section 6)", md);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn p99_counts_frames_that_never_arrived_whole_as_the_latest() {
        // 200 frames expected, all whole: the 198th smallest.
        let mut all: Vec<Duration> = (1..=200).rev().map(ms).collect();
        assert_eq!(p99_broken_as_late(&mut all, 200), Some(ms(198)));
        // Two of 200 missing: rank 198 is still among the whole ones.
        let mut most: Vec<Duration> = (1..=198).map(ms).collect();
        assert_eq!(p99_broken_as_late(&mut most, 200), Some(ms(198)));
        // Three missing: the p99 is a broken frame.
        let mut fewer: Vec<Duration> = (1..=197).map(ms).collect();
        assert_eq!(p99_broken_as_late(&mut fewer, 200), None);
        // More arrivals than frames sent in the window (ones sent before it).
        let mut extra: Vec<Duration> = (1..=101).map(ms).collect();
        assert_eq!(p99_broken_as_late(&mut extra, 100), Some(ms(100)));
        assert_eq!(p99_broken_as_late(&mut [], 0), None);
    }
}
