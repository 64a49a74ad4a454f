//! Profile of the worker's fan-out hot path (issue 5).
//!
//! ```sh
//! cargo run --release -p system-tests --bin profile -- [--viewers 20] [--secs 15] [--kbps 4000] [--no-perf] [--one-port]
//! ```
//!
//! One process, two tokio runtimes with named threads: the worker
//! (`worker::run`, in-process) on `wkr-rt` threads, the webrtc-rs viewers on
//! `viewer-rt` threads; the synthetic source encodes on its own threads.
//! So the kernel's per-thread CPU times (`/proc/self/task/*/stat`) and the
//! sampled stacks (their thread name is the first frame) split the worker
//! from the viewers without guessing.
//!
//! Steps: one 1280x720@30 session at `--kbps`; CPU per thread group over
//! `--secs` with no viewer; `--viewers` viewers join over NATS (as in
//! `tests/tests/fanout.rs`) and all receive video; CPU again over `--secs`,
//! while `perf record` samples this process. Writes to `target/bench/`:
//! `profile.svg` (flame graph), `profile.folded` (collapsed stacks),
//! `profile.txt` (CPU table and the top functions, self and inclusive,
//! per side). Needs `perf` (Debian `linux-perf`) and `inferno`
//! (`cargo install inferno`) on PATH for the stacks; `--no-perf` measures
//! CPU only.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bus_schema::{Bus, CreateSession, Role, SessionId, Subjects};
use system_tests::srtp_floor::{measure, profile_name, SrtpFloor, PROFILES};
use system_tests::viewer::{self, Interceptors};
use system_tests::{wait_for, NatsServer};
use webrtc::srtp::protection_profile::ProtectionProfile;

const WORKER_THREADS: &str = "wkr-rt";
const VIEWER_THREADS: &str = "viewer-rt";

struct Args {
    viewers: usize,
    secs: u64,
    kbps: u32,
    perf: bool,
    srtp_only: bool,
    /// One UDP port for every peer (batched sends) instead of a port each.
    one_port: bool,
    out: PathBuf,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        viewers: 20,
        secs: 15,
        kbps: 4000,
        perf: true,
        srtp_only: false,
        one_port: false,
        out: PathBuf::from("target/bench"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--viewers" => a.viewers = value()?.parse()?,
            "--secs" => a.secs = value()?.parse()?,
            "--kbps" => a.kbps = value()?.parse()?,
            "--out" => a.out = value()?.into(),
            "--no-perf" => a.perf = false,
            "--srtp-only" => a.srtp_only = true,
            "--one-port" => a.one_port = true,
            _ => anyhow::bail!(
                "usage: profile [--viewers N] [--secs S] [--kbps K] [--out DIR] [--no-perf] [--srtp-only] [--one-port]"
            ),
        }
    }
    Ok(a)
}

/// CPU seconds (utime + stime) of this process's threads, by thread name.
fn thread_cpu() -> HashMap<String, f64> {
    let tick = 100.0; // USER_HZ on Linux
    let mut by_name = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for t in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let Some((comm, user, system)) = system_tests::proc_stat_cpu(&stat) else {
            continue;
        };
        let secs = (user + system) as f64 / tick;
        *by_name.entry(group(comm).to_owned()).or_insert(0.0) += secs;
    }
    by_name
}

/// Which side a thread belongs to, from its name.
fn group(comm: &str) -> &str {
    // udp-send: the worker's batched sender on its one UDP port; fanout:
    // the threads its sessions' fan-outs run on (one port).
    if comm.starts_with(WORKER_THREADS)
        || comm.starts_with("udp-send")
        || comm.starts_with("fanout")
    {
        "worker runtime (fan-out, signalling, NATS)"
    } else if comm.starts_with(VIEWER_THREADS) {
        "viewer clients (webrtc-rs, bench side)"
    } else if comm.starts_with("synthetic")
        || comm.starts_with("video")
        || comm.starts_with("audio")
    {
        "source threads (encoders)"
    } else {
        "other threads"
    }
}

