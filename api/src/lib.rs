//! # api: REST and viewer signalling over HTTP, commands over NATS
//!
//! The api keeps no session state: every request becomes a NATS command
//! (through [`bus_schema::Bus`]) and every answer comes from the workers or
//! the registry. Restart it and nothing is lost.

pub mod error;
pub mod metrics;
pub mod relay;
pub mod token;
pub mod ws;

use std::future::Future;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use bus_schema::{
    decode, Bus, CreateSession, ErrorCode, GetSession, Keepalive, ListCursor, ListSessions,
    SessionId, StopSession, Subjects, WireError,
};
use serde::Deserialize;

pub use error::ApiError;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "api",
    about = "REST and WebSocket front of the streaming system"
)]
pub struct Config {
    /// NATS server URL.
    #[arg(
        long,
        env = "NATS_URL",
        hide_env_values = true,
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// Prefix of every subject.
    #[arg(long, env = "SUBJECT_PREFIX", default_value = bus_schema::subjects::DEFAULT_PREFIX)]
    pub subject_prefix: String,
    /// Address to listen on.
    #[arg(long, env = "API_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// When set, every REST call under /api/sessions (not the viewer
    /// WebSocket, which takes a join token) needs `Authorization: Bearer <key>`.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Secret that signs join tokens (HMAC-SHA256). Every api instance and
    /// any backend minting tokens share it. Random when absent (tokens then
    /// only work with this process).
    #[arg(long, env = "JOIN_TOKEN_SECRET", hide_env_values = true)]
    pub join_token_secret: Option<String>,
    /// How long to wait for a worker's answer.
    #[arg(long, env = "API_REQUEST_TIMEOUT", default_value = "10s")]
    pub request_timeout: humantime::Duration,
}

impl Config {
    pub fn for_tests(nats_url: &str) -> Self {
        use clap::Parser;
        let mut c = Config::parse_from(["api"]);
        c.nats_url = nats_url.to_string();
        c.listen = "127.0.0.1:0".into();
        c
    }
}

#[derive(Clone)]
pub struct AppState {
    pub bus: Bus,
    pub api_key: Option<String>,
    pub signer: token::Signer,
    pub metrics: metrics::Metrics,
    /// The registry backstop for the viewer relay (see [`relay`]).
    pub relay: relay::Relay,
}

/// The viewer page: plain HTML and JavaScript, no build step.
const VIEWER_HTML: &str = include_str!("../static/viewer.html");

/// The router, for `axum::serve` and for in-process tests.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics_text))
        .route("/api/sessions", post(create).get(list))
        .route("/api/sessions/{id}", get(get_one).delete(stop))
        .route("/api/sessions/{id}/keepalive", post(keepalive))
        .route("/api/sessions/{id}/tokens", post(mint_token))
        .route("/api/sessions/{id}/ws", get(ws::upgrade))
        .route("/view/{id}", get(viewer_page))
        .with_state(state)
}

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &state.api_key else {
        return Ok(());
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), key.as_bytes()) => Ok(()),
        Some(_) => Err(WireError::new(ErrorCode::Unauthorized, "wrong API key").into()),
        None => Err(WireError::new(
            ErrorCode::Unauthorized,
            "missing Authorization: Bearer <api key>",
        )
        .into()),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_id(id: &str) -> Result<SessionId, ApiError> {
    Ok(SessionId::parse(id)?)
}

async fn create(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&s, &headers)?;
    let cmd: CreateSession = decode(&body)?;
    cmd.validate()?;
    let info = s
        .bus
        .request(&s.bus.subjects.session_create(), &cmd)
        .await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// `GET /api/sessions?include_ended=&limit=&after=`: `session.list`'s
/// fields as query parameters.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    include_ended: bool,
    limit: Option<u32>,
    after: Option<ListCursor>,
}

async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&s, &headers)?;
    let Query(q) = q?;
    let cmd = ListSessions {
        include_ended: q.include_ended,
        limit: q.limit,
        after: q.after,
    };
    cmd.validate()?;
    Ok(Json(
        s.bus.request(&s.bus.subjects.session_list(), &cmd).await?,
    ))
}

/// An authorized command for one session, answered with the owner's reply.
async fn session_command<M: bus_schema::Command>(
    s: &AppState,
    headers: &HeaderMap,
    id: &str,
    subject: impl Fn(&Subjects, &SessionId) -> bus_schema::Subject<M>,
    cmd: M,
) -> Result<Json<M::Reply>, ApiError> {
    authorize(s, headers)?;
    let id = parse_id(id)?;
    Ok(Json(
        s.bus.request(&subject(&s.bus.subjects, &id), &cmd).await?,
    ))
}

async fn get_one(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    session_command(&s, &headers, &id, Subjects::session_get, GetSession {}).await
}

async fn stop(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let cmd = StopSession { detail: None };
    session_command(&s, &headers, &id, Subjects::session_stop, cmd).await
}

async fn keepalive(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    session_command(&s, &headers, &id, Subjects::session_keepalive, Keepalive {}).await
}

/// Prometheus text: tokio tasks, open viewer WebSockets, file descriptors,
/// resident memory. Needs the API key when one is configured.
async fn metrics_text(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&s, &headers)?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    ))
}

async fn viewer_page() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        VIEWER_HTML,
    )
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    #[serde(default)]
    role: bus_schema::Role,
    #[serde(default)]
    ttl: Option<bus_schema::HumanDuration>,
}

/// Mints a join token for a live session; returns it with the page URL.
async fn mint_token(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&s, &headers)?;
    let id = parse_id(&id)?;
    let req: TokenRequest = decode(&body)?;
    // Only sessions that exist get tokens.
    let info = s
        .bus
        .request(&s.bus.subjects.session_get(&id), &GetSession {})
        .await?;
    if info.record.state == bus_schema::SessionState::Ended {
        return Err(WireError::new(ErrorCode::Ended, format!("session {id} has ended")).into());
    }
    let ttl = req
        .ttl
        .map(|d| d.get())
        .unwrap_or(Duration::from_secs(3600));
    let token = s
        .signer
        .mint(&id, req.role, ttl, std::time::SystemTime::now());
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "token": token,
            "role": req.role,
            "url": format!("/view/{id}?token={token}"),
            "ws": format!("/api/sessions/{id}/ws?token={token}"),
        })),
    ))
}

/// Serves the api on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    client: async_nats::Client,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), std::io::Error> {
    let subjects = Subjects::new(&config.subject_prefix)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let (relay, _relay_tasks) = relay::Relay::spawn(client.clone(), subjects.clone());
    let bus = Bus::new(client, subjects).with_timeout(*config.request_timeout);
    let secret = match &config.join_token_secret {
        Some(s) if !s.is_empty() => s.clone().into_bytes(),
        _ => {
            tracing::warn!("JOIN_TOKEN_SECRET not set: tokens are signed with a random key and only this process accepts them");
            uuid::Uuid::new_v4().as_bytes().to_vec()
        }
    };
    let state = AppState {
        bus,
        api_key: config.api_key.clone(),
        signer: token::Signer::new(secret),
        metrics: metrics::Metrics::default(),
        relay,
    };
    tracing::info!(addr = %listener.local_addr()?, "api listening");
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Connects to NATS (credentials in the URL are honoured, never logged).
pub async fn connect(url: &str) -> Result<async_nats::Client, bus_schema::connect::ConnectError> {
    bus_schema::connect::connect(url, "api").await
}
