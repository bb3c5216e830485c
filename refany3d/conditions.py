"""Condition views for RefAny3D, rendered from a mesh with the reference's cameras."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..renderers import Mesh, refany3d_rig, render_views


def render_conditions(mesh: Mesh, n_views: int = 8, size: int = 512, backend: str = "auto",
                      progress: Optional[Callable[[int, int], None]] = None):
    """(rgb_views, point_views, asset_bounds): unlit albedo and per-axis point maps of the
    ``refany3d`` camera preset, both [V, size, size, 3] float in [0, 1] on white, as the
    reference renders them; asset_bounds [2, 3] decodes generated point maps back to XYZ.
    The mesh should be normalised into [-1, 1] (Load Mesh does this by default)."""
    bundle = render_views(mesh, refany3d_rig(n_views), size, size, backend=backend, lit=False, progress=progress)
    return torch.from_numpy(bundle.albedo), torch.from_numpy(bundle.points_normalized), bundle.asset_bounds
