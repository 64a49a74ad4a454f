//! # bus-schema: the contract
//!
//! Every NATS subject ([`subjects`]) and every message ([`messages`]) of the
//! system, with stable error codes ([`error`]) and the reply envelope
//! ([`codec`]). Services depend on this crate; non-Rust clients read
//! `docs/protocol.md` and the JSON Schemas printed by the `bus-schema`
//! binary, which are generated from these types.

pub mod bus;
pub mod codec;
pub mod connect;
pub mod error;
pub mod ids;
pub mod input;
pub mod messages;
pub mod registry;
pub mod schema;
pub mod source_input;
pub mod subjects;
pub mod time;

pub use bus::Bus;
pub use codec::{decode, decode_record, decode_reply, encode, encode_reply, Command};
pub use error::{ErrorCode, WireError};
pub use ids::{PeerId, SessionId, WorkerId};
pub use input::{InjectInput, InputEvent, TouchPhase};
pub use messages::*;
pub use source_input::{InputRoute, SourceEvent, SourceInput};
pub use subjects::{SessionVerb, Subject, Subjects};
pub use time::{HumanDuration, Timestamp};
