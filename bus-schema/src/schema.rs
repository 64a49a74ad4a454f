//! JSON Schemas of every wire message, for non-Rust clients.

use schemars::{schema_for, Schema};

use crate::codec::Envelope;
use crate::messages::*;

/// `(name, schema)` for every message, in a stable order.
pub fn all() -> Vec<(&'static str, Schema)> {
    vec![
        ("CreateSession", schema_for!(CreateSession)),
        ("ListSessions", schema_for!(ListSessions)),
        ("GetSession", schema_for!(GetSession)),
        ("Keepalive", schema_for!(Keepalive)),
        ("StopSession", schema_for!(StopSession)),
        ("AdoptSession", schema_for!(AdoptSession)),
        ("Fence", schema_for!(Fence)),
        ("Ack", schema_for!(Ack)),
        ("SessionInfo", schema_for!(SessionInfo)),
        ("SessionList", schema_for!(SessionList)),
        ("SessionRecord", schema_for!(SessionRecord)),
        ("Heartbeat", schema_for!(Heartbeat)),
        ("SessionEvent", schema_for!(SessionEvent)),
        ("WorkerLost", schema_for!(WorkerLost)),
        ("GetStats", schema_for!(GetStats)),
        ("SessionStats", schema_for!(SessionStats)),
        ("JoinPeer", schema_for!(JoinPeer)),
        ("Joined", schema_for!(Joined)),
        ("PeerSignal", schema_for!(PeerSignal)),
        ("ToPeer", schema_for!(ToPeer)),
        ("InjectInput", schema_for!(crate::input::InjectInput)),
        ("InputEvent", schema_for!(crate::input::InputEvent)),
        ("SourceInput", schema_for!(crate::source_input::SourceInput)),
        ("SourceEvent", schema_for!(crate::source_input::SourceEvent)),
        ("ReplyEnvelope", schema_for!(Envelope<serde_json::Value>)),
    ]
}
