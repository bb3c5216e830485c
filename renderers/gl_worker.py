"""The pack's own GL worker process: face-id rendering that works inside any host process.

Why a process of its own: a host may load a GL stack of its own into its process before the
pack loads (ComfyUI 0.33 loads ANGLE's libEGL / libGLESv2 and sets PYOPENGL_PLATFORM=egl), and
PyOpenGL then cannot give pyrender a desktop-GL context there (EGL_BAD_DISPLAY). The worker is
a fresh interpreter started with ``subprocess.Popen`` (not multiprocessing: a fork inherits the
host's GL libraries, a spawn re-imports the host's main module), from a cleaned environment,
running ``gl_worker_main.py``, which imports only numpy, pyrender and PyOpenGL.

- One worker per process (:func:`worker`), started on first use, reused across prompts and
  visibility objects; thread-safe (one request at a time); restarted when it has died.
- Its platform is its own choice: EGL first, then OSMesa, whatever PYOPENGL_PLATFORM says here.
- A mesh is sent once per visibility object (the worker keeps the last few); each frame comes
  back through a memory-mapped file (``transport='mmap'``, measured faster by
  ``benchmarks/render.py``) or the pipe (``'pipe'``).
- When no platform works: an :class:`InputError` naming what failed on each.
"""
from __future__ import annotations

import atexit
import itertools
import logging
import mmap
import os
import pickle
import select
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from .cameras import Camera
from .errors import InputError
from .gl_worker_render import MAX_FACES, PLATFORMS, camera_spec
from .mesh import is_closed

log = logging.getLogger(__name__)

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gl_worker_main.py")
PLATFORM_ORDER = ("egl", "osmesa")
START_TIMEOUT_S = 120.0
#: variables of the host's GL choice that the worker must not inherit (ANGLE's are stripped by
#: name and path below)
HOST_GL_VARIABLES = ("PYOPENGL_PLATFORM",)
#: test hook: extra environment for the worker (e.g. REALIZ3D_GL_HIDE_LIBS=EGL,OSMesa)
extra_env: dict[str, str] = {}


class WorkerDied(RuntimeError):
    pass


def clean_env() -> dict[str, str]:
    """This process's environment without the host's GL choice: no PYOPENGL_PLATFORM, no ANGLE_*
    variable, no comfy_angle path in LD_PRELOAD, LD_LIBRARY_PATH or PATH."""
    env = {k: v for k, v in os.environ.items() if k not in HOST_GL_VARIABLES and not k.upper().startswith("ANGLE_")}
    for name, separators in (("LD_PRELOAD", " :"), ("LD_LIBRARY_PATH", os.pathsep), ("PATH", os.pathsep)):
        if name not in env:
            continue
        value = env[name]
        for extra in separators[1:]:
            value = value.replace(extra, separators[0])
        kept = [p for p in value.split(separators[0]) if p and "comfy_angle" not in p]
        if kept:
            env[name] = separators[0].join(kept)
        else:
            del env[name]
    env.update(extra_env)
    return env


