"""Render a mesh from a set of cameras into float buffers (the render bundle)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from . import backend_pyrender, backend_raycast, gl_worker
from .cameras import Camera, to_render_frame
from .errors import InputError
from .mesh import Mesh
from .surface import ALBEDO_MODES, MeshTables, sample_surface, shade_lambert

log = logging.getLogger(__name__)

BACKENDS = ("auto", "pyrender", "pyrender (worker)", "pyrender (in-process)", "raycast")
MAX_RESOLUTION = 4096


@dataclass
class RenderBundle:
    """Float render outputs of V views at H x W (row 0 = top; see CONVENTIONS.md).

    mask: bool [V, H, W]; face_id: int32 [V, H, W] (-1 background);
    points: float32 [V, H, W, 3], hit points in the asset's own frame (0 on background);
    depth: float32 [V, H, W], distance along each camera's viewing axis in render-frame units
    (0 on background); normal_world: float32 [V, H, W, 3] unit normals facing the camera
    (0 on background); albedo and (if rendered) lit: float32 [V, H, W, 3] sRGB in [0, 1] over
    the background colour. Derived on request: :attr:`points_normalized`, :attr:`normal_camera`.
    """

    cameras: list[Camera]
    width: int
    height: int
    mask: np.ndarray
    face_id: np.ndarray
    points: np.ndarray
    depth: np.ndarray
    normal_world: np.ndarray
    albedo: np.ndarray
    lit: Optional[np.ndarray]
    asset_bounds: np.ndarray
    center: np.ndarray
    scale: float
    backend: str
    source: str = ""

    def __len__(self) -> int:
        return len(self.cameras)

    @property
    def points_normalized(self) -> np.ndarray:
        """float32 [V, H, W, 3]: points scaled per axis by the asset bounding box to [0, 1]
        (RefAny3D's point map); 1 (white) on background."""
        lo, hi = self.asset_bounds
        extent = np.where(hi - lo > 0, hi - lo, 1.0)
        scaled = np.clip((self.points - lo.astype(np.float32)) / extent.astype(np.float32), 0.0, 1.0)
        return np.where(self.mask[..., None], scaled, np.float32(1.0))

    @property
    def normal_camera(self) -> np.ndarray:
        """float32 [V, H, W, 3]: normals in each camera's OpenGL frame (+Z towards the camera)."""
        rot = np.stack([c.cam_to_world[:3, :3] for c in self.cameras]).astype(np.float32)
        return np.einsum("vhwi,vij->vhwj", self.normal_world, rot)


def check_resolution(width: int, height: int) -> None:
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, (int, np.integer)) or not 1 <= v <= MAX_RESOLUTION:
            raise InputError(name, f"must be an integer from 1 to {MAX_RESOLUTION} pixels (got {v}).")


def check_cameras_outside(mesh: Mesh, cameras: list[Camera]) -> None:
    """A camera inside the mesh's bounding box sees the inside of the asset (or nothing)."""
    lo, hi = mesh.bounds
    for k, cam in enumerate(cameras):
        if cam.frame != "render":     # a library caller skipped cameras_in_render_frame
            raise InputError("cameras", f"camera {k} is given in the {cam.frame} frame; map the cameras with "
                                        "cameras_in_render_frame(mesh, cameras) first.")
        p = cam.position
        if cam.projection == "perspective" and np.all(p > lo) and np.all(p < hi):
            raise InputError("cameras", f"camera {k} at {np.round(p, 3).tolist()} is inside the mesh's bounding "
                                        f"box {np.round(lo, 3).tolist()}..{np.round(hi, 3).tolist()}; increase "
                                        "the rig's radius (a normalised mesh fits in [-1, 1]).")


def cameras_in_render_frame(mesh: Mesh, cameras: list[Camera]) -> list[Camera]:
    """``cameras`` in the render frame of ``mesh``: cameras given in its asset frame or in the 3D
    viewer's fitted frame (Camera.frame) are mapped with the mesh's bounds and normalisation."""
    return [to_render_frame(c, mesh.center, mesh.scale, mesh.asset_bounds) for c in cameras]


