//! GameStream (Moonlight) protocol, client side, with the host side of each
//! exchange beside it for tests and the emulator.
//!
//! Every module here is sans-IO: codecs are pure functions over bytes and
//! state machines take `now` as an argument and return what to do. No module
//! reads the clock, opens a socket or draws randomness it was not handed.
//!
//! - [`fec`]: Reed-Solomon over GF(2^8) with the Cauchy parity matrix hosts use.
//! - [`video`]: RTP + NV packet + frame headers, the host-side packetizer and
//!   the client-side [`video::Depacketizer`].
//! - [`audio`]: audio RTP, audio FEC and AES-CBC decryption.
//! - [`input`]: input packet encoders (and the decoder the emulator records with).
//! - [`control`]: control-stream messages and the AES-GCM envelope.
//! - [`pairing`]: the PIN pairing exchange, client and host state machines.
//! - [`rtsp`]: the RTSP handshake messages, plain and `rtspenc://`.

pub mod audio;
pub mod control;
pub mod fec;
pub mod input;
pub mod netsim;
pub mod pairing;
pub mod rtsp;
pub mod video;
