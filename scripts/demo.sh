#!/usr/bin/env bash
# The main job on the embedded default (README): render the bundled sample mesh through the
# example workflow in a real headless ComfyUI and copy the outputs to demo_output/ (or $1).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1   # weights and configs are local only; never ask a hub
bash scripts/setup_host.sh
exec .cache/host/venv/bin/python scripts/demo.py "${1:-demo_output}"
