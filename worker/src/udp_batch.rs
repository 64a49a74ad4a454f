//! The worker's single UDP port (`UDP_PORT`, webrtc-rs's UDP mux) with
//! batched sends.
//!
//! webrtc-rs 0.17 sends every SRTP packet of every viewer with its own
//! `sendto`; the fan-out profile (docs/profile.md) put about half of the
//! worker's time per viewer in that system call. With one UDP port for all
//! peers the worker owns the socket, so it hands webrtc-rs a [`BatchedUdp`]:
//! `send_to` copies the packet into a queue and returns at once, and a
//! sender thread drains the queue, sending each run of equal-sized packets
//! to one address as a single `sendmsg` with UDP generic segmentation
//! offload (GSO, through quinn-udp), which the kernel or the NIC cuts into
//! datagrams. A frame written to one viewer is such a run. Receiving is
//! unchanged (the mux reads the socket itself), but the socket is watched
//! for reading only: tokio's default registration also asks for
//! writability, and the kernel then woke the runtime's I/O driver as each
//! sent packet left the socket's buffer (see [`BatchedUdp::new`]). The
//! worker's own media path (`crate::direct`) queues its SRTP on the same
//! queue through a [`UdpQueue`] handle, so webrtc-rs's packets and the
//! worker's share one order per destination.
//!
//! The queue is bounded: past [`MAX_QUEUED_BYTES`] packets are dropped and
//! counted, as a full NIC queue would drop them (NACK and keyframe requests
//! repair the loss). Each destination's packets leave in the order they
//! were queued; destinations take turns (see [`Schedule`]).
//!
//! The port may have more than one sender thread (`UDP_SEND_THREADS`):
//! each has its own queue (a lane), and a destination always goes to the
//! same one ([`lane_of`]), so its order holds while a keyframe being paced
//! out to some viewers does not hold back the viewers of another lane, and
//! sending can use more than one core.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tracing::{debug, warn};
use webrtc::util::Conn;

/// Bytes one lane's queue holds at most before it drops packets: about
/// 0.3 s of 100 viewers of a 4 Mbit/s stream.
pub const MAX_QUEUED_BYTES: usize = 16 << 20;

/// Largest payload of one GSO send: under the 65,507-byte UDP limit, and
/// the kernel takes at most 64 segments (`UDP_MAX_SEGMENTS`).
const MAX_GSO_BYTES: usize = 64_000;

/// Packets one destination gets per turn when several are waiting: about
/// 39 KB of video, a whole 1080p60 12 Mbit/s P frame (about 21 packets),
/// so that such a frame leaves in one GSO send (16 split it in two; bench
/// section 6 at 1080p60 measured 3–5% less CPU per viewer at 50 and 100
/// viewers with 32). A viewer's keyframe (often 100-200 packets) sent in one
/// go would overflow a receiver's default socket buffer (~90 full-size
/// packets once the kernel's per-packet overhead is counted); in turns,
/// every receiver drains while the others are served, and every viewer's
/// frame completes at about the same time.
pub const PACKETS_PER_TURN: usize = 32;

/// The shortest time between two turns of one destination: 32 packets per
/// 400 µs is 780 Mbit/s, more than any stream and about a gigabit link's
/// pace, yet spreads a 1080p keyframe of 200 packets over 2.4 ms instead
/// of the tens of microseconds GSO takes. A receiver (a browser, or the
/// bench's webrtc-rs viewers on loopback with the default 212 KB socket
/// buffer, about 90 full packets) then drains it as it arrives instead of
/// dropping its end: at that rate doubled (16 packets per 100 µs) the bench
/// still lost 2.7% at 1080p60, N=1.
const ROUND: Duration = Duration::from_micros(400);

/// Most sender threads a port runs.
pub const MAX_SEND_THREADS: usize = 16;

/// Which of `lanes` sender threads sends to `to`: always the same for one
/// address (so its packets keep their order), spread evenly over
/// addresses (Fibonacci hashing of address and port). Pure.
pub fn lane_of(to: SocketAddr, lanes: usize) -> usize {
    if lanes <= 1 {
        return 0;
    }
    let ip = match to.ip() {
        std::net::IpAddr::V4(ip) => u64::from(u32::from(ip)),
        std::net::IpAddr::V6(ip) => {
            let b = u128::from(ip);
            (b as u64) ^ ((b >> 64) as u64)
        }
    };
    let h = ((ip << 16) ^ u64::from(to.port())).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (((h >> 32) * lanes as u64) >> 32) as usize
}

/// How long a reused buffer keeps capacity that no use has needed.
pub const TRIM_AFTER: Duration = Duration::from_secs(2);

