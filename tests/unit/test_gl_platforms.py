"""pyrender's two offscreen platforms (EGL, OSMesa fallback), in this process and in the GL worker,
see exactly the same faces; without any GL 'auto' falls back to ray casting and 'pyrender' says why."""
import ctypes.util
import os
import subprocess
import sys

import numpy as np
import pytest

from realiz3d.renderers import gl_worker, load_mesh, normalize, orbit_rig, render_views

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = """
import sys; sys.path.insert(0, 'scripts')
from pack_import import import_pack; import_pack()
import numpy as np
from realiz3d.renderers import load_mesh, normalize, orbit_rig, render_views
m = normalize(load_mesh('assets/sample_mesh.glb'))
b = render_views(m, orbit_rig(3, elevation_deg=20.0), 96, 80, backend='pyrender (in-process)')
print(b.backend)
np.save(sys.argv[1], b.face_id)
"""


@pytest.mark.parametrize("platform,library", [("egl", "EGL"), ("osmesa", "OSMesa")])
def test_platform_renders_same_faces_in_process_and_in_the_worker(tmp_path, platform, library):
    if not ctypes.util.find_library(library):
        pytest.fail(f"lib{library} missing: scripts/setup_host.sh installs it (Debian)")
    out = tmp_path / f"{platform}.npy"
    env = dict(os.environ, PYOPENGL_PLATFORM=platform)           # in-process GL honours the user's platform
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == f"pyrender (in-process, {platform})", run.stdout
    mesh = normalize(load_mesh(os.path.join(ROOT, "assets", "sample_mesh.glb")))
    cams = orbit_rig(3, elevation_deg=20.0)
    ref = render_views(mesh, cams, 96, 80, backend="raycast").face_id
    ids = np.load(out)
    assert ids.shape == (3, 80, 96)
    assert (ids != ref).mean() < 0.002      # only ties on shared edges may differ
    client = gl_worker.GLWorker(platforms=(platform,))
    try:
        vis = gl_worker.WorkerVisibility(mesh.vertices, mesh.faces, client=client)
        np.testing.assert_array_equal(np.stack([vis.face_ids(c, 96, 80) for c in cams]), ids)
    finally:
        client.close()


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
    print(exc.message)
"""


def test_auto_falls_back_to_raycast_without_gl():
    # no in-process platform, and the worker (which picks its own) finds no library
    env = dict(os.environ, PYOPENGL_PLATFORM="no-such-platform", REALIZ3D_GL_HIDE_LIBS="EGL,OSMesa")
    run = subprocess.run([sys.executable, "-c", FALLBACK], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.split("\n")
    assert lines[:2] == ["raycast", "error backend"], run.stdout + run.stderr[-2000:]
    assert "no-such-platform" in lines[2] and "EGL: libEGL not found" in lines[2], lines[2]
    assert "OSMesa: libOSMesa not found" in lines[2], lines[2]
    assert "rendering with the raycast backend" in run.stderr       # the fallback is logged, not silent
