//! # h264: bitstream pieces every H.264 source needs
//!
//! Pure functions over bytes, no IO and no dependencies: splitting an
//! Annex B access unit into NAL units ([`nal_units`], [`nal_type`]) and
//! reading the picture size from a sequence parameter set
//! ([`picture_size`]). The worker's sources (synthetic, RTP) and the
//! GameStream client use them; codecs themselves (encoders, decoders,
//! packetizers) live with their users.

mod annexb;
mod sps;

pub use annexb::{nal_type, nal_units, NAL_IDR, NAL_PPS, NAL_SPS};
pub use sps::picture_size;
