"""Entry script of the pack's GL worker process (started by ``gl_worker.GLWorker``).

    python gl_worker_main.py PLATFORM        (PLATFORM: egl | osmesa)

It loads ``gl_worker_render.py`` beside it by file path and imports nothing else of the pack or
the host: only numpy, pyrender and PyOpenGL, on the platform it is given, in a process whose
environment the client cleaned (no PYOPENGL_PLATFORM of the host, nothing of ANGLE's).

Protocol: pickled tuples, one request then one reply, on stdin / the original stdout (fd 1 is
pointed at stderr so that whatever a GL library prints cannot corrupt a reply).
  first reply          ("ready", platform, gl_renderer, pid) or ("failed", message)
  ("mesh", key, vertices, faces, cull)          -> ("ok",)
  ("render", key, camera, w, h, frame)          -> ("ok", ids int32 [H, W]) when frame is None,
        else ("ok", None) with the ids written into the shared frame file; ("missing",) when the
        mesh is not (or no longer) held, and the client sends it again
  ("quit",)                                     -> exits
Any other failure is ("error", message). Up to KEEP meshes are held, least recently used
dropped first.
"""
import sys

if __name__ == "__main__":
    del sys.path[0]       # the pack's renderers/ folder: its module names must not shadow a library's

import ctypes
import ctypes.util
import importlib.util
import mmap
import os
import pickle
from collections import OrderedDict

KEEP = 4


def _hide_libraries(names: str) -> None:
    """Test hook (REALIZ3D_GL_HIDE_LIBS=EGL,OSMesa): make those libraries missing, as on a
    machine without them."""
    hidden = {n.strip() for n in names.split(",") if n.strip()}
    find = ctypes.util.find_library
    ctypes.util.find_library = lambda name: None if name in hidden else find(name)
    real_init = ctypes.CDLL.__init__

    def init(self, name, *args, **kwargs):
        base = os.path.basename(str(name or ""))
        if any(base == n or base.startswith(f"lib{n}.") for n in hidden):
            raise OSError(f"{base}: cannot open shared object file: No such file or directory")
        real_init(self, name, *args, **kwargs)

    ctypes.CDLL.__init__ = init


def _load_core():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gl_worker_render.py")
    spec = importlib.util.spec_from_file_location("realiz3d_gl_worker_render", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Frames:
    """The client's frame file, mapped once per (path, size)."""

    def __init__(self):
        self.key, self.map = None, None

    def view(self, np, path: str, size: int, h: int, w: int):
        if self.key != (path, size):
            if self.map is not None:
                self.map.close()
            with open(path, "r+b") as f:
                self.map = mmap.mmap(f.fileno(), size)
            self.key = (path, size)
        return np.frombuffer(self.map, np.int32, count=h * w).reshape(h, w)


def main() -> int:
    platform = sys.argv[1]
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    requests = sys.stdin.buffer

    def reply(*msg):
        pickle.dump(msg, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()

    if os.environ.get("REALIZ3D_GL_HIDE_LIBS"):
        _hide_libraries(os.environ["REALIZ3D_GL_HIDE_LIBS"])
    core = _load_core()
    try:
        gl = core.FaceIdRenderer(platform)
    except Exception as exc:       # GLUnavailable, or whatever else a broken GL stack raises
        reply("failed", str(exc) if isinstance(exc, core.GLUnavailable) else core.short(exc))
        return 1
    import numpy as np

    reply("ready", platform, gl.gl_renderer, os.getpid())
    scenes, frames = OrderedDict(), Frames()
    while True:
        try:
            msg = pickle.load(requests)
        except EOFError:           # the client's process ended
            return 0
        try:
            if msg[0] == "render":
                _, key, camera, w, h, frame = msg
                if key not in scenes:
                    reply("missing")
                    continue
                scenes.move_to_end(key)
                if frame is None:
                    reply("ok", gl.face_ids(scenes[key], camera, w, h))
                else:
                    gl.face_ids(scenes[key], camera, w, h, out=frames.view(np, frame[0], frame[1], h, w))
                    reply("ok", None)
            elif msg[0] == "mesh":
                _, key, vertices, faces, cull = msg
                scenes[key] = gl.scene(vertices, faces, cull)
                while len(scenes) > KEEP:
                    scenes.popitem(last=False)
                reply("ok")
            elif msg[0] == "quit":
                return 0
            else:
                reply("error", f"unknown request {msg[0]!r}")
        except Exception as exc:
            reply("error", core.short(exc))


if __name__ == "__main__":
    sys.exit(main())
