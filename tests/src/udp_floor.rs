//! The kernel's share of a viewer's floor: what one core spends sending
//! 1200-byte UDP datagrams over loopback, with nothing else done per packet.
//!
//! Every relay pays this on top of encryption, and on loopback the sender's
//! CPU time includes the delivery to the receiving socket as well (the
//! loopback device hands each packet to the receive path in the sending
//! thread's softirq). Two ways are measured: one `sendto` per packet (how
//! webrtc-rs and Janus send) and runs of [`GSO_RUN`] packets to one address
//! as one `sendmsg` with UDP GSO (how the worker's one UDP port sends), the
//! latter twice: to plain receiving sockets, where the loopback cuts each run
//! back into datagrams and queues them one by one in the sender's softirq,
//! and to sockets with UDP receive offload (`UDP_GRO`) on, which take each
//! run whole (as the bench's load client does by default), and the last
//! once more with the runs to every destination in one `sendmmsg`, which
//! tells what of a call's cost is entering the kernel and what is the work
//! per message behind it. The receivers
//! (one socket and thread per destination) drain their sockets on other
//! threads; their time is not counted, and what they miss is.

use std::io::IoSlice;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{self, sockopt, ControlMessage, MsgFlags, SockaddrIn};

use crate::srtp_floor::thread_cpu;

/// Datagram size: a 1200-byte RTP packet plus the 16-byte GCM tag.
pub const DATAGRAM: usize = 1216;
/// Packets per GSO send, as the worker's sender sends a viewer's turn.
pub const GSO_RUN: usize = 16;
/// Destinations the sender rotates over.
pub const RECEIVERS: usize = 10;

/// One way of sending, measured.
#[derive(Debug, Clone, Copy)]
pub struct UdpCase {
    pub packets: u64,
    /// Sending thread CPU time (utime + stime).
    pub cpu: Duration,
    /// Packets per second of sending-thread CPU.
    pub packets_per_sec: f64,
    /// Share of the packets the receivers got.
    pub delivered: f64,
    /// Datagrams the receivers got per read (above 1 when runs arrive
    /// coalesced).
    pub per_read: f64,
}

/// The ways measured on this machine.
#[derive(Debug, Clone, Copy)]
pub struct UdpFloor {
    pub sendto: UdpCase,
    /// GSO runs to plain receivers.
    pub gso: UdpCase,
    /// GSO runs to receivers with `UDP_GRO` on.
    pub gso_gro: UdpCase,
    /// The same runs, one to each of the [`RECEIVERS`] destinations in one
    /// `sendmmsg`: what a call costs besides entering the kernel.
    pub gso_gro_mmsg: UdpCase,
}

impl UdpFloor {
    /// A send call's cost on this machine as a fixed part per call and a
    /// part per datagram, in CPU seconds, fitted to two measured ways: one
    /// datagram per call (`sendto`) and [`GSO_RUN`] per call (to receivers
    /// with UDP receive offload on when `gro`). `None` when the two do not
    /// make a cost that grows with the datagrams from a non-negative base.
    pub fn call_cost(&self, gro: bool) -> Option<(f64, f64)> {
        let gso = if gro { self.gso_gro } else { self.gso };
        split_call_cost(self.sendto.packets_per_sec, gso.packets_per_sec, GSO_RUN)
    }
}

/// The line through (1 datagram per call, `one_rate`) and (`run` per call,
/// `run_rate`), both in datagrams per CPU second: (per call, per datagram).
fn split_call_cost(one_rate: f64, run_rate: f64, run: usize) -> Option<(f64, f64)> {
    if !(one_rate > 0.0 && run_rate > 0.0 && run > 1) {
        return None;
    }
    let (one, whole_run) = (1.0 / one_rate, run as f64 / run_rate);
    let per_datagram = (whole_run - one) / (run - 1) as f64;
    let per_call = one - per_datagram;
    (per_datagram >= 0.0 && per_call >= 0.0).then_some((per_call, per_datagram))
}

