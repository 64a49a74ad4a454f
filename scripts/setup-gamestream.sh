#!/usr/bin/env bash
# Installs the test tool of gamestream's interop test: PyPI's moonlight-python
# (it bundles moonlight-common-c, the library Moonlight's own clients use; GPL,
# a test tool only: nothing of it enters our tree) into its own virtualenv.
# gamestream/tests/moonlight_python.rs runs it when present and skips
# (saying so) when not. Override the location with GAMESTREAM_MOONLIGHT_VENV.
set -euo pipefail
VENV="${GAMESTREAM_MOONLIGHT_VENV:-$HOME/.cache/roth/moonlight-python}"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet "moonlight-python==0.3.0"
"$VENV/bin/python" -c "import moonlight_python; print('moonlight-python', moonlight_python.__version__ if hasattr(moonlight_python, '__version__') else 'installed', 'in', '$VENV')"
