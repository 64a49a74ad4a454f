//! One WebSocket per browser viewer: the api relays signalling between the
//! browser and the worker that owns the session. It holds only this
//! connection's state (peer id, owner worker); any api instance can serve
//! any viewer.
//!
//! Browser to api (JSON text): `{"type":"answer","sdp":…}`,
//! `{"type":"candidate","candidate":{…}}`, `{"type":"leave"}`.
//! Api to browser: `{"type":"joined",…}` (the worker's offer), then
//! `candidate`, `viewers`, `ended`, `closed` as the worker sends them, and
//! `{"type":"error","code":…,"message":…}` for refused messages.
//!
//! Ends and moves come from the session's events and, as a backstop for a
//! lost event, from the registry ([`crate::relay`]).

use std::time::{Duration, SystemTime};

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bus_schema::{ErrorCode, JoinPeer, PeerId, PeerSignal, SessionId, ToPeer, WireError};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tracing::{debug, info, Instrument};

use crate::{ApiError, AppState};

/// The largest signalling message a browser may send (an SDP answer with
/// many candidates fits easily).
pub const MAX_SIGNAL_BYTES: usize = 64 * 1024;
/// Signalling messages per second a browser may send before being refused
/// with `rate_limited`.
pub const MAX_SIGNALS_PER_SEC: u32 = 50;

#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

pub async fn upgrade(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<WsQuery>, QueryRejection>,
    ws: WebSocketUpgrade,
) -> Response {
    // A query that does not parse (a repeated `token`) is refused in the
    // same JSON shape as every other error, not axum's plain text.
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let id = match SessionId::parse(id) {
        Ok(id) => id,
        Err(e) => return ApiError(e).into_response(),
    };
    let Some(token) = q.token else {
        return ApiError(WireError::new(
            ErrorCode::Unauthorized,
            "a join token is required",
        ))
        .into_response();
    };
    let claims = match s.signer.verify(&token, &id, SystemTime::now()) {
        Ok(c) => c,
        Err(e) => return ApiError(e).into_response(),
    };
    let peer = PeerId::generate();
    let span = tracing::info_span!("viewer", session_id = %id, peer_id = %peer);
    ws.max_message_size(MAX_SIGNAL_BYTES)
        .on_upgrade(move |socket| serve(s, socket, id, peer, claims.role).instrument(span))
}

fn error_json(e: &WireError) -> String {
    serde_json::json!({"type": "error", "code": e.code, "message": e.message}).to_string()
}

