"""Condition views for RefAny3D: rendered from a mesh with the reference's cameras, or taken from
pre-rendered views, with the asset bounds that decode generated point maps back to XYZ."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from ..renderers import Mesh, RenderBundle, normalized, refany3d_rig, render_views
from ..renderers.errors import InputError

#: bounds assumed for pre-rendered views that come without their asset's: the normalised cube,
#: which stretches a non-cubic asset's decoded point cloud to a cube
CUBE = np.array([[-1.0] * 3, [1.0] * 3])


def render_conditions(mesh: Mesh, n_views: int = 8, size: int = 512, backend: str = "auto",
                      progress: Optional[Callable[[int, int], None]] = None, albedo: str = "reference"):
    """(rgb_views, point_views, asset_bounds) as the reference renders them: unlit albedo and
    per-axis point maps of the ``refany3d`` camera preset, both [V, size, size, 3] float32 in
    [0, 1] on white; asset_bounds float64 [2, 3] (min, max) in the asset's own frame decode
    generated point maps back to XYZ there.

    The views are always rendered from the normalised mesh (centred, longest bounding-box side
    spanning [-1, 1]), as the reference does, whether or not Load Mesh normalised it: a copy is
    normalised when needed. The point maps are per axis over the asset's own bounding box, so
    they do not depend on that step either. albedo: 'reference' (the texture alone when there is
    one; the reference renderer's colours) or 'multiplied' (glTF's base colour x texture x vertex
    colour), see renderers.render_views."""
    bundle = render_views(normalized(mesh), refany3d_rig(n_views), size, size, backend=backend, lit=False,
                          albedo=albedo, progress=progress)
    return torch.from_numpy(bundle.albedo), torch.from_numpy(bundle.points_normalized), bundle.asset_bounds


def condition_views(mesh: Optional[Mesh] = None, rgb_views: Optional[torch.Tensor] = None,
                    point_views: Optional[torch.Tensor] = None, render: Optional[RenderBundle] = None,
                    n_views: int = 8, size: int = 512, backend: str = "auto",
                    progress: Optional[Callable[[int, int], None]] = None):
    """(rgb_views, point_views, asset_bounds) for RefAny3D Sample from whichever input it got.

    mesh: rendered here (:func:`render_conditions`); it wins over the other inputs.
    Otherwise pre-rendered views [V, H, W, 3] in [0, 1]: ``rgb_views`` and ``point_views``, each
    taken from ``render`` (a Render Views bundle: its unlit albedo, its point maps) when not given;
    the bundle's asset bounds decode the point map, and without a bundle the [-1, 1] cube
    (:data:`CUBE`) stands in for them."""
    if mesh is not None:
        return render_conditions(mesh, n_views, size, backend, progress)
    if render is not None and not isinstance(render, RenderBundle):
        raise InputError("render", "expects the render output of Render Views (Realiz3D).")
    if render is not None:
        rgb_views = torch.from_numpy(render.albedo) if rgb_views is None else rgb_views
        point_views = torch.from_numpy(render.points_normalized) if point_views is None else point_views
    if rgb_views is None or point_views is None:
        raise InputError("mesh", "connect a mesh, or both rgb_views and point_views, or a render from Render Views.")
    bounds = CUBE if render is None else np.asarray(render.asset_bounds, np.float64)
    return rgb_views.float(), point_views.float(), bounds
