//! A short reorder window in front of the H.264 forwarder: a pure state
//! machine with injected time.
//!
//! The forwarder treats a gap in sequence numbers as loss, and a loss costs
//! the viewers every frame up to the sender's next IDR. On a real network a
//! packet is sometimes overtaken by the next ones (two paths, a NIC's
//! queues); without a window that reordering costs as much as a loss.
//! Packets in order pass straight through (no copy, no delay: cut-through
//! forwarding stays). A packet that arrives ahead of a missing one is held
//! (copied) until the missing one comes, for at most [`WINDOW`]; then the
//! gap is taken as loss and what was held goes on in order, so the
//! forwarder sees the gap as before. At most [`MAX_HELD`] packets wait; a
//! packet further ahead than that, or from another sender (SSRC), releases
//! everything held first.

use std::time::{Duration, Instant};

/// The longest a packet waits for an earlier one. Reordering on a path is
/// typically well under a millisecond; a loss is known this much later,
/// and the frames after a loss are dropped until the next IDR anyway.
pub const WINDOW: Duration = Duration::from_millis(10);

/// Packets held at most (a 1080p IDR arrives as a burst of a few hundred;
/// this is about 1 ms of it at gigabit line rate). Also the furthest ahead
/// a packet may be and still be held.
pub const MAX_HELD: usize = 128;

/// What the caller does with the packet it just gave [`Reorder::arrive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Process it now, then whatever [`Reorder::ready`] gives.
    Pass,
    /// Process everything [`Reorder::release_all`] gives first, then it.
    ReleaseFirst,
    /// It was copied and waits for an earlier packet.
    Held,
    /// A second copy of a packet already held: dropped.
    Duplicate,
}

/// A held packet.
#[derive(Debug)]
struct Held {
    seq: u16,
    at: Instant,
    datagram: Vec<u8>,
}

/// The reorder window of one RTP stream.
#[derive(Debug, Default)]
pub struct Reorder {
    ssrc: Option<u32>,
    /// The sequence number that goes next, once a packet has passed.
    next: Option<u16>,
    /// Ordered by distance ahead of `next`.
    held: Vec<Held>,
    /// Packets that came after a later one and were put back in order.
    reordered: u64,
}

impl Reorder {
    /// Takes a packet's place in its stream: `seq` and `ssrc` from its RTP
    /// header. Only a [`Step::Held`] packet is copied.
    pub fn arrive(&mut self, now: Instant, ssrc: u32, seq: u16, datagram: &[u8]) -> Step {
        if self.ssrc != Some(ssrc) {
            self.ssrc = Some(ssrc);
            self.next = Some(seq.wrapping_add(1));
            return self.release_or_pass();
        }
        let Some(next) = self.next else {
            self.next = Some(seq.wrapping_add(1));
            return Step::Pass;
        };
        let ahead = usize::from(seq.wrapping_sub(next));
        if ahead == 0 {
            self.next = Some(seq.wrapping_add(1));
            if !self.held.is_empty() {
                self.reordered += 1;
            }
            return Step::Pass;
        }
        if ahead >= usize::from(u16::MAX / 2) {
            // Behind `next`: late or a duplicate of one gone out; the
            // forwarder counts it.
            return Step::Pass;
        }
        if ahead > MAX_HELD || self.held.len() == MAX_HELD {
            // Too far ahead for reordering (loss, or a restarted sender):
            // what waits goes first, then this one.
            self.next = Some(seq.wrapping_add(1));
            return self.release_or_pass();
        }
        let at = self
            .held
            .partition_point(|h| usize::from(h.seq.wrapping_sub(next)) < ahead);
        if self.held.get(at).is_some_and(|h| h.seq == seq) {
            return Step::Duplicate;
        }
        self.held.insert(
            at,
            Held {
                seq,
                at: now,
                datagram: datagram.to_vec(),
            },
        );
        Step::Held
    }

    fn release_or_pass(&self) -> Step {
        if self.held.is_empty() {
            Step::Pass
        } else {
            Step::ReleaseFirst
        }
    }