/// How the sender sends and the receivers read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Sendto,
    Gso,
    GsoToGro,
    /// A `GsoToGro` run to every destination in one `sendmmsg`.
    MmsgToGro,
}

/// Measures each way as the best of [`TRIES`] runs of `per_case`
/// (a floor is the least the work can cost; a run whose receivers were
/// descheduled pays for waking them, which is not the sending).
pub fn measure(per_case: Duration) -> std::io::Result<UdpFloor> {
    let best = |way: Way| -> std::io::Result<UdpCase> {
        let mut best: Option<UdpCase> = None;
        for _ in 0..TRIES {
            let c = measure_case(way, per_case)?;
            if best.is_none_or(|b| c.packets_per_sec > b.packets_per_sec) {
                best = Some(c);
            }
        }
        Ok(best.expect("TRIES > 0"))
    };
    Ok(UdpFloor {
        sendto: best(Way::Sendto)?,
        gso: best(Way::Gso)?,
        gso_gro: best(Way::GsoToGro)?,
        gso_gro_mmsg: best(Way::MmsgToGro)?,
    })
}

/// Runs per way; the fastest counts.
pub const TRIES: usize = 3;

fn measure_case(way: Way, duration: Duration) -> std::io::Result<UdpCase> {
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let mut addrs = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..RECEIVERS {
        let rx = UdpSocket::bind("127.0.0.1:0")?;
        // Room for bursts (root may exceed rmem_max; if not, the default).
        let _ = socket::setsockopt(&rx, sockopt::RcvBufForce, &(8 << 20));
        if matches!(way, Way::GsoToGro | Way::MmsgToGro) {
            socket::setsockopt(&rx, sockopt::UdpGroSegment, &true)?;
        }
        rx.set_read_timeout(Some(Duration::from_millis(50)))?;
        addrs.push(rx.local_addr()?);
        let (stop, received, reads) = (stop.clone(), received.clone(), reads.clone());
        readers.push(std::thread::spawn(move || {
            // Room for a whole coalesced run (UDP's 64 KB limit).
            let mut buf = vec![0u8; 1 << 16];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = rx.recv(&mut buf) {
                    // Every datagram is DATAGRAM bytes long.
                    let datagrams = n.div_ceil(DATAGRAM) as u64;
                    received.fetch_add(datagrams, Ordering::Relaxed);
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    let sent = std::thread::spawn(move || send_for(&tx, &addrs, way, duration))
        .join()
        .map_err(|_| std::io::Error::other("sender panicked"))??;
    // Let the receivers drain what is queued, then stop them.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut last = u64::MAX;
    while Instant::now() < deadline {
        let now = received.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let _ = r.join();
    }
    let (packets, cpu) = sent;
    Ok(UdpCase {
        packets,
        cpu,
        packets_per_sec: packets as f64 / cpu.as_secs_f64().max(1e-9),
        delivered: received.load(Ordering::Relaxed) as f64 / packets.max(1) as f64,
        per_read: received.load(Ordering::Relaxed) as f64
            / reads.load(Ordering::Relaxed).max(1) as f64,
    })
}

/// Sends for `duration` of wall time; returns packets sent and the thread's
/// CPU time. A full socket buffer (`ENOBUFS`/`EAGAIN`) is retried.
fn send_for(
    tx: &UdpSocket,
    to: &[SocketAddr],
    way: Way,
    duration: Duration,
) -> std::io::Result<(u64, Duration)> {
    let run = vec![0x5au8; DATAGRAM * GSO_RUN];
    let dests: Vec<SockaddrIn> = to
        .iter()
        .map(|a| match a {
            SocketAddr::V4(v4) => SockaddrIn::from(*v4),
            SocketAddr::V6(_) => unreachable!("receivers bind 127.0.0.1"),
        })
        .collect();
    let segment = DATAGRAM as u16;
    // For `MmsgToGro`: one run to each destination per call.
    let mut headers =
        socket::MultiHeaders::<SockaddrIn>::preallocate(dests.len(), Some(nix::cmsg_space!(u16)));
    let runs: Vec<[IoSlice; 1]> = dests.iter().map(|_| [IoSlice::new(&run)]).collect();
    let to_each: Vec<Option<SockaddrIn>> = dests.iter().copied().map(Some).collect();
    let cpu0 = thread_cpu().ok_or_else(|| std::io::Error::other("no thread CPU time"))?;
    let start = Instant::now();
    let mut packets = 0u64;
    let mut i = 0usize;
    while start.elapsed() < duration {
        let dest = &dests[i % dests.len()];
        i += 1;
        let cmsg = [ControlMessage::UdpGsoSegments(&segment)];
        if way == Way::MmsgToGro {
            let fd = tx.as_raw_fd();
            match socket::sendmmsg(fd, &mut headers, &runs, &to_each, cmsg, MsgFlags::empty()) {
                Ok(sent) => packets += (sent.count() * GSO_RUN) as u64,
                Err(nix::errno::Errno::ENOBUFS | nix::errno::Errno::EAGAIN) => {}
                Err(e) => return Err(e.into()),
            }
        } else if way != Way::Sendto {
            let iov = [IoSlice::new(&run)];
            match socket::sendmsg(tx.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), Some(dest)) {
                Ok(_) => packets += GSO_RUN as u64,
                Err(nix::errno::Errno::ENOBUFS | nix::errno::Errno::EAGAIN) => {}
                Err(e) => return Err(e.into()),
            }
        } else {
            for _ in 0..GSO_RUN {
                match socket::sendto(tx.as_raw_fd(), &run[..DATAGRAM], dest, MsgFlags::empty()) {
                    Ok(_) => packets += 1,
                    Err(nix::errno::Errno::ENOBUFS | nix::errno::Errno::EAGAIN) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    let cpu = thread_cpu().unwrap_or(cpu0).saturating_sub(cpu0);
    Ok((packets, cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_cost_splits_into_a_part_per_call_and_a_part_per_datagram() {
        // 1 µs per call and 0.1 µs per datagram: 1.1 µs for one, 2.6 µs
        // for 16.
        let (call, datagram) = split_call_cost(1.0 / 1.1e-6, 16.0 / 2.6e-6, 16)
            .expect("a cost that grows with the datagrams");
        assert!((call - 1.0e-6).abs() < 1e-12, "{call}");
        assert!((datagram - 0.1e-6).abs() < 1e-12, "{datagram}");
        // A run cheaper than one datagram alone is no such cost.
        assert_eq!(split_call_cost(1.0 / 3e-6, 16.0 / 2e-6, 16), None);
        assert_eq!(split_call_cost(0.0, 1.0, 16), None);
    }

    #[test]
    fn every_way_sends_datagrams_that_arrive_and_cost_cpu() {
        let f = measure(Duration::from_millis(300)).expect("loopback UDP");
        for (name, c) in [
            ("sendto", f.sendto),
            ("gso", f.gso),
            ("gso to gro", f.gso_gro),
            ("gso to gro, sendmmsg", f.gso_gro_mmsg),
        ] {
            eprintln!(
                "{name}: {} packets, {:?} CPU, {:.0}/s, {:.1}% delivered, {:.1} per read",
                c.packets,
                c.cpu,
                c.packets_per_sec,
                c.delivered * 100.0,
                c.per_read
            );
            assert!(c.packets > 0, "{name} sent nothing");
            assert!(c.delivered > 0.0, "{name}: nothing arrived");
            assert!(c.delivered <= 1.0, "{name}: more arrived than was sent");
        }
        assert_eq!(
            f.sendto.per_read, 1.0,
            "a plain socket reads one datagram at a time"
        );
        assert_eq!(f.gso.per_read, 1.0, "a plain socket gets GSO runs cut up");
        for (name, c) in [("gso to gro", f.gso_gro), ("sendmmsg", f.gso_gro_mmsg)] {
            assert!(
                c.per_read > 1.0,
                "{name}: a socket with UDP_GRO on reads runs coalesced ({:.2} per read)",
                c.per_read
            );
        }
    }
}
