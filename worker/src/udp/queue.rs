//! The lanes, their sender threads, and the handle the fan-outs queue on.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tracing::{debug, warn};

use super::plan::*;
use super::*;

/// What the sender thread has done, for the worker's stats and the bench.
#[derive(Debug, Default)]
pub struct SendCounters {
    /// Datagrams handed to the kernel.
    pub packets: AtomicU64,
    /// `sendmsg` calls that carried them.
    pub sends: AtomicU64,
    /// Packets dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Packets the kernel refused (an address the socket cannot reach,
    /// such as an IPv6 candidate on the IPv4 port; ICE tries every pair).
    pub failed: AtomicU64,
    /// Packets queued by the worker's own media path (`crate::srtp_out`:
    /// SRTP it encrypted itself), the rest coming from webrtc-rs (ICE,
    /// DTLS, SCTP).
    pub direct: AtomicU64,
}

#[derive(Default)]
pub(super) struct Pending {
    pub(super) bytes: Vec<u8>,
    pub(super) packets: Vec<Queued>,
    /// The sender thread is waiting for packets (so a push must wake it).
    pub(super) idle: bool,
    pub(super) closed: bool,
}

impl Pending {
    /// Appends a packet unless the queue is closed or would pass
    /// [`MAX_QUEUED_BYTES`].
    pub(super) fn push(&mut self, buf: &[u8], to: SocketAddr) -> bool {
        if self.closed || self.bytes.len() + buf.len() > MAX_QUEUED_BYTES {
            return false;
        }
        let start = self.bytes.len();
        self.bytes.extend_from_slice(buf);
        self.packets.push(Queued {
            to,
            start,
            len: buf.len(),
        });
        true
    }

    /// [`Self::push`]es each packet; returns how many were queued and
    /// dropped.
    pub(super) fn push_all<'a>(
        &mut self,
        bufs: impl IntoIterator<Item = (&'a [u8], SocketAddr)>,
    ) -> (u64, u64) {
        let (mut queued, mut dropped) = (0, 0);
        for (buf, to) in bufs {
            if self.push(buf, to) {
                queued += 1;
            } else {
                dropped += 1;
            }
        }
        (queued, dropped)
    }
}

impl Pending {
    /// Takes `wire` (packets laid end to end, `packets` their lengths and
    /// destinations) as the queue's buffer if nothing is waiting and it
    /// fits, giving back the queue's empty buffer; `None` otherwise.
    pub(super) fn take_whole(
        &mut self,
        wire: &mut Vec<u8>,
        packets: &[(usize, SocketAddr)],
    ) -> Option<u64> {
        if self.closed || !self.packets.is_empty() || wire.len() > MAX_QUEUED_BYTES {
            return None;
        }
        self.bytes.clear();
        std::mem::swap(&mut self.bytes, wire);
        self.packets.extend(laid_out(packets));
        Some(packets.len() as u64)
    }
}

/// One sender thread's queue.
#[derive(Default)]
pub(super) struct Lane {
    pub(super) pending: Mutex<Pending>,
    pub(super) wake: Condvar,
}

pub(super) struct Shared {
    pub(super) lanes: Box<[Lane]>,
    pub(super) counters: Arc<SendCounters>,
    /// Registered with the runtime for reading only (see
    /// [`BatchedUdp::new`]); sends go straight to the file descriptor.
    pub(super) socket: AsyncFd<std::net::UdpSocket>,
    pub(super) state: quinn_udp::UdpSocketState,
}

impl Shared {
    pub(super) fn lock(&self, lane: usize) -> MutexGuard<'_, Pending> {
        self.lanes[lane]
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn lane_of(&self, to: SocketAddr) -> usize {
        lane_of(to, self.lanes.len())
    }

    pub(super) fn close(&self) {
        for (i, lane) in self.lanes.iter().enumerate() {
            self.lock(i).closed = true;
            lane.wake.notify_one();
        }
    }
}

/// A UDP socket whose sends are queued and batched (see the module docs).
pub struct BatchedUdp {
    pub(super) shared: Arc<Shared>,
}

