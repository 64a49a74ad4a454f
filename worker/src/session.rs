//! One task per running session: it owns the session's registry entry (as
//! last written, with its revision), its TTL clocks and its source, and is
//! the only writer of that entry while it runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_schema::registry::{RegistryError, Versioned};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use bus_schema::{
    Ack, EndReason, Ended, ErrorCode, InputEvent, JoinPeer, Joined, PeerId, PeerSignal, Role,
    SessionEvent, SessionEventKind, SessionId, SessionInfo, SessionState, SessionStats, Timestamp,
    ToPeer, ViewerInfo, WireError,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::core::SessionClock;
use crate::fanout::FanoutHandle;
use crate::input_state::{InputState, BACKEND_VIEWER};
use crate::rtc::{Viewer, ViewerEvent};
use crate::source::{Media, SourceExit, SourceHandle};
use crate::Ctx;

/// Viewer callbacks queued for the session task; beyond this, input floods
/// are dropped.
const VIEWER_EVENT_QUEUE: usize = 1024;

/// A viewer holding input that sends nothing (not even a ping; the page
/// pings every 5 s) for this long is released.
pub const INPUT_IDLE: Duration = Duration::from_secs(20);

/// A viewer whose peer connection is not up this long after joining is dropped.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(20);

/// How often a suspended session checks whether it may resume.
const RESUME_CHECK: Duration = Duration::from_millis(100);

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
    /// Attach a viewer.
    Join {
        join: JoinPeer,
        reply: oneshot::Sender<Result<Joined, WireError>>,
    },
    /// Signalling from a viewer.
    Signal {
        peer: PeerId,
        signal: PeerSignal,
        reply: oneshot::Sender<Result<Ack, WireError>>,
    },
    Stats(oneshot::Sender<SessionStats>),
    /// Input injected by the backend.
    Inject {
        events: Vec<InputEvent>,
        reply: oneshot::Sender<Result<Ack, WireError>>,
    },
}

/// How the rest of the worker talks to a session task.
#[derive(Clone)]
pub struct SessionHandle {
    pub tx: mpsc::Sender<Cmd>,
    /// Viewers attached now (read by the heartbeat).
    pub viewers: Arc<AtomicU32>,
    /// Streaming is paused: the worker lost its lease (read by the heartbeat).
    pub paused: Arc<AtomicBool>,
}

