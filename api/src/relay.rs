//! The relay's backstop: what the registry says about the sessions that
//! viewers watch through this api.
//!
//! A WebSocket handler learns that its session ended or moved from the
//! session's events, which are fast but can be lost (a janitor killed
//! between its registry write and its publish). The registry is the source
//! of truth: one watch of the sessions bucket per api process feeds one
//! owner task, which keeps the latest record of each session that has at
//! least one handler, and nothing for the others. Handlers read it through
//! a [`Watching`] guard; dropping the last guard of a session removes its
//! entry.

use std::collections::HashMap;
use std::time::Duration;

use bus_schema::registry::{Change, Registry};
use bus_schema::{EndReason, SessionId, SessionState, Subjects, ToPeer, WorkerId};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};

/// What the registry last said about one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// No change seen since the first handler started watching.
    Unknown,
    Record {
        owner: WorkerId,
        epoch: u64,
        state: SessionState,
        ended: Option<EndReason>,
    },
    /// The entry was deleted.
    Gone,
}

impl Seen {
    fn from_change(c: &Change) -> Self {
        match &c.record {
            None => Seen::Gone,
            Some(v) => Seen::Record {
                owner: v.record.owner.clone(),
                epoch: v.record.epoch,
                state: v.record.state,
                ended: v.record.ended.as_ref().map(|e| e.reason),
            },
        }
    }
}

/// What a viewer joined to `joined` must be told when the registry shows
/// `seen`: `ended` with the reason, or `closed` (the page rejoins and
/// reaches the new owner, or hears why it cannot) when the session runs
/// elsewhere or is gone. `None`: nothing to say.
pub fn verdict(joined: &WorkerId, seen: &Seen) -> Option<ToPeer> {
    match seen {
        Seen::Unknown => None,
        Seen::Gone => Some(ToPeer::Closed {
            reason: "session removed from the registry".into(),
        }),
        Seen::Record {
            state: SessionState::Ended,
            ended,
            ..
        } => Some(ToPeer::Ended {
            reason: ended.unwrap_or(EndReason::Stopped),
        }),
        Seen::Record { owner, epoch, .. } if owner != joined => Some(ToPeer::Closed {
            reason: format!("session moved to worker {owner} (epoch {epoch})"),
        }),
        Seen::Record { .. } => None,
    }
}

enum Cmd {
    Watch {
        id: SessionId,
        reply: oneshot::Sender<watch::Receiver<Seen>>,
    },
    Unwatch(SessionId),
    Change(Box<Change>),
    #[cfg(test)]
    Count(oneshot::Sender<usize>),
}

/// Handle to the owner task. Cheap to clone.
#[derive(Clone)]
pub struct Relay {
    tx: mpsc::UnboundedSender<Cmd>,
}

/// One handler's view of one session. Dropping it releases the entry when
/// no other handler watches the session.
pub struct Watching {
    id: SessionId,
    rx: Option<watch::Receiver<Seen>>,
    tx: mpsc::UnboundedSender<Cmd>,
}

impl Watching {
    /// Waits for the next change and returns it; `None` when the relay is
    /// gone (the api is shutting down): the caller then waits forever.
    pub async fn changed(&mut self) -> Option<Seen> {
        let rx = self.rx.as_mut()?;
        match rx.changed().await {
            Ok(()) => Some(rx.borrow_and_update().clone()),
            Err(_) => {
                self.rx = None;
                None
            }
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        // The receiver goes first, so the owner counts it gone.
        self.rx = None;
        let _ = self.tx.send(Cmd::Unwatch(self.id.clone()));
    }
}

/// The relay's tasks; aborted when dropped.
pub struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl Relay {
    /// Starts the owner task and the registry watch (which attaches once
    /// the bucket exists, and watches again after any loss).
    pub fn spawn(client: async_nats::Client, subjects: Subjects) -> (Self, Tasks) {
        let (tx, rx) = mpsc::unbounded_channel();
        let owner = tokio::spawn(own(rx));
        let feed = tokio::spawn(feed(client, subjects, tx.clone()));
        (Self { tx }, Tasks(vec![owner, feed]))
    }

    /// Starts watching `id`; `None` if the relay is gone.
    pub async fn watch(&self, id: SessionId) -> Option<Watching> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Watch {
                id: id.clone(),
                reply,
            })
            .ok()?;
        let rx = rx.await.ok()?;
        Some(Watching {
            id,
            rx: Some(rx),
            tx: self.tx.clone(),
        })
    }

    #[cfg(test)]
    async fn count(&self) -> usize {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Cmd::Count(reply));
        rx.await.unwrap_or(usize::MAX)
    }
}