impl BatchedUdp {
    /// Wraps a bound socket and starts its `threads` sender threads (at
    /// least one, at most [`MAX_SEND_THREADS`]). Must be called inside a
    /// tokio runtime (the socket is registered with it).
    ///
    /// The registration is for reading only. A `tokio::net::UdpSocket`
    /// also registers for writability, edge-triggered; on Linux every sent
    /// datagram, once it leaves the socket's buffer, runs the socket's
    /// write-space callback (`sock_wfree`), and an epoll registration that
    /// includes `EPOLLOUT` wakes the thread parked in `epoll_wait`: with
    /// tens of thousands of datagrams a second going out, the runtime's
    /// I/O driver would wake for nothing hundreds of times a second.
    /// Nothing here awaits writability: the sender threads wait for room
    /// with `poll`.
    pub fn new(socket: std::net::UdpSocket, threads: usize) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        // Deprecated in tokio 1.54 for types whose `as_raw_fd` could
        // change while registered; a `std::net::UdpSocket` owns its one
        // descriptor for its whole life, which is what the safe wrapper
        // needs (the alternative, `register_with_interest`, is the same
        // call marked `unsafe`, and the workspace denies unsafe code).
        #[allow(deprecated)]
        let socket = AsyncFd::with_interest(socket, Interest::READABLE)?;
        let state = quinn_udp::UdpSocketState::new(socket.get_ref().into())?;
        // quinn-udp turns receive offload (UDP_GRO) on for its own receive
        // path; the mux reads one datagram per `recv_from`, so it goes off.
        gro_off(socket.get_ref());
        let threads = threads.clamp(1, MAX_SEND_THREADS);
        let shared = Arc::new(Shared {
            lanes: (0..threads).map(|_| Lane::default()).collect(),
            counters: Arc::default(),
            socket,
            state,
        });
        let port = Self { shared };
        for lane in 0..threads {
            let shared = port.shared.clone();
            // On an error the port is dropped, which closes the lanes
            // already started.
            std::thread::Builder::new()
                .name(format!("udp-send-{lane}"))
                .spawn(move || send_loop(&shared, lane))?;
        }
        Ok(port)
    }

    pub fn counters(&self) -> Arc<SendCounters> {
        self.shared.counters.clone()
    }

    /// A handle that queues packets on this port without owning it.
    pub fn queue(&self) -> UdpQueue {
        UdpQueue {
            shared: self.shared.clone(),
            plan: Schedule::default(),
        }
    }

    pub(super) fn push(&self, buf: &[u8], to: SocketAddr) {
        let lane = self.shared.lane_of(to);
        self.queue().push(lane, std::iter::once((buf, to)));
    }
}

/// Queues packets on a [`BatchedUdp`] port (the worker's own media path,
/// `crate::srtp_out`); dropping it leaves the port open.
#[derive(Clone)]
pub struct UdpQueue {
    pub(super) shared: Arc<Shared>,
    /// Reused by [`Self::send_now`].
    pub(super) plan: Schedule,
}

impl UdpQueue {
    /// How many sender threads (lanes) the port has; [`lane_of`] says
    /// which one a destination's packets go to.
    pub fn lanes(&self) -> usize {
        self.shared.lanes.len()
    }

    /// Bytes that may still be queued for `to` (on its lane) before the
    /// queue is full and drops.
    pub fn room(&self, to: SocketAddr) -> usize {
        let p = self.shared.lock(self.shared.lane_of(to));
        MAX_QUEUED_BYTES.saturating_sub(p.bytes.len())
    }

    /// Queues packets laid end to end in `wire`, each with its length and
    /// destination (a session's viewers, `crate::srtp_out::Outbox`), under
    /// one lock per lane, and leaves `wire` empty; the sender thread
    /// batches each destination's run. When the packets are all for one
    /// lane (an outbox keeps one buffer per lane) and nothing is waiting
    /// there, the lane takes `wire`'s buffer whole and gives its own empty
    /// one back (no copy); otherwise the bytes are appended. A small burst
    /// is sent from the caller's thread instead when the lane's sender
    /// thread is idle ([`Self::send_now`]).
    pub fn send(&mut self, wire: &mut Vec<u8>, packets: &[(usize, SocketAddr)]) {
        let lane = packets
            .first()
            .map_or(0, |&(_, to)| self.shared.lane_of(to));
        let queued = if packets
            .iter()
            .any(|&(_, to)| self.shared.lane_of(to) != lane)
        {
            // Several lanes: each takes a copy of its own packets.
            (0..self.lanes())
                .map(|lane| {
                    let mine = laid_out(packets).filter(|q| self.shared.lane_of(q.to) == lane);
                    self.push(lane, mine.map(|q| (&wire[q.start..q.start + q.len], q.to)))
                })
                .sum()
        } else if self.send_now(lane, wire, packets) {
            0
        } else {
            self.queue(lane, |p| {
                if let Some(n) = p.take_whole(wire, packets) {
                    return (n, 0);
                }
                p.push_all(laid_out(packets).map(|q| (&wire[q.start..q.start + q.len], q.to)))
            })
        };
        wire.clear();
        self.shared
            .counters
            .direct
            .fetch_add(queued, Ordering::Relaxed);
    }