/// Bytes a reused packet buffer always keeps (a few frames of a few
/// viewers: what small sessions need without reallocating).
pub const TRIM_FLOOR_BYTES: usize = 256 << 10;

/// Keeps a reused buffer's capacity near what it has needed lately. The
/// packet buffers (a fan-out's outbox, a lane's queue, a sender thread's
/// batch; trimmed where they come to rest, after an outbox lane's flush
/// and a sender thread's batch, the queue taking its buffers from those
/// two) are cleared and reused so that steady sending allocates
/// nothing, but they then kept whatever one burst grew them to: a join
/// storm's replays of the group of pictures to every viewer at once held
/// several MiB per lane for the rest of the process (heaptrack in bench
/// section 6, docs/profile.md, the twelfth step). Over each window of
/// [`TRIM_AFTER`] the largest use is noted; a buffer holding more than
/// twice that (and than the floor) is shrunk to it. A keyframe a second
/// keeps its own size, so steady sending never reallocates. Pure: the
/// caller gives the time.
#[derive(Debug, Clone)]
pub struct Trim {
    floor: usize,
    most: usize,
    since: Option<Instant>,
}

impl Trim {
    /// A governor that never shrinks a buffer below `floor` elements.
    pub fn new(floor: usize) -> Self {
        Self {
            floor,
            most: 0,
            since: None,
        }
    }

    /// After a use that filled `len` elements of `buf` (now cleared or
    /// not): at the end of a window, shrinks `buf` to the window's
    /// largest use when it holds more than twice that. Whether it shrank.
    pub fn used<T>(&mut self, len: usize, buf: &mut Vec<T>, now: Instant) -> bool {
        self.most = self.most.max(len);
        let since = *self.since.get_or_insert(now);
        if now.saturating_duration_since(since) < TRIM_AFTER {
            return false;
        }
        let keep = self.most.max(self.floor);
        self.most = 0;
        self.since = Some(now);
        if buf.capacity() <= keep.saturating_mul(2) {
            return false;
        }
        buf.shrink_to(keep);
        true
    }
}

/// A queued packet: its destination and where its bytes lie in the queue's
/// buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Queued {
    to: SocketAddr,
    start: usize,
    len: usize,
}

/// Packets sent by one `sendmsg`: `count` packets to `to`, the bytes
/// `start..end` of the buffer, cut every `segment` bytes (the last packet
/// may be shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    to: SocketAddr,
    start: usize,
    end: usize,
    segment: usize,
    count: usize,
}

impl Run {
    /// The run's `sendmsg`, its bytes taken from `bytes` (the batch's buffer).
    fn transmit<'a>(&self, bytes: &'a [u8]) -> quinn_udp::Transmit<'a> {
        quinn_udp::Transmit {
            destination: self.to,
            ecn: None,
            contents: &bytes[self.start..self.end],
            segment_size: (self.count > 1).then_some(self.segment),
            src_ip: None,
        }
    }
}

/// Groups queued packets (contiguous in the buffer, in queue order) into
/// GSO runs, in `out` (cleared first): consecutive packets to one address,
/// each as long as the run's first except the last, which may be shorter;
/// at most `max_segments` packets and [`MAX_GSO_BYTES`] per run. Pure.
fn runs_into(queued: &[Queued], max_segments: usize, out: &mut Vec<Run>) {
    out.clear();
    let mut open = false; // whether the last run may still grow
    for q in queued {
        if let Some(r) = out.last_mut().filter(|_| open) {
            let fits = r.to == q.to
                && r.end == q.start
                && q.len <= r.segment
                && r.count < max_segments
                && r.end - r.start + q.len <= MAX_GSO_BYTES;
            if fits {
                r.end += q.len;
                r.count += 1;
                // A shorter packet must be the run's last.
                open = q.len == r.segment;
                continue;
            }
        }
        out.push(Run {
            to: q.to,
            start: q.start,
            end: q.start + q.len,
            segment: q.len,
            count: 1,
        });
        open = true;
    }
}

/// No next run (in [`Schedule`]'s per-destination chains).
const END: usize = usize::MAX;

