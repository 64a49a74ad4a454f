//! What one synthetic source costs: runs a source (default 1280x720@30,
//! 2500 kbit/s) for 10 s and prints CPU seconds used per wall second.
//!
//! `cargo run --release -p worker --example synthetic_cpu -- [WIDTH HEIGHT FPS KBPS SECONDS]`
//!
//! CPU time is the whole process's (`/proc/self/stat` utime + stime), so it
//! includes the draining consumer, which is tiny next to the encoders.

use std::time::{Duration, Instant};

use anyhow::Context;
use bus_schema::SourceSpec;
use tokio::sync::broadcast::error::RecvError;
use worker::source::{Media, SourceFactory, SyntheticFactory};

/// utime + stime of this process, in seconds.
fn cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let after = stat.rsplit_once(')').context("odd /proc/self/stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .context("arguments are numbers: WIDTH HEIGHT FPS KBPS SECONDS")?;
    let arg = |i: usize, default: u32| args.get(i).copied().unwrap_or(default);
    let (width, height, fps, kbps) = (arg(0, 1280), arg(1, 720), arg(2, 30), arg(3, 2500));
    let seconds = arg(4, 10);
    let spec = SourceSpec::Synthetic {
        width,
        height,
        fps,
        bitrate_kbps: kbps,
    };

    let cpu_before = cpu_seconds()?;
    let wall = Instant::now();
    let handle = SyntheticFactory.start(&spec)?;
    let mut rx = handle.subscribe();
    let (mut frames, mut keyframes, mut video_bytes, mut packets, mut lagged) =
        (0u64, 0u64, 0usize, 0u64, 0u64);
    let (mut first_pts, mut last_pts) = (None, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(u64::from(seconds));
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => break,
            Ok(Ok(Media::Video(v))) => {
                frames += 1;
                keyframes += u64::from(v.keyframe);
                video_bytes += v.annexb.len();
                first_pts.get_or_insert(v.pts_90k);
                last_pts = v.pts_90k;
            }
            Ok(Ok(Media::Audio(_))) => packets += 1,
            Ok(Ok(Media::VideoPackets(_))) => anyhow::bail!("the synthetic source sends frames"),
            Ok(Err(RecvError::Lagged(n))) => lagged += n,
            Ok(Err(RecvError::Closed)) => anyhow::bail!("source ended early"),
        }
    }
    let encoded = handle.frames_encoded();
    handle.stop().await;
    let wall = wall.elapsed().as_secs_f64();
    let cpu = cpu_seconds()? - cpu_before;

    let slots = (last_pts - first_pts.unwrap_or(0)) / (90_000 / u64::from(fps.max(1))) + 1;
    println!("source: {width}x{height}@{fps} {kbps} kbit/s for {wall:.1} s");
    println!("video: {frames} frames received ({encoded} encoded, {slots} slots, {keyframes} keyframes), {:.0} kbit/s", video_bytes as f64 * 8.0 / wall / 1000.0);
    println!("audio: {packets} packets; lagged: {lagged}");
    println!(
        "cpu: {cpu:.2} s in {wall:.2} s wall = {:.3} CPU seconds per wall second",
        cpu / wall
    );
    Ok(())
}