/// Cores used per group over a window.
struct Window {
    secs: f64,
    cores: Vec<(String, f64)>,
}

async fn window(d: Duration) -> Window {
    let a = thread_cpu();
    let t = Instant::now();
    tokio::time::sleep(d).await;
    let b = thread_cpu();
    let secs = t.elapsed().as_secs_f64();
    let mut cores: Vec<(String, f64)> = b
        .iter()
        .map(|(k, v)| (k.clone(), (v - a.get(k).copied().unwrap_or(0.0)) / secs))
        .collect();
    cores.sort_by(|x, y| x.0.cmp(&y.0));
    Window { secs, cores }
}

impl Window {
    fn get(&self, g: &str) -> f64 {
        self.cores
            .iter()
            .find(|(k, _)| k.as_str() == g)
            .map(|(_, v)| *v)
            .unwrap_or(0.0)
    }
}

#[derive(Default)]
struct Counters {
    video_packets: AtomicU64,
    video_bytes: AtomicU64,
    audio_packets: AtomicU64,
}

struct Viewer {
    rtc: viewer::Viewer,
    counters: Arc<Counters>,
}

/// A webrtc-rs viewer joined over NATS, its receive path only counting.
async fn join(bus: &Bus, id: &SessionId) -> anyhow::Result<Viewer> {
    let (pending, pc) = viewer::start(bus, id, Role::View, Interceptors::Default).await?;
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    viewer::on_tracks(&pc, move |track, video| {
        let c = c.clone();
        async move {
            while let Ok((pkt, _)) = track.read_rtp().await {
                if video {
                    c.video_packets.fetch_add(1, Ordering::Relaxed);
                    c.video_bytes
                        .fetch_add(pkt.payload.len() as u64, Ordering::Relaxed);
                } else {
                    c.audio_packets.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    let rtc = pending.connect(bus, pc).await?;
    Ok(Viewer { rtc, counters })
}

/// `perf record` of this process, stopped with SIGINT.
struct Perf {
    child: std::process::Child,
    data: PathBuf,
}

fn start_perf(out: &Path) -> anyhow::Result<Perf> {
    let data = out.join("profile.perf.data");
    let child = Command::new("perf")
        .args([
            "record",
            "-e",
            "cpu-clock",
            "-F",
            "499",
            "--call-graph",
            "dwarf,16384",
            "-o",
        ])
        .arg(&data)
        .args(["-p", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("perf (Debian linux-perf) on PATH")?;
    Ok(Perf { child, data })
}

fn stop_perf(p: Perf) -> anyhow::Result<PathBuf> {
    let pid = p.child.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status()?;
    let out = p.child.wait_with_output()?;
    anyhow::ensure!(
        p.data.exists(),
        "perf wrote nothing: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(p.data)
}

/// perf script → folded stacks → flame graph; returns the folded text.
fn fold_and_draw(data: &Path, out: &Path) -> anyhow::Result<String> {
    let script = Command::new("perf")
        .args(["script", "-i"])
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .context("perf script")?;
    let mut collapse = Command::new("inferno-collapse-perf")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("inferno-collapse-perf on PATH (cargo install inferno)")?;
    {
        use std::io::Write;
        let mut stdin = collapse.stdin.take().context("stdin")?;
        let script = script.stdout;
        std::thread::spawn(move || stdin.write_all(&script));
    }
    let folded = collapse.wait_with_output()?.stdout;
    std::fs::write(out.join("profile.folded"), &folded)?;
    let svg = Command::new("inferno-flamegraph")
        .args([
            "--title",
            "worker fan-out: 1 session, N viewers (wkr-rt = worker, viewer-rt = clients)",
        ])
        .arg(out.join("profile.folded"))
        .output()
        .context("inferno-flamegraph on PATH")?;
    std::fs::write(out.join("profile.svg"), svg.stdout)?;
    Ok(String::from_utf8_lossy(&folded).into_owned())
}

/// A frame name without its hash suffix and generic noise.
fn clean(frame: &str) -> String {
    let f = frame.trim();
    let f = match f.rfind("::h") {
        Some(i) if f[i + 3..].len() == 16 && f[i + 3..].chars().all(|c| c.is_ascii_hexdigit()) => {
            &f[..i]
        }
        _ => f,
    };
    f.to_owned()
}

/// Cost centres of the fan-out path: a sample counts for a centre when any
/// frame of its stack contains one of the centre's markers.
const CENTRES: &[(&str, &[&str])] = &[
    (
        "UDP send syscall (kernel; on loopback incl. delivery to the receiver)",
        &[
            "__sys_sendto",
            "__sys_sendmsg",
            "udp_sendmsg",
            "udpv6_sendmsg",
        ],
    ),
    (
        "UDP receive syscall",
        &["__sys_recvfrom", "udp_recvmsg", "udpv6_recvmsg"],
    ),
    (
        "SRTP encrypt/decrypt (AES, GHASH, HMAC-SHA1)",
        &[
            "encrypt_rtp",
            "decrypt_rtp",
            "Polyval",
            "aes::",
            "sha1",
            "Hmac",
            "RtpSealer",
            "ring::aead",
            "ring_core",
        ],
    ),
    ("H.264 packetize", &["H264Payloader", "Packetizer"]),
    (
        "malloc/free",
        &["malloc", "_int_free", "libc_free", "unlink_chunk", "cfree"],
    ),
    (
        "scheduler, futex (task and thread wake-ups)",
        &[
            "futex",
            "finish_task_switch",
            "park_internal",
            "try_to_wake_up",
        ],
    ),
    (
        LOOPBACK_DELIVERY,
        &["net_rx_action", "process_backlog", "__netif_receive_skb"],
    ),
];

/// The receive path the loopback device runs in the sender's softirq:
/// queueing each datagram on the receiving socket and waking its reader.
/// Through a NIC the receiver's machine does this; the centre says how
/// much of a relay's time on this loopback is the viewers' work.
const LOOPBACK_DELIVERY: &str =
    "loopback delivery (the receiving socket's softirq, on a NIC the receiver's)";

/// The lines of a folded profile (`thread;frame;frame… count`): the
/// thread, the frames from the root, the sample count. Lines that do not
/// parse are skipped.
fn samples(folded: &str) -> impl Iterator<Item = (&str, std::str::Split<'_, char>, u64)> {
    folded.lines().filter_map(|line| {
        let (stack, count) = line.rsplit_once(' ')?;
        let count = count.parse::<u64>().ok()?;
        let mut frames = stack.split(';');
        let thread = frames.next()?;
        Some((thread, frames, count))
    })
}

/// Per side (thread group): its samples, and its samples in each of
/// [`CENTRES`].
type CentreCounts<'a> = HashMap<&'a str, (u64, Vec<u64>)>;

/// Counts a folded profile's samples by side and cost centre.
fn centre_counts(folded: &str) -> CentreCounts<'_> {
    let mut totals = CentreCounts::new();
    for (thread, frames, count) in samples(folded) {
        let frames: Vec<&str> = frames.collect();
        let e = totals
            .entry(group(thread))
            .or_insert_with(|| (0, vec![0; CENTRES.len()]));
        e.0 += count;
        for (i, (_, markers)) in CENTRES.iter().enumerate() {
            if frames.iter().any(|f| markers.iter().any(|m| f.contains(m))) {
                e.1[i] += count;
            }
        }
    }
    totals
}

/// The share of `side`'s samples in the centre named `name`.
fn centre_share(counts: &CentreCounts, side: &str, name: &str) -> Option<f64> {
    let i = CENTRES.iter().position(|(n, _)| *n == name)?;
    let (total, hits) = counts.get(side)?;
    (*total > 0).then(|| hits[i] as f64 / *total as f64)
}

/// Share of each side's samples per cost centre.
fn centres(totals: &CentreCounts) -> String {
    let mut out =
        String::from("\n## cost centres (% of the side's samples; a sample may count twice)\n\n");
    let mut sides: Vec<&&str> = totals.keys().collect();
    sides.sort();
    for side in sides {
        let (total, hits) = &totals[*side];
        let _ = writeln!(out, "{side}:");
        for ((name, _), h) in CENTRES.iter().zip(hits) {
            let _ = writeln!(
                out,
                "  {:5.1}%  {name}",
                100.0 * *h as f64 / (*total).max(1) as f64
            );
        }
    }
    out
}

/// Top functions by self and inclusive samples, per side.
fn top(folded: &str, n: usize) -> String {
    // side -> (total, self counts, inclusive counts)
    type Counts = HashMap<String, u64>;
    let mut sides: HashMap<&str, (u64, Counts, Counts)> = HashMap::new();
    for (thread, frames, count) in samples(folded) {
        let side = group(thread);
        let frames: Vec<String> = frames.map(clean).collect();
        let e = sides.entry(side).or_default();
        e.0 += count;
        if let Some(leaf) = frames.last() {
            *e.1.entry(leaf.clone()).or_default() += count;
        }
        let mut seen = std::collections::HashSet::new();
        for f in frames {
            if seen.insert(f.clone()) {
                *e.2.entry(f).or_default() += count;
            }
        }
    }
    let all: u64 = sides.values().map(|s| s.0).sum();
    let mut out = String::new();
    let mut names: Vec<&&str> = sides.keys().collect();
    names.sort();
    for side in names {
        let (total, selfs, incl) = &sides[*side];
        let _ = writeln!(
            out,
            "\n## {side}: {total} samples ({:.1}% of all)",
            100.0 * *total as f64 / all.max(1) as f64
        );
        for (title, map) in [("self", selfs), ("inclusive", incl)] {
            let mut v: Vec<(&String, &u64)> = map.iter().collect();
            v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let _ = writeln!(out, "\n### top {n} by {title} time (% of this side)\n");
            for (f, c) in v.into_iter().take(n) {
                let name: String = f.chars().take(140).collect();
                let _ = writeln!(
                    out,
                    "{:6.2}%  {name}",
                    100.0 * *c as f64 / *total.max(&1) as f64
                );
            }
        }
    }
    out
}

/// The SRTP floor as a table, and the floor's cores per viewer for this stream.
fn srtp_table(floor: &SrtpFloor, kbps: u32) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "SRTP floor, one thread, RustCrypto ciphers (AES-NI in /proc/cpuinfo: {}), per CPU second of the thread; the worker seals in place:\n",
        if floor.aes_ni { "yes" } else { "no" }
    );
    let _ = writeln!(t, "| sealer | profile | packet | packets/s | Mbit/s out |");
    let _ = writeln!(t, "|---|---|---|---|---|");
    for c in &floor.cases {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.0} | {:.0} |",
            c.sealer.name(),
            profile_name(c.profile),
            c.kind.name(),
            c.packets_per_sec,
            c.mbit_per_sec
        );
    }
    let _ = writeln!(t);
    for p in PROFILES {
        if let Some(cores) = floor.cores_per_viewer(p, kbps as f64) {
            let _ = writeln!(
                t,
                "floor per viewer at {kbps} kbit/s video + Opus 50 packets/s, {}, {}: {cores:.5} cores",
                floor.sealer.name(),
                profile_name(p)
            );
        }
    }
    t
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    std::fs::create_dir_all(&a.out)?;
    // First, on a quiet process: the floor.
    let floor = measure(Duration::from_secs(1));
    let table = srtp_table(&floor, a.kbps);
    if a.srtp_only {
        println!("{table}");
        return Ok(());
    }
    let worker_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(WORKER_THREADS)
        .enable_all()
        .build()?;
    let viewer_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(VIEWER_THREADS)
        .enable_all()
        .build()?;
    viewer_rt.block_on(run(a, worker_rt.handle().clone(), floor, table))
}

async fn run(
    a: Args,
    worker_rt: tokio::runtime::Handle,
    floor: SrtpFloor,
    table: String,
) -> anyhow::Result<()> {
    let nats = NatsServer::start().await;
    let mut config = worker::Config::for_tests(&nats.url());
    config.max_viewers = config.max_viewers.max(a.viewers as u32);
    if a.one_port {
        config.udp_port = Some(system_tests::free_udp_port());
    }
    let worker = {
        let _in_worker_rt = worker_rt.enter();
        system_tests::worker(config)
    };
    let client = nats.client().await;
    let bus = Bus::new(client.clone(), Subjects::default()).with_timeout(Duration::from_secs(15));
    wait_for("a worker", Duration::from_secs(20), || async {
        bus.request(&bus.subjects.session_list(), &Default::default())
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let id = SessionId::parse("prof").context("id")?;
    let create: CreateSession = serde_json::from_value(serde_json::json!({
        "id": "prof",
        "source": {"kind": "synthetic", "width": 1280, "height": 720, "fps": 30, "bitrate_kbps": a.kbps},
    }))?;
    bus.request(&bus.subjects.session_create(), &create)
        .await
        .map_err(|e| anyhow::anyhow!("create refused: {}", e.message))?;

    let window_len = Duration::from_secs(a.secs);
    eprintln!("profile: N=0 window ({} s)", a.secs);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = window(window_len).await;

    eprintln!("profile: joining {} viewers", a.viewers);
    let mut viewers = Vec::new();
    for _ in 0..a.viewers {
        viewers.push(join(&bus, &id).await?);
    }
    wait_for(
        "every viewer to receive video",
        Duration::from_secs(60),
        || async {
            viewers
                .iter()
                .all(|v| v.counters.video_packets.load(Ordering::Relaxed) > 100)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before: Vec<u64> = viewers
        .iter()
        .map(|v| v.counters.video_bytes.load(Ordering::Relaxed))
        .collect();
    let perf = if a.perf {
        match start_perf(&a.out) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("profile: no perf ({e:#}); CPU table only");
                None
            }
        }
    } else {
        None
    };
    eprintln!("profile: N={} window ({} s)", a.viewers, a.secs);
    let loaded = window(window_len).await;
    let perf_data = perf.map(stop_perf).transpose();
    let kbps: Vec<f64> = viewers
        .iter()
        .zip(&before)
        .map(|(v, b)| {
            (v.counters.video_bytes.load(Ordering::Relaxed) - b) as f64 * 8.0 / loaded.secs / 1000.0
        })
        .collect();
    let kbps_min = kbps.iter().copied().fold(f64::INFINITY, f64::min);
    let kbps_mean = kbps.iter().sum::<f64>() / kbps.len().max(1) as f64;

    let mut report = String::new();
    let _ = writeln!(
        report,
        "# Fan-out profile: 1280x720@30 {} kbit/s, N = {} webrtc-rs viewers, {} s windows\n",
        a.kbps, a.viewers, a.secs
    );
    let _ = writeln!(
        report,
        "video payload per viewer: mean {kbps_mean:.0} kbit/s, slowest {kbps_min:.0} kbit/s\n"
    );
    let _ = writeln!(
        report,
        "| thread group | N=0 cores | N={} cores | per viewer |",
        a.viewers
    );
    let _ = writeln!(report, "|---|---|---|---|");
    let mut groups: Vec<&String> = loaded.cores.iter().map(|(k, _)| k).collect();
    groups.sort();
    for g in groups {
        let (i, l) = (idle.get(g), loaded.get(g));
        let _ = writeln!(
            report,
            "| {g} | {i:.3} | {l:.3} | {:.4} |",
            (l - i) / a.viewers.max(1) as f64
        );
    }
    let per_viewer = (loaded.get(group(WORKER_THREADS)) - idle.get(group(WORKER_THREADS)))
        / a.viewers.max(1) as f64;
    let _ = writeln!(report, "\n{table}");
    // The bench's webrtc-rs viewers negotiate AEAD_AES_128_GCM.
    if let Some(f) = floor.cores_per_viewer(ProtectionProfile::AeadAes128Gcm, a.kbps as f64) {
        let _ = writeln!(
            report,
            "worker runtime per viewer: {per_viewer:.5} cores = {:.1} x the AEAD_AES_128_GCM floor",
            per_viewer / f
        );
    }
    match perf_data {
        Ok(Some(data)) => match fold_and_draw(&data, &a.out) {
            Ok(folded) => {
                let _ = writeln!(
                    report,
                    "\nStacks: perf record -e cpu-clock -F 499 --call-graph dwarf over the N={} window; flame graph {}",
                    a.viewers,
                    a.out.join("profile.svg").display()
                );
                let counts = centre_counts(&folded);
                report.push_str(&centres(&counts));
                let side = group(WORKER_THREADS);
                if let (Some(f), Some(d)) = (
                    floor.cores_per_viewer(ProtectionProfile::AeadAes128Gcm, a.kbps as f64),
                    centre_share(&counts, side, LOOPBACK_DELIVERY),
                ) {
                    let _ = writeln!(
                        report,
                        "\nworker runtime per viewer without the loopback delivery ({:.1}% of its samples): {:.5} cores = {:.1} x the AEAD_AES_128_GCM floor",
                        d * 100.0,
                        per_viewer * (1.0 - d),
                        per_viewer * (1.0 - d) / f
                    );
                }
                report.push_str(&top(&folded, 25));
            }
            Err(e) => {
                let _ = writeln!(report, "\n(no stacks: {e:#})");
            }
        },
        Ok(None) => {}
        Err(e) => {
            let _ = writeln!(report, "\n(perf failed: {e:#})");
        }
    }
    std::fs::write(a.out.join("profile.txt"), &report)?;
    println!("{report}");

    for v in viewers {
        v.rtc.close().await;
    }
    worker.stop(Duration::from_secs(5)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_lines_are_parsed_once_for_both_summaries() {
        let worker = format!("{WORKER_THREADS}-1");
        let folded = format!(
            "{worker};main;udp_sendmsg;net_rx_action;process_backlog 2\n\
             {worker};main;udp_sendmsg 1\n\
             {worker};main;encrypt 1\n\
             not a sample line\n\
             {worker};main;bad count x\n"
        );
        let parsed: Vec<(&str, Vec<&str>, u64)> = samples(&folded)
            .map(|(t, f, c)| (t, f.collect(), c))
            .collect();
        assert_eq!(
            parsed,
            vec![
                (
                    worker.as_str(),
                    vec!["main", "udp_sendmsg", "net_rx_action", "process_backlog"],
                    2
                ),
                (worker.as_str(), vec!["main", "udp_sendmsg"], 1),
                (worker.as_str(), vec!["main", "encrypt"], 1),
            ]
        );
        // Half of them delivered on loopback, counted once per sample.
        assert_eq!(
            centre_share(&centre_counts(&folded), group(&worker), LOOPBACK_DELIVERY),
            Some(0.5)
        );
        // 3 of 4 samples sent on UDP.
        assert!(
            centres(&centre_counts(&folded)).contains(" 75.0%  UDP send syscall"),
            "{}",
            centres(&centre_counts(&folded))
        );
        // `main` is in every stack (inclusive 4), `encrypt` a leaf once.
        let t = top(&folded, 5);
        assert!(t.contains("4 samples"), "{t}");
    }
}