    /// Sends a whole outbox from the caller's thread when the sender thread
    /// waits with nothing queued and no destination has more than one turn
    /// of packets (a burst or a frame of RTP input, not a keyframe to be
    /// paced): spares the thread's wake-up and hand-off, whatever the
    /// number of viewers (7–10% less CPU per viewer at 50 and 100 viewers
    /// of a 1080p60 stream, docs/profile.md). What the socket does not
    /// take at once is queued, in order. `false` (nothing sent) otherwise.
    pub(super) fn send_now(
        &mut self,
        lane: usize,
        wire: &[u8],
        packets: &[(usize, SocketAddr)],
    ) -> bool {
        {
            let p = self.shared.lock(lane);
            if p.closed || !p.idle || !p.packets.is_empty() {
                return false;
            }
        }
        let max_segments = self.shared.state.max_gso_segments();
        self.plan
            .plan_laid_out(packets, max_segments, PACKETS_PER_TURN);
        let state = &self.shared.state;
        let mut rounds = self.plan.rounds();
        let (Some(round), None) = (rounds.next(), rounds.next()) else {
            return false;
        };
        let c = &self.shared.counters;
        for (i, run) in round.iter().enumerate() {
            let transmit = run.transmit(wire);
            if state
                .try_send(self.shared.socket.get_ref().into(), &transmit)
                .is_err()
            {
                // A full socket buffer (or GSO refused): the thread sends
                // the rest, waiting for room or packet by packet.
                let rest = round[i..].iter().flat_map(|r| {
                    (0..r.count).map(move |k| {
                        let s = r.start + k * r.segment;
                        (&wire[s..(s + r.segment).min(r.end)], r.to)
                    })
                });
                let n = self.push(lane, rest);
                c.direct.fetch_add(n, Ordering::Relaxed);
                return true;
            }
            c.packets.fetch_add(run.count as u64, Ordering::Relaxed);
            c.sends.fetch_add(1, Ordering::Relaxed);
            c.direct.fetch_add(run.count as u64, Ordering::Relaxed);
        }
        true
    }

    /// Queues packets on `lane`; returns how many were queued.
    pub(super) fn push<'a>(
        &self,
        lane: usize,
        bufs: impl IntoIterator<Item = (&'a [u8], SocketAddr)>,
    ) -> u64 {
        self.queue(lane, |p| p.push_all(bufs))
    }

