//! When each frame left a relay for each viewer, seen by the kernel.
//!
//! The delay section 6 reports first is measured at the viewer: it holds
//! the relay's work and also the load client's (one webrtc-rs process
//! receiving, decrypting and reading N streams on the same 2 cores). The
//! issue asks for the delay "from the packet entering the relay to it
//! leaving for viewer N", so this module watches the loopback device with a
//! packet socket (`AF_PACKET`, root only) and takes the kernel's timestamp
//! of each outgoing video packet that ends a frame: the instant the relay's
//! send reached the device, before any receiver work.
//!
//! SRTP leaves the RTP header in the clear, so a packet is known by its
//! SSRC (one per viewer) and RTP timestamp (one per frame), which the load
//! client links to the bench's frame id. Packets the worker sends with UDP
//! GSO pass the tap as one datagram of several equal-sized packets; the
//! segment size is where the first packet's RTP header (version, payload
//! type, SSRC) repeats (a false match in encrypted bytes has odds of about
//! 2^-38 per offset). Capturing makes the kernel copy every loopback
//! packet, which costs the senders, so it runs in a window of its own after
//! the CPU window.

use std::collections::{HashMap, HashSet};
use std::io;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use nix::sys::socket::{
    self, sockopt, AddressFamily, ControlMessageOwned, LinkAddr, MsgFlags, SockFlag, SockProtocol,
    SockType,
};
use nix::sys::time::TimeVal;

/// What one capture saw.
#[derive(Debug, Default)]
pub struct Egress {
    /// (SSRC, RTP timestamp) of a watched stream's frame-ending packet →
    /// when it reached the device (the first time, should it be resent).
    pub marker_at: HashMap<(u32, u32), SystemTime>,
    /// Outgoing UDP packets looked at (GSO datagrams counted per packet).
    pub packets: u64,
}

/// A running capture; [`Capture::finish`] stops it.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<io::Result<Egress>>,
}

impl Capture {
    /// Starts watching loopback for frame ends of the streams `ssrcs`.
    pub fn start(ssrcs: HashSet<u32>) -> io::Result<Capture> {
        let fd = open()?;
        let lo = nix::net::if_::if_nametoindex("lo")? as usize;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("egress-capture".into())
            .spawn(move || run(&fd, lo, &ssrcs, &s))?;
        Ok(Capture { stop, thread })
    }

    pub fn finish(self) -> io::Result<Egress> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| io::Error::other("capture thread panicked"))?
    }
}

/// A raw packet socket with kernel timestamps, a large buffer and a 50 ms
/// read timeout (to notice the stop flag).
fn open() -> io::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::empty(),
        SockProtocol::EthAll,
    )?;
    socket::setsockopt(&fd, sockopt::ReceiveTimestampns, &true)?;
    socket::setsockopt(&fd, sockopt::RcvBufForce, &(256 << 20))?;
    socket::setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &TimeVal::from(libc_timeval(Duration::from_millis(50))),
    )?;
    Ok(fd)
}

fn libc_timeval(d: Duration) -> nix::libc::timeval {
    nix::libc::timeval {
        tv_sec: d.as_secs() as _,
        tv_usec: d.subsec_micros() as _,
    }
}

/// The loopback device's link header (an all-zero Ethernet header).
const ETH_HDR_LEN: usize = 14;
/// `PACKET_OUTGOING`: a packet this host sent.
const OUTGOING: u8 = 4;

fn run(fd: &OwnedFd, lo: usize, ssrcs: &HashSet<u32>, stop: &AtomicBool) -> io::Result<Egress> {
    let mut out = Egress::default();
    let mut buf = vec![0u8; ETH_HDR_LEN + 65_536];
    let mut control = nix::cmsg_space!(nix::sys::time::TimeSpec);
    while !stop.load(Ordering::Relaxed) {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match socket::recvmsg::<LinkAddr>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut control),
            MsgFlags::empty(),
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let Some(from) = msg.address else { continue };
        if from.ifindex() != lo || from.pkttype() != OUTGOING {
            continue;
        }
        let at = msg.cmsgs()?.find_map(|c| match c {
            ControlMessageOwned::ScmTimestampns(ts) => Some(
                SystemTime::UNIX_EPOCH + Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32),
            ),
            _ => None,
        });
        let n = msg.bytes;
        let Some(at) = at else { continue };
        let Some(payload) = buf.get(ETH_HDR_LEN..n).and_then(udp_payload) else {
            continue;
        };
        for packet in segments(payload) {
            out.packets += 1;
            if let Some(key) = frame_end(packet, ssrcs) {
                out.marker_at.entry(key).or_insert(at);
            }
        }
    }
    Ok(out)
}

