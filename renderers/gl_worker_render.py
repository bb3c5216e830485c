"""Face-id rasterisation with pyrender: the one GL code path, run in the pack's GL worker process
and by the in-process backend alike, so both give the same ids bit for bit.

Self-contained on purpose: it imports only numpy at load time and pyrender (hence PyOpenGL) when
a renderer is made, never the pack, so the worker (``gl_worker_main.py``) loads it by file path
without importing anything of the host.

One flat-shaded pass per view writes each face's id + 1 into RGB (24 bits, exact: flat colours
are not interpolated across a face and nothing is multisampled). pyrender allocates its
offscreen framebuffer with 4x multisampling, whose resolve would average ids at every edge;
while our renderer creates its framebuffer a switch asks for one sample instead, so other users
of pyrender in the same process keep their multisampling.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import threading

import numpy as np

#: PyOpenGL platform name -> what it needs, for the error messages
PLATFORMS = {"egl": "libEGL (Mesa: libegl1 libegl-mesa0, or a GPU driver)", "osmesa": "libOSMesa (Mesa: libosmesa6)"}
MAX_FACES = 2 ** 24 - 2          # ids + 1 must fit the 24 bits of RGB

_single_sample = threading.local()
_patched = False


class GLUnavailable(RuntimeError):
    """No offscreen OpenGL context on this platform; the message says what failed."""


def short(exc: BaseException, limit: int = 300) -> str:
    """One line naming an exception; PyOpenGL's errors (many lines of arguments) become e.g.
    'eglInitialize failed (EGL_BAD_DISPLAY)'."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    gl = re.search(r"err = (\w+), baseOperation = (\w+)", text)
    if gl:
        return f"{gl.group(2)} failed ({gl.group(1)})"
    return f"{type(exc).__name__}: {text}"[:limit]


def load_pyrender(platform: str):
    """Import pyrender on PyOpenGL ``platform`` ('egl' or 'osmesa'); the first OpenGL import of
    a process fixes its platform, so this choice holds for the whole process."""
    _check_library(platform)
    os.environ["PYOPENGL_PLATFORM"] = platform    # read by PyOpenGL's import and by pyrender's renderer
    try:
        import pyrender
    except Exception as exc:          # a missing library surfaces here as ImportError, OSError, ...
        raise GLUnavailable(f"pyrender/PyOpenGL could not load ({short(exc)})") from exc
    _patch_multisampling(pyrender)
    return pyrender


def _check_library(platform: str) -> None:
    """Name the missing library (PyOpenGL would only fail later, on an attribute of None)."""
    name = {"egl": "EGL", "osmesa": "OSMesa"}.get(platform)
    if name is None:
        raise GLUnavailable(f"unknown platform {platform!r} (egl or osmesa)")
    candidates = [p for p in (ctypes.util.find_library(name),) if p] or [f"lib{name}.so.1", f"lib{name}.so"]
    errors = []
    for path in candidates:
        try:
            ctypes.CDLL(path)
            return
        except OSError as exc:
            errors.append(str(exc))
    found = ctypes.util.find_library(name) is not None
    raise GLUnavailable(f"lib{name} could not be loaded ({errors[0]})" if found else f"lib{name} not found")


def _patch_multisampling(pyrender) -> None:
    global _patched
    if _patched:
        return
    original = pyrender.renderer.glRenderbufferStorageMultisample

    def storage(target, samples, fmt, width, height):
        return original(target, 0 if getattr(_single_sample, "on", False) else samples, fmt, width, height)

    pyrender.renderer.glRenderbufferStorageMultisample = storage
    _patched = True


