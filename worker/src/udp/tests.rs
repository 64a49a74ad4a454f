use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use webrtc::util::Conn;

use super::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn runs(queued: &[Queued], max_segments: usize) -> Vec<Run> {
    let mut out = Vec::new();
    runs_into(queued, max_segments, &mut out);
    out
}

/// A fresh plan's rounds.
fn schedule(queued: &[Queued], max_segments: usize, turn: usize) -> Vec<Vec<Run>> {
    let mut plan = Schedule::default();
    plan.plan(queued, max_segments, turn);
    rounds_of(&plan)
}

fn rounds_of(plan: &Schedule) -> Vec<Vec<Run>> {
    plan.rounds().map(<[Run]>::to_vec).collect()
}

/// Waits (up to 5 s) until the sender threads have counted `n` packets
/// as sent: a run is counted once its `sendmsg` returns, which can be
/// after the receivers have read it.
fn counted_as_sent(c: &SendCounters, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.packets.load(Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "every packet is counted as sent");
        std::thread::yield_now();
    }
}

/// Packets of the given (port, len), laid out back to back.
fn queue(spec: &[(u16, usize)]) -> Vec<Queued> {
    let mut start = 0;
    spec.iter()
        .map(|&(port, len)| {
            let q = Queued {
                to: addr(port),
                start,
                len,
            };
            start += len;
            q
        })
        .collect()
}

fn shape(runs: &[Run]) -> Vec<(u16, usize, usize)> {
    runs.iter()
        .map(|r| (r.to.port(), r.segment, r.count))
        .collect()
}

#[test]
fn a_frame_to_one_viewer_is_one_run_with_a_short_last_packet() {
    let q = queue(&[(1, 1216), (1, 1216), (1, 1216), (1, 700)]);
    let r = runs(&q, 64);
    assert_eq!(shape(&r), vec![(1, 1216, 4)]);
    assert_eq!((r[0].start, r[0].end), (0, 3 * 1216 + 700));
}

#[test]
fn runs_split_on_address_on_a_longer_packet_and_after_a_shorter_one() {
    let q = queue(&[
        (1, 100), // STAP-A: shorter, then full-size packets
        (1, 1216),
        (1, 1216),
        (2, 1216), // another viewer
        (2, 1216),
        (2, 500),
        (2, 500), // after a short packet: a new run
        (1, 120), // audio to the first viewer
    ]);
    assert_eq!(
        shape(&runs(&q, 64)),
        vec![
            (1, 100, 1),
            (1, 1216, 2),
            (2, 1216, 3),
            (2, 500, 1),
            (1, 120, 1)
        ]
    );
}

#[test]
fn runs_respect_the_segment_and_byte_limits() {
    let q = queue(&[(1, 1216); 130]);
    let r = runs(&q, 64);
    // 64_000 / 1216 = 52 packets per run by bytes.
    assert_eq!(shape(&r), vec![(1, 1216, 52), (1, 1216, 52), (1, 1216, 26)]);
    assert!(r.iter().all(|r| r.end - r.start <= MAX_GSO_BYTES));
    assert_eq!(
        shape(&runs(&q, 1)).len(),
        130,
        "no GSO: one packet per send"
    );
    assert_eq!(
        shape(&runs(&q[..10], 4)),
        vec![(1, 1216, 4), (1, 1216, 4), (1, 1216, 2)]
    );
}

#[test]
fn destinations_take_turns_and_each_keeps_its_order() {
    // Two viewers' keyframes queued one after the other, then audio.
    let mut spec = vec![(1, 1216); 40];
    spec.extend(vec![(2, 1216); 20]);
    spec.push((1, 120));
    spec.push((3, 120));
    let q = queue(&spec);
    let rounds = schedule(&q, 64, 16);
    let shapes: Vec<_> = rounds.iter().map(|r| shape(r)).collect();
    assert_eq!(
        shapes,
        vec![
            vec![(1, 1216, 16), (2, 1216, 16), (3, 120, 1)],
            vec![(1, 1216, 16), (2, 1216, 4)],
            vec![(1, 1216, 8), (1, 120, 1)],
        ]
    );
    let s: Vec<Run> = rounds.concat();
    // Every packet is sent once; each destination's bytes in order.
    for port in [1, 2, 3] {
        let mine: Vec<(usize, usize)> = s
            .iter()
            .filter(|r| r.to.port() == port)
            .map(|r| (r.start, r.end))
            .collect();
        assert!(
            mine.windows(2).all(|w| w[0].1 <= w[1].0),
            "{port}: {mine:?}"
        );
    }
    assert_eq!(s.iter().map(|r| r.count).sum::<usize>(), q.len());
    // Without GSO: single packets, still in turns.
    let single = schedule(&q[..20], 1, 16);
    assert_eq!(shape(&single.concat()), vec![(1, 1216, 1); 20]);
    assert_eq!(
        single.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![16, 4],
        "no GSO: still 16 packets a turn"
    );
}

