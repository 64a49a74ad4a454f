#!/usr/bin/env bash
# Installs what building and running the system needs, from Debian's
# packages: nats-server (the bus), cmake + pkg-config (the opus crate builds
# libopus), nasm (openh264-sys2 assembles OpenH264's SIMD kernels with it
# when it is on PATH at build time, and silently builds plain C without it:
# the synthetic source then costs twice the CPU; docs/benchmarks.md,
# "OpenH264 with its assembly"). The tests need more: scripts/setup-tests.sh.
# Idempotent: installs only what is missing.
set -euo pipefail
. "$(dirname "$0")/apt-install.sh"
apt_install nats-server cmake pkg-config nasm
