//! Section 7: the control plane and a viewer's join through the api, the
//! way Helix (REST) and a browser's page (the viewer WebSocket) use them;
//! sections 1, 2 and 5 go to the workers over NATS directly.
//!
//! One nats-server, two release worker processes and the release `api`
//! process (both binaries next to the bench), each with its log in
//! `target/bench/logs/`:
//!
//! - **7a** REST create/stop throughput: clients, each with its own HTTP
//!   connection, loop `POST /api/sessions` then `DELETE
//!   /api/sessions/{id}`; **7a'** the same clients, same workers, same run,
//!   straight over NATS, so the api's share is a ratio of one run.
//! - **7b** a new viewer, one after another: from opening the WebSocket to
//!   `joined` (the worker's offer), to the first keyframe packet, and to
//!   the first whole keyframe (every packet from its start to its marker
//!   bit, no gap), with a webrtc-rs peer answering as a page does.
//! - **7c** signalling joins per second: concurrent viewers open the
//!   WebSocket, take `joined` (the worker has built a peer connection and
//!   its offer), leave and close, over and over.
//! - **7d** whole joins per second: the same, but each viewer answers and
//!   connects (ICE, DTLS) and leaves once its first keyframe packet is in.
//! - **7e** as 7d with answers that carry no candidate: the worker learns
//!   each viewer's address from its checks (peer-reflexive), as it learns
//!   a browser's behind a NAT or an mDNS name.

use std::sync::Mutex;
use std::time::SystemTime;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::API;
use webrtc::ice_transport::ice_connection_state::RTCIceConnectionState;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::RTCPeerConnection;

use super::*;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long one join may take before it counts as failed.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);

/// The processes of the section and how to reach them.
struct Rig {
    nats: NatsServer,
    workers: Vec<Proc>,
    api: Proc,
    /// `http://127.0.0.1:<port>`.
    base: String,
    signer: api::token::Signer,
    bus: Bus,
}

impl Rig {
    async fn start(env: &Env) -> anyhow::Result<Self> {
        let api_bin = sibling_bin("api")?;
        let nats = NatsServer::start().await;
        let client = nats.client().await;
        let workers = start_workers(&client, &["w-api-1", "w-api-2"], |id| {
            env.spawn_worker(
                &nats.url(),
                id,
                &[("WORKER_CAPACITY", "64"), ("MAX_VIEWERS", "64")],
            )
        })
        .await?;
        let secret = "bench-join-token-secret";
        let port = system_tests::free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut api = env.spawn(
            &api_bin,
            "api",
            &[
                ("NATS_URL", &nats.url()),
                ("API_LISTEN", &listen),
                ("JOIN_TOKEN_SECRET", secret),
            ],
        );
        system_tests::api_answers(port, &mut api)
            .await
            .map_err(anyhow::Error::msg)?;
        let base = format!("http://{listen}");
        Ok(Self {
            bus: bus_of(&client, Duration::from_secs(15)),
            nats,
            workers,
            api,
            base,
            signer: api::token::Signer::new(secret),
        })
    }

    fn worker_pids(&self) -> Vec<u32> {
        self.workers.iter().map(|w| w.child.id()).collect()
    }

    /// A viewer's WebSocket address for `id`, with a fresh join token (a
    /// page gets it from the backend before it opens the socket).
    fn ws_url(&self, id: &SessionId) -> String {
        let token = self
            .signer
            .mint(id, Role::View, Duration::from_secs(600), SystemTime::now());
        format!(
            "{}/api/sessions/{id}/ws?token={token}",
            self.base.replacen("http://", "ws://", 1)
        )
    }

    /// Creates a session through the api.
    async fn create(
        &self,
        http: &reqwest::Client,
        source: &SourceSpec,
    ) -> Result<SessionId, String> {
        let r = http
            .post(format!("{}/api/sessions", self.base))
            .json(&json!({ "source": source }))
            .send()
            .await
            .map_err(|e| format!("create: {e}"))?;
        let status = r.status();
        let body: Value = r
            .json()
            .await
            .map_err(|e| format!("create {status}: {e}"))?;
        if status != reqwest::StatusCode::CREATED {
            return Err(format!(
                "create {status} {}",
                body["code"].as_str().unwrap_or("?")
            ));
        }
        let info: bus_schema::SessionInfo =
            serde_json::from_value(body).map_err(|e| format!("create reply: {e}"))?;
        Ok(info.record.id)
    }