#[test]
fn a_reused_schedule_plans_each_batch_afresh_without_growing() {
    let mut a = vec![(1, 1216); 40];
    a.extend(vec![(2, 1216); 20]);
    a.push((1, 120));
    let a = queue(&a);
    let b = queue(&[(7, 1000), (8, 1000), (7, 1000), (9, 90)]);
    let mut plan = Schedule::default();
    plan.plan(&a, 64, 16);
    assert_eq!(rounds_of(&plan), schedule(&a, 64, 16));
    // Nothing of the first batch is left in the second's plan.
    plan.plan(&b, 64, 16);
    assert_eq!(rounds_of(&plan), schedule(&b, 64, 16));
    assert_eq!(
        shape(&rounds_of(&plan).concat()),
        vec![(7, 1000, 1), (7, 1000, 1), (8, 1000, 1), (9, 90, 1)]
    );
    // Planning the first batch again needs no more room than the
    // first time: the buffers were kept, not dropped.
    plan.plan(&a, 64, 16);
    let room = |p: &Schedule| {
        (
            p.runs.capacity(),
            p.next.capacity(),
            p.order.capacity(),
            p.round_ends.capacity(),
            p.index.capacity(),
        )
    };
    let before = room(&plan);
    plan.plan(&b, 64, 16);
    plan.plan(&a, 64, 16);
    assert_eq!(room(&plan), before);
    assert_eq!(rounds_of(&plan), schedule(&a, 64, 16));
    // An empty batch has no rounds.
    plan.plan(&[], 64, 16);
    assert_eq!(plan.rounds().count(), 0);
}

#[tokio::test]
async fn every_packet_arrives_intact_and_in_order_for_each_destination() {
    let sender = BatchedUdp::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), 1).unwrap();
    let rx: Vec<tokio::net::UdpSocket> =
        futures::future::join_all((0..2).map(|_| tokio::net::UdpSocket::bind("127.0.0.1:0")))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    for s in &rx {
        socket2::SockRef::from(s)
            .set_recv_buffer_size(4 << 20)
            .unwrap();
    }
    // Frames of 1200-byte packets and a short last one, to both
    // receivers in turn, numbered in their first bytes.
    let mut expected: [Vec<Vec<u8>>; 2] = Default::default();
    let mut n = 0u32;
    for frame in 0..20 {
        for (i, r) in rx.iter().enumerate() {
            for k in 0..8 {
                let len = if k == 7 { 300 + frame } else { 1200 };
                let mut p = vec![(i as u8) ^ 0x5a; len];
                p[..4].copy_from_slice(&n.to_be_bytes());
                n += 1;
                let to = r.local_addr().unwrap();
                assert_eq!(Conn::send_to(&sender, &p, to).await.unwrap(), len);
                expected[i].push(p);
            }
        }
    }
    for (i, r) in rx.iter().enumerate() {
        let mut buf = vec![0u8; 2000];
        for want in &expected[i] {
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), r.recv(&mut buf))
                .await
                .expect("a queued packet arrives")
                .unwrap();
            assert_eq!(&buf[..got], &want[..], "receiver {i}");
        }
    }
    let c = sender.counters();
    counted_as_sent(&c, u64::from(n));
    assert_eq!(c.packets.load(Ordering::Relaxed), u64::from(n));
    assert_eq!(c.dropped.load(Ordering::Relaxed), 0);
    let sends = c.sends.load(Ordering::Relaxed);
    assert!(sends >= 1 && sends <= u64::from(n), "{sends} sends");
    println!("{n} packets in {sends} sends");
}

