use std::sync::Arc;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .init();
    let config = worker::Config::parse();
    let client = worker::connect(&config.nats_url, "worker").await?;
    let factory = Arc::new(worker::source::BuiltinFactory);
    worker::run(
        config,
        client,
        factory,
        bus_schema::connect::shutdown_signal(),
    )
    .await?;
    Ok(())
}
