//! A session's fan-out: the one place that decides what each viewer gets.
//!
//! One task per session takes each item of the source's broadcast once and
//! gives it to every viewer through that viewer's way out, a [`Sink`]:
//! sealed SRTP queued on the worker's one UDP port ([`SrtpOut`]), or
//! webrtc-rs's tracks when each peer has its own port ([`TrackSink`]). The
//! policy is the same for every sink: a viewer starts at a keyframe, or
//! with the replay of the source's group of pictures when there is room
//! for it; a viewer whose sink is full, or the whole fan-out when it falls
//! behind the broadcast or may not send, starts again at the next keyframe
//! and asks for one; timestamps come from the frame's own presentation
//! time plus the viewer's random offset.
//!
//! A slow viewer never delays the others because nothing here waits on a
//! viewer: sealing is bounded work, and every queue (the port's, a track
//! sink's) drops rather than blocks.
//!
//! With many viewers on the one port an RTP source's video is held back
//! until its frame ends or a sender's turn is full ([`HOLD_FROM`]), so each
//! viewer's share leaves in one longer GSO send instead of one per input
//! burst.
//!
//! [`Fanout`] is the pure part (who gets what: keyframe starts, RTP times,
//! NACK answers, sender reports, what is held back); [`run`] is its driver and
//! [`FanoutHandle`] how viewers join it. The task owns every member's sink
//! (for the one port: its SRTP context); a viewer's own task only waits for
//! its connection, hands its sink over, and keeps its destination current.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use std::sync::atomic::AtomicBool;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::source::{Gop, Media, SourceTap, VideoPacket};
use crate::srtp_out::{Outbox, SrtpOut};
use crate::udp::{UdpQueue, PACKETS_PER_TURN};

mod payloads;
mod track;

pub use payloads::PayloadCache;
pub use track::{write_tracks, TrackPacket, TrackSink, TRACK_QUEUE};

/// Whether media may leave: the session is not suspended and the worker's
/// lease has not run out (checked per frame, so a worker waking from a
/// freeze sends nothing before its lease watch has even run).
#[derive(Clone)]
pub struct SendGate {
    pub paused: Arc<AtomicBool>,
    pub lease: Arc<crate::core::LeaseGate>,
}

impl SendGate {
    pub fn open(&self, now: std::time::Instant) -> bool {
        !self.paused.load(Ordering::Relaxed) && self.lease.held(now)
    }
}

/// A random 32-bit start for a viewer's RTP sequence number and timestamp
/// (RFC 3550 §5.1), from the std hasher's random keys.
pub(crate) fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish() as u32
}

/// One viewer's way out of the worker.
// Members live inline in the fan-out's vector and the hot path reads the
// SRTP one per packet: no box, whatever the size difference.
#[allow(clippy::large_enum_variant)]
pub enum Sink {
    /// Sealed SRTP queued on the one UDP port (`crate::srtp_out`).
    Srtp(SrtpOut),
    /// webrtc-rs's tracks (a port per peer), through a bounded queue to
    /// the viewer's writer task.
    Track(TrackSink),
}

impl Sink {
    /// Gives the viewer video payloads (payload, marker, RTP timestamp);
    /// `false` if its way out is full and it must start again at a keyframe.
    fn send_video<'a>(
        &mut self,
        packets: impl Iterator<Item = (&'a Bytes, bool, u32)>,
        now: Instant,
        outbox: &mut Outbox,
    ) -> bool {
        match self {
            Sink::Srtp(out) => {
                // The port's queue drops what does not fit, counted there.
                out.send_video(packets, now, outbox);
                true
            }
            Sink::Track(t) => t.send_video(packets),
        }
    }

    fn send_audio(&mut self, opus: &Bytes, timestamp: u32, now: Instant, outbox: &mut Outbox) {
        match self {
            Sink::Srtp(out) => out.send_audio(opus, timestamp, now, outbox),
            Sink::Track(t) => t.send_audio(opus),
        }
    }

    /// Whether a replay of `gop` fits in the viewer's way out now;
    /// `port_room` gives the one port's room for a destination, in bytes.
    fn fits(&self, gop: &Gop, port_room: &impl Fn(SocketAddr) -> usize) -> bool {
        match self {
            Sink::Srtp(out) => replay_size(gop) <= port_room(out.destination()),
            Sink::Track(t) => gop.len() <= t.room(),
        }
    }