#[tokio::test]
async fn packets_laid_end_to_end_arrive_as_datagrams_in_order_counted_as_direct() {
    let sender = BatchedUdp::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), 1).unwrap();
    let mut q = sender.queue();
    let mut viewers = Vec::new();
    for _ in 0..2 {
        let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket2::SockRef::from(&rx)
            .set_recv_buffer_size(4 << 20)
            .unwrap();
        viewers.push(rx);
    }
    // Two frames: 10 packets and 40 (more than a turn), each ending
    // with a short packet, numbered in their first bytes; in each send
    // both viewers' copies interleave, as a session's fan-out lays them.
    for (first, count) in [(0u32, 10u32), (10, 40)] {
        let (mut wire, mut packets) = (Vec::new(), Vec::new());
        for n in first..first + count {
            let len = if n == first + count - 1 { 500 } else { 1200 };
            for (v, rx) in viewers.iter().enumerate() {
                let mut p = vec![0x33; len];
                p[..4].copy_from_slice(&n.to_be_bytes());
                p[4] = v as u8;
                wire.extend_from_slice(&p);
                packets.push((len, rx.local_addr().unwrap()));
            }
        }
        q.send(&mut wire, &packets);
        assert!(wire.is_empty(), "the queue took the bytes");
    }
    let mut buf = vec![0u8; 2000];
    for (v, rx) in viewers.iter().enumerate() {
        for n in 0..50u32 {
            let got = tokio::time::timeout(Duration::from_secs(5), rx.recv(&mut buf))
                .await
                .expect("a packet arrives")
                .unwrap();
            assert_eq!(buf[..4], n.to_be_bytes(), "packet {n} in order");
            assert_eq!(buf[4], v as u8, "packet {n} reached its own viewer");
            assert_eq!(got, if n == 9 || n == 49 { 500 } else { 1200 });
        }
    }
    let c = sender.counters();
    assert_eq!(c.direct.load(Ordering::Relaxed), 100);
    assert_eq!(c.dropped.load(Ordering::Relaxed), 0);
}

#[test]
fn a_buffer_grown_by_one_burst_shrinks_back_after_a_window_and_steady_use_keeps_its_own() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut trim = Trim::new(1000);
    let mut buf: Vec<u8> = Vec::new();
    // A burst (a join storm's replays) grows the buffer to 8 MB.
    buf.resize(8 << 20, 1);
    buf.clear();
    assert!(
        !trim.used(8 << 20, &mut buf, at(0)),
        "not before a window has passed"
    );
    // Then frames of 50 KB for a window: the burst is in this window,
    // so the capacity stays.
    for ms in (10..TRIM_AFTER.as_millis() as u64).step_by(10) {
        buf.resize(50_000, 1);
        buf.clear();
        assert!(!trim.used(50_000, &mut buf, at(ms)));
    }
    assert!(buf.capacity() >= 8 << 20);
    // A window without the burst: the buffer shrinks to its largest use.
    let end = 2 * TRIM_AFTER.as_millis() as u64;
    let mut shrank = false;
    for ms in (TRIM_AFTER.as_millis() as u64..=end).step_by(10) {
        buf.resize(50_000, 1);
        buf.clear();
        shrank |= trim.used(50_000, &mut buf, at(ms));
    }
    assert!(shrank, "the burst's capacity is given back");
    assert!(
        (50_000..100_000).contains(&buf.capacity()),
        "capacity {} is about the frames' size",
        buf.capacity()
    );
    // Steady use of its own size never reallocates.
    let ptr = buf.as_ptr();
    for ms in (end..end + 5 * TRIM_AFTER.as_millis() as u64).step_by(10) {
        buf.resize(50_000, 1);
        buf.clear();
        assert!(!trim.used(50_000, &mut buf, at(ms)));
    }
    assert_eq!(buf.as_ptr(), ptr, "no reallocation in steady use");
    // Never below the floor, however little is used.
    let mut small = Trim::new(4096);
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    small.used(10, &mut buf, at(0));
    assert!(small.used(10, &mut buf, at(TRIM_AFTER.as_millis() as u64)));
    assert!(buf.capacity() >= 4096 && buf.capacity() < 8192);
}

#[test]
fn a_full_queue_refuses_instead_of_growing() {
    let mut p = Pending::default();
    let big = vec![7u8; 1 << 20];
    for _ in 0..16 {
        assert!(p.push(&big, addr(1)));
    }
    assert_eq!(p.bytes.len(), MAX_QUEUED_BYTES);
    assert!(!p.push(&[1], addr(1)), "one byte over the bound");
    assert_eq!(p.packets.len(), 16, "nothing partial was queued");
    p.closed = true;
    p.bytes.clear();
    p.packets.clear();
    assert!(!p.push(&[1], addr(1)), "a closed queue takes nothing");
}

