"""Visibility by OpenGL rasterisation through pyrender, offscreen (EGL, else OSMesa).

One flat-shaded pass per view writes each face's id + 1 into RGB (24 bits, exact: flat colours
are not interpolated across a face and nothing is multisampled). pyrender allocates its
offscreen framebuffer with 4x multisampling, whose resolve would average ids at every edge;
while our renderer creates its framebuffer a thread-local switch asks for one sample instead,
so other users of pyrender in the same process keep their multisampling.
"""
from __future__ import annotations

import ctypes.util
import os
import threading

import numpy as np

from .cameras import Camera
from .errors import InputError
from .mesh import is_closed

_local = threading.local()
_lock = threading.Lock()
_renderer = None          # one offscreen context, reused across calls (creating one costs ~0.1 s)
_patched = False


def gl_platform() -> str | None:
    """The PyOpenGL platform to use: PYOPENGL_PLATFORM if set, else 'egl' or 'osmesa' when their
    libraries exist, else None (no offscreen GL on this machine)."""
    if os.environ.get("PYOPENGL_PLATFORM"):
        return os.environ["PYOPENGL_PLATFORM"]
    if ctypes.util.find_library("EGL"):
        return "egl"
    if ctypes.util.find_library("OSMesa"):
        return "osmesa"
    return None


def _import_pyrender():
    platform = gl_platform()
    if platform is None:
        raise InputError("backend", "pyrender needs offscreen OpenGL (libEGL or libOSMesa) and neither was "
                                    "found. Install Mesa's EGL (Debian: libegl1 libegl-mesa0) or use the "
                                    "'raycast' backend.")
    os.environ.setdefault("PYOPENGL_PLATFORM", platform)   # must precede the first OpenGL import
    try:
        import pyrender
    except Exception as exc:
        raise InputError("backend", f"pyrender could not be imported ({exc}); use the 'raycast' backend "
                                    "or install pyrender.") from exc
    _patch_multisampling(pyrender)
    return pyrender


def _patch_multisampling(pyrender) -> None:
    global _patched
    if _patched:
        return
    original = pyrender.renderer.glRenderbufferStorageMultisample

    def storage(target, samples, fmt, width, height):
        return original(target, 0 if getattr(_local, "single_sample", False) else samples, fmt, width, height)

    pyrender.renderer.glRenderbufferStorageMultisample = storage
    _patched = True


def _get_renderer(pyrender, width: int, height: int):
    global _renderer
    if _renderer is None:
        try:
            _renderer = pyrender.OffscreenRenderer(width, height)
        except Exception as exc:
            raise InputError("backend", f"no offscreen OpenGL context could be created with "
                                        f"PYOPENGL_PLATFORM={os.environ.get('PYOPENGL_PLATFORM')} ({exc}). "
                                        "Use the 'raycast' backend, or install Mesa (EGL or OSMesa).") from exc
    _renderer.viewport_width, _renderer.viewport_height = width, height
    return _renderer


def id_scene(pyrender, vertices: np.ndarray, faces: np.ndarray, cull_back_faces: bool):
    """A pyrender Scene holding the mesh unindexed, each face coloured by its id + 1.

    Back faces are culled on closed meshes: there they are never visible, and culling stops a
    back face from winning the depth tie on a silhouette edge shared with a front face."""
    ids = np.repeat(np.arange(1, len(faces) + 1, dtype=np.int64), 3)
    color = np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255, np.full_like(ids, 255)], axis=1)
    material = pyrender.MetallicRoughnessMaterial(baseColorFactor=[1.0, 1.0, 1.0, 1.0], doubleSided=not cull_back_faces)
    prim = pyrender.Primitive(positions=vertices[faces].reshape(-1, 3).astype(np.float32),
                              color_0=color.astype(np.uint8), material=material, mode=4)
    scene = pyrender.Scene(bg_color=[0.0, 0.0, 0.0, 0.0], ambient_light=[0.0, 0.0, 0.0])
    scene.add(pyrender.Mesh([prim]))
    return scene


class PyrenderVisibility:
    """Face-id images of one mesh from many cameras."""

    name = "pyrender"

    def __init__(self, vertices: np.ndarray, faces: np.ndarray):
        if len(faces) >= 2 ** 24 - 1:
            raise InputError("mesh", f"has {len(faces)} faces; the pyrender backend handles up to 16.7M. "
                                     "Decimate the mesh or use the 'raycast' backend.")
        self._pyrender = _import_pyrender()
        with _lock:
            _get_renderer(self._pyrender, 1, 1)   # fail here, not mid-render, when GL is broken
        self._scene = id_scene(self._pyrender, vertices, faces, is_closed(vertices, faces))
        self._cam_node = None

    def face_ids(self, camera: Camera, width: int, height: int) -> np.ndarray:
        """int32 [H, W]: the face seen at each pixel centre, -1 for background."""
        pr = self._pyrender
        if camera.projection == "perspective":
            cam = pr.PerspectiveCamera(yfov=camera.yfov, aspectRatio=width / height,
                                       znear=camera.znear, zfar=camera.zfar)
        else:
            half = camera.ortho_height / 2.0
            cam = pr.OrthographicCamera(xmag=half * width / height, ymag=half, znear=camera.znear, zfar=camera.zfar)
        if self._cam_node is not None:
            self._scene.remove_node(self._cam_node)
        self._cam_node = self._scene.add(cam, pose=camera.cam_to_world)
        with _lock:
            _local.single_sample = True
            try:
                r = _get_renderer(pr, width, height)
                color, _ = r.render(self._scene, flags=pr.RenderFlags.FLAT | pr.RenderFlags.RGBA)
            finally:
                _local.single_sample = False
        c = color.astype(np.int32)
        ids = c[..., 0] | (c[..., 1] << 8) | (c[..., 2] << 16)
        return (ids - 1).astype(np.int32)      # background is cleared to 0, i.e. -1 (OSMesa gives RGB only)
