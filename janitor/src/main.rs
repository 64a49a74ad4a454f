//! The `janitor` binary: configuration, tracing, NATS, then [`janitor::run`].

use std::time::Duration;

use clap::Parser;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = janitor::Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    config.validate()?;

    let mut shutdown = Box::pin(shutdown_signal());
    let client = tokio::select! {
        client = connect(&config.nats_url) => client,
        () = &mut shutdown => {
            info!("shutdown before NATS was reached");
            return Ok(());
        }
    };
    janitor::run(config, client, shutdown).await?;
    Ok(())
}

/// Connects to NATS, retrying with backoff until it answers.
async fn connect(url: &str) -> async_nats::Client {
    let mut failures: u32 = 0;
    loop {
        match async_nats::ConnectOptions::new()
            .name("janitor")
            .connect(url)
            .await
        {
            Ok(client) => {
                info!(url, "connected to NATS");
                return client;
            }
            Err(e) => {
                if failures == 0 {
                    warn!(url, error = %e, "cannot reach NATS; retrying");
                }
                failures = failures.saturating_add(1);
                let backoff = Duration::from_millis(250).saturating_mul(1 << failures.min(5));
                tokio::time::sleep(backoff.min(Duration::from_secs(5))).await;
            }
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    info!("shutdown requested");
}
