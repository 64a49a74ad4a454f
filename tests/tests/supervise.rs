//! `scripts/run.sh` supervises: a process that exits is started again
//! (with a backoff that doubles), the rest keeps running, and only Ctrl-C
//! stops everything, leaving no process behind. The script runs here as a
//! user runs it, against the workspace's built binaries (`BIN_DIR`) and a
//! nats-server of its own, with test timings.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use system_tests::*;

/// The script as a child process, in its own process group (as a terminal
/// runs a foreground command). On drop (a failed test) it gets SIGTERM,
/// and whatever it started is killed by the pids it recorded.
struct RunScript {
    child: Child,
    state: tempfile::TempDir,
}

const PROCESSES: [&str; 5] = ["nats", "janitor", "worker-1", "worker-2", "api"];

impl RunScript {
    fn start(nats_port: u16, api_port: u16) -> Self {
        let state = tempfile::tempdir().expect("tempdir");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let bin_dir = bin_path("worker").parent().expect("bin dir").to_path_buf();
        let out = std::fs::File::create(state.path().join("run.out")).expect("output file");
        let child = Command::new("bash")
            .arg(root.join("scripts/run.sh"))
            .env_remove("NATS_URL")
            .envs([
                ("BIN_DIR", bin_dir.display().to_string()),
                ("STATE_DIR", state.path().display().to_string()),
                ("NATS_SERVER_BIN", nats_server_bin().display().to_string()),
                ("NATS_PORT", nats_port.to_string()),
                ("API_LISTEN", format!("127.0.0.1:{api_port}")),
                ("WORKERS", "2".into()),
                ("RESTART_DELAY_MS", "200".into()),
                ("HEARTBEAT_INTERVAL", "250ms".into()),
                ("LEASE", "600ms".into()),
                ("DEAD_AFTER", "1s".into()),
                ("SCAN_INTERVAL", "250ms".into()),
                ("RUST_LOG", "warn".into()),
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("bash runs scripts/run.sh");
        Self { child, state }
    }

    fn pid_file(&self, name: &str) -> PathBuf {
        self.state.path().join(format!("{name}.pid"))
    }

    /// The pid `name` runs as now, if it runs.
    fn pid(&self, name: &str) -> Option<u32> {
        let pid = std::fs::read_to_string(self.pid_file(name))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        alive(pid).then_some(pid)
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.state.path().join("run.out")).unwrap_or_default()
    }

    /// Ctrl-C on a terminal: SIGINT to the script's whole process group.
    fn ctrl_c(&self) {
        let group = format!("-{}", self.child.id());
        let status = Command::new("kill")
            .args(["-INT", "--", &group])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -INT {group} failed");
    }
}

impl Drop for RunScript {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for name in PROCESSES {
            if let Some(pid) = self.pid(name) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// Whether `pid` is a running (not zombie) process.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

fn kill_9(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -9 {pid} failed");
}

/// Waits for a heartbeat of `worker` from a new process: its `seq` (which
/// each process counts up from 1) is not above the one heard before it,
/// `seq_before` at first.
async fn heartbeat_of_a_new_process(
    hb: &mut async_nats::Subscriber,
    worker: &str,
    mut seq_before: u64,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = heartbeat_from(hb, worker).await;
        let seq = v["seq"].as_u64().expect("seq");
        if seq <= seq_before {
            return seq;
        }
        seq_before = seq;
        assert!(
            Instant::now() < deadline,
            "no heartbeat from a restarted {worker} (last seq {seq})"
        );
    }
}

#[tokio::test]
async fn run_sh_restarts_a_killed_worker_with_backoff_and_ctrl_c_stops_everything() {
    init_tracing();
    let (nats_port, api_port) = (free_port(), free_port());
    let script = RunScript::start(nats_port, api_port);
    let started = Instant::now();
    let url = format!("nats://127.0.0.1:{nats_port}");
    let c = wait_for(
        "the script's nats-server",
        Duration::from_secs(20),
        || async { async_nats::connect(&url).await.ok() },
    )
    .await;
    let mut hb = subscribe(&c, "streams.v1.worker.*.heartbeat").await;
    heartbeat_from(&mut hb, "worker-1").await;
    heartbeat_from(&mut hb, "worker-2").await;
    let health = format!("http://127.0.0.1:{api_port}/healthz");
    wait_for("the api to answer", Duration::from_secs(20), || async {
        reqwest::get(&health)
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;
    let before: Vec<u32> = PROCESSES
        .iter()
        .map(|n| script.pid(n).unwrap_or_else(|| panic!("{n} runs")))
        .collect();
    eprintln!("all up {:?} after the script started", started.elapsed());

    // Two kill -9 in a row: each brings a new process, the second after a
    // doubled delay.
    let mut pids = before.clone();
    let mut seen = vec![];
    for round in 1..=2 {
        let old = script.pid("worker-1").expect("worker-1 runs");
        let last_seq = heartbeat_from(&mut hb, "worker-1").await["seq"]
            .as_u64()
            .unwrap();
        kill_9(old);
        let killed = Instant::now();
        let new = wait_for(
            "a new worker-1 process",
            Duration::from_secs(10),
            || async { script.pid("worker-1").filter(|p| *p != old) },
        )
        .await;
        let seq = heartbeat_of_a_new_process(&mut hb, "worker-1", last_seq).await;
        eprintln!(
            "kill -9 #{round}: pid {old} → {new}, heartbeating (seq {seq}) {:?} after the kill",
            killed.elapsed()
        );
        seen.push(new);
    }
    pids.extend(&seen);
    let out = script.output();
    assert!(
        out.contains("worker-1 exited (status 137)") && out.contains("restart 1 in 200 ms"),
        "{out}"
    );
    assert!(
        out.contains("restart 2 in 400 ms"),
        "backoff doubles: {out}"
    );
    // Nothing else was touched.
    for (name, pid) in PROCESSES.iter().zip(&before) {
        if *name != "worker-1" {
            assert_eq!(script.pid(name), Some(*pid), "{name} kept running");
        }
    }
    assert!(reqwest::get(&health).await.is_ok(), "the api still answers");

    // A session is running when Ctrl-C comes.
    let body = r#"{"id":"supervised","source":{"kind":"synthetic","width":160,"height":120,"fps":10,"bitrate_kbps":200}}"#;
    let info = raw_request(&c, "streams.v1.session.create", body).await;
    assert_eq!(info["result"]["state"], "live", "{info}");

    // Ctrl-C: the script stops everything, workers before NATS, and exits.
    drop(hb);
    drop(c);
    script.ctrl_c();
    let stopping = Instant::now();
    let mut script = script;
    let status = loop {
        if let Some(s) = script.child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(20),
            "the script did not exit within 20 s of Ctrl-C: {}",
            script.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "Ctrl-C → script exited {status:?} in {:?}",
        stopping.elapsed()
    );
    assert!(status.success(), "{status:?}");
    let out = script.output();
    for name in PROCESSES {
        assert!(out.contains(&format!("{name} stopped")), "{out}");
    }
    let (workers_stopped, nats_stopped) = (
        out.rfind("worker-1 stopped").unwrap(),
        out.find("nats stopped").unwrap(),
    );
    assert!(workers_stopped < nats_stopped, "NATS stops last: {out}");
    for pid in pids {
        assert!(!alive(pid), "pid {pid} outlived the script");
    }
    // NATS was still up when the worker stopped: its end is in the
    // registry, which a server started on the script's store reads back.
    let port = free_port();
    let mut nats = Command::new(nats_server_bin())
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(script.state.path().join("jetstream"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server starts");
    let url = format!("nats://127.0.0.1:{port}");
    let c = wait_for(
        "nats on the script's store",
        Duration::from_secs(10),
        || async { async_nats::connect(&url).await.ok() },
    )
    .await;
    let rec = wait_for(
        "the registry to be readable",
        Duration::from_secs(10),
        || registry_get(&c, "supervised"),
    )
    .await;
    let _ = nats.kill();
    let _ = nats.wait();
    assert_eq!(rec["state"], "ended", "{rec}");
    assert_eq!(rec["ended"]["reason"], "worker_shutdown", "{rec}");
}