/// The order of sends for a batch, in rounds: its runs ([`runs_into`], of
/// at most `turn` packets), up to `turn` packets per destination per round,
/// destinations in the order they first appear. Each destination's packets
/// keep their order. Pure, and reusable: its buffers keep their capacity
/// from one batch to the next, so planning a batch allocates nothing once
/// they have grown (the sender thread and the fan-out plan a batch for
/// every burst of input; the allocations were 2-5% of the worker's time,
/// docs/profile.md).
#[derive(Debug, Default, Clone)]
pub(crate) struct Schedule {
    /// The batch's packets, when planned from lengths ([`Self::plan_laid_out`]).
    queued: Vec<Queued>,
    /// The batch's runs in queue order.
    runs: Vec<Run>,
    /// For each run, the next run to the same destination, or [`END`].
    next: Vec<usize>,
    /// Per destination (in order of first appearance): its first run not
    /// yet placed.
    heads: Vec<usize>,
    /// Per destination: its last run so far, while the chains are built.
    tails: Vec<usize>,
    /// Each destination's place in `heads` and `tails`.
    index: std::collections::HashMap<SocketAddr, usize>,
    /// The runs in send order, and where each round ends in it.
    order: Vec<Run>,
    round_ends: Vec<usize>,
}

impl Schedule {
    /// Plans `queued` (see the type's docs).
    fn plan(&mut self, queued: &[Queued], max_segments: usize, turn: usize) {
        runs_into(queued, max_segments.min(turn).max(1), &mut self.runs);
        self.next.clear();
        self.heads.clear();
        self.tails.clear();
        self.index.clear();
        self.order.clear();
        self.round_ends.clear();
        // Chain each destination's runs, in order.
        for (i, r) in self.runs.iter().enumerate() {
            self.next.push(END);
            match self.index.entry(r.to) {
                std::collections::hash_map::Entry::Occupied(d) => {
                    let d = *d.get();
                    self.next[self.tails[d]] = i;
                    self.tails[d] = i;
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(self.heads.len());
                    self.heads.push(i);
                    self.tails.push(i);
                }
            }
        }
        let mut left = self.runs.len();
        while left > 0 {
            for head in &mut self.heads {
                // Up to `turn` packets each (one run at least).
                let mut sent = 0;
                while let Some(r) = self.runs.get(*head) {
                    if sent > 0 && sent + r.count > turn {
                        break;
                    }
                    sent += r.count;
                    self.order.push(*r);
                    *head = self.next[*head];
                    left -= 1;
                }
            }
            self.round_ends.push(self.order.len());
        }
    }

    /// Plans packets laid end to end from the start of a buffer, each
    /// given as its length and destination.
    fn plan_laid_out(&mut self, packets: &[(usize, SocketAddr)], max_segments: usize, turn: usize) {
        let mut queued = std::mem::take(&mut self.queued);
        queued.clear();
        queued.extend(laid_out(packets));
        self.plan(&queued, max_segments, turn);
        self.queued = queued;
    }

    /// The planned rounds, in order.
    fn rounds(&self) -> impl Iterator<Item = &[Run]> + '_ {
        let starts = std::iter::once(0).chain(self.round_ends.iter().copied());
        starts
            .zip(self.round_ends.iter().copied())
            .map(|(start, end)| &self.order[start..end])
    }
}

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
    /// Packets queued by the worker's own media path (`crate::direct`:
    /// SRTP it encrypted itself), the rest coming from webrtc-rs (ICE,
    /// DTLS, SCTP).
    pub direct: AtomicU64,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    packets: Vec<Queued>,
    /// The sender thread is waiting for packets (so a push must wake it).
    idle: bool,
    closed: bool,
}

