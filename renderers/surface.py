"""Exact surface attributes from a visibility buffer.

A backend (GL rasteriser or ray caster) only decides which face each pixel centre sees. Every
attribute is then computed here in float64 from that face and the pixel's ray: the hit point
lies exactly on the triangle, so point maps, depth and normals carry no depth-buffer
quantisation and both backends share one definition of every output.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .mesh import Mesh, face_normals

#: How the unlit albedo combines a part's colour sources (CONVENTIONS.md, "Colours"):
#: multiplied: glTF's material model, base colour factor x texture x vertex colour x face colour;
#: reference: the first source present, texture > vertex colour > face colour > base colour,
#: alone (what RefAny3D's reference renderer shows, so its conditions see the same colours).
ALBEDO_MODES = ("multiplied", "reference")


@dataclass
class SurfaceSample:
    """Attributes of the foreground pixels of one view (P = number of foreground pixels).

    pixel: int64 [P] flat pixel indices; face: int64 [P] global face ids; point: float64 [P, 3]
    render-frame hit points; normal: float32 [P, 3] unit world normals facing the camera;
    albedo: float32 [P, 3] sRGB in [0, 1].
    """

    pixel: np.ndarray
    face: np.ndarray
    point: np.ndarray
    normal: np.ndarray
    albedo: np.ndarray


class MeshTables:
    """Per-mesh arrays shared by all views of one render call. Per-face quantities are
    computed in float64 once, then kept in float32 for the per-pixel work (hit points of a
    normalised mesh are then exact to ~1e-6, far below a pixel's footprint)."""

    def __init__(self, mesh: Mesh):
        self.mesh = mesh
        self.vertices = mesh.vertices
        self.faces = mesh.faces
        tri = self.vertices[self.faces]
        fn = face_normals(self.vertices, self.faces)
        # dual basis of each triangle's edges: barycentric b1 = (p - v0) . g1, b2 = (p - v0) . g2
        e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
        d11, d12, d22 = (np.einsum("fk,fk->f", a, b) for a, b in ((e1, e1), (e1, e2), (e2, e2)))
        det = d11 * d22 - d12 * d12
        det = np.where(det == 0, 1.0, det)[:, None]
        f32 = np.float32
        self.face_normals = fn.astype(f32)
        self.plane = np.einsum("fk,fk->f", fn, tri[:, 0])          # n . v0, float64 [M]
        self.v0 = tri[:, 0].astype(f32)
        self.g1 = ((d22[:, None] * e1 - d12[:, None] * e2) / det).astype(f32)
        self.g2 = ((d11[:, None] * e2 - d12[:, None] * e1) / det).astype(f32)
        self.vertex_normals = np.concatenate([
            p.vertex_normals if p.vertex_normals is not None else np.zeros_like(p.vertices)
            for p in mesh.parts]).astype(f32)
        self.offsets = mesh.face_offsets


def sample_surface(tables: MeshTables, face_id: np.ndarray, origins: np.ndarray, dirs: np.ndarray,
                   smooth_normals: bool = True, albedo: str = "multiplied") -> SurfaceSample:
    """face_id: int [H, W] (-1 = background); origins, dirs: float [P, 3] rays of the
    foreground pixels in row-major order (see :meth:`Camera.rays`); albedo: one of
    :data:`ALBEDO_MODES`."""
    pixel = np.flatnonzero(face_id.reshape(-1) >= 0)
    face = face_id.reshape(-1).take(pixel).astype(np.int64)
    if not len(pixel):      # the view sees no surface (camera looking away, mesh out of frame)
        return SurfaceSample(pixel, face, np.zeros((0, 3), np.float64), np.zeros((0, 3), np.float32),
                             np.zeros((0, 3), np.float32))
    fn = np.take(tables.face_normals, face, axis=0)
    d = dirs.astype(np.float32)

    # ray-plane intersection: t = (n . v0 - n . o) / (n . d); o is shared by all rays of a
    # perspective camera, so n . o is taken per face, in float64, before the per-pixel work
    nd = np.einsum("pk,pk->p", fn, d)
    if origins.strides[0] == 0:
        offset = (tables.plane - tables.face_normals.astype(np.float64) @ origins[0]).astype(np.float32).take(face)
    else:
        offset = (tables.plane.take(face) - np.einsum("pk,pk->p", fn.astype(np.float64),
                                                 origins)).astype(np.float32)
    t = offset / np.where(np.abs(nd) < 1e-12, np.float32(1e-12), nd)
    point = origins.astype(np.float32) + t[:, None] * d               # on the face's plane
    rel = point - np.take(tables.v0, face, axis=0)
    b1 = np.einsum("pk,pk->p", rel, np.take(tables.g1, face, axis=0))
    b2 = np.einsum("pk,pk->p", rel, np.take(tables.g2, face, axis=0))
    bary = np.clip(np.stack([1.0 - b1 - b2, b1, b2], axis=1), 0.0, 1.0)
    bary /= bary.sum(axis=1, keepdims=True)

    corners = np.take(tables.faces, face, axis=0)
    normal = fn
    if smooth_normals:
        vn = interpolate(bary, tables.vertex_normals, corners)
        length = np.linalg.norm(vn, axis=1, keepdims=True)
        ok = (length[:, 0] > 1e-6) & (np.einsum("pk,pk->p", vn, fn) > 0)   # fall back on bad normals
        vn /= np.maximum(length, 1e-6)
        bad = np.flatnonzero(~ok)
        vn[bad] = fn[bad]
        normal = vn
    normal = normal * np.where(nd > 0, np.float32(-1.0), np.float32(1.0))[:, None]   # seen from behind: flip
    color = _albedo(tables, face, corners, bary, albedo == "reference")
    return SurfaceSample(pixel, face, point, normal, color)


def interpolate(bary: np.ndarray, values: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Barycentric interpolation of per-vertex ``values`` [N, C] at [P] points: [P, C]."""
    out = bary[:, 0:1] * np.take(values, corners[:, 0], axis=0)
    out += bary[:, 1:2] * np.take(values, corners[:, 1], axis=0)
    out += bary[:, 2:3] * np.take(values, corners[:, 2], axis=0)
    return out


def _albedo(tables: MeshTables, face: np.ndarray, corners: np.ndarray, bary: np.ndarray,
            reference: bool = False) -> np.ndarray:
    out = np.empty((len(face), 3), np.float32)
    if len(tables.mesh.parts) == 1:
        selections = [slice(None)]
    else:
        part_of = np.searchsorted(tables.offsets, face, side="right") - 1
        selections = [np.flatnonzero(part_of == k) for k in range(len(tables.mesh.parts))]
    vertex_base = 0
    for k, (part, sel) in enumerate(zip(tables.mesh.parts, selections)):
        local, b = corners[sel] - vertex_base, bary[sel]
        vertex_base += len(part.vertices)
        if not len(local):
            continue
        sources = []          # each [P_k, 3] or [3]; multiplied in order, or the first alone
        if part.texture is not None and part.uv is not None:
            sources.append(sample_texture(part.texture, interpolate(b, part.uv, local)))
        if part.vertex_colors is not None:
            sources.append(interpolate(b, part.vertex_colors[:, :3], local))
        if part.face_colors is not None:
            sources.append(part.face_colors[face[sel] - tables.offsets[k], :3])
        if reference:
            out[sel] = sources[0] if sources else part.base_color[:3]
            continue
        color = np.empty((len(local), 3), np.float32)
        color[:] = part.base_color[:3]
        for source in sources:
            color *= source
        out[sel] = color
    return np.clip(out, 0.0, 1.0, out=out)


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup with repeat wrapping. texture uint8 [H, W, 4] (row 0 = top);
    uv float [P, 2] with v = 0 at the bottom (OpenGL). Returns float32 [P, 3] in [0, 1]."""
    h, w = texture.shape[:2]
    x = uv[:, 0].astype(np.float32) * w - 0.5
    y = (1.0 - uv[:, 1].astype(np.float32)) * h - 0.5
    if not (np.isfinite(x).all() and np.isfinite(y).all()):   # UVs near float32's max overflow when scaled
        x, y = (np.nan_to_num(c, nan=0.0, posinf=0.0, neginf=0.0) for c in (x, y))
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = np.mod(x0, w).astype(np.int32), np.mod(y0, h).astype(np.int32)
    x1, y1 = x0 + 1, y0 + 1
    x1[x1 == w], y1[y1 == h] = 0, 0
    texels = np.ascontiguousarray(texture).view(np.uint32).reshape(-1)    # one 4-byte gather per texel

    def fetch(yi, xi):
        return np.take(texels, yi * w + xi).view(np.uint8).reshape(-1, 4)[:, :3].astype(np.float32)

    top = fetch(y0, x0) * (1 - fx) + fetch(y0, x1) * fx
    bottom = fetch(y1, x0) * (1 - fx) + fetch(y1, x1) * fx
    return (top * (1 - fy) + bottom * fy) * np.float32(1 / 255.0)


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)


def shade_lambert(albedo: np.ndarray, normal: np.ndarray, light_dir: np.ndarray, ambient: float) -> np.ndarray:
    """Lit RGB: Lambert with one light plus ambient, computed in linear light.
    albedo sRGB [P, 3]; normal, light_dir unit [P, 3] (light_dir points towards the light)."""
    lambert = np.clip(np.einsum("pk,pk->p", normal, light_dir), 0.0, 1.0)[:, None]
    return linear_to_srgb(srgb_to_linear(albedo) * (ambient + (1.0 - ambient) * lambert))
