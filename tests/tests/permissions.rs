//! The whole system under `deploy/nats-server.conf`: every service connects
//! as its own NATS user, everything still works, and each user is held to
//! its permissions.
//!
//! The server runs a copy of the deployment file with only `listen` and
//! `store_dir` rewritten; the passwords reach it through the environment,
//! as in production.
//!
//! The services are started here with their credentials given through
//! `ConnectOptions::with_user_and_password`, not through NATS_URL: async-nats
//! 0.51 drops the `user:pass@` part of a URL (nats-io/nats.rs#1623), and the
//! services' shared connect (`bus_schema::connect`) takes them out of the
//! URL and hands them to async-nats; the last test runs the services the
//! way the binaries connect, with credentials only in NATS_URL.
//!
//! A permissions violation is invisible to the publisher's call (the server
//! drops the message and sends `-ERR 'Permissions Violation ...'`, which
//! async-nats reports as an event). So the tests prove both sides: the
//! publisher's connection gets that error naming the subject, and a
//! privileged subscriber that would have received the message receives a
//! later, allowed message from the same publisher first and never the
//! denied one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{ConnectErrorKind, ConnectOptions, Event};
use futures::{FutureExt, SinkExt, StreamExt};
use serde_json::{json, Value};
use system_tests::*;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// (user, environment variable the config reads, password). The passwords
/// start with a letter: the config parser would read digits as a number.
const USERS: [(&str, &str, &str); 4] = [
    ("api", "NATS_API_PASSWORD", "pwApi4c1e9b7d2a8f"),
    ("worker", "NATS_WORKER_PASSWORD", "pwWorker7e3f0a5c9d1b"),
    ("janitor", "NATS_JANITOR_PASSWORD", "pwJanitor2b8d6e4f0a3c"),
    ("backend", "NATS_BACKEND_PASSWORD", "pwBackend9a0c3e7b5d1f"),
];

const SMALL: &str = r#"{"kind":"synthetic","width":160,"height":120,"fps":10,"bitrate_kbps":100}"#;

fn password(user: &str) -> &'static str {
    USERS
        .iter()
        .find(|(u, _, _)| *u == user)
        .map(|(_, _, p)| *p)
        .unwrap_or_else(|| panic!("no user {user}"))
}

fn deploy_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("deploy/nats-server.conf")
}

