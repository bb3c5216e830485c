#!/usr/bin/env bash
# The test command (README): install the headless ComfyUI hosts and the pack's dependencies
# (once; re-runs are instant), then run the unit and end-to-end tests on ComfyUI 0.3.75, and the
# tests that matter for a host that validates every dropdown and quantises its own way (native
# models, templates) on ComfyUI 0.33 (from ../shared/hosts; skipped, with a line saying
# so, when that tarball is absent). Extra arguments go to pytest and run on 0.3.75 only, e.g.
# `bash scripts/test.sh tests/unit -k conventions`.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1   # weights and configs are local only; never ask a hub
bash scripts/setup_host.sh
PY=.cache/host/venv/bin/python
if [ $# -gt 0 ]; then
  exec $PY -m pytest "$@"
fi
status=0
$PY -m pytest || status=$?
set +e
HOST=0.33 bash scripts/setup_host.sh
host_rc=$?
set -e
if [ $host_rc -eq 3 ]; then
  echo "ComfyUI 0.33 tests skipped: no ../shared/hosts/comfyui-0.33.0.tar.gz"
elif [ $host_rc -ne 0 ]; then
  echo "ComfyUI 0.33 host could not be installed (exit $host_rc)"; status=1
else
  echo "== ComfyUI 0.33: native-model tests (in its own venv) and end-to-end tests =="
  PY33=$PWD/.cache/host-0.33/venv/bin/python
  COMFY_DIR=$PWD/.cache/host-0.33/ComfyUI COMFY_PYTHON=$PY33 REALIZ3D_HOST=0.33 \
    $PY33 -m pytest tests/unit/test_native_model.py tests/unit/test_native_loaders.py tests/e2e/test_native.py tests/e2e/test_templates.py \
      tests/e2e/test_refany3d.py::test_template_runs_with_the_tiny_model \
      tests/e2e/test_realiz3d.py::test_multiview_template_with_the_tiny_model \
      tests/e2e/test_realiz3d.py::test_texturing_template_with_the_tiny_model || status=1
fi
exit $status
