"""Texture atlases: checking a mesh's UVs, unwrapping with xatlas, and rasterising faces into
texel space (which face, and where on it, each texel centre lies).

UVs follow the OpenGL convention of the rest of the renderer (v = 0 at the bottom of the
texture, texture row 0 at the top; CONVENTIONS.md).
"""
from __future__ import annotations

from dataclasses import dataclass
import os
from typing import Callable, Optional

import numpy as np

from .errors import InputError

#: a UV layout is unusable for baking when more than this fraction of its area is degenerate or
#: overlapping (mirrored/stacked islands would receive several surfaces' colours at once)
MAX_BAD_FRACTION = 0.01
UV_MODES = ("auto", "keep", "unwrap")


@dataclass
class Atlas:
    """Geometry with one UV layout for a single texture.

    vertices float64 [N, 3]; faces int64 [M, 3] (same order and count as the input faces);
    uv float32 [N, 2]; source_vertex int64 [N]: the input vertex each vertex was split from.
    """

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    source_vertex: np.ndarray
    unwrapped: bool
    note: str = ""


@dataclass
class TexelMap:
    """Faces rasterised into a size x size texture: face int32 [size, size] (-1 where no face
    covers the texel centre), bary float32 [size, size, 3], overlap: fraction of covered texels
    that more than one face covers."""

    face: np.ndarray
    bary: np.ndarray
    overlap: float

    @property
    def covered(self) -> np.ndarray:
        return self.face >= 0


def uv_problem(uv: Optional[np.ndarray], faces: np.ndarray, check_size: int = 256) -> str:
    """Why ``uv`` cannot carry a baked texture ('' when it can): missing, non-finite, outside
    [0, 1] (tiling), mostly degenerate triangles, or overlapping islands."""
    if uv is None:
        return "the mesh has no UV coordinates"
    if not np.isfinite(uv).all():
        return "its UV coordinates contain NaN or infinite values"
    if uv.min() < -1e-3 or uv.max() > 1 + 1e-3:
        return (f"its UVs span {uv.min():.2f}..{uv.max():.2f}, outside [0, 1] (a tiling layout cannot hold one "
                "texture per surface point)")
    tri = uv[faces].astype(np.float64)
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    degenerate = area <= 1e-12
    if degenerate.mean() > MAX_BAD_FRACTION:
        return f"{degenerate.mean():.0%} of its UV triangles have zero area (degenerate UVs)"
    overlap = rasterize(uv, faces, check_size).overlap
    if overlap > MAX_BAD_FRACTION:
        return f"{overlap:.0%} of its UV area is covered by more than one triangle (overlapping or mirrored UVs)"
    return ""


def make_atlas(vertices: np.ndarray, faces: np.ndarray, uv: Optional[np.ndarray], uv_mode: str = "auto",
               texture_size: int = 1024, padding: int = 4, poll: Optional[Callable[[], None]] = None) -> Atlas:
    """One UV layout for ``vertices``/``faces``.

    uv_mode 'auto': keep ``uv`` when usable, otherwise unwrap (the repair is said in ``note``);
    'keep': keep ``uv`` or fail with the reason; 'unwrap': always unwrap. ``poll`` is called
    about every 0.2 s while unwrapping; it may raise to cancel.
    """
    if uv_mode not in UV_MODES:
        raise InputError("uv_mode", f"must be one of {UV_MODES} (got {uv_mode!r}).")
    if uv_mode != "unwrap":
        problem = uv_problem(uv, faces)
        if not problem:
            return Atlas(vertices, faces, uv.astype(np.float32), np.arange(len(vertices)), False)
        if uv_mode == "keep":
            raise InputError("uv_mode", f"'keep' cannot bake into this mesh: {problem}. Use 'auto' or 'unwrap' "
                                        "to give it a new UV layout.")
        reason = problem
    else:
        reason = "uv_mode 'unwrap'"
    return unwrap(vertices, faces, texture_size, padding, reason, poll=poll)


#: xatlas runs in a child process: it crashes (segfaults) on some meshes, and a crash there must
#: not take the host down. The child needs only numpy and xatlas.
_XATLAS_CHILD = r"""
import sys
import numpy as np
import xatlas
d = np.load(sys.argv[1])
atlas = xatlas.Atlas()
atlas.add_mesh(d["v"], d["f"])
pack = xatlas.PackOptions()
pack.resolution = int(sys.argv[3])
pack.padding = int(sys.argv[4])
pack.bilinear = True
atlas.generate(pack_options=pack)
vmapping, indices, uvs = atlas[0]
np.savez(sys.argv[2], vmapping=vmapping, indices=indices, uvs=uvs)
"""


