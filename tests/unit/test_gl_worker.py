"""The pack's GL worker process: the same face ids as in-process GL, restarted when it dies, chosen
by 'auto' in a process that loaded ANGLE as ComfyUI 0.33 does, and a clear error without GL."""
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from realiz3d.renderers import Camera, InputError, load_mesh, look_at, normalize, orbit_rig, render_views
from realiz3d.renderers import backend_pyrender, gl_worker
from realiz3d.renderers.backend_raycast import RaycastVisibility
from realiz3d.renderers.render import make_visibility
from meshes import icosphere

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
W, H = 96, 80


@pytest.fixture(scope="module")
def sample():
    return normalize(load_mesh(os.path.join(ROOT, "assets", "sample_mesh.glb")))


def cameras():
    """Perspective orbit views plus an orthographic one (both projections of the GL pass)."""
    return orbit_rig(3, elevation_deg=20.0) + [Camera(look_at((2.0, 1.5, 3.0)), projection="orthographic",
                                                      ortho_height=2.6)]


def ids_of(vis, cams=None):
    return np.stack([vis.face_ids(c, W, H) for c in (cams or cameras())])


@pytest.fixture
def client():
    c = gl_worker.GLWorker()
    yield c
    c.close()


def test_worker_ids_equal_in_process_and_match_raycast(sample, client):
    worker = ids_of(gl_worker.WorkerVisibility(sample.vertices, sample.faces, client=client))
    in_process = ids_of(backend_pyrender.PyrenderVisibility(sample.vertices, sample.faces))
    raycast = ids_of(RaycastVisibility(sample.vertices, sample.faces))
    assert worker.shape == (4, H, W) and worker.dtype == np.int32
    np.testing.assert_array_equal(worker, in_process)           # one GL code path: bit for bit
    assert (worker >= 0).mean() > 0.1 and (worker == -1).any()
    assert (worker != raycast).mean() < 0.002                    # only ties on shared edges may differ


@pytest.mark.parametrize("platform", ["egl", "osmesa"])
@pytest.mark.parametrize("transport", ["mmap", "pipe"])
def test_each_platform_and_transport_gives_the_same_ids(platform, transport):
    mesh = icosphere(3)                                          # closed: back faces culled
    ref = ids_of(backend_pyrender.PyrenderVisibility(mesh.vertices, mesh.faces))
    c = gl_worker.GLWorker(transport=transport, platforms=(platform,))
    try:
        vis = gl_worker.WorkerVisibility(mesh.vertices, mesh.faces, client=c)
        assert vis.name == f"pyrender (worker, {platform})"
        np.testing.assert_array_equal(ids_of(vis), ref)
        big = vis.face_ids(cameras()[0], 300, 200)               # a larger frame than the first
        assert big.shape == (200, 300) and (big >= 0).any()
        if transport == "mmap":                                  # mapped by both: nothing left on disk
            assert c._frame.path and not os.path.exists(c._frame.path)
    finally:
        c.close()


def test_killed_worker_is_restarted_and_correct(sample, client):
    vis = gl_worker.WorkerVisibility(sample.vertices, sample.faces, client=client)
    before = ids_of(vis)
    pid = client.pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 10
    while client._proc.alive() and time.time() < deadline:
        time.sleep(0.05)
    after = ids_of(vis)                                          # the mesh is sent again to the new worker
    np.testing.assert_array_equal(after, before)
    assert client.pid != pid and client.starts == 2
    os.kill(client.pid, signal.SIGKILL)                          # dead when the next mesh is sent
    client._proc.proc.wait(timeout=10)
    again = gl_worker.WorkerVisibility(sample.vertices, sample.faces, client=client)
    np.testing.assert_array_equal(ids_of(again), before)
    assert client.starts == 3


def test_one_worker_serves_many_meshes_and_threads(sample, client):
    sphere = icosphere(2)
    visibilities = [gl_worker.WorkerVisibility(m.vertices, m.faces, client=client) for m in (sample, sphere)]
    want = [ids_of(v) for v in visibilities]
    got, errors = {}, []

    def run(k):
        try:
            got[k] = ids_of(visibilities[k % 2])
        except Exception as exc:                                 # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k, ids in got.items():
        np.testing.assert_array_equal(ids, want[k % 2])
    assert client.starts == 1
    # more meshes than the worker keeps: the evicted one is sent again on its next frame
    extra = [gl_worker.WorkerVisibility(sphere.vertices, sphere.faces, client=client) for _ in range(5)]
    np.testing.assert_array_equal(ids_of(visibilities[0]), want[0])
    assert len(extra) == 5 and client.starts == 1


