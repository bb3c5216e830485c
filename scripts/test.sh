#!/usr/bin/env bash
# The test command (README): install the headless ComfyUI host and the pack's dependencies
# into .cache/host (once; re-runs are instant), then run the unit and end-to-end tests.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/unit -k conventions`.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1   # weights and configs are local only; never ask a hub
bash scripts/setup_host.sh
exec .cache/host/venv/bin/python -m pytest "$@"