def unwrap(vertices: np.ndarray, faces: np.ndarray, texture_size: int, padding: int, reason: str = "",
           timeout: float = 600.0, poll: Optional[Callable[[], None]] = None) -> Atlas:
    """xatlas charts packed into one atlas for a texture of ``texture_size`` texels, with
    ``padding`` texels between charts; face order is kept, seam vertices are split. When xatlas
    fails (it crashes on some meshes) or exceeds ``timeout`` seconds, every triangle gets a cell
    of its own in a grid (:func:`grid_unwrap`), and the note says so."""
    try:
        vmapping, indices, uvs = _xatlas(vertices, faces, texture_size, padding, timeout, poll)
        if len(indices) != len(faces):
            raise _XatlasFailed(f"it returned {len(indices)} faces for {len(faces)}")
    except _XatlasFailed as exc:
        atlas = grid_unwrap(vertices, faces, texture_size, padding)
        atlas.note = (f"UVs made by the per-triangle grid layout ({reason}; xatlas could not chart this mesh: "
                      f"{exc}). Every triangle is its own island, so seams show at triangle edges.")
        return atlas
    return Atlas(vertices[vmapping], indices, uvs, vmapping, True, f"UVs unwrapped with xatlas: {reason}.")


class _XatlasFailed(RuntimeError):
    pass


def _xatlas(vertices, faces, texture_size, padding, timeout, poll):
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="realiz3d_uv_") as tmp:
        src, dst = os.path.join(tmp, "mesh.npz"), os.path.join(tmp, "atlas.npz")
        np.savez(src, v=np.ascontiguousarray(vertices, np.float32), f=np.ascontiguousarray(faces, np.uint32))
        code, err = run_child([sys.executable, "-c", _XATLAS_CHILD, src, dst, str(int(texture_size)),
                               str(int(padding))], timeout, poll, tmp)
        if code != 0:
            what = f"signal {-code}" if code < 0 else f"exit code {code}"
            raise _XatlasFailed(f"{what}{': ' + err[-1] if err else ''}")
        d = np.load(dst)
        return d["vmapping"].astype(np.int64), d["indices"].astype(np.int64), d["uvs"].astype(np.float32)


#: the end of a child's stderr kept for its error message
STDERR_TAIL = 8192


def run_child(args: list, timeout: float, poll: Optional[Callable[[], None]], tmp: str) -> tuple:
    """Run ``args`` to completion: (exit code, the last lines of its stderr). stdout is discarded
    and stderr goes to a file in ``tmp`` (never a pipe, so a child that writes more than a pipe
    holds is never blocked). Over ``timeout`` seconds the child is killed and _XatlasFailed
    raised; ``poll`` is called about every 0.02 s and may raise to cancel (the child is killed)."""
    import subprocess
    import time

    err_path = os.path.join(tmp, "stderr.txt")
    with open(err_path, "wb") as err_file:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err_file)
    start = time.monotonic()
    try:
        while proc.poll() is None:
            if time.monotonic() - start > timeout:
                raise _XatlasFailed(f"no result within {timeout:.0f} s")
            if poll is not None:
                poll()
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with open(err_path, "rb") as f:
        f.seek(max(0, os.path.getsize(err_path) - STDERR_TAIL))
        err = f.read().decode(errors="replace").strip().splitlines()
    return proc.returncode, err


