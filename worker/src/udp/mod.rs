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
//! worker's own media path (`crate::srtp_out`) queues its SRTP on the same
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

//! The parts: [`plan`] (pure: which packets leave together and in what
//! turn, which lane a destination takes, how reused buffers are trimmed),
//! [`queue`] (the lanes, their sender threads and the [`UdpQueue`] handle)
//! and `conn` (the socket as webrtc-rs's `Conn`, for its UDP mux).

use std::time::Duration;

mod conn;
pub mod plan;
pub mod queue;

#[cfg(test)]
use plan::*;
pub use plan::{lane_of, Trim, TRIM_AFTER, TRIM_FLOOR_BYTES};
#[cfg(test)]
use queue::*;
pub use queue::{trim_entries, BatchedUdp, SendCounters, UdpQueue};

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
#[cfg(test)]
pub(crate) mod tests;
