#!/usr/bin/env bash
# The one test command: installs dependencies, checks formatting and lints,
# builds the service binaries (process-level tests run them), runs every test
# against Debian's nats-server (2.9.10), then the NATS-facing suites that
# depend most on the server (sessions, reaping, cluster) again against the
# current one (scripts/nats-current.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# A cold run gains nothing from incremental caches, which cost GBs of disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
scripts/setup-tests.sh
. scripts/nats-current.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo build --workspace --bins --quiet
cargo test --workspace --quiet "$@"
echo "test.sh: again against nats-server $("$NATS_CURRENT_BIN" --version)" >&2
NATS_SERVER_BIN="$NATS_CURRENT_BIN" cargo test -p system-tests --quiet \
  --test sessions --test reaping --test cluster "$@"
