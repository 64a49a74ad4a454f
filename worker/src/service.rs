//! The worker's NATS micro service: one endpoint per command.
//!
//! Cluster-wide commands (`session.create`, `session.list`,
//! `session.<id>.<verb>`) reach one worker of the queue group; it answers
//! from the registry or forwards to the owner's direct subject with the
//! caller's reply subject, so the owner answers the caller itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::service::{Request, Service, ServiceExt};
use bus_schema::registry::{RegistryError, Versioned};
use bus_schema::{
    decode, encode_reply, Ack, AdoptSession, CreateSession, ErrorCode, Fence, GetSession,
    Keepalive, ListSessions, SessionId, SessionInfo, SessionList, SessionRecord, SessionState,
    SessionVerb, StopSession, Timestamp, WireError, WorkerId,
};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn, Instrument};

use crate::core::{listing, Placement, Refusal};
use crate::session::{Cmd, Session, SessionHandle};
use crate::{Ctx, WorkerError};

/// What a handler does with a request.
enum Answer<T> {
    Reply(Result<T, WireError>),
    /// Handed to another worker with the caller's reply subject.
    Forwarded,
}

impl<T> From<Result<T, WireError>> for Answer<T> {
    fn from(r: Result<T, WireError>) -> Self {
        Answer::Reply(r)
    }
}

fn registry_err(e: RegistryError) -> WireError {
    warn!(error = %e, "registry error");
    match e {
        RegistryError::Conflict => WireError::new(
            ErrorCode::Conflict,
            "the session changed concurrently; retry",
        ),
        _ => WireError::new(ErrorCode::Unavailable, "registry unavailable"),
    }
}

pub async fn start(ctx: Arc<Ctx>) -> Result<Service, WorkerError> {
    let service = ctx
        .bus
        .client
        .service_builder()
        .description("stream worker: hosts live WebRTC sessions")
        .queue_group(bus_schema::subjects::WORKER_QUEUE)
        .metadata([("worker_id".to_string(), ctx.me.to_string())].into())
        .stats_handler({
            let weak = Arc::downgrade(&ctx);
            move |_endpoint, _stats| process_stats(&weak)
        })
        .start(
            bus_schema::subjects::WORKER_SERVICE,
            env!("CARGO_PKG_VERSION"),
        )
        .await
        .map_err(WorkerError::Service)?;
    let s = &ctx.bus.subjects;
    let me = &ctx.me;

    let add = |name: &'static str, subject: String| {
        let service = &service;
        async move {
            service
                .endpoint_builder()
                .name(name)
                .add(subject)
                .await
                .map_err(WorkerError::Service)
        }
    };

    serve(
        &ctx,
        add("create", s.session_create().to_string()).await?,
        |c, r| async move { create(&c, &r, true).await },
    );
    serve(
        &ctx,
        add("list", s.session_list().to_string()).await?,
        |c, r| async move { Answer::Reply(list(&c, &r).await) },
    );
    serve(
        &ctx,
        add("get", s.session_verb_any(SessionVerb::Get)).await?,
        |c, r| async move { Answer::Reply(get(&c, &r).await) },
    );
    serve(
        &ctx,
        add("keepalive", s.session_verb_any(SessionVerb::Keepalive)).await?,
        |c, r| async move { command(&c, &r, SessionVerb::Keepalive, true).await },
    );
    serve(
        &ctx,
        add("stop", s.session_verb_any(SessionVerb::Stop)).await?,
        |c, r| async move { command(&c, &r, SessionVerb::Stop, true).await },
    );
    serve(
        &ctx,
        add("join", s.session_verb_any(SessionVerb::Join)).await?,
        |c, r| async move { join(&c, &r, true).await },
    );
    serve(
        &ctx,
        add("input", s.session_verb_any(SessionVerb::Input)).await?,
        |c, r| async move { inject(&c, &r, true).await },
    );
    serve(
        &ctx,
        add("stats", s.session_verb_any(SessionVerb::Stats)).await?,
        |c, r| async move { stats(&c, &r, true).await },
    );
    serve(
        &ctx,
        add("direct-stats", s.worker_session_verb_any(me, "stats")).await?,
        |c, r| async move { stats(&c, &r, false).await },
    );
    serve(
        &ctx,
        add("direct-join", s.worker_session_verb_any(me, "join")).await?,
        |c, r| async move { join(&c, &r, false).await },
    );
    serve(
        &ctx,
        add("direct-input", s.worker_session_verb_any(me, "input")).await?,
        |c, r| async move { inject(&c, &r, false).await },
    );
    serve(
        &ctx,
        add("peer-signal", s.worker_peer_any(me)).await?,
        |c, r| async move { Answer::Reply(peer_signal(&c, &r).await) },
    );
    serve(
        &ctx,
        add("direct-create", s.worker_create(me).to_string()).await?,
        |c, r| async move { create(&c, &r, false).await },
    );
    serve(
        &ctx,
        add(
            "direct-keepalive",
            s.worker_session_verb_any(me, "keepalive"),
        )
        .await?,
        |c, r| async move { command(&c, &r, SessionVerb::Keepalive, false).await },
    );
    serve(
        &ctx,
        add("direct-stop", s.worker_session_verb_any(me, "stop")).await?,
        |c, r| async move { command(&c, &r, SessionVerb::Stop, false).await },
    );
    serve(
        &ctx,
        add("adopt", s.worker_session_verb_any(me, "adopt")).await?,
        |c, r| async move { Answer::Reply(adopt(&c, &r).await) },
    );
    serve(
        &ctx,
        add("fence", s.worker_session_verb_any(me, "fence")).await?,
        |c, r| async move { Answer::Reply(fence(&c, &r).await) },
    );
    Ok(service)
}

