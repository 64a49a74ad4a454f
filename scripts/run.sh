#!/usr/bin/env bash
# Brings the whole system up: a NATS server with JetStream (unless NATS_URL
# is set), the janitor, two workers and the api. Prints the api's address.
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --bins --quiet
bin=target/release
state=.run
mkdir -p "$state"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

if [ -z "${NATS_URL:-}" ]; then
  port="${NATS_PORT:-4222}"
  nats-server -js -a 127.0.0.1 -p "$port" -sd "$state/jetstream" >"$state/nats.log" 2>&1 &
  pids+=($!)
  export NATS_URL="nats://127.0.0.1:$port"
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  echo "nats-server on $NATS_URL (JetStream in $state/jetstream)"
fi

export API_LISTEN="${API_LISTEN:-127.0.0.1:8080}"
"$bin/janitor" >"$state/janitor.log" 2>&1 & pids+=($!)
WORKER_ID=worker-1 "$bin/worker" >"$state/worker-1.log" 2>&1 & pids+=($!)
WORKER_ID=worker-2 "$bin/worker" >"$state/worker-2.log" 2>&1 & pids+=($!)
"$bin/api" >"$state/api.log" 2>&1 & pids+=($!)
echo "api on http://$API_LISTEN  (logs in $state/, Ctrl-C stops everything)"
echo "try: curl -s -XPOST http://$API_LISTEN/api/sessions -d '{\"id\":\"demo\"}'"
wait -n "${pids[@]}"