    /// Seals again the packets the viewer reported lost (a track's NACKs
    /// are webrtc-rs's interceptors' business).
    fn resend(&mut self, lost: &[u16], outbox: &mut Outbox) -> usize {
        match self {
            Sink::Srtp(out) => out.resend(lost, outbox),
            Sink::Track(_) => 0,
        }
    }

    fn set_destination(&mut self, to: SocketAddr) {
        if let Sink::Srtp(out) = self {
            out.set_destination(to);
        }
    }

    /// Seals a sender report if one is due (a track's come from webrtc-rs).
    fn report(&mut self, now: Instant, wall: SystemTime, outbox: &mut Outbox) {
        if let Sink::Srtp(out) = self {
            if out.report_due(now) {
                if let Err(e) = out.report(now, wall, outbox) {
                    debug!(error = %e, "sender report");
                }
            }
        }
    }
}

/// NACKs from all of a session's viewers waiting for the fan-out; past
/// this a NACK is dropped and the viewer asks again.
const NACK_QUEUE: usize = 1024;

/// Joins and destination changes waiting for the fan-out.
const CONTROL_QUEUE: usize = 256;

/// From this many viewers, an RTP source's video is held back until its
/// access unit ends (the marker) or [`PACKETS_PER_TURN`] packets wait,
/// then sealed for every viewer at once: each viewer's packets of a frame
/// lie together in the outbox and leave in one GSO `sendmsg`, not one per
/// input burst (a paced sender's bursts are a few packets, 200 µs apart
/// in bench section 6). The kernel's cost per packet falls with the run's
/// length; bench section 6 measured 20–30% less CPU per viewer at 50 and
/// 100 viewers, and no gain at 10, where holding only adds delay: a
/// packet waits for the rest of its frame, up to [`HOLD_MAX`]. A frame's
/// last packet is never held, so a frame completes no later.
pub const HOLD_FROM: usize = 32;

/// The longest a packet is held back (a lost marker, or a sender that
/// spreads a frame over its whole interval).
pub const HOLD_MAX: std::time::Duration = std::time::Duration::from_millis(2);

/// One viewer in the fan-out.
struct Member {
    id: u64,
    out: Sink,
    /// The viewer's own token: closing the viewer ends its membership.
    left: CancellationToken,
    /// Nothing goes out until a keyframe starts (after joining, or a skip).
    need_key: bool,
    /// Random offsets of this viewer's RTP timestamps (RFC 3550).
    video_ts_base: u32,
    audio_ts_base: u32,
}

/// The viewers of one session on the SRTP path, and the packets sealed
/// for them waiting to be queued.
pub struct Fanout {
    members: Vec<Member>,
    outbox: Outbox,
    /// The RTP source's video since its last IDR, as far as this fan-out
    /// has sealed it: what a joining viewer gets first.
    gop: Gop,
    /// RTP video taken but not sealed yet ([`HOLD_FROM`]) and since when.
    held: Vec<Arc<[VideoPacket]>>,
    held_since: Option<Instant>,
    /// Viewers from which video is held back (0: never).
    hold_from: usize,
    /// A viewer restarts at a keyframe: the source should send one soon.
    keyframe_wanted: bool,
}

impl Default for Fanout {
    fn default() -> Self {
        Self::new(1)
    }
}

impl Fanout {
    /// A fan-out whose outbox keeps apart the packets of each of the port's
    /// `lanes` sender threads.
    pub fn new(lanes: usize) -> Self {
        Self {
            members: Vec::new(),
            outbox: Outbox::new(lanes),
            gop: Gop::default(),
            held: Vec::new(),
            held_since: None,
            hold_from: HOLD_FROM,
            keyframe_wanted: false,
        }
    }

    /// Holds video back from `viewers` viewers instead of [`HOLD_FROM`]
    /// (0: never).
    pub fn holding_from(mut self, viewers: usize) -> Self {
        self.hold_from = viewers;
        self
    }

    /// Adds a viewer, waiting for a keyframe. Its video starts with the
    /// video since the source's last IDR when this fan-out holds it (an
    /// RTP source, see [`Gop::replay`]) and [`Fanout::offer_replays`]
    /// finds room for it, else at the next keyframe, whichever comes
    /// first. `ts_bases` offset its video (90 kHz) and audio (48 kHz) RTP
    /// timestamps.
    pub fn join(&mut self, id: u64, out: Sink, left: CancellationToken, ts_bases: (u32, u32)) {
        self.members.retain(|m| m.id != id);
        self.members.push(Member {
            id,
            out,
            left,
            need_key: true,
            video_ts_base: ts_bases.0,
            audio_ts_base: ts_bases.1,
        });
    }

