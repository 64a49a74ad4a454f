//! One task per running session: it owns the session's registry entry (as
//! last written, with its revision), its TTL clocks and its source, and is
//! the only writer of that entry while it runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_schema::registry::{RegistryError, Versioned};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use bus_schema::{
    Ack, EndReason, Ended, ErrorCode, InputEvent, InputRoute, JoinPeer, Joined, PeerId, PeerSignal,
    Role, SessionEvent, SessionEventKind, SessionId, SessionInfo, SessionState, SessionStats,
    SourceEvent, SourceInput, Timestamp, ToPeer, ViewerInfo, WireError,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::core::session::{Effect, Event, Outcome, ResumeCheck, Timing};
use crate::core::SessionCore;
use crate::fanout::FanoutHandle;
use crate::input_state::{InputState, BACKEND_VIEWER};
use crate::rtc::{Viewer, ViewerEvent};
use crate::source::{Media, SourceExit, SourceFault, SourceHandle};
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

/// How often the input of silent viewers is released.
const INPUT_SWEEP: Duration = Duration::from_secs(5);

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
    /// The lifecycle: states, TTLs and deadlines (pure; this task is its driver).
    core: SessionCore,
    source: Option<SourceHandle>,
    viewers: HashMap<PeerId, Viewer>,
    /// The viewers' fan-out, started with the first viewer.
    fanout: Option<FanoutHandle>,
    viewer_count: Arc<AtomicU32>,
    paused: Arc<AtomicBool>,
    viewer_tx: mpsc::Sender<ViewerEvent>,
    viewer_rx: mpsc::Receiver<ViewerEvent>,
    input: InputState,
    /// Merged input events handed to the source or published for it.
    input_forwarded: u64,
    /// The last `source.<id>.input` message's `seq`.
    input_seq: u64,
}

