#!/usr/bin/env bash
# Brings the whole system up and keeps it up: a NATS server with JetStream
# (unless NATS_URL is set), the janitor, the workers and the api, each under
# a supervisor that restarts it when it exits, whatever the reason (a crash,
# kill -9), after a backoff: RESTART_DELAY_MS (default 500) doubled at each
# quick exit up to RESTART_MAX_DELAY_MS (default 30000), back to the start
# once a run lasted STABLE_AFTER_S (default 30). Only Ctrl-C or SIGTERM stops
# everything: the api, workers and janitor first (workers end their sessions
# with `worker_shutdown` while NATS is still there), then NATS.
#
# Each process runs in its own session (setsid), so a Ctrl-C on the terminal
# reaches this script alone and the stop order holds; its pid is in
# $STATE_DIR/<name>.pid while it runs, its output in $STATE_DIR/<name>.log.
#
# Settings (environment): NATS_URL, NATS_PORT (4222), NATS_SERVER_BIN (the
# server binary: nats-server on PATH), API_LISTEN (127.0.0.1:8080), WORKERS
# (2), STATE_DIR (.run), BIN_DIR (a directory holding built api, worker and
# janitor binaries: skips setup and the release build). Every other
# variable reaches the services (HEARTBEAT_INTERVAL, LEASE, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BIN_DIR:-}" ]; then
  scripts/setup.sh
  cargo build --release --bins --quiet
  BIN_DIR=target/release
fi
state="${STATE_DIR:-.run}"
mkdir -p "$state"
delay_start="${RESTART_DELAY_MS:-500}"
delay_max="${RESTART_MAX_DELAY_MS:-30000}"
stable_after="${STABLE_AFTER_S:-30}"

say() { echo "run.sh: $*"; }

# supervise NAME COMMAND...: runs COMMAND, restarts it when it exits, until
# this subshell gets SIGTERM; then stops COMMAND (SIGTERM, then SIGKILL
# after 10 s) and returns.
supervise() {
  set +e
  local name="$1"
  shift
  local stopping=0 child="" delay="$delay_start" restarts=0
  # Ctrl-C reaches the whole process group: the supervisors leave it to
  # the main script, which stops them in order.
  trap '' INT
  trap 'stopping=1; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM
  while [ "$stopping" -eq 0 ]; do
    local began=$SECONDS status=0
    setsid "$@" >>"$state/$name.log" 2>&1 </dev/null &
    child=$!
    echo "$child" >"$state/$name.pid"
    # `wait` returns early when the TERM trap runs; wait again for the exit.
    while kill -0 "$child" 2>/dev/null; do
      wait "$child" 2>/dev/null && status=0 || status=$?
      if [ "$stopping" -eq 1 ]; then
        stop_child "$child"
        status=$?
        break
      fi
    done
    rm -f "$state/$name.pid"
    child=""
    [ "$stopping" -eq 1 ] && break
    if [ $((SECONDS - began)) -ge "$stable_after" ]; then
      delay="$delay_start"
    fi
    restarts=$((restarts + 1))
    say "$name exited (status $status) after $((SECONDS - began)) s; restart $restarts in ${delay} ms"
    # An interruptible sleep: SIGTERM during the backoff ends it at once.
    sleep "$(printf '%d.%03d' $((delay / 1000)) $((delay % 1000)))" &
    child=$!
    wait "$child" 2>/dev/null || true
    kill "$child" 2>/dev/null || true
    child=""
    delay=$((delay * 2 > delay_max ? delay_max : delay * 2))
  done
  say "$name stopped"
}

# stop_child PID: SIGTERM sent already; waits up to 10 s, then SIGKILL.
stop_child() {
  local pid="$1"
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "pid $pid ignored SIGTERM for 10 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null
}

services=()
nats_sup=""
stop_all() {
  trap - INT TERM
  say "stopping"
  for p in "${services[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${services[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$nats_sup" ]; then
    kill -TERM "$nats_sup" 2>/dev/null || true
    wait "$nats_sup" 2>/dev/null || true
  fi
  say "stopped"
  exit 0
}
trap stop_all INT TERM

if [ -z "${NATS_URL:-}" ]; then
  port="${NATS_PORT:-4222}"
  nats_bin="${NATS_SERVER_BIN:-nats-server}"
  supervise nats "$nats_bin" -js -a 127.0.0.1 -p "$port" -sd "$state/jetstream" &
  nats_sup=$!
  export NATS_URL="nats://127.0.0.1:$port"
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  say "nats-server on $NATS_URL (JetStream in $state/jetstream)"
fi

export API_LISTEN="${API_LISTEN:-127.0.0.1:8080}"
supervise janitor "$BIN_DIR/janitor" & services+=($!)
for i in $(seq "${WORKERS:-2}"); do
  WORKER_ID="worker-$i" supervise "worker-$i" "$BIN_DIR/worker" & services+=($!)
done
supervise api "$BIN_DIR/api" & services+=($!)
say "api on http://$API_LISTEN  (logs in $state/; a process that exits is restarted; Ctrl-C stops everything)"
say "try: curl -s -XPOST http://$API_LISTEN/api/sessions -d '{\"id\":\"demo\"}'"
# `wait` returns when a trapped signal arrives; stop_all then exits.
while true; do
  wait || true
  sleep 1 &
  wait $! || true
done