    /// Replays the group of pictures to each viewer still waiting for a
    /// keyframe whose replay fits the room `room_for` gives its
    /// destination; that viewer then takes the live video that follows.
    /// Offered at a join and again before each broadcast item, so a join
    /// while its lane's queue was busy (a keyframe going out to many
    /// viewers) gets its picture once the queue drains, not a GOP later.
    pub fn offer_replays(&mut self, now: Instant, port_room: impl Fn(SocketAddr) -> usize) {
        if self.gop.is_empty() {
            return;
        }
        let mut replay = None;
        for m in &mut self.members {
            if !m.need_key || !m.out.fits(&self.gop, &port_room) {
                continue;
            }
            let replay = replay.get_or_insert_with(|| self.gop.replay());
            let base = m.video_ts_base;
            let packets = replay
                .iter()
                .map(|(p, marker, pts)| (p, *marker, base.wrapping_add(*pts as u32)));
            m.need_key = !m.out.send_video(packets, now, &mut self.outbox);
            self.keyframe_wanted |= m.need_key;
        }
    }

    /// Whether a viewer restarted at a keyframe since the last call (which
    /// clears it): the source should be asked for one.
    pub fn take_keyframe_wanted(&mut self) -> bool {
        std::mem::take(&mut self.keyframe_wanted)
    }

    /// Starts from `gop`, the source's group of pictures taken with a new
    /// subscription to its broadcast.
    pub fn resume_from(&mut self, gop: Gop) {
        self.gop = gop;
    }

    /// Forgets the group of pictures and the video held back: broadcast
    /// items were missed, or the fan-out stops taking the broadcast.
    pub fn forget_gop(&mut self) {
        self.gop.clear();
        self.drop_held();
    }

    fn drop_held(&mut self) {
        self.held.clear();
        self.held_since = None;
    }

    /// When the video held back must go out, if any is.
    pub fn hold_deadline(&self) -> Option<Instant> {
        self.held_since.map(|t| t + HOLD_MAX)
    }

    /// Seals the video held back for every viewer that takes it.
    pub fn release(&mut self, now: Instant) {
        if self.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        self.seal_packets(&held, now);
        // Keeps the vector's capacity for the next frame.
        self.held = held;
        self.drop_held();
    }