/// What `nats micro stats stream-worker` shows in every endpoint's `data`:
/// the worker's live tokio tasks, sessions and viewers (the same figures on
/// every endpoint: they describe the process). For operators watching for
/// leaks, and for the load tests.
fn process_stats(ctx: &std::sync::Weak<Ctx>) -> serde_json::Value {
    let alive_tasks = tokio::runtime::Handle::try_current()
        .map(|h| h.metrics().num_alive_tasks())
        .ok();
    use std::sync::atomic::Ordering::Relaxed;
    let (sessions, viewers, udp) = match ctx.upgrade() {
        Some(ctx) => {
            let running = ctx.dir.lock().expect("directory lock").running();
            let viewers: u32 = running
                .iter()
                .map(|(_, _, h)| h.viewers.load(Relaxed))
                .sum();
            // The one UDP port's batched sender (UDP_PORT only).
            let udp = ctx.engine.udp_counters().map(|c| {
                serde_json::json!({
                    "packets": c.packets.load(Relaxed),
                    "sends": c.sends.load(Relaxed),
                    "dropped": c.dropped.load(Relaxed),
                    "failed": c.failed.load(Relaxed),
                    "direct": c.direct.load(Relaxed),
                    "threads": ctx.engine.udp_send_threads(),
                })
            });
            (running.len(), viewers, udp)
        }
        None => (0, 0, None),
    };
    serde_json::json!({
        "alive_tasks": alive_tasks,
        "sessions": sessions,
        "viewers": viewers,
        "udp": udp,
    })
}