impl Pending {
    /// Appends a packet unless the queue is closed or would pass
    /// [`MAX_QUEUED_BYTES`].
    fn push(&mut self, buf: &[u8], to: SocketAddr) -> bool {
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
    fn push_all<'a>(
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

/// Packets laid end to end from the start of a buffer, each given as its
/// length and destination, as [`Queued`] entries.
fn laid_out(packets: &[(usize, SocketAddr)]) -> impl Iterator<Item = Queued> + '_ {
    let mut start = 0;
    packets.iter().map(move |&(len, to)| {
        let q = Queued { to, start, len };
        start += len;
        q
    })
}

impl Pending {
    /// Takes `wire` (packets laid end to end, `packets` their lengths and
    /// destinations) as the queue's buffer if nothing is waiting and it
    /// fits, giving back the queue's empty buffer; `None` otherwise.
    fn take_whole(&mut self, wire: &mut Vec<u8>, packets: &[(usize, SocketAddr)]) -> Option<u64> {
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
struct Lane {
    pending: Mutex<Pending>,
    wake: Condvar,
}

struct Shared {
    lanes: Box<[Lane]>,
    counters: Arc<SendCounters>,
    /// Registered with the runtime for reading only (see
    /// [`BatchedUdp::new`]); sends go straight to the file descriptor.
    socket: AsyncFd<std::net::UdpSocket>,
    state: quinn_udp::UdpSocketState,
}

impl Shared {
    fn lock(&self, lane: usize) -> MutexGuard<'_, Pending> {
        self.lanes[lane]
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn lane_of(&self, to: SocketAddr) -> usize {
        lane_of(to, self.lanes.len())
    }

    fn close(&self) {
        for (i, lane) in self.lanes.iter().enumerate() {
            self.lock(i).closed = true;
            lane.wake.notify_one();
        }
    }
}

/// A UDP socket whose sends are queued and batched (see the module docs).
pub struct BatchedUdp {
    shared: Arc<Shared>,
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
    /// includes `EPOLLOUT` wakes the thread parked in `epoll_wait`. With a
    /// viewer's stream going out in tens of thousands of datagrams a
    /// second, the runtime's I/O driver was woken for nothing hundreds of
    /// times a second (docs/profile.md, "The sixth step"). Nothing here
    /// awaits writability: the sender threads wait for room with `poll`.
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

    fn push(&self, buf: &[u8], to: SocketAddr) {
        let lane = self.shared.lane_of(to);
        self.queue().push(lane, std::iter::once((buf, to)));
    }
}

/// Queues packets on a [`BatchedUdp`] port (the worker's own media path,
/// `crate::direct`); dropping it leaves the port open.
#[derive(Clone)]
pub struct UdpQueue {
    shared: Arc<Shared>,
    /// Reused by [`Self::send_now`].
    plan: Schedule,
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
    /// destination (a session's viewers, `crate::direct::Outbox`), under
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
    /// number of viewers. Bench section 6 at 1080p60 (docs/profile.md, the
    /// tenth step): 7–10% less CPU per viewer at 50
    /// and 100 viewers than handing more than 16 sends to the thread, with
    /// the same egress delay. What the socket does not take at once is
    /// queued, in order. `false` (nothing sent) otherwise.
    fn send_now(&mut self, lane: usize, wire: &[u8], packets: &[(usize, SocketAddr)]) -> bool {
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
    fn push<'a>(&self, lane: usize, bufs: impl IntoIterator<Item = (&'a [u8], SocketAddr)>) -> u64 {
        self.queue(lane, |p| p.push_all(bufs))
    }

    /// Runs `add` (which returns packets queued and dropped) under
    /// `lane`'s lock, counts the drops and wakes its sender thread if it
    /// waits; returns how many were queued.
    fn queue(&self, lane: usize, add: impl FnOnce(&mut Pending) -> (u64, u64)) -> u64 {
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
fn send_loop(shared: &Shared, lane: usize) {
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
fn send_run(
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
fn send_one(
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
fn gro_off(socket: &std::net::UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt::UdpGroSegment};
    if let Err(e) = setsockopt(socket, UdpGroSegment, &false) {
        debug!(error = %e, "UDP_GRO off");
    }
}

/// Waits until the socket can take a packet; false on timeout.
fn wait_writable(socket: &std::net::UdpSocket, timeout_ms: u16) -> io::Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLOUT)];
    match poll(&mut fds, timeout_ms) {
        Ok(0) => Ok(false),
        Ok(_) => Ok(true),
        Err(e) => Err(io::Error::from(e)),
    }
}

impl BatchedUdp {
    /// Waits until the socket is readable and runs `read` on it, again
    /// after each `WouldBlock`.
    async fn read<T>(
        &self,
        mut read: impl FnMut(&std::net::UdpSocket) -> io::Result<T>,
    ) -> io::Result<T> {
        loop {
            let mut ready = self.shared.socket.readable().await?;
            if let Ok(result) = ready.try_io(|s| read(s.get_ref())) {
                return result;
            }
        }
    }
}

#[async_trait::async_trait]
impl Conn for BatchedUdp {
    async fn connect(&self, addr: SocketAddr) -> webrtc::util::Result<()> {
        Ok(self.shared.socket.get_ref().connect(addr)?)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc::util::Result<usize> {
        Ok(self.read(|s| s.recv(buf)).await?)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc::util::Result<(usize, SocketAddr)> {
        Ok(self.read(|s| s.recv_from(buf)).await?)
    }

    async fn send(&self, buf: &[u8]) -> webrtc::util::Result<usize> {
        // Unused by the mux (it sends with `send_to`); never waits.
        Ok(self.shared.socket.get_ref().send(buf)?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc::util::Result<usize> {
        // A dropped packet is a lost datagram, not an error of the peer
        // connection (UDP gives no delivery promise either way).
        self.push(buf, target);
        Ok(buf.len())
    }

    fn local_addr(&self) -> webrtc::util::Result<SocketAddr> {
        Ok(self.shared.socket.get_ref().local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc::util::Result<()> {
        self.shared.close();
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
pub(crate) mod tests {
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
}
