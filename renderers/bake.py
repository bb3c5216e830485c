"""Texture baking (SPEC.md section 3): generated views back-projected onto a mesh's texture atlas.

Per texel (as in MV-Adapter): its surface point is projected into every view; a view counts when
it sees that point (the view's visibility buffer shows the same face there, or a surface within
a depth tolerance) at an incidence whose cosine is at least ``min_cos``; the colours of those
views are averaged with weights cos(incidence)^k. What no view saw is then filled (nearest seen
texel, or a smooth pull-push fill), and the gutters around UV islands are dilated from the
islands' borders so bilinear sampling and mip-mapping never read an unrelated colour. Every
texel of the result has a value.
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from .cameras import Camera
from .errors import InputError
from .mesh import Mesh, MeshPart, face_normals, is_closed
from .render import cameras_in_render_frame, check_cameras_outside, make_visibility
from .uv import Atlas, make_atlas, rasterize

FILLS = ("pull-push", "nearest")
MAX_TEXTURE = 8192


@dataclass
class BakeSettings:
    """texture_size: texels per side; cos_power k and min_cos: view weight cos^k, views at a
    cosine below min_cos ignored; depth_tolerance: as a fraction of the mesh's bounding-box
    diagonal; fill: 'pull-push' or 'nearest'; uv_mode: 'auto' | 'keep' | 'unwrap' (see
    renderers.uv.make_atlas); padding: texels between unwrapped charts, and the width of the
    gutter dilation; backend: visibility backend as in render_views."""

    texture_size: int = 1024
    cos_power: float = 2.0
    min_cos: float = 0.2
    depth_tolerance: float = 0.01
    fill: str = "pull-push"
    uv_mode: str = "auto"
    padding: int = 4
    backend: str = "auto"


@dataclass
class BakeResult:
    """mesh: the baked mesh (one part: the atlas geometry, its UVs and the texture, white base
    colour), in the same render frame as the input; texture uint8 [T, T, 4]; seen bool [T, T]:
    texels some view saw; covered bool [T, T]: texels inside a UV island; notes: repairs made."""

    mesh: Mesh
    texture: np.ndarray
    seen: np.ndarray
    covered: np.ndarray
    notes: list = field(default_factory=list)

    @property
    def coverage(self) -> float:
        """Fraction of the islands' texels that a view saw."""
        return float(self.seen.sum()) / max(int(self.covered.sum()), 1)


def check_settings(s: BakeSettings) -> None:
    if not isinstance(s.texture_size, (int, np.integer)) or not 16 <= s.texture_size <= MAX_TEXTURE:
        raise InputError("texture_size", f"must be an integer from 16 to {MAX_TEXTURE} (got {s.texture_size}).")
    if not 0.0 <= s.min_cos < 1.0:
        raise InputError("min_cos", f"must be within [0, 1) (got {s.min_cos}).")
    if not 0.0 <= s.cos_power <= 64.0:
        raise InputError("cos_power", f"must be within [0, 64] (got {s.cos_power}).")
    if not 0.0 < s.depth_tolerance <= 1.0:
        raise InputError("depth_tolerance", f"must be within (0, 1] (got {s.depth_tolerance}).")
    if s.fill not in FILLS:
        raise InputError("fill", f"must be one of {FILLS} (got {s.fill!r}).")
    if not 0 <= s.padding <= 64:
        raise InputError("padding", f"must be from 0 to 64 texels (got {s.padding}).")


def check_views(views: np.ndarray, cameras: list[Camera], input_name: str = "views") -> np.ndarray:
    """views: [V, H, W, 3 or 4] float in [0, 1] (or uint8), one per camera."""
    views = np.asarray(views)
    if views.ndim != 4 or views.shape[-1] not in (3, 4):
        raise InputError(input_name, f"must be images [V, H, W, 3] (got shape {list(views.shape)}).")
    if not cameras:
        raise InputError("cameras", "no cameras given; baking needs the camera of every view.")
    if len(views) != len(cameras):
        few = len(views) < len(cameras)
        raise InputError(input_name, f"{len(views)} images for {len(cameras)} cameras: "
                                  f"{'fewer views than cameras' if few else 'more views than cameras'}. Give one "
                                  "image per camera, in the cameras' order (e.g. the views of Multiview Generate "
                                  "with the rig that generated them).")
    if views.dtype == np.uint8:
        views = views.astype(np.float32) / 255.0
    views = views[..., :3].astype(np.float32)
    if not np.isfinite(views).all():
        raise InputError(input_name, "contain NaN or infinite values.")
    return np.clip(views, 0.0, 1.0)