/// The packets of a UDP payload that may be a GSO batch of equal-sized RTP
/// packets: cut where the first packet's header (first byte, payload type
/// without the marker bit, SSRC) repeats. Pure.
fn segments(p: &[u8]) -> std::slice::Chunks<'_, u8> {
    let size = if p.len() >= 24 && p[0] >> 6 == 2 {
        (12..=p.len() - 12)
            .find(|&k| {
                p[k] == p[0] && p[k + 1] & 0x7f == p[1] & 0x7f && p[k + 8..k + 12] == p[8..12]
            })
            .unwrap_or(p.len())
    } else {
        p.len()
    };
    p.chunks(size.max(1))
}

/// The UDP payload of an IPv4 datagram, if it is one. Pure.
fn udp_payload(ip: &[u8]) -> Option<&[u8]> {
    let first = *ip.first()?;
    if first >> 4 != 4 || *ip.get(9)? != 17 {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    ip.get(ihl + 8..)
}

/// (SSRC, RTP timestamp) of an RTP or SRTP packet of one of `ssrcs` with
/// the marker bit set (a frame's last packet). Pure.
fn frame_end(p: &[u8], ssrcs: &HashSet<u32>) -> Option<(u32, u32)> {
    if p.len() < 12 || p[0] >> 6 != 2 || p[1] & 0x80 == 0 || !(96..=127).contains(&(p[1] & 0x7f)) {
        return None;
    }
    let ts = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
    let ssrc = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
    ssrcs.contains(&ssrc).then_some((ssrc, ts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(marker: bool, pt: u8, ts: u32, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }, 0, 1];
        p.extend(ts.to_be_bytes());
        p.extend(ssrc.to_be_bytes());
        p.extend([0xaa; 20]);
        p
    }

    #[test]
    fn only_marked_video_packets_of_watched_streams_are_frame_ends() {
        let watched: HashSet<u32> = [7].into();
        assert_eq!(
            frame_end(&rtp(true, 96, 9000, 7), &watched),
            Some((7, 9000))
        );
        assert_eq!(frame_end(&rtp(false, 96, 9000, 7), &watched), None);
        assert_eq!(frame_end(&rtp(true, 96, 9000, 8), &watched), None);
        // RTCP sender report (PT 200: second byte 0xc8 reads as marker + 72).
        assert_eq!(frame_end(&rtp(true, 72, 9000, 7), &watched), None);
        assert_eq!(frame_end(&[0x80, 0xe0], &watched), None);
    }

    #[test]
    fn a_gso_batch_is_cut_where_the_rtp_header_repeats() {
        let a = rtp(false, 96, 9000, 7);
        let b = rtp(true, 96, 9000, 7);
        let mut batch = a.clone();
        batch.extend(&a);
        batch.extend(&b[..20]); // the last packet may be shorter
        let cut: Vec<&[u8]> = segments(&batch).collect();
        assert_eq!(cut, vec![&a[..], &a[..], &b[..20]]);
        // One packet alone, and a non-RTP payload, stay whole.
        assert_eq!(segments(&b).count(), 1);
        assert_eq!(segments(&[1, 2, 3]).count(), 1);
    }

    #[test]
    fn udp_payload_skips_the_ipv4_and_udp_headers() {
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
        ip.extend([0u8; 8]); // addresses
        ip.extend([0u8; 8]); // UDP header
        ip.extend([1, 2, 3]);
        assert_eq!(udp_payload(&ip), Some(&[1u8, 2, 3][..]));
        ip[9] = 6; // TCP
        assert_eq!(udp_payload(&ip), None);
    }
}
