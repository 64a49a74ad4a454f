//! The janitor's errors. Everything that happens in normal operation (a lost
//! CAS, a worker that does not answer, NATS restarting) is handled and
//! logged inside the driver; only what stops the janitor is an error here.

#[derive(Debug, thiserror::Error)]
pub enum JanitorError {
    /// A setting is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The heartbeat subscription could not be made.
    #[error("cannot subscribe to heartbeats")]
    Subscribe(#[source] async_nats::SubscribeError),
    /// The heartbeat subscription ended: the NATS client was closed.
    #[error("the heartbeat subscription ended; the NATS client was closed")]
    SubscriptionClosed,
}
