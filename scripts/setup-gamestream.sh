#!/usr/bin/env bash
# Installs the test tool of gamestream's interop test: PyPI's moonlight-python
# (it bundles moonlight-common-c, the library Moonlight's own clients use; GPL,
# a test tool only: nothing of it enters our tree) into its own virtualenv.
# gamestream/tests/moonlight_python.rs runs it when present and skips
# (saying so) when not. Override the location with GAMESTREAM_MOONLIGHT_VENV.
# Idempotent: does nothing when the tool is there.
set -euo pipefail
VENV="${GAMESTREAM_MOONLIGHT_VENV:-$HOME/.cache/streams/moonlight-python}"
if "$VENV/bin/python" -c "import moonlight_python" >/dev/null 2>&1; then
  exit 0
fi
echo "setup: installing moonlight-python 0.3.0 (a test tool) in $VENV" >&2
rm -rf "$VENV"
/usr/bin/python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "moonlight-python==0.3.0"
"$VENV/bin/python" -c "import moonlight_python" >/dev/null