class _Process:
    """One running worker on one platform."""

    def __init__(self, platform: str):
        self.platform = platform
        self.stderr = tempfile.TemporaryFile()       # a file: a chatty GL library never blocks the worker
        t0 = time.perf_counter()
        env = dict(clean_env(), PYOPENGL_PLATFORM=platform)
        try:
            self.proc = subprocess.Popen([sys.executable, SCRIPT, platform], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self.stderr, env=env, close_fds=True,
                                         start_new_session=True)
        except OSError as exc:
            self.stderr.close()
            raise GLStartFailed(f"could not start {sys.executable} ({exc})") from None
        try:
            first = self._read(timeout=START_TIMEOUT_S)
        except WorkerDied as exc:
            self.kill()
            raise GLStartFailed(str(exc)) from None
        if first[0] != "ready":
            self.kill()
            raise GLStartFailed(first[1])
        _, _, self.gl_renderer, self.pid = first
        self.start_s = time.perf_counter() - t0

    def _read(self, timeout: float | None = None):
        if timeout is not None and os.name == "posix":
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            if not ready:
                raise WorkerDied(f"no answer within {timeout:.0f} s")
        try:
            return pickle.load(self.proc.stdout)
        except (EOFError, pickle.UnpicklingError, OSError) as exc:
            raise WorkerDied(self._why(exc)) from None

    def request(self, *msg):
        try:
            pickle.dump(msg, self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise WorkerDied(self._why(exc)) from None
        return self._read()

    def _why(self, exc: BaseException) -> str:
        code = self.proc.poll()
        self.stderr.seek(0)
        tail = self.stderr.read().decode(errors="replace").strip().splitlines()[-3:]
        state = f"exited with code {code}" if code is not None else f"stopped answering ({type(exc).__name__})"
        return f"the GL worker {state}" + (f": {' | '.join(tail)}" if tail else "")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self.stderr.close()


class GLStartFailed(RuntimeError):
    pass


class _Frame:
    """A memory-mapped file the worker writes each frame into (grown when a frame is larger).
    Its name is removed once the worker has mapped it, so nothing is left behind however this
    process ends; a new worker gets a new file."""

    def __init__(self):
        self.path, self.size, self.map, self.mapped_by, self.linked = None, 0, None, None, False

    def reserve(self, nbytes: int, pid: int) -> tuple[str, int]:
        if nbytes > self.size or self.mapped_by not in (None, pid):
            self.close()
            folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
            fd, path = tempfile.mkstemp(prefix="realiz3d-gl-", suffix=".frame", dir=folder)
            size = max(nbytes, 1 << 20)
            os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
            os.close(fd)
            self.path, self.size, self.linked = path, size, True
        return self.path, self.size

    def mapped(self, pid: int) -> None:
        """Worker ``pid`` has mapped the file: its name is no longer needed."""
        if self.mapped_by is None:
            self.mapped_by = pid
            self._unlink()

    def read(self, h: int, w: int) -> np.ndarray:
        return np.frombuffer(self.map, np.int32, count=h * w).reshape(h, w).copy()

    def _unlink(self) -> None:
        if self.linked:
            try:
                os.unlink(self.path)
                self.linked = False
            except OSError:       # Windows keeps a mapped file's name; close() tries again
                pass

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
            self._unlink()
        self.path, self.size, self.map, self.mapped_by, self.linked = None, 0, None, None, False


class GLWorker:
    """The client of one worker process (restarted on death). Use :func:`worker`."""

    def __init__(self, transport: str = "mmap", platforms: tuple[str, ...] = PLATFORM_ORDER):
        if transport not in ("mmap", "pipe"):
            raise ValueError(f"transport must be 'mmap' or 'pipe' (got {transport!r})")
        self.transport, self.platforms = transport, platforms
        self._failure: str | None = None      # no platform started: not retried for every call
        self._lock = threading.RLock()
        self._proc: _Process | None = None
        self._frame = _Frame()
        self._sent: dict[int, int] = {}           # mesh key -> pid of the worker holding it
        self.starts = 0
        self.last_start_s: float | None = None

    @property
    def platform(self) -> str:
        return self._ensure().platform

    @property
    def pid(self) -> int:
        return self._ensure().pid

    def _ensure(self) -> _Process:
        with self._lock:
            if self._proc is not None and self._proc.alive():
                return self._proc
            if self._proc is not None:
                log.warning("Realiz3D GL worker (pid %s) had died; starting a new one", self._proc.pid)
                self._proc.kill()
                self._proc = None
            if self._failure is not None:
                raise InputError("backend", self._failure)
            failures = []
            for platform in self.platforms:
                try:
                    self._proc = _Process(platform)
                except GLStartFailed as exc:
                    failures.append(f"{platform.upper() if platform == 'egl' else 'OSMesa'}: {exc}")
                    continue
                self.starts += 1
                self.last_start_s = self._proc.start_s
                log.info("Realiz3D GL worker started (pid %s, %s, %s) in %.2f s", self._proc.pid, platform,
                         self._proc.gl_renderer, self._proc.start_s)
                return self._proc
            needs = "; ".join(f"{p}: {what}" for p, what in PLATFORMS.items())
            self._failure = ("the GL worker found no offscreen OpenGL. " + "; ".join(failures)
                             + f". Install one ({needs}) or use the 'raycast' backend.")
            raise InputError("backend", self._failure)

    def upload(self, key: int, vertices: np.ndarray, faces: np.ndarray, cull: bool) -> None:
        """Send mesh ``key`` (float [N, 3], int [M, 3]) to the worker, restarting it once if it died."""
        with self._lock:
            for attempt in range(2):
                proc = self._ensure()
                try:
                    answer = proc.request("mesh", key, np.ascontiguousarray(vertices, np.float64),
                                          np.ascontiguousarray(faces, np.int64), bool(cull))
                    break
                except WorkerDied as exc:
                    proc.kill()
                    if attempt == 1:
                        raise InputError("backend", f"{exc} while taking the mesh, twice.") from None
            if answer[0] != "ok":
                raise InputError("backend", f"the GL worker could not take the mesh: {answer[-1]}")
            self._sent[key] = proc.pid

    def face_ids(self, key: int, mesh, camera: dict, width: int, height: int) -> np.ndarray:
        """int32 [H, W] of mesh ``key``; ``mesh()`` gives (vertices, faces, cull) to (re)send it."""
        with self._lock:
            for attempt in range(3):
                try:
                    proc = self._ensure()
                    if self._sent.get(key) != proc.pid:
                        self.upload(key, *mesh())
                    frame = self._frame.reserve(4 * width * height, proc.pid) if self.transport == "mmap" else None
                    answer = proc.request("render", key, camera, width, height, frame)
                except WorkerDied as exc:
                    if self._proc is not None:
                        self._proc.kill()                 # alive but out of step counts as dead too
                    if attempt == 2:
                        raise InputError("backend", f"{exc}; it died again after a restart.") from None
                    log.warning("Realiz3D GL worker: %s; restarting it", exc)
                    continue
                if answer[0] == "missing":
                    self._sent.pop(key, None)
                    continue
                if answer[0] != "ok":
                    raise InputError("backend", f"the GL worker failed to render: {answer[-1]}")
                if frame is None:
                    return answer[1]
                self._frame.mapped(proc.pid)
                return self._frame.read(height, width)
            raise InputError("backend", "the GL worker keeps dropping the mesh")

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                if self._proc.alive():
                    try:
                        self._proc.request("quit")
                    except WorkerDied:
                        pass
                self._proc.kill()
                self._proc = None
            self._frame.close()
            self._sent.clear()


_worker: GLWorker | None = None
_worker_lock = threading.Lock()
_keys = itertools.count(1)


def worker() -> GLWorker:
    """This process's GL worker client (the process itself starts on first use)."""
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = GLWorker()
            atexit.register(_worker.close)
        return _worker


class WorkerVisibility:
    """Face-id images of one mesh from many cameras, rendered by the GL worker."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, client: GLWorker | None = None):
        if len(faces) > MAX_FACES:
            raise InputError("mesh", f"has {len(faces)} faces; the pyrender backend handles up to 16.7M. "
                                     "Decimate the mesh or use the 'raycast' backend.")
        self._client = client or worker()
        self._key = next(_keys)
        self._vertices, self._faces = vertices, faces
        self._cull = is_closed(vertices, faces)
        self._client.upload(self._key, vertices, faces, self._cull)     # fails here, not mid-render
        self.name = f"pyrender (worker, {self._client.platform})"

    def _mesh(self):
        return self._vertices, self._faces, self._cull

    def face_ids(self, camera: Camera, width: int, height: int) -> np.ndarray:
        """int32 [H, W]: the face seen at each pixel centre, -1 for background."""
        return self._client.face_ids(self._key, self._mesh, camera_dict(camera), width, height)


def camera_dict(camera: Camera) -> dict:
    """The camera as :meth:`gl_worker_render.FaceIdRenderer.face_ids` takes it."""
    return camera_spec(camera.projection, camera.cam_to_world, camera.yfov, camera.znear, camera.zfar,
                       camera.ortho_height)
