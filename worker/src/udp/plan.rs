//! The pure part of the send path: runs, turns, lanes, trimming.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;

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
/// two) are cleared and reused so that steady sending allocates nothing;
/// without trimming they would keep whatever one burst grew them to (a
/// join storm's replays of the group of pictures, several MiB per lane;
/// docs/decisions.md). Over each window of [`TRIM_AFTER`] the largest use
/// is noted; a buffer holding more than twice that (and than the floor)
/// is shrunk to it. A keyframe a second keeps its own size, so steady
/// sending never reallocates. Pure: the caller gives the time.
#[derive(Debug, Clone)]
pub struct Trim {
    pub(super) floor: usize,
    pub(super) most: usize,
    pub(super) since: Option<Instant>,
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
pub(super) struct Queued {
    pub(super) to: SocketAddr,
    pub(super) start: usize,
    pub(super) len: usize,
}

/// Packets sent by one `sendmsg`: `count` packets to `to`, the bytes
/// `start..end` of the buffer, cut every `segment` bytes (the last packet
/// may be shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    pub(super) to: SocketAddr,
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) segment: usize,
    pub(super) count: usize,
}

impl Run {
    /// The run's `sendmsg`, its bytes taken from `bytes` (the batch's buffer).
    pub(super) fn transmit<'a>(&self, bytes: &'a [u8]) -> quinn_udp::Transmit<'a> {
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
pub(super) fn runs_into(queued: &[Queued], max_segments: usize, out: &mut Vec<Run>) {
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
pub(super) const END: usize = usize::MAX;

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
    pub(super) queued: Vec<Queued>,
    /// The batch's runs in queue order.
    pub(super) runs: Vec<Run>,
    /// For each run, the next run to the same destination, or [`END`].
    pub(super) next: Vec<usize>,
    /// Per destination (in order of first appearance): its first run not
    /// yet placed.
    pub(super) heads: Vec<usize>,
    /// Per destination: its last run so far, while the chains are built.
    pub(super) tails: Vec<usize>,
    /// Each destination's place in `heads` and `tails`.
    pub(super) index: std::collections::HashMap<SocketAddr, usize>,
    /// The runs in send order, and where each round ends in it.
    pub(super) order: Vec<Run>,
    pub(super) round_ends: Vec<usize>,
}

impl Schedule {
    /// Plans `queued` (see the type's docs).
    pub(super) fn plan(&mut self, queued: &[Queued], max_segments: usize, turn: usize) {
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
    pub(super) fn plan_laid_out(
        &mut self,
        packets: &[(usize, SocketAddr)],
        max_segments: usize,
        turn: usize,
    ) {
        let mut queued = std::mem::take(&mut self.queued);
        queued.clear();
        queued.extend(laid_out(packets));
        self.plan(&queued, max_segments, turn);
        self.queued = queued;
    }

    /// The planned rounds, in order.
    pub(super) fn rounds(&self) -> impl Iterator<Item = &[Run]> + '_ {
        let starts = std::iter::once(0).chain(self.round_ends.iter().copied());
        starts
            .zip(self.round_ends.iter().copied())
            .map(|(start, end)| &self.order[start..end])
    }
}

/// Packets laid end to end from the start of a buffer, each given as its
/// length and destination, as [`Queued`] entries.
pub(super) fn laid_out(packets: &[(usize, SocketAddr)]) -> impl Iterator<Item = Queued> + '_ {
    let mut start = 0;
    packets.iter().map(move |&(len, to)| {
        let q = Queued { to, start, len };
        start += len;
        q
    })
}