    /// Drops the viewers that have closed; returns how many remain.
    pub fn prune(&mut self) -> usize {
        self.members.retain(|m| !m.left.is_cancelled());
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Viewers in the fan-out.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Every viewer's video waits for the next keyframe (the fan-out fell
    /// behind the broadcast, or the session may not send).
    pub fn restart_at_keyframe(&mut self) {
        for m in &mut self.members {
            m.need_key = true;
        }
    }

    /// Seals one broadcast item for every viewer that takes it, or holds
    /// it back ([`HOLD_FROM`]).
    pub fn media(&mut self, media: &Media, payloads: &PayloadCache, now: Instant) {
        match media {
            Media::VideoPackets(packets) => {
                let hold = self.hold_from > 0 && self.members.len() >= self.hold_from;
                if !hold && self.held.is_empty() {
                    self.seal_packets(std::slice::from_ref(packets), now);
                    return;
                }
                self.held.push(packets.clone());
                self.held_since.get_or_insert(now);
                let ends_frame = packets.last().is_some_and(|p| p.marker);
                let turn_full =
                    self.held.iter().map(|i| i.len()).sum::<usize>() >= PACKETS_PER_TURN;
                if !hold || ends_frame || turn_full {
                    self.release(now);
                }
            }
            Media::Video(v) => {
                let payloads = payloads.payloads(v);
                let last = payloads.len().saturating_sub(1);
                let outbox = &mut self.outbox;
                for m in &mut self.members {
                    if m.need_key && !v.keyframe {
                        continue;
                    }
                    // RTP timestamps wrap at 32 bits; truncation is the wrap.
                    let ts = m.video_ts_base.wrapping_add(v.pts_90k as u32);
                    let packets = payloads.iter().enumerate().map(|(i, p)| (p, i == last, ts));
                    m.need_key = !m.out.send_video(packets, now, outbox);
                    self.keyframe_wanted |= m.need_key;
                }
            }
            Media::Audio(a) => {
                let outbox = &mut self.outbox;
                for m in &mut self.members {
                    let ts = m.audio_ts_base.wrapping_add(a.pts_48k as u32);
                    m.out.send_audio(&a.opus, ts, now, outbox);
                }
            }
        }
    }

    /// Seals RTP input, `items` in the order they arrived, for every viewer
    /// that takes it: all of a viewer's packets together in the outbox.
    fn seal_packets(&mut self, items: &[Arc<[VideoPacket]>], now: Instant) {
        for item in items {
            self.gop.push(&Media::VideoPackets(item.clone()));
        }
        let all = || items.iter().flat_map(|i| i.iter());
        let key = all().position(|p| p.keyframe_start);
        let outbox = &mut self.outbox;
        for m in &mut self.members {
            let from = match (m.need_key, key) {
                (false, _) => 0,
                (true, Some(i)) => i,
                (true, None) => continue,
            };
            let base = m.video_ts_base;
            let packets = all()
                .skip(from)
                .map(|p| (&p.payload, p.marker, base.wrapping_add(p.pts_90k as u32)));
            m.need_key = !m.out.send_video(packets, now, outbox);
            self.keyframe_wanted |= m.need_key;
        }
    }

    /// Seals again the video packets viewer `id` reported lost, those still
    /// kept; returns how many.
    pub fn resend(&mut self, id: u64, lost: &[u16]) -> usize {
        match self.members.iter_mut().find(|m| m.id == id) {
            Some(m) => m.out.resend(lost, &mut self.outbox),
            None => 0,
        }
    }

    /// Viewer `id`'s packets go to `to` from now on.
    pub fn set_destination(&mut self, id: u64, to: SocketAddr) {
        if let Some(m) = self.members.iter_mut().find(|m| m.id == id) {
            m.out.set_destination(to);
        }
    }

    /// Seals a sender report for every viewer that is due one.
    pub fn reports(&mut self, now: Instant, wall: SystemTime) {
        for m in &mut self.members {
            m.out.report(now, wall, &mut self.outbox);
        }
    }

    /// What was sealed since the last flush.
    pub fn outbox(&mut self) -> &mut Outbox {
        &mut self.outbox
    }
}

/// What a group of pictures takes on the wire, sealed: its payloads plus
/// each packet's RTP header and SRTP tag (28 bytes; 64 per 1200-byte
/// packet leaves room).
fn replay_size(gop: &Gop) -> usize {
    gop.bytes() + gop.bytes() / 1200 * 64 + 64
}

/// The share of a sender lane's queue a joining viewer's replay may take:
/// half, so a burst of joins cannot fill the queue and drop the live
/// packets of the viewers already watching.
fn replay_room(udp: &UdpQueue, to: SocketAddr) -> usize {
    udp.room(to)
        .saturating_sub(crate::udp::MAX_QUEUED_BYTES / 2)
}

/// What viewers' tasks tell the fan-out.
enum Control {
    Join {
        id: u64,
        out: Box<Sink>,
        left: CancellationToken,
    },
    Destination {
        id: u64,
        to: SocketAddr,
    },
}

/// How a session's viewers reach its fan-out task. The task ends when the
/// session and all its viewers have dropped their handles.
#[derive(Clone)]
pub struct FanoutHandle {
    control: mpsc::Sender<Control>,
    nacks: mpsc::Sender<(u64, Vec<u16>)>,
    next_id: Arc<AtomicU64>,
}

impl FanoutHandle {
    /// Starts a session's fan-out task. With the one UDP port (`udp`) it
    /// runs in `slot` (on one of [`FanoutThreads`]) and holds
    /// its share of that thread's load; without, on the caller's runtime,
    /// and its viewers have track sinks.
    pub fn spawn(
        slot: Option<FanoutSlot>,
        tap: SourceTap,
        gate: SendGate,
        payloads: Arc<PayloadCache>,
        udp: Option<UdpQueue>,
        hold_from: usize,
    ) -> Self {
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let (nacks, nacks_rx) = mpsc::channel(NACK_QUEUE);
        let lanes = udp.as_ref().map_or(1, UdpQueue::lanes);
        let fan = Fanout::new(lanes).holding_from(hold_from);
        let (runtime, load) = match slot {
            Some(FanoutSlot { runtime, load }) => (runtime, Some(load)),
            None => (tokio::runtime::Handle::current(), None),
        };
        runtime.spawn(run(
            fan,
            tap,
            gate,
            payloads,
            udp,
            (control_rx, nacks_rx),
            load,
        ));
        Self {
            control,
            nacks,
            next_id: Arc::default(),
        }
    }

