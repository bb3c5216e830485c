#!/usr/bin/env bash
# The test command (README): install the headless ComfyUI hosts and the pack's dependencies
# (once; re-runs are instant), then run the unit and end-to-end tests on ComfyUI 0.3.75, and the
# end-to-end and browser tests plus the unit tests that touch the host's own types and GL (native
# models and meshes, OminiControl on the native model, the GL worker) on ComfyUI 0.33 (from ../shared/hosts; skipped, with a line
# saying so, when that tarball is absent). Extra arguments go to pytest and run on 0.3.75 only, e.g.
# `bash scripts/test.sh tests/unit -k conventions`.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1   # weights and configs are local only; never ask a hub
bash scripts/setup_host.sh
browser_rc=0; bash scripts/setup_browser.sh >/dev/null || browser_rc=$?
[ $browser_rc -eq 0 ] || echo "Browser tests (tests/browser) will be skipped: chromium not installed (scripts/setup_browser.sh exit $browser_rc)"
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
  echo "== ComfyUI 0.33: native-model and GL tests (in its own venv), every end-to-end and browser test =="
  PY33=$PWD/.cache/host-0.33/venv/bin/python
  COMFY_DIR=$PWD/.cache/host-0.33/ComfyUI COMFY_PYTHON=$PY33 REALIZ3D_HOST=0.33 \
    $PY33 -m pytest tests/unit/test_native_model.py tests/unit/test_native_loaders.py tests/unit/test_native_mesh.py tests/unit/test_ominicontrol.py \
      tests/unit/test_gl_worker.py tests/e2e tests/browser || status=1
fi
exit $status