def bake_texture(mesh: Mesh, views: np.ndarray, cameras: list[Camera], settings: Optional[BakeSettings] = None,
                 progress: Optional[Callable[[int, int], None]] = None, views_name: str = "views") -> BakeResult:
    """Back-project ``views`` (one per camera) into a texture. Cameras in the render frame of
    ``mesh``, or marked as in another frame (a viewer camera: Camera.frame), which is mapped.

    progress(done, total) is called after each view and after the fill; it may raise to cancel.
    views_name: the input named in errors about the views.
    """
    s = settings or BakeSettings()
    check_settings(s)
    cameras = cameras_in_render_frame(mesh, list(cameras))
    views = check_views(views, cameras, views_name)
    check_cameras_outside(mesh, cameras)
    size = int(s.texture_size)
    total = len(cameras) + 1
    uv = mesh.parts[0].uv if len(mesh.parts) == 1 else None
    notes = []
    if len(mesh.parts) > 1 and s.uv_mode != "unwrap":
        if s.uv_mode == "keep":
            raise InputError("uv_mode", f"'keep' needs a single-part mesh; this one has {len(mesh.parts)} parts, each "
                                        "with its own UVs and material. Use 'auto' or 'unwrap' to bake into one atlas.")
        notes.append(f"The mesh's {len(mesh.parts)} parts are baked into one texture atlas.")
    poll = (lambda: progress(0, total)) if progress is not None else None
    atlas, texels = atlas_and_texels(mesh, uv, s, poll)
    if atlas.note:
        notes.append(atlas.note)
    flat = np.flatnonzero(texels.face.reshape(-1) >= 0)
    if not len(flat):
        raise InputError("mesh", "has no UV area to bake into (every UV triangle is degenerate). Use uv_mode "
                                 "'unwrap'.")
    import torch

    face = texels.face.reshape(-1)[flat].astype(np.int64)
    bary = torch.from_numpy(texels.bary.reshape(-1, 3)[flat])
    corners = torch.from_numpy(atlas.faces[face])
    v32 = torch.from_numpy(atlas.vertices.astype(np.float32))
    point = sum(bary[:, i:i + 1] * v32.index_select(0, corners[:, i]) for i in range(3))
    del bary, corners
    vertices, faces = mesh.vertices, mesh.faces      # concatenated from the parts on every access
    fn = face_normals(vertices, faces)
    face_t = torch.from_numpy(face)
    normal = torch.from_numpy(fn.astype(np.float32)).index_select(0, face_t)
    lo, hi = mesh.bounds
    tolerance = float(s.depth_tolerance * np.linalg.norm(hi - lo))

    vis = make_visibility(s.backend, vertices, faces)
    plane = np.einsum("fk,fk->f", fn, vertices[faces[:, 0]])
    closed = is_closed(vertices, faces)
    acc = torch.zeros((len(flat), 3))
    wsum = torch.zeros(len(flat))
    for k, cam in enumerate(cameras):
        h, w = views[k].shape[:2]
        fid = vis.face_ids(cam, w, h)
        # faces this view can see: on a closed mesh only those facing the camera (exact per face:
        # the camera is on one side of a face's plane for every point of it)
        if cam.projection == "perspective":
            facing = fn @ cam.position - plane
        else:
            facing = fn @ cam.cam_to_world[:3, 2]
        front = torch.from_numpy(facing > 0 if closed else np.ones(len(fn), bool))
        cand = torch.nonzero(front.index_select(0, face_t)).squeeze(1)
        sel, cw, color = _project_view(cam, views[k], fid, pixel_depth(cam, fid, fn, plane),
                                       point.index_select(0, cand), normal.index_select(0, cand),
                                       face_t.index_select(0, cand), tolerance, s)
        idx = cand.index_select(0, sel)
        acc.index_add_(0, idx, cw[:, None] * color)
        wsum.index_add_(0, idx, cw)
        if progress is not None:
            progress(k + 1, total)
    del point, normal

    seen_flat = (wsum > 0).numpy()
    if not seen_flat.any():
        raise InputError("views", "no texel of the mesh is visible in any view (are these the cameras the views "
                                  "were rendered or generated from?).")
    texture = np.zeros((size * size, 3), np.float32)
    texture[flat[seen_flat]] = (acc / wsum.clamp(min=1e-12)[:, None]).numpy()[seen_flat]
    seen = np.zeros(size * size, bool)
    seen[flat[seen_flat]] = True
    seen = seen.reshape(size, size)
    covered = texels.covered
    texture = texture.reshape(size, size, 3)
    texture = fill_holes(texture, seen, s.fill)
    texture = dilate_gutters(texture, covered, s.padding)
    if progress is not None:
        progress(total, total)
    rgba = np.empty((size, size, 4), np.uint8)
    rgba[..., :3] = np.clip(texture * 255.0 + 0.5, 0.0, 255.0)
    rgba[..., 3] = 255
    return BakeResult(baked_mesh(mesh, atlas, rgba), rgba, seen, covered, notes)


