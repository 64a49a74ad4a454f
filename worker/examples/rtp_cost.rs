//! What the RTP source's reassembly costs per packet: feeds an in-memory
//! H.264 RTP stream shaped like 1080p60 at ~12 Mbit/s (FU-A fragments of
//! 1200 bytes, an IDR every second) through the pure reassembler and
//! prints nanoseconds per packet and per frame. The socket receive (one
//! `recvfrom` per packet) comes on top.
//!
//! `cargo run --release -p worker --example rtp_cost -- [SECONDS_OF_STREAM]`

use std::time::Instant;

use worker::source::rtp::H264Assembler;

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
        let mut a = H264Assembler::new(96, 1500);
        let now = Instant::now();
        let started = Instant::now();
        let mut n = 0u64;
        for p in &stream {
            a.push(now, p, |au| {
                n += 1;
                std::hint::black_box(au);
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
}