    /// Stops a session through the api.
    async fn stop(&self, http: &reqwest::Client, id: &SessionId) -> Result<(), String> {
        let r = http
            .delete(format!("{}/api/sessions/{id}", self.base))
            .send()
            .await
            .map_err(|e| format!("stop: {e}"))?;
        let status = r.status();
        if status != reqwest::StatusCode::OK {
            let body: Value = r.json().await.unwrap_or_default();
            return Err(format!(
                "stop {status} {}",
                body["code"].as_str().unwrap_or("?")
            ));
        }
        Ok(())
    }

    /// Waits until the worker lists no viewer on `id`.
    async fn no_viewer_left(&self, id: &SessionId, report: &mut Report, step: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self
                .bus
                .request(&self.bus.subjects.session_stats(id), &GetStats {})
                .await
            {
                Ok(s) if s.viewers.is_empty() => return,
                _ if Instant::now() > deadline => {
                    report.note(format!(
                        "{step}: the worker still listed viewers 30 s after all left"
                    ));
                    return;
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// CPU of the api, the workers, the bench and the host from one moment to
/// another, in cores.
struct Cpu {
    at: Instant,
    api: Duration,
    workers: Duration,
    bench: Duration,
    host: (u64, u64),
}

impl Cpu {
    fn now(rig: &Rig) -> Self {
        Self {
            at: Instant::now(),
            api: proc_cpu(Some(rig.api.child.id())),
            workers: rig
                .worker_pids()
                .into_iter()
                .map(|p| proc_cpu(Some(p)))
                .sum(),
            bench: proc_cpu(None),
            host: host_ticks(),
        }
    }

    /// `(api, workers, bench, host)` cores since `self`.
    fn since(&self, rig: &Rig) -> [f64; 4] {
        let now = Self::now(rig);
        let secs = now.at.duration_since(self.at).as_secs_f64();
        let cores = |a: Duration, b: Duration| b.saturating_sub(a).as_secs_f64() / secs;
        [
            cores(self.api, now.api),
            cores(self.workers, now.workers),
            cores(self.bench, now.bench),
            host_busy_cores(self.host, now.host),
        ]
    }
}

fn cpu_text([api, workers, bench, host]: [f64; 4]) -> String {
    format!("api {api:.3} cores, workers {workers:.3}, bench {bench:.2}, host busy {host:.2}")
}

fn cpu_json([api, workers, bench, host]: [f64; 4]) -> Value {
    json!({"api_cores": api, "worker_cores": workers, "bench_cores": bench, "host_busy_cores": host})
}

/// What a create/stop loop did.
#[derive(Default)]
struct Churn {
    pairs: u64,
    creates: Vec<Duration>,
    stops: Vec<Duration>,
    errors: std::collections::BTreeMap<String, u64>,
}

impl Churn {
    fn add(&mut self, other: Churn) {
        self.pairs += other.pairs;
        self.creates.extend(other.creates);
        self.stops.extend(other.stops);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    fn failed(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// `clients` loops of create then stop until `window` is over, through
/// the api (REST) or, with `nats`, straight to the workers.
async fn churn(rig: &Rig, nats: bool, clients: usize, window: Duration) -> (Churn, Duration) {
    let deadline = Instant::now() + window;
    let start = Instant::now();
    let mut loops = Vec::new();
    for _ in 0..clients {
        // Each client has its own connection, as separate services would.
        let http = reqwest::Client::new();
        let bus = bus_of(&rig.nats.client().await, Duration::from_secs(10));
        loops.push(async move {
            let mut c = Churn::default();
            while Instant::now() < deadline {
                let t = Instant::now();
                let created = if nats {
                    create(&bus, None, tiny_source(), OnWorkerLost::End)
                        .await
                        .map(|i| i.record.id)
                        .map_err(|e| format!("create {}", e.code.as_str()))
                } else {
                    rig.create(&http, &tiny_source()).await
                };
                let id = match created {
                    Ok(id) => id,
                    Err(e) => {
                        *c.errors.entry(e).or_default() += 1;
                        continue;
                    }
                };
                c.creates.push(t.elapsed());
                let t = Instant::now();
                let stopped = if nats {
                    stop(&bus, &id)
                        .await
                        .map(|_| ())
                        .map_err(|e| format!("stop {}", e.code.as_str()))
                } else {
                    rig.stop(&http, &id).await
                };
                match stopped {
                    Ok(()) => {
                        c.stops.push(t.elapsed());
                        c.pairs += 1;
                    }
                    Err(e) => *c.errors.entry(e).or_default() += 1,
                }
            }
            c
        });
    }
    let mut all = Churn::default();
    for c in futures::future::join_all(loops).await {
        all.add(c);
    }
    (all, start.elapsed())
}

/// The first whole keyframe a viewer receives: from a packet that starts
/// one ([`starts_keyframe`]) through consecutive sequence numbers to the
/// packet with the marker bit (the end of that access unit). A gap
/// starts the wait over at the next keyframe. Pure.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct KeyframeWatch {
    /// The next sequence number, while a keyframe is coming in.
    expect: Option<u16>,
    whole: bool,
}

impl KeyframeWatch {
    /// Takes the next video packet; true once a keyframe is whole.
    fn packet(&mut self, seq: u16, marker: bool, payload: &[u8]) -> bool {
        if self.whole {
            return true;
        }
        match self.expect {
            Some(e) if e == seq => {}
            _ if starts_keyframe(payload) => {}
            _ => {
                self.expect = None;
                return false;
            }
        }
        if marker {
            self.whole = true;
        } else {
            self.expect = Some(seq.wrapping_add(1));
        }
        self.whole
    }
}

/// A point in a viewer's join, in the order they come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// `joined`, the worker's offer, is in.
    Joined,
    /// The answer is sent (its candidates gathered).
    Answered,
    /// ICE connected.
    Ice,
    /// DTLS done: the peer connection is connected.
    Dtls,
    FirstPacket,
    /// The first packet starting an IDR or SPS.
    FirstKey,
    /// A keyframe is in whole ([`KeyframeWatch`]).
    WholeKey,
}

impl Mark {
    const ALL: [Mark; 7] = [
        Mark::Joined,
        Mark::Answered,
        Mark::Ice,
        Mark::Dtls,
        Mark::FirstPacket,
        Mark::FirstKey,
        Mark::WholeKey,
    ];

    fn name(self) -> &'static str {
        match self {
            Mark::Joined => "`joined` (offer)",
            Mark::Answered => "answer sent",
            Mark::Ice => "ICE connected",
            Mark::Dtls => "DTLS done",
            Mark::FirstPacket => "first video packet",
            Mark::FirstKey => "first keyframe packet",
            Mark::WholeKey => "whole keyframe",
        }
    }
}

/// When a viewer reached each [`Mark`], from opening its WebSocket.
#[derive(Default)]
struct Marks([OnceLock<Duration>; 7]);

impl Marks {
    fn set(&self, mark: Mark, at: Duration) {
        let _ = self.0[mark as usize].set(at);
    }

    fn get(&self, mark: Mark) -> Option<Duration> {
        self.0[mark as usize].get().copied()
    }

    fn all(&self) -> [Option<Duration>; 7] {
        Mark::ALL.map(|m| self.get(m))
    }
}

/// Each mark's distribution over `joins` (marks as [`Marks::all`]), for
/// the report: text and JSON.
fn marks_dist(joins: &[[Option<Duration>; 7]], marks: &[Mark]) -> (String, Value) {
    let mut text = Vec::new();
    let mut data = serde_json::Map::new();
    for &m in marks {
        let at: Vec<Duration> = joins.iter().filter_map(|j| j[m as usize]).collect();
        let (t, d) = dist_text(&at);
        text.push(format!("→ {} {t}", m.name()));
        data.insert(format!("{m:?}"), d);
    }
    (text.join("; "), Value::Object(data))
}

/// One join's marks on one line (`joined 2.1 ms, answer sent 5.0 ms, …`).
fn marks_line(join: &[Option<Duration>; 7]) -> String {
    Mark::ALL
        .iter()
        .filter_map(|&m| join[m as usize].map(|d| format!("{} {}", m.name(), ms(d))))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How far a viewer of [`WsViewer::join`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Join {
    /// To `joined` only.
    Signalling,
    /// Answers with its host candidates and connects.
    Whole,
    /// Answers without candidates: the worker learns the viewer's address
    /// only from its connectivity checks (a peer-reflexive candidate), as
    /// it does a browser's behind a NAT or behind an mDNS name it cannot
    /// resolve, or whose candidates trickle in after its checks.
    Prflx,
}

/// `sdp` without its candidate lines.
fn without_candidates(sdp: &str) -> String {
    sdp.split_inclusive('\n')
        .filter(|l| !l.starts_with("a=candidate:") && !l.starts_with("a=end-of-candidates"))
        .collect()
}

/// A viewer joined through the api's WebSocket, as a page joins.
struct WsViewer {
    tx: futures::stream::SplitSink<Ws, WsMessage>,
    pc: Option<Arc<RTCPeerConnection>>,
    /// Reads the api's messages (the worker's trickled candidates).
    reader: Option<tokio::task::JoinHandle<()>>,
    marks: Arc<Marks>,
}

impl WsViewer {
    /// Opens the WebSocket at `url` and waits for `joined`; unless `how`
    /// is [`Join::Signalling`], answers the offer with a webrtc-rs peer of
    /// `api` and watches the video for [`Marks`].
    async fn join(url: &str, api: &API, how: Join) -> anyhow::Result<Self> {
        let t0 = Instant::now();
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .context("WebSocket open")?;
        let (mut tx, mut rx) = ws.split();
        let joined = loop {
            match rx.next().await {
                Some(Ok(WsMessage::Text(t))) => break serde_json::from_str::<Value>(&t)?,
                Some(Ok(_)) => continue,
                other => bail!("the WebSocket closed before `joined`: {other:?}"),
            }
        };
        if joined["type"] != "joined" {
            bail!("refused: {joined}");
        }
        let marks = Arc::new(Marks::default());
        marks.set(Mark::Joined, t0.elapsed());
        if how == Join::Signalling {
            return Ok(Self {
                tx,
                pc: None,
                reader: None,
                marks,
            });
        };
        let offer = joined["offer"].as_str().context("offer")?.to_string();
        let pc = viewer::peer(api).await?;
        let m = marks.clone();
        pc.on_ice_connection_state_change(Box::new(move |state| {
            if state == RTCIceConnectionState::Connected {
                m.set(Mark::Ice, t0.elapsed());
            }
            Box::pin(async {})
        }));
        let m = marks.clone();
        pc.on_peer_connection_state_change(Box::new(move |state| {
            if state == RTCPeerConnectionState::Connected {
                m.set(Mark::Dtls, t0.elapsed());
            }
            Box::pin(async {})
        }));
        let m = marks.clone();
        viewer::on_tracks(&pc, move |track, video| {
            let m = m.clone();
            async move {
                let mut watch = KeyframeWatch::default();
                while let Ok((pkt, _)) = track.read_rtp().await {
                    if !video {
                        continue;
                    }
                    m.set(Mark::FirstPacket, t0.elapsed());
                    if m.get(Mark::FirstKey).is_none() && starts_keyframe(&pkt.payload) {
                        m.set(Mark::FirstKey, t0.elapsed());
                    }
                    if m.get(Mark::WholeKey).is_none()
                        && watch.packet(pkt.header.sequence_number, pkt.header.marker, &pkt.payload)
                    {
                        m.set(Mark::WholeKey, t0.elapsed());
                    }
                }
            }
        });
        let mut sdp = viewer::answer(&pc, offer).await?;
        if how == Join::Prflx {
            sdp = without_candidates(&sdp);
        }
        // The worker's trickled candidates, once the offer is set (the
        // offer carries its host candidates; these add to them).
        let pc2 = pc.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(m)) = rx.next().await {
                let WsMessage::Text(t) = m else { continue };
                if let Ok(bus_schema::ToPeer::Candidate { candidate }) =
                    serde_json::from_str::<bus_schema::ToPeer>(&t)
                {
                    viewer::add_candidate(&pc2, candidate).await;
                }
            }
        });
        tx.send(WsMessage::Text(
            json!({"type": "answer", "sdp": sdp}).to_string().into(),
        ))
        .await?;
        marks.set(Mark::Answered, t0.elapsed());
        Ok(Self {
            tx,
            pc: Some(pc),
            reader: Some(reader),
            marks,
        })
    }

    /// Waits (polling, up to `timeout`) until `mark` is reached.
    async fn wait(&self, mark: Mark, timeout: Duration) -> Option<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(d) = self.marks.get(mark) {
                return Some(d);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Sends `leave`, closes the WebSocket and the peer connection.
    async fn leave(mut self) {
        let _ = self
            .tx
            .send(WsMessage::Text(r#"{"type":"leave"}"#.into()))
            .await;
        let _ = self.tx.close().await;
        if let Some(r) = self.reader.take() {
            r.abort();
        }
        if let Some(pc) = self.pc.take() {
            let _ = pc.close().await;
        }
    }
}

/// One join to completion, `joined` for [`Join::Signalling`] or else the
/// first keyframe packet, then leave; its marks or why it failed.
async fn join_once(url: String, api: &API, how: Join) -> Result<[Option<Duration>; 7], String> {
    let join = async {
        let v = WsViewer::join(&url, api, how)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let done = match how {
            Join::Signalling => true,
            Join::Whole | Join::Prflx => v.wait(Mark::FirstKey, JOIN_TIMEOUT).await.is_some(),
        };
        let marks = v.marks.all();
        v.leave().await;
        done.then_some(marks)
            .ok_or_else(|| "no keyframe".to_string())
    };
    tokio::time::timeout(JOIN_TIMEOUT, join)
        .await
        .unwrap_or_else(|_| Err(format!("not done in {JOIN_TIMEOUT:?}")))
}

/// Short names for a join's errors, counted.
fn error_kind(e: &str) -> String {
    e.split([':', '{']).next().unwrap_or(e).trim().to_string()
}

pub async fn bench_api(env: &Env, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("[7] through the api");
    let rig = Rig::start(env).await?;

    // 7a, 7a': create/stop through the api, then straight over NATS.
    let window = plan.throughput_window;
    let clients = plan.throughput_clients;
    let mut rates = Vec::new();
    for nats in [false, true] {
        let cpu = Cpu::now(&rig);
        let (c, took) = churn(&rig, nats, clients, window).await;
        let cores = cpu.since(&rig);
        let rate = c.pairs as f64 / took.as_secs_f64();
        rates.push(rate);
        let requests = (c.creates.len() + c.stops.len()) as f64 + c.failed() as f64;
        let api_us = cores[0] * took.as_secs_f64() / requests.max(1.0) * 1e6;
        let (create_text, create_json) = dist_text(&c.creates);
        let (stop_text, stop_json) = dist_text(&c.stops);
        let (id, what, via) = if nats {
            (
                "7a'",
                "Create+stop straight over NATS, same run as 7a",
                "`session.create` and `session.<id>.stop` requests",
            )
        } else {
            (
                "7a",
                "Create+stop through the api (REST)",
                "`POST /api/sessions` and `DELETE /api/sessions/{id}`",
            )
        };
        let vs = if nats {
            format!(
                "; through the api (7a) {:.2}× this rate",
                rates[0] / rate.max(1e-9)
            )
        } else {
            format!("; api CPU {api_us:.0} µs per request")
        };
        report.row(
            id,
            what,
            format!(
                "{rate:.1} pairs/s ({:.1} requests/s): {} pairs, {} failed in {:.1} s; create {create_text}; stop {stop_text}; {}{vs}",
                rate * 2.0,
                c.pairs,
                c.failed(),
                took.as_secs_f64(),
                cpu_text(cores),
            ),
            &format!(
                "{clients} concurrent clients (one connection each) loop {via} (160x120@10 200 kbit/s) for {:.0} s; api and 2 worker processes (release, capacity 64) on one nats-server",
                window.as_secs_f64()
            ),
            json!({
                "pairs": c.pairs, "pairs_per_s": rate, "failed": c.failed(), "errors": c.errors,
                "elapsed_s": took.as_secs_f64(), "create": create_json, "stop": stop_json,
                "cpu": cpu_json(cores), "api_cpu_us_per_request": (!nats).then_some(api_us),
            }),
        );
    }

    // 7b: viewers one after another on one session.
    let http = reqwest::Client::new();
    let id = rig
        .create(&http, &hd_source())
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let api = viewer::api(Interceptors::Default, SettingEngine::default())?;
    let mut viewers = Vec::new();
    let mut missing = 0;
    for _ in 0..plan.api_viewers {
        let v = WsViewer::join(&rig.ws_url(&id), &api, Join::Whole).await?;
        if v.wait(Mark::WholeKey, JOIN_TIMEOUT).await.is_none() {
            missing += 1;
        }
        viewers.push(v);
    }
    let joins: Vec<_> = viewers.iter().map(|v| v.marks.all()).collect();
    let (text, data) = marks_dist(&joins, &Mark::ALL);
    report.row(
        "7b",
        "WebSocket open → first keyframe, 1280x720@30 2500 kbit/s",
        format!(
            "{text}{}",
            if missing > 0 { format!("; {missing} viewers had no whole keyframe in {JOIN_TIMEOUT:?}") } else { String::new() }
        ),
        &format!(
            "{} viewers join one after another (each stays) through the api's WebSocket with a join token; a webrtc-rs peer (default interceptors) answers with its host candidates and takes the worker's trickled ones from the socket; timed from opening the socket (TCP connect and upgrade included) to `joined`, to the answer sent, to ICE connected, to the peer connected (DTLS done), to the first RTP packet of video, to the first packet starting an IDR or SPS, and to the marker bit of that access unit with no sequence gap",
            plan.api_viewers
        ),
        json!({"marks": data, "missing": missing}),
    );
    for v in viewers {
        v.leave().await;
    }
    rig.no_viewer_left(&id, report, "7b").await;
    let _ = rig.stop(&http, &id).await;

    // 7c, 7d, 7e: joins per second, signalling only, whole, and whole
    // with the viewer peer-reflexive to the worker.
    let id = rig
        .create(&http, &small_source())
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    for (row, how, concurrency) in [
        ("7c", Join::Signalling, plan.join_concurrency * 2),
        ("7d", Join::Whole, plan.join_concurrency),
        ("7e", Join::Prflx, plan.join_concurrency),
    ] {
        let whole = how != Join::Signalling;
        let deadline = Instant::now() + plan.join_window;
        let errors: Mutex<std::collections::BTreeMap<String, u64>> = Mutex::default();
        let cpu = Cpu::now(&rig);
        let start = Instant::now();
        let loops = (0..concurrency).map(|_| {
            let (rig, id, errors, api) = (&rig, &id, &errors, &api);
            async move {
                let mut took = Vec::new();
                while Instant::now() < deadline {
                    match join_once(rig.ws_url(id), api, how).await {
                        Ok(marks) => took.push(marks),
                        Err(e) => {
                            *errors.lock().unwrap().entry(error_kind(&e)).or_default() += 1;
                        }
                    }
                }
                took
            }
        });
        let joins: Vec<[Option<Duration>; 7]> = futures::future::join_all(loops)
            .await
            .into_iter()
            .flatten()
            .collect();
        let elapsed = start.elapsed();
        let cores = cpu.since(&rig);
        let errors = errors.into_inner().unwrap_or_else(|e| e.into_inner());
        let failed: u64 = errors.values().sum();
        let rate = joins.len() as f64 / elapsed.as_secs_f64();
        let last = if whole { Mark::FirstKey } else { Mark::Joined };
        let took: Vec<Duration> = joins.iter().filter_map(|j| j[last as usize]).collect();
        let (text, mut d) = dist_text(&took);
        // Where the time of a whole join goes, and of the slowest one.
        let phases = if whole {
            let (text, data) = marks_dist(&joins, &Mark::ALL[..Mark::FirstKey as usize]);
            let slowest = joins
                .iter()
                .max_by_key(|j| j[last as usize])
                .map(marks_line)
                .unwrap_or_default();
            d["marks"] = data;
            d["slowest"] = slowest.clone().into();
            format!("; {text}; the slowest: {slowest}")
        } else {
            String::new()
        };
        let (what, until) = match how {
            Join::Whole => (
                "Whole joins per second through the api, 320x240@15 300 kbit/s",
                "opens the WebSocket, takes `joined`, answers with a webrtc-rs peer, connects (ICE, DTLS) and, once the first keyframe packet is in, sends `leave` and closes",
            ),
            Join::Prflx => (
                "Whole joins per second, the viewer's address learnt from its checks (peer-reflexive)",
                "as 7d, but the answer carries no candidate, so the worker learns the viewer's address only from its connectivity checks, as a browser's behind a NAT, behind an mDNS name, or trickling late",
            ),
            Join::Signalling => (
                "Signalling joins per second through the api",
                "opens the WebSocket, takes `joined` (the worker has built a peer connection and its offer), sends `leave` and closes",
            ),
        };
        report.row(
            row,
            what,
            format!(
                "{rate:.1} joins/s: {} done, {failed} failed in {:.1} s; each {text}; {}{phases}",
                joins.len(),
                elapsed.as_secs_f64(),
                cpu_text(cores)
            ),
            &format!(
                "{concurrency} concurrent viewers on one session, each in a loop for {:.0} s: {until}; a join's time runs from opening the socket to the last of those marks, failed after {JOIN_TIMEOUT:?}",
                plan.join_window.as_secs_f64()
            ),
            json!({"joins": joins.len(), "joins_per_s": rate, "failed": failed, "errors": errors, "each": d, "cpu": cpu_json(cores), "concurrency": concurrency}),
        );
        if failed > 0 {
            report.note(format!("{row}: failed joins by kind: {errors:?}"));
        }
        rig.no_viewer_left(&id, report, row).await;
    }
    let _ = rig.stop(&http, &id).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{without_candidates, KeyframeWatch};

    #[test]
    fn an_answer_without_candidates_keeps_every_other_line() {
        let sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=ice-ufrag:x\r\na=candidate:1 1 udp 2130706431 10.0.0.2 5000 typ host\r\na=end-of-candidates\r\na=mid:0\r\n";
        assert_eq!(
            without_candidates(sdp),
            "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=ice-ufrag:x\r\na=mid:0\r\n"
        );
    }

    const IDR_START: [u8; 2] = [0x7c, 0x85]; // FU-A, start bit, NAL 5
    const IDR_MIDDLE: [u8; 2] = [0x7c, 0x05];
    const P_SLICE: [u8; 2] = [0x41, 0x9a];

    #[test]
    fn a_keyframe_is_whole_at_its_marker_with_no_gap_and_a_gap_waits_for_the_next() {
        let mut w = KeyframeWatch::default();
        // A P frame first: nothing to wait on.
        assert!(!w.packet(10, true, &P_SLICE));
        // A keyframe that loses its middle packet.
        assert!(!w.packet(11, false, &IDR_START));
        assert!(!w.packet(13, true, &IDR_MIDDLE), "a gap is not whole");
        // A P frame after it is not a keyframe.
        assert!(!w.packet(14, true, &P_SLICE));
        // The next keyframe, every packet in turn.
        assert!(!w.packet(15, false, &IDR_START));
        assert!(!w.packet(16, false, &IDR_MIDDLE));
        assert!(w.packet(17, true, &IDR_MIDDLE));
        // Sequence numbers wrap.
        let mut w = KeyframeWatch::default();
        assert!(!w.packet(u16::MAX, false, &IDR_START));
        assert!(w.packet(0, true, &IDR_MIDDLE));
        // A one-packet keyframe (an IDR in one NAL with the marker).
        let mut w = KeyframeWatch::default();
        assert!(w.packet(7, true, &[0x65, 0x88]));
    }
}