#: the last few (atlas, texel map) pairs: baking new views onto the same mesh (the usual loop of
#: an artist trying prompts and seeds) skips the unwrap and the UV rasterisation
_ATLAS_CACHE: "OrderedDict[str, tuple]" = OrderedDict()
ATLAS_CACHE_SIZE = 2
#: default bound of that cache in megabytes: a texel map takes 16 bytes per texel (268 MB at
#: 4096 px, 67 MB at 2048 px), so this keeps one 4096 px entry or a couple of smaller ones
DEFAULT_BAKE_CACHE_MB = 512.0


def _limit_from_env() -> int:
    raw = os.environ.get("REALIZ3D_BAKE_CACHE_MB", "")
    try:
        mb = float(raw) if raw.strip() else DEFAULT_BAKE_CACHE_MB
        if not mb >= 0 or math.isinf(mb):
            raise ValueError
    except ValueError:
        warnings.warn(f"REALIZ3D_BAKE_CACHE_MB={raw!r} is not a number of megabytes >= 0; using "
                      f"{DEFAULT_BAKE_CACHE_MB:g}.")
        mb = DEFAULT_BAKE_CACHE_MB
    return int(mb * 2 ** 20)


#: bytes the cached atlases and texel maps may hold (REALIZ3D_BAKE_CACHE_MB, or
#: :func:`set_bake_cache_limit`); least recently baked meshes are evicted beyond it; 0: no cache
ATLAS_CACHE_BYTES = _limit_from_env()


def set_bake_cache_limit(mb: float) -> None:
    """Bound the atlas/texel-map cache to ``mb`` megabytes (0 disables it); evicts at once."""
    global ATLAS_CACHE_BYTES
    if isinstance(mb, bool) or not isinstance(mb, (int, float)) or not mb >= 0 or math.isinf(mb):
        raise InputError("bake_cache_mb", f"must be a number of megabytes >= 0 (0 disables the cache; got {mb!r}).")
    ATLAS_CACHE_BYTES = int(mb * 2 ** 20)
    _evict()


def cache_entry_bytes(entry: tuple) -> int:
    """Memory held by one cached (atlas, texel map) pair."""
    atlas, texels = entry
    return sum(a.nbytes for a in (atlas.vertices, atlas.faces, atlas.uv, atlas.source_vertex, texels.face,
                                  texels.bary))


def bake_cache_bytes() -> int:
    """Memory the atlas cache holds now."""
    return sum(cache_entry_bytes(e) for e in _ATLAS_CACHE.values())


def _evict() -> None:
    while _ATLAS_CACHE and (len(_ATLAS_CACHE) > ATLAS_CACHE_SIZE or bake_cache_bytes() > ATLAS_CACHE_BYTES):
        _ATLAS_CACHE.popitem(last=False)


