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

    let mut shutdown = Box::pin(bus_schema::connect::shutdown_signal());
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
    Ok(bus_schema::connect::connect(url, "janitor").await?)
}
