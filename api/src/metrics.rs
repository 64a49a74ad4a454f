//! What `GET /metrics` reports, in the Prometheus text format: the api's
//! live tokio tasks, its open viewer WebSockets, and the process's open file
//! descriptors and resident memory (Linux; absent elsewhere). Enough for an
//! operator (and the load tests) to see that nothing leaks.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Counters shared by every request handler.
#[derive(Clone, Default)]
pub struct Metrics {
    sockets: Arc<AtomicU64>,
    sockets_total: Arc<AtomicU64>,
}

/// Counts one open viewer WebSocket until dropped.
pub struct SocketGuard(Arc<AtomicU64>);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn socket_opened(&self) -> SocketGuard {
        self.sockets.fetch_add(1, Ordering::Relaxed);
        self.sockets_total.fetch_add(1, Ordering::Relaxed);
        SocketGuard(self.sockets.clone())
    }

    /// The metrics as Prometheus text. Must run inside the tokio runtime.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let rt = tokio::runtime::Handle::current().metrics();
        gauge(
            "api_tokio_alive_tasks",
            "Tasks alive in the api's tokio runtime.",
            "gauge",
            rt.num_alive_tasks() as u64,
        );
        gauge(
            "api_viewer_websockets",
            "Viewer WebSockets open now.",
            "gauge",
            self.sockets.load(Ordering::Relaxed),
        );
        gauge(
            "api_viewer_websockets_total",
            "Viewer WebSockets opened since start.",
            "counter",
            self.sockets_total.load(Ordering::Relaxed),
        );
        if let Some(n) = open_fds() {
            gauge("process_open_fds", "Open file descriptors.", "gauge", n);
        }
        if let Some(b) = resident_bytes() {
            gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                "gauge",
                b,
            );
        }
        out
    }
}

fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Reads one metric's value from Prometheus text (for tests and tools).
pub fn parse(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn renders_prometheus_text_and_counts_sockets() {
        let m = Metrics::default();
        let g1 = m.socket_opened();
        let g2 = m.socket_opened();
        drop(g1);
        let text = m.render();
        assert_eq!(parse(&text, "api_viewer_websockets"), Some(1.0));
        assert_eq!(parse(&text, "api_viewer_websockets_total"), Some(2.0));
        assert!(parse(&text, "api_tokio_alive_tasks").is_some(), "{text}");
        assert!(text.contains("# TYPE api_viewer_websockets gauge"));
        if cfg!(target_os = "linux") {
            assert!(parse(&text, "process_open_fds").unwrap() > 0.0);
            assert!(parse(&text, "process_resident_memory_bytes").unwrap() > 0.0);
        }
        drop(g2);
        assert_eq!(parse(&m.render(), "api_viewer_websockets"), Some(0.0));
    }
}
