#!/usr/bin/env bash
# Installs what the system and its tests need from Debian's packages:
# nats-server (the bus), cmake + pkg-config (the opus crate builds libopus), ffmpeg
# (ffprobe checks the H.264 the source encodes), chromium + chromium-driver
# (end-to-end browser tests), janus (the relay the bench compares against),
# nasm (openh264-sys2 assembles OpenH264's SIMD kernels with it when it is on
# PATH at build time, and silently builds plain C without it: the synthetic
# source then costs twice the CPU; docs/benchmarks.md, "OpenH264 with its
# assembly").
# Idempotent: installs only what is missing.
set -euo pipefail
pkgs=(nats-server cmake pkg-config nasm ffmpeg chromium chromium-driver janus)
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
