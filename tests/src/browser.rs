//! End-to-end browser harness: a `chromedriver` child process on a free
//! port (its whole process group killed on drop) and one headless chromium
//! per [`Browser`], each with a fresh profile directory, driven over
//! WebDriver with `fantoccini`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/setup.sh`).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Serializes the browser tests of one test binary: chromium is heavy and
/// the machine may have two cores. Lock it at the start of each test.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Panics with a pointer to `scripts/setup.sh` unless both binaries exist.
pub fn require_chromium() {
    for bin in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: run scripts/setup.sh (installs chromium and chromium-driver)"
        );
    }
}

/// A `chromedriver` child process. It runs in its own process group, and
/// dropping it SIGKILLs that group: chromedriver and every chromium it
/// started.
pub struct ChromeDriver {
    pub port: u16,
    child: Option<Child>,
}

impl ChromeDriver {
    /// Starts chromedriver and waits until `GET /status` says it is ready.
    pub async fn start() -> Self {
        require_chromium();
        let port = crate::free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("chromedriver starts (run scripts/setup.sh to install chromium-driver)");
        let driver = Self {
            port,
            child: Some(child),
        };
        let http = reqwest::Client::new();
        let status = format!("{}/status", driver.url());
        crate::wait_for(
            "chromedriver to answer GET /status",
            Duration::from_secs(20),
            || {
                let (http, status) = (&http, &status);
                async move {
                    let v: Value = http.get(status).send().await.ok()?.json().await.ok()?;
                    (v["value"]["ready"] == json!(true)).then_some(())
                }
            },
        )
        .await;
        driver
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts a new chromium (a WebDriver session) with its own profile.
    /// It signals its real addresses (mDNS hiding off), so ICE on loopback
    /// needs nothing from the worker beyond the candidates it is sent.
    pub async fn browser(&self, name: &str) -> Browser {
        self.launch(name, Addresses::Shown).await
    }

    /// A chromium as it ships: it names its host candidates with random
    /// `….local` mDNS names instead of its addresses, which the worker does
    /// not resolve (it learns the address from the browser's checks).
    pub async fn browser_hiding_addresses(&self, name: &str) -> Browser {
        self.launch(name, Addresses::HiddenBehindMdns).await
    }

    async fn launch(&self, name: &str, addresses: Addresses) -> Browser {
        // A page allowed to capture media gets its real addresses whatever
        // the feature says, so the browser hiding them grants nothing.
        let (mdns, media) = match addresses {
            Addresses::Shown => (
                "--disable-features=WebRtcHideLocalIpsWithMdns",
                "--use-fake-ui-for-media-stream",
            ),
            Addresses::HiddenBehindMdns => (
                "--enable-features=WebRtcHideLocalIpsWithMdns",
                "--deny-permission-prompts",
            ),
        };
        let profile = tempfile::Builder::new()
            .prefix("chromium-profile-")
            .tempdir()
            .expect("profile tempdir");
        let caps = json!({
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    mdns,
                    "--autoplay-policy=no-user-gesture-required",
                    media,
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!("an object literal")
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url())
            .await
            .unwrap_or_else(|e| panic!("chromedriver starts chromium for browser {name}: {e}"));
        let session_id = client.session_id().await.ok().flatten().unwrap_or_default();
        Browser {
            name: name.to_string(),
            client: Some(client),
            webdriver: self.url(),
            session_id,
            console: std::sync::Mutex::new(Vec::new()),
            _profile: profile,
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The group id is chromedriver's pid (process_group(0)).
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a chromium's ICE candidates carry.
#[derive(Debug, Clone, Copy)]
enum Addresses {
    Shown,
    HiddenBehindMdns,
}

/// One headless chromium. [`Browser::close`] ends its WebDriver session,
/// which quits that chromium; a browser dropped without closing is killed
/// with its chromedriver.
pub struct Browser {
    pub name: String,
    client: Option<Client>,
    webdriver: String,
    session_id: String,
    /// Console entries read so far (chromedriver hands each out once).
    console: std::sync::Mutex<Vec<String>>,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn client(&self) -> &Client {
        self.client.as_ref().expect("browser is open")
    }

    /// Navigates to `url` and waits for the page's load event.
    pub async fn open(&self, url: &str) {
        self.client()
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("browser {} opens {url}: {e}", self.name));
    }

    /// Runs `body` as the body of an async function in the page and returns
    /// what it returns, e.g. `return await window.viewer.stats()`. A thrown
    /// exception or a rejected promise is an `Err`.
    pub async fn eval_async(&self, body: &str) -> anyhow::Result<Value> {
        let script = format!(
            "const done = arguments[arguments.length - 1];\n\
             (async () => {{ {body} }})().then(\n\
               v => done({{ ok: v === undefined ? null : v }}),\n\
               e => done({{ err: String((e && e.stack) || e) }}));"
        );
        let v = self
            .client()
            .execute_async(&script, vec![])
            .await
            .with_context(|| format!("webdriver execute_async in browser {}", self.name))?;
        match v.get("ok") {
            Some(ok) => Ok(ok.clone()),
            None => Err(anyhow!(
                "script failed in browser {}: {}",
                self.name,
                v["err"]
            )),
        }
    }

    /// Runs synchronous `js` (with `return`) in the page.
    pub async fn execute(&self, js: &str) -> anyhow::Result<Value> {
        self.client()
            .execute(js, vec![])
            .await
            .with_context(|| format!("webdriver execute in browser {}", self.name))
    }

    /// `window.viewer.stats()`: framesDecoded, frameWidth, frameHeight,
    /// connected, viewers, ended, error, role.
    pub async fn stats(&self) -> anyhow::Result<Value> {
        self.eval_async("return await window.viewer.stats()").await
    }

    /// Polls [`Browser::stats`] until `pred` holds; at the deadline panics
    /// with `what`, the last stats and the page's diagnostics.
    pub async fn wait_stats(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.stats().await {
                Ok(s) if pred(&s) => return s,
                Ok(s) => s.to_string(),
                Err(e) => format!("error: {e:#}"),
            };
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting in browser {} for {what}; last stats: {last}\n{}",
                    self.name,
                    self.diagnostics().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The page's view of itself (signalling and peer connection states,
    /// HUD and notice text) and the browser console, for failure messages.
    pub async fn diagnostics(&self) -> String {
        let state = self
            .execute(
                r#"const v = window.viewer; if (!v) return "window.viewer is undefined";
                   const s = v.state;
                   return JSON.stringify({
                     role: s.role, peer: s.peer, worker: s.worker, viewers: s.viewers, ended: s.ended,
                     connected: s.connected, error: s.error, fatal: s.fatal || false, attempts: s.attempts,
                     sentInputs: s.sentInputs,
                     ws: s.ws && s.ws.readyState,
                     pc: s.pc && { connection: s.pc.connectionState, ice: s.pc.iceConnectionState,
                                   signaling: s.pc.signalingState },
                     dc: s.dc && s.dc.readyState,
                     hud: document.getElementById("hud").textContent,
                     notice: document.getElementById("notice").textContent,
                   });"#,
            )
            .await
            .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
            .unwrap_or_else(|e| format!("(page state unavailable: {e:#})"));
        let console = self.console().await;
        format!(
            "page state of {}: {state}\nconsole of {}:\n{console}",
            self.name, self.name
        )
    }

    /// The browser console so far, one entry a line.
    pub async fn console(&self) -> String {
        let url = format!("{}/session/{}/se/log", self.webdriver, self.session_id);
        let got = async {
            let v: Value = reqwest::Client::new()
                .post(&url)
                .json(&json!({"type": "browser"}))
                .send()
                .await?
                .json()
                .await?;
            Ok::<_, reqwest::Error>(v)
        }
        .await;
        let mut seen = self.console.lock().expect("console lock");
        let note = match got {
            Ok(v) => match v["value"].as_array() {
                Some(entries) => {
                    seen.extend(entries.iter().map(|e| {
                        format!(
                            "  [{}] {}",
                            e["level"].as_str().unwrap_or("?"),
                            e["message"]
                        )
                    }));
                    None
                }
                None => Some(format!("(no log: {v})")),
            },
            Err(e) => Some(format!("(console unavailable: {e})")),
        };
        let mut out = if seen.is_empty() {
            "  (empty)".to_string()
        } else {
            seen.join("\n")
        };
        if let Some(n) = note {
            out.push_str(&format!("\n  {n}"));
        }
        out
    }

    /// Ends the WebDriver session: chromium quits, its connections close.
    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            client
                .close()
                .await
                .unwrap_or_else(|e| panic!("browser {} closes: {e}", self.name));
        }
    }
}
