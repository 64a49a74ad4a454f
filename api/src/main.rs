use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .init();
    let config = api::Config::parse();
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    let client = api::connect(&config.nats_url).await?;
    println!("api listening on http://{}", listener.local_addr()?);
    api::run(
        config,
        client,
        listener,
        bus_schema::connect::shutdown_signal(),
    )
    .await?;
    Ok(())
}