#[test]
fn an_idle_queue_takes_a_whole_buffer_and_a_busy_one_does_not() {
    let mut p = Pending::default();
    p.bytes.reserve(4096);
    let mut wire = vec![1u8; 300];
    wire.extend_from_slice(&[2u8; 200]);
    let packets = [(300, addr(1)), (200, addr(2))];
    assert_eq!(p.take_whole(&mut wire, &packets), Some(2));
    assert!(
        wire.is_empty() && wire.capacity() >= 4096,
        "the queue's buffer came back"
    );
    assert_eq!(p.bytes.len(), 500);
    assert_eq!(
        p.packets,
        [
            Queued {
                to: addr(1),
                start: 0,
                len: 300
            },
            Queued {
                to: addr(2),
                start: 300,
                len: 200
            },
        ]
    );
    let mut more = vec![3u8; 100];
    assert_eq!(
        p.take_whole(&mut more, &[(100, addr(1))]),
        None,
        "packets are waiting: appended instead"
    );
    assert_eq!(more.len(), 100, "left as it was");
    p.packets.clear();
    p.bytes.clear();
    let mut too_big = vec![0u8; MAX_QUEUED_BYTES + 1];
    assert_eq!(
        p.take_whole(&mut too_big, &[(MAX_QUEUED_BYTES + 1, addr(1))]),
        None
    );
    p.closed = true;
    assert_eq!(p.take_whole(&mut more, &[(100, addr(1))]), None, "closed");
}

#[test]
fn a_destination_always_has_the_same_lane_and_lanes_share_destinations_evenly() {
    for lanes in [1, 2, 3, 4] {
        let mut count = vec![0usize; lanes];
        // Viewers' ports as a host hands them out: in sequence.
        for port in 40_000..41_000 {
            let lane = lane_of(addr(port), lanes);
            assert!(lane < lanes);
            assert_eq!(lane, lane_of(addr(port), lanes), "stable");
            count[lane] += 1;
        }
        let even = 1000 / lanes;
        assert!(
            count.iter().all(|&c| c.abs_diff(even) <= even / 5),
            "{lanes} lanes: {count:?}"
        );
    }
    let v6: SocketAddr = "[2001:db8::7]:5000".parse().unwrap();
    assert!(lane_of(v6, 4) < 4);
    assert_eq!(lane_of(addr(9), 0), 0, "no lanes counts as one");
}

/// Binds receivers until there is one on each of `lanes` lanes.
pub(crate) async fn one_receiver_per_lane(lanes: usize) -> Vec<tokio::net::UdpSocket> {
    let mut found: Vec<Option<tokio::net::UdpSocket>> = (0..lanes).map(|_| None).collect();
    while found.iter().any(Option::is_none) {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket2::SockRef::from(&s)
            .set_recv_buffer_size(4 << 20)
            .unwrap();
        let lane = lane_of(s.local_addr().unwrap(), lanes);
        found[lane].get_or_insert(s);
    }
    found.into_iter().map(Option::unwrap).collect()
}

#[tokio::test]
async fn an_outbox_mixing_lanes_arrives_whole_and_in_order_at_every_destination() {
    let sender = BatchedUdp::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), 3).unwrap();
    let mut q = sender.queue();
    assert_eq!(q.lanes(), 3);
    let viewers = one_receiver_per_lane(3).await;
    // Frames of 30 packets (two turns), every viewer's copy
    // interleaved in one buffer, not grouped by lane: each lane takes
    // its own share.
    for frame in 0..5u32 {
        let (mut wire, mut packets) = (Vec::new(), Vec::new());
        for k in 0..30u32 {
            for (v, rx) in viewers.iter().enumerate() {
                let mut p = vec![0x44; 1200];
                p[..4].copy_from_slice(&(frame * 30 + k).to_be_bytes());
                p[4] = v as u8;
                wire.extend_from_slice(&p);
                packets.push((1200, rx.local_addr().unwrap()));
            }
        }
        q.send(&mut wire, &packets);
        assert!(wire.is_empty());
    }
    let mut buf = vec![0u8; 2000];
    for (v, rx) in viewers.iter().enumerate() {
        for n in 0..150u32 {
            tokio::time::timeout(Duration::from_secs(5), rx.recv(&mut buf))
                .await
                .expect("a packet arrives")
                .unwrap();
            assert_eq!(buf[..4], n.to_be_bytes(), "viewer {v}: packet {n} in order");
            assert_eq!(buf[4], v as u8, "packet {n} reached its own viewer");
        }
    }
    let c = sender.counters();
    assert_eq!(c.direct.load(Ordering::Relaxed), 450);
    assert_eq!(c.dropped.load(Ordering::Relaxed), 0);
    counted_as_sent(&c, 450);
}