async fn serve(
    s: AppState,
    socket: WebSocket,
    id: SessionId,
    peer: PeerId,
    role: bus_schema::Role,
) {
    // Counted for `/metrics` while this function runs, whichever way it ends.
    let _open = s.metrics.socket_opened();
    let (mut tx, mut rx) = socket.split();
    let subjects = &s.bus.subjects;
    // Subscribe before joining so no candidate from the worker is missed.
    // Session events reach the page even when the owner cannot send them
    // (it died: the janitor ends or moves the session).
    let subscribed = async {
        let inbox = s
            .bus
            .client
            .subscribe(subjects.peer_out(&peer).to_string())
            .await?;
        let events = s
            .bus
            .client
            .subscribe(subjects.event_session_all(&id))
            .await?;
        Ok::<_, async_nats::SubscribeError>((inbox, events))
    };
    let (mut inbox, mut events) = match subscribed.await {
        Ok(subs) => subs,
        Err(_) => {
            let _ = tx
                .send(Message::Text(
                    error_json(&WireError::new(ErrorCode::Unavailable, "bus unavailable")).into(),
                ))
                .await;
            return;
        }
    };
    // The registry backstop: an end or move whose event was lost still
    // reaches the page (watched before joining, so no change is missed).
    let mut registry = s.relay.watch(id.clone()).await;
    let joined = s
        .bus
        .request(
            &subjects.session_join(&id),
            &JoinPeer {
                peer: peer.clone(),
                role,
            },
        )
        .await;
    let joined = match joined {
        Ok(j) => j,
        Err(e) => {
            info!(code = %e.code, "join refused");
            let _ = tx.send(Message::Text(error_json(&e).into())).await;
            let _ = tx.send(Message::Close(None)).await;
            return;
        }
    };
    let worker = joined.worker.clone();
    let mut msg = serde_json::to_value(&joined).expect("serializes");
    msg["type"] = "joined".into();
    if tx
        .send(Message::Text(msg.to_string().into()))
        .await
        .is_err()
    {
        leave(&s, &worker, &id, &peer).await;
        return;
    }
    info!(worker_id = %worker, ?role, "viewer attached");

    let mut window_start = tokio::time::Instant::now();
    let mut in_window = 0u32;
    loop {
        tokio::select! {
            m = rx.next() => {
                let text = match m {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_))) => {
                        let e = WireError::new(ErrorCode::InvalidRequest, "signalling messages are JSON text");
                        let _ = tx.send(Message::Text(error_json(&e).into())).await;
                        continue;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                };
                if window_start.elapsed() >= Duration::from_secs(1) {
                    window_start = tokio::time::Instant::now();
                    in_window = 0;
                }
                in_window += 1;
                if in_window > MAX_SIGNALS_PER_SEC {
                    let e = WireError::new(
                        ErrorCode::RateLimited,
                        format!("more than {MAX_SIGNALS_PER_SEC} signalling messages a second; slow down"),
                    );
                    let _ = tx.send(Message::Text(error_json(&e).into())).await;
                    continue;
                }
                let signal: PeerSignal = match bus_schema::decode(text.as_bytes()) {
                    Ok(sig) => sig,
                    Err(e) => {
                        let _ = tx.send(Message::Text(error_json(&e).into())).await;
                        continue;
                    }
                };
                let is_leave = signal == PeerSignal::Leave;
                let r = s.bus.request(&subjects.worker_peer(&worker, &id, &peer), &signal).await;
                if let Err(e) = r {
                    debug!(code = %e.code, "signal refused");
                    let _ = tx.send(Message::Text(error_json(&e).into())).await;
                }
                if is_leave {
                    let _ = tx.send(Message::Close(None)).await;
                    return;
                }
            }
            m = events.next() => {
                let Some(m) = m else { break };
                let Ok(ev) = bus_schema::decode_record::<bus_schema::SessionEvent>(&m.payload) else { continue };
                let out = match ev.kind {
                    bus_schema::SessionEventKind::Ended => ToPeer::Ended {
                        reason: ev.reason.unwrap_or(bus_schema::EndReason::Stopped),
                    },
                    // The session runs elsewhere now: the page reconnects and
                    // joins the new owner.
                    bus_schema::SessionEventKind::Moved if ev.worker != worker => ToPeer::Closed {
                        reason: format!("session moved to worker {}", ev.worker),
                    },
                    _ => continue,
                };
                let text = serde_json::to_string(&out).expect("serializes");
                let _ = tx.send(Message::Text(text.into())).await;
                let _ = tx.send(Message::Close(None)).await;
                return;
            }
            Some(seen) = async {
                match registry.as_mut() {
                    Some(r) => r.changed().await,
                    None => None,
                }
            } => {
                let Some(out) = crate::relay::verdict(&worker, &seen) else { continue };
                info!(?seen, "the registry says the session ended or moved");
                let text = serde_json::to_string(&out).expect("serializes");
                let _ = tx.send(Message::Text(text.into())).await;
                let _ = tx.send(Message::Close(None)).await;
                return;
            }
            m = inbox.next() => {
                let Some(m) = m else { break };
                let Ok(out) = bus_schema::decode_record::<ToPeer>(&m.payload) else { continue };
                let text = String::from_utf8_lossy(&m.payload).to_string();
                if tx.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
                if matches!(out, ToPeer::Ended { .. } | ToPeer::Closed { .. }) {
                    let _ = tx.send(Message::Close(None)).await;
                    return;
                }
            }
        }
    }
    leave(&s, &worker, &id, &peer).await;
}

/// The browser went away: release the peer (and everything it held).
async fn leave(s: &AppState, worker: &bus_schema::WorkerId, id: &SessionId, peer: &PeerId) {
    let subject = s.bus.subjects.worker_peer(worker, id, peer);
    if let Err(e) = s.bus.request(&subject, &PeerSignal::Leave).await {
        debug!(code = %e.code, "leave not delivered; the worker reaps the peer when ICE fails");
    }
    info!("viewer detached");
}
