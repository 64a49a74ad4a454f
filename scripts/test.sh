#!/usr/bin/env bash
# The one test command: installs dependencies, checks formatting and lints,
# builds the service binaries (process-level tests run them), runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# A cold run gains nothing from incremental caches, which cost GBs of disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo build --workspace --bins --quiet
cargo test --workspace --quiet "$@"