def grid_unwrap(vertices: np.ndarray, faces: np.ndarray, texture_size: int, padding: int) -> Atlas:
    """A layout that always exists: the texture is cut into square cells, each holding two
    triangles (one in the lower-left half, one in the upper-right half, ``padding`` texels apart
    and from the cell border). Shapes are distorted, coverage is complete, nothing overlaps."""
    m = len(faces)
    cells = int(np.ceil(np.sqrt((m + 1) // 2)))
    cell = 1.0 / cells
    gap = min(padding / texture_size, 0.2 * cell)
    k = np.arange(m)
    slot, upper = k // 2, (k % 2).astype(bool)
    col, row = slot % cells, slot // cells
    x0, y0 = col * cell, 1.0 - (row + 1) * cell            # the cell's lower-left corner in UV (v up)
    lo, hi = gap, cell - gap * (1 + np.sqrt(2))            # a right triangle inside half a cell
    tri = np.empty((m, 3, 2), np.float64)
    tri[:, 0] = np.stack([x0 + lo, y0 + lo], 1)
    tri[:, 1] = np.stack([x0 + hi, y0 + lo], 1)
    tri[:, 2] = np.stack([x0 + lo, y0 + hi], 1)
    far = np.stack([x0 + cell, y0 + cell], 1)[:, None, :]
    tri[upper] = far[upper] - (tri[upper] - np.stack([x0, y0], 1)[upper][:, None, :])   # point-mirrored
    uv = tri.reshape(-1, 2).astype(np.float32)
    source = faces.reshape(-1).astype(np.int64)
    return Atlas(vertices[source], np.arange(3 * m, dtype=np.int64).reshape(m, 3), uv, source, True)


def rasterize(uv: np.ndarray, faces: np.ndarray, size: int) -> TexelMap:
    """Which face covers each texel centre, and its barycentric coordinates there.

    Vectorised scanline: for every (face, texel row) pair the covered span of texel centres is
    found from the edge crossings of the row's centre line, then the spans are expanded to texels.
    Work is proportional to the covered area, not to the faces' bounding boxes.
    """
    face_map = np.full((size, size), -1, np.int32)
    bary_map = np.zeros((size, size, 3), np.float32)
    x = uv[faces, 0].astype(np.float64) * size              # [M, 3] texel units, column axis
    y = (1.0 - uv[faces, 1].astype(np.float64)) * size      # row axis, row 0 at the top
    det = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
    ok = np.flatnonzero(np.abs(det) > 1e-12)
    if not len(ok):
        return TexelMap(face_map, bary_map, 0.0)
    x, y, det = x[ok], y[ok], det[ok]
    r0 = np.clip(np.ceil(y.min(1) - 0.5), 0, size).astype(np.int64)
    r1 = np.clip(np.floor(y.max(1) - 0.5), -1, size - 1).astype(np.int64)
    n_rows = np.maximum(r1 - r0 + 1, 0)
    tri = np.repeat(np.arange(len(ok)), n_rows)
    row = r0[tri] + np.arange(len(tri)) - np.repeat(np.cumsum(n_rows) - n_rows, n_rows)
    yc = row + 0.5
    lo = np.full(len(tri), np.inf)
    hi = np.full(len(tri), -np.inf)
    for a, b in ((0, 1), (1, 2), (2, 0)):
        xa, ya, xb, yb = x[tri, a], y[tri, a], x[tri, b], y[tri, b]
        crosses = ((ya - yc) * (yb - yc) <= 0) & (ya != yb)
        xs = xa + (yc - ya) * (xb - xa) / np.where(ya != yb, yb - ya, 1.0)
        lo = np.where(crosses, np.minimum(lo, xs), lo)
        hi = np.where(crosses, np.maximum(hi, xs), hi)
    c0 = np.clip(np.ceil(lo - 0.5), 0, size).astype(np.int64)
    c1 = np.clip(np.floor(hi - 0.5), -1, size - 1).astype(np.int64)
    n_cols = np.maximum(c1 - c0 + 1, 0)
    # barycentrics are affine along a row: their value at each span's first texel (float64, per
    # (face, row) pair) plus a per-face step per column, expanded to texels in float32
    t = tri
    x0, y0 = x[t, 0], y[t, 0]
    d1x, d1y = (y[t, 2] - y0) / det[t], -(x[t, 2] - x0) / det[t]      # d b1 / d px, d b1 / d py
    d2x, d2y = -(y[t, 1] - y0) / det[t], (x[t, 1] - x0) / det[t]
    sx, sy = c0 + 0.5 - x0, yc - y0
    start = np.stack([sx * d1x + sy * d1y, sx * d2x + sy * d2y], 1).astype(np.float32)
    step = np.stack([d1x, d2x], 1).astype(np.float32)
    pair = np.repeat(np.arange(len(tri), dtype=np.int64), n_cols)
    offset = np.arange(len(pair), dtype=np.int64) - np.repeat(np.cumsum(n_cols) - n_cols, n_cols)
    b12 = start[pair] + offset[:, None].astype(np.float32) * step[pair]
    bary = np.empty((len(pair), 3), np.float32)
    bary[:, 1:] = b12
    bary[:, 0] = 1.0 - b12[:, 0] - b12[:, 1]
    np.clip(bary, 0.0, 1.0, out=bary)
    bary /= bary.sum(axis=1, keepdims=True)
    flat = (row * size + c0)[pair] + offset
    counts = np.bincount(flat, minlength=size * size)
    covered = np.count_nonzero(counts)
    overlap = float(np.count_nonzero(counts > 1)) / covered if covered else 0.0
    face_map.reshape(-1)[flat] = ok[tri][pair]
    bary_map.reshape(-1, 3)[flat] = bary
    return TexelMap(face_map, bary_map, overlap)