def atlas_and_texels(mesh: Mesh, uv, s: BakeSettings, poll=None):
    """The mesh's atlas and its texel map at the settings' size, from the cache when the same
    geometry, UVs and settings were baked recently (and the cache's byte bound kept them)."""
    h = hashlib.sha1()
    for a in (mesh.vertices, mesh.faces, uv):
        h.update(b"-" if a is None else np.ascontiguousarray(a).tobytes())
    h.update(f"{s.uv_mode}|{s.texture_size}|{s.padding}".encode())
    key = h.hexdigest()
    if key in _ATLAS_CACHE:
        _ATLAS_CACHE.move_to_end(key)
        return _ATLAS_CACHE[key]
    atlas = make_atlas(mesh.vertices, mesh.faces, uv, s.uv_mode, int(s.texture_size), s.padding, poll)
    entry = (atlas, rasterize(atlas.uv, atlas.faces, int(s.texture_size)))
    if cache_entry_bytes(entry) <= ATLAS_CACHE_BYTES:       # larger than the whole bound: not kept
        _ATLAS_CACHE[key] = entry
        _evict()
    return entry


def pixel_depth(cam: Camera, fid: np.ndarray, fn: np.ndarray, plane: np.ndarray) -> np.ndarray:
    """float32 [H, W]: depth along the viewing axis of the surface each pixel sees (inf on
    background), exact from the pixel's face plane."""
    h, w = fid.shape
    out = np.full(h * w, np.inf, np.float32)
    pix = np.flatnonzero(fid.reshape(-1) >= 0)
    if len(pix):
        o, d = cam.rays(w, h, pix)
        f = fid.reshape(-1)[pix]
        n = fn[f]
        nd = np.einsum("pk,pk->p", n, d)
        hit = (plane[f] - np.einsum("pk,pk->p", n, o)) / np.where(np.abs(nd) < 1e-12, 1e-12, nd)
        out[pix] = hit * (d @ -cam.cam_to_world[:3, 2])
    return out.reshape(h, w)


def _project_view(cam: Camera, image: np.ndarray, fid: np.ndarray, depth_map: np.ndarray, point, normal, face,
                  tolerance: float, s: BakeSettings):
    """Texel points (torch float32 [P, 3], normals [P, 3], faces [P]) in one view: the indices of
    those it sees [S], their weights cos^k [S] and colours [S, 3]."""
    import torch

    h, w = fid.shape
    rot = torch.from_numpy(cam.cam_to_world[:3, :3].astype(np.float32))
    eye = torch.from_numpy(cam.cam_to_world[:3, 3].astype(np.float32))
    local = (point - eye) @ rot                      # camera frame: looking down -Z
    depth = -local[:, 2]
    aspect = w / h
    if cam.projection == "perspective":
        t = math.tan(cam.yfov / 2.0)
        inv = 1.0 / depth.clamp(min=1e-6)
        px = local[:, 0] * inv * (0.5 * w / (t * aspect))
        py = local[:, 1] * inv * (-0.5 * h / t)
        to_cam = eye - point
        cos = (normal * to_cam).sum(1).abs_() / to_cam.square().sum(1).sqrt_()
        del to_cam
    else:
        half = cam.ortho_height / 2.0
        px = local[:, 0] * (0.5 * w / (half * aspect))
        py = local[:, 1] * (-0.5 * h / half)
        cos = (normal @ rot[:, 2]).abs_()
    del local
    px += 0.5 * w - 0.5                              # pixel-centre coordinates, row 0 at the top
    py += 0.5 * h - 0.5
    ok = (depth > cam.znear) & (px > -0.5) & (px < w - 0.5) & (py > -0.5) & (py < h - 0.5) & (cos >= s.min_cos)
    nearest = py.round().clamp_(0, h - 1).long() * w + px.round().clamp_(0, w - 1).long()
    # seen: the pixel shows this face, or a surface within the depth tolerance of this point
    fid_t = torch.from_numpy(fid.reshape(-1).astype(np.int64))
    depth_t = torch.from_numpy(depth_map.reshape(-1))
    ok &= (fid_t.index_select(0, nearest) == face) | ((depth_t.index_select(0, nearest) - depth).abs_() <= tolerance)
    sel = torch.nonzero(ok).squeeze(1)
    color = _bilinear_foreground(image, fid >= 0, px.index_select(0, sel), py.index_select(0, sel))
    return sel, cos.index_select(0, sel).pow_(s.cos_power), color