def id_scene(pyrender, vertices: np.ndarray, faces: np.ndarray, cull_back_faces: bool):
    """A pyrender Scene holding the mesh unindexed, each face coloured by its id + 1.

    vertices: float [N, 3]; faces: int [M, 3]. Back faces are culled on closed meshes: there
    they are never visible, and culling stops a back face from winning the depth tie on a
    silhouette edge shared with a front face."""
    ids = np.repeat(np.arange(1, len(faces) + 1, dtype=np.int64), 3)
    color = np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255, np.full_like(ids, 255)], axis=1)
    material = pyrender.MetallicRoughnessMaterial(baseColorFactor=[1.0, 1.0, 1.0, 1.0], doubleSided=not cull_back_faces)
    prim = pyrender.Primitive(positions=np.asarray(vertices)[faces].reshape(-1, 3).astype(np.float32),
                              color_0=color.astype(np.uint8), material=material, mode=4)
    scene = pyrender.Scene(bg_color=[0.0, 0.0, 0.0, 0.0], ambient_light=[0.0, 0.0, 0.0])
    scene.add(pyrender.Mesh([prim]))
    return scene


class FaceIdRenderer:
    """One offscreen GL context (creating one costs ~0.1 s), reused for every scene and view.
    Not thread-safe: callers serialise (the worker is single-threaded; in-process holds a lock)."""

    def __init__(self, platform: str):
        self.platform = platform
        self.pr = load_pyrender(platform)
        try:
            self._renderer = self.pr.OffscreenRenderer(1, 1)
        except Exception as exc:
            raise GLUnavailable(f"no offscreen context ({short(exc)})") from exc
        self.gl_renderer = _gl_string(self.pr)

    def scene(self, vertices: np.ndarray, faces: np.ndarray, cull_back_faces: bool):
        return id_scene(self.pr, vertices, faces, cull_back_faces)

    def face_ids(self, scene, camera: dict, width: int, height: int, out: np.ndarray | None = None) -> np.ndarray:
        """int32 [H, W]: the face seen at each pixel centre, -1 for background; written into
        ``out`` (int32 [H, W]) when given. camera: :func:`camera_spec`'s dict."""
        pr = self.pr
        if camera["projection"] == "perspective":
            cam = pr.PerspectiveCamera(yfov=camera["yfov"], aspectRatio=width / height,
                                       znear=camera["znear"], zfar=camera["zfar"])
        else:
            half = camera["ortho_height"] / 2.0
            cam = pr.OrthographicCamera(xmag=half * width / height, ymag=half, znear=camera["znear"],
                                        zfar=camera["zfar"])
        old = getattr(scene, "_realiz3d_camera", None)
        if old is not None:
            scene.remove_node(old)
        scene._realiz3d_camera = scene.add(cam, pose=np.asarray(camera["pose"], np.float64))
        r = self._renderer
        r.viewport_width, r.viewport_height = width, height
        _single_sample.on = True
        try:
            color, _ = r.render(scene, flags=pr.RenderFlags.FLAT | pr.RenderFlags.RGBA)
        finally:
            _single_sample.on = False
        if out is None:
            out = np.empty((height, width), np.int32)
        c = np.ascontiguousarray(color)
        if c.shape[-1] == 4:      # little-endian RGBA as one word: id + 1 in the low 24 bits
            np.bitwise_and(c.view("<u4")[..., 0], 0xFFFFFF, out=out, casting="unsafe")
        else:                     # OSMesa may hand back RGB only
            c = c.astype(np.int32)
            np.bitwise_or(c[..., 0], (c[..., 1] << 8) | (c[..., 2] << 16), out=out)
        out -= 1                  # background is cleared to 0, i.e. -1
        return out

    def close(self) -> None:
        self._renderer.delete()


def camera_spec(projection: str, pose, yfov: float, znear: float, zfar: float, ortho_height: float) -> dict:
    """What :meth:`FaceIdRenderer.face_ids` needs of a camera, as plain (picklable) values."""
    return {"projection": projection, "pose": np.asarray(pose, np.float64).tolist(), "yfov": float(yfov),
            "znear": float(znear), "zfar": float(zfar), "ortho_height": float(ortho_height)}


def _gl_string(pr) -> str:
    try:
        from OpenGL.GL import GL_RENDERER, glGetString
        value = glGetString(GL_RENDERER)
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    except Exception:             # only informative
        return "unknown"
