"""The pack's in-memory mesh: triangle parts with their own materials, in one asset frame.

A scene is flattened into ``Mesh.parts``: every part's vertices already carry the scene-graph
transform, so all parts share one frame (the asset's own frame, see CONVENTIONS.md).
Colours are sRGB in [0, 1], as glTF stores base colours.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from .errors import InputError

#: Albedo of a mesh that carries no colour at all (STL, bare OBJ): RefAny3D's mid grey.
DEFAULT_ALBEDO = (0.5, 0.5, 0.5)


@dataclass
class MeshPart:
    """One triangle list with one material.

    vertices: float64 [N, 3]; faces: int64 [M, 3]; uv: float32 [N, 2] (OpenGL convention:
    v = 0 is the bottom row of the texture) or None; vertex_colors: float32 [N, 4] or None;
    face_colors: float32 [M, 4] or None; texture: uint8 [H, W, 4] (row 0 = top) or None;
    base_color: float32 [4] (glTF baseColorFactor): multiplies texture and vertex colours in the
    'multiplied' albedo; the 'reference' albedo uses it only when the part has no other colour.
    """

    vertices: np.ndarray
    faces: np.ndarray
    uv: Optional[np.ndarray] = None
    vertex_colors: Optional[np.ndarray] = None
    face_colors: Optional[np.ndarray] = None
    texture: Optional[np.ndarray] = None
    base_color: np.ndarray = field(default_factory=lambda: np.array([*DEFAULT_ALBEDO, 1.0], np.float32))
    vertex_normals: Optional[np.ndarray] = None
    name: str = "part"


@dataclass
class Mesh:
    """A flattened scene. ``normalization`` maps the asset frame to the render frame:
    x_render = (x_asset - center) * scale; identity unless :func:`normalize` was applied.
    ``notes``: what the reader could not honour (e.g. a missing material file), for the user."""

    parts: list[MeshPart]
    source: str = "<memory>"
    center: np.ndarray = field(default_factory=lambda: np.zeros(3))
    scale: float = 1.0
    notes: list[str] = field(default_factory=list)

    @property
    def vertices(self) -> np.ndarray:
        """All parts' vertices in the render frame, float64 [N, 3]."""
        return np.concatenate([p.vertices for p in self.parts], axis=0)

    @property
    def faces(self) -> np.ndarray:
        """All faces indexing :attr:`vertices`, int64 [M, 3]."""
        out, base = [], 0
        for p in self.parts:
            out.append(p.faces + base)
            base += len(p.vertices)
        return np.concatenate(out, axis=0)

    @property
    def face_offsets(self) -> np.ndarray:
        """Index of each part's first face in :attr:`faces`, int64 [P + 1]."""
        return np.cumsum([0] + [len(p.faces) for p in self.parts])

    @property
    def bounds(self) -> np.ndarray:
        """Render-frame bounding box, float64 [2, 3] (min, max)."""
        v = self.vertices
        return np.stack([v.min(0), v.max(0)])

    @property
    def asset_bounds(self) -> np.ndarray:
        """Bounding box in the asset's own frame, float64 [2, 3]; point maps normalise by it."""
        return self.bounds / self.scale + self.center

    def to_asset_frame(self, points: np.ndarray) -> np.ndarray:
        return points / self.scale + self.center

    @property
    def num_faces(self) -> int:
        return int(sum(len(p.faces) for p in self.parts))


def validate(mesh: Mesh, input_name: str = "mesh") -> Mesh:
    """Raise :class:`InputError` for meshes no renderer can use; return the mesh unchanged."""
    parts = [p for p in mesh.parts if len(p.faces)]
    if not parts:
        raise InputError(input_name, f"'{mesh.source}' has no triangles (empty mesh, or points or lines "
                                     "only). Load a file with triangle faces.")
    for p in parts:
        bad = ~np.isfinite(p.vertices).all(axis=1)
        if bad.any():
            raise InputError(input_name, f"'{mesh.source}' part '{p.name}' has {int(bad.sum())} vertices with "
                                         "NaN or infinite coordinates. Repair the mesh (e.g. remove those "
                                         "vertices in a 3D editor) and load it again.")
        for what, values in (("texture coordinates (UVs)", p.uv), ("vertex colours", p.vertex_colors),
                             ("face colours", p.face_colors)):
            if values is not None and not np.isfinite(values).all():
                raise InputError(input_name, f"'{mesh.source}' part '{p.name}' has {what} that are NaN or "
                                             "infinite. The file is damaged; export it again.")
        if p.faces.min() < 0 or p.faces.max() >= len(p.vertices):
            raise InputError(input_name, f"'{mesh.source}' part '{p.name}' has faces that index missing "
                                         "vertices. The file is corrupt; export it again.")
    extent = np.ptp(np.concatenate([p.vertices for p in parts]), axis=0)
    if not np.any(extent > 0):
        raise InputError(input_name, f"'{mesh.source}' has zero size (all vertices coincide).")
    mesh.parts = parts
    return mesh


def normalize(mesh: Mesh) -> Mesh:
    """Centre the bounding box on the origin and scale its longest side to span [-1, 1]
    (RefAny3D's normalisation). Returns a new Mesh; records the transform in center/scale."""
    lo, hi = mesh.bounds
    center = (lo + hi) / 2.0
    scale = 2.0 / float(np.max(hi - lo))
    parts = [replace(p, vertices=(p.vertices - center) * scale) for p in mesh.parts]
    # compose with any earlier normalisation so asset-frame queries stay exact
    return Mesh(parts=parts, source=mesh.source,
                center=mesh.center + center / mesh.scale, scale=mesh.scale * scale, notes=list(mesh.notes))


def is_normalized(mesh: Mesh, tol: float = 1e-9) -> bool:
    """True when the render-frame bounding box is centred on the origin and its longest side
    spans [-1, 1] (what :func:`normalize` gives), to ``tol``."""
    lo, hi = mesh.bounds
    return bool(np.all(np.abs(lo + hi) <= 2 * tol) and abs(float(np.max(hi - lo)) - 2.0) <= 2 * tol)


def normalized(mesh: Mesh) -> Mesh:
    """``mesh`` itself when it is normalised already, else a normalised copy (the input is never
    changed). Skipping the no-op keeps a normalised mesh's vertices bit-identical."""
    return mesh if is_normalized(mesh) else normalize(mesh)


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit geometric normals of faces (counter-clockwise winding is the front), [M, 3];
    degenerate faces get (0, 0, 0)."""
    tri = vertices[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return np.divide(n, length, out=np.zeros_like(n), where=length > 0)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals, [N, 3] (shared vertices smooth, split vertices stay hard)."""
    tri = vertices[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    out = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(out, faces[:, k], n)
    length = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, length, out=np.zeros_like(out), where=length > 0)


def is_closed(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """True when every edge (after welding coincident vertices) is shared by exactly two faces:
    then no back face can be seen from outside, and a rasteriser may cull them."""
    # weld on a grid of 1e-6 of the extent, one int64 key per vertex (21 bits per axis; a 1-D
    # unique is far faster than unique over rows)
    scale = (2 ** 20 - 1) / max(float(np.abs(vertices).max()), 1e-12)
    q = np.round(vertices * scale).astype(np.int64) + 2 ** 20
    _, weld = np.unique((q[:, 0] << 42) | (q[:, 1] << 21) | q[:, 2], return_inverse=True)
    f = weld.reshape(-1)[faces]
    a = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    b = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    key = np.minimum(a, b) * (int(weld.max()) + 1) + np.maximum(a, b)
    _, counts = np.unique(key, return_counts=True)
    return bool(np.all(counts == 2))
