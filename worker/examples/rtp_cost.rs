//! What the RTP source's forwarding costs per packet: feeds an in-memory
//! H.264 RTP stream shaped like 1080p60 at ~12 Mbit/s (FU-A fragments of
//! 1200 bytes, an IDR every second) through the pure forwarder and
//! prints nanoseconds per packet and per frame. Then sends the same stream
//! over loopback to a real RTP source (about 100 times faster than live)
//! and prints the receive thread's CPU time per packet, `recvfrom`
//! included (from `/proc/self/task/<tid>/schedstat`, Linux only).
//!
//! `cargo run --release -p worker --example rtp_cost -- [SECONDS_OF_STREAM]`

use std::time::Instant;

use std::time::Duration;

use bus_schema::SourceSpec;
use tokio::sync::broadcast::error::RecvError;
use worker::source::rtp::H264Forwarder;
use worker::source::{Media, RtpFactory, SourceFactory};

const FPS: u32 = 60;
const BITRATE: usize = 12_000_000;
const FRAGMENT: usize = 1200;

fn packets(seconds: u32) -> Vec<Vec<u8>> {
    let (mut seq, mut ts) = (0u16, 0u32);
    let mut out = Vec::new();
    let sps: &[u8] = &[
        0x67, 0x42, 0xC0, 0x28, 0xD9, 0x00, 0x78, 0x02, 0x27, 0xE5, 0xC0, 0x44, 0x00, 0x00, 0x03,
        0x00, 0x04, 0x00, 0x00, 0x03, 0x00, 0xF0, 0x3C, 0x60, 0xC9, 0x20,
    ];
    let pps: &[u8] = &[0x68, 0xCB, 0x83, 0xCB, 0x20];
    let per_frame = BITRATE / 8 / FPS as usize;
    let header = |marker: bool, seq: &mut u16, ts: u32| {
        let mut p = vec![0x80, 96 | if marker { 0x80 } else { 0 }];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&7u32.to_be_bytes());
        *seq = seq.wrapping_add(1);
        p
    };
    for f in 0..seconds * FPS {
        let idr = f % FPS == 0;
        let size = if idr {
            per_frame * 4
        } else {
            per_frame * 9 / 10
        };
        if idr {
            let mut p = header(false, &mut seq, ts);
            p.push(24);
            for n in [sps, pps] {
                p.extend_from_slice(&(n.len() as u16).to_be_bytes());
                p.extend_from_slice(n);
            }
            out.push(p);
        }
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8 | 1).collect();
        let chunks: Vec<&[u8]> = body.chunks(FRAGMENT).collect();
        for (i, c) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let mut p = header(last, &mut seq, ts);
            let t = if idr { 5 } else { 1 };
            p.push(0x60 | 28);
            p.push(t | if i == 0 { 0x80 } else { 0 } | if last { 0x40 } else { 0 });
            if i == 0 {
                p.push(0x88); // first_mb_in_slice = 0
            }
            p.extend_from_slice(c);
            out.push(p);
        }
        ts = ts.wrapping_add(90_000 / FPS);
    }
    out
}

fn main() {
    let seconds: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let stream = packets(seconds);
    let bytes: usize = stream.iter().map(Vec::len).sum();
    let mut best = f64::MAX;
    let mut frames = 0u64;
    for _ in 0..5 {
        let mut a = H264Forwarder::new(96, 1500);
        let now = Instant::now();
        let started = Instant::now();
        let mut n = 0u64;
        for p in &stream {
            a.push(now, p, |v| {
                n += u64::from(v.marker);
                std::hint::black_box(v);
            });
        }
        best = best.min(started.elapsed().as_secs_f64());
        frames = n;
    }
    let per_packet = best * 1e9 / stream.len() as f64;
    println!(
        "{} packets ({:.1} MB, {} frames, {} s of 1080p60 at ~12 Mbit/s): best of 5 {:.1} ms; {:.0} ns/packet, {:.1} µs/frame, {:.2} GB/s; {:.3}% of one core for the live stream",
        stream.len(),
        bytes as f64 / 1e6,
        frames,
        seconds,
        best * 1e3,
        per_packet,
        best * 1e6 / frames as f64,
        bytes as f64 / best / 1e9,
        100.0 * best / f64::from(seconds),
    );
    if let Err(e) = through_a_socket(&stream, seconds) {
        println!("socket run skipped: {e}");
    }
}

/// CPU time in ns of this process's thread called `name`.
fn thread_cpu_ns(name: &str) -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
        if comm.trim() == name {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            return stat.split_whitespace().next()?.parse().ok();
        }
    }
    None
}

fn through_a_socket(stream: &[Vec<u8>], seconds: u32) -> Result<(), String> {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let spec = SourceSpec::Rtp {
        video_port: port,
        audio_port: None,
        bind: "127.0.0.1".into(),
        video_payload_type: 96,
        audio_payload_type: 111,
    };
    let handle = RtpFactory.start(&spec).map_err(|e| e.to_string())?;
    let mut rx = handle.subscribe();
    let drain = std::thread::spawn(move || {
        let mut frames = 0u64;
        loop {
            match rx.blocking_recv() {
                Ok(Media::VideoPackets(p)) => {
                    frames += p.iter().filter(|v| v.marker).count() as u64;
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            }
        }
        frames
    });
    let tx = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    // The thread names itself as it starts.
    let named = Instant::now() + Duration::from_secs(2);
    let cpu0 = loop {
        match thread_cpu_ns("rtp-video") {
            Some(ns) => break ns,
            None if Instant::now() < named => std::thread::sleep(Duration::from_millis(5)),
            None => return Err("no rtp-video thread".into()),
        }
    };
    let started = Instant::now();
    for (i, p) in stream.iter().enumerate() {
        tx.send_to(p, ("127.0.0.1", port))
            .map_err(|e| e.to_string())?;
        if i % 1000 == 999 {
            // Leave the receiver room: the socket buffer is finite.
            std::thread::sleep(Duration::from_millis(8));
        }
    }
    let sent_in = started.elapsed();
    let frames_expected = u64::from(seconds * FPS);
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle.frames_encoded() < frames_expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let cpu = thread_cpu_ns("rtp-video").ok_or("no rtp-video thread")? - cpu0;
    let got = handle.frames_encoded();
    drop(handle);
    let _ = drain.join();
    println!(
        "through a socket: {} packets in {:.2} s, {}/{} frames out; receive thread {:.0} ns/packet (recvfrom + reassembly + publish), {:.3}% of one core for the live stream",
        stream.len(),
        sent_in.as_secs_f64(),
        got,
        frames_expected,
        cpu as f64 / stream.len() as f64,
        100.0 * cpu as f64 / 1e9 / f64::from(seconds),
    );
    Ok(())
}
