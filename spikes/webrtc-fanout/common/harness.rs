//! Stack-independent parts of the fan-out spike, shared by `v017` and `v021`
//! via `#[path = "../../common/harness.rs"] mod harness;`.
//!
//! * Annex-B H.264 file -> access units (AUD/filler stripped, 4-byte start codes),
//! * /proc based CPU + RSS sampling,
//! * the line protocol between the sender process and its receiver child process,
//! * receiver-side statistics (RTP packets, marker bits, depacketized access units that are
//!   byte-identical to a source access unit, inter-frame gaps).

#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

pub const FPS: u32 = 30;
pub const FRAME_DUR: Duration = Duration::from_nanos(1_000_000_000 / FPS as u64);
/// `profile-level-id=42e01f;packetization-mode=1;level-asymmetry-allowed=1`
pub const H264_FMTP: &str = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";
/// Opus "silence" TOC + payload (code 0, 20 ms CELT frame); enough for the depacketizer.
pub const OPUS_SILENCE: [u8; 3] = [0xf8, 0xff, 0xfe];

// ---------------------------------------------------------------- H.264 parsing

fn split_nals(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut start: Option<usize> = None;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            if let Some(s) = start {
                let mut e = i;
                while e > s && data[e - 1] == 0 {
                    e -= 1;
                }
                out.push(&data[s..e]);
            }
            i += 3;
            start = Some(i);
        } else {
            i += 1;
        }
    }
    if let Some(s) = start {
        out.push(&data[s..]);
    }
    out
}

/// Load an Annex-B H.264 elementary stream and group NAL units into access units.
/// Each returned AU is Annex-B with 4-byte start codes; AUD (9) and filler (12) NALs are
/// dropped because the webrtc-rs H.264 payloader drops them too (so depacketized AUs can be
/// compared byte-for-byte with these).
pub fn load_access_units(path: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let data = std::fs::read(path)?;
    let mut aus: Vec<Vec<u8>> = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    let mut cur_has_vcl = false;
    for nal in split_nals(&data) {
        if nal.is_empty() {
            continue;
        }
        let t = nal[0] & 0x1f;
        if t == 9 || t == 12 {
            continue;
        }
        let is_vcl = t == 1 || t == 5;
        // first_mb_in_slice == 0  <=> first bit of the slice header (ue(v) "1") is set
        let first_slice = is_vcl && nal.len() > 1 && (nal[1] & 0x80) != 0;
        let starts_new = (matches!(t, 6 | 7 | 8) || first_slice) && cur_has_vcl;
        if starts_new {
            aus.push(std::mem::take(&mut cur));
            cur_has_vcl = false;
        }
        cur.extend_from_slice(&[0, 0, 0, 1]);
        cur.extend_from_slice(nal);
        cur_has_vcl |= is_vcl;
    }
    if cur_has_vcl {
        aus.push(cur);
    }
    anyhow::ensure!(!aus.is_empty(), "no access units in {path}");
    Ok(aus)
}

pub fn au_set(aus: &[Vec<u8>]) -> HashSet<Vec<u8>> {
    aus.iter().cloned().collect()
}

// ---------------------------------------------------------------- /proc sampling

/// (utime + stime) of this process in seconds.
pub fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // fields after the ")" of comm: state is field 3; utime = 14, stime = 15
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (ut + st) / 100.0 // CLK_TCK = 100 on Linux/x86_64
}

/// (VmRSS, VmHWM) in MiB.
pub fn rss_mib() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |k: &str| -> f64 {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (get("VmRSS:"), get("VmHWM:"))
}

pub fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
}

// ---------------------------------------------------------------- CLI

pub struct Args {
    pub role: String,
    pub n: usize,
    pub mode: String,
    pub secs: u64,
    pub warmup: u64,
    pub file: String,
    pub audio: bool,
    pub mux: Option<String>,
}

pub fn parse_args() -> Args {
    let mut a = Args {
        role: "sender".into(),
        n: 20,
        mode: "shared".into(),
        secs: 15,
        warmup: 3,
        file: "/tmp/spike.h264".into(),
        audio: true,
        mux: None,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let next = || v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "recv" | "sender" => {
                a.role = v[i].clone();
                i += 1;
                continue;
            }
            "--n" => a.n = next().parse().expect("--n"),
            "--mode" => a.mode = next(),
            "--secs" => a.secs = next().parse().expect("--secs"),
            "--warmup" => a.warmup = next().parse().expect("--warmup"),
            "--file" => a.file = next(),
            "--mux" => a.mux = Some(next()),
            "--no-audio" => {
                a.audio = false;
                i += 1;
                continue;
            }
            other => panic!("unknown arg {other}"),
        }
        i += 2;
    }
    a
}

