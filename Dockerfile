# Builds the three services from this repository. docker-compose.yml picks
# one binary per service with `command:`.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake pkg-config nasm && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --bins -p api -p worker -p janitor

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/api /src/target/release/worker /src/target/release/janitor /usr/local/bin/
ENV RUST_LOG=info,async_nats=warn
