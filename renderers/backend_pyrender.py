"""Visibility by OpenGL rasterisation through pyrender in this process (offscreen: EGL, else OSMesa).

The rasterisation itself is ``gl_worker_render.py``, which the GL worker process runs too: both
routes give the same face ids. In-process GL is the fastest route in a process that has no GL of
its own; a host that loaded a GL stack first (ComfyUI 0.33 loads ANGLE) breaks it, which
:func:`foreign_gl` detects so that ``auto`` renders in the worker there instead.
"""
from __future__ import annotations

import ctypes.util
import os
import re
import sys
import threading

import numpy as np

from .cameras import Camera
from .errors import InputError
from .gl_worker import camera_dict
from .gl_worker_render import MAX_FACES, FaceIdRenderer, GLUnavailable
from .mesh import is_closed

_lock = threading.Lock()
_renderer: FaceIdRenderer | None = None   # one offscreen context for the process, reused across calls
_failure: str | None = None               # why in-process GL failed (it does not recover in a process)
_foreign_before_ours: str | None = None   # what foreign_gl() said when this module loaded GL
_GL_LIBRARY = re.compile(r"^lib(EGL|GLESv1_CM|GLESv2|GL|GLX|OpenGL|OSMesa)([_.].*)?\.so(\.|$)")


def gl_platform() -> str | None:
    """The PyOpenGL platform for in-process GL: PYOPENGL_PLATFORM if set, else 'egl' or 'osmesa'
    when their libraries exist, else None (no offscreen GL on this machine)."""
    if os.environ.get("PYOPENGL_PLATFORM"):
        return os.environ["PYOPENGL_PLATFORM"]
    if ctypes.util.find_library("EGL"):
        return "egl"
    if ctypes.util.find_library("OSMesa"):
        return "osmesa"
    return None


def mapped_gl_libraries() -> list[str]:
    """Paths of GL libraries (EGL, GLES, GL, GLX, OSMesa, ANGLE's) mapped into this process
    (Linux: /proc/self/maps; elsewhere an empty list)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split(None, 5)[5].strip() for line in f if line.count(" ") >= 5 and "/" in line}
    except OSError:
        return []
    return sorted(p for p in paths if "comfy_angle" in p or _GL_LIBRARY.match(os.path.basename(p)))


def foreign_gl() -> str | None:
    """Why this process's GL belongs to someone else (None when the pack may use GL here): a GL
    library already mapped, PyOpenGL already imported, or PYOPENGL_PLATFORM set, by the host or
    another pack before the pack's own in-process GL. What this module loaded itself is ours."""
    if _renderer is not None or _failure is not None:
        return _foreign_before_ours
    reasons = []
    libs = mapped_gl_libraries()
    if libs:
        shown = ["/".join(p.split("/")[-3:]) for p in libs[:4]]
        reasons.append("GL libraries already loaded: " + ", ".join(shown))
    if "OpenGL" in sys.modules:
        reasons.append("PyOpenGL already imported")
    if os.environ.get("PYOPENGL_PLATFORM"):
        reasons.append(f"PYOPENGL_PLATFORM={os.environ['PYOPENGL_PLATFORM']} set")
    return "; ".join(reasons) or None


def in_process_renderer() -> FaceIdRenderer:
    """The process's offscreen GL renderer; InputError naming what failed when there is none."""
    global _renderer, _failure, _foreign_before_ours
    with _lock:
        if _renderer is not None:
            return _renderer
        if _failure is None:
            foreign = foreign_gl()
            platform = gl_platform()
            if platform is None:
                _failure = "neither libEGL nor libOSMesa was found"
            else:
                before = os.environ.get("PYOPENGL_PLATFORM")
                try:
                    _renderer = FaceIdRenderer(platform)
                except GLUnavailable as exc:
                    _failure = f"PYOPENGL_PLATFORM={platform}: {exc}"
                finally:      # the platform is fixed now; leave the environment as it was
                    if before is None:
                        os.environ.pop("PYOPENGL_PLATFORM", None)
                    else:
                        os.environ["PYOPENGL_PLATFORM"] = before
            _foreign_before_ours = foreign
            if _renderer is not None:
                return _renderer
            if foreign:
                _failure += (f". This process has a GL stack of its own ({foreign}): use 'pyrender' or "
                             "'auto', which render in the pack's GL worker process here")
            else:
                _failure += (". Use 'pyrender' (tries the GL worker too) or 'raycast'; Mesa provides EGL "
                             "(Debian: libegl1 libegl-mesa0) and OSMesa (libosmesa6)")
        raise InputError("backend", f"pyrender (in-process) has no offscreen OpenGL: {_failure}.")


class PyrenderVisibility:
    """Face-id images of one mesh from many cameras, rendered with GL in this process."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray):
        if len(faces) > MAX_FACES:
            raise InputError("mesh", f"has {len(faces)} faces; the pyrender backend handles up to 16.7M. "
                                     "Decimate the mesh or use the 'raycast' backend.")
        self._gl = in_process_renderer()            # fails here, not mid-render, when GL is broken
        with _lock:
            self._scene = self._gl.scene(vertices, faces, is_closed(vertices, faces))
        self.name = f"pyrender (in-process, {self._gl.platform})"

    def face_ids(self, camera: Camera, width: int, height: int) -> np.ndarray:
        """int32 [H, W]: the face seen at each pixel centre, -1 for background."""
        with _lock:
            return self._gl.face_ids(self._scene, camera_dict(camera), width, height)