    /// An id for a new viewer of this fan-out.
    pub fn member_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Hands viewer `id`'s way out to the fan-out; its membership ends
    /// when `left` is cancelled. `false` if the fan-out has ended.
    pub async fn join(&self, id: u64, out: Sink, left: CancellationToken) -> bool {
        let join = Control::Join {
            id,
            out: Box::new(out),
            left,
        };
        self.control.send(join).await.is_ok()
    }

    /// Viewer `id`'s selected candidate pair changed.
    pub async fn set_destination(&self, id: u64, to: SocketAddr) {
        let _ = self.control.send(Control::Destination { id, to }).await;
    }

    /// Viewer `id` reported these video packets lost. Never waits: a full
    /// queue drops the NACK (the viewer asks again).
    pub fn nack(&self, id: u64, lost: Vec<u16>) {
        let _ = self.nacks.try_send((id, lost));
    }
}

/// The most [`FanoutThreads`] a worker may start (`FANOUT_THREADS`).
pub const MAX_FANOUT_THREADS: usize = 64;

/// The threads the fan-out tasks run on: each a single-threaded tokio
/// runtime of its own (`fanout-N`). A frame or an Opus packet wakes
/// exactly the thread of its session's fan-out, where on a multi-threaded
/// runtime each wake-up would also wake a second thread to look for work
/// to steal (4–5% of the worker's CPU at 50 and 100 viewers of a 1080p60
/// stream, docs/profile.md). A new session goes to the thread with the
/// least load, its fan-outs and their viewers counted ([`ThreadLoad`]),
/// so sessions that end or draw many viewers do not leave the threads
/// uneven. The threads end when this is dropped, and their tasks with
/// them.
pub struct FanoutThreads {
    runtimes: Vec<tokio::runtime::Handle>,
    loads: Vec<Arc<AtomicUsize>>,
    stop: CancellationToken,
}

/// Where a session's fan-out runs ([`FanoutThreads::next`]) and its share
/// of that thread's load.
pub struct FanoutSlot {
    pub runtime: tokio::runtime::Handle,
    pub load: ThreadLoad,
}

/// A fan-out's share of its thread's load: one for the fan-out and one per
/// viewer, given back when dropped (the fan-out task holds it).
#[derive(Debug)]
pub struct ThreadLoad {
    load: Arc<AtomicUsize>,
    viewers: usize,
}

impl ThreadLoad {
    fn new(load: Arc<AtomicUsize>) -> Self {
        load.fetch_add(1, Ordering::Relaxed);
        Self { load, viewers: 0 }
    }

    /// The fan-out has `n` viewers now.
    pub fn set_viewers(&mut self, n: usize) {
        if n >= self.viewers {
            self.load.fetch_add(n - self.viewers, Ordering::Relaxed);
        } else {
            self.load.fetch_sub(self.viewers - n, Ordering::Relaxed);
        }
        self.viewers = n;
    }
}

impl Drop for ThreadLoad {
    fn drop(&mut self) {
        self.load.fetch_sub(1 + self.viewers, Ordering::Relaxed);
    }
}

/// The index of the least of `loads`, the first of equals (so equal loads
/// are dealt out in turn). Pure.
fn least_loaded(loads: impl IntoIterator<Item = usize>) -> usize {
    loads
        .into_iter()
        .enumerate()
        .min_by_key(|&(i, load)| (load, i))
        .map_or(0, |(i, _)| i)
}

impl FanoutThreads {
    /// Starts `n` threads (at least one).
    pub fn start(n: usize) -> std::io::Result<Self> {
        let stop = CancellationToken::new();
        let mut runtimes = Vec::new();
        for i in 0..n.max(1) {
            // Timers only: a fan-out does no IO through tokio (it queues
            // on the port's send queue), so its thread parks on a futex.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()?;
            runtimes.push(rt.handle().clone());
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("fanout-{i}"))
                .spawn(move || rt.block_on(stop.cancelled()))?;
        }
        Ok(Self {
            loads: runtimes.iter().map(|_| Arc::default()).collect(),
            runtimes,
            stop,
        })
    }

    /// Where the next session's fan-out runs: the least loaded thread,
    /// counted as loaded by it from now on. (Two sessions placed at the
    /// same moment may both take the same thread; the next ones even it
    /// out.)
    pub fn next(&self) -> FanoutSlot {
        let i = least_loaded(self.loads.iter().map(|l| l.load(Ordering::Relaxed)));
        FanoutSlot {
            runtime: self.runtimes[i].clone(),
            load: ThreadLoad::new(self.loads[i].clone()),
        }
    }

