"""pyrender's two offscreen platforms (EGL, OSMesa fallback) see exactly the same faces."""
import ctypes.util
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = """
import sys; sys.path.insert(0, 'scripts')
from pack_import import import_pack; import_pack()
import numpy as np
from realiz3d.renderers import load_mesh, normalize, orbit_rig, render_views
from realiz3d.renderers.backend_pyrender import gl_platform
m = normalize(load_mesh('assets/sample_mesh.glb'))
b = render_views(m, orbit_rig(3, elevation_deg=20.0), 96, 80, backend='pyrender')
assert gl_platform() == sys.argv[2], gl_platform()
np.save(sys.argv[1], b.face_id)
"""


@pytest.mark.parametrize("platform,library", [("egl", "EGL"), ("osmesa", "OSMesa")])
def test_platform_renders_same_faces_as_raycast(tmp_path, platform, library):
    if not ctypes.util.find_library(library):
        pytest.fail(f"lib{library} missing: scripts/setup_host.sh installs it (Debian)")
    out = tmp_path / f"{platform}.npy"
    env = dict(os.environ, PYOPENGL_PLATFORM=platform)
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(out), platform], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    from realiz3d.renderers import load_mesh, normalize, orbit_rig, render_views
    ref = render_views(normalize(load_mesh(os.path.join(ROOT, "assets", "sample_mesh.glb"))),
                       orbit_rig(3, elevation_deg=20.0), 96, 80, backend="raycast").face_id
    ids = np.load(out)
    assert ids.shape == (3, 80, 96)
    assert (ids != ref).mean() < 0.002      # only ties on shared edges may differ


FALLBACK = """
import sys; sys.path.insert(0, 'scripts')
from pack_import import import_pack; import_pack()
from realiz3d.renderers import InputError, load_mesh, orbit_rig, render_views
m = load_mesh('assets/sample_mesh.glb')
print(render_views(m, orbit_rig(1), 16, 16, backend='auto').backend)
try:
    render_views(m, orbit_rig(1), 16, 16, backend='pyrender')
except InputError as exc:
    print('error', exc.input_name)
"""


def test_auto_falls_back_to_raycast_without_gl():
    env = dict(os.environ, PYOPENGL_PLATFORM="no-such-platform")
    run = subprocess.run([sys.executable, "-c", FALLBACK], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split("\n")[:2] == ["raycast", "error backend"], run.stdout + run.stderr[-2000:]
