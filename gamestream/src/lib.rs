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
//! - [`nvhttp`]: the HTTP(S) endpoints' requests and XML answers.
//! - [`netsim`]: a seeded lossy link in simulated time.
//!
//! Around them, doing the IO: [`tls`] (pinned self-signed certificates),
//! [`client`] (the tokio driver: [`client::HostClient`], [`client::Stream`])
//! and, with the `emulator` feature, `emulator` (a host on loopback sockets).

pub mod audio;
pub mod client;
pub mod control;
#[cfg(feature = "emulator")]
pub mod emulator;
pub mod fec;
pub mod input;
pub mod netsim;
pub mod nvhttp;
pub mod pairing;
pub mod rtsp;
pub mod tls;
pub mod video;