/// Drives one endpoint: each request gets its own task so a slow create
/// never holds up a keepalive.
fn serve<T, F, Fut>(
    ctx: &Arc<Ctx>,
    mut endpoint: async_nats::service::endpoint::Endpoint,
    handler: F,
) where
    T: Serialize + Send + 'static,
    F: Fn(Arc<Ctx>, Arc<Request>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Answer<T>> + Send + 'static,
{
    let c = ctx.clone();
    ctx.tracker.spawn(async move {
        loop {
            let req = tokio::select! {
                r = endpoint.next() => match r { Some(r) => Arc::new(r), None => break },
                _ = c.cancel.cancelled() => break,
            };
            let h = handler.clone();
            let c2 = c.clone();
            let span =
                tracing::info_span!("request", subject = %req.message.subject, worker_id = %c.me);
            c.tracker.spawn(
                async move {
                    match h(c2, req.clone()).await {
                        Answer::Reply(r) => {
                            if let Err(e) = &r {
                                debug!(code = %e.code, message = %e.message, "error reply");
                            }
                            if let Err(e) = req.respond(Ok(encode_reply(&r))).await {
                                debug!(error = %e, "reply not sent");
                            }
                        }
                        Answer::Forwarded => {}
                    }
                }
                .instrument(span),
            );
        }
    });
}

fn session_id(ctx: &Ctx, req: &Request) -> Result<SessionId, WireError> {
    ctx.bus.subjects.session_id_in(req.message.subject.as_str())
}

async fn get(ctx: &Ctx, req: &Request) -> Result<SessionInfo, WireError> {
    let id = session_id(ctx, req)?;
    decode::<GetSession>(&req.message.payload)?;
    match ctx.registry.get(&id).await.map_err(registry_err)? {
        Some(v) => Ok(v.info()),
        None => Err(WireError::not_found(format!("session {id}"))),
    }
}

/// Room left in a reply for the envelope and `next` around a page's
/// sessions (under 200 bytes; the rest is margin).
const LIST_REPLY_RESERVE: usize = 1024;

async fn list(ctx: &Ctx, req: &Request) -> Result<SessionList, WireError> {
    let q: ListSessions = decode(&req.message.payload)?;
    q.validate()?;
    let all = ctx.registry.list().await.map_err(registry_err)?;
    // A reply larger than the server's payload limit would never reach
    // the caller, who would time out instead: a page stops short of it.
    let max = ctx.bus.client.server_info().max_payload;
    let budget = max.saturating_sub(LIST_REPLY_RESERVE);
    Ok(listing::page(
        all.into_iter().map(|v| v.info()).collect(),
        &q,
        budget,
    ))
}

/// Hands a request to another worker with the caller's reply subject; that
/// worker answers the caller directly.
async fn forward<T>(ctx: &Ctx, req: &Request, subject: String, payload: bytes::Bytes) -> Answer<T> {
    let Some(reply) = req.message.reply.clone() else {
        return Answer::Reply(Err(WireError::new(
            ErrorCode::InvalidRequest,
            "command without a reply subject",
        )));
    };
    match ctx
        .bus
        .client
        .publish_with_reply(subject, reply, payload)
        .await
    {
        Ok(()) => Answer::Forwarded,
        Err(_) => Answer::Reply(Err(WireError::new(
            ErrorCode::Unavailable,
            "could not reach the worker that owns or was chosen for the session",
        ))),
    }
}

async fn create(ctx: &Arc<Ctx>, req: &Request, placeable: bool) -> Answer<SessionInfo> {
    let cmd: CreateSession =
        match decode(&req.message.payload).and_then(|c: CreateSession| c.validate().map(|_| c)) {
            Ok(c) => c,
            Err(e) => return Answer::Reply(Err(e)),
        };
    let id = cmd.id.clone().unwrap_or_else(SessionId::generate);
    match ctx.registry.get(&id).await {
        Ok(Some(v)) if v.record.state != SessionState::Ended => return Answer::Reply(Ok(v.info())),
        Ok(_) => {}
        Err(e) => return Answer::Reply(Err(registry_err(e))),
    }
    if placeable {
        let placement = {
            let dir = ctx.dir.lock().expect("directory lock");
            let cluster = ctx.cluster.lock().expect("cluster lock");
            cluster.place(Instant::now(), dir.used(), dir.capacity(), dir.draining())
        };
        match placement {
            Placement::Local => {}
            Placement::Forward(w) => {
                debug!(session_id = %id, to = %w, "create forwarded");
                // Pin the id so the target creates exactly this session.
                let mut pinned = cmd.clone();
                pinned.id = Some(id.clone());
                let subject = ctx.bus.subjects.worker_create(&w).to_string();
                return forward(ctx, req, subject, bus_schema::encode(&pinned)).await;
            }
            Placement::NoCapacity => {
                return Answer::Reply(Err(WireError::new(
                    ErrorCode::NoCapacity,
                    "every live worker is at its session limit",
                )))
            }
        }
    }
    Answer::Reply(create_here(ctx, id, &cmd).await)
}

/// Creates the session on this worker: reserve a slot, claim the id in the
/// registry (compare-and-set), start the source, wait for the first frame.
async fn create_here(
    ctx: &Arc<Ctx>,
    id: SessionId,
    cmd: &CreateSession,
) -> Result<SessionInfo, WireError> {
    let reserved = ctx.dir.lock().expect("directory lock").reserve(&id);
    match reserved {
        Ok(()) => {}
        Err(Refusal::Full) => {
            return Err(WireError::new(
                ErrorCode::NoCapacity,
                "this worker is at its session limit",
            ))
        }
        Err(Refusal::Draining) => {
            return Err(WireError::new(
                ErrorCode::Unavailable,
                "this worker is shutting down",
            ))
        }
        Err(Refusal::Present) => return existing_after_race(ctx, &id).await,
    }
    let guard = Reservation { ctx, id: &id };
    let now = Timestamp::now();
    let mut record = SessionRecord {
        id: id.clone(),
        owner: ctx.me.clone(),
        epoch: 1,
        state: SessionState::Starting,
        spec: ctx.config.resolve(cmd),
        created_at: now,
        updated_at: now,
        live_at: None,
        ended: None,
        viewers: 0,
    };
    let revision = match ctx.registry.create(&record).await {
        Ok(rev) => rev,
        Err(RegistryError::Conflict) => match ctx.registry.get(&id).await.map_err(registry_err)? {
            Some(old) if old.record.state == SessionState::Ended => {
                // A new run of an ended id: replace the old record.
                record.epoch = old.record.epoch + 1;
                match ctx.registry.update(&record, old.revision).await {
                    Ok(rev) => rev,
                    Err(RegistryError::Conflict) => return existing_after_race(ctx, &id).await,
                    Err(e) => return Err(registry_err(e)),
                }
            }
            Some(v) => return Ok(v.info()),
            None => return existing_after_race(ctx, &id).await,
        },
        Err(e) => return Err(registry_err(e)),
    };
    let started = start_session(ctx, Versioned { record, revision }).await;
    drop(guard);
    started
}

/// Releases a reservation unless the session was started.
struct Reservation<'a> {
    ctx: &'a Ctx,
    id: &'a SessionId,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        // `start_session` fills the slot; an unfilled one is released.
        let mut dir = self.ctx.dir.lock().expect("directory lock");
        if dir.is_reserved(self.id) {
            dir.release(self.id);
        }
    }
}

