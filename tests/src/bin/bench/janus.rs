//! Janus (Debian's `janus`) with its streaming plugin, as section 6 runs it:
//! the config files of `deploy/janus/` with this run's ports and folders, the
//! process with its log in `target/bench/logs/`, and viewers signalled over
//! the Janus HTTP API (create session, attach the streaming plugin, `watch`,
//! long-poll for the offer, `start` with the answer).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use system_tests::{free_port, Proc};
use webrtc::api::API;

use super::load::{self, Leave, LoadViewer};
use super::producer::Destination;

const JANUS_JCFG: &str = include_str!("../../../../deploy/janus/janus.jcfg");
const HTTP_JCFG: &str = include_str!("../../../../deploy/janus/janus.transport.http.jcfg");
const STREAMING_JCFG: &str = include_str!("../../../../deploy/janus/janus.plugin.streaming.jcfg");
/// The mountpoint id in `janus.plugin.streaming.jcfg`.
const MOUNTPOINT: u64 = 1;

pub struct Janus {
    pub proc: Proc,
    pub input: Destination,
    http: reqwest::Client,
    base: String,
    _config: tempfile::TempDir,
    tx: AtomicU64,
}

/// `JANUS_BIN` or `/usr/bin/janus`.
fn janus_bin() -> PathBuf {
    std::env::var_os("JANUS_BIN").map_or_else(|| PathBuf::from("/usr/bin/janus"), PathBuf::from)
}

/// The folder holding Janus's `plugins/` and `transports/`: `JANUS_LIB_DIR`,
/// or the first `/usr/lib/<multiarch>/janus` (Debian), `/usr/lib/janus`,
/// `/opt/janus/lib/janus` that has the streaming plugin.
fn janus_lib_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("JANUS_LIB_DIR") {
        return Ok(d.into());
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path().join("janus"))
                .collect()
        })
        .unwrap_or_default();
    candidates.push("/usr/lib/janus".into());
    candidates.push("/opt/janus/lib/janus".into());
    candidates
        .into_iter()
        .find(|d| d.join("plugins/libjanus_streaming.so").exists())
        .context("no Janus streaming plugin found (install Debian's `janus` with scripts/setup.sh, or set JANUS_LIB_DIR)")
}

/// Whether Janus is installed, for a clear note instead of a failure.
pub fn available() -> anyhow::Result<()> {
    let bin = janus_bin();
    if !bin.exists() {
        bail!(
            "{} is missing (scripts/setup.sh installs Debian's `janus`; or set JANUS_BIN)",
            bin.display()
        );
    }
    janus_lib_dir().map(|_| ())
}

fn fill(template: &str, vars: &[(&str, String)]) -> String {
    vars.iter().fold(template.to_string(), |s, (k, v)| {
        s.replace(&format!("@{k}@"), v)
    })
}

