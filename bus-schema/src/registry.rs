//! Typed access to the session registry: a JetStream key-value bucket whose
//! keys are session ids and whose values are [`SessionRecord`]s.
//!
//! Every write that depends on what was read is a compare-and-set on the
//! entry's revision, so two writers (two workers racing a create, two
//! janitors reaping) can never both win.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;

use crate::codec::{decode_record, encode};
use crate::ids::SessionId;
use crate::messages::SessionRecord;
use crate::subjects::Subjects;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A compare-and-set lost: the entry changed since it was read (or, for
    /// a create, exists already).
    #[error("registry entry changed concurrently")]
    Conflict,
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    #[error("registry entry {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
}

fn unavailable(e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Unavailable(e.to_string())
}

/// Where the bucket keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// On disk: survives a NATS server restart.
    File,
    Memory,
}

/// A record with the revision it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub record: SessionRecord,
    pub revision: u64,
}

impl Versioned {
    pub fn info(&self) -> crate::SessionInfo {
        crate::SessionInfo {
            record: self.record.clone(),
            revision: self.revision,
        }
    }
}

#[derive(Clone)]
pub struct Registry {
    kv: kv::Store,
    /// For the inbox of [`Registry::list`]'s consumer.
    client: async_nats::Client,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

/// Copies of the registry a NATS cluster keeps: three servers hold every
/// entry, so one of them may be lost (or restarted) with no write refused.
pub const CLUSTER_REPLICAS: usize = 3;

/// The replicas a bucket created through `client` gets: [`CLUSTER_REPLICAS`]
/// when the server it is connected to is part of a cluster, else one;
/// `None` before the client has heard from a server (services connect in
/// the background). A cluster of fewer JetStream servers cannot place
/// three, and the create is refused (services then fail to start, saying
/// so).
pub fn replicas_for(client: &async_nats::Client) -> Option<usize> {
    let info = client.server_info();
    if info.server_id.is_empty() {
        None
    } else if info.cluster.is_some() {
        Some(CLUSTER_REPLICAS)
    } else {
        Some(1)
    }
}

impl Registry {
    /// Opens the bucket, creating it if it does not exist yet, replicated
    /// as [`replicas_for`] says.
    pub async fn open(
        js: &jetstream::Context,
        subjects: &Subjects,
        storage: Storage,
    ) -> Result<Self, RegistryError> {
        let bucket = subjects.registry_bucket();
        if let Ok(kv) = js.get_key_value(&bucket).await {
            let has = kv.stream.cached_info().config.num_replicas;
            let replicas = replicas_for(&js.client()).unwrap_or(1);
            if has < replicas {
                tracing::warn!(
                    bucket,
                    replicas = has,
                    wanted = replicas,
                    "the registry bucket has fewer replicas than the cluster allows: \
                     raise them with `nats stream edit KV_<bucket> --replicas 3`"
                );
            }
            return Ok(Self {
                kv,
                client: js.client(),
            });
        }
        // Asked after a first request: the client is connected by now, or
        // the open is retried.
        let replicas = replicas_for(&js.client())
            .ok_or_else(|| unavailable("not connected to a NATS server yet"))?;
        // The bucket's stream is created directly, with the key-value
        // conventions (KV_<bucket>, $KV.<bucket>.>, one value per key):
        // `create_key_value` first reads account info in a shape that
        // Debian's nats-server 2.9 does not send.
        let stream = jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("stream sessions: owner, epoch, state, spec".into()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_message_size: 64 * 1024,
            discard: jetstream::stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            num_replicas: replicas,
            storage: match storage {
                Storage::File => jetstream::stream::StorageType::File,
                Storage::Memory => jetstream::stream::StorageType::Memory,
            },
            ..Default::default()
        };
        let kv = match js.get_or_create_stream(stream).await {
            Ok(_) => js.get_key_value(&bucket).await.map_err(unavailable),
            // Services that start together race to create the bucket: the
            // server refuses all but the first create ("subjects overlap
            // with an existing stream"), so a refused one takes the bucket
            // that won, and fails only if there is none.
            Err(e) => js.get_key_value(&bucket).await.map_err(|_| unavailable(e)),
        };
        kv.map(|kv| Self {
            kv,
            client: js.client(),
        })
    }

    /// Opens the bucket, retrying until `deadline` passes (services start
    /// before JetStream is ready, or while NATS restarts).
    pub async fn open_with_retry(
        js: &jetstream::Context,
        subjects: &Subjects,
        storage: Storage,
        deadline: Duration,
    ) -> Result<Self, RegistryError> {
        let start = std::time::Instant::now();
        loop {
            match Self::open(js, subjects, storage).await {
                Ok(r) => return Ok(r),
                Err(e) if start.elapsed() >= deadline => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "registry not ready; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    pub async fn get(&self, id: &SessionId) -> Result<Option<Versioned>, RegistryError> {
        let entry = self.kv.entry(id.as_str()).await.map_err(unavailable)?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                Ok(Some(Self::parse(&e.key, &e.value, e.revision)?))
            }
            _ => Ok(None),
        }
    }

    fn parse(key: &str, value: &[u8], revision: u64) -> Result<Versioned, RegistryError> {
        let record: SessionRecord = decode_record(value).map_err(|e| RegistryError::Corrupt {
            key: key.to_string(),
            reason: e.message,
        })?;
        Ok(Versioned { record, revision })
    }

