//! The driver against a real `nats-server` (skipped when none is installed):
//! fake workers heartbeat and answer adopt/fence, the janitor reaps.
//! System-wide scenarios with real workers live in the `tests` crate.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bus_schema::registry::{Registry, Storage};
use bus_schema::{
    decode, encode, encode_reply, Ack, AdoptSession, EndReason, Ended, Fence, Heartbeat,
    HeldSession, HumanDuration, OnWorkerLost, SessionEvent, SessionEventKind, SessionId,
    SessionRecord, SessionSpec, SessionState, SourceSpec, Subjects, Timestamp, WireError, WorkerId,
    WorkerLost,
};
use futures::StreamExt;
use janitor::Config;

const WAIT: Duration = Duration::from_secs(10);

struct NatsServer {
    child: Child,
    port: u16,
    _store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts `nats-server` on a free port, or `None` when it is not
    /// installed. Ready means a NATS client completed its handshake (a TCP
    /// connect alone was once answered by a reset); a server that exits at
    /// start (its port taken meanwhile by a test running beside) is tried
    /// again on another port.
    async fn start(jetstream: bool) -> Option<Self> {
        let bin = ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"]
            .iter()
            .map(|d| PathBuf::from(d).join("nats-server"))
            .find(|p| p.exists())?;
        let store = tempfile::tempdir().ok()?;
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .ok()?
                .local_addr()
                .ok()?
                .port();
            let mut cmd = Command::new(&bin);
            cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
            if jetstream {
                cmd.arg("-js").arg("-sd").arg(store.path());
            }
            let mut child = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()?;
            let url = format!("nats://127.0.0.1:{port}");
            let deadline = Instant::now() + WAIT;
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: another port
                }
                if async_nats::connect(&url).await.is_ok() {
                    return Some(Self {
                        child,
                        port,
                        _store: store,
                    });
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("nats-server did not start on {url}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("nats-server would not start");
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wid(s: &str) -> WorkerId {
    WorkerId::parse(s).unwrap()
}

fn sid(s: &str) -> SessionId {
    SessionId::parse(s).unwrap()
}

fn record(id: &str, owner: &str, on_worker_lost: OnWorkerLost) -> SessionRecord {
    let now = Timestamp::now();
    SessionRecord {
        id: sid(id),
        owner: wid(owner),
        epoch: 1,
        state: SessionState::Live,
        spec: SessionSpec {
            source: SourceSpec::default(),
            idle_ttl: HumanDuration::new(Duration::from_secs(300)).unwrap(),
            max_lifetime: HumanDuration::new(Duration::from_secs(3600)).unwrap(),
            on_worker_lost,
            labels: Default::default(),
        },
        created_at: now,
        updated_at: now,
        live_at: Some(now),
        ended: None,
        viewers: 0,
    }
}

/// A fake worker publishing heartbeats with whatever `held` says.
fn heartbeats(
    client: async_nats::Client,
    subjects: Subjects,
    worker: &str,
    held: Arc<Mutex<Vec<HeldSession>>>,
    for_how_long: Duration,
) -> tokio::task::JoinHandle<()> {
    let worker = wid(worker);
    tokio::spawn(async move {
        let until = Instant::now() + for_how_long;
        let mut seq = 0;
        while Instant::now() < until {
            seq += 1;
            let hb = Heartbeat {
                worker: worker.clone(),
                seq,
                interval_ms: 250,
                capacity: 4,
                sessions: held.lock().unwrap().clone(),
                draining: false,
                sent_at: Timestamp::now(),
            };
            let _ = client
                .publish(subjects.heartbeat(&worker).to_string(), encode(&hb))
                .await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

fn held(sessions: &[(&str, u64)]) -> Arc<Mutex<Vec<HeldSession>>> {
    Arc::new(Mutex::new(
        sessions
            .iter()
            .map(|(id, epoch)| HeldSession {
                id: sid(id),
                epoch: *epoch,
                viewers: 0,
                suspended: false,
            })
            .collect(),
    ))
}

/// Every registry listing the janitor starts: each begins by creating a
/// consumer on the bucket's stream to read its keys.
async fn registry_listings(
    client: &async_nats::Client,
    subjects: &Subjects,
) -> async_nats::Subscriber {
    js_api_requests(
        client,
        format!("CONSUMER.CREATE.KV_{}", subjects.registry_bucket()),
    )
    .await
}

/// Requests to the JetStream API `$JS.API.<what>`, seen as they are sent.
/// The subscription is a responder too: where JetStream is off, a request
/// that would have found no responders waits for its timeout instead.
async fn js_api_requests(client: &async_nats::Client, what: String) -> async_nats::Subscriber {
    let sub = client.subscribe(format!("$JS.API.{what}")).await.unwrap();
    client.flush().await.unwrap();
    sub
}

async fn next(sub: &mut async_nats::Subscriber, what: &str) -> async_nats::Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("subscription open")
}

#[tokio::test]
async fn reaps_a_dead_worker_fences_a_stale_copy_purges_and_stops_promptly() {
    let Some(nats) = NatsServer::start(true).await else {
        eprintln!("skipped: nats-server is not installed");
        return;
    };
    let client = async_nats::connect(nats.url()).await.unwrap();
    let subjects = Subjects::new("jtest").unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let registry = Registry::open(&js, &subjects, Storage::Memory)
        .await
        .unwrap();

    registry
        .create(&record("s-end", "w-doomed", OnWorkerLost::End))
        .await
        .unwrap();
    registry
        .create(&record("s-move", "w-doomed", OnWorkerLost::Restart))
        .await
        .unwrap();
    let mut old = record("s-old", "w-gone", OnWorkerLost::End);
    old.state = SessionState::Ended;
    old.ended = Some(Ended {
        reason: EndReason::Stopped,
        at: Timestamp::from_system(SystemTime::now() - Duration::from_secs(3600)),
        detail: None,
    });
    registry.create(&old).await.unwrap();

    let mut ended = client
        .subscribe(
            subjects
                .event_session(&sid("s-end"), SessionEventKind::Ended)
                .to_string(),
        )
        .await
        .unwrap();
    let mut moved = client
        .subscribe(
            subjects
                .event_session(&sid("s-move"), SessionEventKind::Moved)
                .to_string(),
        )
        .await
        .unwrap();
    let mut lost = client
        .subscribe(subjects.event_worker_lost(&wid("w-doomed")).to_string())
        .await
        .unwrap();
    let mut adopt = client
        .subscribe(
            subjects
                .worker_adopt(&wid("w-heir"), &sid("s-move"))
                .to_string(),
        )
        .await
        .unwrap();
    let mut fence = client
        .subscribe(
            subjects
                .worker_fence(&wid("w-heir"), &sid("ghost"))
                .to_string(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();

    // w-doomed heartbeats for a while and then dies; w-heir lives on and
    // still lists a session the registry knows nothing of.
    let doomed = heartbeats(
        client.clone(),
        subjects.clone(),
        "w-doomed",
        held(&[("s-end", 1), ("s-move", 1)]),
        Duration::from_millis(1200),
    );
    let heir_held = held(&[("ghost", 7)]);
    let heir = heartbeats(
        client.clone(),
        subjects.clone(),
        "w-heir",
        heir_held.clone(),
        Duration::from_secs(60),
    );

    let config = Config {
        // s-old ended an hour ago; s-end, ended during the test, must
        // outlive the test however slow the machine.
        ended_retention: Duration::from_secs(600).into(),
        ..Config::for_tests(&nats.url(), "jtest")
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let janitor = tokio::spawn(janitor::run(config, client.clone(), async {
        let _ = stopped.await;
    }));

    // The stale listing is fenced with the listed epoch.
    let m = next(&mut fence, "a fence").await;
    assert_eq!(decode::<Fence>(&m.payload).unwrap().epoch, 7);
    heir_held.lock().unwrap().clear();
    client
        .publish(m.reply.unwrap(), encode_reply::<Ack>(&Ok(Ack {})))
        .await
        .unwrap();

    // The restartable session is given to w-heir under epoch 2.
    let m = next(&mut adopt, "an adopt request").await;
    let req: AdoptSession = decode(&m.payload).unwrap();
    assert_eq!(req.epoch, 2);
    let info = registry.get(&sid("s-move")).await.unwrap().unwrap();
    assert_eq!(info.record.owner, wid("w-heir"));
    assert_eq!(info.record.state, SessionState::Starting);
    heir_held.lock().unwrap().push(HeldSession {
        id: sid("s-move"),
        epoch: 2,
        viewers: 0,
        suspended: false,
    });
    let reply: Result<_, WireError> = Ok(info.info());
    client
        .publish(m.reply.unwrap(), encode_reply(&reply))
        .await
        .unwrap();

    let ev: SessionEvent =
        serde_json::from_slice(&next(&mut moved, "a moved event").await.payload).unwrap();
    assert_eq!((ev.worker, ev.epoch), (wid("w-heir"), 2));

    let ev: SessionEvent =
        serde_json::from_slice(&next(&mut ended, "an ended event").await.payload).unwrap();
    assert_eq!(ev.reason, Some(EndReason::WorkerLost));
    assert_eq!(ev.worker, wid("w-doomed"));

    let ev: WorkerLost =
        serde_json::from_slice(&next(&mut lost, "a worker lost event").await.payload).unwrap();
    let mut sessions = ev.sessions.clone();
    sessions.sort();
    assert_eq!(sessions, vec![sid("s-end"), sid("s-move")]);

    let rec = registry.get(&sid("s-end")).await.unwrap().unwrap().record;
    assert_eq!(rec.state, SessionState::Ended);
    assert_eq!(rec.ended.unwrap().reason, EndReason::WorkerLost);
    assert!(
        registry.get(&sid("s-old")).await.unwrap().is_none(),
        "purged"
    );

    // The adopted session stays put while w-heir reports it: through
    // eight more scans, longer than the grace for a missing session.
    let mut scans = registry_listings(&client, &subjects).await;
    for n in 1..=8 {
        next(&mut scans, &format!("registry listing {n}")).await;
    }
    let rec = registry.get(&sid("s-move")).await.unwrap().unwrap().record;
    assert_eq!(
        (rec.owner, rec.epoch, rec.state),
        (wid("w-heir"), 2, SessionState::Starting)
    );

    let asked = Instant::now();
    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(1), janitor)
        .await
        .expect("stops within a second");
    assert!(result.unwrap().is_ok());
    eprintln!("janitor stopped {:?} after shutdown", asked.elapsed());
    doomed.abort();
    heir.abort();
}

#[tokio::test]
async fn stops_within_a_second_even_while_the_registry_is_unavailable() {
    // No JetStream: opening the registry retries forever.
    let Some(nats) = NatsServer::start(false).await else {
        eprintln!("skipped: nats-server is not installed");
        return;
    };
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut api = js_api_requests(&client, ">".into()).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let janitor = tokio::spawn(janitor::run(
        Config::for_tests(&nats.url(), "jtest"),
        client,
        async {
            let _ = stopped.await;
        },
    ));
    // Stopped while it waits on JetStream: the subscription above is the
    // only one to hear its request, and it never answers.
    next(&mut api, "a JetStream request").await;
    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(1), janitor)
        .await
        .expect("stops within a second");
    assert!(result.unwrap().is_ok());
}

#[tokio::test]
async fn refuses_an_invalid_configuration() {
    let Some(nats) = NatsServer::start(false).await else {
        eprintln!("skipped: nats-server is not installed");
        return;
    };
    let client = async_nats::connect(nats.url()).await.unwrap();
    let config = Config {
        subject_prefix: "bad prefix".into(),
        ..Config::for_tests(&nats.url(), "x")
    };
    let err = janitor::run(config, client, std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, janitor::JanitorError::Config(_)), "{err}");
}
