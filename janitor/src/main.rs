//! The `janitor` binary: configuration, tracing, NATS, then [`janitor::run`].

use clap::Parser;
use tracing::info;
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
        client = connect(&config.nats_url) => client?,
        () = &mut shutdown => {
            info!("shutdown before NATS was reached");
            return Ok(());
        }
    };
    janitor::run(config, client, shutdown).await?;
    Ok(())
}

/// Connects to NATS (credentials in the URL are honoured, never logged),
/// retrying until it answers.
async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    bus_schema::connect::connect(url, "janitor")
        .await
        .map_err(|e| anyhow::anyhow!(e))
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