    /// Each thread's load: its fan-outs and their viewers.
    pub fn loads(&self) -> Vec<usize> {
        self.loads
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for FanoutThreads {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The next broadcast item, or never while nobody is subscribed.
async fn next_media(
    rx: &mut Option<broadcast::Receiver<Media>>,
) -> Result<Media, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// The fan-out task: subscribed to the broadcast while it has viewers.
async fn run(
    mut fan: Fanout,
    tap: SourceTap,
    gate: SendGate,
    payloads: Arc<PayloadCache>,
    mut udp: Option<UdpQueue>,
    (mut control, mut nacks): (mpsc::Receiver<Control>, mpsc::Receiver<(u64, Vec<u16>)>),
    mut load: Option<ThreadLoad>,
) {
    let port_room = |udp: &Option<UdpQueue>, to| udp.as_ref().map_or(0, |u| replay_room(u, to));
    let flush = |fan: &mut Fanout, udp: &mut Option<UdpQueue>, now| {
        if let Some(udp) = udp {
            fan.outbox().flush(udp, now);
        }
        if fan.take_keyframe_wanted() {
            tap.request_keyframe();
        }
    };
    let set_viewers = |load: &mut Option<ThreadLoad>, n| {
        if let Some(load) = load {
            load.set_viewers(n);
        }
    };
    use broadcast::error::RecvError;
    let mut rx = None;
    // One waiter per member for its `left` token: a viewer leaving wakes
    // the fan-out, which prunes then (checking every member's token after
    // each broadcast item took a lock per viewer per item).
    let mut leaving = tokio::task::JoinSet::<()>::new();
    loop {
        let held_until = fan.hold_deadline();
        let media = tokio::select! {
            m = next_media(&mut rx) => m,
            c = control.recv() => {
                match c {
                    None => return,
                    Some(Control::Join { id, out, left }) => {
                        if rx.is_none() {
                            let (gop, sub) = tap.subscribe_with_gop();
                            fan.resume_from(gop);
                            rx = Some(sub);
                        }
                        leaving.spawn(left.clone().cancelled_owned());
                        fan.join(id, *out, left, (random_u32(), random_u32()));
                        set_viewers(&mut load, fan.len());
                        // Suspended: nothing leaves, so no replay; the
                        // viewer starts at a keyframe once the session
                        // may send.
                        let now = Instant::now();
                        if gate.open(now) {
                            fan.offer_replays(now, |to| port_room(&udp, to));
                        }
                        flush(&mut fan, &mut udp, now);
                        tap.request_keyframe();
                    }
                    Some(Control::Destination { id, to }) => fan.set_destination(id, to),
                }
                continue;
            }
            Some(_) = leaving.join_next() => {
                let viewers = fan.prune();
                set_viewers(&mut load, viewers);
                if viewers == 0 {
                    // Nobody left: stop taking the broadcast until someone
                    // joins (who takes the source's group of pictures
                    // afresh).
                    rx = None;
                    fan.forget_gop();
                }
                continue;
            }
            Some((id, lost)) = nacks.recv() => {
                fan.resend(id, &lost);
                flush(&mut fan, &mut udp, Instant::now());
                continue;
            }
            // Video held back past HOLD_MAX (its frame's end is late or
            // lost) goes out as it is.
            () = sleep_until(held_until) => {
                let now = Instant::now();
                if gate.open(now) {
                    fan.release(now);
                    flush(&mut fan, &mut udp, now);
                } else {
                    fan.restart_at_keyframe();
                    fan.forget_gop();
                }
                continue;
            }
        };
        let now = Instant::now();
        match media {
            Ok(m) if gate.open(now) => {
                fan.offer_replays(now, |to| port_room(&udp, to));
                fan.media(&m, &payloads, now);
                fan.reports(now, SystemTime::now());
            }
            // The session is suspended or the worker lost its lease:
            // nothing leaves, and each viewer restarts at a keyframe.
            Ok(_) => {
                fan.restart_at_keyframe();
                fan.forget_gop();
            }
            Err(RecvError::Lagged(n)) => {
                debug!(
                    skipped = n,
                    "fan-out behind the broadcast; skipping to the next keyframe"
                );
                fan.restart_at_keyframe();
                fan.forget_gop();
                tap.request_keyframe();
            }
            Err(RecvError::Closed) => return,
        }
        flush(&mut fan, &mut udp, now);
    }
}

#[cfg(test)]
mod tests;