    /// Creates the entry; `Conflict` if one exists.
    pub async fn create(&self, record: &SessionRecord) -> Result<u64, RegistryError> {
        self.kv
            .create(record.id.as_str(), encode(record))
            .await
            .map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => RegistryError::Conflict,
                _ => unavailable(e),
            })
    }

    /// Replaces the entry if it is still at `revision`.
    pub async fn update(
        &self,
        record: &SessionRecord,
        revision: u64,
    ) -> Result<u64, RegistryError> {
        self.kv
            .update(record.id.as_str(), encode(record), revision)
            .await
            .map_err(|e| match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => RegistryError::Conflict,
                _ => unavailable(e),
            })
    }

    /// Removes the entry if it is still at `revision`.
    pub async fn delete(&self, id: &SessionId, revision: u64) -> Result<(), RegistryError> {
        self.kv
            .purge_expect_revision(id.as_str(), Some(revision))
            .await
            .map_err(|e| {
                // The server answers a failed expectation with a JetStream
                // API error; everything else is transport.
                let text = e.to_string();
                if text.contains("wrong last sequence") || text.contains("10071") {
                    RegistryError::Conflict
                } else {
                    unavailable(e)
                }
            })
    }

    /// Every readable record, oldest first (creation time, then id: the
    /// order of `session.list`). Unreadable entries are logged and skipped.
    ///
    /// One ordered consumer delivers each key's last message, values
    /// included (not a `get` per key: about 115 µs each on loopback, so a
    /// list of 3,000 took a third of a second), and the listing ends with
    /// the message the server had pending last when the consumer started.
    pub async fn list(&self) -> Result<Vec<Versioned>, RegistryError> {
        use jetstream::consumer::{push, DeliverPolicy, ReplayPolicy};
        let consumer = self
            .kv
            .stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                description: Some("session registry listing".into()),
                filter_subject: format!("{}>", self.kv.prefix),
                deliver_policy: DeliverPolicy::LastPerSubject,
                replay_policy: ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let mut out = Vec::new();
        if consumer.cached_info().num_pending > 0 {
            let mut messages = consumer.messages().await.map_err(unavailable)?;
            loop {
                let Some(m) = messages.next().await else {
                    return Err(unavailable("registry listing ended early"));
                };
                let m = m.map_err(unavailable)?;
                let info = m.info().map_err(unavailable)?;
                let (revision, last) = (info.stream_sequence, info.pending == 0);
                self.listed(&m.message, revision, &mut out);
                if last {
                    break;
                }
            }
        }
        out.sort_by_cached_key(|v| crate::ListCursor::of(&v.record));
        Ok(out)
    }

    /// Adds one message of a listing to `out`, if it holds a readable
    /// record (not a deletion marker).
    fn listed(&self, m: &async_nats::Message, revision: u64, out: &mut Vec<Versioned>) {
        let key = m
            .subject
            .strip_prefix(self.kv.prefix.as_str())
            .unwrap_or(&m.subject);
        let op = m
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .map(|v| v.as_str());
        if matches!(op, Some("DEL") | Some("PURGE")) {
            return;
        }
        if SessionId::parse(key).is_err() {
            tracing::warn!(%key, "registry key is not a session id; skipped");
            return;
        }
        match Self::parse(key, &m.payload, revision) {
            Ok(v) => out.push(v),
            Err(e) => tracing::warn!(error = %e, "unreadable registry entry; skipped"),
        }
    }
}

/// One change seen by [`Registry::watch`]: the entry's new record, or
/// `None` when it was deleted or purged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub id: SessionId,
    pub record: Option<Versioned>,
}

impl Registry {
    /// Opens the bucket only if it exists (readers such as the api never
    /// create it: the workers choose its storage).
    pub async fn attach(
        js: &jetstream::Context,
        subjects: &Subjects,
    ) -> Result<Self, RegistryError> {
        let kv = js
            .get_key_value(subjects.registry_bucket())
            .await
            .map_err(unavailable)?;
        Ok(Self {
            kv,
            client: js.client(),
        })
    }

    /// Every entry's current value, then every change, in order (a
    /// JetStream ordered consumer on the bucket's stream, which also
    /// works against nats-server 2.9). Unreadable entries and keys that
    /// are not session ids are logged and skipped. The stream ends, or
    /// yields an error, when the consumer is lost for good; watch again
    /// to resume (the replay of current values makes that lossless).
    pub async fn watch(
        &self,
    ) -> Result<impl futures::Stream<Item = Result<Change, RegistryError>> + Send, RegistryError>
    {
        let entries = self.kv.watch_with_history(">").await.map_err(unavailable)?;
        Ok(entries.filter_map(|e| async move {
            let e = match e {
                Ok(e) => e,
                Err(err) => return Some(Err(unavailable(err))),
            };
            let Ok(id) = SessionId::parse(e.key.as_str()) else {
                tracing::warn!(key = %e.key, "registry key is not a session id; skipped");
                return None;
            };
            if e.operation != kv::Operation::Put {
                return Some(Ok(Change { id, record: None }));
            }
            match Self::parse(&e.key, &e.value, e.revision) {
                Ok(v) => Some(Ok(Change {
                    id,
                    record: Some(v),
                })),
                Err(err) => {
                    tracing::warn!(error = %err, "unreadable registry entry; skipped");
                    None
                }
            }
        }))
    }
}