/// `nats-server -c <copy of deploy/nats-server.conf>` on a free port with a
/// temporary store; killed on drop.
struct AuthNats {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl AuthNats {
    async fn start() -> Self {
        let original = std::fs::read_to_string(deploy_config()).expect("deploy/nats-server.conf");
        let listen = "listen: 0.0.0.0:4222";
        let store = "store_dir: \"/var/lib/nats\"";
        assert_eq!(original.matches(listen).count(), 1, "one `{listen}` line");
        assert_eq!(original.matches(store).count(), 1, "one `{store}` line");
        assert!(
            !original.contains("password: \""),
            "passwords come from the environment, not the file"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let conf_path = dir.path().join("nats-server.conf");
        let store_dir = dir.path().join("jetstream");
        // A port found free may be taken by the time the server binds it
        // (tests run in parallel): if the server exits, try another.
        for attempt in 0..5 {
            let port = free_port();
            let conf = original
                .replace(listen, &format!("listen: 127.0.0.1:{port}"))
                .replace(
                    store,
                    &format!("store_dir: {:?}", store_dir.display().to_string()),
                );
            std::fs::write(&conf_path, conf).expect("write config");
            let mut cmd = Command::new(nats_server_bin());
            cmd.arg("-c").arg(&conf_path);
            for (_, var, pw) in USERS {
                cmd.env(var, pw);
            }
            let mut child = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server starts (run scripts/setup.sh to install it)");
            let url = format!("nats://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    tracing::warn!(attempt, port, %status, "nats-server exited at start; trying another port");
                    break;
                }
                let probe = ConnectOptions::with_user_and_password(
                    "backend".into(),
                    password("backend").into(),
                )
                .connection_timeout(Duration::from_secs(1))
                .connect(&url)
                .await;
                if probe.is_ok() {
                    return Self {
                        port,
                        child,
                        _dir: dir,
                    };
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("nats-server with deploy/nats-server.conf did not come up on {url}");
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        panic!("nats-server would not start with deploy/nats-server.conf");
    }

    /// The URL without credentials.
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The URL a deployment gives a service in NATS_URL.
    fn url_as(&self, user: &str) -> String {
        format!("nats://{user}:{}@127.0.0.1:{}", password(user), self.port)
    }
}

impl Drop for AuthNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connection options of `user`, reporting the server's `-ERR`s (for
/// instance permission violations) on the returned channel.
fn options_as(user: &str) -> (ConnectOptions, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let opts = ConnectOptions::with_user_and_password(user.into(), password(user).into())
        .name(user)
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        });
    (opts, rx)
}

/// A client connection as `user`, with the errors the server sends it.
struct Conn {
    client: async_nats::Client,
    errors: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Conn {
    async fn open(nats: &AuthNats, user: &str) -> Self {
        let (opts, errors) = options_as(user);
        let client = opts
            .connection_timeout(Duration::from_secs(2))
            .connect(nats.url())
            .await
            .unwrap_or_else(|e| panic!("{user} connects: {e}"));
        Self {
            client,
            errors,
            seen: Vec::new(),
        }
    }

    /// Waits for a server error containing every one of `needles`.
    async fn expect_error(&mut self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(e) = self
                .seen
                .iter()
                .find(|e| needles.iter().all(|n| e.contains(n)))
            {
                return e.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.errors.recv()).await {
                Ok(Some(e)) => self.seen.push(e),
                _ => panic!(
                    "no server error containing {needles:?} within 5 s; errors so far: {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Waits for the permissions violation of a publish to `subject`.
    async fn expect_publish_denied(&mut self, subject: &str) {
        self.expect_error(&["Permissions Violation for Publish", subject])
            .await;
    }
}

// ---- the services, connected as their users ----

fn start_worker(nats: &AuthNats, id: &str) -> Service {
    let mut cfg = worker::Config::for_tests(&nats.url_as("worker"));
    cfg.worker_id = Some(id.into());
    start_worker_with(cfg, nats.url())
}

/// `upstream`: where the worker's connection goes (a proxy, or the server).
fn start_worker_with(cfg: worker::Config, upstream: String) -> Service {
    // As `worker::connect`: retry the first connection, reconnect forever.
    let (opts, _errors) = options_as("worker");
    Service::spawn(move |shutdown| async move {
        let client = opts
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(None)
            .connect(upstream)
            .await
            .expect("worker connects");
        let factory = Arc::new(worker::source::SyntheticFactory);
        if let Err(e) = worker::run(cfg, client, factory, shutdown).await {
            panic!("worker failed: {e}");
        }
    })
}

fn start_janitor(nats: &AuthNats) -> Service {
    let cfg = janitor::Config::for_tests(&nats.url_as("janitor"), "streams");
    let (opts, _errors) = options_as("janitor");
    let url = nats.url();
    Service::spawn(move |shutdown| async move {
        let client = opts.connect(url).await.expect("janitor connects");
        if let Err(e) = janitor::run(cfg, client, shutdown).await {
            panic!("janitor failed: {e}");
        }
    })
}

async fn start_api(nats: &AuthNats) -> (Service, String) {
    let cfg = api::Config::for_tests(&nats.url_as("api"));
    let (opts, _errors) = options_as("api");
    let url = nats.url();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let svc = Service::spawn(move |shutdown| async move {
        let client = opts
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(None)
            .connect(url)
            .await
            .expect("api connects");
        api::run(cfg, client, listener, shutdown)
            .await
            .expect("api runs");
    });
    (svc, base)
}

// ---- helpers ----

fn ok(v: &Value) -> &Value {
    assert_eq!(v["ok"], json!(true), "expected success, got {v}");
    &v["result"]
}

async fn next_msg(sub: &mut async_nats::Subscriber, what: &str) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap_or_else(|_| panic!("no {what} within 10 s"))
        .expect("subscription open")
}

/// Everything already delivered to `sub`, without waiting.
fn drain(sub: &mut async_nats::Subscriber) -> Vec<async_nats::Message> {
    let mut out = Vec::new();
    while let Some(Some(m)) = sub.next().now_or_never() {
        out.push(m);
    }
    out
}

/// A request that must get no answer within 1 s; returns the error.
async fn unanswered(client: &async_nats::Client, subject: &str, body: &str) -> String {
    let req = async_nats::Request::new()
        .payload(body.to_string().into())
        .timeout(Some(Duration::from_secs(1)));
    match client.send_request(subject.to_string(), req).await {
        Ok(m) => panic!(
            "{subject} was answered: {}",
            String::from_utf8_lossy(&m.payload)
        ),
        Err(e) => e.to_string(),
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON text message, or `None` once the socket closes.
async fn ws_next(ws: &mut Ws) -> Option<Value> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a WebSocket message within 10 s");
        match m {
            Some(Ok(WsMessage::Text(t))) => {
                return Some(serde_json::from_str(&t).expect("JSON text"))
            }
            Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

// ---- the tests ----

#[tokio::test]
async fn only_the_right_password_connects() {
    init_tracing();
    let nats = AuthNats::start().await;
    let attempt = |user: &str, pass: &str| {
        ConnectOptions::with_user_and_password(user.into(), pass.into())
            .connection_timeout(Duration::from_secs(2))
            .connect(nats.url())
    };
    let refused = |r: Result<async_nats::Client, async_nats::ConnectError>, what: &str| {
        let e = r.err().unwrap_or_else(|| panic!("{what} connected"));
        assert!(
            matches!(
                e.kind(),
                ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication
            ),
            "{what}: expected an authorization error, got {e}"
        );
    };
    refused(
        attempt("backend", "pwNotTheBackendPassword").await,
        "a wrong password",
    );
    refused(
        attempt("backend", password("worker")).await,
        "another user's password",
    );
    refused(attempt("mallory", "pwAnything").await, "an unknown user");
    refused(
        ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(nats.url())
            .await,
        "no credentials",
    );
    for (user, _, pw) in USERS {
        let c = attempt(user, pw)
            .await
            .unwrap_or_else(|e| panic!("{user} with its password: {e}"));
        c.flush().await.expect("flush");
    }
}

#[tokio::test]
async fn the_system_works_under_the_config_and_each_user_keeps_to_its_subjects() {
    init_tracing();
    let nats = AuthNats::start().await;
    let _janitor = start_janitor(&nats);
    let _wa = start_worker(&nats, "w-perm-a");
    let _wb = start_worker(&nats, "w-perm-b");
    let (_api, base) = start_api(&nats).await;

    // A privileged observer: the worker user's own rights to listen.
    let observer = Conn::open(&nats, "worker").await;
    let mut heartbeats = observer
        .client
        .subscribe("streams.v1.worker.*.heartbeat")
        .await
        .expect("worker user subscribes to heartbeats");
    observer.client.flush().await.unwrap();
    heartbeat_from(&mut heartbeats, "w-perm-a").await;
    heartbeat_from(&mut heartbeats, "w-perm-b").await;

    let mut backend = Conn::open(&nats, "backend").await;
    let b = backend.client.clone();

    // (a) The backend drives a session over NATS.
    let mut events = b
        .subscribe("streams.v1.event.session.perm-1.*")
        .await
        .unwrap();
    b.flush().await.unwrap();
    let create = format!(r#"{{"id":"perm-1","source":{SMALL}}}"#);
    let info = raw_request(&b, "streams.v1.session.create", &create).await;
    let info = ok(&info).clone();
    assert_eq!(info["id"], "perm-1");
    assert_eq!(info["state"], "live");
    let owner = info["owner"].as_str().expect("owner").to_string();
    assert!(owner == "w-perm-a" || owner == "w-perm-b", "{owner}");
    let started: Value =
        serde_json::from_slice(&next_msg(&mut events, "started event").await.payload).unwrap();
    assert_eq!(started["kind"], "started", "{started}");

    let got = raw_request(&b, "streams.v1.session.perm-1.get", "").await;
    assert_eq!(ok(&got)["state"], "live");
    let list = raw_request(&b, "streams.v1.session.list", "").await;
    assert!(
        ok(&list)["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == "perm-1"),
        "{list}"
    );
    let stats = raw_request(&b, "streams.v1.session.perm-1.stats", "").await;
    ok(&stats);
    let input = raw_request(
        &b,
        "streams.v1.session.perm-1.input",
        r#"{"events":[{"type":"key","code":"KeyA","down":true}]}"#,
    )
    .await;
    ok(&input);

    // Keepalives land on either worker; one landing on the other worker is
    // forwarded to the owner with the backend's reply subject, and the
    // owner's answer must still get through. Keep asking until the observer
    // has seen a forwarded copy.
    let mut forwarded = observer
        .client
        .subscribe(format!(
            "streams.v1.worker.{owner}.session.perm-1.keepalive"
        ))
        .await
        .unwrap();
    observer.client.flush().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut keepalives = 0;
    loop {
        let k = raw_request(&b, "streams.v1.session.perm-1.keepalive", "").await;
        assert_eq!(ok(&k)["id"], "perm-1");
        keepalives += 1;
        if !drain(&mut forwarded).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no keepalive forwarded to the owner after {keepalives} tries"
        );
    }
    drop(forwarded);

    // The backend reads the registry: open (stream info), get (direct
    // get), keys (an ordered consumer).
    let rec = registry_get(&b, "perm-1")
        .await
        .expect("backend reads the entry");
    assert_eq!(rec["owner"], owner.as_str());
    let mut js = async_nats::jetstream::new(b.clone());
    js.set_timeout(Duration::from_secs(2));
    let kv = js
        .get_key_value("streams_sessions")
        .await
        .expect("backend opens the bucket");
    let keys: Vec<String> = kv
        .keys()
        .await
        .expect("backend lists keys")
        .map(|k| k.expect("key"))
        .collect()
        .await;
    assert!(keys.contains(&"perm-1".to_string()), "{keys:?}");
    let revision = kv.entry("perm-1").await.unwrap().expect("entry").revision;

    // ... but never writes it. (The denied write is dropped by the server:
    // no acknowledgement comes, so the put times out.)
    let mut js_short = async_nats::jetstream::new(b.clone());
    js_short.set_timeout(Duration::from_millis(500));
    let kv_short = js_short
        .get_key_value("streams_sessions")
        .await
        .expect("backend opens the bucket");
    assert!(
        kv_short.put("perm-1", "{}".into()).await.is_err(),
        "backend wrote the registry"
    );
    backend
        .expect_publish_denied("$KV.streams_sessions.perm-1")
        .await;
    assert_eq!(
        kv.entry("perm-1").await.unwrap().expect("entry").revision,
        revision,
        "the registry entry changed"
    );

    // (b) Worker-internal subjects are refused to the backend. The observer
    // listens to everything the owner gets for this session; the backend
    // sends fence and adopt (and forged heartbeats), then a peer signal it
    // is allowed to send. The signal arrives, nothing before it.
    let mut direct = observer
        .client
        .subscribe(format!("streams.v1.worker.{owner}.session.perm-1.>"))
        .await
        .unwrap();
    observer.client.flush().await.unwrap();
    drain(&mut heartbeats);
    let fence = format!("streams.v1.worker.{owner}.session.perm-1.fence");
    let adopt = format!("streams.v1.worker.{owner}.session.perm-1.adopt");
    let own_hb = format!("streams.v1.worker.{owner}.heartbeat");
    let ghost_hb = "streams.v1.worker.w-ghost.heartbeat";
    let forged = |w: &str| {
        json!({"worker": w, "seq": 987654321, "interval_ms": 250, "capacity": 0,
               "sessions": [], "draining": true, "sent_at": "2026-01-01T00:00:00.000Z"})
        .to_string()
    };
    let err = unanswered(&b, &fence, r#"{"epoch":99}"#).await;
    eprintln!("backend fence request: {err}");
    b.publish(adopt.clone(), r#"{"epoch":99}"#.into())
        .await
        .unwrap();
    b.publish(own_hb.clone(), forged(&owner).into())
        .await
        .unwrap();
    b.publish(ghost_hb, forged("w-ghost").into()).await.unwrap();
    let control = format!("streams.v1.worker.{owner}.session.perm-1.peer.p-000000000001");
    b.publish(control.clone(), "control".into()).await.unwrap();
    b.flush().await.unwrap();
    let first = next_msg(&mut direct, "the backend's allowed peer signal").await;
    assert_eq!(
        first.subject.as_str(),
        control,
        "the first message the owner could get after fence and adopt"
    );
    assert!(drain(&mut direct).is_empty());
    for hb in drain(&mut heartbeats) {
        let v: Value = serde_json::from_slice(&hb.payload).unwrap();
        assert_ne!(
            v["seq"],
            json!(987654321),
            "a forged heartbeat arrived: {v}"
        );
    }
    for subject in [fence.as_str(), adopt.as_str(), own_hb.as_str(), ghost_hb] {
        backend.expect_publish_denied(subject).await;
    }
    // The backend may not listen to heartbeats either.
    let _hb_sub = b.subscribe("streams.v1.worker.*.heartbeat").await.unwrap();
    backend
        .expect_error(&[
            "Permissions Violation for Subscription",
            "streams.v1.worker.*.heartbeat",
        ])
        .await;
    // The session is untouched.
    let got = raw_request(&b, "streams.v1.session.perm-1.get", "").await;
    assert_eq!(ok(&got)["state"], "live", "{got}");
    assert_eq!(ok(&got)["epoch"], 1, "{got}");

    // The api may not publish heartbeats, nor fence, nor inject input.
    let mut api_user = Conn::open(&nats, "api").await;
    let a = api_user.client.clone();
    a.publish(own_hb.clone(), forged(&owner).into())
        .await
        .unwrap();
    a.publish(fence.clone(), r#"{"epoch":99}"#.into())
        .await
        .unwrap();
    a.publish(
        "streams.v1.session.perm-1.input",
        r#"{"events":[{"type":"key","code":"KeyB","down":true}]}"#.into(),
    )
    .await
    .unwrap();
    let control = format!("streams.v1.worker.{owner}.session.perm-1.peer.p-000000000002");
    a.publish(control.clone(), "control".into()).await.unwrap();
    a.flush().await.unwrap();
    let first = next_msg(&mut direct, "the api's allowed peer signal").await;
    assert_eq!(first.subject.as_str(), control);
    for hb in drain(&mut heartbeats) {
        let v: Value = serde_json::from_slice(&hb.payload).unwrap();
        assert_ne!(
            v["seq"],
            json!(987654321),
            "a forged heartbeat arrived: {v}"
        );
    }
    for subject in [
        own_hb.as_str(),
        fence.as_str(),
        "streams.v1.session.perm-1.input",
    ] {
        api_user.expect_publish_denied(subject).await;
    }

    // The api's REST and WebSocket work end to end under its user.
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/api/sessions"))
        .json(&json!({"id": "perm-rest", "source": serde_json::from_str::<Value>(SMALL).unwrap()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["state"], "live", "{created}");
    let one: Value = http
        .get(format!("{base}/api/sessions/perm-rest"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["id"], "perm-rest");
    let list: Value = http
        .get(format!("{base}/api/sessions"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert!(
        ids.contains(&"perm-rest") && ids.contains(&"perm-1"),
        "{list}"
    );
    let k = http
        .post(format!("{base}/api/sessions/perm-rest/keepalive"))
        .send()
        .await
        .unwrap();
    assert_eq!(k.status(), 200);
    let token: Value = http
        .post(format!("{base}/api/sessions/perm-rest/tokens"))
        .json(&json!({"role": "view"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ws_url = format!(
        "{}{}",
        base.replacen("http://", "ws://", 1),
        token["ws"].as_str().expect("ws path")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url)
        .await
        .expect("WebSocket opens");
    let joined = ws_next(&mut ws).await.expect("joined");
    assert_eq!(joined["type"], "joined", "{joined}");
    // What the worker publishes on the peer's subject reaches the viewer.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = ws_next(&mut ws).await.expect("a message from the worker");
        if m["type"] == "viewers" {
            assert_eq!(m["count"], 1, "{m}");
            break;
        }
        assert!(Instant::now() < deadline, "no viewers message");
    }
    let stats = raw_request(&b, "streams.v1.session.perm-rest.stats", "").await;
    assert_eq!(
        ok(&stats)["viewers"].as_array().map(Vec::len),
        Some(1),
        "{stats}"
    );
    // Leave goes from the api to the owner on the peer's subject; the
    // worker drops the viewer and the api closes the socket.
    ws.send(WsMessage::Text(r#"{"type":"leave"}"#.into()))
        .await
        .unwrap();
    while let Some(m) = ws_next(&mut ws).await {
        assert_ne!(m["type"], "error", "after leave: {m}");
    }
    wait_for(
        "the viewer gone after leave",
        Duration::from_secs(10),
        || async {
            let stats = raw_request(&b, "streams.v1.session.perm-rest.stats", "").await;
            (ok(&stats)["viewers"].as_array().map(Vec::len) == Some(0)).then_some(())
        },
    )
    .await;
    let d = http
        .delete(format!("{base}/api/sessions/perm-rest"))
        .send()
        .await
        .unwrap();
    assert_eq!(d.status(), 200);
    let ended: Value = d.json().await.unwrap();
    assert_eq!(ended["state"], "ended", "{ended}");

    // The backend stops its session and hears that it ended.
    let stop = raw_request(&b, "streams.v1.session.perm-1.stop", "").await;
    assert_eq!(ok(&stop)["state"], "ended", "{stop}");
    let ev: Value =
        serde_json::from_slice(&next_msg(&mut events, "ended event").await.payload).unwrap();
    assert_eq!(ev["kind"], "ended", "{ev}");
    assert_eq!(ev["reason"], "stopped", "{ev}");
}

#[tokio::test]
async fn the_janitor_reaps_under_the_config() {
    init_tracing();
    let nats = AuthNats::start().await;
    let _janitor = start_janitor(&nats);
    let observer = Conn::open(&nats, "worker").await;
    let mut heartbeats = observer
        .client
        .subscribe("streams.v1.worker.*.heartbeat")
        .await
        .unwrap();
    observer.client.flush().await.unwrap();

    // The island reaches NATS through a proxy that can cut it off.
    let proxy = Proxy::start(nats.port).await;
    let mut cfg = worker::Config::for_tests(&nats.url_as("worker"));
    cfg.worker_id = Some("w-perm-island".into());
    let _island = start_worker_with(cfg, proxy.url());
    heartbeat_from(&mut heartbeats, "w-perm-island").await;

    let backend = Conn::open(&nats, "backend").await;
    let b = backend.client.clone();
    let body = format!(r#"{{"id":"perm-move","on_worker_lost":"restart","source":{SMALL}}}"#);
    let info = raw_request(&b, "streams.v1.session.create", &body).await;
    assert_eq!(ok(&info)["owner"], "w-perm-island");

    let _main = start_worker(&nats, "w-perm-main");
    heartbeat_from(&mut heartbeats, "w-perm-main").await;
    let mut session_events = b
        .subscribe("streams.v1.event.session.perm-move.*")
        .await
        .unwrap();
    let mut lost = b
        .subscribe("streams.v1.event.worker.w-perm-island.lost")
        .await
        .unwrap();
    b.flush().await.unwrap();

    // Cut off, the island's heartbeats stop; the janitor declares it dead,
    // rewrites the registry entry and asks w-perm-main to adopt.
    proxy.partition();
    let cut = Instant::now();
    let moved = wait_for(
        "the session to be live on w-perm-main",
        Duration::from_secs(15),
        || async {
            let rec = registry_get(&b, "perm-move").await?;
            (rec["owner"] == "w-perm-main" && rec["state"] == "live").then_some(rec)
        },
    )
    .await;
    eprintln!("moved {:?} after the partition", cut.elapsed());
    assert_eq!(moved["epoch"], 2, "{moved}");
    let ev: Value =
        serde_json::from_slice(&next_msg(&mut lost, "worker lost event").await.payload).unwrap();
    assert_eq!(ev["worker"], "w-perm-island", "{ev}");
    let mut kinds = Vec::new();
    while !kinds.iter().any(|k| k == "moved") {
        let ev: Value =
            serde_json::from_slice(&next_msg(&mut session_events, "moved event").await.payload)
                .unwrap();
        kinds.push(ev["kind"].as_str().unwrap_or_default().to_string());
    }
    // w-perm-main runs it: its heartbeats list the session under epoch 2.
    // (Commands on public subjects may still be routed to the island's
    // stale connection until the server notices it is gone, so the checks
    // read the registry and the heartbeats.)
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = heartbeat_from(&mut heartbeats, "w-perm-main").await;
        if v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == "perm-move" && s["epoch"] == 2)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "w-perm-main never reported the session"
        );
    }
}

/// The services as the binaries connect: credentials only in NATS_URL.
#[tokio::test]
async fn services_connect_with_the_credentials_in_nats_url() {
    init_tracing();
    let nats = AuthNats::start().await;
    let mut wc = worker::Config::for_tests(&nats.url_as("worker"));
    wc.worker_id = Some("w-perm-url".into());
    let _w = worker(wc);
    let (_api, base) = api(api::Config::for_tests(&nats.url_as("api"))).await;
    let http = reqwest::Client::new();
    let created = wait_for("a create through the api", Duration::from_secs(20), || async {
        let r = http
            .post(format!("{base}/api/sessions"))
            .json(&json!({"id": "perm-url", "source": serde_json::from_str::<Value>(SMALL).unwrap()}))
            .send()
            .await
            .ok()?;
        (r.status() == 201).then_some(r.json::<Value>().await.ok()?)
    })
    .await;
    assert_eq!(created["owner"], "w-perm-url");
    // As the janitor binary connects.
    bus_schema::connect::connect(&nats.url_as("janitor"), "janitor")
        .await
        .expect("the janitor's URL credentials are accepted");
}
