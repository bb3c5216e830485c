"""Multiview generation as one grid image (SPEC.md section 3, ours): V views of a mesh laid out
as a rows x cols grid, generated jointly so every view shares attention, with the matching grid
of geometry maps as the control; the result is split back into views that keep their cameras."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..renderers import RenderBundle, depth_image, normal_image
from ..renderers.controls import canny_control, inverse_depth_control
from ..renderers.errors import InputError

#: 'depth (inverse)' and 'canny' are OminiControl's depth and canny conventions (renderers.controls)
CONTROL_KINDS = ("normal", "point map", "depth", "depth (inverse)", "canny")


def grid_shape(n_views: int, cols: int) -> tuple[int, int]:
    if n_views < 1 or cols < 1:
        raise InputError("columns", f"need at least one view and one column (got {n_views} views, {cols} columns).")
    return math.ceil(n_views / cols), cols


def make_grid(images: torch.Tensor, cols: int, fill: float = 0.0) -> torch.Tensor:
    """[V, H, W, C] -> [rows * H, cols * W, C], row-major; empty cells get ``fill``."""
    v, h, w, c = images.shape
    rows, cols = grid_shape(v, cols)
    grid = torch.full((rows * h, cols * w, c), fill, dtype=images.dtype)
    for k in range(v):
        r, q = divmod(k, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = images[k]
    return grid


def split_grid(grid: torch.Tensor, n_views: int, cols: int) -> torch.Tensor:
    """The inverse of :func:`make_grid`: [rows * H, cols * W, C] -> [V, H, W, C]."""
    rows, cols = grid_shape(n_views, cols)
    h, w = grid.shape[0] // rows, grid.shape[1] // cols
    return torch.stack([grid[(k // cols) * h:(k // cols + 1) * h, (k % cols) * w:(k % cols + 1) * w]
                        for k in range(n_views)])


def control_maps(bundle: RenderBundle, kind: str) -> torch.Tensor:
    """Geometry control images [V, H, W, 3] in [0, 1] from a render: camera-frame normals, the
    per-axis point map, the depth visualisation, the inverse depth of OminiControl's depth LoRA, or
    the canny edges of its canny LoRA (source 'auto': normal-render edges, plus the RGB's when
    the albedo varies)."""
    if kind == "normal":
        maps = normal_image(bundle, "camera")
    elif kind == "point map":
        maps = np.where(bundle.mask[..., None], bundle.points_normalized, 0.0)
    elif kind == "depth":
        maps = depth_image(bundle)
    elif kind == "depth (inverse)":
        maps = inverse_depth_control(bundle)
    elif kind == "canny":
        maps = canny_control(bundle, "auto")
    else:
        raise InputError("control", f"must be one of {CONTROL_KINDS} (got {kind!r}).")
    return torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))


LAYOUTS = ("grid", "per view")


def generate_multiview(pipe, mesh, cameras, prompt: str, settings, view_size: int = 256, columns: int = 2,
                       control: str = "normal", control_adapters: tuple = (), shifters=None, schedule=None,
                       progress=None, offload=None, backend: str = "auto", target_adapters: tuple = (), side=None,
                       compile: bool = False, batch_branches: bool = True, control_sets=None, layout: str = "grid"):
    """pipe: a sampling.runtime.FluxRuntime or a FluxPipeline; prompt: a TextConditioning or a
    string (see sample_realiz3d). Views [V, S, S, 3] of ``mesh`` from ``cameras``; returns
    (views, render bundle of the controls). ``settings`` is a Realiz3DSettings whose
    width/height are replaced; compile and batch_branches as in sample_realiz3d.

    control_sets: [(control map kind, adapters, condition latents mode, independent)], one
    control LoRA each (e.g. OminiControl's depth on 'depth (inverse)' and canny on 'canny');
    default: one set of ``control`` maps with ``control_adapters`` (latents as the settings say).
    layout: 'grid', all views generated jointly as one grid image under the grids of their
    control maps (they share attention); 'per view', each view on its own at view_size with the
    same seed (the size a 512 px control LoRA was trained at)."""
    from dataclasses import replace

    from ..renderers import render_views
    from .realiz3d_sampler import ControlSet, sample_realiz3d

    if view_size < 16 or view_size % 16:
        raise InputError("view_size", f"must be a positive multiple of 16 (got {view_size}).")
    if layout not in LAYOUTS:
        raise InputError("layout", f"must be one of {LAYOUTS} (got {layout!r}).")
    if control_sets is None:
        control_sets = [(control, tuple(control_adapters), settings.condition_latents, False)]
    rows, cols = grid_shape(len(cameras), columns)
    bundle = render_views(mesh, cameras, view_size, view_size, backend=backend, lit=False)
    maps = {kind: control_maps(bundle, kind) for kind in dict.fromkeys(k for k, *_ in control_sets)}

    def run(pick, s, prog):
        sets = [ControlSet(pick(maps[kind]), tuple(adapters), latents, independent, kind)
                for kind, adapters, latents, independent in control_sets]
        return sample_realiz3d(pipe, prompt, None, s, (), shifters, schedule, prog, offload, target_adapters, side,
                               compile=compile, batch_branches=batch_branches, control_sets=sets)

    if layout == "grid":
        s = replace(settings, width=cols * view_size, height=rows * view_size)
        image = run(lambda m: make_grid(m, cols)[None], s, progress)
        return split_grid(image[0], len(cameras), cols), bundle
    s = replace(settings, width=view_size, height=view_size, batch=1)
    views = []
    for v in range(len(cameras)):
        prog = None if progress is None else (lambda i, n, v=v: progress(v * n + i, len(cameras) * n))
        views.append(run(lambda m: m[v:v + 1], s, prog)[0])
    return torch.stack(views), bundle