/// The owner of the map: session id → latest record, for watched sessions.
async fn own(mut rx: mpsc::UnboundedReceiver<Cmd>) {
    let mut map: HashMap<SessionId, watch::Sender<Seen>> = HashMap::new();
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Cmd::Watch { id, reply } => {
                let tx = map
                    .entry(id)
                    .or_insert_with(|| watch::channel(Seen::Unknown).0);
                let _ = reply.send(tx.subscribe());
            }
            Cmd::Unwatch(id) => {
                if map.get(&id).is_some_and(|tx| tx.receiver_count() == 0) {
                    map.remove(&id);
                }
            }
            Cmd::Change(c) => {
                if let Some(tx) = map.get(&c.id) {
                    tx.send_replace(Seen::from_change(&c));
                }
            }
            #[cfg(test)]
            Cmd::Count(reply) => {
                let _ = reply.send(map.len());
            }
        }
    }
}

/// Feeds registry changes to the owner, watching again after any loss.
async fn feed(client: async_nats::Client, subjects: Subjects, tx: mpsc::UnboundedSender<Cmd>) {
    let js = async_nats::jetstream::new(client);
    let retry = Duration::from_millis(500);
    loop {
        let watched = match Registry::attach(&js, &subjects).await {
            Ok(reg) => reg.watch().await,
            Err(e) => Err(e),
        };
        match watched {
            Ok(changes) => {
                tracing::debug!("watching the registry");
                let mut changes = std::pin::pin!(changes);
                while let Some(c) = changes.next().await {
                    match c {
                        Ok(c) => {
                            if tx.send(Cmd::Change(Box::new(c))).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "registry watch lost; watching again");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "registry not watchable yet; retrying"),
        }
        tokio::time::sleep(retry).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus_schema::registry::Versioned;

    fn w(s: &str) -> WorkerId {
        WorkerId::parse(s).unwrap()
    }

    fn rec(owner: &str, epoch: u64, state: SessionState, ended: Option<EndReason>) -> Seen {
        Seen::Record {
            owner: w(owner),
            epoch,
            state,
            ended,
        }
    }

    #[test]
    fn verdicts() {
        let me = w("w-a");
        assert_eq!(verdict(&me, &Seen::Unknown), None);
        assert_eq!(verdict(&me, &rec("w-a", 1, SessionState::Live, None)), None);
        assert_eq!(
            verdict(
                &me,
                &rec("w-a", 1, SessionState::Ended, Some(EndReason::WorkerLost))
            ),
            Some(ToPeer::Ended {
                reason: EndReason::WorkerLost
            })
        );
        assert!(matches!(
            verdict(&me, &rec("w-b", 2, SessionState::Starting, None)),
            Some(ToPeer::Closed { .. })
        ));
        assert!(matches!(
            verdict(&me, &Seen::Gone),
            Some(ToPeer::Closed { .. })
        ));
    }

    fn change(id: &SessionId, owner: &str, epoch: u64) -> Box<Change> {
        let json = serde_json::json!({
            "id": id.as_str(), "owner": owner, "epoch": epoch, "state": "live",
            "spec": {"source": {"kind": "synthetic", "width": 320, "height": 240, "fps": 15,
                                 "bitrate_kbps": 400},
                     "idle_ttl": "5m", "max_lifetime": "1h", "on_worker_lost": "end", "labels": {}},
            "created_at": "2026-01-01T00:00:00.000Z", "updated_at": "2026-01-01T00:00:00.000Z",
        });
        let record = serde_json::from_value(json).expect("record");
        Box::new(Change {
            id: id.clone(),
            record: Some(Versioned {
                record,
                revision: epoch,
            }),
        })
    }

    #[tokio::test]
    async fn entries_live_while_watched_and_changes_reach_every_watcher() {
        let (tx, rx) = mpsc::unbounded_channel();
        let owner = tokio::spawn(own(rx));
        let relay = Relay { tx: tx.clone() };
        let id = SessionId::parse("s1").unwrap();
        let mut a = relay.watch(id.clone()).await.unwrap();
        let mut b = relay.watch(id.clone()).await.unwrap();
        // A change to an unwatched session is not kept.
        tx.send(Cmd::Change(change(
            &SessionId::parse("s2").unwrap(),
            "w-a",
            1,
        )))
        .unwrap();
        assert_eq!(relay.count().await, 1);
        tx.send(Cmd::Change(change(&id, "w-b", 2))).unwrap();
        let want = rec("w-b", 2, SessionState::Live, None);
        assert_eq!(a.changed().await, Some(want.clone()));
        assert_eq!(b.changed().await, Some(want));
        drop(a);
        assert_eq!(relay.count().await, 1, "b still watches");
        drop(b);
        assert_eq!(
            relay.count().await,
            0,
            "the last watcher gone, the entry too"
        );
        drop(relay);
        drop(tx);
        owner.await.unwrap();
    }
}