def _bilinear_foreground(image: np.ndarray, mask: np.ndarray, x, y):
    """Bilinear lookup at pixel-centre coordinates (x, y) that ignores background pixels (the
    silhouette never bleeds the background into the texture): the lookup of the mask-premultiplied
    image divided by that of the mask. The nearest pixel is foreground for every point passed, so
    the mask weight never vanishes."""
    import torch
    import torch.nn.functional as F

    h, w = mask.shape
    table = np.empty((4, h, w), np.float32)
    table[:3] = np.moveaxis(image, -1, 0) * mask
    table[3] = mask
    grid = torch.stack([(x + 0.5) * (2.0 / w) - 1.0, (y + 0.5) * (2.0 / h) - 1.0], dim=-1)[None, None]
    out = F.grid_sample(torch.from_numpy(table)[None], grid, mode="bilinear", padding_mode="border",
                        align_corners=False)[0, :, 0].T
    return out[:, :3] / out[:, 3:].clamp(min=1e-8)


def fill_holes(texture: np.ndarray, known: np.ndarray, mode: str) -> np.ndarray:
    """Values for every texel that is not ``known``: the nearest known texel's ('nearest'), or a
    pull-push fill ('pull-push': averages over a pyramid pulled down from the known texels, pushed
    back up with bilinear upsampling, so holes get smooth colours from their surroundings)."""
    if known.all():
        return texture
    if mode == "nearest":
        from scipy import ndimage
        _, (iy, ix) = ndimage.distance_transform_cdt(~known, metric="chessboard", return_indices=True)
        return texture[iy, ix]
    return pull_push(texture, known)


def pull_push(texture: np.ndarray, known: np.ndarray) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    color = torch.from_numpy(np.ascontiguousarray(texture)).permute(2, 0, 1)[None]
    weight = torch.from_numpy(known.astype(np.float32))[None, None]
    levels = [(color * weight, weight)]
    while min(levels[-1][1].shape[-2:]) > 1:                  # pull: weighted 2x2 averages
        c, wt = levels[-1]
        if c.shape[-1] % 2 or c.shape[-2] % 2:                # odd sizes: pad by replication of nothing
            c = F.pad(c, (0, c.shape[-1] % 2, 0, c.shape[-2] % 2))
            wt = F.pad(wt, (0, wt.shape[-1] % 2, 0, wt.shape[-2] % 2))
        levels.append((F.avg_pool2d(c, 2) * 4, F.avg_pool2d(wt, 2) * 4))
    c, wt = levels[-1]
    filled = c / wt.clamp(min=1e-8)
    for c, wt in reversed(levels[1:-1]):                     # push: blend in the coarser estimate
        up = F.interpolate(filled, scale_factor=2, mode="bilinear", align_corners=False)
        up = up[..., :c.shape[-2], :c.shape[-1]]
        alpha = wt.clamp(max=1.0)
        filled = c / wt.clamp(min=1e-8) * alpha + up * (1 - alpha)
    # the finest level's weights are 0 or 1: known texels keep their value, the rest take the push
    up = F.interpolate(filled, scale_factor=2, mode="bilinear", align_corners=False)
    out = up[0, :, :known.shape[0], :known.shape[1]].permute(1, 2, 0).numpy()
    return np.where(known[..., None], texture, out).astype(np.float32)


def dilate_gutters(texture: np.ndarray, covered: np.ndarray, padding: int) -> np.ndarray:
    """Texels outside the islands within ``padding + 1`` texels take their nearest island texel,
    so a filtered lookup at an island's edge reads the island's own colours."""
    if padding <= 0 or covered.all() or not covered.any():
        return texture
    from scipy import ndimage
    dist, (iy, ix) = ndimage.distance_transform_cdt(~covered, metric="chessboard", return_indices=True)
    band = (dist > 0) & (dist <= padding + 1)
    out = texture.copy()
    out[band] = texture[iy[band], ix[band]]
    return out


def baked_mesh(mesh: Mesh, atlas: Atlas, texture: np.ndarray) -> Mesh:
    """The atlas geometry as a one-part textured mesh in the input's frame (centre and scale kept,
    so it exports back to the asset's own frame)."""
    normals = None
    vn = [p.vertex_normals for p in mesh.parts]
    if all(n is not None for n in vn):
        normals = np.concatenate(vn)[atlas.source_vertex]
    part = MeshPart(vertices=atlas.vertices.copy(), faces=atlas.faces.copy(), uv=atlas.uv.copy(), texture=texture,
                    base_color=np.ones(4, np.float32), vertex_normals=normals, name="baked")
    return Mesh([part], source=mesh.source, center=mesh.center.copy(), scale=mesh.scale)