/// The session task's clock: tokio's, so a paused runtime drives it too.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
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
        let timing = Timing {
            idle_ttl: spec.idle_ttl.get(),
            max_lifetime: spec.max_lifetime.get(),
            first_frame: FIRST_FRAME_DEADLINE,
            connect: CONNECT_DEADLINE,
            input_sweep: INPUT_SWEEP,
            resume_check: RESUME_CHECK,
            max_suspension: ctx.lease_lost_retry,
        };
        let (viewer_tx, viewer_rx) = mpsc::channel(VIEWER_EVENT_QUEUE);
        Self {
            ctx,
            state,
            core: SessionCore::new(now(), timing),
            source: Some(source),
            viewers: HashMap::new(),
            fanout: None,
            viewer_count,
            paused,
            viewer_tx,
            viewer_rx,
            input: InputState::default(),
            input_forwarded: 0,
            input_seq: 0,
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
        let mut pending_reply: Vec<oneshot::Sender<SessionInfo>> = Vec::new();
        let mut done: Vec<oneshot::Sender<()>> = Vec::new();

        let outcome = loop {
            let deadline = self
                .core
                .deadline()
                .map(tokio::time::Instant::from_std)
                .expect("a running session has a deadline");
            let source = self.source.as_mut().expect("source present while running");
            let effects = tokio::select! {
                cmd = rx.recv() => match cmd {
                    None => self.core.handle(now(), Event::Shutdown),
                    Some(Cmd::Info(r)) => { let _ = r.send(self.state.info()); Vec::new() }
                    Some(Cmd::Keepalive(r)) => {
                        let effects = self.core.handle(now(), Event::Keepalive);
                        let _ = r.send(self.state.info());
                        effects
                    }
                    Some(Cmd::Stop { detail, reply }) => {
                        pending_reply.push(reply);
                        self.core.handle(now(), Event::Stop { detail })
                    }
                    Some(Cmd::Fence(r)) => { done.push(r); self.core.handle(now(), Event::Fence) }
                    Some(Cmd::Shutdown(r)) => { done.push(r); self.core.handle(now(), Event::Shutdown) }
                    Some(Cmd::LeaseLost) => self.core.handle(now(), Event::LeaseLost),
                    Some(Cmd::Join { join, reply }) => {
                        let r = self.join(join).await;
                        let _ = reply.send(r);
                        Vec::new()
                    }
                    Some(Cmd::Signal { peer, signal, reply }) => {
                        let r = self.signal(peer, signal).await;
                        let _ = reply.send(r);
                        Vec::new()
                    }
                    Some(Cmd::Stats(reply)) => {
                        let _ = reply.send(self.stats());
                        Vec::new()
                    }
                    Some(Cmd::Inject { events, reply }) => {
                        let r = self.inject(events).await;
                        let _ = reply.send(r);
                        Vec::new()
                    }
                },
                Some(ev) = self.viewer_rx.recv() => { self.on_viewer_event(ev).await; Vec::new() }
                _ = tokio::time::sleep_until(deadline) => self.core.tick(now()),
                exit = source.exited() => {
                    let detail = match exit { SourceExit::Failed(fault) => fault.to_string(), SourceExit::Stopped => "source stopped".into() };
                    self.core.handle(now(), Event::SourceExited { detail })
                }
                m = recv_first_video(&mut first_media, std::mem::take(&mut encoded_already)), if first_media.is_some() => {
                    first_media = None;
                    match m {
                        Ok(()) => self.core.handle(now(), Event::FirstFrame),
                        Err(fault) => self.core.handle(now(), Event::SourceExited { detail: fault.to_string() }),
                    }
                }
            };
            if let Some(outcome) = self.carry_out(effects, &mut live).await {
                break outcome;
            }
        };

        self.close_viewers(outcome.reason()).await;
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

    /// Carries out the core's effects, and those their results lead to.
    /// Returns the outcome once the core has ended the session.
    async fn carry_out(
        &mut self,
        effects: Vec<Effect>,
        live: &mut Option<oneshot::Sender<Result<SessionInfo, WireError>>>,
    ) -> Option<Outcome> {
        let mut queue: VecDeque<Effect> = effects.into();
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::MarkLive => {
                    let ok = match self.mark_live().await {
                        Ok(()) => true,
                        Err(e) => {
                            if let Some(l) = live.take() {
                                let _ = l.send(Err(e));
                            }
                            false
                        }
                    };
                    queue.extend(self.core.handle(now(), Event::LiveRecorded { ok }));
                }
                Effect::AnswerLive => {
                    if let Some(l) = live.take() {
                        let _ = l.send(Ok(self.state.info()));
                    }
                }
                Effect::PauseMedia => {
                    warn!(session_id = %self.id(), epoch = self.epoch(), "lease lost: streaming suspended");
                    self.paused.store(true, Ordering::Relaxed);
                }
                Effect::ResumeMedia => {
                    self.paused.store(false, Ordering::Relaxed);
                    if let Some(src) = &self.source {
                        src.request_keyframe();
                    }
                    info!(session_id = %self.id(), epoch = self.epoch(), "lease back and the registry still gives us the session: resumed");
                }
                Effect::CheckResume => {
                    let check = self.check_resume().await;
                    queue.extend(self.core.handle(now(), Event::ResumeChecked(check)));
                }
                Effect::DropViewer(peer) => {
                    // Its connection never came up (it never answered, or
                    // its api died mid-join): it cannot hold the idle clock.
                    self.remove_viewer(&peer, "never connected").await;
                    self.to_peer(
                        &peer,
                        &ToPeer::Closed {
                            reason: "connection never established".into(),
                        },
                    )
                    .await;
                }
                Effect::ExpireInput => {
                    // A viewer holding keys that went silent (crashed tab,
                    // dead data channel) releases them.
                    let released = self.input.expire(now(), INPUT_IDLE);
                    self.forward_input(released).await;
                }
                Effect::End(outcome) => return Some(outcome),
            }
        }
        None
    }

    /// Tells the core what has no effects of its own: viewers coming,
    /// connecting and going, keepalives.
    fn note(&mut self, event: Event) {
        let effects = self.core.handle(now(), event);
        debug_assert!(effects.is_empty(), "unexpected effects {effects:?}");
    }

    /// Whether a suspended session may resume: the lease is back and the
    /// registry still gives it to this worker under the same epoch.
    async fn check_resume(&mut self) -> ResumeCheck {
        if !self.ctx.lease.lock().expect("lease lock").is_held(now()) {
            return ResumeCheck::LeaseStillLost;
        }
        match self.ctx.registry.get(self.id()).await {
            Ok(Some(v))
                if v.record.owner == self.ctx.me
                    && v.record.epoch == self.epoch()
                    && v.record.state != SessionState::Ended =>
            {
                self.state = v;
                ResumeCheck::StillOurs
            }
            Ok(_) => {
                info!(session_id = %self.id(), epoch = self.epoch(), "the registry gave the session away while we were cut off: not resuming");
                ResumeCheck::GivenAway
            }
            Err(e) => {
                debug!(session_id = %self.id(), error = %e, "registry not readable yet; still suspended");
                ResumeCheck::Unreadable
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
            input_route: self.source.as_ref().map(|s| s.input_route()),
            input_forwarded: self.input_forwarded,
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
        let fanout = self.fanout.get_or_insert_with(|| {
            let gate = crate::fanout::SendGate {
                paused: self.paused.clone(),
                lease: self.ctx.lease_gate.clone(),
            };
            self.ctx.engine.fanout(source.tap(), gate)
        });
        let (viewer, offer) = self
            .ctx
            .engine
            .viewer(
                join.peer.clone(),
                join.role,
                source.tap(),
                fanout,
                self.viewer_tx.clone(),
            )
            .await
            .map_err(|e| {
                warn!(session_id = %self.id(), error = %e, "peer connection failed");
                WireError::new(ErrorCode::Internal, "could not create the peer connection")
            })?;
        self.viewers.insert(join.peer.clone(), viewer);
        self.note(Event::ViewerJoined(join.peer.clone()));
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

    async fn inject(&mut self, events: Vec<InputEvent>) -> Result<Ack, WireError> {
        for e in &events {
            bus_schema::input::validate_event(e)?;
        }
        self.note(Event::Keepalive);
        self.apply_input(BACKEND_VIEWER, &events).await;
        Ok(Ack {})
    }

    async fn apply_input(&mut self, viewer: &str, events: &[InputEvent]) {
        let merged = self.input.apply(now(), viewer, events);
        self.forward_input(merged).await;
    }

    /// Hands merged input on where the source takes it: to its threads, or
    /// published for its producer (`source.<id>.input`).
    async fn forward_input(&mut self, events: Vec<SourceEvent>) {
        let Some(src) = &self.source else {
            return;
        };
        if events.is_empty() {
            return;
        }
        match src.input_route() {
            InputRoute::None => {}
            InputRoute::Source => self.input_forwarded += src.send_input(&events) as u64,
            InputRoute::Bus => {
                self.input_seq += 1;
                let n = events.len() as u64;
                let msg = SourceInput {
                    session: self.id().clone(),
                    epoch: self.epoch(),
                    seq: self.input_seq,
                    events,
                };
                let subject = self.ctx.bus.subjects.source_input(self.id());
                match self.ctx.bus.publish(&subject, &msg).await {
                    Ok(()) => self.input_forwarded += n,
                    Err(e) => {
                        debug!(session_id = %self.id(), error = %e, "merged input not published")
                    }
                }
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
                    self.apply_input(peer.as_str(), &events).await;
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
                    self.note(Event::ViewerConnected(peer.clone()));
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
        self.note(Event::ViewerLeft(peer.clone()));
        let count = self.viewers.len() as u32;
        self.viewer_count.store(count, Ordering::Relaxed);
        let released = self.input.release(now(), peer.as_str());
        self.forward_input(released).await;
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
) -> Result<(), SourceFault> {
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
            Err(RecvError::Closed) => return Err(SourceFault::Vanished),
        }
    }
}
