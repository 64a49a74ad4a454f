//! The RTP source: H.264 and Opus pushed as plain RTP to UDP ports, the way
//! Janus's streaming plugin takes media (ffmpeg, GStreamer or OBS send it).
//!
//! ```text
//! ffmpeg -re -i in.mp4 \
//!   -map 0:v -c:v libx264 -profile:v baseline -tune zerolatency -g 30 -bf 0 \
//!     -f rtp rtp://127.0.0.1:5004 \
//!   -map 0:a -c:a libopus -f rtp rtp://127.0.0.1:5006
//! ```
//!
//! Behaviour (also in docs/protocol.md):
//! - `start` binds the sockets and returns: the session is live once its
//!   ports are bound ([`SourceHandle::set_live_on_start`]); media may
//!   start later. A port in use fails the create with `source_failed`.
//! - Keyframe requests cannot reach an RTP sender (they are counted): a
//!   joining viewer gets the video since the sender's last IDR first
//!   ([`super::gop`], up to 4 MiB), else waits for its next IDR, so senders
//!   should still use a short GOP (ffmpeg `-g 30`). Browsers are offered
//!   H.264 constrained baseline (profile-level-id 42e01f) only: the sender
//!   must encode that profile.
//! - Packets go to the viewers as they arrive, not once their frame is
//!   whole (cut-through, [`h264`]): the relay adds no frame-sized delay.
//!   Payloads over [`MAX_PAYLOAD`] bytes are cut into FU-A fragments.
//! - Loss cuts the broken frame short (decoders drop it) and nothing goes
//!   out until the next IDR; a sender that stops and restarts (new SSRC or
//!   a sequence jump) is taken up again at its next IDR.
//! - Silence is not an error: the session keeps running and viewers see the
//!   last picture until media comes back (or the session's idle TTL or
//!   maximum lifetime ends it).
//!
//! One OS thread per socket, like every source's threads: a blocking
//! `recv_from` with a short timeout is the cheapest receive there is (no
//! waker, no task switch) and keeps packet work off the runtime that
//! drives the viewers. The timeout bounds how long a stop takes. After
//! each blocking read the video thread takes what else is already queued
//! (without waiting) and publishes it all as one item, so viewers' writers
//! wake once per burst, not once per packet.

mod h264;
mod opus;
mod packet;
mod reorder;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bus_schema::{SourceSpec, RTP_NOMINAL_FPS};
use bytes::Bytes;
use std::sync::Arc;

pub use h264::{H264Forwarder, VideoCounters, MAX_PAYLOAD};
pub use opus::{AudioCounters, OpusTrack};

use super::{
    EncodedAudio, Media, SourceError, SourceFactory, SourceFault, SourceHandle, SourceLink,
    VideoPacket, VIDEO_CLOCK_HZ,
};

/// How long a receive blocks before the thread checks for a stop.
const POLL: Duration = Duration::from_millis(50);
/// The shortest receive timeout set for the reorder window's deadline (a
/// zero timeout would mean none).
const MIN_WAIT: Duration = Duration::from_micros(100);
/// Socket receive buffer asked for (the kernel caps it at
/// `net.core.rmem_max`): an IDR of a 1080p stream arrives as one burst.
const RECV_BUFFER: usize = 4 << 20;
/// Broadcast depth, in datagrams: about three seconds of a 12 Mbit/s
/// stream (a keyframe alone can be hundreds of packets).
const MEDIA_CAPACITY: usize = 4096;
/// Datagrams taken from the video socket at most per published item:
/// those already queued when the first is read (at most about 32 packets'
/// processing, some tens of microseconds, delay the first).
const MAX_BATCH: usize = 32;
/// How often the counters are logged while media flows.
const REPORT_EVERY: Duration = Duration::from_secs(30);

/// Starts [`SourceSpec::Rtp`] sources.
#[derive(Clone, Copy, Debug, Default)]
pub struct RtpFactory;