#[tokio::test]
async fn a_keyframe_paced_out_on_one_lane_does_not_hold_back_another_lane() {
    let sender = BatchedUdp::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), 2).unwrap();
    let mut q = sender.queue();
    let rx = one_receiver_per_lane(2).await;
    let (slow, fast) = (rx[0].local_addr().unwrap(), rx[1].local_addr().unwrap());
    // 8,000 packets to one viewer: 500 turns at least ROUND apart, so
    // its lane is busy for 100 ms or more.
    let big = 8000;
    let mut wire = vec![1u8; big * 1200];
    q.send(&mut wire, &vec![(1200, slow); big]);
    // Its sender thread has taken the burst (a packet queued before
    // that would share its batch and its turns).
    let counters = sender.counters();
    let deadline = Instant::now() + Duration::from_secs(5);
    while counters.packets.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the burst starts");
        std::thread::yield_now();
    }
    let mut one = vec![2u8; 300];
    q.send(&mut one, &[(300, fast)]);
    let mut buf = vec![0u8; 2000];
    let n = tokio::time::timeout(Duration::from_secs(5), rx[1].recv(&mut buf))
        .await
        .expect("the other lane's packet arrives")
        .unwrap();
    assert_eq!(n, 300);
    let sent = counters.packets.load(Ordering::Relaxed);
    assert!(
        sent <= big as u64,
        "{sent} packets sent: the other lane's packet waited for the keyframe"
    );
}

#[tokio::test]
async fn a_small_burst_to_an_idle_port_leaves_before_send_returns() {
    let sender = BatchedUdp::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), 1).unwrap();
    let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = rx.local_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sender.shared.lock(0).idle {
        assert!(Instant::now() < deadline, "the sender thread never waited");
        std::thread::yield_now();
    }
    let mut wire = vec![5u8; 3 * 1000];
    sender.queue().send(&mut wire, &[(1000, to); 3]);
    let c = sender.counters();
    assert_eq!(
        (
            c.packets.load(Ordering::Relaxed),
            c.sends.load(Ordering::Relaxed)
        ),
        (3, 1),
        "sent by the caller as one GSO run, before send returned"
    );
    assert_eq!(c.direct.load(Ordering::Relaxed), 3);
    let mut buf = vec![0u8; 2000];
    for _ in 0..3 {
        let n = tokio::time::timeout(Duration::from_secs(5), rx.recv(&mut buf))
            .await
            .expect("a packet arrives")
            .unwrap();
        assert_eq!(n, 1000);
    }
}

/// The events this process's epoll descriptors watch on the file with
/// inode `ino` (`/proc/self/fdinfo`: `tfd: .. events: HEX .. ino:
/// HEX`); an instance reached through two descriptors (mio duplicates
/// the runtime's) is listed twice.
fn epoll_interest(ino: u64) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fdinfo").unwrap().flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue; // closed since the listing
        };
        for line in info.lines().filter(|l| l.starts_with("tfd:")) {
            let field = |name: &str| {
                let at = line.find(name)? + name.len();
                let hex = line[at..].split_whitespace().next()?;
                u64::from_str_radix(hex, 16).ok()
            };
            if field("ino:") == Some(ino) {
                found.push(field("events:").unwrap() as u32);
            }
        }
    }
    found
}

/// Every datagram sent runs the socket's write-space callback; were the
/// socket registered for writability the runtime's I/O driver would be
/// woken for each (see `BatchedUdp::new`). It is watched for reading
/// only, and still reads.
#[tokio::test]
async fn the_port_is_watched_for_reading_only_and_still_reads() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let port = BatchedUdp::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), 1).unwrap();
    let fd = port.shared.socket.get_ref().as_raw_fd();
    let ino = std::fs::metadata(format!("/proc/self/fd/{fd}"))
        .unwrap()
        .ino();
    let interest = epoll_interest(ino);
    let (epollin, epollout) = (nix::libc::EPOLLIN as u32, nix::libc::EPOLLOUT as u32);
    assert!(!interest.is_empty(), "the port is registered");
    for events in interest {
        assert_eq!(events & epollin, epollin, "{events:x}");
        assert_eq!(events & epollout, 0, "{events:x}");
    }

    // Reading goes through that registration: a datagram sent to the
    // port after the read started wakes it.
    let to = Conn::local_addr(&port).unwrap();
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let read = async {
        let mut buf = [0u8; 16];
        let (n, from) = Conn::recv_from(&port, &mut buf).await.unwrap();
        (buf[..n].to_vec(), from)
    };
    let send = async {
        tokio::task::yield_now().await;
        peer.send_to(b"ping", to).unwrap();
    };
    let ((got, from), ()) =
        tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(read, send) })
            .await
            .expect("the datagram was read");
    assert_eq!(
        (got.as_slice(), from),
        (&b"ping"[..], peer.local_addr().unwrap())
    );
}
