#!/usr/bin/env bash
# The test command (README): install the headless ComfyUI host and the pack's dependencies
# into .cache/host (once; re-runs are instant), then run the unit and end-to-end tests.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/unit -k conventions`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_host.sh
exec .cache/host/venv/bin/python -m pytest "$@"