impl SourceFactory for RtpFactory {
    fn start(&self, spec: &SourceSpec) -> Result<SourceHandle, SourceError> {
        spec.validate()
            .map_err(|e| SourceError::InvalidSpec(e.message))?;
        let SourceSpec::Rtp {
            video_port,
            audio_port,
            ref bind,
            video_payload_type,
            audio_payload_type,
        } = *spec
        else {
            return Err(SourceError::Unsupported(format!("{spec:?}")));
        };
        let ip: IpAddr = bind
            .parse()
            .map_err(|_| SourceError::InvalidSpec(format!("rtp bind {bind:?} is not an IP")))?;
        // Both sockets are bound before any thread starts, so a port in use
        // fails the start and leaves nothing behind.
        let video = bind_udp(SocketAddr::new(ip, video_port), "video")?;
        let audio = audio_port
            .map(|port| bind_udp(SocketAddr::new(ip, port), "audio"))
            .transpose()?;

        let mut handle = SourceHandle::new(MEDIA_CAPACITY);
        handle.set_live_on_start();
        // The media comes from elsewhere: its producer reads the merged
        // input from the bus (`source.<id>.input`), which the session
        // publishes.
        handle.set_input_route(bus_schema::InputRoute::Bus);
        let restart_step = u64::from(VIDEO_CLOCK_HZ / RTP_NOMINAL_FPS);
        let forwarder = H264Forwarder::new(video_payload_type, restart_step);
        handle.spawn_thread("rtp-video", move |link| {
            video_loop(&link, &video, forwarder)
        })?;
        if let Some(audio) = audio {
            let track = OpusTrack::new(audio_payload_type);
            handle.spawn_thread("rtp-audio", move |link| audio_loop(&link, &audio, track))?;
        }
        tracing::info!(%ip, video_port, ?audio_port, "rtp source listening");
        Ok(handle)
    }
}

fn bind_udp(addr: SocketAddr, what: &str) -> Result<UdpSocket, SourceError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let fail = |e: std::io::Error| SourceError::Bind(format!("rtp {what} port {addr}: {e}"));
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(fail)?;
    // Best effort: a smaller buffer only means more loss in bursts.
    let _ = socket.set_recv_buffer_size(RECV_BUFFER);
    socket.bind(&addr.into()).map_err(fail)?;
    let socket: UdpSocket = socket.into();
    socket.set_read_timeout(Some(POLL)).map_err(fail)?;
    Ok(socket)
}

/// Receives one datagram into `buf`. `Ok(None)` on a timeout.
fn recv(socket: &UdpSocket, buf: &mut [u8]) -> Result<Option<usize>, SourceFault> {
    use std::io::ErrorKind::{Interrupted, TimedOut, WouldBlock};
    match socket.recv_from(buf) {
        Ok((n, _)) => Ok(Some(n)),
        Err(e) if matches!(e.kind(), WouldBlock | TimedOut | Interrupted) => Ok(None),
        // An ICMP error from an earlier send cannot happen (we never send),
        // but some platforms report one on the next receive: not fatal.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(None),
        Err(e) => Err(SourceFault::Io {
            what: "rtp receive",
            detail: e.to_string(),
        }),
    }
}

/// Receives one more datagram if one is already queued; never waits. Any
/// error ends the draining (the next blocking [`recv`] reports it).
fn recv_queued(socket: &UdpSocket, buf: &mut [u8]) -> Option<usize> {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    recv(socket.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT).ok()
}

/// Checks for a stop (and counts keyframe requests) every [`POLL`], not
/// per packet: the stop flag sits behind a mutex.
struct Housekeeping {
    next_check: Instant,
    next_report: Instant,
    /// Only the video thread takes keyframe requests.
    takes_keyframe_requests: bool,
    keyframe_requests: u64,
}

impl Housekeeping {
    fn new(now: Instant, takes_keyframe_requests: bool) -> Self {
        Housekeeping {
            next_check: now,
            next_report: now + REPORT_EVERY,
            takes_keyframe_requests,
            keyframe_requests: 0,
        }
    }

    /// Every [`POLL`] (or when a read timed out): whether the source should
    /// stop; `None` between checks. The caller refreshes its counters then.
    fn check(&mut self, link: &SourceLink, now: Instant, timed_out: bool) -> Option<bool> {
        if !timed_out && now < self.next_check {
            return None;
        }
        self.next_check = now + POLL;
        if self.takes_keyframe_requests && link.take_keyframe_request() {
            self.keyframe_requests += 1;
        }
        Some(link.stop_requested())
    }

    fn report(&mut self, now: Instant) -> bool {
        if now < self.next_report {
            return false;
        }
        self.next_report = now + REPORT_EVERY;
        true
    }
}