impl Janus {
    /// Starts Janus with a mountpoint on fresh UDP ports and waits until its
    /// HTTP API answers.
    pub async fn start(log: &Path) -> anyhow::Result<Janus> {
        let lib = janus_lib_dir()?;
        let config = tempfile::tempdir()?;
        let (http_port, video_port, audio_port) = (
            free_port(),
            system_tests::free_udp_port(),
            system_tests::free_udp_port(),
        );
        let dir = config.path().display().to_string();
        let vars = [
            ("CONFIG_DIR", dir.clone()),
            ("PLUGINS_DIR", lib.join("plugins").display().to_string()),
            (
                "TRANSPORTS_DIR",
                lib.join("transports").display().to_string(),
            ),
            ("EVENTS_DIR", lib.join("events").display().to_string()),
            ("LOGGERS_DIR", lib.join("loggers").display().to_string()),
            ("HTTP_PORT", http_port.to_string()),
            ("VIDEO_PORT", video_port.to_string()),
            ("AUDIO_PORT", audio_port.to_string()),
        ];
        for (name, t) in [
            ("janus.jcfg", JANUS_JCFG),
            ("janus.transport.http.jcfg", HTTP_JCFG),
            ("janus.plugin.streaming.jcfg", STREAMING_JCFG),
        ] {
            std::fs::write(config.path().join(name), fill(t, &vars))?;
        }
        let log = std::fs::File::create(log)?;
        let child = Command::new(janus_bin())
            .arg("--configs-folder")
            .arg(&dir)
            .arg("--config")
            .arg(config.path().join("janus.jcfg"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("spawn janus")?;
        let mut janus = Janus {
            proc: Proc { child },
            input: Destination {
                video: SocketAddr::from(([127, 0, 0, 1], video_port)),
                audio: SocketAddr::from(([127, 0, 0, 1], audio_port)),
            },
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(4)
                .build()?,
            base: format!("http://127.0.0.1:{http_port}/janus"),
            _config: config,
            tx: AtomicU64::new(0),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = janus.proc.child.try_wait() {
                bail!("janus exited at start ({status}); see its log");
            }
            if janus.create_session().await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!("janus did not answer on {} within 20 s", janus.base);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(janus)
    }

    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    async fn post(&self, path: &str, mut body: Value) -> anyhow::Result<Value> {
        let tx = self.tx.fetch_add(1, Ordering::Relaxed).to_string();
        body["transaction"] = json!(tx);
        let v: Value = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        match v["janus"].as_str() {
            Some("success") | Some("ack") => Ok(v),
            _ => bail!("janus refused {body}: {v}"),
        }
    }

    async fn create_session(&self) -> anyhow::Result<u64> {
        let v = self.post("", json!({"janus": "create"})).await?;
        v["data"]["id"].as_u64().context("no session id")
    }

    /// Long-polls the session until an event for `handle` carries a JSEP.
    async fn wait_jsep(&self, session: u64, handle: u64) -> anyhow::Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let events: Value = self
                .http
                .get(format!("{}/{session}?maxev=10", self.base))
                .send()
                .await?
                .json()
                .await?;
            let list = match events {
                Value::Array(a) => a,
                one => vec![one],
            };
            for e in list {
                if e["sender"].as_u64() == Some(handle) {
                    if let Some(err) = e["plugindata"]["data"].get("error") {
                        bail!("streaming plugin: {err}");
                    }
                    if e.get("jsep").is_some() {
                        return Ok(e);
                    }
                }
            }
        }
        bail!("no offer from janus within 20 s")
    }

    /// One viewer: session, handle, `watch`, the offer, the answer with
    /// `start`. The first-keyframe time counts from the `watch` request.
    pub async fn watch(&self, api: &API) -> anyhow::Result<LoadViewer> {
        let session = self.create_session().await?;
        let handle = self
            .post(
                &format!("/{session}"),
                json!({"janus": "attach", "plugin": "janus.plugin.streaming"}),
            )
            .await?["data"]["id"]
            .as_u64()
            .context("no handle id")?;
        let t0 = Instant::now();
        self.post(
            &format!("/{session}/{handle}"),
            json!({"janus": "message", "body": {"request": "watch", "id": MOUNTPOINT}}),
        )
        .await?;
        let (pc, rx) = load::peer(api, t0).await?;
        let event = self.wait_jsep(session, handle).await?;
        let offer = event["jsep"]["sdp"]
            .as_str()
            .context("jsep without sdp")?
            .to_string();
        let sdp = load::answer(&pc, offer).await?;
        self.post(
            &format!("/{session}/{handle}"),
            json!({
                "janus": "message",
                "body": {"request": "start"},
                "jsep": {"type": "answer", "sdp": sdp},
            }),
        )
        .await?;
        Ok(LoadViewer {
            pc,
            rx,
            leave: Leave::Janus { session },
        })
    }

    /// Destroys a viewer's session (Janus hangs up its peer connection).
    pub async fn leave(&self, session: u64) {
        let _ = self
            .post(&format!("/{session}"), json!({"janus": "destroy"}))
            .await;
    }
}
