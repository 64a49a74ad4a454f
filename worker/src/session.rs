//! One task per running session: it owns the session's registry entry (as
//! last written, with its revision), its TTL clocks and its source, and is
//! the only writer of that entry while it runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_schema::registry::{RegistryError, Versioned};
use bus_schema::{
    EndReason, Ended, ErrorCode, SessionEvent, SessionEventKind, SessionId, SessionInfo, SessionState, Timestamp,
    WireError,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::core::SessionClock;
use crate::source::{Media, SourceExit, SourceHandle};
use crate::Ctx;

/// How long a new source may take to produce its first encoded frame.
pub const FIRST_FRAME_DEADLINE: Duration = Duration::from_secs(10);

pub enum Cmd {
    Info(oneshot::Sender<SessionInfo>),
    Keepalive(oneshot::Sender<SessionInfo>),
    Stop {
        detail: Option<String>,
        reply: oneshot::Sender<SessionInfo>,
    },
    /// The registry gave the session away: stop without writing it.
    Fence(oneshot::Sender<()>),
    /// The worker shuts down: end with `worker_shutdown`.
    Shutdown(oneshot::Sender<()>),
    /// The worker's lease ran out: stop streaming now, record later.
    LeaseLost,
}

/// How the rest of the worker talks to a session task.
#[derive(Clone)]
pub struct SessionHandle {
    pub tx: mpsc::Sender<Cmd>,
}

impl SessionHandle {
    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, WireError> {
        let (tx, rx) = oneshot::channel();
        let gone = || WireError::new(ErrorCode::NotFound, "session ended while the command was in flight");
        self.tx.send(make(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}

pub struct Session {
    ctx: Arc<Ctx>,
    state: Versioned,
    clock: SessionClock,
    source: Option<SourceHandle>,
}

enum Outcome {
    /// End and record the reason in the registry.
    End(EndReason, Option<String>),
    /// Stop streaming; the registry is someone else's now.
    Fenced,
    /// Stop streaming now; record `worker_lost` once NATS is back.
    LeaseLost,
}

impl Session {
    pub fn new(ctx: Arc<Ctx>, state: Versioned, source: SourceHandle) -> Self {
        let spec = &state.record.spec;
        let clock = SessionClock::new(Instant::now(), spec.idle_ttl.get(), spec.max_lifetime.get());
        Self {
            ctx,
            state,
            clock,
            source: Some(source),
        }
    }

    fn id(&self) -> &SessionId {
        &self.state.record.id
    }

    fn epoch(&self) -> u64 {
        self.state.record.epoch
    }

    /// Runs the session to its end. `live` learns when the first frame is
    /// out (or why there will be none).
    pub async fn run(mut self, mut rx: mpsc::Receiver<Cmd>, live: oneshot::Sender<Result<SessionInfo, WireError>>) {
        let mut live = Some(live);
        let mut first_media = self.source.as_ref().map(|s| s.subscribe());
        let first_frame_deadline = tokio::time::Instant::now() + FIRST_FRAME_DEADLINE;
        let mut pending_reply: Vec<oneshot::Sender<SessionInfo>> = Vec::new();
        let mut done: Vec<oneshot::Sender<()>> = Vec::new();

        let outcome = loop {
            let deadline = tokio::time::Instant::from_std(self.clock.deadline());
            let source = self.source.as_mut().expect("source present while running");
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None => break Outcome::End(EndReason::WorkerShutdown, None),
                    Some(Cmd::Info(r)) => { let _ = r.send(self.state.info()); }
                    Some(Cmd::Keepalive(r)) => {
                        self.clock.keepalive(Instant::now());
                        let _ = r.send(self.state.info());
                    }
                    Some(Cmd::Stop { detail, reply }) => {
                        pending_reply.push(reply);
                        break Outcome::End(EndReason::Stopped, detail);
                    }
                    Some(Cmd::Fence(r)) => { done.push(r); break Outcome::Fenced; }
                    Some(Cmd::Shutdown(r)) => { done.push(r); break Outcome::End(EndReason::WorkerShutdown, None); }
                    Some(Cmd::LeaseLost) => break Outcome::LeaseLost,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    if let Some(reason) = self.clock.expired(Instant::now()) {
                        break Outcome::End(reason, None);
                    }
                }
                exit = source.exited() => {
                    let detail = match exit { SourceExit::Failed(why) => why, SourceExit::Stopped => "source stopped".into() };
                    break Outcome::End(EndReason::SourceFailed, Some(detail));
                }
                m = recv_first_video(&mut first_media), if first_media.is_some() => {
                    first_media = None;
                    match m {
                        Ok(()) => match self.mark_live().await {
                            Ok(()) => {
                                if let Some(l) = live.take() { let _ = l.send(Ok(self.state.info())); }
                            }
                            Err(e) => {
                                if let Some(l) = live.take() { let _ = l.send(Err(e)); }
                                break Outcome::Fenced;
                            }
                        },
                        Err(why) => break Outcome::End(EndReason::SourceFailed, Some(why)),
                    }
                }
                _ = tokio::time::sleep_until(first_frame_deadline), if live.is_some() => {
                    break Outcome::End(EndReason::SourceFailed, Some("no frame within the first-frame deadline".into()));
                }
            }
        };

        if let Some(source) = self.source.take() {
            source.stop().await;
        }
        self.ctx.remove(self.id(), self.epoch());
        match outcome {
            Outcome::End(reason, detail) => {
                info!(session_id = %self.id(), epoch = self.epoch(), reason = reason.as_str(), "session ending");
                if let Some(v) = self.record_end(reason, detail, 5).await {
                    self.state = v;
                }
            }
            Outcome::Fenced => {
                info!(session_id = %self.id(), epoch = self.epoch(), "session fenced; stopped without touching the registry");
            }
            Outcome::LeaseLost => {
                warn!(session_id = %self.id(), epoch = self.epoch(), "lease lost; stopped streaming");
                // Release the caller first, then wait for NATS to come back.
                for r in done.drain(..) {
                    let _ = r.send(());
                }
                let retry_for = self.ctx.lease_lost_retry;
                let cancel = self.ctx.cancel.clone();
                tokio::select! {
                    v = self.record_end(EndReason::WorkerLost, Some("worker lease expired".into()), usize::MAX) => {
                        if let Some(v) = v { self.state = v; }
                    }
                    _ = tokio::time::sleep(retry_for) => {}
                    _ = cancel.cancelled() => {}
                }
            }
        }
        if let Some(l) = live.take() {
            let reason = self.state.record.ended.as_ref().map(|e| e.reason.as_str()).unwrap_or("fenced");
            let _ = l.send(Err(WireError::new(
                ErrorCode::SourceFailed,
                format!("session ended before its first frame: {reason}"),
            )));
        }
        for r in pending_reply {
            let _ = r.send(self.state.info());
        }
        for r in done {
            let _ = r.send(());
        }
        // Commands that raced the end get a clear answer, not silence.
        rx.close();
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Cmd::Info(r) | Cmd::Keepalive(r) | Cmd::Stop { reply: r, .. } => {
                    let _ = r.send(self.state.info());
                }
                Cmd::Fence(r) | Cmd::Shutdown(r) => {
                    let _ = r.send(());
                }
                Cmd::LeaseLost => {}
            }
        }
    }

    async fn mark_live(&mut self) -> Result<(), WireError> {
        let mut rec = self.state.record.clone();
        rec.state = SessionState::Live;
        rec.live_at = Some(Timestamp::now());
        rec.updated_at = Timestamp::now();
        match self.ctx.registry.update(&rec, self.state.revision).await {
            Ok(revision) => {
                self.state = Versioned { record: rec, revision };
                info!(session_id = %self.id(), epoch = self.epoch(), "session live");
                self.publish(SessionEventKind::Started, None, None).await;
                Ok(())
            }
            Err(RegistryError::Conflict) => Err(WireError::new(
                ErrorCode::Conflict,
                "the registry gave this session to another worker while it started",
            )),
            Err(e) => {
                warn!(session_id = %self.id(), error = %e, "could not mark the session live");
                Err(WireError::new(ErrorCode::Unavailable, "registry unavailable"))
            }
        }
    }

    /// Writes the end into the registry if the entry is still ours (same
    /// owner and epoch). Returns the written entry, or None when fenced or
    /// when the registry stayed unreachable for `attempts` tries.
    async fn record_end(&mut self, reason: EndReason, detail: Option<String>, attempts: usize) -> Option<Versioned> {
        let mut tries = 0usize;
        loop {
            let mut rec = self.state.record.clone();
            rec.state = SessionState::Ended;
            rec.updated_at = Timestamp::now();
            rec.viewers = 0;
            rec.ended = Some(Ended {
                reason,
                at: Timestamp::now(),
                detail: detail.clone(),
            });
            match self.ctx.registry.update(&rec, self.state.revision).await {
                Ok(revision) => {
                    let v = Versioned { record: rec, revision };
                    self.state = v.clone();
                    self.publish(SessionEventKind::Ended, Some(reason), detail).await;
                    return Some(v);
                }
                Err(RegistryError::Conflict) => match self.ctx.registry.get(self.id()).await {
                    Ok(Some(cur))
                        if cur.record.owner == self.ctx.me
                            && cur.record.epoch == self.epoch()
                            && cur.record.state != SessionState::Ended =>
                    {
                        self.state = cur;
                    }
                    Ok(_) => {
                        info!(session_id = %self.id(), "registry entry no longer ours; end not recorded");
                        return None;
                    }
                    Err(e) => {
                        tries += 1;
                        warn!(session_id = %self.id(), error = %e, "registry read failed");
                    }
                },
                Err(e) => {
                    tries += 1;
                    if tries == 1 {
                        warn!(session_id = %self.id(), error = %e, "registry write failed; retrying");
                    }
                }
            }
            if tries >= attempts {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn publish(&self, kind: SessionEventKind, reason: Option<EndReason>, detail: Option<String>) {
        let ev = SessionEvent {
            id: self.id().clone(),
            kind,
            worker: self.ctx.me.clone(),
            epoch: self.epoch(),
            at: Timestamp::now(),
            reason,
            detail,
            peer: None,
            viewers: None,
        };
        let subject = self.ctx.bus.subjects.event_session(self.id(), kind);
        if let Err(e) = self.ctx.bus.publish(&subject, &ev).await {
            warn!(session_id = %self.id(), error = %e, "event not published");
        }
    }
}

/// Waits for the first video frame. Errors when the source closes.
async fn recv_first_video(rx: &mut Option<tokio::sync::broadcast::Receiver<Media>>) -> Result<(), String> {
    use tokio::sync::broadcast::error::RecvError;
    let Some(rx) = rx.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match rx.recv().await {
            Ok(Media::Video(_)) => return Ok(()),
            Ok(_) | Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return Err("source closed before its first frame".into()),
        }
    }
}