    /// Held packets that are next in order now (after a [`Step::Pass`]),
    /// in order. Empty, without allocating, when nothing waits.
    pub fn ready(&mut self) -> Vec<Vec<u8>> {
        let Some(mut next) = self.next else {
            return Vec::new();
        };
        let mut run = 0;
        while self.held.get(run).is_some_and(|h| h.seq == next) {
            next = next.wrapping_add(1);
            run += 1;
        }
        self.next = Some(next);
        self.held.drain(..run).map(|h| h.datagram).collect()
    }

    /// Everything held, in order (before a [`Step::ReleaseFirst`] packet):
    /// the gaps between them are loss.
    pub fn release_all(&mut self) -> Vec<Vec<u8>> {
        self.held.drain(..).map(|h| h.datagram).collect()
    }

    /// When the oldest held packet stops waiting, if any waits.
    pub fn deadline(&self) -> Option<Instant> {
        self.held.iter().map(|h| h.at).min().map(|at| at + WINDOW)
    }

    /// The packets that have waited [`WINDOW`] by `now`, with those held
    /// behind them up to the next gap, in order: the gaps in front of them
    /// are taken as loss. Empty when none is due.
    pub fn expire(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while self.deadline().is_some_and(|d| d <= now) {
            // Give up on the gap before the first held packet.
            self.next = Some(self.held[0].seq);
            out.extend(self.ready());
        }
        out
    }