fn video_loop(
    link: &SourceLink,
    socket: &UdpSocket,
    mut forwarder: H264Forwarder,
) -> Result<(), SourceFault> {
    let mut buf = vec![0u8; 65_536];
    let mut house = Housekeeping::new(Instant::now(), true);
    let mut out = Vec::new();
    let mut timeout = POLL;
    loop {
        // Wake in time for a packet held in the reorder window.
        let wait = forwarder.deadline().map_or(POLL, |d| {
            d.saturating_duration_since(Instant::now())
                .clamp(MIN_WAIT, POLL)
        });
        if wait != timeout {
            socket
                .set_read_timeout(Some(wait))
                .map_err(|e| SourceFault::Io {
                    what: "rtp receive timeout",
                    detail: e.to_string(),
                })?;
            timeout = wait;
        }
        let got = recv(socket, &mut buf)?;
        let now = Instant::now();
        let frames = forwarder.counters().frames;
        if let Some(n) = got {
            forwarder.push(now, &buf[..n], |p| out.push(p));
            push_queued(
                |b| recv_queued(socket, b),
                &mut buf,
                &mut forwarder,
                &mut out,
            );
        } else {
            forwarder.expire(now, |p| out.push(p));
        }
        if !out.is_empty() {
            link.publish(Media::VideoPackets(out.drain(..).collect()));
        }
        for _ in frames..forwarder.counters().frames {
            link.count_frame();
        }
        if let Some(stop) = house.check(link, now, got.is_none()) {
            link.set_rtp_video(forwarder.counters(), house.keyframe_requests);
            if stop {
                break;
            }
        }
        if house.report(now) {
            let c = forwarder.counters();
            tracing::debug!(counters = ?c, size = ?forwarder.picture_size(), keyframe_requests = house.keyframe_requests, "rtp video");
        }
    }
    tracing::info!(counters = ?forwarder.counters(), keyframe_requests = house.keyframe_requests, "rtp video source stopped");
    Ok(())
}

/// Datagrams already queued behind the one just read (senders send a frame
/// as a burst), up to [`MAX_BATCH`] in all, through the forwarder: they go
/// out in the same item, one wake-up per viewer for the burst instead of
/// one per packet. `queued` reads one without waiting (`None`: nothing
/// more). Returns how many were taken.
fn push_queued(
    mut queued: impl FnMut(&mut [u8]) -> Option<usize>,
    buf: &mut [u8],
    forwarder: &mut H264Forwarder,
    out: &mut Vec<VideoPacket>,
) -> usize {
    let mut taken = 0;
    while taken + 1 < MAX_BATCH {
        let Some(n) = queued(buf) else {
            break;
        };
        forwarder.push(Instant::now(), &buf[..n], |p| out.push(p));
        taken += 1;
    }
    taken
}

fn audio_loop(
    link: &SourceLink,
    socket: &UdpSocket,
    mut track: OpusTrack,
) -> Result<(), SourceFault> {
    let mut buf = vec![0u8; 65_536];
    let mut house = Housekeeping::new(Instant::now(), false);
    let mut seq = 0u64;
    loop {
        let got = recv(socket, &mut buf)?;
        let now = Instant::now();
        if let Some(n) = got {
            if let Some(p) = track.push(&buf[..n]) {
                link.publish(Media::Audio(Arc::new(EncodedAudio {
                    seq,
                    pts_48k: p.pts_48k,
                    opus: Bytes::copy_from_slice(&buf[p.range]),
                    captured_at: now,
                })));
                seq += 1;
            }
        }
        if let Some(stop) = house.check(link, now, got.is_none()) {
            link.set_rtp_audio(track.counters());
            if stop {
                break;
            }
        }
    }
    tracing::info!(counters = ?track.counters(), "rtp audio source stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RTP packets of payload type 96 whose payload is one IDR slice NAL.
    fn datagrams(n: u16) -> std::collections::VecDeque<Vec<u8>> {
        (0..n)
            .map(|seq| {
                let mut p = vec![0x80, 96 | 0x80];
                p.extend(seq.to_be_bytes());
                p.extend((u32::from(seq) * 3000).to_be_bytes());
                p.extend(7u32.to_be_bytes());
                p.extend([0x65, 0x88, 1, 2, 3]);
                p
            })
            .collect()
    }

    fn take(queue: &mut std::collections::VecDeque<Vec<u8>>, buf: &mut [u8]) -> Option<usize> {
        let d = queue.pop_front()?;
        buf[..d.len()].copy_from_slice(&d);
        Some(d.len())
    }

    #[test]
    fn a_read_takes_what_is_queued_behind_it_up_to_the_batch_limit() {
        let mut buf = vec![0u8; 2048];
        let mut out = Vec::new();

        // Five queued behind the first read: all five, then the queue is empty.
        let mut queue = datagrams(5);
        let mut f = H264Forwarder::new(96, 3000);
        assert_eq!(
            push_queued(|b| take(&mut queue, b), &mut buf, &mut f, &mut out),
            5
        );
        assert!(queue.is_empty());
        assert_eq!(f.counters().packets, 5);

        // More than a batch: the first read plus MAX_BATCH - 1; the rest
        // waits for the next read.
        let mut queue = datagrams(100);
        let mut f = H264Forwarder::new(96, 3000);
        let taken = push_queued(|b| take(&mut queue, b), &mut buf, &mut f, &mut out);
        assert_eq!(taken, MAX_BATCH - 1);
        assert_eq!(queue.len(), 100 - taken);
        assert_eq!(f.counters().packets, taken as u64);

        // Nothing queued: nothing taken.
        let mut f = H264Forwarder::new(96, 3000);
        assert_eq!(push_queued(|_| None, &mut buf, &mut f, &mut out), 0);
    }
}