def test_no_platform_is_a_clear_error(sample, monkeypatch):
    monkeypatch.setitem(gl_worker.extra_env, "REALIZ3D_GL_HIDE_LIBS", "EGL,OSMesa")
    broken = gl_worker.GLWorker()
    with pytest.raises(InputError) as err:
        gl_worker.WorkerVisibility(sample.vertices, sample.faces, client=broken)
    assert err.value.input_name == "backend"
    assert "EGL: libEGL not found" in err.value.message and "OSMesa: libOSMesa not found" in err.value.message
    assert "raycast" in err.value.message
    # in a process whose GL is someone else's: 'pyrender' says what failed, 'auto' falls back to raycast
    monkeypatch.setattr(gl_worker, "_worker", broken)
    monkeypatch.setattr(backend_pyrender, "foreign_gl", lambda: "a test's GL")
    with pytest.raises(InputError, match="libOSMesa not found"):
        make_visibility("pyrender", sample.vertices, sample.faces)
    assert make_visibility("auto", sample.vertices, sample.faces).name == "raycast"


def test_worker_environment_drops_the_hosts_gl(monkeypatch):
    angle = "/x/site-packages/comfy_angle/libs"
    monkeypatch.setenv("PYOPENGL_PLATFORM", "egl")
    monkeypatch.setenv("ANGLE_DEFAULT_PLATFORM", "vulkan")
    monkeypatch.setenv("LD_LIBRARY_PATH", f"/usr/lib/x:{angle}")
    monkeypatch.setenv("LD_PRELOAD", f"{angle}/libEGL.so")
    env = gl_worker.clean_env()
    assert "PYOPENGL_PLATFORM" not in env and "ANGLE_DEFAULT_PLATFORM" not in env
    assert env["LD_LIBRARY_PATH"] == "/usr/lib/x" and "LD_PRELOAD" not in env


# ComfyUI 0.33's comfy_extras/nodes_glsl.py, as it runs before custom nodes load (Linux: its
# find_library patch returns early there), then the pack rendering in that process
ANGLE_HOST = """
import ctypes, os, sys
import comfy_angle
mode = ctypes.RTLD_GLOBAL
ctypes.CDLL(str(comfy_angle.get_egl_path()), mode=mode)
ctypes.CDLL(str(comfy_angle.get_glesv2_path()), mode=mode)
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
import OpenGL
OpenGL.USE_ACCELERATE = False
from OpenGL import EGL
from OpenGL import GLES3 as gl

sys.path.insert(0, 'scripts')
from pack_import import import_pack; import_pack()
import numpy as np
from realiz3d.renderers import InputError, load_mesh, normalize, orbit_rig, render_views
from realiz3d.renderers.backend_pyrender import foreign_gl
print('foreign:', foreign_gl())
m = normalize(load_mesh('assets/sample_mesh.glb'))
b = render_views(m, orbit_rig(3, elevation_deg=20.0), 96, 80, backend='auto')
print('auto:', b.backend)
from realiz3d.renderers import backend_pyrender
print('in-process tried:', backend_pyrender._renderer is not None or backend_pyrender._failure is not None)
np.save(sys.argv[1], b.face_id)
try:
    render_views(m, orbit_rig(1), 16, 16, backend='pyrender (in-process)')
    print('in-process: rendered')
except InputError as exc:
    print('in-process error:', exc.message)
"""


def test_angle_loaded_like_comfyui_033_gets_the_worker(sample, tmp_path):
    if importlib.util.find_spec("comfy_angle") is None:
        pytest.fail("comfy_angle missing: scripts/setup_host.sh installs comfy-angle into both hosts' venvs")
    out = tmp_path / "ids.npy"
    env = {k: v for k, v in os.environ.items() if k != "PYOPENGL_PLATFORM"}
    run = subprocess.run([sys.executable, "-c", ANGLE_HOST, str(out)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in run.stdout.splitlines() if ": " in line)
    assert "comfy_angle" in lines["foreign"], run.stdout
    assert lines["auto"] in ("pyrender (worker, egl)", "pyrender (worker, osmesa)"), run.stdout + run.stderr
    assert lines["in-process tried"] == "False"      # the host's GL is left alone, not probed
    ref = render_views(sample, orbit_rig(3, elevation_deg=20.0), W, H, backend="pyrender (in-process)").face_id
    np.testing.assert_array_equal(np.load(out), ref)
    msg = lines["in-process error"]
    assert "comfy_angle" in msg and "GL worker" in msg, msg
