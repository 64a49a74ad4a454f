//! A typed handle over an `async_nats::Client`: publish and request only
//! through [`Subject`]s, so payload and subject always agree.

use std::time::Duration;

use serde::Serialize;

use crate::codec::{decode_reply, encode, Command};
use crate::error::{ErrorCode, WireError};
use crate::subjects::{Subject, Subjects};

/// Cheap to clone; shares the NATS connection.
#[derive(Clone, Debug)]
pub struct Bus {
    pub client: async_nats::Client,
    pub subjects: Subjects,
    pub timeout: Duration,
}

impl Bus {
    pub fn new(client: async_nats::Client, subjects: Subjects) -> Self {
        Self {
            client,
            subjects,
            timeout: Duration::from_secs(5),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends a command and waits for its typed reply. Transport failures
    /// come back as `unavailable`.
    pub async fn request<M: Command>(
        &self,
        subject: &Subject<M>,
        msg: &M,
    ) -> Result<M::Reply, WireError> {
        let req = async_nats::Request::new()
            .payload(encode(msg))
            .timeout(Some(self.timeout));
        let reply = self
            .client
            .send_request(subject.as_str().to_string(), req)
            .await
            .map_err(|e| {
                use async_nats::RequestErrorKind::*;
                let msg = match e.kind() {
                    NoResponders => "no service answers on this subject",
                    TimedOut => "no answer in time",
                    InvalidSubject => "invalid subject",
                    MaxPayloadExceeded => "payload larger than the server allows",
                    Other => "the bus is unreachable",
                };
                tracing::debug!(subject = %subject, error = %e, "request failed");
                WireError::new(ErrorCode::Unavailable, msg)
            })?;
        decode_reply(&reply.payload)
    }

    /// Publishes a message (events, heartbeats). Fire and forget.
    pub async fn publish<M: Serialize>(
        &self,
        subject: &Subject<M>,
        msg: &M,
    ) -> Result<(), WireError> {
        self.client
            .publish(subject.as_str().to_string(), encode(msg))
            .await
            .map_err(|e| {
                tracing::debug!(subject = %subject, error = %e, "publish failed");
                WireError::new(ErrorCode::Unavailable, "the bus is unreachable")
            })
    }
}
