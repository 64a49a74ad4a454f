//! Client CPU per stream: receive (UDP over loopback), AES-GCM decrypt, FEC,
//! reassembly, at 1080p60 20 Mbit/s and 2160p60 50 Mbit/s, with 0% and 5%
//! seeded loss. A host thread sends frames in real time, packetized as the
//! emulator does (20% FEC, video encryption on); the client thread receives
//! and depacketizes, and its own CPU time (getrusage, RUSAGE_THREAD) over the
//! stream's duration is the figure: cores per stream.
//!
//! Run: `cargo run --release -p gamestream --example client_cost [seconds]`

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use gamestream::netsim::{Link, LinkProfile, SimRng};
use gamestream::video::{
    Depacketizer, DepacketizerConfig, FrameType, HostFrame, Packetizer, PacketizerConfig,
    VideoEvent,
};
use nix::sys::resource::{getrusage, UsageWho};

const PACKET_SIZE: usize = 1392;
const KEY: [u8; 16] = [0x5a; 16];

fn thread_cpu() -> Duration {
    let u = getrusage(UsageWho::RUSAGE_THREAD).expect("getrusage");
    let t =
        |tv: nix::sys::time::TimeVal| Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000);
    t(u.user_time()) + t(u.system_time())
}

struct Outcome {
    cpu: Duration,
    wall: Duration,
    frames: u64,
    lost: u64,
    recovered: u64,
    packets: u64,
}

fn run(fps: u32, mbps: f64, loss: f64, seconds: u32) -> Outcome {
    let frames = fps * seconds;
    let avg = (mbps * 1e6 / 8.0 / f64::from(fps)) as usize;
    let mut rng = SimRng::new(2026);
    // Frame sizes: an IDR (4x average) every 2 s, P-frames around the average.
    let sizes: Vec<(FrameType, usize)> = (0..frames)
        .map(|i| {
            if i % (2 * fps) == 0 {
                (FrameType::Idr, avg * 4)
            } else {
                (
                    FrameType::P,
                    avg * 3 / 4 + (rng.next_u64() % (avg as u64 / 2)) as usize,
                )
            }
        })
        .collect();
    let mut host = Packetizer::new(PacketizerConfig {
        packet_size: PACKET_SIZE,
        fec_percentage: 20,
        min_parity: 2,
        key: Some(KEY),
    });
    let mut link = Link::new(7, LinkProfile::lossy(loss));
    let t0 = Instant::now();
    let mut per_frame: Vec<Vec<Vec<u8>>> = Vec::with_capacity(sizes.len());
    for (i, (t, len)) in sizes.iter().enumerate() {
        let data: Vec<u8> = (0..*len).map(|k| (k * 31 + i) as u8).collect();
        for p in host.packetize(&HostFrame {
            frame_index: i as u32 + 1,
            frame_type: *t,
            rtp_timestamp: i as u32 * (90_000 / fps),
            data: &data,
        }) {
            link.send(t0, p);
        }
        per_frame.push(
            std::iter::from_fn(|| link.poll(t0 + Duration::from_secs(1)).map(|(_, p)| p)).collect(),
        );
    }

    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    // A receive buffer for a whole IDR burst (the kernel caps it at rmem_max).
    let _ = socket2::SockRef::from(&rx).set_recv_buffer_size(8 << 20);
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let addr = rx.local_addr().unwrap();
    let receiver = std::thread::spawn(move || {
        let mut config = DepacketizerConfig::new(PACKET_SIZE);
        config.key = Some(KEY);
        let mut d = Depacketizer::new(config);
        let mut buf = vec![0u8; 2048];
        let start_cpu = thread_cpu();
        let start = Instant::now();
        let mut delivered = 0u64;
        let mut last = start;
        while let Ok((n, _)) = rx.recv_from(&mut buf) {
            last = Instant::now();
            let _ = d.push(last, &buf[..n]);
            d.expire(last);
            while let Some(e) = d.poll_event() {
                if let VideoEvent::Frame(_) = e {
                    delivered += 1;
                }
            }
        }
        let stats = d.stats().clone();
        Outcome {
            cpu: thread_cpu() - start_cpu,
            wall: last - start,
            frames: delivered,
            lost: stats.frames_lost + stats.frames_dropped_awaiting_idr,
            recovered: stats.recovered_shards,
            packets: stats.packets,
        }
    });
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let interval = Duration::from_secs(1) / fps;
    let begin = Instant::now();
    for (i, packets) in per_frame.iter().enumerate() {
        let due = begin + interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // Paced within the frame as hosts do: groups of 32 packets.
        for group in packets.chunks(32) {
            for p in group {
                tx.send_to(p, addr).unwrap();
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    receiver.join().unwrap()
}

fn main() {
    let seconds: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    println!(
        "client CPU per stream (receive + AES-GCM + FEC + reassembly), {seconds} s each, 20% FEC"
    );
    println!(
        "{:<22} {:>5} {:>12} {:>8} {:>8} {:>10} {:>10}",
        "stream", "loss", "cores", "frames", "lost", "recovered", "packets"
    );
    for (name, fps, mbps) in [
        ("1080p60 20 Mbit/s", 60, 20.0),
        ("2160p60 50 Mbit/s", 60, 50.0),
    ] {
        for loss in [0.0, 0.05] {
            let o = run(fps, mbps, loss, seconds);
            let cores = o.cpu.as_secs_f64() / o.wall.as_secs_f64().max(1e-9);
            println!(
                "{:<22} {:>4.0}% {:>12.4} {:>8} {:>8} {:>10} {:>10}",
                name,
                loss * 100.0,
                cores,
                o.frames,
                o.lost,
                o.recovered,
                o.packets
            );
        }
    }
}