    /// Runs `add` (which returns packets queued and dropped) under
    /// `lane`'s lock, counts the drops and wakes its sender thread if it
    /// waits; returns how many were queued.
    pub(super) fn queue(&self, lane: usize, add: impl FnOnce(&mut Pending) -> (u64, u64)) -> u64 {
        let mut p = self.shared.lock(lane);
        let (queued, dropped) = add(&mut p);
        let wake = p.idle && !p.packets.is_empty();
        if wake {
            p.idle = false;
        }
        drop(p);
        if dropped > 0 {
            self.shared
                .counters
                .dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
        if wake {
            self.shared.lanes[lane].wake.notify_one();
        }
        queued
    }
}

impl Drop for BatchedUdp {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// A sender thread: takes everything queued on its lane, sends it run by
/// run, and reuses the buffers.
pub(super) fn send_loop(shared: &Shared, lane: usize) {
    let (socket, state) = (shared.socket.get_ref(), &shared.state);
    let mut batch = Pending::default();
    let mut plan = Schedule::default();
    let (mut trim_bytes, mut trim_packets) = (Trim::new(TRIM_FLOOR_BYTES), trim_entries());
    loop {
        {
            let mut p = shared.lock(lane);
            while p.packets.is_empty() && !p.closed {
                p.idle = true;
                p = shared.lanes[lane]
                    .wake
                    .wait(p)
                    .unwrap_or_else(|e| e.into_inner());
            }
            if p.packets.is_empty() {
                return; // closed and drained
            }
            std::mem::swap(&mut p.bytes, &mut batch.bytes);
            std::mem::swap(&mut p.packets, &mut batch.packets);
        }
        plan.plan(&batch.packets, state.max_gso_segments(), PACKETS_PER_TURN);
        let mut round_started = Instant::now();
        for (i, round) in plan.rounds().enumerate() {
            if i > 0 {
                // A destination's next turn comes no sooner than ROUND
                // after its last (only waits when few destinations share
                // the batch: many take longer than that to serve).
                let spent = round_started.elapsed();
                if spent < ROUND {
                    std::thread::sleep(ROUND - spent);
                }
                round_started = Instant::now();
            }
            for run in round {
                send_run(socket, state, &shared.counters, &batch.bytes, run);
            }
        }
        let now = Instant::now();
        let (bytes, packets) = (batch.bytes.len(), batch.packets.len());
        batch.bytes.clear();
        batch.packets.clear();
        trim_bytes.used(bytes, &mut batch.bytes, now);
        trim_packets.used(packets, &mut batch.packets, now);
    }
}

/// A [`Trim`] for a buffer of packet entries, its floor as many entries
/// as [`TRIM_FLOOR_BYTES`] holds full-size packets.
pub fn trim_entries() -> Trim {
    Trim::new(TRIM_FLOOR_BYTES / 1200)
}

/// Sends one run and counts it.
pub(super) fn send_run(
    socket: &std::net::UdpSocket,
    state: &quinn_udp::UdpSocketState,
    c: &SendCounters,
    bytes: &[u8],
    run: &Run,
) {
    match send_one(socket, state, &run.transmit(bytes)) {
        Ok(()) => {
            c.packets.fetch_add(run.count as u64, Ordering::Relaxed);
            c.sends.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            c.failed.fetch_add(run.count as u64, Ordering::Relaxed);
            debug!(error = %e, to = %run.to, packets = run.count, "udp send");
        }
    }
}

/// One `sendmsg`, waiting (up to a second) while the socket's send buffer
/// is full.
pub(super) fn send_one(
    socket: &std::net::UdpSocket,
    state: &quinn_udp::UdpSocketState,
    transmit: &quinn_udp::Transmit<'_>,
) -> io::Result<()> {
    loop {
        match state.try_send(socket.into(), transmit) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !wait_writable(socket, 1000)? {
                    return Err(e);
                }
            }
            Err(e)
                if e.raw_os_error() == Some(nix::libc::EIO) && transmit.segment_size.is_some() =>
            {
                // A device without segmentation offload: quinn-udp stops
                // using GSO (max_gso_segments becomes 1); this run goes
                // out packet by packet.
                warn!(error = %e, "UDP GSO refused; sending packets one by one");
                let seg = transmit.segment_size.unwrap_or(transmit.contents.len());
                for chunk in transmit.contents.chunks(seg) {
                    let single = quinn_udp::Transmit {
                        contents: chunk,
                        segment_size: None,
                        ..*transmit
                    };
                    send_one(socket, state, &single)?;
                }
                return Ok(());
            }
            other => return other,
        }
    }
}

/// Turns UDP receive offload off on a socket (Linux `UDP_GRO`).
pub(super) fn gro_off(socket: &std::net::UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt::UdpGroSegment};
    if let Err(e) = setsockopt(socket, UdpGroSegment, &false) {
        debug!(error = %e, "UDP_GRO off");
    }
}

/// Waits until the socket can take a packet; false on timeout.
pub(super) fn wait_writable(socket: &std::net::UdpSocket, timeout_ms: u16) -> io::Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLOUT)];
    match poll(&mut fds, timeout_ms) {
        Ok(0) => Ok(false),
        Ok(_) => Ok(true),
        Err(e) => Err(io::Error::from(e)),
    }
}