    /// Packets that came after a later one and were put back in order.
    pub fn reordered(&self) -> u64 {
        self.reordered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSRC: u32 = 7;

    fn pkt(seq: u16) -> Vec<u8> {
        seq.to_be_bytes().to_vec()
    }

    /// Feeds `seqs` at `now` as a forwarder would and returns the order the
    /// forwarder gets them in.
    fn feed(r: &mut Reorder, now: Instant, seqs: &[u16]) -> Vec<u16> {
        let mut out = Vec::new();
        let seq_of = |d: &[u8]| u16::from_be_bytes([d[0], d[1]]);
        for &s in seqs {
            match r.arrive(now, SSRC, s, &pkt(s)) {
                Step::Pass => {
                    out.push(s);
                    out.extend(r.ready().iter().map(|d| seq_of(d)));
                }
                Step::ReleaseFirst => {
                    out.extend(r.release_all().iter().map(|d| seq_of(d)));
                    out.push(s);
                }
                Step::Held | Step::Duplicate => {}
            }
        }
        out
    }

    #[test]
    fn packets_in_order_pass_at_once() {
        let (mut r, t) = (Reorder::default(), Instant::now());
        assert_eq!(feed(&mut r, t, &[65534, 65535, 0, 1]), [65534, 65535, 0, 1]);
        assert_eq!(r.deadline(), None);
        assert_eq!(r.reordered(), 0);
    }

    #[test]
    fn an_overtaken_packet_is_put_back_in_place() {
        let (mut r, t) = (Reorder::default(), Instant::now());
        assert_eq!(feed(&mut r, t, &[10, 12, 13]), [10]);
        assert_eq!(r.deadline(), Some(t + WINDOW));
        assert_eq!(feed(&mut r, t, &[11, 14]), [11, 12, 13, 14]);
        assert_eq!(r.deadline(), None);
        assert_eq!(r.reordered(), 1);
        // Across the wrap, two swapped pairs.
        assert_eq!(
            feed(&mut r, t, &[15, 17, 16, 18]),
            [15, 16, 17, 18],
            "same stream"
        );
        let mut r = Reorder::default();
        assert_eq!(
            feed(&mut r, t, &[65534, 0, 65535, 2, 1]),
            [65534, 65535, 0, 1, 2]
        );
        assert_eq!(r.reordered(), 2);
    }

    #[test]
    fn a_gap_that_outlasts_the_window_is_loss() {
        let (mut r, t) = (Reorder::default(), Instant::now());
        assert_eq!(feed(&mut r, t, &[1, 3, 4]), [1]);
        let later = t + Duration::from_millis(4);
        assert_eq!(feed(&mut r, later, &[6]), Vec::<u16>::new());
        assert!(r.expire(t + WINDOW - Duration::from_micros(1)).is_empty());
        // 3 and 4 go on (2 is lost); 6 waits on for 5 until its own time.
        let out: Vec<u16> = r
            .expire(t + WINDOW)
            .iter()
            .map(|d| u16::from_be_bytes([d[0], d[1]]))
            .collect();
        assert_eq!(out, [3, 4]);
        assert_eq!(r.deadline(), Some(later + WINDOW));
        assert_eq!(r.expire(later + WINDOW).len(), 1);
        assert_eq!(feed(&mut r, later + WINDOW, &[7]), [7]);
        assert_eq!(r.reordered(), 0);
    }

    #[test]
    fn late_duplicate_far_ahead_and_new_sender() {
        let (mut r, t) = (Reorder::default(), Instant::now());
        assert_eq!(feed(&mut r, t, &[100, 101]), [100, 101]);
        // Behind: passed on for the forwarder to count as late.
        assert_eq!(r.arrive(t, SSRC, 99, &pkt(99)), Step::Pass);
        assert_eq!(r.arrive(t, SSRC, 103, &pkt(103)), Step::Held);
        assert_eq!(r.arrive(t, SSRC, 103, &pkt(103)), Step::Duplicate);
        // Far ahead: 103 goes first, then the far one; the stream goes on
        // from there.
        let far = 102 + MAX_HELD as u16 + 1;
        assert_eq!(feed(&mut r, t, &[far, far + 1]), [103, far, far + 1]);
        // A new sender releases what waits for the old one.
        assert_eq!(feed(&mut r, t, &[far + 3]), Vec::<u16>::new());
        assert_eq!(r.arrive(t, SSRC + 1, 5, &pkt(5)), Step::ReleaseFirst);
        assert_eq!(r.release_all(), [pkt(far + 3)]);
        assert_eq!(r.arrive(t, SSRC + 1, 6, &pkt(6)), Step::Pass);
        assert_eq!(r.deadline(), None);
    }

    proptest::proptest! {
        #[test]
        fn any_shuffle_within_the_window_comes_out_whole_and_in_order(
            // At most 8 swaps of up to 15 places: no packet moves more than
            // 120 places, within MAX_HELD.
            swaps in proptest::collection::vec((1usize..300, 1usize..16), 0..8),
            start in proptest::prelude::any::<u16>(),
        ) {
            let mut seqs: Vec<u16> = (0..300).map(|k| start.wrapping_add(k)).collect();
            for (i, d) in swaps {
                let j = (i + d).min(seqs.len() - 1);
                seqs.swap(i, j);
            }
            let (mut r, t) = (Reorder::default(), Instant::now());
            let mut out = feed(&mut r, t, &seqs);
            out.extend(r.expire(t + WINDOW).iter().map(|d| u16::from_be_bytes([d[0], d[1]])));
            let sorted: Vec<u16> = (0..300).map(|k| start.wrapping_add(k)).collect();
            proptest::prop_assert_eq!(out, sorted);
            proptest::prop_assert_eq!(r.deadline(), None);
        }
    }

    #[test]
    fn a_full_window_lets_everything_go() {
        let (mut r, t) = (Reorder::default(), Instant::now());
        let mut seqs = vec![0u16];
        seqs.extend(2..=(MAX_HELD as u16 + 1));
        assert_eq!(feed(&mut r, t, &seqs), [0]);
        assert_eq!(r.held.len(), MAX_HELD);
        let next = MAX_HELD as u16 + 2;
        let out = feed(&mut r, t, &[next]);
        assert_eq!(out.len(), MAX_HELD + 1);
        assert_eq!(out.first(), Some(&2));
        assert_eq!(out.last(), Some(&next));
        assert_eq!(r.deadline(), None);
    }
}