// ---------------------------------------------------------------- line protocol
//
// sender -> child stdin : "OFFER <i> <json>" ... "START" ... "STOP"
// child stdout -> sender: "ANSWER <i> <json>" ... "RESULT <json>"
// (JSON of RTCSessionDescription is single-line, newlines are escaped)

pub struct Child {
    pub proc: std::process::Child,
    pub stdin: std::process::ChildStdin,
    pub lines: std::sync::mpsc::Receiver<String>,
}

pub fn spawn_receiver_child(args: &Args) -> anyhow::Result<Child> {
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("recv").arg("--n").arg(args.n.to_string()).arg("--file").arg(&args.file);
    let mut proc = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()?;
    let stdin = proc.stdin.take().unwrap();
    let stdout = proc.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout).lines() {
            match l {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    Ok(Child { proc, stdin, lines: rx })
}

impl Child {
    pub fn send_line(&mut self, l: &str) {
        writeln!(self.stdin, "{l}").expect("child stdin");
        self.stdin.flush().ok();
    }
    pub fn recv_line(&self, timeout: Duration) -> anyhow::Result<String> {
        Ok(self.lines.recv_timeout(timeout)?)
    }
}

/// Reads stdin lines of the receiver child on a thread and forwards them to a tokio channel.
pub fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for l in std::io::stdin().lock().lines() {
            match l {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    rx
}

pub fn say(l: &str) {
    let mut o = std::io::stdout().lock();
    writeln!(o, "{l}").ok();
    o.flush().ok();
}

// ---------------------------------------------------------------- receiver stats

#[derive(Default, Clone, Debug)]
pub struct RecvStats {
    pub video_pkts: u64,
    pub video_bytes: u64,
    pub markers: u64,
    pub aus: u64,
    pub aus_exact: u64,
    pub aus_bad: u64,
    pub audio_pkts: u64,
    pub max_gap_ms: f64,
    pub last_marker: Option<Instant>,
}

impl RecvStats {
    pub fn on_video_pkt(&mut self, payload_len: usize, marker: bool) {
        self.video_pkts += 1;
        self.video_bytes += payload_len as u64;
        if marker {
            self.markers += 1;
            let now = Instant::now();
            if let Some(prev) = self.last_marker {
                let g = now.duration_since(prev).as_secs_f64() * 1000.0;
                if g > self.max_gap_ms {
                    self.max_gap_ms = g;
                }
            }
            self.last_marker = Some(now);
        }
    }
    pub fn on_au(&mut self, au: &[u8], known: &HashSet<Vec<u8>>) {
        self.aus += 1;
        if known.contains(au) {
            self.aus_exact += 1;
        } else {
            let ok = au.len() > 5
                && au[..4] == [0, 0, 0, 1]
                && split_nals(au).iter().any(|n| !n.is_empty() && matches!(n[0] & 0x1f, 1 | 5));
            if !ok {
                self.aus_bad += 1;
            }
        }
    }
    pub fn reset(&mut self) {
        let last = self.last_marker;
        *self = RecvStats::default();
        self.last_marker = last;
    }
    pub fn to_json(&self, secs: f64) -> String {
        format!(
            "{{\"fps\":{:.2},\"aus_per_s\":{:.2},\"exact_pct\":{:.1},\"bad\":{},\"pkts_per_s\":{:.1},\"kbps\":{:.0},\"audio_pps\":{:.1},\"max_gap_ms\":{:.1}}}",
            self.markers as f64 / secs,
            self.aus as f64 / secs,
            if self.aus > 0 { 100.0 * self.aus_exact as f64 / self.aus as f64 } else { 0.0 },
            self.aus_bad,
            self.video_pkts as f64 / secs,
            self.video_bytes as f64 * 8.0 / 1000.0 / secs,
            self.audio_pkts as f64 / secs,
            self.max_gap_ms
        )
    }
}

/// Summarise per-receiver results as printed by the child: min/avg fps, etc.
pub fn summarize(result_json: &str) -> String {
    // tiny ad-hoc parse: list of objects with "fps":x
    let fps: Vec<f64> = result_json
        .split("\"fps\":")
        .skip(1)
        .filter_map(|s| s.split([',', '}']).next()?.parse().ok())
        .collect();
    let exact: Vec<f64> = result_json
        .split("\"exact_pct\":")
        .skip(1)
        .filter_map(|s| s.split([',', '}']).next()?.parse().ok())
        .collect();
    let gaps: Vec<f64> = result_json
        .split("\"max_gap_ms\":")
        .skip(1)
        .filter_map(|s| s.split([',', '}']).next()?.parse().ok())
        .collect();
    let min = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    format!(
        "receivers={} fps_min={:.2} fps_avg={:.2} exact_au_pct_min={:.1} max_gap_ms={:.0}",
        fps.len(),
        min(&fps),
        avg(&fps),
        min(&exact),
        max(&gaps)
    )
}