/// Another create of the same id is in flight: wait for its record.
async fn existing_after_race(ctx: &Ctx, id: &SessionId) -> Result<SessionInfo, WireError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = ctx.registry.get(id).await.map_err(registry_err)? {
            if v.record.state != SessionState::Starting || Instant::now() >= deadline {
                return Ok(v.info());
            }
        }
        if Instant::now() >= deadline {
            return Err(WireError::new(
                ErrorCode::Conflict,
                "a concurrent create of this id did not complete",
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the source of a claimed session and waits for its first frame.
async fn start_session(ctx: &Arc<Ctx>, claimed: Versioned) -> Result<SessionInfo, WireError> {
    let id = claimed.record.id.clone();
    let epoch = claimed.record.epoch;
    {
        // Keep (or take) the slot for this session.
        let mut dir = ctx.dir.lock().expect("directory lock");
        if !dir.is_reserved(&id) {
            if let Err(r) = dir.reserve(&id) {
                drop(dir);
                return Err(match r {
                    Refusal::Full => {
                        WireError::new(ErrorCode::NoCapacity, "this worker is at its session limit")
                    }
                    Refusal::Draining => {
                        WireError::new(ErrorCode::Unavailable, "this worker is shutting down")
                    }
                    Refusal::Present => {
                        WireError::new(ErrorCode::Conflict, "session already running here")
                    }
                });
            }
        }
    }
    let source = match ctx.factory.start(&claimed.record.spec.source) {
        Ok(s) => s,
        Err(e) => {
            warn!(session_id = %id, error = %e, "source failed to start");
            ctx.dir.lock().expect("directory lock").release(&id);
            let mut rec = claimed.record.clone();
            rec.state = SessionState::Ended;
            rec.ended = Some(bus_schema::Ended {
                reason: bus_schema::EndReason::SourceFailed,
                at: Timestamp::now(),
                detail: Some(e.to_string()),
            });
            if ctx.registry.update(&rec, claimed.revision).await.is_ok() {
                let ev = bus_schema::SessionEvent {
                    id: id.clone(),
                    kind: bus_schema::SessionEventKind::Ended,
                    worker: ctx.me.clone(),
                    epoch,
                    at: Timestamp::now(),
                    reason: Some(bus_schema::EndReason::SourceFailed),
                    detail: Some(e.to_string()),
                    peer: None,
                    viewers: None,
                };
                let subject = ctx
                    .bus
                    .subjects
                    .event_session(&id, bus_schema::SessionEventKind::Ended);
                let _ = ctx.bus.publish(&subject, &ev).await;
            }
            return Err(WireError::new(
                ErrorCode::SourceFailed,
                format!("source failed to start: {e}"),
            ));
        }
    };
    let (tx, rx) = mpsc::channel(64);
    let (live_tx, live_rx) = oneshot::channel();
    let viewers = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    ctx.dir.lock().expect("directory lock").fill(
        &id,
        epoch,
        SessionHandle {
            tx,
            viewers: viewers.clone(),
            paused: paused.clone(),
        },
    );
    let session = Session::new(ctx.clone(), claimed, source, viewers, paused);
    let span = tracing::info_span!("session", session_id = %id, epoch, worker_id = %ctx.me);
    ctx.tracker.spawn(session.run(rx, live_tx).instrument(span));
    live_rx.await.unwrap_or_else(|_| {
        Err(WireError::new(
            ErrorCode::Internal,
            "session task ended unexpectedly",
        ))
    })
}

/// keepalive and stop, public (`placeable`: may forward) or direct.
async fn command(
    ctx: &Arc<Ctx>,
    req: &Request,
    verb: SessionVerb,
    public: bool,
) -> Answer<SessionInfo> {
    let id = match session_id(ctx, req) {
        Ok(id) => id,
        Err(e) => return Answer::Reply(Err(e)),
    };
    let detail = match verb {
        SessionVerb::Stop => match decode::<StopSession>(&req.message.payload) {
            Ok(s) => s.detail,
            Err(e) => return Answer::Reply(Err(e)),
        },
        _ => match decode::<Keepalive>(&req.message.payload) {
            Ok(_) => None,
            Err(e) => return Answer::Reply(Err(e)),
        },
    };
    let local = ctx.dir.lock().expect("directory lock").get(&id);
    if let Some((_, handle)) = local {
        let r = match verb {
            SessionVerb::Stop => handle.ask(|reply| Cmd::Stop { detail, reply }).await,
            _ => handle.ask(Cmd::Keepalive).await,
        };
        return Answer::Reply(r);
    }
    let v = match ctx.registry.get(&id).await {
        Ok(Some(v)) => v,
        Ok(None) => return Answer::Reply(Err(WireError::not_found(format!("session {id}")))),
        Err(e) => return Answer::Reply(Err(registry_err(e))),
    };
    if v.record.state == SessionState::Ended {
        return Answer::Reply(match verb {
            // Stopping an ended session is a no-op that says how it ended.
            SessionVerb::Stop => Ok(v.info()),
            _ => Err(WireError::new(
                ErrorCode::Ended,
                format!(
                    "session {id} has ended: {}",
                    v.record
                        .ended
                        .as_ref()
                        .map(|e| e.reason.as_str())
                        .unwrap_or("unknown")
                ),
            )),
        });
    }
    if public && v.record.owner != ctx.me {
        let s = &ctx.bus.subjects;
        let subject = match verb {
            SessionVerb::Stop => s.worker_stop(&v.record.owner, &id).to_string(),
            _ => s.worker_keepalive(&v.record.owner, &id).to_string(),
        };
        return forward(ctx, req, subject, req.message.payload.clone()).await;
    }
    Answer::Reply(Err(WireError::new(
        ErrorCode::Conflict,
        format!("session {id} is starting or moving; retry"),
    )))
}

async fn adopt(ctx: &Arc<Ctx>, req: &Request) -> Result<SessionInfo, WireError> {
    let id = session_id(ctx, req)?;
    let cmd: AdoptSession = decode(&req.message.payload)?;
    let v = ctx
        .registry
        .get(&id)
        .await
        .map_err(registry_err)?
        .ok_or_else(|| WireError::not_found(format!("session {id}")))?;
    if let Some((epoch, handle)) = ctx.dir.lock().expect("directory lock").get(&id) {
        if epoch == cmd.epoch {
            drop(handle);
            return Ok(v.info());
        }
    }
    if v.record.owner != ctx.me
        || v.record.epoch != cmd.epoch
        || v.record.state != SessionState::Starting
    {
        return Err(WireError::new(
            ErrorCode::Conflict,
            format!(
                "the registry does not give session {id} to this worker under epoch {}",
                cmd.epoch
            ),
        ));
    }
    start_session(ctx, v).await
}

async fn fence(ctx: &Ctx, req: &Request) -> Result<Ack, WireError> {
    let id = session_id(ctx, req)?;
    let cmd: Fence = decode(&req.message.payload)?;
    let local = ctx.dir.lock().expect("directory lock").get(&id);
    if let Some((epoch, handle)) = local {
        if epoch <= cmd.epoch {
            warn!(session_id = %id, epoch, "fenced by the janitor; stopping");
            handle.ask(Cmd::Fence).await?;
        }
    }
    Ok(Ack {})
}

/// Finds the owner of a live session: here (its handle), elsewhere (its
/// worker), or an error that says why not.
enum Owner {
    Here(SessionHandle),
    There(WorkerId),
}

async fn owner_of(ctx: &Ctx, id: &SessionId) -> Result<Owner, WireError> {
    if let Some((_, h)) = ctx.dir.lock().expect("directory lock").get(id) {
        return Ok(Owner::Here(h));
    }
    match ctx.registry.get(id).await.map_err(registry_err)? {
        None => Err(WireError::not_found(format!("session {id}"))),
        Some(v) if v.record.state == SessionState::Ended => Err(WireError::new(
            ErrorCode::Ended,
            format!(
                "session {id} has ended: {}",
                v.record
                    .ended
                    .as_ref()
                    .map(|e| e.reason.as_str())
                    .unwrap_or("unknown")
            ),
        )),
        Some(v) if v.record.owner != ctx.me => Ok(Owner::There(v.record.owner)),
        Some(_) => Err(WireError::new(
            ErrorCode::Conflict,
            format!("session {id} is starting or moving; retry"),
        )),
    }
}

/// A command only the session's owner can carry out: run it here, or
/// forward it to the owner (public subjects only), or say why not.
async fn to_owner<C, T, F, Fut>(
    ctx: &Arc<Ctx>,
    req: &Request,
    public: bool,
    direct: impl Fn(&bus_schema::Subjects, &WorkerId, &SessionId) -> String,
    check: impl FnOnce(&C) -> Result<(), WireError>,
    ask: F,
) -> Answer<T>
where
    C: serde::de::DeserializeOwned,
    F: FnOnce(SessionHandle, C) -> Fut,
    Fut: std::future::Future<Output = Result<T, WireError>>,
{
    let parsed = session_id(ctx, req).and_then(|id| {
        let cmd: C = decode(&req.message.payload)?;
        check(&cmd)?;
        Ok((id, cmd))
    });
    let (id, cmd) = match parsed {
        Ok(x) => x,
        Err(e) => return Answer::Reply(Err(e)),
    };
    match owner_of(ctx, &id).await {
        Ok(Owner::Here(h)) => Answer::Reply(ask(h, cmd).await),
        Ok(Owner::There(w)) if public => {
            let subject = direct(&ctx.bus.subjects, &w, &id);
            forward(ctx, req, subject, req.message.payload.clone()).await
        }
        Ok(Owner::There(_)) => Answer::Reply(Err(WireError::new(
            ErrorCode::NotFound,
            "session not on this worker",
        ))),
        Err(e) => Answer::Reply(Err(e)),
    }
}

async fn join(ctx: &Arc<Ctx>, req: &Request, public: bool) -> Answer<bus_schema::Joined> {
    to_owner(
        ctx,
        req,
        public,
        |s, w, id| s.worker_join(w, id).to_string(),
        |_: &bus_schema::JoinPeer| Ok(()),
        |h, join| async move { h.ask(|reply| Cmd::Join { join, reply }).await? },
    )
    .await
}

async fn inject(ctx: &Arc<Ctx>, req: &Request, public: bool) -> Answer<Ack> {
    to_owner(
        ctx,
        req,
        public,
        |s, w, id| s.worker_input(w, id).to_string(),
        |cmd: &bus_schema::InjectInput| cmd.validate(),
        |h, cmd| async move {
            h.ask(|reply| Cmd::Inject {
                events: cmd.events,
                reply,
            })
            .await?
        },
    )
    .await
}

async fn peer_signal(ctx: &Ctx, req: &Request) -> Result<Ack, WireError> {
    let (id, peer) = ctx.bus.subjects.peer_in(req.message.subject.as_str())?;
    let signal: bus_schema::PeerSignal = decode(&req.message.payload)?;
    // Not here: the registry says whether the session ended (`ended`, with
    // the reason) or lives elsewhere (`not_found`).
    let h = match owner_of(ctx, &id).await? {
        Owner::Here(h) => h,
        Owner::There(_) => {
            return Err(WireError::not_found(format!("session {id} on this worker")))
        }
    };
    h.ask(|reply| Cmd::Signal {
        peer,
        signal,
        reply,
    })
    .await?
}

async fn stats(ctx: &Arc<Ctx>, req: &Request, public: bool) -> Answer<bus_schema::SessionStats> {
    to_owner(
        ctx,
        req,
        public,
        |s, w, id| s.worker_stats(w, id).to_string(),
        |_: &bus_schema::GetStats| Ok(()),
        |h, _| async move { h.ask(Cmd::Stats).await },
    )
    .await
}