impl SessionHandle {
    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Cmd,
    ) -> Result<T, WireError> {
        let (tx, rx) = oneshot::channel();
        let gone = || {
            WireError::new(
                ErrorCode::NotFound,
                "session ended while the command was in flight",
            )
        };
        self.tx.send(make(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}

pub struct Session {
    ctx: Arc<Ctx>,
    state: Versioned,
    clock: SessionClock,
    source: Option<SourceHandle>,
    viewers: HashMap<PeerId, Viewer>,
    /// The viewers' fan-out on the worker's own media path (one UDP port),
    /// started with the first viewer.
    fanout: Option<FanoutHandle>,
    viewer_count: Arc<AtomicU32>,
    paused: Arc<AtomicBool>,
    suspended_since: Option<Instant>,
    viewer_tx: mpsc::Sender<ViewerEvent>,
    viewer_rx: mpsc::Receiver<ViewerEvent>,
    input: InputState,
}

enum Resume {
    Stay,
    Resumed,
    GivenAway,
    TooLong,
}

enum Outcome {
    /// End and record the reason in the registry.
    End(EndReason, Option<String>),
    /// Stop streaming; the registry is someone else's now.
    Fenced,
    /// Suspended for too long: stop, and record `worker_lost` if possible.
    LeaseLost,
}

impl Session {
    pub fn new(
        ctx: Arc<Ctx>,
        state: Versioned,
        source: SourceHandle,
        viewer_count: Arc<AtomicU32>,
        paused: Arc<AtomicBool>,
    ) -> Self {
        let spec = &state.record.spec;
        let clock = SessionClock::new(Instant::now(), spec.idle_ttl.get(), spec.max_lifetime.get());
        let (viewer_tx, viewer_rx) = mpsc::channel(VIEWER_EVENT_QUEUE);
        let spec = state.record.spec.clone();
        Self {
            ctx,
            state,
            clock,
            source: Some(source),
            viewers: HashMap::new(),
            fanout: None,
            viewer_count,
            paused,
            suspended_since: None,
            viewer_tx,
            viewer_rx,
            input: {
                let (width, height) = spec.source.picture_size().unwrap_or((1280, 720));
                InputState::new(width, height)
            },
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
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<Cmd>,
        live: oneshot::Sender<Result<SessionInfo, WireError>>,
    ) {
        let mut live = Some(live);
        let mut first_media = self.source.as_ref().map(|s| s.subscribe());
        // A source may have encoded its first frame before we subscribed
        // (the synthetic one does, inside `start`): then it is live now.
        let mut encoded_already = self.source.as_ref().is_some_and(|s| s.is_live());
        let first_frame_deadline = tokio::time::Instant::now() + FIRST_FRAME_DEADLINE;
        let mut pending_reply: Vec<oneshot::Sender<SessionInfo>> = Vec::new();
        let mut done: Vec<oneshot::Sender<()>> = Vec::new();
        let mut resume_check = tokio::time::interval(RESUME_CHECK);
        // First sweep after one period: an immediate tick would race the
        // first-frame branch in the first iteration.
        let sweep = Duration::from_secs(5);
        let mut input_sweep = tokio::time::interval_at(tokio::time::Instant::now() + sweep, sweep);
        input_sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

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
                    Some(Cmd::LeaseLost) => self.suspend(),
                    Some(Cmd::Join { join, reply }) => {
                        let r = self.join(join).await;
                        let _ = reply.send(r);
                    }
                    Some(Cmd::Signal { peer, signal, reply }) => {
                        let r = self.signal(peer, signal).await;
                        let _ = reply.send(r);
                    }
                    Some(Cmd::Stats(reply)) => {
                        let _ = reply.send(self.stats());
                    }
                    Some(Cmd::Inject { events, reply }) => {
                        let r = self.inject(events);
                        let _ = reply.send(r);
                    }
                },
                Some(ev) = self.viewer_rx.recv() => self.on_viewer_event(ev).await,
                _ = resume_check.tick(), if self.suspended_since.is_some() => {
                    match self.try_resume().await {
                        Resume::Stay => {}
                        Resume::Resumed => {}
                        Resume::GivenAway => break Outcome::Fenced,
                        Resume::TooLong => break Outcome::LeaseLost,
                    }
                }
                _ = input_sweep.tick() => {
                    // A viewer whose connection never came up (it never
                    // answered, or its api died mid-join) is dropped, so it
                    // cannot hold the idle clock forever.
                    let stale: Vec<PeerId> = self
                        .viewers
                        .iter()
                        .filter(|(_, v)| !v.connected && v.joined_at.elapsed() >= CONNECT_DEADLINE)
                        .map(|(p, _)| p.clone())
                        .collect();
                    for p in stale {
                        self.remove_viewer(&p, "never connected").await;
                        self.to_peer(&p, &ToPeer::Closed { reason: "connection never established".into() }).await;
                    }
                    // A viewer holding keys that went silent (crashed tab,
                    // dead data channel) releases them.
                    if let Some(overlay) = self.input.expire(Instant::now(), INPUT_IDLE) {
                        if let Some(src) = &self.source {
                            src.set_overlay(overlay);
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if let Some(reason) = self.clock.expired(Instant::now()) {
                        break Outcome::End(reason, None);
                    }
                }
                exit = source.exited() => {
                    let detail = match exit { SourceExit::Failed(why) => why, SourceExit::Stopped => "source stopped".into() };
                    break Outcome::End(EndReason::SourceFailed, Some(detail));
                }
                m = recv_first_video(&mut first_media, std::mem::take(&mut encoded_already)), if first_media.is_some() => {
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

        let end_reason = match &outcome {
            Outcome::End(r, _) => *r,
            Outcome::Fenced | Outcome::LeaseLost => EndReason::WorkerLost,
        };
        self.close_viewers(end_reason).await;
        // The fan-out task ends once its viewers' tasks have too.
        self.fanout = None;
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
                warn!(session_id = %self.id(), epoch = self.epoch(), "suspended too long without NATS; session stopped");
                let detail =
                    Some("worker cut off from NATS for longer than its maximum suspension".into());
                if let Some(v) = self.record_end(EndReason::WorkerLost, detail, 5).await {
                    self.state = v;
                }
            }
        }
        if let Some(l) = live.take() {
            let ended = self.state.record.ended.as_ref().map(|e| e.reason);
            let reason = ended.map(EndReason::as_str).unwrap_or("fenced");
            // A stop (or shutdown) that won the race with the first frame
            // is `ended`, not a failed source.
            let code = match ended {
                Some(r) if r != EndReason::SourceFailed => ErrorCode::Ended,
                _ => ErrorCode::SourceFailed,
            };
            let _ = l.send(Err(WireError::new(
                code,
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
                Cmd::Join { reply, .. } => {
                    let _ = reply.send(Err(self.ended_error()));
                }
                Cmd::Stats(reply) => {
                    let _ = reply.send(self.stats());
                }
                Cmd::Signal { reply, .. } | Cmd::Inject { reply, .. } => {
                    let _ = reply.send(Err(self.ended_error()));
                }
                Cmd::LeaseLost => {}
            }
        }
    }

    /// The lease ran out: stop sending media (the source and the viewers'
    /// connections stay up) until the registry can be checked again.
    fn suspend(&mut self) {
        if self.suspended_since.is_none() {
            warn!(session_id = %self.id(), epoch = self.epoch(), "lease lost: streaming suspended");
            self.suspended_since = Some(Instant::now());
            self.paused.store(true, Ordering::Relaxed);
        }
    }

    /// Once the lease is back, resume if the registry still gives this
    /// session to this worker under the same epoch; otherwise it was given
    /// away and must not resume.
    async fn try_resume(&mut self) -> Resume {
        let Some(since) = self.suspended_since else {
            return Resume::Resumed;
        };
        let now = Instant::now();
        if now.duration_since(since) >= self.ctx.lease_lost_retry {
            return Resume::TooLong;
        }
        if !self.ctx.lease.lock().expect("lease lock").is_held(now) {
            return Resume::Stay;
        }
        match self.ctx.registry.get(self.id()).await {
            Ok(Some(v))
                if v.record.owner == self.ctx.me
                    && v.record.epoch == self.epoch()
                    && v.record.state != SessionState::Ended =>
            {
                self.state = v;
                self.suspended_since = None;
                self.paused.store(false, Ordering::Relaxed);
                if let Some(src) = &self.source {
                    src.request_keyframe();
                }
                info!(session_id = %self.id(), epoch = self.epoch(), suspended_for = ?now.duration_since(since), "lease back and the registry still gives us the session: resumed");
                Resume::Resumed
            }
            Ok(_) => {
                info!(session_id = %self.id(), epoch = self.epoch(), "the registry gave the session away while we were cut off: not resuming");
                Resume::GivenAway
            }
            Err(e) => {
                debug!(session_id = %self.id(), error = %e, "registry not readable yet; still suspended");
                Resume::Stay
            }
        }
    }

    fn stats(&self) -> SessionStats {
        let mut viewers: Vec<ViewerInfo> = self
            .viewers
            .iter()
            .map(|(peer, v)| ViewerInfo {
                peer: peer.clone(),
                role: v.role,
            })
            .collect();
        viewers.sort_by(|a, b| a.peer.cmp(&b.peer));
        let (keys_down, buttons_down) = self.input.held();
        SessionStats {
            id: self.id().clone(),
            worker: self.ctx.me.clone(),
            epoch: self.epoch(),
            frames_encoded: self
                .source
                .as_ref()
                .map(|s| s.frames_encoded())
                .unwrap_or(0),
            viewers,
            keys_down,
            buttons_down,
            input_events: self.input.accepted,
            input_refused: self.input.refused,
            rtp: self.source.as_ref().and_then(|s| s.rtp_stats()),
        }
    }

    fn ended_error(&self) -> WireError {
        let reason = self
            .state
            .record
            .ended
            .as_ref()
            .map(|e| e.reason.as_str())
            .unwrap_or("stopped");
        WireError::new(
            ErrorCode::Ended,
            format!("session {} has ended: {reason}", self.id()),
        )
    }

    async fn join(&mut self, join: JoinPeer) -> Result<Joined, WireError> {
        if self.viewers.contains_key(&join.peer) {
            return Err(WireError::new(
                ErrorCode::Conflict,
                format!("peer {} is already attached", join.peer),
            ));
        }
        if self.viewers.len() as u32 >= self.ctx.config.max_viewers {
            return Err(WireError::new(
                ErrorCode::NoCapacity,
                "this session has its maximum of viewers",
            ));
        }
        let Some(source) = self.source.as_ref() else {
            return Err(self.ended_error());
        };
        let gate = crate::rtc::SendGate {
            paused: self.paused.clone(),
            lease: self.ctx.lease_gate.clone(),
        };
        if self.fanout.is_none() {
            self.fanout = self.ctx.engine.fanout(source.tap(), gate.clone());
        }
        let (viewer, offer) = self
            .ctx
            .engine
            .viewer(
                join.peer.clone(),
                join.role,
                source.tap(),
                gate,
                self.fanout.as_ref(),
                self.viewer_tx.clone(),
            )
            .await
            .map_err(|e| {
                warn!(session_id = %self.id(), error = %e, "peer connection failed");
                WireError::new(ErrorCode::Internal, "could not create the peer connection")
            })?;
        self.viewers.insert(join.peer.clone(), viewer);
        self.clock.viewer_joined(Instant::now());
        let count = self.viewers.len() as u32;
        self.viewer_count.store(count, Ordering::Relaxed);
        info!(session_id = %self.id(), peer_id = %join.peer, role = ?join.role, viewers = count, "viewer joined");
        self.viewer_changed(SessionEventKind::ViewerJoined, &join.peer)
            .await;
        Ok(Joined {
            session: self.id().clone(),
            peer: join.peer,
            worker: self.ctx.me.clone(),
            epoch: self.epoch(),
            role: join.role,
            offer,
            ice_servers: self.ctx.engine.ice_servers().to_vec(),
            viewers: count,
        })
    }

    async fn signal(&mut self, peer: PeerId, signal: PeerSignal) -> Result<Ack, WireError> {
        let not_here = || {
            WireError::new(
                ErrorCode::NotFound,
                format!("peer {peer} is not attached to this session"),
            )
        };
        match signal {
            PeerSignal::Leave => {
                if !self.viewers.contains_key(&peer) {
                    return Err(not_here());
                }
                self.remove_viewer(&peer, "left").await;
            }
            PeerSignal::Answer { sdp } => {
                let v = self.viewers.get(&peer).ok_or_else(not_here)?;
                v.apply_answer(sdp)
                    .await
                    .map_err(|e| e.to_wire("answer rejected"))?;
            }
            PeerSignal::Candidate { candidate } => {
                let v = self.viewers.get(&peer).ok_or_else(not_here)?;
                v.add_candidate(candidate)
                    .await
                    .map_err(|e| e.to_wire("candidate rejected"))?;
            }
        }
        Ok(Ack {})
    }

    fn inject(&mut self, events: Vec<InputEvent>) -> Result<Ack, WireError> {
        for e in &events {
            bus_schema::input::validate_event(e)?;
        }
        self.clock.keepalive(Instant::now());
        self.apply_input(BACKEND_VIEWER, &events);
        Ok(Ack {})
    }

    fn apply_input(&mut self, viewer: &str, events: &[InputEvent]) {
        if let Some(overlay) = self.input.apply(Instant::now(), viewer, events) {
            if let Some(src) = &self.source {
                src.set_overlay(overlay);
            }
        }
    }

    async fn on_viewer_event(&mut self, ev: ViewerEvent) {
        match ev {
            ViewerEvent::Candidate(peer, candidate) => {
                self.to_peer(&peer, &ToPeer::Candidate { candidate }).await;
            }
            ViewerEvent::Input(peer, events) => {
                if self
                    .viewers
                    .get(&peer)
                    .is_some_and(|v| v.role == Role::Control)
                {
                    self.apply_input(peer.as_str(), &events);
                } else {
                    self.input.refused += 1;
                }
            }
            ViewerEvent::RateLimited(peer, n) => {
                self.input.refused += n;
                debug!(session_id = %self.id(), peer_id = %peer, dropped = n, "input over the rate limit dropped");
            }
            ViewerEvent::BadInput(peer, e) => {
                self.input.refused += 1;
                debug!(session_id = %self.id(), peer_id = %peer, code = %e.code, message = %e.message, "input refused");
            }
            ViewerEvent::State(peer, state) => {
                use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState as S;
                debug!(session_id = %self.id(), peer_id = %peer, ?state, "peer state");
                if state == S::Connected {
                    if let Some(v) = self.viewers.get_mut(&peer) {
                        v.connected = true;
                    }
                }
                if matches!(state, S::Failed | S::Closed) && self.viewers.contains_key(&peer) {
                    self.remove_viewer(&peer, "connection failed").await;
                    self.to_peer(
                        &peer,
                        &ToPeer::Closed {
                            reason: format!("{state}"),
                        },
                    )
                    .await;
                }
            }
        }
    }

    async fn remove_viewer(&mut self, peer: &PeerId, why: &str) {
        let Some(v) = self.viewers.remove(peer) else {
            return;
        };
        // Closing takes a moment; the session goes on meanwhile.
        self.ctx.tracker.spawn(v.close());
        self.clock.viewer_left(Instant::now());
        let count = self.viewers.len() as u32;
        self.viewer_count.store(count, Ordering::Relaxed);
        if let Some(overlay) = self.input.release(Instant::now(), peer.as_str()) {
            if let Some(src) = &self.source {
                src.set_overlay(overlay);
            }
        }
        info!(session_id = %self.id(), peer_id = %peer, viewers = count, why, "viewer left");
        self.viewer_changed(SessionEventKind::ViewerLeft, peer)
            .await;
    }

    async fn close_viewers(&mut self, reason: EndReason) {
        let peers: Vec<PeerId> = self.viewers.keys().cloned().collect();
        for p in &peers {
            self.to_peer(p, &ToPeer::Ended { reason }).await;
        }
        let closing: Vec<_> = self.viewers.drain().map(|(_, v)| v.close()).collect();
        futures::future::join_all(closing).await;
        self.viewer_count.store(0, Ordering::Relaxed);
    }

    async fn viewer_changed(&mut self, kind: SessionEventKind, peer: &PeerId) {
        let count = self.viewers.len() as u32;
        let peers: Vec<PeerId> = self.viewers.keys().cloned().collect();
        for p in &peers {
            self.to_peer(p, &ToPeer::Viewers { count }).await;
        }
        let ev = SessionEvent {
            id: self.id().clone(),
            kind,
            worker: self.ctx.me.clone(),
            epoch: self.epoch(),
            at: Timestamp::now(),
            reason: None,
            detail: None,
            peer: Some(peer.clone()),
            viewers: Some(count),
        };
        let subject = self.ctx.bus.subjects.event_session(self.id(), kind);
        let _ = self.ctx.bus.publish(&subject, &ev).await;
    }

    async fn to_peer(&self, peer: &PeerId, msg: &ToPeer) {
        let subject = self.ctx.bus.subjects.peer_out(peer);
        if let Err(e) = self.ctx.bus.publish(&subject, msg).await {
            debug!(peer_id = %peer, error = %e, "signal to peer not published");
        }
    }

    async fn mark_live(&mut self) -> Result<(), WireError> {
        let mut rec = self.state.record.clone();
        rec.state = SessionState::Live;
        rec.live_at = Some(Timestamp::now());
        rec.updated_at = Timestamp::now();
        match self.ctx.registry.update(&rec, self.state.revision).await {
            Ok(revision) => {
                self.state = Versioned {
                    record: rec,
                    revision,
                };
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
                Err(WireError::new(
                    ErrorCode::Unavailable,
                    "registry unavailable",
                ))
            }
        }
    }

    /// Writes the end into the registry if the entry is still ours (same
    /// owner and epoch). Returns the written entry, or None when fenced or
    /// when the registry stayed unreachable for `attempts` tries.
    async fn record_end(
        &mut self,
        reason: EndReason,
        detail: Option<String>,
        attempts: usize,
    ) -> Option<Versioned> {
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
                    let v = Versioned {
                        record: rec,
                        revision,
                    };
                    self.state = v.clone();
                    self.publish(SessionEventKind::Ended, Some(reason), detail)
                        .await;
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

    async fn publish(
        &self,
        kind: SessionEventKind,
        reason: Option<EndReason>,
        detail: Option<String>,
    ) {
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
async fn recv_first_video(
    rx: &mut Option<tokio::sync::broadcast::Receiver<Media>>,
    encoded_already: bool,
) -> Result<(), String> {
    use tokio::sync::broadcast::error::RecvError;
    if encoded_already {
        return Ok(());
    }
    let Some(rx) = rx.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match rx.recv().await {
            Ok(Media::Video(_) | Media::VideoPackets(_)) => return Ok(()),
            Ok(_) | Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return Err("source closed before its first frame".into()),
        }
    }
}