def make_visibility(backend: str, vertices: np.ndarray, faces: np.ndarray):
    """The visibility backend (all give the same face ids):

    'pyrender (in-process)': GL in this process; 'pyrender (worker)': GL in the pack's worker
    process (gl_worker.py); 'pyrender': GL, in-process when this process has no GL of its own
    (backend_pyrender.foreign_gl), else in the worker; 'auto': as 'pyrender', else 'raycast'
    (logged as a warning with what failed); 'raycast': Embree on the CPU. That order is the
    measured one (benchmarks/render.py): in-process GL, then the worker, then ray casting."""
    if backend not in BACKENDS:
        raise InputError("backend", f"must be one of {BACKENDS} (got {backend!r}).")
    if backend == "raycast":
        return backend_raycast.RaycastVisibility(vertices, faces)
    if backend == "pyrender (in-process)":
        return backend_pyrender.PyrenderVisibility(vertices, faces)
    if backend == "pyrender (worker)":
        return gl_worker.WorkerVisibility(vertices, faces)
    foreign = backend_pyrender.foreign_gl()
    failed = [] if foreign is None else [f"In-process GL not tried: this process has GL of its own ({foreign})."]
    if foreign is None:
        try:
            return backend_pyrender.PyrenderVisibility(vertices, faces)
        except InputError as exc:
            if exc.input_name != "backend":
                raise
            failed.append(exc.message)
    try:
        return gl_worker.WorkerVisibility(vertices, faces)
    except InputError as exc:
        if exc.input_name != "backend":
            raise
        failed.append(exc.message)
    if backend == "pyrender":
        raise InputError("backend", " ".join(failed))
    log.warning("Realiz3D: no OpenGL (%s); rendering with the raycast backend", " ".join(failed))
    return backend_raycast.RaycastVisibility(vertices, faces)


def render_views(mesh: Mesh, cameras: list[Camera], width: int = 512, height: int = 512, backend: str = "auto",
                 smooth_normals: bool = True, background=(1.0, 1.0, 1.0), lit: bool = True,
                 ambient: float = 0.3, progress: Optional[Callable[[int, int], None]] = None,
                 albedo: str = "multiplied") -> RenderBundle:
    """Render every camera's view of ``mesh``.

    lit: also compute the lit (Lambert, headlight + ambient) RGB. albedo: how a part's colour
    sources combine, 'multiplied' (glTF: base colour factor x texture x vertex x face colour)
    or 'reference' (RefAny3D's renderer: the texture alone, else vertex, else face, else base
    colour); the lit RGB shades that albedo. Cameras given in the asset or viewer-fit frame are
    mapped into the render frame first (the bundle keeps the mapped ones). progress(done, total)
    is called after each view; it may raise to cancel (the host's interrupt), in which case
    nothing is returned.
    """
    if not cameras:
        raise InputError("cameras", "no cameras given (zero views); use at least one view.")
    check_resolution(width, height)
    cameras = cameras_in_render_frame(mesh, cameras)
    if not 0.0 <= ambient <= 1.0:
        raise InputError("ambient", f"must be within [0, 1] (got {ambient}).")
    if albedo not in ALBEDO_MODES:
        raise InputError("albedo", f"must be one of {ALBEDO_MODES} (got {albedo!r}).")
    check_cameras_outside(mesh, cameras)
    tables = MeshTables(mesh)
    vis = make_visibility(backend, tables.vertices, tables.faces)
    bg = np.asarray(background, np.float32)

    v, h, w = len(cameras), height, width
    # zeros/empty only reserve memory; each view's slice is written inside the loop, so a large
    # request (64 views at 4K) starts at once and stays cancellable between views
    out = {
        "mask": np.zeros((v, h, w), bool), "face_id": np.empty((v, h, w), np.int32),
        "points": np.zeros((v, h, w, 3), np.float32), "depth": np.zeros((v, h, w), np.float32),
        "normal_world": np.zeros((v, h, w, 3), np.float32), "albedo": np.empty((v, h, w, 3), np.float32),
    }
    if lit:
        out["lit"] = np.empty((v, h, w, 3), np.float32)
    for k, cam in enumerate(cameras):
        fid = vis.face_ids(cam, w, h)
        pixel = np.flatnonzero(fid.reshape(-1) >= 0)
        origins, dirs = cam.rays(w, h, pixel)
        s = sample_surface(tables, fid, origins, dirs, smooth_normals, albedo)
        # flat views into this view's slices: [H * W] or [H * W, 3]
        flat = {name: arr[k].reshape(h * w, -1) if arr.ndim == 4 else arr[k].reshape(-1)
                for name, arr in out.items()}
        out["face_id"][k] = fid
        out["albedo"][k] = bg
        if lit:
            out["lit"][k] = bg
        flat["mask"][pixel] = True
        flat["points"][pixel] = mesh.to_asset_frame(s.point)
        flat["depth"][pixel] = (s.point - cam.position) @ -cam.cam_to_world[:3, 2]
        flat["normal_world"][pixel] = s.normal
        flat["albedo"][pixel] = s.albedo
        if lit:
            flat["lit"][pixel] = shade_lambert(s.albedo, s.normal, -dirs, ambient)   # headlight
        if progress is not None:
            progress(k + 1, v)
    out.setdefault("lit", None)
    return RenderBundle(cameras=list(cameras), width=w, height=h, asset_bounds=mesh.asset_bounds,
                        center=mesh.center.copy(), scale=mesh.scale, backend=vis.name, source=mesh.source, **out)
